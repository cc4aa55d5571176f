"""Images/s of one training step (forward + backward + AdamW) for each preset, fp32 and bf16 autocast,
eager and torch.compile, on this machine. Prints one JSON object.

    python benchmarks/train_step.py [--presets demo,titok_s_128] [--batch 8] [--steps 5] [--compile]

Large presets at 256 px take seconds per step on a CPU: the default runs the demo and titok_s_* presets;
pass --presets all for every registered preset.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vartok import Tokenizer
from vartok.tokenizers import PRESETS


def images_per_second(name: str, batch: int, steps: int, precision: str, compiled: bool) -> float:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset(name).train()
    forward = torch.compile(tok) if compiled else tok
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, tok.image_size, tok.image_size)
    device_type = images.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = forward(images)
            loss = (out.recon.float() - images).pow(2).mean() + sum(out.quantizer.losses.values(), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="demo,titok_s_32,titok_s_128")
    parser.add_argument("--batch", type=int, default=0, help="0: 64 for 32 px presets, 4 for 256 px")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    names = sorted(PRESETS) if args.presets == "all" else args.presets.split(",")
    results = {}
    for name in names:
        batch = args.batch or (64 if PRESETS[name]["image_size"] <= 64 else 4)
        modes = [(p, c) for p in ("fp32", "bf16") for c in ((False, True) if args.compile else (False,))]
        results[name] = {"batch": batch, **{
            f"{p}_{'compiled' if c else 'eager'}": round(images_per_second(name, batch, args.steps, p, c), 2)
            for p, c in modes
        }}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "images_per_second": results}, indent=2))


if __name__ == "__main__":
    main()
