"""Images/s of one token-prior training step (PriorModule's: encode with the frozen tokenizer, the prior's
NLL, backward, AdamW), with the tokens encoded on the fly versus read from a token cache (indices computed
beforehand), and of the demo loader that feeds the on-the-fly step. Prints one JSON object.

    python benchmarks/prior_step.py [--tokenizer runs/demo/export] [--batch 64] [--steps 20] [--width 192]
                                    [--threads 1]

Without --tokenizer, a randomly initialised `demo` preset is exported to a temporary folder: the cost of a step
depends on the architecture only, not on the weights. `encode_share` is the fraction of the on-the-fly step
spent encoding, i.e. what a token cache would save at most (besides the image decoding of the loader).
On a machine shared with other jobs, pass --threads 1: two intra-op threads on one free core spin against
each other and a step can take several times longer than with one thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vartok import Tokenizer
from vartok.training.prior_module import BETAS, PriorModule


def rate(step: Callable[[], None], batch: int, steps: int) -> float:
    """Images/s of `step` (one warm-up call, then `steps` timed calls)."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def loader_rate(batch: int, steps: int) -> float:
    """Images/s of the demo's training loader (32 px PNG crops, main process), as the demo config reads it."""
    from vartok.data import ImageDataModule

    data = ImageDataModule(train_shards="demo", image_size=32, batch_size=batch, num_workers=0)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    return rate(lambda: next(batches), batch, steps)


def measure(tokenizer: str, batch: int, steps: int, width: int, depth: int, heads: int) -> dict:
    torch.manual_seed(0)
    module = PriorModule(tokenizer, width=width, depth=depth, heads=heads)
    optimizer = torch.optim.AdamW(module.prior.parameters(), lr=1e-3, betas=BETAS)
    size = module.tokenizer.image_size
    images = {"image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)}
    cached = module.tokens(images)[0]  # what a token cache would hold

    def train(indices: torch.Tensor) -> None:
        loss = module.prior.nll(indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    results = {
        "on_the_fly": rate(lambda: train(module.tokens(images)[0]), batch, steps),
        "token_cache": rate(lambda: train(cached), batch, steps),
        "encode_only": rate(lambda: module.tokens(images), batch, steps),
    }
    results = {name: round(value, 1) for name, value in results.items()}
    results["encode_share"] = round(1 - results["on_the_fly"] / results["token_cache"], 3)
    results.update(prior_parameters=sum(p.numel() for p in module.prior.parameters()),
                   tokenizer_parameters=module.tokenizer.num_parameters(), num_tokens=module.length,
                   spec=module.spec.to_dict())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=None, help="export folder (default: a random `demo` export)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--no-loader", action="store_true", help="skip the demo loader's rate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = args.tokenizer or str(Tokenizer.from_preset("demo").save_pretrained(Path(scratch) / "export"))
        step = measure(tokenizer, args.batch, args.steps, args.width, args.depth, args.heads)
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "tokenizer": args.tokenizer or "random demo export",
              "batch": args.batch, "prior": {"width": args.width, "depth": args.depth, "heads": args.heads},
              "images_per_second": step}
    if not args.no_loader:
        report["demo_loader_images_per_second"] = round(loader_rate(args.batch, args.steps), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
