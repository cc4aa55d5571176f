"""Every registered quantizer (a new one is covered by being registered): the config records its
constructor's defaults, `code_width` is the unprojected code width, and `nearest_codes` agrees with brute
force over all codes.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from tests.test_perturb import SMALL, oracle_scores, small_quantizer
from vartok.models.quantizers import QUANTIZERS, Quantizer, build_quantizer, quantizer_defaults
from vartok.tokenizers import TokenizerConfig


def signature_defaults(cls: type[Quantizer]) -> dict:
    """The constructor's keyword defaults but `dim`, as JSON stores them (tuples become lists)."""
    params = inspect.signature(cls).parameters.values()
    defaults = {p.name: p.default for p in params if p.name != "dim"}
    return json.loads(json.dumps(defaults))


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_config_records_the_constructor_defaults(name: str) -> None:
    config = TokenizerConfig(quantizer=name)
    assert config.quantizer_args == signature_defaults(QUANTIZERS[name]) == quantizer_defaults(name)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_defaults_in_use_are_unchanged() -> None:
    """The widths and codebooks TokenizerConfig gave before the defaults moved to the constructors."""
    widths = {name: TokenizerConfig(quantizer=name).latent_dim for name in ("vq", "fsq", "lfq", "bsq", "gq")}
    assert widths == {"vq": 12, "fsq": 6, "lfq": 18, "bsq": 18, "gq": 32}
    assert quantizer_defaults("vq")["codebook_size"] == 4096
    assert quantizer_defaults("fsq")["levels"] == [8, 8, 8, 5, 5, 5]
    assert quantizer_defaults("gq")["groups"] == 4


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_code_width_is_the_width_without_projection(name: str) -> None:
    _, small_args, _ = SMALL.get(name, (name, {}, None))
    for kwargs in ({}, small_args):  # the defaults, and keywords that change the width
        width = QUANTIZERS[name].code_width(**kwargs)
        assert TokenizerConfig(quantizer=name, quantizer_args=kwargs).latent_dim == width
        quantizer = build_quantizer(name, width, **kwargs).eval()
        indices = torch.zeros(2, 3, *quantizer.index_shape, dtype=torch.int64)
        assert quantizer.indices_to_codes(indices).shape == (2, 3, width)
        assert not any(isinstance(m, nn.Linear) for m in quantizer.modules())  # the latents enter unprojected


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_nearest_codes_agree_with_brute_force(name: str) -> None:
    assert name in SMALL, f"add a small {name!r} case to SMALL and oracle_scores in tests/test_perturb.py"
    quantizer, dim = small_quantizer(name)
    torch.manual_seed(2)
    latents = torch.randn(4, 50, dim)
    x = quantizer.symbol_latents(latents)  # (B, N, G, C)
    assert x.dtype == torch.float32 and x.shape[:2] == (4, 50)
    scores = oracle_scores(name, quantizer, latents)  # (B, N, G, K), larger = nearer
    total = quantizer.symbol_codes
    assert scores.shape[-1] == total and x.shape[2] == scores.shape[2]
    flat_x, flat_scores = x.reshape(-1, x.shape[-1]), scores.reshape(-1, total)
    ranked = quantizer.nearest_codes(flat_x, total)  # (M, K) every code, nearest first
    assert ranked.dtype == torch.int64
    assert torch.equal(ranked.sort(dim=1).values, torch.arange(total).expand_as(ranked))
    ordered = flat_scores.gather(1, ranked)
    assert bool((ordered[:, 1:] <= ordered[:, :-1] + 1e-4).all())  # the brute-force order, up to rounding
    few = quantizer.nearest_codes(flat_x, 5)
    assert torch.allclose(flat_scores.gather(1, few), ordered[:, :5], atol=1e-4)


@pytest.mark.parametrize("levels", [[3, 4, 5], [8, 8, 8, 5, 5, 5], [32, 32]])
def test_fsq_levels_and_basis_equal_the_library_buffers(levels: list[int]) -> None:
    quantizer = build_quantizer("fsq", len(levels), levels=levels)
    got_levels, basis = quantizer.level_tensors()
    assert torch.equal(got_levels, quantizer.fsq._levels.long())
    assert torch.equal(basis, quantizer.fsq._basis.long())
    assert not any(key.endswith(("levels", "basis")) for key in quantizer.state_dict())


def test_unknown_quantizer_args_key_is_one_clear_error() -> None:
    match = r"unknown key 'bits' \(value 8\) for quantizer 'vq'; allowed keys: codebook_size, codebook_dim"
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(quantizer="vq", quantizer_args={"bits": 8})
    with pytest.raises(ValueError, match=match):
        build_quantizer("vq", 8, bits=8)
    with pytest.raises(ValueError, match=r"unknown key 'groups' \(value 2\) for quantizer 'lfq'"):
        QUANTIZERS["lfq"].code_width(groups=2)


def test_a_quantizer_without_the_perturbation_interface_names_itself() -> None:
    class Bare(Quantizer):
        pass

    bare = Bare()
    with pytest.raises(NotImplementedError, match="Bare does not implement symbol_codes"):
        _ = bare.symbol_codes
    with pytest.raises(NotImplementedError, match="Bare does not implement symbol_latents"):
        bare.symbol_latents(torch.zeros(1, 1, 1))
    with pytest.raises(NotImplementedError, match="Bare does not implement nearest_codes"):
        bare.nearest_codes(torch.zeros(1, 1), 1)
    with pytest.raises(NotImplementedError, match="Bare does not implement the classmethod code_width"):
        Bare.code_width()


@pytest.mark.parametrize("name, kwargs", [(name, SMALL[name][1]) for name in sorted(QUANTIZERS)]
                         + [("vq", {**SMALL["vq"][1], "ema": False})])
def test_the_nearest_code_is_the_code_the_quantizer_assigns(name: str, kwargs: dict) -> None:
    """An independent oracle for every quantizer, the learnable vq codebook included: the code each token is
    assigned in the forward pass is the first of its nearest codes (the search uses the quantizer's own
    distance, euclidean for a learnable codebook, cosine for the EMA one)."""
    torch.manual_seed(3)
    width = QUANTIZERS[name].code_width(**kwargs)
    quantizer = build_quantizer(name, width + 2, **kwargs).eval()  # with the input projection
    if name == "vq" and not kwargs.get("ema", True):
        with torch.no_grad():  # codes of unequal norms: cosine and euclidean order then differ
            quantizer.vq.codebook.mul_(torch.rand(quantizer.codebook_size, 1) * 3 + 0.1)
    latents = torch.randn(3, 40, width + 2)
    with torch.no_grad():
        assigned = quantizer(latents).indices.reshape(3 * 40, -1)  # (M, G)
        x = quantizer.symbol_latents(latents)  # (B, N, G, C)
        nearest = quantizer.nearest_codes(x.reshape(-1, x.shape[-1]), 1).reshape(3 * 40, -1)
    assert torch.equal(nearest, assigned)
