"""`vartok-eval`: evaluate a tokenizer (export folder or Lightning checkpoint) at several token counts.

    vartok-eval --checkpoint CKPT_OR_EXPORT_DIR [--weights ema|raw] --data URLS|demo --lengths 1,2,4,... \\
        --metrics psnr,ssim,lpips,rfid,pfid --out DIR [--inception-weights PATH] [--lpips-weights PATH]
        [--batch-size N] [--device cpu] [--pfid-alpha 0.05,0.1,0.2 --pfid-delta 16 --pfid-seeds 2 --pfid-lengths 8,32]
        [--target-psnr X] [--max-skip-fraction 0.01]
        [--metrics ...,gfid,bits --prior PRIOR_DIR [--gfid-samples N] [--gfid-temperature T] [--gfid-top-k K]
         [--gfid-seed S]]

Writes DIR/report.json (with the provenance of the evaluated weights and of the measuring networks' files),
DIR/rd.png, DIR/grid.png and prints a table. Under torchrun each rank evaluates its share of the images and
every image is counted once. With a token prior (--prior, trained on this tokenizer's tokens): bits per
token of the images' own tokens and gFID of decodes of the prior's samples at each length (vartok.metrics.generation).
Exit status: 0 done, 2 a user mistake (one line, before any work), 1 nothing was
measured (no image read, or none of the requested metrics could be computed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from vartok.cli.export import check_out_folder

DEFAULT_METRICS = "psnr,ssim,lpips,rfid"
SKIP_FLAG = "--max-skip-fraction"


class NothingMeasured(RuntimeError):
    """The run ended without a single requested figure (exit status 1); the message says why."""


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r} must be comma-separated integers, e.g. 1,2,4,8") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{flag} {text!r} is empty; give comma-separated integers")
    return values


def _float_list(flag: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r} must be comma-separated numbers, e.g. 0.05,0.1") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: each value must be a token-error rate in [0, 1]")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The vartok-eval argument parser."""
    p = argparse.ArgumentParser(prog="vartok-eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="export folder (config.json + model.safetensors) or .ckpt")
    p.add_argument("--weights", choices=("ema", "raw"), default=None,
                   help="for a .ckpt: evaluate its EMA (default) or raw weights; recorded in report.json")
    p.add_argument("--data", required=True, help="validation shards (pattern, folder, list) or 'demo'")
    p.add_argument("--lengths", type=lambda t: _int_list("--lengths", t), default=None,
                   help="token counts k, e.g. 1,2,4,8 (default 1,2,4,...,N plus N)")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default {DEFAULT_METRICS}; "
                   "also pfid; gfid and bits with --prior)")
    p.add_argument("--out", required=True, help="output folder for report.json, rd.png, grid.png")
    p.add_argument("--inception-weights", default=None, help="weights-inception-2015-12-05-6726825d.pth "
                   "(default: the torch hub cache)")
    p.add_argument("--lpips-weights", default=None, help="vgg16-397923af.pth (default: the torch hub cache)")
    p.add_argument("--allow-download", action="store_true", help="download missing weights into the hub cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--pfid-alpha", type=lambda t: _float_list("--pfid-alpha", t), default=[0.05, 0.1, 0.2],
                   help="pFID token-error rates (default 0.05,0.1,0.2)")
    p.add_argument("--pfid-delta", type=int, default=16, help="pFID neighbourhood size δ (default 16)")
    p.add_argument("--pfid-seeds", type=int, default=2, help="pFID seeds, mean reported (default 2)")
    p.add_argument("--pfid-lengths", type=lambda t: _int_list("--pfid-lengths", t), default=None,
                   help="token counts at which pFID is measured, among --lengths (default: N, or the largest "
                        "length evaluated)")
    p.add_argument("--target-psnr", type=float, default=None, help="also choose k per image for this PSNR")
    p.add_argument("--fid-stats-cache", default=None, help="folder caching the originals' Inception statistics")
    p.add_argument("--baseline-images", type=int, default=1000,
                   help="measure JPEG/WebP/thumbnails on the first N images (default 1000; a codec sweep costs "
                        "~0.2 s per 256-px image plus its SSIM, fast on a GPU)")
    p.add_argument("--no-baselines", action="store_true", help="skip the codec baselines")
    p.add_argument("--grid-images", type=int, default=8, help="images in grid.png (default 8)")
    p.add_argument("--prior", default=None, help="token prior export folder (vartok-prior): needed by the "
                   "metrics gfid and bits")
    p.add_argument("--gfid-samples", type=int, default=None,
                   help="sequences sampled for gFID (default: as many as the evaluated images)")
    p.add_argument("--gfid-temperature", type=float, default=1.0, help="sampling temperature > 0 (default 1)")
    p.add_argument("--gfid-top-k", type=int, default=None, help="sample among the k most likely codes")
    p.add_argument("--gfid-seed", type=int, default=0, help="sample i draws from a generator keyed by (seed, i)")
    p.add_argument(SKIP_FLAG, type=float, default=0.01,
                   help="stop when a larger fraction of the samples cannot be read (default 0.01; 1 = never)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0),
                             ("--pfid-delta", args.pfid_delta, 2), ("--pfid-seeds", args.pfid_seeds, 1),
                             ("--grid-images", args.grid_images, 0)):
        if value < low:
            raise ValueError(f"{flag}={value} is not allowed; it must be an integer ≥ {low}.")
    if args.baseline_images is not None and args.baseline_images < 1:
        raise ValueError(f"--baseline-images={args.baseline_images} is not allowed; it must be ≥ 1.")
    if args.pfid_lengths and args.lengths and not set(args.pfid_lengths) <= set(args.lengths):
        raise ValueError(f"--pfid-lengths {','.join(map(str, args.pfid_lengths))} must be among --lengths "
                         f"{','.join(map(str, args.lengths))}: pFID is measured on lengths that are evaluated.")
    if not 0 <= args.max_skip_fraction <= 1:
        raise ValueError(f"{SKIP_FLAG}={args.max_skip_fraction} is not allowed; give a fraction in [0, 1].")
    if args.weights is not None and Path(args.checkpoint).is_dir():
        raise ValueError(f"--weights {args.weights} applies to a .ckpt training checkpoint, but {args.checkpoint} is "
                         "an export folder, which holds the one set of weights vartok-export wrote (EMA unless "
                         "it ran with --raw); leave --weights out.")
    _check_prior_args(args)
    check_out_folder(args.out, "report.json, rd.png and grid.png")
    _check_device(args.device)


def _check_prior_args(args: argparse.Namespace) -> None:
    """--prior and the gFID flags: consistent with --metrics, in range, the folder there."""
    wanted = [m for m in ("gfid", "bits") if m in {m.strip().lower() for m in args.metrics.split(",")}]
    if wanted and args.prior is None:
        raise ValueError(f"--metrics {','.join(wanted)} measures a token prior over this tokenizer's tokens; give "
                         "its export folder with --prior PRIOR_DIR.")
    if args.prior is not None and not wanted:
        raise ValueError(f"--prior {args.prior} is given but --metrics {args.metrics} asks for neither gfid nor "
                         "bits; add them to --metrics or leave --prior out.")
    if args.prior is not None and not Path(args.prior).is_dir():
        raise ValueError(f"--prior {args.prior} does not exist or is not a folder; give the export folder of a "
                         "token prior (config.json + model.safetensors).")
    if args.gfid_samples is not None and args.gfid_samples < 2:
        raise ValueError(f"--gfid-samples={args.gfid_samples} is not allowed; FID needs at least 2 samples.")
    if not 0 < args.gfid_temperature < float("inf"):
        raise ValueError(f"--gfid-temperature={args.gfid_temperature} is not allowed; give a temperature > 0 "
                         "(1 samples the prior as trained).")
    if args.gfid_top_k is not None and args.gfid_top_k < 1:
        raise ValueError(f"--gfid-top-k={args.gfid_top_k} is not allowed; give an integer >= 1 or leave it out.")


def _generation(args: argparse.Namespace, tokenizer: Any, metrics: set[str]) -> Any:
    """The token prior of --prior with the sampling flags, checked against the tokenizer (one sentence naming
    both) before anything else is loaded; None without gfid / bits."""
    if not metrics & {"gfid", "bits"}:
        return None
    from vartok.metrics.generation import Generation
    from vartok.models.prior import TokenPrior

    prior = TokenPrior.from_pretrained(args.prior)
    if args.gfid_top_k is not None and prior.spec.kind == "bits":
        raise ValueError(f"--gfid-top-k does not apply to the prior {args.prior}: it predicts each bit of "
                         f"{prior.spec.describe()} on its own; leave it out (--gfid-temperature still applies).")
    generation = Generation(prior, args.gfid_samples, args.gfid_temperature, args.gfid_top_k, args.gfid_seed,
                            args.batch_size, name=str(args.prior))
    generation.check(tokenizer, str(args.checkpoint))
    return generation


def _check_device(device: str | None) -> None:
    """A --device this machine has: checked before anything is loaded."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N.") from None
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} asks for a CUDA GPU but this machine has none that PyTorch can use "
                         "(torch.cuda.is_available() is False); use --device cpu.")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"--device {device} does not exist: this machine has {count} CUDA GPU(s), cuda:0 to "
                         f"cuda:{count - 1}; pick one of them.")


def _distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if there is one; the device of this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    wants_cuda = device is None and torch.cuda.is_available() or (device or "").startswith("cuda")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if wants_cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    if device is None or (device == "cuda" and world > 1):  # plain "cuda" under torchrun: this rank's GPU
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if wants_cuda else "cpu"
    return rank, world, torch.device(device)


def _shards(data: str) -> str | list[str]:
    if data == "demo":
        from vartok.data import demo_shards

        return demo_shards()["val"]
    return data


def _perturbations(tokenizer: Any, alphas: list[float], delta: int) -> tuple[dict, dict[str, str]]:
    """pFID variants of the latent perturbation operator (docs/definitions.md §3), or why pFID is unavailable."""
    try:
        from vartok.tokenizers.perturb import pfid_perturbation
    except ImportError as err:
        return {}, {"pfid": f"the latent perturbation operator is not available in this install ({err})"}
    return {f"alpha={a:g},delta={delta}": pfid_perturbation(tokenizer, a, delta) for a in alphas}, {}


def _unmeasured(metrics: set[str], unavailable: dict[str, str]) -> str | None:
    """Why none of the requested metrics can be measured, or None when at least one can."""
    if set(metrics) - set(unavailable):
        return None
    reasons = "; ".join(f"{m}: {unavailable[m].rstrip('.')}" for m in sorted(metrics))
    return f"none of the requested metrics ({','.join(sorted(metrics))}) can be computed ({reasons})"


def _networks(metrics: set[str], args: argparse.Namespace, unavailable: dict[str, str]) -> Any:
    """The measuring networks, built before the data is read (a missing hub file fills `unavailable`)."""
    from vartok.metrics.networks import build_networks
    from vartok.metrics.plan import Networks

    files = Networks(inception_weights=args.inception_weights, lpips_weights=args.lpips_weights,
                     allow_download=args.allow_download)
    built = build_networks(metrics, files, unavailable)
    files.inception, files.lpips = built["inception"], built["lpips"]
    return files


def run(args: argparse.Namespace) -> dict:
    """Check the arguments, load the tokenizer, the measuring networks and the data, evaluate, write the report
    (rank 0); raise NothingMeasured when no image was read or no requested metric could be computed."""
    from vartok.data import val_loader
    from vartok.metrics.evaluation import evaluate
    from vartok.metrics.plan import EvalPlan, check_metrics
    from vartok.tokenizers import load_tokenizer
    from vartok.tokenizers.loading import checkpoint_provenance

    _check_args(args)
    metrics = check_metrics(args.metrics.split(","))
    rank, world, device = _distributed(args.device)
    use_ema = args.weights != "raw"
    tokenizer = load_tokenizer(args.checkpoint, use_ema=use_ema)
    generation = _generation(args, tokenizer, metrics)
    perturbations, unavailable = _perturbations(tokenizer, args.pfid_alpha, args.pfid_delta) \
        if "pfid" in metrics else ({}, {})
    networks = _networks(metrics, args, unavailable)
    why = _unmeasured(metrics, unavailable)
    if why is not None:
        raise NothingMeasured(f"{why}; nothing was evaluated.")
    loader = val_loader(_shards(args.data), int(tokenizer.image_size), args.batch_size, args.num_workers,
                        rank=rank, world_size=world, max_skip_fraction=args.max_skip_fraction,
                        skip_setting=SKIP_FLAG)
    plan = EvalPlan(
        lengths=args.lengths, metrics=metrics, device=device, networks=networks, perturbations=perturbations,
        pfid_seeds=range(args.pfid_seeds), pfid_lengths=args.pfid_lengths, fid_stats_dir=args.fid_stats_cache, data_id=str(args.data),
        baselines=not args.no_baselines, baseline_images=args.baseline_images, target_psnr=args.target_psnr,
        grid_images=args.grid_images, show=True, unavailable=unavailable,
        provenance={"checkpoint": checkpoint_provenance(args.checkpoint, use_ema)}, generation=generation,
    )
    report = evaluate(tokenizer, loader, plan, args.out)
    _check_measured(report, metrics, args)
    return report


def _check_measured(report: dict, metrics: set[str], args: argparse.Namespace) -> None:
    """Raise NothingMeasured when the report holds no image or none of the requested metrics."""
    if report["num_images"] == 0:
        skipped = report.get("skipped") or {}
        detail = ", ".join(f"{reason}={count}" for reason, count in sorted(skipped.items())) or "it holds no sample"
        raise NothingMeasured(f"no image could be read from --data {args.data} ({detail}); check the shards "
                              "(vartok-data make-shards verifies images).")
    why = _unmeasured(metrics, report.get("unavailable", {}))
    if why is not None:
        raise NothingMeasured(f"{why}; {Path(args.out) / 'report.json'} has only the rate figures.")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: a user mistake ends with one line on stderr and exit status 2, a run that measured
    nothing (no image, or every requested metric unavailable) with one line and status 1."""
    args = build_parser().parse_args(argv)
    from vartok.nets.weights import WeightsFileError, WeightsNotFoundError

    try:
        run(args)
    except (ValueError, FileNotFoundError, WeightsFileError, WeightsNotFoundError) as err:
        print(f"vartok-eval: error: {err}", file=sys.stderr)
        return 2
    except NothingMeasured as err:
        print(f"vartok-eval: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
