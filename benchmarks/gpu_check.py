"""The GPU path, run once on a lent accelerator: bf16-mixed training steps of the TiTok presets with per-sample
tail drop, nested dropout, latent perturbation and the GAN, each ending with the rFID/PSNR callback on the GPU.
Prints one JSON object (images/s of the training steps, peak GPU memory, evaluation time, where the evaluation
ran) and writes it to --out.

    python benchmarks/gpu_check.py [--presets titok_s_128,titok_b_64] [--batch 16] [--steps 12] [--out FILE]
    python benchmarks/gpu_check.py --device cpu --tiny      # a smoke run of this script on a CPU

Everything is made here: 256 px shards of smooth random images (no dataset), a randomly initialised FID
Inception file and random LPIPS/VGG weights (no download), so the rFID values only show that the metric ran;
the throughput and memory figures are the point. images/s is measured over the steps after the first two
(allocator warm-up, cuDNN autotuning).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from vartok.data import ImageDataModule
from vartok.data.tar_writer import ShardWriter
from vartok.metrics.callbacks import EvaluationCallback
from vartok.tokenizers import LengthPolicy
from vartok.tokenizers.perturb import PerturbationConfig
from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization

# run as `python benchmarks/<name>.py`: the repository root is not on sys.path, and the random-weights
# maker is a test double (tests/fixtures/doubles.py), not part of the vartok package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.doubles import make_random_inception_weights

MODES = {
    "tail_drop_sample": {"length_policy": LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.1)},
    "nested_dropout": {"length_policy": LengthPolicy(mode="nested_dropout", granularity="sample")},
    "perturbation_gan": {
        "length_policy": LengthPolicy(mode="tail_drop", granularity="sample", p_full=0.1),
        "perturbation": PerturbationConfig(alpha=0.1, delta=16),
        "loss": LossWeights(l2=1.0, lpips=0.1, commit=0.25, gan=0.1, gan_start_step=0, lecam=0.001),
        "discriminator": {"channels": 64, "num_layers": 3},
    },
}
TINY = {"image_size": 32, "patch_size": 8, "width": 64, "depth": 1, "heads": 2, "num_tokens": 8}


def write_shards(folder: Path, count: int, size: int) -> str:
    """`count` smooth random RGB images of `size` px as PNG samples in one tar shard."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder, maxcount=10**9) as writer:
        for index in range(count):
            low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            buffer = io.BytesIO()
            low.resize((size, size), Image.BICUBIC).save(buffer, format="PNG")
            writer.write(f"img{index:05d}", {"png": buffer.getvalue()})
    return str(folder)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def check(preset: str, mode: str, args: argparse.Namespace, shards: str, inception: str) -> dict:
    torch.manual_seed(0)
    settings = dict(MODES[mode])
    module = TokenizerModule(preset=preset, tokenizer=TINY if args.tiny else None, lpips_random_init=True,
                             optim=Optimization(lr=1e-4, warmup_steps=2), **settings)
    image_size = module.tokenizer_config.image_size
    data = ImageDataModule(train_shards=shards, val_shards=shards, image_size=image_size, batch_size=args.batch,
                           val_batch_size=args.batch, num_workers=4 if args.device == "cuda" else 0,
                           epoch_size=args.batch * args.steps)
    timer = StepTimer()
    callback = EvaluationCallback(every_n_steps=args.steps, num_images=args.eval_images, lengths=[8, 32]
                                  if not args.tiny else [2, 8], metrics=["psnr", "rfid"],
                                  inception_weights=inception, batch_size=args.batch, cache_reference=False,
                                  at_fit_end=False)
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed", max_steps=args.steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[timer, callback])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    total = time.perf_counter() - start
    steady = timer.times[2:]
    per_step = (steady[-1] - steady[0]) / max(1, len(steady) - 1) if len(steady) > 1 else float("nan")
    report = callback.last_report or {}
    return {
        "preset": preset, "mode": mode, "batch": args.batch, "steps": module.step_count,
        "images_per_s": round(args.batch / per_step, 2), "fit_seconds": round(total, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "tokenizer_device": str(next(module.tokenizer.parameters()).device),
        "eval": {k: {m: round(v, 4) for m, v in row.items() if isinstance(v, float)}
                 for k, row in report.get("lengths", {}).items()},
        "eval_unavailable": report.get("unavailable", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="titok_s_128,titok_b_64")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval_images", type=int, default=64)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes at 32 px (a smoke run of the script)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible; run with --device cpu --tiny for a smoke run")
    with tempfile.TemporaryDirectory() as tmp:
        size = 32 if args.tiny else 256
        shards = write_shards(Path(tmp) / "shards", max(args.eval_images, args.batch * 2), size)
        inception = str(make_random_inception_weights(Path(tmp) / "inception.pth"))
        rows = []
        for preset in args.presets.split(","):
            for mode in args.modes.split(","):
                rows.append(check(preset, mode, args, shards, inception))
                print(json.dumps(rows[-1]), flush=True)
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
              else "cpu", "checks": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
