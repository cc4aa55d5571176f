"""Loader throughput: images/s of one worker (a single process) for the vartok DataModule and for a plain PIL
loader over the same JPEG files, at 256 px; plus the demo loader at 32 px. Prints one JSON object.

    python benchmarks/loader.py [--images 300] [--repeats 2]

The JPEGs are made from the photos inside scikit-image (ImageNet-like 500x375 and large 1200x900), written to a
temporary folder, and packed with make-shards.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vartok.data import ImageDataModule, demo_shards, make_shards, train_loader
from vartok.data.demo import TRAIN_PHOTOS, VAL_PHOTOS, skimage_data_dir

SIZE = 256


def make_jpegs(folder: Path, count: int, shape: tuple[int, int], seed: int = 0) -> list[Path]:
    """`count` JPEGs of size `shape` (w, h): random regions of the scikit-image photos, resized."""
    folder.mkdir(parents=True)
    photos = [Image.open(skimage_data_dir() / name).convert("RGB") for name in TRAIN_PHOTOS + VAL_PHOTOS]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw = int(rng.uniform(0.5, 1.0) * min(w, h * shape[0] / shape[1]))
        ch = int(cw * shape[1] / shape[0])
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.resize(shape, Image.BICUBIC, box=(left, top, left + cw, top + ch))
        paths.append(folder / f"img_{i:05d}.jpg")
        image.save(paths[-1], format="JPEG", quality=90)
    return paths


def plain_pil(paths: list[Path], size: int = SIZE) -> float:
    """What a user would write: open, convert, resize the shorter side, centre crop, to numpy."""
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        np.asarray(image.crop((left, top, left + size, top + size)))
    return len(paths) / (time.perf_counter() - start)


def timed_images(batches) -> float:
    """Images per second over an iterable of batches."""
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += int(batch["valid"].sum())
    return images / (time.perf_counter() - start)


def datamodule_rates(shards: str, count: int) -> dict[str, float]:
    dm = ImageDataModule(train_shards=shards, val_shards=shards, image_size=SIZE, batch_size=32, num_workers=0,
                         epoch_size=count - count % 32, shuffle_buffer=100)
    dm.setup("fit")
    return {"train": timed_images(dm.train_dataloader()), "val": timed_images(dm.val_dataloader())}


def demo_rates(workers: int, batches: int = 60) -> float:
    info = demo_shards()
    loader = train_loader(info["train"], 32, 64, num_workers=workers, epoch_size=64 * batches)
    return timed_images(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    result: dict = {"cpu_count": os.cpu_count(), "image_size": SIZE, "images": args.images}
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in (("500x375", (500, 375)), ("1200x900", (1200, 900))):
            paths = make_jpegs(Path(tmp) / label, args.images, shape)
            make_shards(str(Path(tmp) / label), str(Path(tmp) / f"{label}_shards"), maxcount=100, progress=False)
            pil = max(plain_pil(paths) for _ in range(args.repeats))
            rates = [datamodule_rates(str(Path(tmp) / f"{label}_shards"), args.images) for _ in range(args.repeats)]
            result[label] = {"plain_pil_img_s": round(pil, 1),
                             "datamodule_train_img_s": round(max(r["train"] for r in rates), 1),
                             "datamodule_val_img_s": round(max(r["val"] for r in rates), 1)}
    demo_shards()  # build outside the timing
    result["demo_32px"] = {"main_process_img_s": round(max(demo_rates(0) for _ in range(args.repeats)), 1),
                           "one_worker_img_s": round(demo_rates(1), 1),
                           "two_workers_img_s": round(demo_rates(2), 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
