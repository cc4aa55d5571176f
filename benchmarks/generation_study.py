"""The demo-scale generation study of docs/generation.md: for a plainly trained and a perturbation-trained demo
tokenizer, a token prior on each, gFID and held-out bits per token, then decoder post-training of each and
rFID / pFID / gFID before and after. Prints one JSON object (progress on stderr).

    vartok-train fit --config configs/demo_vq.yaml --trainer.default_root_dir runs/study_vq
    vartok-train fit --config configs/demo_robust.yaml --trainer.default_root_dir runs/study_robust
    python benchmarks/generation_study.py --arm clean=runs/study_vq --arm robust=runs/study_robust

(docs/generation.md gives the exact commands behind its figures, shortened schedules included).

For each arm RUN it trains the prior (`vartok-prior fit --config configs/prior/demo.yaml`, into RUN_prior),
post-trains the decoder (`vartok-train fit --config configs/posttrain/demo.yaml`, into RUN_post) and, as the
control, trains the decoder for the same steps on clean tokens (keep_prob 1, into RUN_control), unless those
folders already hold their exports. Without --inception-weights the FID network is a randomly initialised
Inception-v3 (batch norms calibrated on the demo crops, as benchmarks/robustness.py), `--networks` of them:
FID figures compare models within this run only. Each network draws its own gFID samples (seed = network
index), so the spread over networks covers the feature network and the sampling together. The spread over
training seeds: one run per tokenizer, arms named ARM/SEED, gathered by benchmarks/generation_spread.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustness import rise_summary, subset

from tests.fixtures.doubles import make_random_inception_weights
from vartok.metrics.evaluation import evaluate
from vartok.metrics.generation import Generation
from vartok.metrics.plan import EvalPlan, Networks
from vartok.models.prior import TokenPrior
from vartok.nets.inception import build_inception
from vartok.tokenizers import load_tokenizer
from vartok.tokenizers.perturb import pfid_perturbation

ROOT = Path(__file__).resolve().parents[1]
PFID_SEEDS = (0, 1)


def run(cmd: list[str], log: Path) -> None:
    """A training command, its output in `log`; a failure stops the study with the log's tail."""
    print(f"running {' '.join(cmd)} (log: {log})", file=sys.stderr, flush=True)
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{cmd[0]} failed (exit {done.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")


def prepare_prior(run_dir: Path, prior_steps: int | None) -> Path:
    """The arm's prior (RUN_prior/prior), trained when missing."""
    export, prior_dir = run_dir / "export", Path(f"{run_dir}_prior")
    if not (prior_dir / "prior" / "config.json").is_file():
        cmd = [str(Path(sys.executable).parent / "vartok-prior"), "fit", "--config", "configs/prior/demo.yaml",
               "--model.tokenizer", str(export), "--trainer.default_root_dir", str(prior_dir)]
        run(cmd + (["--trainer.max_steps", str(prior_steps)] if prior_steps else []), Path(f"{prior_dir}.log"))
    return prior_dir / "prior"


def prepare_decoder(run_dir: Path, prior: Path, keep_prob: float, suffix: str, post_steps: int | None) -> Path:
    """The arm's decoder post-trained with `keep_prob` (RUN_<suffix>/export), trained when missing. keep_prob 1 is
    the control: the same steps of decoder-only training on the clean tokens."""
    out = Path(f"{run_dir}_{suffix}")
    if not (out / "export" / "config.json").is_file():
        bin_dir = Path(sys.executable).parent
        cmd = [str(bin_dir / "vartok-train"), "fit", "--config", "configs/posttrain/demo.yaml", "--model.init_from",
               str(run_dir / "export"), "--model.posttrain.prior", str(prior), "--model.posttrain.keep_prob",
               str(keep_prob), "--trainer.default_root_dir", str(out), "--skip_report", "true"]
        run(cmd + (["--trainer.max_steps", str(post_steps)] if post_steps else []), Path(f"{out}.log"))
        [last] = out.rglob("last.ckpt")  # --skip_report: the EMA tokenizer is exported here
        run([str(bin_dir / "vartok-export"), "--checkpoint", str(last), "--out", str(out / "export")],
            Path(f"{out}_export.log"))
    return out / "export"


def measure(export: Path, prior_path: Path, data: list[dict], networks: list, feature: int, alphas: list[float],
            delta: int) -> dict:
    """rFID, pFID(α), gFID and bits per token at k = N of one tokenizer, per feature network."""
    tok, prior = load_tokenizer(export), TokenPrior.from_pretrained(prior_path)
    perturbations = {f"{a:g}": pfid_perturbation(tok, a, delta) for a in alphas}
    n = tok.num_tokens
    rows = []
    for index, network in enumerate(networks):
        generation = Generation(prior, seed=index, name=str(prior_path))
        plan = EvalPlan([n], {"psnr", "rfid", "pfid", "gfid", "bits"}, networks=Networks(network, fid_feature=feature),
                        perturbations=perturbations, pfid_seeds=PFID_SEEDS, baselines=False, grid_images=0,
                        show=False, distributed=False, generation=generation)
        entry = evaluate(tok, data, plan)["lengths"][str(n)]
        rows.append({"psnr": entry["psnr"], "rfid": entry["rfid"], "gfid": entry["gfid"],
                     "bits_per_token": entry["bits_per_token"],
                     "pfid": {name: value["mean"] for name, value in entry["pfid"].items()}})
        print(f"  {export} network {index}: {rows[-1]}", file=sys.stderr, flush=True)
    summary = {key: rise_summary([row[key] for row in rows]) for key in ("rfid", "gfid")}
    summary["pfid"] = {name: rise_summary([row["pfid"][name] for row in rows]) for name in perturbations}
    summary["psnr"], summary["bits_per_token"] = rows[0]["psnr"], rows[0]["bits_per_token"]  # no network in them
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True,
                        help="NAME=RUN_DIR of a trained demo tokenizer (RUN_DIR/export), repeated per tokenizer; "
                             "name them ARM/SEED for benchmarks/generation_spread.py")
    parser.add_argument("--images", type=int, default=256, help="held-out demo crops measured (and gFID samples)")
    parser.add_argument("--networks", type=int, default=2, help="random Inception-v3 initialisations")
    parser.add_argument("--feature", type=int, default=192, help="Inception feature layer (64, 192, 768, 2048)")
    parser.add_argument("--alphas", default="0.1,0.2")
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--prior-steps", type=int, default=None, help="override the prior recipe's max_steps")
    parser.add_argument("--post-steps", type=int, default=None, help="override the post-training recipe's max_steps")
    parser.add_argument("--keep-prob", type=float, default=0.7, help="post-training's share of true tokens")
    parser.add_argument("--stages", default="before,after_posttraining,control",
                        help="what to measure: before (the tokenizer), after_posttraining, control (the same "
                             "decoder training with keep_prob 1: continued training on clean tokens)")
    args = parser.parse_args()
    arms = dict(arm.split("=", 1) for arm in args.arm)
    torch.manual_seed(0)
    data = subset(args.images)
    calibration = torch.cat([b["image"][b["valid"]] for b in data])[:64]
    folder = Path(tempfile.mkdtemp())
    networks = [build_inception(make_random_inception_weights(folder / f"inception_random_{seed}.pth", calibration,
                                                              seed=seed), feature=args.feature)
                for seed in range(args.networks)]
    alphas = [float(a) for a in args.alphas.split(",")]
    results: dict = {"protocol": {"images": args.images, "networks": args.networks, "feature": args.feature,
                                  "alphas": alphas, "delta": args.delta, "pfid_seeds": list(PFID_SEEDS),
                                  "spread": "mean, sd and values over the random feature networks (gFID: each "
                                            "network with its own sampling seed)"}}
    stages = args.stages.split(",")
    for name, run_dir in arms.items():
        run_dir = Path(run_dir)
        prior = prepare_prior(run_dir, args.prior_steps)
        exports = {"before": run_dir / "export"}
        if "after_posttraining" in stages:
            exports["after_posttraining"] = prepare_decoder(run_dir, prior, args.keep_prob, "post", args.post_steps)
        if "control" in stages:  # the same decoder training without the prior's tokens
            exports["control"] = prepare_decoder(run_dir, prior, 1.0, "control", args.post_steps)
        results[name] = {"export": str(run_dir / "export"), "prior": str(prior)}
        for stage, export in exports.items():
            if stage in stages:
                results[name][stage] = measure(export, prior, data, networks, args.feature, alphas, args.delta)
        print(json.dumps(results[name]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
