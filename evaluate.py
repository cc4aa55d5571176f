"""python evaluate.py --checkpoint ... --lengths ...   (the same as `vartok-eval`)."""

from vartok.cli.evaluate import main

if __name__ == "__main__":
    main()
