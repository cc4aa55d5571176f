"""The tokenizer as a whole: encoder + quantizer + decoder (+ a training-time length policy).

    tok = Tokenizer.from_preset("demo")
    enc = tok.encode(images)                 # images (B, 3, H, W) in [0, 1]
    recon = tok.decode(enc.indices, length=8)
    out = tok(images)                        # differentiable training forward (straight-through)

Images are in [0, 1] at the interface and in [-1, 1] inside the networks. Loading never imports
Lightning and never unpickles: config.json + model.safetensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import Tensor, nn

from vartok.models.linear_path import PCA_SPREAD, pca_init
from vartok.models.quantizers import Quantizer, QuantizerOutput, build_quantizer
from vartok.models.vit import Decoder, Encoder
from vartok.tokenizers.config import TokenizerConfig, preset_config
from vartok.tokenizers.length import LengthPolicy, check_length

CONFIG_FILE, WEIGHTS_FILE, FORMAT = "config.json", "model.safetensors", "vartok-tokenizer"


class Encoded(NamedTuple):
    """Args:
    indices: int64 (B, N) or (B, N, G).
    codes: (B, N, D) quantized latents (straight-through).
    latents: (B, N, D) encoder outputs before quantization.
    quantizer: the full QuantizerOutput (losses, stats).
    """

    indices: Tensor
    codes: Tensor
    latents: Tensor
    quantizer: QuantizerOutput


class TokenizerOutput(NamedTuple):
    """Args:
    recon: (B, 3, H, W) reconstruction in [0, 1] space, unclamped (for the losses).
    quantizer: QuantizerOutput of docs/definitions.md §1 on all N tokens.
    keep_len: (B,) per-sample lengths the decoder saw, or None (= `length` for every sample).
    length: decoder sequence length of this step.
    decoder_codes: (B, length, D) what the decoder read (after any perturbation).
    """

    recon: Tensor
    quantizer: QuantizerOutput
    keep_len: Tensor | None
    length: int
    decoder_codes: Tensor


#: A perturbation hook (docs/definitions.md §3): (codes, latents, quantizer output, step) -> decoder codes.
Perturbation = Callable[[Tensor, Tensor, QuantizerOutput, int], Tensor]


class Tokenizer(nn.Module):
    """Assembled from injected parts.

    Args:
        encoder: images (B, 3, H, W) in [-1, 1] -> latents (B, N, D).
        quantizer: a `vartok.models.quantizers.Quantizer` of width D.
        decoder: codes (B, k, D) -> images in [-1, 1].
        length_policy: training-time token dropping (docs/definitions.md §2); None = always N tokens.
        config: the TokenizerConfig the parts were built from (needed by save_pretrained).
    """

    def __init__(
        self,
        encoder: Encoder,
        quantizer: Quantizer,
        decoder: Decoder,
        length_policy: LengthPolicy | None = None,
        config: TokenizerConfig | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.length_policy = length_policy or LengthPolicy()
        self.config = config
        self.perturbation: Perturbation | None = None
        self.decode_fill = config.decode_fill if config is not None else "pad"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: TokenizerConfig, length_policy: LengthPolicy | None = None) -> Tokenizer:
        c = config
        dim = c.latent_dim
        shared = {"image_size": c.image_size, "patch_size": c.patch_size, "num_tokens": c.num_tokens,
                  "token_dim": dim, "mlp_ratio": c.mlp_ratio, "qk_norm": c.qk_norm, "embed_std": c.embed_std,
                  "linear_shortcut": c.linear_shortcut, "shortcut_init": c.shortcut_init,
                  "global_linear": c.global_linear}
        encoder = Encoder(width=c.width, depth=c.depth, heads=c.heads, latent_attention=c.latent_attention, **shared)
        decoder = Decoder(width=c.decoder_width or c.width, depth=c.decoder_depth or c.depth,
                          heads=c.decoder_heads or c.heads, conv_channels=c.conv_channels,
                          drop_token=c.decode_fill == "mask_token", **shared)
        quantizer = build_quantizer(c.quantizer, dim, **c.quantizer_args)
        return cls(encoder, quantizer, decoder, length_policy, config)

    @classmethod
    def from_preset(cls, name: str, quantizer: str | None = None, **overrides: Any) -> Tokenizer:
        """A registered preset ("demo", "titok_{s,b,l}_{32,64,128,256}", ...); see `config.PRESETS`."""
        return cls.from_config(preset_config(name, quantizer, **overrides))

    # ------------------------------------------------------------------ properties
    @property
    def num_tokens(self) -> int:
        return self.encoder.num_tokens

    @property
    def image_size(self) -> int:
        return self.encoder.patch_size * math.isqrt(self.encoder.pos_embed.shape[0])

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def bits_per_token(self) -> float:
        return self.quantizer.bits_per_token

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ inference
    def _check_images(self, images: Tensor) -> None:
        size = self.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size) or not images.dtype.is_floating_point:
            raise ValueError(
                f"images must be float (B, 3, {size}, {size}) in [0, 1], got {images.dtype} {tuple(images.shape)}"
            )

    def encode(self, images: Tensor, mask: Tensor | None = None) -> Encoded:
        """images (B, 3, H, W) in [0, 1] -> Encoded(indices, codes, latents, quantizer)."""
        self._check_images(images)
        latents = self.encoder(images * 2 - 1)  # (B, N, D)
        out = self.quantizer(latents, mask)
        return Encoded(out.indices, out.codes, latents, out)

    def _decode_codes(self, codes: Tensor, length: int | Tensor) -> Tensor:
        """codes (B, N, D) -> images in [-1, 1] using the first `length` tokens (int or (B,))."""
        if isinstance(length, int):
            if self.decode_fill == "mask_token" and length < codes.shape[1]:
                keep = torch.full((codes.shape[0],), length, device=codes.device)
                return self.decoder(codes, keep, fill="mask_token")
            return self.decoder(codes[:, :length])
        if self.decode_fill == "mask_token":
            return self.decoder(codes, length.to(codes.device), fill="mask_token")
        return self.decoder(codes[:, : int(length.max())], length.to(codes.device), fill="pad")

    def decode(self, indices: Tensor, length: int | Tensor | None = None) -> Tensor:
        """indices int64 (B, N[, G]) -> images (B, 3, H, W) in [0, 1] from the first `length` tokens.

        `length`: None (all N), an int in [1, N], or a (B,) integer tensor of per-sample lengths.
        """
        expected = (self.num_tokens, *self.quantizer.index_shape)
        if indices.dim() != 1 + len(expected) or tuple(indices.shape[1:]) != expected:
            raise ValueError(f"indices must be (B, {', '.join(map(str, expected))}), got {tuple(indices.shape)}")
        if indices.dtype.is_floating_point:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        length = check_length(length, self.num_tokens, indices.shape[0])
        codes = self.quantizer.indices_to_codes(indices.long())
        return ((self._decode_codes(codes, length) + 1) / 2).clamp(0, 1)

    def choose_length(
        self,
        images: Tensor,
        target_psnr: float | None = None,
        target_lpips: float | None = None,
        lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Per image the smallest k in [1, N] whose reconstruction meets the target PSNR (>=) or LPIPS (<=):
        one encoder pass and a bisection over decoder passes. images (B, 3, H, W) in [0, 1] -> (B,) int64.
        See `vartok.tokenizers.choose_length` (monotonicity assumption, N when never met)."""
        from vartok.tokenizers.choose_length import choose_length

        return choose_length(self, images, target_psnr, target_lpips, lpips_fn)

    @torch.no_grad()
    def init_linear_path(self, images: Tensor, spread: float = PCA_SPREAD) -> float:
        """Start the global linear path (config.global_linear) at PCA of `images` (B, 3, H, W) in [0, 1], B > N*D,
        and zero the ViT's last encoder and decoder layers, so that the model starts as the ordered PCA codec and
        the ViT learns the remainder. Returns the fraction of the images' variance the N*D components explain."""
        if self.encoder.linear_path is None or self.decoder.linear_path is None:
            raise ValueError("init_linear_path needs a tokenizer built with global_linear=True")
        self._check_images(images)
        explained = pca_init(self.encoder.linear_path, self.decoder.linear_path, images, spread)
        for layer in (self.encoder.proj, self.decoder.pixel_layer):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return float(explained)

    # ------------------------------------------------------------------ training forward
    def forward(self, images: Tensor, step: int = 0, generator: torch.Generator | None = None) -> TokenizerOutput:
        """The differentiable training forward: encode, quantize (all N tokens), drop, decode."""
        enc = self.encode(images)
        codes = enc.codes
        if self.training and self.perturbation is not None:
            codes = self.perturbation(codes, enc.latents, enc.quantizer, step)
        draw = self.length_policy.sample(images.shape[0], self.num_tokens, step, generator, images.device)
        if not self.training:
            draw = draw._replace(length=self.num_tokens, keep_len=None)
        decoder_codes = codes[:, : draw.length].to(codes.dtype)
        recon = self.decoder(decoder_codes, draw.keep_len, fill=draw.fill)
        return TokenizerOutput((recon + 1) / 2, enc.quantizer, draw.keep_len, draw.length, decoder_codes)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors; `from_pretrained` reproduces encode/decode bit-exactly."""
        if self.config is None:
            raise ValueError("save_pretrained needs a tokenizer built from a TokenizerConfig (from_config/from_preset)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": 1, "tokenizer": self.config.to_dict()}
        save_model(self, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
        """Load an export folder (config.json + model.safetensors), with a clear error for a bad folder."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer folder {directory} does not exist")
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: an export folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            meta = json.loads(config_path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"'format' is {meta.get('format')!r}, expected {FORMAT!r}")
            config = TokenizerConfig.from_dict(meta["tokenizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{config_path} is not a valid vartok tokenizer config: {err}") from None
        tokenizer = cls.from_config(config)
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from None
        expected = tokenizer.state_dict()
        missing = sorted(set(expected) - set(state))
        bad_shape = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
        if missing or bad_shape:
            raise ValueError(
                f"{weights_path} does not match {config_path}: missing {missing[:5]}, wrong shape {bad_shape[:5]}"
            )
        tokenizer.load_state_dict(state, strict=False)
        return tokenizer.eval()
