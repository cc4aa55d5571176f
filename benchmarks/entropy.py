"""Time and peak memory of the binary codebook entropy, forward + backward, printed as one JSON object.

    python benchmarks/entropy.py [--skip-reference] [--bits 18] [--tokens 2048] [--threads 1]

Cases, all on the same inputs z ~ N(0, 1) of shape (1, T, K), no mask, τ = 0.01:
- `lfq`: vartok's exact two-halves entropy at K bits (backward of losses["entropy"]);
- `reference`: vector-quantize-pytorch `LFQ(dim=K, codebook_size=2**K)` with inv_temperature = 1/τ, whose
  soft assignment softmax(2<z, c>/τ) over all 2^K codes is the same definition (backward of its entropy aux
  loss). It materialises T × 2^K probabilities: about 100 s and 14 GB at K = 18, T = 2048 on 2 CPU cores;
  `--skip-reference` leaves it out;
- `gq_4x8` (2^32 codes), `gq_4x16` and `gq_8x8` (2^64 codes), `lfq_24` (the widest exact group).
Each case runs in its own subprocess; peak memory is the peak resident set size (VmHWM, reset through
/proc/self/clear_refs) minus the resident size just before the measured call, in MiB.
The reference clamps probabilities at 1e-5 inside its log, vartok at 1e-30; `lfq.entropy_codebook_clamp_1e-5`
is vartok's exact p̄ evaluated with the reference's clamp, to separate that convention from any error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TAU = 0.01


def status_kib(field: str) -> int:
    """A VmRSS / VmHWM value of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(step, repeats: int) -> dict:
    """Run step() `repeats` times; median seconds and peak extra resident memory (MiB) over the runs."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = status_kib("VmRSS")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(seconds),
        "peak_mib": (status_kib("VmHWM") - before) / 1024,
        **result,
    }


def run_vartok(name: str, bits: int, groups: int, tokens: int, repeats: int) -> dict:
    import torch

    from vartok.models.quantizers import build_quantizer
    from vartok.models.quantizers.binary import codebook_prob_sums

    quantizer = build_quantizer(
        name, dim=bits, bits=bits, temperature=TAU, **({"groups": groups} if groups else {})
    )
    torch.manual_seed(0)
    z = torch.randn(1, tokens, bits, requires_grad=True)

    def step() -> dict:
        out = quantizer(z)
        out.losses["entropy"].backward()
        return {key: out.stats[key].item() for key in ["entropy_codebook", "entropy_sample"]}

    step()  # warm-up: first-call allocations and kernel selection
    result = measure(step, repeats)
    result["codebook_size"] = str(quantizer.codebook_size)
    if name == "lfq" and bits <= 20:  # the reference's log clamp applied to our exact p̄
        with torch.no_grad():
            logits = (4.0 / TAU) * z.reshape(tokens, 1, bits)
            p_bar = codebook_prob_sums(logits, torch.ones(tokens))[0] / tokens
            result["entropy_codebook_clamp_1e-5"] = float(-(p_bar * p_bar.clamp_min(1e-5).log()).sum())
    return result


def run_reference(bits: int, tokens: int) -> dict:
    import torch
    from vector_quantize_pytorch import LFQ

    quantizer = LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=1.0, diversity_gamma=1.0).train()
    torch.manual_seed(0)
    z = torch.randn(1, tokens, bits, requires_grad=True)

    def step() -> dict:
        (_, _, aux_loss), breakdown = quantizer(z, inv_temperature=1.0 / TAU, return_loss_breakdown=True)
        aux_loss.backward()  # = per-sample entropy - gamma · codebook entropy (commitment weight 0)
        return {
            "entropy_codebook": breakdown.batch_entropy.item(),
            "entropy_sample": breakdown.per_sample_entropy.item(),
        }

    return measure(step, repeats=1)  # one run: it takes the whole machine for a while


def worker(case: dict) -> dict:
    import torch

    torch.set_num_threads(case["threads"])
    if case["name"] == "reference":
        return run_reference(case["bits"], case["tokens"])
    return run_vartok(case["quantizer"], case["bits"], case.get("groups", 0), case["tokens"], case["repeats"])


def spawn(case: dict) -> dict:
    """Run one case in a fresh interpreter so that its peak memory is its own."""
    command = [sys.executable, __file__, "--worker", json.dumps(case)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=18)
    parser.add_argument("--tokens", type=int, default=2048)
    # one thread by default: on a 2-core machine shared with other jobs, 2 OpenMP threads oversubscribe
    # and spin (vartok's lfq measured 20x slower that way); the same count applies to every case
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reference", action="store_true", help="leave out vector-quantize-pytorch LFQ")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    common = {"tokens": args.tokens, "threads": args.threads, "repeats": args.repeats}
    cases = {
        "lfq": {"name": "lfq", "quantizer": "lfq", "bits": args.bits},
        "lfq_24": {"name": "lfq_24", "quantizer": "lfq", "bits": 24},
        "gq_4x8": {"name": "gq_4x8", "quantizer": "gq", "bits": 32, "groups": 4},
        "gq_4x16": {"name": "gq_4x16", "quantizer": "gq", "bits": 64, "groups": 4},
        "gq_8x8": {"name": "gq_8x8", "quantizer": "gq", "bits": 64, "groups": 8},
    }
    if not args.skip_reference:
        cases["reference"] = {"name": "reference", "bits": args.bits}
    results = {name: spawn({**common, **case}) for name, case in cases.items()}

    report = {
        "bits": args.bits,
        "tokens": args.tokens,
        "temperature": TAU,
        "threads": args.threads,
        **results,
    }
    ours, reference = results["lfq"], results.get("reference")
    if reference and "error" not in reference and "error" not in ours:
        report["speedup"] = reference["seconds"] / ours["seconds"]
        report["memory_ratio"] = reference["peak_mib"] / max(ours["peak_mib"], 1e-3)
        report["entropy_codebook_rel_diff"] = abs(
            ours["entropy_codebook"] / reference["entropy_codebook"] - 1
        )
        report["entropy_codebook_rel_diff_same_clamp"] = abs(
            ours["entropy_codebook_clamp_1e-5"] / reference["entropy_codebook"] - 1
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
