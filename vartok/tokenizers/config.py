"""The tokenizer's architecture as one JSON-able dataclass, and the registry of named presets.

A preset is a few lines: `titok_s_128` = TiTok-S shape (width 512, depth 8 per side) with 128 tokens at
256 px, patch 16. `Tokenizer.from_preset(name, quantizer=..., **overrides)` builds one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vartok.models.arguments import check_keys
from vartok.models.linear_path import check_size
from vartok.models.pixel_decoder import PixelDecoderArgs
from vartok.models.quantizers import QUANTIZERS


@dataclass
class TokenizerConfig:
    """The architecture of a Tokenizer (every field JSON-able; exported as config.json).

    Args:
        image_size: side of the square input images in pixels.
        patch_size: side of the patches the images are cut into ((image_size / patch_size)^2 patches).
        width: encoder ViT width.
        depth: encoder ViT blocks.
        heads: encoder attention heads.
        num_tokens: N latent tokens.
        quantizer: a name of `vartok.models.quantizers.QUANTIZERS` (docs/definitions.md §1).
        quantizer_args: the quantizer's keywords; missing ones are filled with its constructor's defaults, so
            the config (and an exported config.json) records the complete quantizer.
        token_dim: latent width handed to the quantizer; None = the code width (no projection).
        decoder_width: decoder ViT width; None = the encoder's.
        decoder_depth: decoder ViT blocks; None = the encoder's.
        decoder_heads: decoder attention heads; None = the encoder's.
        latent_attention: "full" or "prefix_causal" (docs/definitions.md §2).
        decode_fill: how tokens past k are hidden at decode time: "pad" (removed / key-padding) for models
            trained with tail drop or no policy, "mask_token" for nested dropout.
        mlp_ratio: hidden width of the ViT MLPs over their width.
        qk_norm: normalise queries and keys in attention (`vartok.models.vit`).
        embed_std: initial standard deviation of the position embeddings and latent tokens
            (`vartok.models.vit`).
        linear_shortcut: a linear patch path beside the ViT (`vartok.models.vit`).
        shortcut_init: "random" or "pyramid" start of the linear shortcut (`vartok.models.vit`).
        conv_channels: channels of the decoder's convolutional pixel head (0 = none).
        global_linear: a dense linear encoder/decoder beside the ViT, started at PCA of the first training
            images (`vartok.models.linear_path`); small images only (the demo).
    """

    image_size: int = 256
    patch_size: int = 16
    width: int = 512
    depth: int = 8
    heads: int = 8
    num_tokens: int = 128
    quantizer: str = "vq"
    quantizer_args: dict[str, Any] = field(default_factory=dict)
    token_dim: int | None = None
    decoder_width: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    latent_attention: Literal["full", "prefix_causal"] = "full"
    decode_fill: Literal["pad", "mask_token"] = "pad"
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    embed_std: float = 1.0
    linear_shortcut: bool = True
    shortcut_init: Literal["random", "pyramid"] = "pyramid"
    conv_channels: int = 0
    global_linear: bool = False
    architecture: Literal["vartok", "titok"] = "vartok"
    titok_reshape: Literal["fixed", "legacy"] = "fixed"
    titok_head: Literal["pixels", "proxy_codes"] = "pixels"
    pixel_decoder: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer {self.quantizer!r} is unknown; allowed: {', '.join(sorted(QUANTIZERS))}")
        self.quantizer_args = QUANTIZERS[self.quantizer].complete_args(dict(self.quantizer_args))
        for name in ("image_size", "patch_size", "width", "depth", "heads", "num_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"tokenizer.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"tokenizer.image_size {self.image_size} is not divisible by tokenizer.patch_size {self.patch_size}"
            )
        for prefix in ("", "decoder_"):
            width, heads = getattr(self, f"{prefix}width") or self.width, getattr(self, f"{prefix}heads") or self.heads
            if width % heads:
                raise ValueError(f"tokenizer.{prefix}width {width} is not divisible by tokenizer.{prefix}heads {heads}")
        if self.decode_fill not in ("pad", "mask_token"):
            raise ValueError(f"tokenizer.decode_fill must be 'pad' or 'mask_token', got {self.decode_fill!r}")
        if self.token_dim is not None and self.token_dim < 1:
            raise ValueError(f"tokenizer.token_dim must be >= 1, got {self.token_dim}")
        if self.global_linear:
            check_size(self.image_size, self.num_tokens, self.latent_dim)
        self._check_architecture()

    def _check_architecture(self) -> None:
        """The architecture's own fields: one sentence per field that does not apply to it."""
        if self.architecture not in ("vartok", "titok"):
            raise ValueError(f"tokenizer.architecture must be 'vartok' or 'titok', got {self.architecture!r}")
        if self.architecture == "vartok":
            if self.pixel_decoder:
                raise ValueError("tokenizer.pixel_decoder belongs to architecture 'titok' with titok_head "
                                 "'proxy_codes'; remove it")
            return
        vartok_only = {"latent_attention": "full", "qk_norm": False, "linear_shortcut": False,
                       "conv_channels": 0, "global_linear": False}
        for name, neutral in vartok_only.items():
            if getattr(self, name) != neutral:
                raise ValueError(f"tokenizer.{name} is an option of architecture 'vartok'; architecture 'titok' "
                                 f"needs {name}: {neutral!r}, got {getattr(self, name)!r}")
        if self.titok_reshape not in ("fixed", "legacy") or self.titok_head not in ("pixels", "proxy_codes"):
            raise ValueError(f"tokenizer.titok_reshape must be 'fixed' or 'legacy' and tokenizer.titok_head "
                             f"'pixels' or 'proxy_codes', got {self.titok_reshape!r}, {self.titok_head!r}")
        if self.titok_head == "proxy_codes":
            check_keys(self.pixel_decoder, PixelDecoderArgs, "tokenizer.pixel_decoder")
            args = PixelDecoderArgs(**self.pixel_decoder)
            self.pixel_decoder = dataclasses.asdict(args)
            if self.patch_size != args.upsampling:
                raise ValueError(f"tokenizer.titok_head 'proxy_codes' needs patch_size = the pixel decoder's "
                                 f"upsampling {args.upsampling}, got patch_size {self.patch_size}")
        elif self.pixel_decoder:
            raise ValueError("tokenizer.pixel_decoder belongs to titok_head 'proxy_codes'; remove it")

    @property
    def latent_dim(self) -> int:
        return self.token_dim or QUANTIZERS[self.quantizer].code_width(**self.quantizer_args)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TokenizerConfig:
        check_keys(values, cls, "the tokenizer config")
        return cls(**values)


def _overrides_class() -> type:
    """`TokenizerOverrides`: TokenizerConfig's fields, each `X | None = None` (None = keep the preset's value).

    Built from TokenizerConfig's own fields and types, so the two cannot drift apart; typed, so that the
    training command line lists the fields (`vartok-train fit --help`) and refuses an unknown one.
    """
    hints = typing.get_type_hints(TokenizerConfig)
    fields = [(f.name, hints[f.name] | None, field(default=None)) for f in dataclasses.fields(TokenizerConfig)]
    overrides = dataclasses.make_dataclass("TokenizerOverrides", fields)
    overrides.__module__ = __name__
    args = TokenizerConfig.__doc__.split("Args:", 1)[1]
    overrides.__doc__ = ("Overrides of a preset's TokenizerConfig fields: only the fields given (not None) replace "
                         "the preset's values.\n\n    Args:" + args)
    return overrides


TokenizerOverrides = _overrides_class()


def tokenizer_overrides(value: TokenizerOverrides | Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields a `TokenizerOverrides` (or a dict of the same keys, from Python) sets, as a plain dict.

    Args:
        value: a TokenizerOverrides (its None fields are left out), a mapping of field names to values, or None.

    Raises:
        ValueError: a key that is not a TokenizerConfig field.
        TypeError: a value that is neither.
    """
    if value is None:
        return {}
    if isinstance(value, TokenizerOverrides):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if not isinstance(value, Mapping):
        raise TypeError(f"model.tokenizer must be a TokenizerOverrides or a dict of TokenizerConfig fields, "
                        f"got {type(value).__name__}")
    check_keys(value, TokenizerConfig, "model.tokenizer")
    return dict(value)


# ---------------------------------------------------------------- presets
_TITOK_SHAPES = {"s": (512, 8, 8), "b": (768, 12, 12), "l": (1024, 24, 16)}  # width, depth per side, heads

PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo: 32 px, 4x4 patches of 8 px, 32 tokens of 10 bits (FSQ 32 x 32 codes); trains in minutes on 2 cores.
    # The global linear path (started at PCA of training images) carries the ordered coarse-to-fine content.
    # Two fine channels per token, not four coarse ones: at 10 bits per token, 64 coefficients at 32 levels
    # keep more of an image than 128 at 8/5/5/5 levels (PCA + uniform levels, held-out crops: 25.0 against
    # 22.7 dB at 32 tokens; docs/design.md). The clamp bound keeps codes linear in the latents.
    "demo": {
        "image_size": 32, "patch_size": 8, "width": 128, "depth": 3, "heads": 4, "num_tokens": 32,
        "quantizer": "fsq", "quantizer_args": {"levels": [32, 32], "bound": "clamp"}, "latent_attention": "prefix_causal",
        "global_linear": True,
    },
    # The smallest shape that still runs every code path: for tests.
    "demo_tiny": {
        "image_size": 16, "patch_size": 8, "width": 32, "depth": 1, "heads": 2, "num_tokens": 4,
        "quantizer": "fsq", "quantizer_args": {"levels": [5, 5, 5]},
    },
}
for _size, (_width, _depth, _heads) in _TITOK_SHAPES.items():
    for _tokens in (32, 64, 128, 256):
        PRESETS[f"titok_{_size}_{_tokens}"] = {
            "image_size": 256, "patch_size": 16, "width": _width, "depth": _depth, "heads": _heads, "num_tokens": _tokens,
            "quantizer": "vq", "quantizer_args": {"codebook_size": 4096, "codebook_dim": 12},
        }


# ---------------------------------------------------------------- TiTok-family released models
TITOK_SIZES = {"small": _TITOK_SHAPES["s"], "base": _TITOK_SHAPES["b"], "large": _TITOK_SHAPES["l"]}


def titok_fields(vq_model: Mapping[str, Any], crop_size: int) -> dict[str, Any]:
    """The TokenizerConfig fields of a TiTok-family model, from its released configuration.

    Args:
        vq_model: the `model.vq_model` section of a released config.json or YAML (vit_enc_model_size,
            vit_dec_model_size, vit_enc_patch_size, vit_dec_patch_size, num_latent_tokens, codebook_size,
            token_size, use_l2_norm; finetune_decoder and is_legacy default to true, as in the released code).
        crop_size: `dataset.preprocessing.crop_size`, the image size.
    Raises:
        KeyError: a required entry is missing (the caller names the file).
        ValueError: a variant vartok does not load (VAE tokenizers, stage-1 models, mixed heads).
    """
    mode = vq_model.get("quantize_mode", "vq")
    if mode != "vq":
        raise ValueError(f"quantize_mode {mode!r} (a continuous TiTok) is not supported: vartok loads the VQ models")
    two_stage, legacy = bool(vq_model.get("finetune_decoder", True)), bool(vq_model.get("is_legacy", True))
    if two_stage != legacy:
        raise ValueError(f"finetune_decoder {two_stage} with is_legacy {legacy} is not a released model: the "
                         f"two-stage models are legacy, the single-stage ones are not (a stage-1 model outputs "
                         f"proxy-code logits, not pixels)")
    sizes = {}
    for side in ("enc", "dec"):
        name = vq_model[f"vit_{side}_model_size"]
        if name not in TITOK_SIZES:
            raise ValueError(f"vit_{side}_model_size {name!r} is unknown; allowed: {', '.join(TITOK_SIZES)}")
        sizes[side] = TITOK_SIZES[name]
    patch = vq_model["vit_enc_patch_size"]
    if vq_model["vit_dec_patch_size"] != patch:
        raise ValueError(f"vit_enc_patch_size {patch} differs from vit_dec_patch_size "
                         f"{vq_model['vit_dec_patch_size']}: vartok's tokenizers use one patch size")
    (width, depth, heads), (dec_width, dec_depth, dec_heads) = sizes["enc"], sizes["dec"]
    return {
        "architecture": "titok", "image_size": int(crop_size), "patch_size": int(patch),
        "width": width, "depth": depth, "heads": heads,
        "decoder_width": dec_width, "decoder_depth": dec_depth, "decoder_heads": dec_heads,
        "num_tokens": int(vq_model["num_latent_tokens"]), "quantizer": "titok_vq",
        "quantizer_args": {"codebook_size": int(vq_model["codebook_size"]), "codebook_dim": int(vq_model["token_size"]),
                           "l2_norm": bool(vq_model["use_l2_norm"])},
        "titok_reshape": "legacy" if legacy else "fixed", "titok_head": "proxy_codes" if two_stage else "pixels",
        "linear_shortcut": False,
    }


def _released(enc: str, dec: str, tokens: int, two_stage: bool) -> dict[str, Any]:
    """`model.vq_model` of a released 256-px model: two-stage = 4096 codes of 12 on the sphere; else 8192 of 64."""
    codes, width, sphere = (4096, 12, True) if two_stage else (8192, 64, False)
    return {"vit_enc_model_size": enc, "vit_dec_model_size": dec, "vit_enc_patch_size": 16, "vit_dec_patch_size": 16,
            "num_latent_tokens": tokens, "codebook_size": codes, "token_size": width, "use_l2_norm": sphere,
            "finetune_decoder": two_stage, "is_legacy": two_stage}


#: The released TiTok-family tokenizers (docs/titok.md): name -> their `model.vq_model`, all at 256 px.
RELEASED_TITOK: dict[str, dict[str, Any]] = {
    "titok_l32": _released("large", "large", 32, True),
    "titok_b64": _released("base", "base", 64, True),
    "titok_s128": _released("small", "small", 128, True),
    "titok_bl64_vq8k": _released("base", "large", 64, False),
    "titok_bl128_vq8k": _released("base", "large", 128, False),
    "titok_sl256_vq8k": _released("small", "large", 256, False),
    "one_d_piece_s256": _released("small", "small", 256, True),
    "one_d_piece_b256": _released("base", "base", 256, True),
    "one_d_piece_l256": _released("large", "large", 256, True),
}
for _name, _vq_model in RELEASED_TITOK.items():
    PRESETS[f"released_{_name}"] = titok_fields(_vq_model, 256)


def preset_config(name: str, quantizer: str | None = None, **overrides: Any) -> TokenizerConfig:
    """The config of a named preset, optionally with another quantizer (its defaults) and overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(sorted(PRESETS))}")
    values = dict(PRESETS[name])
    if quantizer is not None and quantizer != values["quantizer"]:
        values["quantizer"], values["quantizer_args"] = quantizer, {}
    values.update(overrides)
    return TokenizerConfig(**values)
