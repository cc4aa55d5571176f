"""lfq / bsq / gq against independent oracles: brute-force enumeration of all codes, python bit strings,
vector-quantize-pytorch's LFQ, closed-form gradients, set counting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vartok.models.quantizers import build_quantizer
from vartok.models.quantizers.binary import NonFiniteError, codebook_prob_sums

# (name, kwargs) with dim == bits unless stated; k <= 10 so the oracle can enumerate every code
CASES = [
    ("lfq", {"bits": 10, "temperature": 0.5}),
    ("lfq", {"bits": 7, "temperature": 0.01}),  # odd k: halves of 4 and 3 bits
    ("bsq", {"bits": 8}),
    ("bsq", {"bits": 5, "temperature": 0.3}),
    ("gq", {"bits": 12, "groups": 3, "temperature": 0.5}),
    ("gq", {"bits": 9, "groups": 3, "temperature": 0.5, "pool_groups": True}),
    ("gq", {"bits": 10, "groups": 2, "temperature": 0.7}),
]


def make(name: str, dim: int | None = None, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_quantizer(name, dim=dim or kw["bits"], **kw)


def latents(name: str, kw: dict, batch: int = 3, length: int = 8, dim: int | None = None) -> torch.Tensor:
    """Latents whose soft assignments are neither uniform nor one-hot at the case's temperature."""
    gen = torch.Generator().manual_seed(1)
    scale = kw.get("temperature", 0.01 if name != "bsq" else 1.0)
    return torch.randn(batch, length, dim or kw["bits"], generator=gen) * (scale if name != "bsq" else 1.0)


def random_mask(batch: int, length: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(batch, length, generator=gen) < 0.6
    mask[0, 0] = True
    mask[-1] = False  # one fully padded sample
    return mask


def brute_force(name: str, kw: dict, v: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """Enumerate every code of every group in float64: p(c) = softmax_c of the SPEC's 2<s, c>/τ."""
    bits, groups = kw["bits"], kw.get("groups", 1)
    k = bits // groups
    tau = kw.get("temperature", 1.0 if name == "bsq" else 0.01)
    v = v.double().reshape(-1, bits)  # (T, K)
    weights = torch.ones(v.shape[0], dtype=torch.float64) if mask is None else mask.reshape(-1).double()
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=k)), dtype=torch.float64)  # (2^k, k)
    if name == "bsq":  # actual codes ĉ = c/√K on the unit sphere, p ∝ exp(2K<u, ĉ>/τ)
        u = v / v.norm(dim=-1, keepdim=True)
        codes, target, factor = signs / math.sqrt(bits), u, 2.0 * bits / tau
        quantized = torch.where(u > 0, 1.0, -1.0) / math.sqrt(bits)
    else:
        codes, target, factor = signs, v, 2.0 / tau
        quantized = torch.where(v > 0, 1.0, -1.0)
    sample, p_bars = 0.0, []
    for g in range(groups):
        part = target[:, g * k : (g + 1) * k]  # (T, k)
        probs = torch.softmax(factor * part @ codes.T, dim=-1)  # (T, 2^k)
        sample = sample + (-(probs * probs.clamp_min(1e-300).log()).sum(-1)) / groups  # (T,)
        p_bars.append((weights[:, None] * probs).sum(0) / weights.sum())

    def ent(p: torch.Tensor) -> float:
        return float(-(p * p.clamp_min(1e-300).log()).sum())

    codebook = ent(sum(p_bars) / groups) if kw.get("pool_groups") else sum(ent(p) for p in p_bars) / groups
    commit = float((weights * ((target - quantized) ** 2).mean(-1)).sum() / weights.sum())
    return {"sample": float((weights * sample).sum() / weights.sum()), "codebook": codebook, "commit": commit}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name,kw", CASES)
def test_entropy_equals_brute_force(name: str, kw: dict, masked: bool) -> None:
    quantizer = make(name, **kw)
    z = latents(name, kw)
    mask = random_mask(*z.shape[:2]) if masked else None
    out = quantizer(z, mask)
    oracle = brute_force(name, kw, z, mask)
    stats = out.stats
    assert stats["entropy_sample"].item() == pytest.approx(oracle["sample"], rel=1e-5, abs=1e-7)
    assert stats["entropy_codebook"].item() == pytest.approx(oracle["codebook"], rel=1e-5)
    gamma = kw.get("gamma", 1.0)
    assert out.losses["entropy"].item() == pytest.approx(
        oracle["sample"] - gamma * oracle["codebook"], rel=1e-5
    )
    assert out.losses["commit"].item() == pytest.approx(oracle["commit"], rel=1e-5)
    assert stats["perplexity"].item() == pytest.approx(math.exp(oracle["codebook"]), rel=1e-5)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_codebook_probabilities_in_index_order(k: int) -> None:
    """p̄ entry c (MSB first) equals the brute-force mean over tokens of Π_i p(bit_i = c_i)."""
    logits = torch.randn(9, 2, k) * 2  # (T, G, k)
    weights = (torch.rand(9) < 0.7).float()
    sums = codebook_prob_sums(logits, weights)  # (G, 2^k)
    p_one = torch.sigmoid(logits.double())
    for g in range(2):
        for c, word in enumerate(itertools.product([0, 1], repeat=k)):
            bits = torch.tensor(word, dtype=torch.float64)
            per_token = (bits * p_one[:, g] + (1 - bits) * (1 - p_one[:, g])).prod(-1)  # (T,)
            assert sums[g, c].item() == pytest.approx(float((weights * per_token).sum()), rel=1e-5, abs=1e-9)


def test_entropy_with_projection_equals_brute_force() -> None:
    kw = {"bits": 8, "groups": 2, "temperature": 0.5}
    quantizer = make("gq", dim=20, **kw)
    z = torch.randn(2, 6, 20)
    mask = random_mask(2, 6)
    oracle = brute_force("gq", kw, quantizer.project_in(z).detach(), mask)
    out = quantizer(z, mask)
    assert out.stats["entropy_codebook"].item() == pytest.approx(oracle["codebook"], rel=1e-5)
    assert out.stats["entropy_sample"].item() == pytest.approx(oracle["sample"], rel=1e-5)
    assert out.codes.shape == z.shape


def test_matches_vector_quantize_pytorch_lfq() -> None:
    """Reference library: same indices (MSB first) and, where its log clamp (1e-5) is inactive, the same
    per-sample and codebook entropy with inv_temperature = 1/τ."""
    from vector_quantize_pytorch import LFQ

    tau, bits = 0.8, 6
    z = torch.randn(2, 16, bits) * 0.3
    reference = LFQ(dim=bits, codebook_size=2**bits, diversity_gamma=1.0).train()
    (_, ref_indices, _), breakdown = reference(z, inv_temperature=1.0 / tau, return_loss_breakdown=True)
    out = build_quantizer("lfq", dim=bits, bits=bits, temperature=tau)(z)
    assert torch.equal(out.indices, ref_indices.long())
    assert out.stats["entropy_codebook"].item() == pytest.approx(breakdown.batch_entropy.item(), rel=1e-5)
    assert out.stats["entropy_sample"].item() == pytest.approx(breakdown.per_sample_entropy.item(), rel=1e-5)


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[2], CASES[4]])
def test_padding_is_ignored(name: str, kw: dict) -> None:
    quantizer = make(name, dim=16, **kw)
    z = latents(name, kw, dim=16)
    mask = random_mask(*z.shape[:2])
    weights = torch.randn_like(z)
    results = []
    for fill in [None, 1e30, float("nan"), float("inf"), -float("inf")]:
        zz = z.clone() if fill is None else torch.where(mask[..., None], z, torch.full_like(z, fill))
        zz.requires_grad_(True)
        out = quantizer(zz, mask)
        (sum(out.losses.values()) + (out.codes * weights * mask[..., None]).sum()).backward()
        assert torch.isfinite(out.codes).all()
        results.append((out, zz.grad[mask]))
    (first, grad0), rest = results[0], results[1:]
    for out, grad in rest:
        for key in first.losses:
            assert torch.equal(out.losses[key], first.losses[key]), key
        for key in first.stats:
            assert torch.equal(out.stats[key], first.stats[key]), key
        assert torch.equal(out.indices[mask], first.indices[mask])
        assert torch.equal(out.codes[mask], first.codes[mask])
        assert torch.equal(grad, grad0)


@pytest.mark.parametrize("dim", [None, 24])
@pytest.mark.parametrize("name,kw", [CASES[0], CASES[2], CASES[4], ("gq", {"bits": 64, "groups": 4})])
def test_indices_codes_round_trip(name: str, kw: dict, dim: int | None) -> None:
    quantizer = make(name, dim=dim, **kw)
    z = torch.randn(4, 7, dim or kw["bits"])
    z[0, 0] = 0.0  # exactly zero is bit 0, code -1
    out = quantizer(z)
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.codes)
    assert out.indices.shape == (4, 7, *quantizer.index_shape) and out.indices.dtype == torch.int64
    if dim is None:  # codes quantize back to the same indices
        assert torch.equal(quantizer(out.codes).indices, out.indices)


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[3], CASES[4], ("gq", {"bits": 64, "groups": 4})])
def test_bit_order_is_msb_first(name: str, kw: dict) -> None:
    quantizer = make(name, **kw)
    z = torch.randn(3, 5, kw["bits"])
    indices = quantizer(z).indices.reshape(15, -1)  # (T, G)
    groups = kw.get("groups", 1)
    k = kw["bits"] // groups
    for t, row in enumerate(z.reshape(15, -1).tolist()):
        for g in range(groups):
            word = "".join("1" if value > 0 else "0" for value in row[g * k : (g + 1) * k])
            assert indices[t, g].item() == int(word, 2)


@pytest.mark.parametrize("name,kw", [("lfq", {"bits": 24}), ("gq", {"bits": 64, "groups": 4}), CASES[3]])
def test_index_range(name: str, kw: dict) -> None:
    quantizer = make(name, **kw)
    k = kw["bits"] // kw.get("groups", 1)
    extremes = [torch.ones(1, 1, kw["bits"]), -torch.ones(1, 1, kw["bits"]), torch.zeros(1, 1, kw["bits"])]
    z = torch.cat([torch.randn(1, 64, kw["bits"]) * 100, *extremes], 1)
    indices = quantizer(z).indices
    assert indices.min() >= 0 and indices.max() < 2**k
    assert (indices[0, -3] == 2**k - 1).all() and (indices[0, -2] == 0).all()
    assert (indices[0, -1] == 0).all()  # q = +1 only if z > 0
    assert quantizer.codebook_size == 2 ** kw["bits"] and quantizer.bits_per_token == float(kw["bits"])


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[2], CASES[4]])
def test_straight_through_gradient(name: str, kw: dict) -> None:
    quantizer = make(name, **kw)
    z = latents(name, kw).requires_grad_(True)
    weights = torch.randn_like(z)
    (quantizer(z).codes * weights).sum().backward()
    if name == "bsq":  # d/dz <w, z/|z|> = (w - u<u, w>)/|z|
        u = F.normalize(z.detach(), dim=-1)
        expected = (weights - u * (u * weights).sum(-1, keepdim=True)) / z.detach().norm(dim=-1, keepdim=True)
    else:
        expected = weights
    torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-6)


def test_entropy_gradient_reaches_latents_and_projection() -> None:
    quantizer = make("gq", dim=12, bits=8, groups=2, temperature=1.0)
    z = torch.randn(2, 5, 12, requires_grad=True)
    quantizer(z).losses["entropy"].backward()
    assert z.grad.abs().sum() > 0 and quantizer.project_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[2], CASES[4]])
def test_float32_under_bf16_autocast(name: str, kw: dict) -> None:
    quantizer = make(name, dim=32, **kw)
    z = torch.randn(4, 9, 32) * 0.3
    reference = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert torch.equal(out.indices, reference.indices)
    assert out.codes.dtype == torch.float32 and torch.equal(out.codes, reference.codes)
    for key, value in out.losses.items():
        assert value.dtype == torch.float32 and torch.equal(value, reference.losses[key])


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[4], ("gq", {"bits": 8, "groups": 4})])
def test_usage_statistics(name: str, kw: dict) -> None:
    quantizer = make(name, **kw)
    z = torch.randn(6, 10, kw["bits"])
    mask = random_mask(6, 10)
    out = quantizer(z, mask)
    indices = out.indices.reshape(6, 10, -1)  # (B, N, G)
    groups, k = indices.shape[-1], kw["bits"] // indices.shape[-1]
    per_group = [
        len({indices[b, n, g].item() for b, n in mask.nonzero().tolist()}) / 2**k for g in range(groups)
    ]
    assert out.stats["usage"].item() == pytest.approx(sum(per_group) / groups)
    if groups > 1:
        assert [out.stats[f"usage_group{g}"].item() for g in range(groups)] == pytest.approx(per_group)
    expected = [len({tuple(indices[b, n].tolist()) for b in range(6) if mask[b, n]}) for n in range(10)]
    assert quantizer.position_usage(out.indices, mask).tolist() == expected
    expected_all = [len({tuple(indices[b, n].tolist()) for b in range(6)}) for n in range(10)]
    assert quantizer.position_usage(out.indices).tolist() == expected_all


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bits=10 is not divisible by groups=3"):
        build_quantizer("gq", dim=10, bits=10, groups=3)
    with pytest.raises(ValueError, match="exceeds 62"):
        build_quantizer("lfq", dim=63, bits=63)
    with pytest.raises(ValueError, match="exceeds 62"):
        build_quantizer("gq", dim=8, bits=63, groups=1)
    with pytest.raises(ValueError, match="bits per group = 25 .* exceeds 24"):
        build_quantizer("lfq", dim=8, bits=25)
    with pytest.raises(ValueError, match="bits per group = 25 .* exceeds 24"):
        build_quantizer("gq", dim=8, bits=50, groups=2)
    for name in ["lfq", "bsq"]:
        for tau in [0.0, -1.0]:
            with pytest.raises(ValueError, match="temperature must be > 0"):
                build_quantizer(name, dim=8, bits=8, temperature=tau)
    with pytest.raises(ValueError, match="gamma"):
        build_quantizer("lfq", dim=8, bits=8, gamma=float("nan"))
    quantizer = build_quantizer("gq", dim=8, bits=8, groups=2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\^4\)"):
        quantizer.indices_to_codes(torch.full((2, 3, 2), 16))
    with pytest.raises(ValueError, match="trailing shape"):
        quantizer.indices_to_codes(torch.zeros(2, 3, 4, dtype=torch.long))


@pytest.mark.parametrize("dim", [8, 12])
def test_non_finite_latents_raise(dim: int) -> None:
    quantizer = build_quantizer("lfq", dim=dim, bits=8)
    z = torch.randn(2, 4, dim)
    z[0, 1, :2] = float("nan")
    z[1, 3, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="input z has 3 non-finite values"):
        quantizer(z)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False  # the inf sits in padding: only the 2 NaN count
    with pytest.raises(ValueError, match="input z has 2 non-finite values"):
        quantizer(z, mask)
    if dim != 8:
        with torch.no_grad():
            quantizer.project_in.weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match=r"project_in\(z\) has 8 non-finite"):
            quantizer(torch.randn(1, 8, dim))


def test_entropy_loss_alone_undoes_a_collapse() -> None:
    """From an encoder whose codes collapse (bias +1.5: usage 2/32), minimising losses["entropy"] alone
    spreads the codes: measured after 100 Adam steps, usage 1.0 and H_codebook 2.63 of log(16) = 2.77."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 16)
    encoder = torch.nn.Linear(16, 8)
    with torch.no_grad():
        encoder.bias.fill_(1.5)
    quantizer = build_quantizer("gq", dim=8, bits=8, groups=2, temperature=1.0)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    first = quantizer(encoder(x))
    for _ in range(100):
        out = quantizer(encoder(x))
        optimizer.zero_grad()
        out.losses["entropy"].backward()
        optimizer.step()
    assert first.stats["usage"] < 0.2 and first.stats["entropy_codebook"] < 0.5
    assert out.stats["usage"] >= 0.9 and out.stats["entropy_codebook"] > 0.9 * math.log(16)
    assert out.losses["entropy"] < first.losses["entropy"] - 1.5
