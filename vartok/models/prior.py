"""Token prior: a small causal transformer over a tokenizer's 1D token sequence (no Lightning).

`TokenSpec` says what is predicted (N tokens of one kind, see `prior_heads.py`); `TokenPrior` gives next-token
logits, log-likelihoods and the training loss for any prefix length 1 <= k <= N, draws tokens (temperature,
top-k), mixes true and drawn tokens left to right (RobusTok's decoder post-training), and saves to / loads from
an export folder (config.json + model.safetensors, never pickled). Generation uses a key/value cache: each step
runs one new position through the blocks. Shapes: B batch, k prefix length, G groups, C codes, K bits, W width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vartok.models.arguments import check_keys
from vartok.models.export_folder import folder_files, load_weights, read_config, save_folder
from vartok.models.prior_heads import CausalBlock, TokenCodec, check_generation, check_indices, check_labels
from vartok.models.quantizers.binary import MAX_INDEX_BITS

FORMAT, VERSION = "vartok-prior", 1
KINDS = ("categorical", "grouped", "bits")
QUANTIZER_KINDS = {"vq": "categorical", "fsq": "categorical", "titok_vq": "categorical", "gq": "grouped",
                   "lfq": "bits", "bsq": "bits"}


def _positive_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class TokenSpec:
    """What a prior predicts: N token positions; each token is `groups` symbols of `codes` values each.

    Args:
        num_tokens: N, the token positions.
        kind: "categorical" (groups = 1, codes = K), "grouped" (gq: groups = G, codes = 2^(bits/G) per group) or
            "bits" (lfq/bsq: groups = 1, codes = 2^bits, predicted as `bits` independent bits given the earlier
            tokens, MSB first, as vartok's binary quantizers number their indices).
        codes: values of one symbol.
        groups: symbols per token.
        bits: for kind "bits", log2(codes) (0 is filled in from codes); 0 for the other kinds.
    """

    num_tokens: int
    kind: Literal["categorical", "grouped", "bits"]
    codes: int
    groups: int = 1
    bits: int = 0

    def __post_init__(self) -> None:
        _positive_int("TokenSpec num_tokens", self.num_tokens)
        if self.kind not in KINDS:
            raise ValueError(f"TokenSpec kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _positive_int("TokenSpec codes", self.codes, 2)
        _positive_int("TokenSpec groups", self.groups)
        _positive_int("TokenSpec bits", self.bits, 0)
        if self.kind != "grouped" and self.groups != 1:
            raise ValueError(f"TokenSpec kind {self.kind!r} has one symbol per token: groups must be 1, got {self.groups}")
        if self.kind != "bits":
            if self.bits:
                raise ValueError(f"TokenSpec bits is for kind 'bits' only; kind {self.kind!r} needs bits=0, got {self.bits}")
            return
        if self.codes & (self.codes - 1):
            raise ValueError(f"TokenSpec kind 'bits' needs codes = 2^bits, got codes={self.codes} (not a power of 2)")
        if not self.bits:
            object.__setattr__(self, "bits", self.codes.bit_length() - 1)
        if self.codes != 2**self.bits or self.bits > MAX_INDEX_BITS:
            raise ValueError(
                f"TokenSpec kind 'bits' needs codes = 2^bits with bits in [1, {MAX_INDEX_BITS}], "
                f"got codes={self.codes}, bits={self.bits}"
            )

    @classmethod
    def from_quantizer(cls, quantizer: nn.Module, num_tokens: int) -> TokenSpec:
        """The spec of a vartok quantizer's tokens (plain attribute reads: registry_name, symbol_codes, index_shape,
        bits).

        Args:
            quantizer: a vartok Quantizer (vq, fsq, titok_vq -> categorical; gq -> grouped; lfq, bsq -> bits).
            num_tokens: N, the tokenizer's token count.
        """
        name = getattr(quantizer, "registry_name", None)
        kind = QUANTIZER_KINDS.get(name)
        if kind is None:
            raise ValueError(
                f"a token prior knows the quantizers {', '.join(sorted(QUANTIZER_KINDS))}, not {name!r} "
                f"({type(quantizer).__name__})"
            )
        codes = int(quantizer.symbol_codes)
        if kind == "bits":
            return cls(num_tokens, "bits", codes, bits=int(quantizer.bits))
        if kind == "grouped":
            return cls(num_tokens, "grouped", codes, groups=int(quantizer.index_shape[0]))
        return cls(num_tokens, "categorical", codes)

    def index_shape(self) -> tuple[int, ...]:
        """Trailing shape of one token's index: () or (G,) for grouped tokens."""
        return (self.groups,) if self.kind == "grouped" else ()

    def describe(self) -> str:
        """The tokens in words, e.g. "256 tokens of 1024 codes"."""
        if self.kind == "grouped":
            return f"{self.num_tokens} tokens of {self.groups} groups of {self.codes} codes"
        if self.kind == "bits":
            return f"{self.num_tokens} tokens of {self.bits}-bit binary codes"
        return f"{self.num_tokens} tokens of {self.codes} codes"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenSpec:
        """Inverse of `to_dict`; one sentence for an unknown key."""
        check_keys(d, cls, "the prior's token spec")
        return cls(**d)


class TokenPrior(nn.Module):
    """Causal transformer over a start token followed by the first k - 1 tokens; position t predicts token t.

    The start token is a class embedding when num_classes > 0 (class-conditional), else one learned vector.
    Token embeddings: see `TokenCodec`; learned position embeddings for N positions.

    Args:
        spec: the tokens predicted.
        width: model width W (a multiple of heads).
        depth: transformer blocks.
        heads: attention heads.
        num_classes: number of class labels (0: unconditional).
        mlp_ratio: MLP hidden width / W.
    """

    def __init__(
        self, spec: TokenSpec, width: int = 256, depth: int = 4, heads: int = 4, num_classes: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if not isinstance(spec, TokenSpec):
            raise TypeError(f"spec must be a TokenSpec, got {type(spec).__name__}")
        for name, value, low in (("width", width, 1), ("depth", depth, 1), ("heads", heads, 1),
                                 ("num_classes", num_classes, 0)):
            _positive_int(f"prior {name}", value, low)
        if width % heads:
            raise ValueError(f"prior width {width} must be a multiple of heads {heads}")
        if not (isinstance(mlp_ratio, (int, float)) and math.isfinite(mlp_ratio) and mlp_ratio > 0):
            raise ValueError(f"prior mlp_ratio must be a finite number > 0, got {mlp_ratio!r}")
        self.spec = spec
        self.config = {"width": width, "depth": depth, "heads": heads, "num_classes": num_classes,
                       "mlp_ratio": float(mlp_ratio)}
        self.num_classes = num_classes
        self.source: dict[str, Any] | None = None  # what `save_pretrained` was told the prior was trained on
        self.codec = TokenCodec(spec.kind, spec.codes, spec.groups, spec.bits, width)
        if num_classes:
            self.class_embed = nn.Embedding(num_classes, width)
        else:
            self.start = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens, width))
        self.blocks = nn.ModuleList(CausalBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(self._init_weights)
        for param in (self.pos_embed, *([] if num_classes else [self.start])):
            nn.init.normal_(param, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------------ scoring
    def _start(self, labels: Tensor | None, batch: int) -> Tensor:
        """(B, 1, W): the class embedding of each label, or the learned start token."""
        if self.num_classes:
            return self.class_embed(labels)[:, None]
        return self.start.expand(batch, -1, -1)

    def _run(self, x: Tensor, caches: list | None = None) -> tuple[Tensor, list]:
        """Blocks and final norm over new positions x (B, T, W) after those in `caches` (one per block)."""
        caches = caches or [None] * len(self.blocks)
        kept = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x, cache = block(x, cache)
            kept.append(cache)
        return self.norm(x), kept

    def logits(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """Next-symbol logits of positions 0..k-1 (position t predicts token t from the tokens before it).

        Args:
            indices: (B, k) or (B, k, G) int64 tokens, 1 <= k <= N.
            labels: (B,) int64 class labels of a class-conditional prior, else None.
        Returns:
            (B, k, G, C) for categorical (G = 1) and grouped tokens, (B, k, K) for kind "bits".
        """
        batch, length = check_indices(self.spec, indices)
        check_labels(self.num_classes, labels, batch)
        tokens = self.codec.embed_tokens(indices[:, : length - 1])  # (B, k - 1, W)
        x = torch.cat([self._start(labels, batch).to(tokens.dtype), tokens], 1) + self.pos_embed[:, :length]
        return self.codec.read(self._run(x)[0])

    forward = logits

    def log_prob(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, k) float32 log-likelihood (nats) of each token given the tokens before it (and the label)."""
        return self.codec.log_prob(self.logits(indices, labels), indices)

    def nll(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scalar training loss: the mean negative log-likelihood in nats per token of (B, k[, G]) indices."""
        return -self.log_prob(indices, labels).mean()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def _generate(
        self, batch: int, length: int, labels: Tensor | None, temperature: float, top_k: int | None,
        generator: torch.Generator | Sequence[torch.Generator] | None, forced: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """Draw `length` tokens left to right with a key/value cache; where keep (B, length) is True, the token
        taken is forced (B, length[, G]) instead of the draw (which is made anyway, so draws line up)."""
        x = self._start(labels, batch) + self.pos_embed[:, :1]  # (B, 1, W)
        caches, tokens = None, []
        for t in range(length):
            hidden, caches = self._run(x, caches)
            token = self.codec.draw(self.codec.read(hidden[:, -1]), temperature, top_k, generator)  # (B[, G])
            if keep is not None:
                where = keep[:, t].reshape(batch, *[1] * (token.dim() - 1))
                token = torch.where(where, forced[:, t], token)
            tokens.append(token)
            if t + 1 < length:
                x = self.codec.embed_tokens(token[:, None]) + self.pos_embed[:, t + 1 : t + 2]
        return torch.stack(tokens, 1)

    def sample(
        self, batch: int, length: int, labels: Tensor | None = None, temperature: float = 1.0,
        top_k: int | None = None, generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Tensor:
        """Draw token sequences from the prior, under torch.no_grad.

        Args:
            batch: number of sequences B.
            length: tokens per sequence k, 1 <= k <= N (a variable-length tokenizer decodes the first k).
            labels: (B,) int64 class labels of a class-conditional prior, else None.
            temperature: > 0; divides each symbol's logits (each bit's logit for kind "bits").
            top_k: draw each symbol among its k most likely values only (None: all); not for kind "bits".
            generator: random source on the prior's device (None: torch's default), or a list of B: sequence b
                then draws from generator b alone, the tokens it would get sampled by itself (up to the float
                rounding of a batched forward), so a batch of keyed generators samples like one call per sequence.
        Returns:
            (B, k) or (B, k, G) int64 tokens.
        """
        _positive_int("sample batch", batch)
        check_generation(self.spec, length, temperature, top_k, generator, self.pos_embed.device, batch)
        check_labels(self.num_classes, labels, batch)
        return self._generate(batch, length, labels, temperature, top_k, generator)

    def mix(
        self, indices: Tensor, keep_prob: float, labels: Tensor | None = None, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """RobusTok's teacher-forced mixing, under torch.no_grad: left to right, position t keeps the true token
        with probability keep_prob, else takes a token drawn from the prior given the MIXED tokens before t.

        Random draws: first one uniform per position for the keep decisions (skipped when keep_prob is 0 or 1),
        then the tokens exactly as `sample` draws them, so keep_prob 0 gives `sample`'s tokens for the same
        generator state; keep_prob 1 returns the input without running the prior.

        Args:
            indices: (B, k) or (B, k, G) int64 true tokens, 1 <= k <= N.
            keep_prob: in [0, 1].
            labels: (B,) int64 class labels of a class-conditional prior, else None.
            temperature: > 0, as in `sample`.
            generator: random source on the prior's device (None: torch's default).
        Returns:
            mixed tokens, the shape of indices, and kept (B, k) bool: True where the true token was kept.
        """
        batch, length = check_indices(self.spec, indices)
        if isinstance(keep_prob, bool) or not isinstance(keep_prob, (int, float)) or not 0 <= keep_prob <= 1:
            raise ValueError(f"keep_prob must be a number in [0, 1] (the share of true tokens kept), got {keep_prob!r}")
        check_generation(self.spec, length, temperature, None, generator, self.pos_embed.device)
        check_labels(self.num_classes, labels, batch)
        if keep_prob == 1:
            return indices.clone(), torch.ones(batch, length, dtype=torch.bool, device=indices.device)
        if keep_prob == 0:
            keep = torch.zeros(batch, length, dtype=torch.bool, device=indices.device)
            return self._generate(batch, length, labels, temperature, None, generator), keep
        keep = torch.rand(batch, length, generator=generator, device=indices.device) < keep_prob
        mixed = self._generate(batch, length, labels, temperature, None, generator, indices, keep)
        return mixed, keep

    # ------------------------------------------------------------------ pairing and persistence
    def check_tokenizer(self, spec: TokenSpec, prior_name: str, tokenizer_name: str) -> None:
        """One sentence naming both when this prior was trained for other tokens (kind, codes, groups, count).

        Args:
            spec: the tokenizer's tokens (`TokenSpec.from_quantizer(tokenizer quantizer, N)`).
            prior_name: how to name this prior (e.g. its export folder).
            tokenizer_name: how to name the tokenizer (e.g. its export folder).
        """
        if spec != self.spec:
            raise ValueError(
                f"the prior {prior_name} predicts {self.spec.describe()} but the tokenizer {tokenizer_name} has "
                f"{spec.describe()}; train a prior on this tokenizer's tokens"
            )

    def save_pretrained(self, directory: str | Path, source: dict[str, Any] | None = None) -> Path:
        """Write config.json + model.safetensors; `from_pretrained` gives back a bit-identical prior.

        Args:
            directory: the export folder (created if needed).
            source: what the prior was trained on (e.g. the tokenizer export), recorded in config.json.
        """
        meta = {"format": FORMAT, "version": VERSION, "spec": self.spec.to_dict(), **self.config}
        source = self.source if source is None else source
        if source is not None:
            meta["source"] = source
        return save_folder(self, directory, meta, FORMAT)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> TokenPrior:
        """Load a prior export folder (config.json + model.safetensors), with one sentence for a bad folder."""
        config_path, weights_path = folder_files(directory, "prior", "a prior export folder")
        try:
            meta = read_config(config_path, FORMAT)
            if meta.get("version") != VERSION:
                raise ValueError(f"'version' is {meta.get('version')!r}; this vartok reads version {VERSION}")
            settings = {key: meta[key] for key in ("width", "depth", "heads", "num_classes", "mlp_ratio")}
            prior = cls(TokenSpec.from_dict(meta["spec"]), **settings)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{config_path} is not a valid vartok prior config: {err}") from None
        prior.source = meta.get("source")
        load_weights(prior, weights_path, config_path, map_location)
        return prior.to(map_location).eval()
