"""`vartok-data`: write webdataset shards from image folders, or build the embedded demo dataset.

    vartok-data make-shards --input IMAGE_DIR_OR_LIST --output DIR [--maxcount N] [--maxsize BYTES] [--workers N]
    vartok-data demo --output DIR
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
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


def _examples(items: list[str], limit: int = 5) -> str:
    """The first `limit` items, then how many more manifest.json lists."""
    more = f"; and {len(items) - limit} more in manifest.json" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _summary(manifest: dict) -> list[str]:
    """The printed lines after the totals: what was left out or not read, and what was kept but converted or tiny,
    with the first files of each kind."""
    from vartok.data.shard_writer import TINY_SIDE

    lines = []
    by_reason: dict[str, list[str]] = {}
    for entry in manifest["bad_files"]:
        by_reason.setdefault(entry["reason"], []).append(entry["path"])
    for reason, paths in sorted(by_reason.items()):
        lines.append(f"  left out, {reason}: {len(paths)} ({_examples(paths)})")
    hidden = [f"{entry['path']}: {entry['reason']}" for entry in manifest.get("hidden", [])]
    if hidden:
        lines.append(f"  not read, hidden (name starts with '.'): {len(hidden)} ({_examples(hidden)})")
    tiny = [f"{entry['path']} {entry['size'][0]}×{entry['size'][1]}" for entry in manifest.get("tiny", [])]
    if tiny:
        lines.append(f"  kept, tiny (shorter side < {TINY_SIDE} px, upscaled a lot when read): {len(tiny)} "
                     f"({_examples(tiny)})")
    for note, count in sorted(manifest["converted"].items()):
        lines.append(f"  kept, {note}: {count}")
    return lines


def _make_shards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vartok.data.shard_writer import make_shards

    finished_before = (Path(args.output) / "manifest.json").is_file()
    manifest = make_shards(args.input, args.output, maxcount=args.maxcount, maxsize=args.maxsize,
                           workers=args.workers, max_pixels=args.max_pixels, progress=not args.no_progress)
    shards = manifest["shards"]
    if finished_before:
        print(f"{args.output} is already complete for this input; nothing to do.")
    hidden = len(manifest.get("hidden", []))
    print(f"{manifest['total_images']} images in {len(shards)} shards in {args.output} "
          f"({len(manifest['bad_files'])} files left out" + (f", {hidden} hidden files not read)" if hidden else ")"))
    for line in _summary(manifest):
        print(line)
    if shards:
        last = len(shards) - 1
        pattern = "shard-000000.tar" if last == 0 else f"shard-{{000000..{last:06d}}}.tar"
        # quoted: bash would expand the braces into one word per shard
        print(f"use: --data.train_shards {shlex.quote(args.output.rstrip('/') + '/' + pattern)}   "
              "(or the folder itself)")
    else:
        print(f"vartok-data: error: none of the {manifest['total_inputs']} input files is a usable image; "
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
        print(f"vartok-data: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
