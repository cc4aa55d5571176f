"""What the demo's PCA start alone gives, before any training step: held-out PSNR / SSIM per token count.

The demo preset's tokenizer, its global linear path started at PCA of the first 4,096 training crops exactly as
`vartok-train fit --config configs/demo.yaml` reads them (the demo data module's training stream, seed 0, random
flips), evaluated by vartok.metrics.evaluate on the 512 held-out demo crops: the figures the README puts next to
the trained tokenizer's. Builds the demo data on first use (about a minute). Prints JSON.

    python benchmarks/pca_start.py [--pca-images 4096]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vartok.data import ImageDataModule, demo_shards, val_loader
from vartok.metrics import EvalPlan, evaluate
from vartok.tokenizers import Tokenizer, preset_config
from vartok.training.pca_start import first_images

# configs/demo.yaml's data and model settings that decide what the PCA reads and how the tokenizer is built.
DEMO_DATA = {"train_shards": "demo", "image_size": 32, "batch_size": 32, "val_batch_size": 128, "num_workers": 0}


def measure(pca_images: int) -> dict:
    """Held-out figures of the PCA-started demo tokenizer at k = 1, 2, 4, ..., 32 (no training step).

    Args:
        pca_images: training crops the PCA reads (the demo module's default: 4,096).
    """
    started = time.perf_counter()
    demo = demo_shards()
    data = ImageDataModule(**DEMO_DATA)
    data.setup("fit")
    images = first_images(data.train_dataloader(), pca_images)
    torch.manual_seed(0)  # the ViT's random weights do not reach the output (its last layers start at zero)
    tokenizer = Tokenizer.from_config(preset_config("demo"))
    explained = tokenizer.init_linear_path(images)
    loader = val_loader(demo["val"], DEMO_DATA["image_size"], DEMO_DATA["val_batch_size"])
    report = evaluate(tokenizer.eval(), loader, EvalPlan(metrics=["psnr", "ssim"], baselines=False, grid_images=0,
                                                         show=False))
    return {
        "what": "demo preset, global linear path at PCA of the first training crops, no training step",
        "pca_images": pca_images, "explained_variance": round(explained, 4),
        "held_out_images": report["num_images"],
        "lengths": {k: {"bytes_per_image": row["bytes_per_image"], "psnr": round(row["psnr"], 2),
                        "ssim": round(row["ssim"], 3)} for k, row in report["lengths"].items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pca-images", type=int, default=4096, help="training crops the PCA reads (default 4096)")
    args = parser.parse_args(argv)
    config = preset_config("demo")
    components = config.num_tokens * config.latent_dim
    if args.pca_images <= components:
        parser.error(f"--pca-images={args.pca_images} is too few: the PCA of {components} components needs more "
                     f"than {components} images (the fit reads 4096).")
    json.dump(measure(args.pca_images), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
