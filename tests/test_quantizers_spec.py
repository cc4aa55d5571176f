"""Every quantizer honours docs/definitions.md §1: exact inverse, masks, float32 under autocast, errors."""

import pytest
import torch

from vartok.models.quantizers import QUANTIZERS, build_quantizer

CASES = {
    "vq": {"codebook_size": 32, "codebook_dim": 4},
    "fsq": {"levels": [5, 4, 3]},
    "lfq": {"bits": 6},
    "bsq": {"bits": 6},
    "gq": {"bits": 8, "groups": 2},
    "titok_vq": {"codebook_size": 32, "codebook_dim": 4},
}
# titok_vq's forward codes are z + (q - z), the released TiTok's arithmetic: one float32 rounding from q.
INVERSE_ATOL = {"titok_vq": 2.4e-7}


def test_every_registered_quantizer_is_covered():
    assert set(QUANTIZERS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dim", [8, None])
def test_indices_to_codes_is_the_exact_inverse(name, dim):
    kwargs = CASES[name]
    width = dim or {"vq": 4, "fsq": 3, "titok_vq": 4}.get(name, kwargs.get("bits"))
    quantizer = build_quantizer(name, width, **kwargs).eval()
    out = quantizer(torch.randn(3, 7, width))
    assert out.indices.dtype == torch.int64
    assert out.indices.shape == (3, 7, *quantizer.index_shape)
    torch.testing.assert_close(quantizer.indices_to_codes(out.indices), out.codes.detach(), rtol=0,
                               atol=INVERSE_ATOL.get(name, 0.0))
    assert int(out.indices.min()) >= 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_padded_tokens_change_no_loss_statistic_or_real_index(name):
    quantizer = build_quantizer(name, 8, **CASES[name]).eval()
    z = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 2:] = False
    a = quantizer(z, mask)
    z2 = z.clone()
    z2[~mask] = torch.randn(int((~mask).sum()), 8) * 50
    b = quantizer(z2, mask)
    assert torch.equal(a.indices[mask], b.indices[mask])
    for key in a.losses:
        assert torch.allclose(a.losses[key], b.losses[key], rtol=1e-6, atol=1e-7), key
    for key in a.stats:
        assert torch.allclose(a.stats[key], b.stats[key], rtol=1e-6, atol=1e-7), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_quantization_runs_in_float32_under_bf16_autocast(name):
    quantizer = build_quantizer(name, 8, **CASES[name]).eval()
    z = torch.randn(2, 5, 8)
    reference = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z.bfloat16())
    assert out.codes.dtype == torch.float32
    assert torch.equal(out.indices, quantizer(z.bfloat16().float()).indices)
    assert reference.codes.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_straight_through_gradient_reaches_z(name):
    quantizer = build_quantizer(name, 8, **CASES[name])
    z = torch.randn(2, 5, 8, requires_grad=True)
    out = quantizer(z)
    (out.codes.sum() + sum(out.losses.values(), torch.zeros(()))).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_fsq_index_is_mixed_radix_of_levels():
    quantizer = build_quantizer("fsq", 3, levels=[5, 4, 3]).eval()
    out = quantizer(torch.randn(4, 9, 3) * 3)
    # Oracle: recover per-channel level indices from the code values and recombine by hand.
    levels = torch.tensor([5, 4, 3])
    half = levels // 2
    level_idx = (out.codes * half + half).round().long()
    expected = level_idx[..., 0] + 5 * level_idx[..., 1] + 20 * level_idx[..., 2]
    assert torch.equal(out.indices, expected)
    assert quantizer.codebook_size == 60


@pytest.mark.parametrize("levels", [[5, 3], [32, 32], [8, 5]])
def test_fsq_clamp_bound_is_the_nearest_level_of_the_linear_latent(levels):
    quantizer = build_quantizer("fsq", 2, levels=levels, bound="clamp").eval()
    z = torch.randn(6, 50, 2) * 0.7
    out = quantizer(z)
    for c, n in enumerate(levels):
        # Oracle by brute force: z scaled by (L - 1) / 2 level steps per unit (x 1.001, the library's margin)
        # and clipped to the L levels -L//2 .. L - 1 - L//2; the code is the nearest level over L // 2.
        half = n // 2
        grid = torch.arange(n) - half
        scaled = (z[..., c] * (n - 1) / 2 * (1 + 1e-3)).clamp(-(n - 1) / 2 - (n % 2 == 0) / 2,
                                                            (n - 1) / 2 - (n % 2 == 0) / 2)
        nearest = grid[(scaled[..., None] - grid).abs().argmin(-1)]
        assert torch.equal(out.codes[..., c], nearest / half)
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.codes)
    tanh = build_quantizer("fsq", 2, levels=levels).eval()
    big = torch.full((1, 1, 2), 0.8)  # tanh compresses: 0.8 -> 0.66 of the range
    assert not torch.equal(tanh(big).codes, quantizer(big).codes)


def test_fsq_rejects_an_unknown_bound():
    with pytest.raises(ValueError, match="bound"):
        build_quantizer("fsq", 2, levels=[5, 5], bound="sigmoid")


def test_usage_and_perplexity_match_counting():
    quantizer = build_quantizer("fsq", 3, levels=[5, 4, 3]).eval()
    out = quantizer(torch.randn(4, 9, 3))
    flat = out.indices.flatten().tolist()
    counts = torch.tensor([flat.count(v) for v in set(flat)], dtype=torch.float64)
    probs = counts / counts.sum()
    entropy = -(probs * probs.log()).sum()
    assert out.stats["usage"].item() == pytest.approx(len(set(flat)) / 60)
    assert out.stats["perplexity"].item() == pytest.approx(entropy.exp().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("fsq", {"levels": [2, 5]}, "levels"),
        ("fsq", {"levels": []}, "levels"),
        ("vq", {"codebook_size": 1}, "codebook_size"),
        ("vq", {"decay": 1.5}, "decay"),
        ("nope", {}, "unknown quantizer"),
    ],
)
def test_bad_configuration_names_the_field(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_quantizer(name, 8, **kwargs)
