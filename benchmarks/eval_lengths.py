"""Time of evaluating L token counts the vartok way (1 encoder pass + L decoder passes per batch) against L
independent full passes (encode + decode for each k), for the model alone and for `vartok.metrics.evaluate`.

    python benchmarks/eval_lengths.py [--batches 2] [--batch-size 32] [--threads 2]

Prints one JSON object. The model is `Tokenizer.from_preset("demo")` (randomly initialised) when vartok's
tokenizer is installed, else a stand-in of the same duck type and demo-like shape (32 px, patch 4, width 192,
4+4 pre-norm transformer blocks, 32 latent tokens, FSQ-style 1000 codes, tail-drop decoding).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from vartok.metrics.evaluation import evaluate
from vartok.metrics.rate import default_lengths


class _Encoding(NamedTuple):
    indices: Tensor


def _blocks(width: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, 3, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class StandInTokenizer(nn.Module):
    """A TiTok-like 1D tokenizer of the evaluation duck type (random weights), for when vartok's own
    Tokenizer is not installed. Decoding k tokens runs the decoder on k + patches positions (tail drop)."""

    def __init__(self, image_size: int = 32, patch: int = 4, width: int = 192, depth: int = 4,
                 num_tokens: int = 32) -> None:
        super().__init__()
        self.image_size, self.patch, self.num_tokens = image_size, patch, num_tokens
        self.levels = torch.tensor([8, 5, 5, 5])
        self.codebook_size, self.bits_per_token = 1000, float(torch.log2(torch.tensor(1000.0)))
        patches = (image_size // patch) ** 2
        self.embed = nn.Linear(3 * patch * patch, width)
        self.latents = nn.Parameter(torch.randn(num_tokens, width))
        self.pos = nn.Parameter(torch.randn(patches + num_tokens, width) * 0.02)
        self.encoder, self.decoder = _blocks(width, depth), _blocks(width, depth)
        self.to_code, self.from_code = nn.Linear(width, 4), nn.Linear(4, width)
        self.mask = nn.Parameter(torch.randn(patches, width) * 0.02)
        self.head = nn.Linear(width, 3 * patch * patch)

    def _patchify(self, images: Tensor) -> Tensor:
        b, p = images.shape[0], self.patch
        x = images.unfold(2, p, p).unfold(3, p, p)  # (B, 3, h, w, p, p)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)

    def encode(self, images: Tensor) -> _Encoding:
        patches = self.embed(self._patchify(images))  # (B, P, D)
        tokens = torch.cat([patches, self.latents.expand(images.shape[0], -1, -1)], 1) + self.pos
        latent = self.encoder(tokens)[:, -self.num_tokens:]  # (B, N, D)
        bounded = (torch.tanh(self.to_code(latent)) + 1) / 2 * (self.levels - 1)  # (B, N, 4)
        digits = bounded.round().long()
        radix = torch.tensor([125, 25, 5, 1])
        return _Encoding((digits * radix).sum(-1))  # (B, N) in [0, 1000)

    def decode(self, indices: Tensor, length: int | Tensor) -> Tensor:
        k = int(length) if not isinstance(length, Tensor) or length.dim() == 0 else int(length.max())
        radix = torch.tensor([125, 25, 5, 1])
        digits = (indices[:, :k, None] // radix) % self.levels  # (B, k, 4)
        codes = self.from_code(digits.float() / (self.levels - 1) * 2 - 1)  # (B, k, D)
        patches = self.mask.expand(indices.shape[0], -1, -1)
        out = self.decoder(torch.cat([codes, patches], 1))[:, k:]  # (B, P, D)
        b, g, p = indices.shape[0], self.image_size // self.patch, self.patch
        pixels = self.head(out).reshape(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return torch.sigmoid(pixels.reshape(b, 3, self.image_size, self.image_size))


def _model() -> tuple[nn.Module, str]:
    try:
        from vartok import Tokenizer

        return Tokenizer.from_preset("demo"), "vartok Tokenizer.from_preset('demo')"
    except (ImportError, AttributeError):
        return StandInTokenizer(), "stand-in (vartok.Tokenizer not installed)"


def _timed(fn: Callable[[], object], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok, which = _model()
    tok.eval()
    size, lengths = int(tok.image_size), default_lengths(int(tok.num_tokens))
    images = torch.randint(0, 256, (args.batches, args.batch_size, 3, size, size), dtype=torch.uint8)
    floats = images.float() / 255

    def vartok_way() -> None:
        for x in floats:
            indices = tok.encode(x).indices
            for k in lengths:
                tok.decode(indices, length=k)

    def independent() -> None:
        for k in lengths:
            for x in floats:
                tok.decode(tok.encode(x).indices, length=k)

    loader = [{"image": b, "valid": torch.ones(len(b), dtype=torch.bool)} for b in images]
    kwargs = {"metrics": {"psnr", "ssim"}, "baselines": False, "show": False}
    model_one, model_many = _timed(vartok_way), _timed(independent)
    eval_one = _timed(lambda: evaluate(tok, loader, lengths, **kwargs), repeats=2)
    eval_many = _timed(lambda: [evaluate(tok, loader, [k], **kwargs) for k in lengths], repeats=2)
    count = args.batches * args.batch_size
    print(json.dumps({
        "model": which, "images": count, "image_size": size, "lengths": lengths, "threads": args.threads,
        "model_only": {"one_encode_s": model_one, "independent_s": model_many, "speedup": model_many / model_one},
        "evaluate": {"one_encode_s": eval_one, "independent_s": eval_many, "speedup": eval_many / eval_one,
                     "images_per_s_all_lengths": count / eval_one},
    }, indent=2))


if __name__ == "__main__":
    main()
