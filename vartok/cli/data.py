"""`vartok-data`: write webdataset shards from image folders, or build the embedded demo dataset.

    vartok-data make-shards --input IMAGE_DIR_OR_LIST --output DIR [--maxcount N] [--maxsize BYTES] [--workers N]
    vartok-data demo --output DIR
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from vartok.data.errors import DataError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes from '3000000', '500M' or '3G' (decimal units).

    Args:
        text: the command-line value.
    """
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"--maxsize {text!r} is not a size; write bytes like 3000000000 or 3G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vartok-data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shards = commands.add_parser("make-shards", help="verify images and write webdataset shards + manifest.json")
    shards.add_argument("--input", required=True, help="folder of images (class = top folder) or a list file")
    shards.add_argument("--output", required=True, help="shard folder (new, empty, or an interrupted run)")
    shards.add_argument("--maxcount", type=int, default=10_000, help="samples per shard (default 10000)")
    shards.add_argument("--maxsize", type=parse_size, default=3 * 10**9, help="bytes per shard (default 3G)")
    shards.add_argument("--workers", type=int, default=1, help="processes verifying images (default 1)")
    shards.add_argument("--max-pixels", type=int, default=None, help="skip larger images (default PIL's limit)")
    shards.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo = commands.add_parser("demo", help="build the embedded demo dataset (scikit-image photo crops)")
    demo.add_argument("--output", default=None, help="folder (default $VARTOK_CACHE/demo or ~/.cache/vartok/demo)")
    return parser


def _make_shards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vartok.data.shard_writer import make_shards

    finished_before = (Path(args.output) / "manifest.json").is_file()
    manifest = make_shards(args.input, args.output, maxcount=args.maxcount, maxsize=args.maxsize,
                           workers=args.workers, max_pixels=args.max_pixels, progress=not args.no_progress)
    shards = manifest["shards"]
    if finished_before:
        print(f"{args.output} is already complete for this input; nothing to do.")
    print(f"{manifest['total_images']} images in {len(shards)} shards in {args.output} "
          f"({len(manifest['bad_files'])} files left out)")
    for reason, count in sorted(manifest["skipped"].items()):
        print(f"  left out, {reason}: {count}")
    for note, count in sorted(manifest["converted"].items()):
        print(f"  kept, {note}: {count}")
    if shards:
        last = len(shards) - 1
        pattern = "shard-000000.tar" if last == 0 else f"shard-{{000000..{last:06d}}}.tar"
        print(f"use: --data.train_shards {args.output.rstrip('/')}/{pattern}   (or the folder itself)")
    else:
        print(f"error: none of the {manifest['total_inputs']} input files is a usable image; "
              f"see {args.output}/manifest.json for the reasons", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vartok.data.demo import demo_shards, demo_summary

    info = demo_shards(args.output)
    print(f"demo dataset in {info['root']}: {demo_summary(info)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vartok-data`; user mistakes print one line and exit with status 2.

    Args:
        argv: arguments (default sys.argv[1:]).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _make_shards(args) if args.command == "make-shards" else _demo(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
