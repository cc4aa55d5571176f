"""`vartok-convert titok --checkpoint FILE_OR_DIR [--config FILE_OR_NAME] --out EXPORT_DIR`: a released
TiTok-family tokenizer (TiTok, One-D-Piece) to a vartok export (config.json + model.safetensors). Nothing is
downloaded: docs/titok.md lists, per model, the file to fetch and the command."""

from __future__ import annotations

import argparse
import sys

from vartok.cli.export import check_out_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vartok-convert", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    titok = kinds.add_parser("titok", help="bytedance/1d-tokenizer's TiTok and turingmotors' One-D-Piece",
                             description=__doc__)
    titok.add_argument("--checkpoint", required=True,
                       help="model.safetensors / pytorch_model.bin / a released .bin, or the folder holding it")
    titok.add_argument("--config", default=None,
                       help="the checkpoint's config.json or the repository's YAML, or a released name such as "
                            "titok_l32 (default: config.json beside the weights)")
    titok.add_argument("--out", required=True, help="the export folder to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from vartok.convert.titok import convert_titok  # after parsing: --help stays fast

    try:
        check_out_folder(args.out)
        print(f"converting {args.checkpoint} ...", flush=True)
        tokenizer = convert_titok(args.checkpoint, args.out, args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"vartok-convert: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    config = tokenizer.config
    print(f"wrote {args.out}: {config.titok_head} TiTok, {tokenizer.num_parameters():,} parameters, "
          f"{tokenizer.num_tokens} tokens of {tokenizer.bits_per_token:.0f} bits, {config.image_size} px "
          f"(Tokenizer.from_pretrained or vartok-eval --checkpoint {args.out})")


if __name__ == "__main__":
    main()
