"""Sequences/s of gFID's sampling (vartok.metrics.generation.PriorSamples): each sample drawn with its own keyed
generator, one batched draw per chunk of samples, against one `sample(1, ...)` call per sample (how the keyed
draws were made before). Both give the same tokens (checked here too). Prints one JSON object.

    python benchmarks/prior_sampling.py [--samples 256] [--batch 64] [--width 192] [--depth 4] [--threads 1]

The prior is randomly initialised on a demo tokenizer's tokens (32 tokens of a 1,024-code VQ): the cost of
sampling depends on the architecture only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vartok.metrics.generation import PriorSamples
from vartok.models.prior import TokenPrior, TokenSpec
from vartok.tokenizers.randomness import keyed_seed


def one_per_call(prior: TokenPrior, samples: int, length: int, seed: int) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for i in range(samples):
            generator = torch.Generator().manual_seed(keyed_seed(seed, i))
            rows.append(prior.sample(1, length, generator=generator))
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = TokenSpec(32, "categorical", 1024)
    prior = TokenPrior(spec, width=args.width, depth=args.depth).eval()
    source = PriorSamples(prior, seed=0)
    start = time.perf_counter()
    batched = torch.cat(list(source.draw(spec.num_tokens, args.samples, 0, 1, args.batch)))
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    alone = one_per_call(prior, args.samples, spec.num_tokens, 0)
    alone_s = time.perf_counter() - start
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "samples": args.samples,
        "batch": args.batch, "prior": {"width": args.width, "depth": args.depth, "tokens": 32, "codes": 1024},
        "batched_sequences_per_s": round(args.samples / batched_s, 1),
        "one_per_call_sequences_per_s": round(args.samples / alone_s, 1),
        "speedup": round(alone_s / batched_s, 2),
        "same_tokens": bool(torch.equal(batched, alone)),
    }, indent=2))


if __name__ == "__main__":
    main()
