"""The tokenizer as a whole: encoder + quantizer + decoder (+ a training-time length policy).

    tok = Tokenizer.from_preset("demo")
    enc = tok.encode(images)                 # images (B, 3, H, W) in [0, 1]
    recon = tok.decode(enc.indices, length=8)
    recon = tok.decode(enc.indices[:, :8])   # the same: a stored prefix of k tokens decodes at length k
    out = tok(images)                        # differentiable training forward (straight-through)

Images are in [0, 1] at the interface and in [-1, 1] inside the networks. `encode`, `decode` and
`choose_length` are inference: they build no autograd graph and check their inputs (one reduction each);
`forward` is the training path. Loading never imports Lightning and never unpickles: config.json +
model.safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vartok.models.export_folder import folder_files, load_weights, read_config, save_folder
from vartok.models.linear_path import PCA_SPREAD, pca_init
from vartok.models.pixel_decoder import PixelDecoderArgs
from vartok.models.quantizers import Quantizer, QuantizerOutput, build_quantizer
from vartok.models.titok import TiTokDecoder, TiTokEncoder
from vartok.models.vit import Decoder, Encoder
from vartok.tokenizers.config import TokenizerConfig, preset_config
from vartok.tokenizers.length import LengthPolicy, check_length

FORMAT = "vartok-tokenizer"
OVERSHOOT = 0.1  # images at most this far outside [0, 1] are named as resampling overshoot, not a wrong scale


class Encoded(NamedTuple):
    """Args:
    indices: int64 (B, N) or (B, N, G).
    codes: (B, N, D) quantized latents (no autograd graph: `Tokenizer.forward` is the differentiable pass).
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


def image_layout_hint(images: Tensor, size: int) -> str:
    """The likely fix for images of the wrong dtype or shape, as the end of an error sentence ('' if none)."""
    shape = tuple(images.shape)
    if images.dtype == torch.uint8:
        return ": divide uint8 images by 255 (images.float() / 255)"
    if not images.dtype.is_floating_point:
        return f": convert {images.dtype} images to float in [0, 1]"
    if shape == (3, size, size):
        return ": one image needs a batch dimension, images[None]"
    if images.dim() == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return ": the channels are last, use images.permute(0, 3, 1, 2)"
    if images.dim() == 4 and shape[1] == 1:
        return ": grayscale images need 3 channels, images.expand(-1, 3, -1, -1)"
    if images.dim() == 4 and shape[1] == 4:
        return ": drop the alpha channel, images[:, :3]"
    if images.dim() == 4 and shape[1] == 3:
        return f": resize or crop them to {size}x{size}, this tokenizer's image_size"
    return ""


def check_image_values(images: Tensor) -> None:
    """One clear error unless every value of `images` is finite and in [0, 1] (one min/max reduction; the
    non-finite count and the likely cause are computed on the error path only)."""
    if not images.numel():
        return
    low, high = (float(v) for v in torch.aminmax(images))  # NaN in either when any value is NaN
    if 0.0 <= low and high <= 1.0:
        return
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"images must be finite floats in [0, 1], got {int(bad.sum())} non-finite values (NaN or inf), the "
            f"first {float(images[where])} at {where}: check the loading or preprocessing that made them"
        )
    if low >= -OVERSHOOT and high <= 1.0 + OVERSHOOT:
        cause = "they are slightly outside, as after a resize that overshoots: clamp(0, 1) them"
    elif low >= 0.0:
        cause = "they look like 0-255 values stored as floats" if high <= 255.0 else "scale them to [0, 1]"
    elif high <= 1.0:
        cause = "they look like [-1, 1] images, use (images + 1) / 2"
    else:
        cause = "they look normalised with a mean and std, undo that normalisation"
    raise ValueError(
        f"images must be float in [0, 1] (divide uint8 images by 255), got values in [{low:.4g}, {high:.4g}]: "
        f"{cause}"
    )


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
        encoder: Encoder | TiTokEncoder,
        quantizer: Quantizer,
        decoder: Decoder | TiTokDecoder,
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
                  "token_dim": dim, "mlp_ratio": c.mlp_ratio}
        decoder_shape = {"width": c.decoder_width or c.width, "depth": c.decoder_depth or c.depth,
                         "heads": c.decoder_heads or c.heads, "drop_token": c.decode_fill == "mask_token"}
        if c.architecture == "titok":
            encoder = TiTokEncoder(width=c.width, depth=c.depth, heads=c.heads, reshape=c.titok_reshape, **shared)
            pixel_args = PixelDecoderArgs(**c.pixel_decoder) if c.titok_head == "proxy_codes" else None
            decoder = TiTokDecoder(head=c.titok_head, pixel_decoder=pixel_args, **decoder_shape, **shared)
        else:
            shared.update(qk_norm=c.qk_norm, embed_std=c.embed_std, linear_shortcut=c.linear_shortcut,
                          shortcut_init=c.shortcut_init, global_linear=c.global_linear)
            encoder = Encoder(width=c.width, depth=c.depth, heads=c.heads, latent_attention=c.latent_attention,
                              **shared)
            decoder = Decoder(conv_channels=c.conv_channels, **decoder_shape, **shared)
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
        return self.encoder.image_size

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def bits_per_token(self) -> float:
        return self.quantizer.bits_per_token

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ inference
    def _check_images(self, images: Tensor, values: bool = True) -> None:
        """One clear error for images that are not float (B, 3, H, W) in [0, 1]; `values` adds the range and
        finiteness check (one reduction; the training forward skips it: its data are converted from uint8)."""
        size = self.image_size
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a float torch.Tensor (B, 3, {size}, {size}) in [0, 1], got "
                            f"{type(images).__name__}: convert it with torch.as_tensor")
        if images.dim() != 4 or images.shape[1:] != (3, size, size) or not images.dtype.is_floating_point:
            raise ValueError(
                f"images must be float (B, 3, {size}, {size}) in [0, 1], got {images.dtype} {tuple(images.shape)}"
                f"{image_layout_hint(images, size)}"
            )
        if values:
            check_image_values(images)

    @torch.no_grad()
    def encode(self, images: Tensor, mask: Tensor | None = None) -> Encoded:
        """Inference encoding, without an autograd graph (the differentiable pass is `forward`).

        Args:
            images: (B, 3, H, W) float in [0, 1], H = W = image_size; a ValueError names what is wrong.
            mask: optional (B, N) bool, True = real token (padded tokens take no part in the quantizer's stats).
        Returns:
            Encoded(indices (B, N[, G]) int64, codes, latents, quantizer).
        """
        self._check_images(images)
        return self._encode(images, mask)

    def _encode(self, images: Tensor, mask: Tensor | None = None) -> Encoded:
        """encode without the value check or the gradient switch: images already checked."""
        latents = self.encoder(images if self.encoder.unit_pixels else images * 2 - 1)  # (B, N, D)
        out = self.quantizer(latents, mask)
        return Encoded(out.indices, out.codes, latents, out)

    def _unit(self, pixels: Tensor) -> Tensor:
        """The decoder's output in [0, 1] scale (vartok's decoders write [-1, 1], TiTok's [0, 1])."""
        return pixels if self.decoder.unit_pixels else (pixels + 1) / 2

    def _decode_codes(self, codes: Tensor, length: int | Tensor) -> Tensor:
        """codes (B, N, D) -> the decoder's images (unclamped, its own scale) from the first `length` tokens
        (int or (B,))."""
        if isinstance(length, int):
            if self.decode_fill == "mask_token" and length < codes.shape[1]:
                keep = torch.full((codes.shape[0],), length, device=codes.device)
                return self.decoder(codes, keep, fill="mask_token")
            return self.decoder(codes[:, :length])
        if self.decode_fill == "mask_token":
            return self.decoder(codes, length.to(codes.device), fill="mask_token")
        return self.decoder(codes[:, : int(length.max())], length.to(codes.device), fill="pad")

    @torch.no_grad()
    def decode(self, indices: Tensor, length: int | Tensor | None = None) -> Tensor:
        """Images from the first `length` tokens, without an autograd graph.

        Args:
            indices: integer (B, k) or (B, k, G), 1 <= k <= N: all N tokens `encode` returned, or a stored
                prefix of the first k (no padding needed). Each index in [0, codes per symbol - 1].
            length: None (= k), an int in [1, k], or a (B,) integer tensor of per-sample lengths in [1, k].
        Returns:
            (B, 3, H, W) float in [0, 1]. A prefix of k decodes exactly as the full indices at length k.
        """
        self.quantizer.check_indices(indices)  # integer, trailing (G,), every value a code
        tokens = self._prefix_tokens(indices)
        length = self._decode_length(length, tokens, indices)
        if tokens < self.num_tokens:  # positions >= k are never read (sliced off or masked); 0 is a valid code
            tail = indices.new_zeros(indices.shape[0], self.num_tokens - tokens, *indices.shape[2:])
            indices = torch.cat([indices, tail], 1)  # the full-length path, so a prefix decodes bit-exactly
        codes = self.quantizer.lookup_codes(indices.long())
        return self._unit(self._decode_codes(codes, length)).clamp(0, 1)

    def _prefix_tokens(self, indices: Tensor) -> int:
        """k of indices (B, k[, G]), with one clear error unless 1 <= k <= N."""
        n, trailing = self.num_tokens, self.quantizer.index_shape
        layout = ", ".join(["B", "k", *map(str, trailing)])
        if indices.dim() != 2 + len(trailing) or not 1 <= indices.shape[1] <= n:
            raise ValueError(
                f"indices must be ({layout}) with 1 <= k <= {n} tokens (all N = {n} that encode returned, or a "
                f"stored prefix of the first k), got shape {tuple(indices.shape)}"
            )
        return int(indices.shape[1])

    def _decode_length(self, length: int | Tensor | None, tokens: int, indices: Tensor) -> int | Tensor:
        """The checked decode length: None = all `tokens` given; never more than the tokens given."""
        if length is None:
            return tokens
        checked = check_length(length, self.num_tokens, indices.shape[0])
        longest = checked if isinstance(checked, int) else int(checked.max()) if checked.numel() else 1
        if longest > tokens:
            raise ValueError(
                f"length {longest} asks for more tokens than the {tokens} in indices {tuple(indices.shape)}: "
                f"a prefix of k tokens decodes at length <= k (length=None is k), or pass more of the tokens"
            )
        return checked

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
        """The differentiable training forward: encode, quantize (all N tokens), drop, decode.

        Args:
            images: (B, 3, H, W) float in [0, 1]; the shape is checked, the values are not (no extra reduction
                per training step: the training data are converted from uint8).
        """
        self._check_images(images, values=False)
        enc = self._encode(images)
        codes = enc.codes
        if self.training and self.perturbation is not None:
            codes = self.perturbation(codes, enc.latents, enc.quantizer, step)
        draw = self.length_policy.sample(images.shape[0], self.num_tokens, step, generator, images.device)
        if not self.training:
            draw = draw._replace(length=self.num_tokens, keep_len=None)
        decoder_codes = codes[:, : draw.length].to(codes.dtype)
        recon = self.decoder(decoder_codes, draw.keep_len, fill=draw.fill)
        return TokenizerOutput(self._unit(recon), enc.quantizer, draw.keep_len, draw.length, decoder_codes)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, source: dict[str, Any] | None = None) -> Path:
        """Write config.json + model.safetensors; `from_pretrained` reproduces encode/decode bit-exactly.

        Args:
            directory: the export folder (created if needed).
            source: where the weights came from (e.g. a converted checkpoint), recorded in config.json.
        """
        if self.config is None:
            raise ValueError("save_pretrained needs a tokenizer built from a TokenizerConfig (from_config/from_preset)")
        meta = {"format": FORMAT, "version": 1, "tokenizer": self.config.to_dict()}
        if source is not None:
            meta["source"] = source
        return save_folder(self, directory, meta, FORMAT)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
        """Load an export folder (config.json + model.safetensors), with a clear error for a bad folder."""
        config_path, weights_path = folder_files(directory, "tokenizer", "an export folder")
        try:
            meta = read_config(config_path, FORMAT)
            config = TokenizerConfig.from_dict(meta["tokenizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{config_path} is not a valid vartok tokenizer config: {err}") from None
        tokenizer = cls.from_config(config)
        load_weights(tokenizer, weights_path, config_path, map_location, strict=False)
        return tokenizer.eval()
