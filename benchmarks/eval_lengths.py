"""Time of evaluating L token counts the vartok way (ONE encoder pass, then L decoder passes) against L
independent full passes (encode + decode for each k), on the demo preset with random weights.

    python benchmarks/eval_lengths.py [--batch-size 64] [--batches 1] [--repeats 3] [--threads 1] [--no-evaluate]

Prints one JSON object:
- `model_only`: the tokenizer calls alone. `one_encode_s` = encode once + decode at every k;
  `independent_s` = for every k, encode + decode; `speedup` = independent / one_encode. `encode_s` and
  `decode_s` (per k) are single passes, and `one_encode_predicted_s` = encode + Σ_k decode(k): the claim
  "about one encoder pass plus L decoder passes" holds when it is close to `one_encode_s`.
- `evaluate`: the same comparison through `vartok.metrics.evaluate` (PSNR + SSIM, no baselines):
  one call with all L lengths against L calls with one length each.
Times are the best of `--repeats` runs (the machine may be shared), in seconds, for all batches.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from vartok import Tokenizer
from vartok.metrics.rate import default_lengths


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls of fn(), in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def model_only(tok: Tokenizer, batches: list[torch.Tensor], lengths: list[int], repeats: int) -> dict:
    """Tokenizer calls alone: 1 encode + L decodes vs L × (encode + decode), and the single passes."""

    def vartok_way() -> None:
        for images in batches:
            indices = tok.encode(images).indices  # (B, N): one encoder pass per batch
            for k in lengths:
                tok.decode(indices, length=k)

    def independent() -> None:
        for k in lengths:
            for images in batches:
                tok.decode(tok.encode(images).indices, length=k)

    indices = [tok.encode(images).indices for images in batches]
    encode_s = best_time(lambda: [tok.encode(images) for images in batches], repeats)
    decode_s = {k: best_time(lambda k=k: [tok.decode(i, length=k) for i in indices], repeats) for k in lengths}
    one, many = best_time(vartok_way, repeats), best_time(independent, repeats)
    return {
        "one_encode_s": one, "independent_s": many, "speedup": many / one,
        "encode_s": encode_s, "decode_s": {str(k): s for k, s in decode_s.items()},
        "one_encode_predicted_s": encode_s + sum(decode_s.values()),
    }


def through_evaluate(tok: Tokenizer, batches: list[torch.Tensor], lengths: list[int], repeats: int) -> dict:
    """`vartok.metrics.evaluate` with all lengths at once vs once per length (PSNR, SSIM; no baselines)."""
    from vartok.metrics.evaluation import evaluate
    from vartok.metrics.plan import EvalPlan

    loader = [{"image": (b * 255).round().to(torch.uint8), "valid": torch.ones(len(b), dtype=torch.bool)}
              for b in batches]
    kwargs = {"metrics": {"psnr", "ssim"}, "baselines": False, "show": False, "grid_images": 0}
    one = best_time(lambda: evaluate(tok, loader, EvalPlan(lengths, **kwargs)), repeats)
    many = best_time(lambda: [evaluate(tok, loader, EvalPlan([k], **kwargs)) for k in lengths], repeats)
    images = sum(len(b) for b in batches)
    return {"one_encode_s": one, "independent_s": many, "speedup": many / one,
            "images_per_s_all_lengths": images / one}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-evaluate", action="store_true", help="time the tokenizer calls only")
    args = parser.parse_args()
    for flag, value in (("--batch-size", args.batch_size), ("--batches", args.batches),
                        ("--repeats", args.repeats), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag}={value} must be an integer >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("demo").eval()  # random weights: the cost does not depend on them
    size, lengths = tok.image_size, default_lengths(tok.num_tokens)
    batches = [torch.rand(args.batch_size, 3, size, size) for _ in range(args.batches)]
    tok.decode(tok.encode(batches[0]).indices, length=1)  # warm-up (allocator, first-call overheads)
    report = {
        "model": "Tokenizer.from_preset('demo'), random weights", "num_tokens": tok.num_tokens,
        "image_size": size, "batch_size": args.batch_size, "batches": args.batches, "lengths": lengths,
        "threads": args.threads, "repeats": args.repeats,
        "model_only": model_only(tok, batches, lengths, args.repeats),
    }
    if not args.no_evaluate:
        report["evaluate"] = through_evaluate(tok, batches, lengths, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
