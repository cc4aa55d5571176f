"""The token prior (vartok/models/prior.py): exact likelihoods on enumerable cases, bits vs the 2^K-way softmax,
sampling (shapes, top-k, temperature, the key/value cache), RobusTok's teacher-forced mixing, persistence, the
tokenizer pairing check, every bad-input sentence, and the spec of every registered quantizer."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch

from vartok.models.prior import TokenPrior, TokenSpec
from vartok.models.quantizers import QUANTIZERS, build_quantizer
from vartok.models.quantizers.binary import bits_to_indices, indices_to_bits

SPECS = {
    "categorical": TokenSpec(6, "categorical", 5),
    "grouped": TokenSpec(6, "grouped", 4, groups=3),
    "bits": TokenSpec(6, "bits", 16, bits=4),
}


def small(spec: TokenSpec, num_classes: int = 0, sharp: float = 1.0) -> TokenPrior:
    """A tiny prior; `sharp` scales the head so that logits are far apart (no near-ties for greedy checks)."""
    prior = TokenPrior(spec, width=32, depth=2, heads=2, num_classes=num_classes)
    with torch.no_grad():
        prior.codec.head.weight.mul_(sharp)
    return prior.eval()


def all_sequences(spec: TokenSpec) -> torch.Tensor:
    """Every token sequence of the spec: (codes^(N·G), N[, G]) int64."""
    symbols = spec.num_tokens * spec.groups
    rows = torch.tensor(list(itertools.product(range(spec.codes), repeat=symbols)), dtype=torch.int64)
    return rows.reshape(-1, spec.num_tokens, *spec.index_shape())


def bits_msb_first(code: int, k: int) -> list[int]:
    """Bits of `code`, most significant first, by plain integer arithmetic (an oracle for indices_to_bits)."""
    return [(code >> (k - 1 - i)) & 1 for i in range(k)]


def prefix_chain_log_prob(prior: TokenPrior, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) (B,) by the chain rule, each conditional from a SEPARATE logits() call on the prefix x[:, :t+1]
    only (position t's prediction must not see tokens >= t), then a softmax (or per-bit sigmoid) by hand."""
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for t in range(x.shape[1]):
        logits = prior.logits(x[:, : t + 1], labels)[:, t].double()
        if prior.spec.kind == "bits":
            bits = torch.tensor([bits_msb_first(int(c), prior.spec.bits) for c in x[:, t]], dtype=torch.float64)
            total += (bits * torch.sigmoid(logits).log() + (1 - bits) * torch.sigmoid(-logits).log()).sum(-1)
        else:
            probs = logits.softmax(-1)  # (B, G, C)
            own = x[:, t].reshape(x.shape[0], -1, 1)  # (B, G, 1)
            total += probs.gather(-1, own).squeeze(-1).log().sum(-1)
    return total


# ------------------------------------------------------------------------- 1: exact NLL, enumerable


@pytest.mark.parametrize("spec", [TokenSpec(2, "categorical", 3), TokenSpec(2, "grouped", 2, groups=2),
                                  TokenSpec(2, "bits", 4)], ids=["categorical", "grouped", "bits"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_loss_is_the_exact_nll_of_an_enumerable_case(spec: TokenSpec, num_classes: int) -> None:
    prior = small(spec, num_classes, sharp=20.0)
    everything = all_sequences(spec)  # 9 or 16 sequences of N = 2 tokens
    labels = torch.full((len(everything),), 2) if num_classes else None
    with torch.no_grad():
        log_p = prior.log_prob(everything, labels).sum(1).double()
        oracle = prefix_chain_log_prob(prior, everything, labels)
    torch.testing.assert_close(log_p, oracle, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-5)
    batch = everything[torch.tensor([0, 3, 3, len(everything) - 1])]
    batch_labels = labels[:4] if num_classes else None
    expected = -oracle[torch.tensor([0, 3, 3, len(everything) - 1])].mean() / spec.num_tokens
    torch.testing.assert_close(prior.nll(batch, batch_labels).double(), expected, rtol=0, atol=1e-5)


def test_a_prior_ignoring_its_context_has_the_closed_form_nll() -> None:
    """Head weights 0 and head bias b: every conditional is softmax(b), so nll = mean over tokens of -log softmax(b)."""
    prior = small(TokenSpec(4, "categorical", 3))
    bias = torch.tensor([1.0, -0.5, 0.25])
    with torch.no_grad():
        prior.codec.head.weight.zero_()
        prior.codec.head.bias.copy_(bias)
    x = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 2]])
    expected = -torch.log_softmax(bias, 0)[x].mean()
    torch.testing.assert_close(prior.nll(x), expected, rtol=0, atol=1e-6)


def test_a_prefix_is_scored_like_the_start_of_the_full_sequence() -> None:
    """Variable-length tokenizers: log_prob of the first k tokens equals the first k entries for all N."""
    prior = small(SPECS["grouped"])
    x = torch.randint(0, 4, (3, 6, 3))
    full = prior.log_prob(x)
    for k in (1, 3, 6):
        torch.testing.assert_close(prior.log_prob(x[:, :k]), full[:, :k], rtol=0, atol=1e-5)


def test_the_loss_trains_every_parameter() -> None:
    for num_classes in (0, 4):
        prior = small(SPECS["bits"], num_classes).train()
        labels = torch.tensor([0, 3]) if num_classes else None
        prior.nll(torch.randint(0, 16, (2, 6)), labels).backward()
        no_grad = [name for name, p in prior.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not no_grad


# -------------------------------------------------------------------------- 2: bits vs 2^K softmax


def test_bitwise_prediction_equals_the_softmax_over_all_codes() -> None:
    """Independent bits with logits l_i are the softmax over the 2^K codes with logit(code) = Σ_i b_i l_i."""
    k = 3
    prior = small(TokenSpec(3, "bits", 2**k), sharp=10.0)
    x = torch.randint(0, 2**k, (2, 3))
    codes = torch.arange(2**k)
    code_bits = torch.tensor([bits_msb_first(c, k) for c in range(2**k)], dtype=torch.float64)  # (2^K, K)
    with torch.no_grad():
        bit_logits = prior.logits(x).double()  # (2, 3, K)
        for t in range(3):
            softmax = torch.log_softmax(bit_logits[:, t] @ code_bits.T, -1)  # (2, 2^K) the replaced softmax
            torch.testing.assert_close(softmax.exp().sum(-1), torch.ones(2, dtype=torch.float64))
            for b in range(2):
                variants = x[b].repeat(2**k, 1)
                variants[:, t] = codes  # every code at t, the same prefix
                got = prior.log_prob(variants)[:, t].double()
                torch.testing.assert_close(got, softmax[b], rtol=0, atol=1e-5)
                torch.testing.assert_close(got.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_bit_order_is_the_lfq_quantizers_msb_first_order() -> None:
    """Bit i of the prior is latent channel i of lfq: the quantizer's index of a sign pattern, scored by the
    prior, equals the sum of log σ(±l_i) with + where channel i is positive."""
    k = 4
    lfq = build_quantizer("lfq", k, bits=k).eval()  # dim == bits: no projection
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=k)))  # (16, K), channel 0 first
    index = lfq(signs[None]).indices[0]  # (16,)
    for c in range(2**k):
        assert bits_msb_first(int(index[c]), k) == (signs[c] > 0).long().tolist()
        assert indices_to_bits(index[c], k).long().tolist() == bits_msb_first(int(index[c]), k)
    assert torch.equal(bits_to_indices(signs > 0), index)
    prior = small(TokenSpec(1, "bits", 2**k), sharp=10.0)
    with torch.no_grad():
        l = prior.logits(index[:, None])[:, 0]  # (16, K): position 0 sees only the start token
        expected = torch.nn.functional.logsigmoid(torch.where(signs > 0, l, -l)).sum(-1)
        torch.testing.assert_close(prior.log_prob(index[:, None])[:, 0], expected, rtol=0, atol=1e-6)


def test_an_18_bit_code_needs_no_2_to_the_18_softmax() -> None:
    prior = TokenPrior(TokenSpec(4, "bits", 2**18), width=32, depth=1, heads=2)
    assert prior.codec.head.out_features == 18
    x = prior.sample(2, 4)
    assert x.shape == (2, 4) and int(x.max()) < 2**18
    assert prior.logits(x).shape == (2, 4, 18) and torch.isfinite(prior.nll(x))


def test_drawn_codes_follow_the_code_distribution() -> None:
    """Frequencies of drawn codes (N = 1, context-free head) match the exact probabilities within 4 sigma:
    categorical at temperature 0.5 with top-k 2, and bits at temperature 1 (MSB first in the draw too)."""
    draws = 4000
    cases = [(TokenSpec(1, "categorical", 4), torch.tensor([1.0, 0.0, 0.5, -1.0]), 0.5, 2),
             (TokenSpec(1, "bits", 4), torch.tensor([1.0, -0.5]), 1.0, None)]
    for spec, bias, temperature, top_k in cases:
        prior = small(spec)
        with torch.no_grad():
            prior.codec.head.weight.zero_()
            prior.codec.head.bias.copy_(bias)
        x = prior.sample(draws, 1, temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(5))
        if spec.kind == "bits":  # p(code) = Π_i p(bit i), bit 0 the most significant
            p = torch.tensor([math.prod(torch.sigmoid(bias[i] if b else -bias[i]).item()
                                        for i, b in enumerate(bits_msb_first(c, 2))) for c in range(4)])
        else:
            p = torch.softmax(torch.tensor([1.0, -math.inf, 0.5, -math.inf]) / temperature, 0)
        freq = torch.bincount(x[:, 0], minlength=4).double() / draws
        sigma = (p * (1 - p) / draws).sqrt().double()
        assert ((freq - p.double()).abs() <= 4 * sigma + 1e-12).all(), (spec.kind, freq, p)


# ---------------------------------------------------------------------------------------- 3: mix


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_mix_keeps_everything_at_1_and_samples_at_0(kind: str) -> None:
    prior = small(SPECS[kind], num_classes=2)
    spec, labels = SPECS[kind], torch.tensor([0, 1, 1])
    x = torch.randint(0, spec.codes, (3, 5, *spec.index_shape()))
    mixed, kept = prior.mix(x, 1.0, labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed, x) and kept.all() and kept.shape == (3, 5)
    mixed, kept = prior.mix(x, 0.0, labels, temperature=0.8, generator=torch.Generator().manual_seed(1))
    drawn = prior.sample(3, 5, labels, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed, drawn) and not kept.any()


def test_mix_keeps_the_asked_share_of_tokens() -> None:
    prior = small(SPECS["categorical"])
    x = torch.randint(0, 5, (400, 6))
    mixed, kept = prior.mix(x, 0.7, generator=torch.Generator().manual_seed(2))
    share, sigma = kept.double().mean().item(), math.sqrt(0.7 * 0.3 / kept.numel())
    assert abs(share - 0.7) <= 4 * sigma, share
    assert torch.equal(mixed[kept], x[kept])


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_mixed_positions_are_conditioned_on_the_mixed_prefix(kind: str) -> None:
    """Near-greedy mixing (temperature 1e-4) of a sharp prior: each replaced token is the argmax of logits()
    recomputed on the MIXED sequence; the true prefix would have given other tokens at some positions."""
    spec = SPECS[kind]
    prior = small(spec, sharp=100.0)
    x = torch.randint(0, spec.codes, (16, 6, *spec.index_shape()))
    mixed, kept = prior.mix(x, 0.5, temperature=1e-4, generator=torch.Generator().manual_seed(3))

    def greedy(logits: torch.Tensor) -> torch.Tensor:
        return bits_to_indices(logits > 0) if kind == "bits" else logits.argmax(-1).reshape(x.shape)

    with torch.no_grad():
        on_mixed, on_true = greedy(prior.logits(mixed)), greedy(prior.logits(x))
    replaced = ~kept
    assert replaced.any() and kept.any()
    assert torch.equal(mixed[replaced], on_mixed[replaced])
    assert torch.equal(mixed[kept], x[kept])
    assert not torch.equal(on_true[replaced], on_mixed[replaced])  # the check can tell the two prefixes apart


# -------------------------------------------------------------------------------------- 4: sample


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_sample_shapes_and_values(kind: str) -> None:
    spec = SPECS[kind]
    prior = small(spec)
    for length in (1, 4, spec.num_tokens):
        x = prior.sample(3, length)
        assert x.shape == (3, length, *spec.index_shape()) and x.dtype == torch.int64
        assert 0 <= int(x.min()) and int(x.max()) < spec.codes
        assert not x.requires_grad


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("num_classes", [0, 3])
def test_tiny_temperature_is_greedy_decoding(kind: str, num_classes: int) -> None:
    """The oracle decodes greedily with a full logits() call on each prefix (no key/value cache)."""
    spec = SPECS[kind]
    prior = small(spec, num_classes, sharp=100.0)
    labels = torch.tensor([0, 2, 1, 2]) if num_classes else None
    x = prior.sample(4, spec.num_tokens, labels, temperature=1e-4, generator=torch.Generator().manual_seed(4))
    greedy = torch.zeros_like(x)
    with torch.no_grad():
        for t in range(spec.num_tokens):
            logits = prior.logits(greedy[:, : t + 1], labels)[:, t]  # token t itself is not read
            greedy[:, t] = bits_to_indices(logits > 0) if kind == "bits" else logits.argmax(-1).reshape(greedy[:, t].shape)
    assert torch.equal(x, greedy)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_one_generator_per_sequence_samples_each_as_if_drawn_alone(kind: str) -> None:
    """A batch with a list of generators gives, row by row, what sample(1, ...) gives with that generator: the
    keyed per-sample draws of gFID, in one batched pass."""
    spec = SPECS[kind]
    prior = small(spec, num_classes=3)
    labels = torch.tensor([2, 0, 1, 1, 0])
    with torch.no_grad():
        together = prior.sample(5, spec.num_tokens, labels, temperature=0.9,
                                generator=[torch.Generator().manual_seed(10 + b) for b in range(5)])
        alone = torch.cat([prior.sample(1, spec.num_tokens, labels[b : b + 1], temperature=0.9,
                                        generator=torch.Generator().manual_seed(10 + b)) for b in range(5)])
    assert torch.equal(together, alone)
    assert len({tuple(row.flatten().tolist()) for row in together}) > 1


def test_class_labels_condition_the_samples() -> None:
    prior = small(SPECS["categorical"], num_classes=3, sharp=100.0)
    x = prior.sample(3, 6, torch.tensor([0, 1, 2]), temperature=1e-4)
    assert len({tuple(row.tolist()) for row in x}) > 1  # greedy paths differ by class
    again = prior.sample(3, 6, torch.tensor([2, 2, 2]), temperature=1e-4)
    assert torch.equal(again[2], x[2]) and torch.equal(again[0], x[2])


@pytest.mark.parametrize("kind", ["categorical", "grouped"])
def test_top_k_draws_only_the_k_most_likely(kind: str) -> None:
    spec = SPECS[kind]
    prior = small(spec, sharp=3.0)
    x = prior.sample(64, spec.num_tokens, temperature=3.0, top_k=2, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        top2 = prior.logits(x).topk(2, -1).indices  # (B, N, G, 2), on the prefixes actually drawn
    own = x.reshape(*x.shape[:2], -1, 1)  # (B, N, G, 1)
    assert (top2 == own).any(-1).all()
    free = prior.sample(64, spec.num_tokens, temperature=3.0, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        outside = ~(prior.logits(free).topk(2, -1).indices == free.reshape(*free.shape[:2], -1, 1)).any(-1)
    assert outside.any()  # without top_k, codes outside the top 2 are drawn at this temperature


# ---------------------------------------------------------------------- 5: persistence, pairing, errors


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_save_and_load_are_bit_exact(kind: str, tmp_path) -> None:
    prior = small(SPECS[kind], num_classes=2)
    folder = prior.save_pretrained(tmp_path / "prior", source={"tokenizer": "runs/demo/export"})
    meta = json.loads((folder / "config.json").read_text())
    assert meta == {"format": "vartok-prior", "version": 1, "spec": SPECS[kind].to_dict(), "width": 32, "depth": 2,
                    "heads": 2, "num_classes": 2, "mlp_ratio": 4.0, "source": {"tokenizer": "runs/demo/export"}}
    loaded = TokenPrior.from_pretrained(folder)
    assert loaded.spec == SPECS[kind] and loaded.source == {"tokenizer": "runs/demo/export"}
    for (name, a), (_, b) in zip(prior.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    labels = torch.tensor([1, 0])
    x = prior.sample(2, 6, labels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(loaded.sample(2, 6, labels, generator=torch.Generator().manual_seed(7)), x)
    assert torch.equal(loaded.logits(x, labels), prior.logits(x, labels))


def test_a_bad_prior_folder_is_one_sentence(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="prior folder .*nowhere does not exist"):
        TokenPrior.from_pretrained(tmp_path / "nowhere")
    folder = small(SPECS["categorical"]).save_pretrained(tmp_path / "p")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format": "vartok-tokenizer"}))
    with pytest.raises(ValueError, match="not a valid vartok prior config: 'format' is 'vartok-tokenizer'"):
        TokenPrior.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**meta, "width": 64, "heads": 2}))
    with pytest.raises(ValueError, match="model.safetensors does not match .*config.json: .*wrong shape"):
        TokenPrior.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        TokenPrior.from_pretrained(folder)


def test_a_prior_for_another_tokenizer_is_refused_naming_both() -> None:
    prior = TokenPrior(TokenSpec(256, "categorical", 1024), width=16, depth=1, heads=1)
    prior.check_tokenizer(TokenSpec(256, "categorical", 1024), "runs/prior/export", "runs/demo/export")
    with pytest.raises(ValueError) as err:
        prior.check_tokenizer(TokenSpec(32, "categorical", 1024), "runs/prior/export", "runs/demo/export")
    assert str(err.value) == ("the prior runs/prior/export predicts 256 tokens of 1024 codes but the tokenizer "
                              "runs/demo/export has 32 tokens of 1024 codes; train a prior on this tokenizer's tokens")
    others = {"codes": (TokenSpec(256, "categorical", 4096), "256 tokens of 4096 codes"),
              "grouping": (TokenSpec(256, "grouped", 1024, groups=2), "256 tokens of 2 groups of 1024 codes"),
              "kind": (TokenSpec(256, "bits", 1024), "256 tokens of 10-bit binary codes")}
    for spec, words in others.values():
        with pytest.raises(ValueError, match=re.escape(f"tokenizer runs/demo/export has {words}; train")):
            prior.check_tokenizer(spec, "runs/prior/export", "runs/demo/export")


def bad_calls() -> list[tuple[str, object, str]]:
    plain, classes, bits = small(SPECS["categorical"]), small(SPECS["grouped"], num_classes=3), small(SPECS["bits"])
    x, xg = torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, 3, dtype=torch.long)
    two = torch.tensor([0, 1])
    return [
        ("length too long", lambda: plain.sample(2, 7), r"length must be an int in \[1, 6\] .* got 7"),
        ("length 0", lambda: plain.sample(2, 0), r"length must be an int in \[1, 6\] .* got 0"),
        ("temperature 0", lambda: plain.sample(2, 3, temperature=0.0), "temperature must be a finite number > 0.*got 0.0"),
        ("temperature < 0", lambda: plain.mix(x, 0.5, temperature=-1), "temperature must be a finite number > 0.*got -1"),
        ("top_k 0", lambda: plain.sample(2, 3, top_k=0), r"top_k must be None or an int in \[1, 5\].*got 0"),
        ("top_k > codes", lambda: plain.sample(2, 3, top_k=6), r"top_k must be None or an int in \[1, 5\].*got 6"),
        ("top_k for bits", lambda: bits.sample(2, 3, top_k=2), "top_k is not available for a prior of 6 tokens of 4-bit"),
        ("batch 0", lambda: plain.sample(0, 3), "sample batch must be an int >= 1, got 0"),
        ("labels unconditional", lambda: plain.sample(2, 3, two), "unconditional .*pass labels=None"),
        ("labels missing", lambda: classes.sample(2, 3), r"class-conditional \(num_classes=3\): pass labels"),
        ("label range", lambda: classes.nll(xg, torch.tensor([0, 3])), r"values in \[0, 2\], found 3"),
        ("label shape", lambda: classes.sample(2, 3, torch.tensor([0])), r"\(B,\) = \(2,\).*got shape \(1,\)"),
        ("label dtype", lambda: classes.sample(2, 3, torch.tensor([0.0, 1.0])), "labels must be an integer tensor"),
        ("index range", lambda: plain.nll(x + 5), r"indices must lie in \[0, 4\] for 6 tokens of 5 codes, found 5"),
        ("negative", lambda: plain.log_prob(x - 1), r"indices must lie in \[0, 4\].*found -1"),
        ("group range", lambda: classes.logits(xg + 4, two), r"\[0, 3\] per group.*found 4"),
        ("too many tokens", lambda: plain.nll(torch.zeros(2, 7, dtype=torch.long)), r"1 <= k <= 6, got shape \(2, 7\)"),
        ("no group dim", lambda: classes.nll(x, two), r"shape \(B, k, 3\) for 6 tokens of 3 groups.*got \(2, 6\)"),
        ("float indices", lambda: plain.nll(x.float()), "integer tensor .*got dtype torch.float32"),
        ("keep_prob", lambda: plain.mix(x, 1.5), r"keep_prob must be a number in \[0, 1\].*got 1.5"),
        ("generators", lambda: plain.sample(2, 3, generator=[torch.Generator()]),
         "one torch.Generator per sequence: 2 sequences, got 1 items"),
        ("mix generators", lambda: plain.mix(x, 0.5, generator=[torch.Generator()] * 2), "mix takes one generator"),
        ("width/heads", lambda: TokenPrior(SPECS["bits"], width=30, heads=4), "width 30 must be a multiple of heads 4"),
        ("bits codes", lambda: TokenSpec(4, "bits", 12), "codes = 2\\^bits, got codes=12"),
        ("groups", lambda: TokenSpec(4, "categorical", 12, groups=2), "groups must be 1, got 2"),
        ("kind", lambda: TokenSpec(4, "binary", 16), "kind must be one of categorical, grouped, bits, got 'binary'"),
        ("spec keys", lambda: TokenSpec.from_dict({"num_tokens": 4, "kind": "bits", "codes": 4, "levels": 2}),
         r"unknown fields \['levels'\]"),
    ]


@pytest.mark.parametrize("case", bad_calls(), ids=lambda c: c[0])
def test_each_bad_input_is_one_sentence(case) -> None:
    _, call, message = case
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- 6: the spec of every quantizer

QUANTIZER_CASES = {  # name: (constructor keywords, expected (kind, codes, groups, bits))
    "vq": ({"codebook_size": 32, "codebook_dim": 4}, ("categorical", 32, 1, 0)),
    "titok_vq": ({"codebook_size": 32, "codebook_dim": 4}, ("categorical", 32, 1, 0)),
    "fsq": ({"levels": [5, 4, 3]}, ("categorical", 60, 1, 0)),
    "gq": ({"bits": 8, "groups": 2}, ("grouped", 16, 2, 0)),
    "lfq": ({"bits": 6}, ("bits", 64, 1, 6)),
    "bsq": ({"bits": 6}, ("bits", 64, 1, 6)),
}


def test_every_registered_quantizer_has_a_case() -> None:
    assert set(QUANTIZER_CASES) == set(QUANTIZERS)


@pytest.mark.parametrize("name", sorted(QUANTIZER_CASES))
def test_spec_from_every_quantizer_scores_its_tokens(name: str) -> None:
    kwargs, (kind, codes, groups, bits) = QUANTIZER_CASES[name]
    quantizer = build_quantizer(name, 8, **kwargs).eval()
    spec = TokenSpec.from_quantizer(quantizer, 5)
    assert (spec.num_tokens, spec.kind, spec.codes, spec.groups, spec.bits) == (5, kind, codes, groups, bits)
    assert spec.index_shape() == quantizer.index_shape and spec.codes == quantizer.symbol_codes
    assert TokenSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with torch.no_grad():
        indices = quantizer(torch.randn(2, 5, 8)).indices
        prior = TokenPrior(spec, width=16, depth=1, heads=2)
        assert torch.isfinite(prior.log_prob(indices)).all()
        drawn = prior.sample(2, 5)
    assert drawn.shape == indices.shape
    quantizer.check_indices(drawn)  # the prior's draws decode with this quantizer


def test_an_unknown_quantizer_is_one_sentence() -> None:
    quantizer = torch.nn.Identity()
    with pytest.raises(ValueError, match="a token prior knows the quantizers bsq, fsq, gq, lfq, titok_vq, vq, not None"):
        TokenSpec.from_quantizer(quantizer, 4)
