"""Robustness of two demo tokenizers to latent perturbation: PSNR, rFID and pFID(α, δ) on held-out crops.

    python benchmarks/robustness.py --clean runs/demo/export --robust runs/demo_robust/export

Train the second with `vartok-train fit --config configs/demo_robust.yaml`. Without --inception-weights the FID
network is a randomly initialised Inception-v3 (batch norms calibrated on the demo crops, vartok.metrics.testing)
and the FID numbers are only comparable within this run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from vartok.data import demo_shards, val_loader
from vartok.metrics.evaluation import evaluate
from vartok.metrics.fid import build_inception
from vartok.metrics.quality import psnr_per_image
from vartok.metrics.testing import make_random_inception_weights
from vartok.tokenizers import load_tokenizer
from vartok.tokenizers.perturb import pfid_perturbation

SEEDS = (0, 1)  # of every perturbed measurement, pFID and PSNR alike


def subset(num_images: int, batch_size: int = 64) -> list[dict]:
    batches, seen = [], 0
    for batch in val_loader(demo_shards()["val"], 32, batch_size):
        batches.append(batch)
        seen += int(batch["valid"].sum())
        if seen >= num_images:
            break
    return batches


@torch.no_grad()
def perturbed_psnr(tok, data: list[dict], perturbations: dict, seeds: tuple[int, ...] = SEEDS) -> dict:
    """Mean PSNR of the decoded perturbed codes per α (over images and seeds): a pixel-level companion to pFID
    that needs no feature network."""
    values: dict[str, list[Tensor]] = {"0": [], **{name: [] for name in perturbations}}
    for batch in data:
        images = batch["image"][batch["valid"]].float() / 255  # the loader gives uint8
        encoding = tok.encode(images)
        values["0"].append(psnr_per_image(tok.decode(encoding.indices), images))  # float decode, as below
        for name, perturb in perturbations.items():
            for seed in seeds:
                recon = tok.decode(perturb(encoding.indices, seed, encoding))
                values[name].append(psnr_per_image(recon, images))
    return {name: torch.cat(v).mean().item() for name, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", default="runs/demo/export")
    parser.add_argument("--robust", default="runs/demo_robust/export")
    parser.add_argument("--alphas", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--feature", type=int, default=192, help="Inception feature layer (64, 192, 768, 2048)")
    parser.add_argument("--inception-weights", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = subset(args.images)
    weights = args.inception_weights
    if weights is None:
        calibration = torch.cat([b["image"][b["valid"]] for b in data])[:64]
        weights = make_random_inception_weights(Path(tempfile.mkdtemp()) / "inception_random.pth", calibration)
    network = build_inception(weights, feature=args.feature)
    alphas = [float(a) for a in args.alphas.split(",")]
    results = {"protocol": {"alphas": alphas, "delta": args.delta, "seeds": list(SEEDS), "images": args.images,
                            "feature": args.feature, "inception": "given" if args.inception_weights else
                            "random (not comparable to published FID)"}}
    for name in ("clean", "robust"):
        tok = load_tokenizer(getattr(args, name))
        perturbations = {f"{a:g}": pfid_perturbation(tok, a, args.delta) for a in alphas}
        report = evaluate(tok, data, [tok.num_tokens], metrics={"psnr", "rfid", "pfid"}, fid_network=network,
                          fid_feature=args.feature, perturbations=perturbations, pfid_seeds=SEEDS, baselines=False,
                          grid_images=0, show=False, distributed=False)
        entry = report["lengths"][str(tok.num_tokens)]
        results[name] = {"psnr": entry["psnr"], "rfid": entry["rfid"],
                         "pfid": {a: v["mean"] for a, v in entry["pfid"].items()},
                         "perturbed_psnr": perturbed_psnr(tok, data, perturbations)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
