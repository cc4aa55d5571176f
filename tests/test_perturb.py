"""Latent perturbation P(α, δ) (docs/definitions.md §3) against brute force: the exact error rate α, every replacement among
the δ nearest codes of its latent (all codes enumerated) and never the own, a uniform pick among them,
per-image Bernoulli(β), (seed, step, rank) reproducibility, untouched quantizer losses and a straight-through
gradient, the schedules, bad input, and pFID(α = 0) == rFID with the real operator."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.doubles import TinyFeatureNet, photo_crops
from vartok.metrics import EvalPlan, Networks, evaluate
from vartok.models.quantizers import build_quantizer
from vartok.tokenizers import Tokenizer
from vartok.tokenizers.perturb import (
    LatentPerturbation,
    PerturbationConfig,
    perturb_indices,
    pfid_perturbation,
    step_generator,
)
from vartok.tokenizers.ramp import Ramp

# name, keywords, latent width: small codebooks so that brute force enumerates every code
SMALL = {
    "vq": ("vq", {"codebook_size": 32, "codebook_dim": 4}, 6),  # with projections
    "fsq": ("fsq", {"levels": [3, 4, 5]}, 3),  # odd and even levels
    "fsq_clamp": ("fsq", {"levels": [3, 4, 5], "bound": "clamp"}, 3),  # the demo's bound
    "lfq": ("lfq", {"bits": 6}, 6),
    "bsq": ("bsq", {"bits": 6}, 6),
    "gq": ("gq", {"bits": 8, "groups": 2}, 8),
    "titok_vq": ("titok_vq", {"codebook_size": 32, "codebook_dim": 6}, 6),  # on the sphere, as released
}


def small_quantizer(name: str):
    kind, kwargs, dim = SMALL[name]
    torch.manual_seed(1)
    return build_quantizer(kind, dim, **kwargs).eval(), dim


def four_sigma(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n)


def oracle_scores(name: str, quantizer, latents: torch.Tensor) -> torch.Tensor:
    """Brute force: closeness (larger = nearer) of every symbol latent to every code of its symbol.

    Returns (B, N, G, K); the codes are enumerated from the quantizer's codebook or
    its `indices_to_codes`, the distances are the Euclidean / cosine ones of docs/definitions.md §3.
    """
    z = latents.float()
    with torch.no_grad():
        if name == "vq":
            x = F.normalize(quantizer.project_in(z), dim=-1)
            return (x @ quantizer.vq.codebook.T)[:, :, None]
        if name == "titok_vq":  # euclidean distance between unit vectors
            book = F.normalize(quantizer.embedding.weight, dim=-1)
            x = F.normalize(quantizer.project_in(z), dim=-1)
            return -torch.cdist(x.reshape(-1, x.shape[-1]), book).reshape(*z.shape[:2], 1, -1)
        if name.startswith("fsq"):
            levels = torch.tensor(quantizer.levels)
            half_l = (levels - 1) * 1.001 / 2
            offset = (levels % 2 == 0).float() * 0.5
            if quantizer.bound == "clamp":
                bounded = (z + offset / half_l).clamp(-1, 1) * half_l - offset
            else:
                bounded = torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset  # level units
            codes, _ = quantizer.fsq(z)
            assert torch.equal(bounded.round() / (levels // 2), codes)  # the oracle's latent is the library's
            grid = quantizer.fsq.implicit_codebook * (levels // 2)  # (K, C) level units
            return -torch.cdist(bounded.reshape(-1, 3), grid).pow(2).reshape(*z.shape[:2], 1, -1)
        k = quantizer.group_bits
        every = torch.arange(2**k)
        codes = quantizer.indices_to_codes(every[:, None].expand(-1, 2) if name == "gq" else every)  # (2^k, K)
        x = F.normalize(z, dim=-1) if name == "bsq" else z  # no projection: dim == bits
        scores = []
        for g in range(quantizer.groups):
            part, grid = x[..., g * k : (g + 1) * k], codes[:, g * k : (g + 1) * k]  # (B, N, k), (2^k, k)
            scores.append(-torch.cdist(part.reshape(-1, k), grid).pow(2).reshape(*z.shape[:2], -1))
        return torch.stack(scores, dim=2)  # (B, N, G, 2^k)


@pytest.mark.parametrize("name", list(SMALL))
def test_error_rate_and_nearest_neighbours_against_brute_force(name: str) -> None:
    quantizer, dim = small_quantizer(name)
    latents = torch.randn(100, 1000, dim)  # >= 100k symbols
    own = quantizer(latents).indices
    alpha, delta = 0.3, 5
    new, replaced = perturb_indices(quantizer, latents, own, alpha, delta, step_generator(0, 0, 0))

    own3, new3 = own.reshape(*own.shape[:2], -1), new.reshape(*own.shape[:2], -1)  # (B, N, G)
    changed = new3 != own3
    n = changed.numel()
    assert n >= 100_000
    assert abs(changed.float().mean().item() - alpha) < four_sigma(alpha, n)  # never the own code: α exact
    assert torch.equal(changed, replaced)

    scores = oracle_scores(name, quantizer, latents)  # (B, N, G, K)
    s = scores[changed]  # (M, K)
    own_s = s.gather(1, own3[changed][:, None])
    new_s = s.gather(1, new3[changed][:, None])
    others_closer = (s > new_s).sum(1) - (own_s[:, 0] > new_s[:, 0]).long()  # closer codes, own excluded
    assert int(others_closer.max()) < delta  # among the δ nearest other codes
    counts = torch.bincount(others_closer, minlength=delta).float()  # uniform over the δ ranks
    m = int(changed.sum())
    assert (counts / m - 1 / delta).abs().max() < four_sigma(1 / delta, m)


def test_multi_bit_flips_when_delta_exceeds_the_bits() -> None:
    quantizer, dim = small_quantizer("lfq")  # 6 bits: δ = 20 needs flip sets of 2 and 3 bits
    latents = torch.randn(20, 500, dim)
    own = quantizer(latents).indices
    new, _ = perturb_indices(quantizer, latents, own, 1.0, 20, step_generator(3, 0, 0))
    scores = oracle_scores("lfq", quantizer, latents)
    s = scores[:, :, 0].reshape(-1, 64)
    new_s = s.gather(1, new.reshape(-1, 1))
    assert int(((s > new_s).sum(1) - 1).max()) < 20 and bool((new != own).all())
    flips = torch.bitwise_xor(new, own).reshape(-1)
    popcount = sum(((flips >> b) & 1) for b in range(6))
    assert int(popcount.max()) >= 2


def test_beta_selects_images_per_sample() -> None:
    quantizer, dim = small_quantizer("fsq")
    hook = LatentPerturbation(PerturbationConfig(alpha=1.0, delta=4, beta=0.5, seed=7), quantizer)
    latents = torch.randn(2, 4, dim)
    out = quantizer(latents)
    steps, per_step = 2000, []
    for step in range(steps):
        codes = hook(out.codes, latents, out, step)
        per_image = (codes != out.codes).any(-1).any(-1)  # (2,) image perturbed at all
        assert hook.last_error_rate == per_image.float().mean().item()  # α = 1: all its tokens
        per_step.append(int(per_image.sum()))
    freq = torch.bincount(torch.tensor(per_step), minlength=3).float() / steps
    for count, p in zip(range(3), (0.25, 0.5, 0.25)):  # never floor(β·B) = 1 image every step
        assert abs(freq[count].item() - p) < four_sigma(p, steps)


def test_same_seed_step_rank_gives_the_same_perturbation() -> None:
    quantizer, dim = small_quantizer("gq")
    latents = torch.randn(4, 16, dim)
    out = quantizer(latents)
    config = PerturbationConfig(alpha=0.3, delta=6, beta=1.0, seed=11)
    first = LatentPerturbation(config, quantizer, rank=1)(out.codes, latents, out, 5)
    resumed = LatentPerturbation(config, quantizer, rank=1)  # a fresh object, as after a restart
    assert torch.equal(resumed(out.codes, latents, out, 5), first)
    resumed.rank = 0
    assert not torch.equal(resumed(out.codes, latents, out, 5), first)
    resumed.rank = 1
    assert not torch.equal(resumed(out.codes, latents, out, 6), first)
    other_seed = LatentPerturbation(PerturbationConfig(alpha=0.3, delta=6, seed=12), quantizer, rank=1)
    assert not torch.equal(other_seed(out.codes, latents, out, 5), first)


def test_error_rate_counts_replaced_groups() -> None:
    quantizer, dim = small_quantizer("gq")  # dim == bits: codes are the ±1 bits themselves
    latents = torch.randn(8, 32, dim)
    out = quantizer(latents)
    hook = LatentPerturbation(PerturbationConfig(alpha=0.25, delta=3, seed=2), quantizer)
    codes = hook(out.codes, latents, out, 0)
    changed_groups = (codes != out.codes).reshape(8, 32, 2, 4).any(-1)  # (B, N, G)
    assert hook.last_error_rate == changed_groups.float().mean().item() > 0


@pytest.mark.parametrize("name", ["vq", "fsq", "lfq", "bsq", "gq"])
def test_losses_untouched_and_straight_through_gradient(name: str) -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("demo_tiny", quantizer=name).train()
    images = torch.rand(3, 3, 16, 16)
    clean, noisy = copy.deepcopy(tok), copy.deepcopy(tok)
    config = PerturbationConfig(alpha=1.0, delta=3, seed=4)
    noisy.perturbation = LatentPerturbation(config, noisy.quantizer)
    out_clean, out_noisy = clean(images, step=2), noisy(images, step=2)
    for key, value in out_clean.quantizer.losses.items():
        assert torch.equal(value, out_noisy.quantizer.losses[key])
    assert torch.equal(out_clean.quantizer.indices, out_noisy.quantizer.indices)
    assert noisy.perturbation.last_error_rate == 1.0

    # the decoder read exactly the codes of P(α, δ)'s indices (vq: in the codebook as updated by that forward)
    latents = noisy.encoder(images * 2 - 1)
    own = out_noisy.quantizer.indices
    indices, _ = perturb_indices(noisy.quantizer, latents, own, 1.0, 3, step_generator(4, 2, 0))
    assert torch.equal(out_noisy.decoder_codes, noisy.quantizer.indices_to_codes(indices))

    out_noisy.recon.square().mean().backward()
    grads = [p.grad for p in noisy.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_gradient_is_the_clean_codes_gradient() -> None:
    quantizer, dim = small_quantizer("vq")
    quantizer.train()  # the library's straight-through (and so a gradient) exists in training mode only
    hook = LatentPerturbation(PerturbationConfig(alpha=0.5, delta=4), quantizer)
    latents = torch.randn(4, 8, dim, requires_grad=True)
    out = quantizer(latents)
    weight = torch.randn(4, 8, dim)
    (hook(out.codes, latents, out, 0) * weight).sum().backward()
    perturbed_grad = latents.grad.clone()
    latents.grad = None
    out = quantizer(latents)
    (out.codes * weight).sum().backward()
    assert 0 < hook.last_error_rate < 1 and torch.equal(perturbed_grad, latents.grad)


def test_schedules_interpolate() -> None:
    ramp = Ramp(0.0, 0.2, 100, 300)
    assert [ramp(s) for s in (0, 100, 200, 250, 300, 1000)] == pytest.approx([0, 0, 0.1, 0.15, 0.2, 0.2])
    jump = Ramp(1.0, 2.0, 50, 50)
    assert (jump(49), jump(50)) == (1.0, 2.0)
    config = PerturbationConfig(alpha=0.0, delta=16, alpha_end=0.2, delta_end=100, start_step=100, end_step=300)
    assert [config.delta_at(s) for s in (0, 100, 199, 200, 300, 400)] == [16, 16, 58, 58, 100, 100]
    assert config.alpha_at(150) == pytest.approx(0.05)
    constant = PerturbationConfig(alpha=0.1, delta=8)
    assert {constant.alpha_at(s) for s in (0, 10**6)} == {0.1} and constant.delta_at(10**6) == 8

    quantizer, dim = small_quantizer("fsq")
    hook = LatentPerturbation(PerturbationConfig(alpha=0.0, delta=2, alpha_end=1.0, start_step=10, end_step=20),
                              quantizer)
    latents = torch.randn(2, 64, dim)
    out = quantizer(latents)
    assert torch.equal(hook(out.codes, latents, out, 5), out.codes) and hook.last_error_rate == 0.0
    hook(out.codes, latents, out, 20)
    assert hook.last_alpha == 1.0 and hook.last_error_rate == 1.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"alpha": 1.5}, r"perturbation\.alpha must be a probability in \[0, 1\], got 1\.5"),
    ({"alpha": -0.1}, r"perturbation\.alpha must"),
    ({"alpha_end": float("nan")}, r"perturbation\.alpha_end must"),
    ({"beta": 2}, r"perturbation\.beta must be a probability in \[0, 1\], got 2"),
    ({"delta": 1}, r"perturbation\.delta must be an int >= 2.*got 1"),
    ({"delta_end": 1.5}, r"perturbation\.delta_end must be an int >= 2"),
    ({"start_step": 10, "end_step": 5}, r"perturbation\.end_step=5 precedes perturbation\.start_step=10"),
    ({"seed": -1}, r"perturbation\.seed must be an int >= 0"),
])
def test_bad_config_is_one_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PerturbationConfig(**{"alpha": 0.1, "delta": 4, "beta": 1.0, **kwargs})


def test_delta_larger_than_the_codebook_is_an_error() -> None:
    fsq, _ = small_quantizer("fsq")  # 60 codes
    with pytest.raises(ValueError, match=r"perturbation\.delta must be an int in \[2, 59\]: the quantizer has 60"):
        LatentPerturbation(PerturbationConfig(delta=60), fsq)
    gq, _ = small_quantizer("gq")  # 16 codes per group
    with pytest.raises(ValueError, match=r"perturbation\.delta_end must be an int in \[2, 15\].*16 codes per group"):
        LatentPerturbation(PerturbationConfig(delta=4, delta_end=16, end_step=10), gq)
    tok = Tokenizer.from_preset("demo_tiny")
    with pytest.raises(ValueError, match=r"pfid alpha \(vartok-eval --pfid-alpha\) must be a probability in \[0, 1\], got 1\.2"):
        pfid_perturbation(tok, 1.2, 4)
    with pytest.raises(ValueError, match=r"pfid delta \(vartok-eval --pfid-delta\) must be an int in \[2, 124\]"):
        pfid_perturbation(tok, 0.1, 125)
    with pytest.raises(ValueError, match="needs the encoder output"):
        pfid_perturbation(tok, 0.1, 4)(torch.zeros(1, 4, dtype=torch.long), 0)


def test_pfid_at_alpha_zero_equals_rfid_with_the_real_operator() -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("demo_tiny").eval()
    images = photo_crops(6, 16, seed=5)
    loader = [{"image": images[i : i + 3], "valid": torch.ones(3, dtype=torch.bool),
               "key": [f"img{i + j}" for j in range(3)]} for i in (0, 3)]
    variants = {"a0": pfid_perturbation(tok, 0.0, 8), "a5": pfid_perturbation(tok, 0.5, 8)}
    report = evaluate(tok, loader, EvalPlan([4], {"rfid", "pfid"}, networks=Networks(inception=TinyFeatureNet()),
                                            perturbations=variants, pfid_seeds=[0, 1], baselines=False, show=False))
    entry = report["lengths"]["4"]
    assert entry["pfid"]["a0"]["per_seed"] == [entry["rfid"], entry["rfid"]]
    assert entry["pfid"]["a0"]["mean"] == entry["rfid"]
    assert entry["pfid"]["a5"]["mean"] != entry["rfid"]  # the operator does act at α > 0
