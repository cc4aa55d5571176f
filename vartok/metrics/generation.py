"""Generation metrics of a token prior (vartok.models.prior) over the evaluated tokenizer's tokens.

- bits per token at k: the mean over the evaluated images and their first k tokens of -log2 p(token | earlier
  tokens) under the prior (all G symbols of a grouped token together). The prior is autoregressive, so the
  first k tokens' likelihood is a prefix of the full one: one pass over the N tokens gives every k. Float64
  sums of bits and of images, reduced over ranks, so each image counts once under DDP.
- gFID at k: FID of images decoded from the first k tokens of sequences drawn from the prior, against the
  evaluated originals, in the evaluation's FIDBank (the same network, features and reference set as rFID).

Sampling: sample i (0 <= i < samples; samples = the number of evaluated images unless given) draws from its own
generator, on the prior's device, seeded with keyed_seed(seed, i). The indices are cut into chunks of
batch_size consecutive samples, rank r draws chunks r, r + world, ..., and a chunk is one batched draw in which
each row takes its random numbers from its own generator. A chunk is therefore the same batch on any number of
ranks, and the union over ranks, and gFID, is the same for any world size; another batch size changes only the
float rounding of the batched forward (which could flip a draw at a near tie). A class-conditional
prior's label for sample i is drawn uniformly from its classes by that generator, before its tokens. Each
sample is drawn once at the longest length L: the first k tokens of an autoregressive draw are a draw of k
tokens with the same temperature and top-k, so every k measures prefixes of the same samples, as rFID decodes
the same images at every k. The sequences gFID measures come from a `TokenSource`; `PriorSamples` is the one
the package uses (tests substitute the evaluated images' own tokens, whose gFID must equal rFID).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from vartok.pixels import to_uint8
from vartok.tokenizers.randomness import keyed_seed

if TYPE_CHECKING:  # plan.py imports this module: no FID machinery (scipy, torch-fidelity) at import time
    from vartok.metrics.fid import FIDBank

GENERATION_METRICS = ("gfid", "bits")


class TokenSource(Protocol):
    """Where gFID's token sequences come from."""

    def observe(self, indices: Tensor) -> None:
        """See the evaluated images' own tokens, (b, N[, G]), batch by batch (rank-local)."""

    def draw(self, length: int, samples: int, rank: int, world: int, batch_size: int) -> Iterator[Tensor]:
        """This rank's share of `samples` sequences of `length` tokens, in batches (b, length[, G]) int64."""

    def describe(self) -> dict[str, Any]:
        """How the sequences were made, for the report's "prior" section."""


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode under no_grad, its training flag restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


class PriorSamples:
    """Sequences drawn from a token prior, sample i from its own keyed generator (module docstring).

    Args:
        prior: a vartok.models.prior.TokenPrior.
        temperature: > 0 (1 samples the prior as trained).
        top_k: draw each symbol among its k most likely values (None: all).
        seed: the keyed seeds' first part.
    """

    def __init__(self, prior: nn.Module, temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> None:
        self.prior, self.temperature, self.top_k, self.seed = prior, temperature, top_k, seed

    def observe(self, indices: Tensor) -> None:
        return None

    def _batch(self, indices: range, length: int) -> Tensor:
        """Samples `indices`: (b, length[, G]), row j drawn with sample indices[j]'s own generator (its label
        first when conditional), so no row depends on its batch neighbours' random numbers."""
        device = self.prior.pos_embed.device
        generators = [torch.Generator(device=device).manual_seed(keyed_seed(self.seed, i)) for i in indices]
        classes = int(self.prior.num_classes)
        labels = (torch.cat([torch.randint(classes, (1,), generator=g, device=device) for g in generators])
                  if classes else None)
        return self.prior.sample(len(indices), length, labels=labels, temperature=self.temperature, top_k=self.top_k,
                                 generator=generators)

    def draw(self, length: int, samples: int, rank: int, world: int, batch_size: int) -> Iterator[Tensor]:
        chunks = [range(start, min(start + batch_size, samples)) for start in range(0, samples, batch_size)]
        with _eval_mode(self.prior):
            for chunk in chunks[rank::world]:
                yield self._batch(chunk, length)

    def describe(self) -> dict[str, Any]:
        labels = "uniform over the prior's classes, drawn per sample" if self.prior.num_classes else None
        return {"tokens": "sampled from the prior", "temperature": self.temperature, "top_k": self.top_k,
                "seed": self.seed, "labels": labels}


@dataclass
class Generation:
    """What the generation metrics (gfid, bits) measure: a token prior and how to sample it.

    Args:
        prior: the TokenPrior (vartok.models.prior) trained on the evaluated tokenizer's tokens.
        samples: sequences drawn for gFID over all ranks (None = as many as the evaluated images), >= 2.
        temperature, top_k: sampling settings (TokenPrior.sample).
        seed: sample i draws from a generator seeded with keyed_seed(seed, i).
        batch_size: sequences decoded (and measured) per batch.
        name: how the prior is named in messages and in the report (e.g. its export folder).
        source: where gFID's sequences come from (None = PriorSamples of `prior` with the settings above).
    """

    prior: nn.Module
    samples: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0
    batch_size: int = 32
    name: str = "(unnamed)"
    source: TokenSource | None = None

    def token_source(self) -> TokenSource:
        return self.source or PriorSamples(self.prior, self.temperature, self.top_k, self.seed)

    def check(self, tokenizer: Any, tokenizer_name: str) -> None:
        """One sentence, before any work, when the prior does not fit the tokenizer or a setting is out of range.

        Args:
            tokenizer: the evaluated tokenizer (its `quantizer` and `num_tokens` make its TokenSpec).
            tokenizer_name: how to name it (e.g. its export folder).
        """
        from vartok.models.prior import TokenSpec
        from vartok.models.prior_heads import check_generation

        if not hasattr(tokenizer, "quantizer"):
            raise TypeError(f"gfid and bits pair a prior with a vartok Tokenizer (one with a quantizer); the "
                            f"tokenizer {tokenizer_name} ({type(tokenizer).__name__}) has none.")
        spec = TokenSpec.from_quantizer(tokenizer.quantizer, int(tokenizer.num_tokens))
        self.prior.check_tokenizer(spec, self.name, tokenizer_name)
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 2):
            raise ValueError(f"samples={self.samples!r} is not allowed; gFID needs an integer >= 2 (None = as many "
                             "as the evaluated images).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} is not allowed; give an integer >= 1.")
        check_generation(self.prior.spec, self.prior.spec.num_tokens, self.temperature, self.top_k, None, torch.device("cpu"))


class BitsMeter(Metric):
    """Sum over images of the bits of their first k tokens, for each evaluated k (float64, summed over ranks).

    Args:
        lengths: the evaluated lengths k.
    """

    full_state_update = False

    def __init__(self, lengths: list[int]) -> None:
        super().__init__()
        self.lengths = list(lengths)
        self.add_state("bits", torch.zeros(len(lengths), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("unlabelled", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nats: Tensor | None, images: int) -> None:
        """nats: (b, N) float -log p of each token (None: the b images could not be scored, no labels)."""
        if nats is None:
            self.unlabelled += images
            return
        prefix = nats.double().cumsum(1) / torch.log(torch.tensor(2.0, dtype=torch.float64))  # (b, N) bits
        where = torch.tensor([k - 1 for k in self.lengths], device=prefix.device)
        self.bits += prefix[:, where].sum(0)
        self.images += nats.shape[0]

    def compute(self) -> dict:
        per_k = {k: float(self.bits[i] / (self.images * k)) for i, k in enumerate(self.lengths)}
        return {"bits_per_token": per_k, "images": int(self.images), "unlabelled": int(self.unlabelled)}


class GenerationMeter:
    """The generation metrics of one evaluation pass: bits per token during it, gFID sets after it.

    Args:
        generation: the prior and its settings.
        lengths: the evaluated lengths k.
        metrics: the requested metrics (gfid, bits among them).
        device: where the prior runs.
        bank: the evaluation's FIDBank (None: gFID unavailable).
    """

    def __init__(self, generation: Generation, lengths: list[int], metrics: set[str], device: torch.device,
                 bank: FIDBank | None) -> None:
        self.generation, self.lengths = generation, list(lengths)
        self.prior = generation.prior.to(device)
        self.source = generation.token_source()
        self.bank = bank if "gfid" in metrics else None
        self.bits = BitsMeter(self.lengths).to(device) if "bits" in metrics else None
        self.drawn = torch.zeros((), dtype=torch.float64)
        self.set_names = [f"gfid/{k}" for k in self.lengths] if self.bank is not None else []

    def observe(self, indices: Tensor, labels: Tensor | None) -> None:
        """One batch of the evaluated images' tokens (b, N[, G]) and their class labels (b,) or None."""
        self.source.observe(indices)
        if self.bits is None:
            return
        if self.prior.num_classes and labels is None:  # a conditional likelihood needs each image's class
            self.bits.update(None, indices.shape[0])
            return
        with _eval_mode(self.prior):
            nats = -self.prior.log_prob(indices, None if labels is None else labels.to(indices.device))
        self.bits.update(nats, indices.shape[0])

    def generate(self, tokenizer: Any, samples: int, rank: int, world: int) -> None:
        """Draw this rank's share of `samples` sequences and add their decodes at every k to the gFID sets."""
        if self.bank is None:
            return
        longest = max(self.lengths)
        for tokens in self.source.draw(longest, samples, rank, world, self.generation.batch_size):
            self.drawn += tokens.shape[0]
            for k in self.lengths:
                self.bank.update(f"gfid/{k}", to_uint8(tokenizer.decode(tokens[:, :k], length=k)))

    def metrics(self) -> list[Metric]:
        return [self.bits] if self.bits is not None else []

    def results(self, lengths: dict, distributed: bool, fid_ok: bool) -> tuple[dict, dict[str, str]]:
        """Add "gfid" and "bits_per_token" to each length's entry (synced over ranks: call on every rank).

        Args:
            lengths: the report's {"<k>": entry}.
            distributed: whether the figures are synced over the process group.
            fid_ok: whether FID can be computed (a reference of >= 2 images that is not stale).
        Returns:
            the report's "prior" section and metric -> reason for a metric that could not be computed.
        """
        from vartok.distributed import gather_objects

        unavailable: dict[str, str] = {}
        drawn = sum(gather_objects(float(self.drawn), distributed))
        if self.bank is not None and fid_ok and drawn >= 2:
            for k in self.lengths:
                lengths[str(k)]["gfid"] = self.bank.compute(f"gfid/{k}")
        if self.bits is not None:
            bits = self.bits.compute()
            if bits["unlabelled"]:
                unavailable["bits"] = (f"the prior {self.generation.name} is class-conditional and "
                                       f"{bits['unlabelled']} evaluated images came without a class label "
                                       "(batch \"label\"), so their tokens' likelihood is undefined")
            else:
                for k in self.lengths:
                    lengths[str(k)]["bits_per_token"] = bits["bits_per_token"][k]
        section = {"path": self.generation.name, "spec": self.prior.spec.to_dict(),
                   "num_classes": int(self.prior.num_classes), "sampling": self.source.describe(),
                   "samples": int(drawn) if self.bank is not None else 0}
        return section, unavailable


def batch_labels(batch: Any, valid: Tensor) -> Tensor | None:
    """The class labels of a batch's valid images, (b,) int64, when the batch dict has "label"; else None."""
    labels = batch.get("label") if isinstance(batch, dict) else None
    return None if labels is None else torch.as_tensor(labels)[valid.cpu()].long()
