"""`vartok-export --checkpoint CKPT --out DIR [--raw]`: a training checkpoint's tokenizer (EMA weights by
default) to config.json + model.safetensors, loadable with `Tokenizer.from_pretrained` and no Lightning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check_out_folder(out: str | Path, contents: str = "config.json and model.safetensors") -> None:
    """Refuse an `--out` that cannot become a folder (an existing file, or a file on its path), before any work.

    Args:
        out: the --out value.
        contents: what the folder will hold, for the message.
    """
    path = Path(out).expanduser()
    blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        where = "is a file" if blocked == path else f"cannot be a folder because {blocked} is a file"
        raise ValueError(f"--out {out} {where}; give a folder (new or existing) for {contents}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vartok-export", description=__doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="a vartok Lightning checkpoint (.ckpt; an export folder is already exported)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    args = parser.parse_args(argv)
    from vartok.tokenizers.loading import tokenizer_from_checkpoint  # here: vartok-eval imports this module

    try:
        check_out_folder(args.out)
        tokenizer = tokenizer_from_checkpoint(args.checkpoint, use_ema=not args.raw)
        out = tokenizer.save_pretrained(args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"vartok-export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    kind = "raw" if args.raw else "EMA"
    print(f"exported the {kind} tokenizer ({tokenizer.num_parameters():,} parameters, {tokenizer.num_tokens} tokens, "
          f"{tokenizer.bits_per_token:.2f} bits/token) to {out}")


if __name__ == "__main__":
    main()
