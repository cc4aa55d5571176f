"""The embedded demo dataset: 32 px crops of the photographs inside the scikit-image wheel (no download).

Thirteen photos give the training crops (random positions, log-uniform scales from native 32 px up to the
whole photo, near-constant crops redrawn); four other photos are held out whole and only ever give validation
crops. Crops are stored at exactly 32 px as RGB PNG in deterministic tar shards (same bytes on every build
with the same Pillow), ``train/`` and ``val/`` each with a manifest. The build takes about half a minute on 2
cores (one progress line per photo on standard error); it is cached in
``$VARTOK_CACHE/demo`` (default ``~/.cache/vartok/demo``), written to a temporary folder and renamed, so an
interrupted build never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from vartok.data.errors import DataError
from vartok.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, write_json_atomic
from vartok.data.splitting import epoch_rng
from vartok.data.tar_writer import ShardWriter

TRAIN_PHOTOS = ("astronaut.png", "brick.png", "cell.png", "clock_motion.png", "coins.png", "grass.png",
                "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                "motorcycle_right.png", "retina.jpg")
VAL_PHOTOS = ("camera.png", "chelsea.png", "coffee.png", "rocket.jpg")
# Left out: synthetic or non-photographic images (chessboards, colour wheel, logo, text, page, phantom,
# binary horse silhouette) and the 102 px microaneurysms crop.
DEMO_SIZE = 32
DEMO_INFO = "demo.json"
RECIPE = {"version": 1, "size": DEMO_SIZE, "num_train": 30_000, "num_val": 512, "seed": 0,
          "train_per_shard": 3_750, "val_per_shard": 128, "min_std": 2.0, "max_tries": 20}


def skimage_data_dir() -> Path:
    """The folder of photos that ships inside the installed scikit-image package."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def demo_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the demo shards live: `cache_dir`, else $VARTOK_CACHE/demo, else ~/.cache/vartok/demo.

    Args:
        cache_dir: explicit folder for the demo dataset.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("VARTOK_CACHE") or "~/.cache/vartok").expanduser() / "demo"


def _photo_hashes() -> dict[str, str]:
    folder = skimage_data_dir()
    hashes = {}
    for name in TRAIN_PHOTOS + VAL_PHOTOS:
        path = folder / name
        if not path.is_file():
            raise DataError(f"the demo photo {path} is missing from the installed scikit-image; reinstall "
                            "scikit-image (pip install --force-reinstall scikit-image).")
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _fingerprint(recipe: dict, hashes: dict[str, str]) -> str:
    text = json.dumps({"recipe": recipe, "photos": hashes, "pillow": PIL.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def photo_crops(photo: Image.Image, count: int, rng: np.random.Generator, size: int = DEMO_SIZE,
                min_std: float = 2.0, max_tries: int = 20) -> list[Image.Image]:
    """`count` square crops of a photo at random positions and log-uniform scales, resized to `size`.

    Args:
        photo: an RGB photo.
        count: number of crops.
        rng: the random source (decides everything).
        size: output side.
        min_std: a crop whose pixel standard deviation is below this (flat sky, black border) is redrawn,
            up to `max_tries` times.
        max_tries: draws per crop before accepting a flat one.
    """
    # Pyramid of 2x box reductions: every crop is resampled from a level at most ~4x larger than the output,
    # which keeps the bicubic resize cheap for crops covering most of a large photo.
    pyramid = [photo]
    while min(pyramid[-1].size) >= 4 * size:
        pyramid.append(pyramid[-1].reduce(2))
    width, height = photo.size
    crops = []
    for _ in range(count):
        for _ in range(max_tries):
            side = float(np.exp(rng.uniform(np.log(size), np.log(min(width, height)))))
            left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
            level = int(np.clip(np.floor(np.log2(side / (2 * size))), 0, len(pyramid) - 1))
            scale = 2**level
            box = (left / scale, top / scale, (left + side) / scale, (top + side) / scale)
            crop = pyramid[level].resize((size, size), Image.BICUBIC, box=box)
            if np.asarray(crop).std() >= min_std:
                break
        crops.append(crop)
    return crops


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo_samples(job: tuple[str, int, int, int, dict]) -> list[tuple[str, bytes]]:
    """(key, PNG bytes) of the crops of one photo; depends only on its arguments (safe in any process)."""
    name, index, share, is_val, recipe = job
    rng = epoch_rng(recipe["seed"], 0, 0xDE30, index, is_val)
    with Image.open(skimage_data_dir() / name) as image:
        photo = image.convert("RGB")
    stem = name.rsplit(".", 1)[0]
    crops = photo_crops(photo, share, rng, recipe["size"], recipe["min_std"], recipe["max_tries"])
    return [(f"{stem}_{i:05d}", _png(crop)) for i, crop in enumerate(crops)]


def _write_split(folder: Path, split: str, photos: tuple[str, ...], total: int, per_shard: int,
                 recipe: dict, report: Callable[[str, list, tuple[str, ...]], None]) -> dict:
    """Crops of `photos` (equal shares, interleaved in a seeded order) as shards plus a manifest; `report` is
    called after each photo's crops with (split, crops so far per photo, photos)."""
    folder.mkdir(parents=True)
    jobs = [(name, index, total // len(photos) + int(index < total % len(photos)), int(split == "val"), recipe)
            for index, name in enumerate(photos)]
    processes = min(len(jobs), os.cpu_count() or 1, 4)
    per_photo = []
    if processes > 1 and total >= 2000:  # photos are independent: same bytes whatever the process count
        with get_context("fork").Pool(processes) as pool:
            for samples in pool.imap(_photo_samples, jobs, chunksize=1):  # in order, as they finish
                per_photo.append(samples)
                report(split, per_photo, photos)
    else:
        for job in jobs:
            per_photo.append(_photo_samples(job))
            report(split, per_photo, photos)
    samples = [sample for photo_samples in per_photo for sample in photo_samples]  # (key, png bytes)
    order = epoch_rng(recipe["seed"], 0, 0xDE30, 99, int(split == "val")).permutation(len(samples))
    shards: list[dict] = []
    with ShardWriter(folder, maxcount=per_shard,
                     on_shard_done=lambda n, c, b: shards.append({"name": n, "count": c, "bytes": b})) as writer:
        for i in order:
            writer.write(samples[i][0], {"png": samples[i][1]})
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "created_by": "vartok-data demo", "split": split,
                "photos": list(photos), "total_images": len(samples), "num_shards": len(shards),
                "shards": shards, "classes": None, "skipped": {}, "converted": {}, "bad_files": []}
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return manifest


class _BuildLines:
    """Progress lines of a demo build on standard error (also in a log file): one per finished photo."""

    def __init__(self, show: bool) -> None:
        self.show, self.start = show, time.monotonic()

    def __call__(self, split: str, per_photo: list, photos: tuple[str, ...]) -> None:
        if self.show:
            crops = sum(len(samples) for samples in per_photo)
            print(f"vartok demo data: {split} photo {len(per_photo)} of {len(photos)} ({photos[len(per_photo) - 1]}), "
                  f"{crops:,} {split} crops, {time.monotonic() - self.start:.1f} s", file=sys.stderr, flush=True)


def build_demo(output: str | os.PathLike, num_train: int | None = None, num_val: int | None = None,
               show: bool = True) -> dict:
    """Build the demo shards into `output` (which must not exist yet); return the demo description.

    Args:
        output: the folder to create.
        num_train: training crops (default RECIPE["num_train"]; smaller values for tests).
        num_val: validation crops (default RECIPE["num_val"]).
        show: print a progress line per photo on standard error (the build takes a minute on 2 cores).
    """
    recipe = dict(RECIPE)
    recipe["num_train"] = recipe["num_train"] if num_train is None else int(num_train)
    recipe["num_val"] = recipe["num_val"] if num_val is None else int(num_val)
    for name in ("num_train", "num_val"):
        if recipe[name] < 1:
            raise DataError(f"{name}={recipe[name]} is not allowed; the demo needs at least one crop per split.")
    hashes = _photo_hashes()
    out = Path(output)
    out.mkdir(parents=True)
    report = _BuildLines(show)
    if show:
        print(f"vartok demo data: building {recipe['num_train']:,} training and {recipe['num_val']:,} validation "
              f"crops of {len(TRAIN_PHOTOS) + len(VAL_PHOTOS)} scikit-image photos (once; cached afterwards)",
              file=sys.stderr, flush=True)
    train = _write_split(out / "train", "train", TRAIN_PHOTOS, recipe["num_train"], recipe["train_per_shard"],
                         recipe, report)
    val = _write_split(out / "val", "val", VAL_PHOTOS, recipe["num_val"], recipe["val_per_shard"], recipe, report)
    info = {"fingerprint": _fingerprint(recipe, hashes), "recipe": recipe, "photos": hashes,
            "image_size": recipe["size"], "num_train": train["total_images"], "num_val": val["total_images"],
            "train_shards": [s["name"] for s in train["shards"]], "val_shards": [s["name"] for s in val["shards"]]}
    write_json_atomic(out / DEMO_INFO, info)
    return info


def _describe(root: Path, info: dict) -> dict:
    return {"train": [str(root / "train" / name) for name in info["train_shards"]],
            "val": [str(root / "val" / name) for name in info["val_shards"]],
            "num_train": info["num_train"], "num_val": info["num_val"], "image_size": info["image_size"],
            "root": str(root)}


def _valid_info(root: Path, fingerprint: str) -> dict | None:
    try:
        info = json.loads((root / DEMO_INFO).read_text())
    except (OSError, ValueError):
        return None
    if info.get("fingerprint") != fingerprint:
        return None
    names = [root / "train" / n for n in info["train_shards"]] + [root / "val" / n for n in info["val_shards"]]
    return info if all(path.is_file() for path in names) else None


def demo_shards(cache_dir: str | os.PathLike | None = None, num_train: int | None = None,
                num_val: int | None = None, show: bool = True) -> dict:
    """The demo shards, built on first use; safe when several processes ask at once.

    Args:
        cache_dir: the demo folder (default: see `demo_cache_dir`).
        num_train: training crops (default: the recipe's; changing it rebuilds).
        num_val: validation crops (default: the recipe's).
        show: while building, print progress lines on standard error (the process that builds prints them:
            under Lightning the data module's prepare_data, one process per node).

    Returns:
        {"train": [shard paths], "val": [shard paths], "num_train", "num_val", "image_size", "root"}.
    """
    root = demo_cache_dir(cache_dir)
    recipe = dict(RECIPE)
    recipe.update({k: int(v) for k, v in (("num_train", num_train), ("num_val", num_val)) if v is not None})
    fingerprint = _fingerprint(recipe, _photo_hashes())
    info = _valid_info(root, fingerprint)
    if info is not None:
        return _describe(root, info)
    _refuse_foreign(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        build_demo(staging / "demo", num_train, num_val, show)
        _swap_in(staging / "demo", root, fingerprint)
        if show:
            print(f"vartok demo data: ready in {root}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = _valid_info(root, fingerprint)
    if info is None:
        raise DataError(f"the demo dataset in {root} could not be built; delete that folder and retry.")
    return _describe(root, info)


def _refuse_foreign(root: Path) -> None:
    """Never replace a folder that holds something other than a demo build."""
    if root.is_file() or (root.is_dir() and any(root.iterdir()) and not (root / DEMO_INFO).exists()):
        raise DataError(f"{root} already holds files that are not a vartok demo dataset; choose an empty or new "
                        "folder for the demo shards.")


def _swap_in(built: Path, root: Path, fingerprint: str) -> None:
    """Rename a finished build into place; an outdated cache is moved aside first; a concurrent winner wins."""
    _refuse_foreign(root)
    if root.exists() and _valid_info(root, fingerprint) is None:
        stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale-", dir=root.parent))
        try:
            os.replace(root, stale / "old")
        except OSError:
            pass  # another process moved it already
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(built, root)
    except OSError:
        if _valid_info(root, fingerprint) is None:  # not a concurrent build that finished first
            raise


def demo_summary(info: dict) -> str:
    """One line describing a demo build, for the CLI."""
    return f"{info['num_train']} train crops, {info['num_val']} val crops at {info['image_size']} px"
