"""Cost of the codec baselines per image (the end-of-fit report measures them on every report image): seconds
per image for each codec's sweep (encode + decode), and for the PSNR and SSIM of all its reconstructions, on
one CPU thread. Prints one JSON object.

    python benchmarks/codec_sweep.py [--size 256] [--images 8]

The images are smooth random photographs-like crops (bicubic upsampled noise plus grain); codec times depend
somewhat on content.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vartok.metrics.baselines import CODECS, codec_settings, encode_decode
from vartok.metrics.quality import ssim_per_image
from vartok.pixels import psnr_per_image


def images(count: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(count, 3, 8, 8, generator=generator)
    smooth = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    grain = 0.05 * torch.randn(count, 3, size, size, generator=generator)
    return ((smooth + grain).clamp(0, 1) * 255).round().to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = codec_settings(args.size)
    codec_seconds = dict.fromkeys(CODECS, 0.0)
    psnr_seconds = ssim_seconds = 0.0
    for image in images(args.images, args.size):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        decoded = []
        for setting in settings:
            start = time.perf_counter()
            decoded.append(encode_decode(pil, setting)[0])
            codec_seconds[setting.codec] += time.perf_counter() - start
        recon = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        target = image.expand_as(recon)
        start = time.perf_counter()
        psnr_per_image(recon, target)
        psnr_seconds += time.perf_counter() - start
        start = time.perf_counter()
        ssim_per_image(recon.float() / 255, target.float() / 255)
        ssim_seconds += time.perf_counter() - start
    per_image = {f"{codec}_s": round(t / args.images, 4) for codec, t in codec_seconds.items()}
    counts = {codec: sum(s.codec == codec for s in settings) for codec in CODECS}
    print(json.dumps({
        "image_size": args.size, "images": args.images, "threads": 1, "settings": counts,
        "seconds_per_image": {**per_image, "codecs_total_s": round(sum(codec_seconds.values()) / args.images, 4),
                              "psnr_s": round(psnr_seconds / args.images, 4),
                              "ssim_s": round(ssim_seconds / args.images, 4)},
    }, indent=2))


if __name__ == "__main__":
    main()
