"""The per-key seed rule of the TiTok parity fixtures (tests/fixtures/titok_seed.py): each tensor depends only
on its key, its shape and the base seed, with the documented scale per kind of key."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from tests.fixtures.titok_seed import key_seed, seeded_state, seeded_tensor

SHAPES = {
    "encoder.patch_embed.weight": [64, 3, 8, 8],
    "encoder.patch_embed.bias": [64],
    "encoder.class_embedding": [1, 64],
    "encoder.ln_pre.weight": [64],
    "encoder.transformer.0.attn.in_proj_weight": [192, 64],
    "encoder.transformer.0.attn.in_proj_bias": [192],
    "latent_tokens": [8, 64],
    "decoder.mask_token": [1, 1, 64],
    "quantize.embedding.weight": [32, 16],
}


def test_same_key_shape_and_seed_give_the_same_tensor() -> None:
    first = seeded_state(SHAPES, 7)
    again = seeded_state(SHAPES, 7)
    assert list(first) == list(SHAPES)
    for key, tensor in first.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert list(tensor.shape) == SHAPES[key]
        assert torch.equal(tensor, again[key])


def test_a_tensor_does_not_depend_on_the_order_or_the_other_keys() -> None:
    forward = seeded_state(SHAPES, 7)
    backward = seeded_state(dict(reversed(list(SHAPES.items()))), 7)
    alone = seeded_state({"latent_tokens": [8, 64]}, 7)
    torch.manual_seed(123)  # the global generator plays no part
    for key in SHAPES:
        assert torch.equal(forward[key], backward[key])
    assert torch.equal(alone["latent_tokens"], forward["latent_tokens"])


def test_the_key_and_the_base_seed_both_change_the_draw() -> None:
    assert key_seed("latent_tokens", 7) == 7 + zlib.crc32(b"latent_tokens")
    base = seeded_tensor("encoder.class_embedding", [1, 64], 7)
    assert not torch.equal(base, seeded_tensor("decoder.class_embedding", [1, 64], 7))
    assert not torch.equal(base, seeded_tensor("encoder.class_embedding", [1, 64], 8))


@pytest.mark.parametrize(("key", "shape", "mean", "std"), [
    ("encoder.transformer.0.attn.in_proj_bias", [40000], 0.0, 0.05),
    ("pixel_decoder.conv_in.bias", [40000], 0.0, 0.05),
    ("encoder.ln_pre.weight", [40000], 1.0, 0.1),
    ("pixel_decoder.norm_out.weight", [40000], 1.0, 0.1),
    ("decoder.decoder_embed.weight", [400, 100], 0.0, 1 / math.sqrt(100)),
    ("encoder.patch_embed.weight", [100, 3, 8, 8], 0.0, 1 / math.sqrt(3 * 8 * 8)),
    ("encoder.transformer.0.attn.in_proj_weight", [300, 128], 0.0, 1 / math.sqrt(128)),
    ("quantize.embedding.weight", [1000, 16], 0.0, 0.25),
    ("latent_tokens", [200, 200], 0.0, 0.5),
    ("decoder.mask_token", [1, 1, 40000], 0.0, 0.5),
])
def test_each_kind_of_key_has_its_documented_scale(key: str, shape: list[int], mean: float, std: float) -> None:
    tensor = seeded_tensor(key, shape, 1601)
    assert abs(float(tensor.mean()) - mean) < 0.05 * std
    assert abs(float(tensor.std()) / std - 1) < 0.03


def test_the_values_are_pinned() -> None:
    """The committed fixtures were generated from these draws: a change to the rule or to torch's CPU generator
    would silently invalidate them."""
    expected = {
        ("encoder.transformer.0.attn.in_proj_weight", (6, 4)): [0.5199151, -0.6945690, 0.0772603, -0.5101250],
        ("encoder.ln_pre.weight", (3,)): [0.9106836, 1.1103424, 1.0676486],
        ("latent_tokens", (2, 2)): [-0.6690087, 0.4166458, -0.7680882, -0.4777754],
        ("decoder.ffn.0.bias", (3,)): [-0.0618714, 0.0576457, -0.0028111],
    }
    for (key, shape), values in expected.items():
        got = seeded_tensor(key, shape, 1601).flatten()[: len(values)]
        assert torch.allclose(got, torch.tensor(values), atol=1e-6), key


def test_a_negative_base_seed_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="base_seed must be a non-negative int"):
        seeded_tensor("latent_tokens", [2], -1)
