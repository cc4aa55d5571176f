"""python train.py fit --config configs/demo.yaml   (the same as `vartok-train`)."""

from vartok.cli.train import cli

if __name__ == "__main__":
    cli()
