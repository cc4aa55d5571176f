"""Robustness of demo tokenizers to latent perturbation: PSNR, rFID and pFID(α, δ) on held-out crops.

    python benchmarks/robustness.py --clean runs/demo_vq/export --robust runs/demo_robust/export

Train them with `vartok-train fit --config configs/demo_vq.yaml` and `--config configs/demo_robust.yaml`; give
several exports per arm (other training seeds) to see how much of a difference is the training run. Without
--inception-weights the FID network is a randomly initialised Inception-v3 (batch norms calibrated on the demo
crops, tests/fixtures/doubles.py), `--networks` of them, and the FID numbers are only comparable within this
run.
`pfid_rise` (pFID − rFID per network and seed, mean and sd) is the robustness figure: a paired difference, far
less noisy than comparing pFID across models. Prints one JSON object (progress on stderr); ~2.5 min per model
and network at 256 images on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from vartok.data import demo_shards, val_loader
from vartok.metrics.evaluation import evaluate
from vartok.metrics.plan import EvalPlan, Networks
from vartok.nets.inception import build_inception
from vartok.pixels import psnr_per_image
from vartok.tokenizers import load_tokenizer
from vartok.tokenizers.perturb import pfid_perturbation

# run as `python benchmarks/<name>.py`: the repository root is not on sys.path, and the random-weights
# maker is a test double (tests/fixtures/doubles.py), not part of the vartok package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.doubles import make_random_inception_weights

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


def rise_summary(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": t.mean().item(), "sd": t.std().item() if len(values) > 1 else 0.0, "n": len(values),
            "values": [round(v, 4) for v in values]}


def measure(tok, data: list[dict], networks: list, feature: int, alphas: list[float], delta: int) -> dict:
    """One tokenizer: rFID / pFID per feature network, the pFID rise over rFID per (network, seed), and PSNR
    clean and under perturbation (both float decodes)."""
    perturbations = {f"{a:g}": pfid_perturbation(tok, a, delta) for a in alphas}
    rfid, pfid, rise = [], {name: [] for name in perturbations}, {name: [] for name in perturbations}
    for network in networks:
        plan = EvalPlan([tok.num_tokens], {"rfid", "pfid"}, networks=Networks(network, fid_feature=feature),
                        perturbations=perturbations, pfid_seeds=SEEDS, baselines=False, grid_images=0, show=False,
                        distributed=False)
        report = evaluate(tok, data, plan)
        entry = report["lengths"][str(tok.num_tokens)]
        rfid.append(entry["rfid"])
        for name, value in entry["pfid"].items():
            pfid[name].append(value["mean"])
            rise[name] += [v - entry["rfid"] for v in value["per_seed"]]
    psnr = perturbed_psnr(tok, data, perturbations)
    return {"psnr": psnr["0"], "rfid": sum(rfid) / len(rfid), "rfid_per_network": rfid,
            "pfid": {name: sum(v) / len(v) for name, v in pfid.items()},
            "pfid_rise": {name: rise_summary(v) for name, v in rise.items()},
            "perturbed_psnr": {name: v for name, v in psnr.items() if name != "0"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", nargs="+", default=["runs/demo_vq/export"], help="plainly trained exports")
    parser.add_argument("--robust", nargs="+", default=["runs/demo_robust/export"],
                        help="perturbation-trained exports")
    parser.add_argument("--alphas", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--feature", type=int, default=192, help="Inception feature layer (64, 192, 768, 2048)")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--networks", type=int, default=3,
                        help="without --inception-weights: how many random Inception-v3 initialisations")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = subset(args.images)
    if args.inception_weights:
        networks = [build_inception(args.inception_weights, feature=args.feature)]
    else:
        calibration = torch.cat([b["image"][b["valid"]] for b in data])[:64]
        folder = Path(tempfile.mkdtemp())
        networks = [build_inception(make_random_inception_weights(folder / f"inception_random_{seed}.pth",
                                                                  calibration, seed=seed), feature=args.feature)
                    for seed in range(args.networks)]
    alphas = [float(a) for a in args.alphas.split(",")]
    results: dict = {"protocol": {
        "alphas": alphas, "delta": args.delta, "seeds": list(SEEDS), "images": args.images, "feature": args.feature,
        "inception": "given" if args.inception_weights else
        f"{len(networks)} random initialisations (seeds 0..{len(networks) - 1}; not comparable to published FID)",
        "pfid_rise": "pFID(α) − rFID per (network, seed), over every network and seed"}}
    for arm in ("clean", "robust"):
        results[arm] = {}
        for path in getattr(args, arm):
            print(f"measuring {path} ({len(networks)} feature network(s))", file=sys.stderr, flush=True)
            results[arm][path] = measure(load_tokenizer(path), data, networks, args.feature, alphas, args.delta)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
