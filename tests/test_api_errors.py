"""The Python API of `vartok.Tokenizer` on a user's mistakes: one clear sentence naming what was seen and what is
expected, before any network runs, for images (range, non-finite values, layout) and indices (range for every
quantizer, dtype, trailing shape, token count, length past the tokens given); and inference builds no autograd
graph."""

from __future__ import annotations

import re

import pytest
import torch

from vartok import Tokenizer
from vartok.models.quantizers import QUANTIZERS
from vartok.tokenizers.choose_length import choose_length


def tiny(quantizer: str | None = None, **overrides) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer.from_preset("demo_tiny", quantizer, **overrides).eval()


def unit_images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- images
RANGE = r"images must be float in \[0, 1\] \(divide uint8 images by 255\), got values in "


def with_value(images: torch.Tensor, where: tuple, value: float) -> torch.Tensor:
    out = images.clone()
    out[where] = value
    return out


BAD_VALUES = {
    "0-255 floats": (lambda x: (x * 255).round(), RANGE + r"\[.*, 25\d\]: they look like 0-255 values stored as floats"),
    "[-1, 1]": (lambda x: x * 2 - 1, RANGE + r"\[-0\.9.*\]: they look like \[-1, 1\] images, use \(images \+ 1\) / 2"),
    "mean/std normalised": (lambda x: (x - 0.45) / 0.22, RANGE + r".*normalised with a mean and std"),
    "resize overshoot": (lambda x: x * 1.04 - 0.02, RANGE + r".*slightly outside.*clamp\(0, 1\)"),
    "NaN": (lambda x: with_value(x, (1, 2, 3, 4), float("nan")),
            r"images must be finite floats in \[0, 1\], got 1 non-finite values \(NaN or inf\), the first nan at "
            + r"\(1, 2, 3, 4\)"),
    "inf": (lambda x: with_value(x, (0,), float("-inf")),
            r"got 768 non-finite values \(NaN or inf\), the first -inf at \(0, 0, 0, 0\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_encode_and_choose_length_name_the_range_seen_and_expected(case: str) -> None:
    tok = tiny()
    make, message = BAD_VALUES[case]
    images = make(unit_images())
    with pytest.raises(ValueError, match=message):
        tok.encode(images)
    with pytest.raises(ValueError, match=message):
        tok.choose_length(images, target_psnr=20.0)


def test_the_range_check_runs_before_the_encoder() -> None:
    tok = tiny()
    calls: list = []
    tok.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="images must be float in"):
        tok.encode(unit_images() * 255)
    assert not calls
    tok.encode(unit_images())  # valid images are encoded (the hook is live)
    assert calls


@pytest.mark.parametrize(
    ("images", "hint"),
    [
        (torch.rand(3, 16, 16), r"\(3, 16, 16\): one image needs a batch dimension, images\[None\]"),
        (torch.rand(2, 16, 16, 3), r"\(2, 16, 16, 3\): the channels are last, use images.permute\(0, 3, 1, 2\)"),
        (torch.rand(2, 1, 16, 16), r"grayscale images need 3 channels"),
        (torch.rand(2, 4, 16, 16), r"drop the alpha channel, images\[:, :3\]"),
        (torch.rand(2, 3, 32, 32), r"\(2, 3, 32, 32\): resize or crop them to 16x16, this tokenizer's image_size"),
        (torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), r"torch.uint8 .*images.float\(\) / 255"),
    ],
)
def test_a_wrong_image_layout_names_the_likely_fix(images: torch.Tensor, hint: str) -> None:
    with pytest.raises(ValueError, match=r"images must be float \(B, 3, 16, 16\) in \[0, 1\], got .*" + hint):
        tiny().encode(images)


def test_images_that_are_not_a_tensor_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"images must be a float torch.Tensor .* got ndarray"):
        tiny().encode(unit_images().numpy())


# ---------------------------------------------------------------- indices, every quantizer
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_decode_names_a_bad_index_its_position_and_the_allowed_range(name: str) -> None:
    """FSQ wrapped out-of-range indices silently, VQ decoded -1 as its last code and raised an IndexError past K."""
    tok = tiny(name)
    quantizer = tok.quantizer
    count, trailing = quantizer.symbol_codes, quantizer.index_shape
    per = " per group" if trailing else ""
    indices = tok.encode(unit_images()).indices  # (2, 4[, G])
    for bad in (-1, count, count + 1000):
        wrong = indices.clone()
        wrong[1, 2] = bad  # every group of token 2 of image 1
        where = (1, 2, 0) if trailing else (1, 2)
        low, high = int(wrong.min()), int(wrong.max())
        message = rf"indices must lie in \[0, .*\) = \[0, {count - 1}\]{per}, the codes per symbol of this {name} " + (
            re.escape(f"quantizer, but index {bad} is at position {where} (values found in [{low}, {high}])"))
        with pytest.raises(ValueError, match=message):
            tok.decode(wrong)
        with pytest.raises(ValueError, match=message):
            quantizer.indices_to_codes(wrong)  # the quantizer's own decode path: the same one check
    with pytest.raises(ValueError, match=r"indices must be an integer tensor \(int64, as encode returns them\), got "
                                         r"dtype torch.float32"):
        tok.decode(indices.float())
    with pytest.raises(ValueError, match="got dtype torch.bool"):
        tok.decode(indices > 0)
    tok.decode(indices.int())  # any integer dtype is fine


def test_grouped_indices_with_the_wrong_group_count_name_the_trailing_shape() -> None:
    tok = tiny("gq")
    indices = tok.encode(unit_images()).indices  # (2, 4, 4)
    for wrong in (indices[..., :3], indices[..., :1]):
        with pytest.raises(ValueError, match=r"indices must have trailing shape \(4,\) \(one index per group of this "
                                             r"gq quantizer\), got shape"):
            tok.decode(wrong)


@pytest.mark.parametrize("name", ["fsq", "gq"])
def test_more_tokens_than_n_or_a_length_past_the_prefix_is_one_clear_error(name: str) -> None:
    tok = tiny(name)
    indices = tok.encode(unit_images()).indices  # (2, 4[, G])
    layout = r"\(B, k, 4\)" if name == "gq" else r"\(B, k\)"
    with pytest.raises(ValueError, match=layout + r" with 1 <= k <= 4 tokens \(all N = 4 that encode returned, or a "
                                                  r"stored prefix of the first k\), got shape \(2, 8"):
        tok.decode(torch.cat([indices, indices], 1))
    with pytest.raises(ValueError, match=r"with 1 <= k <= 4 tokens .*got shape \(2, 0"):
        tok.decode(indices[:, :0])
    for length in (3, torch.tensor([1, 3])):
        with pytest.raises(ValueError, match=r"length 3 asks for more tokens than the 2 in indices \(2, 2"):
            tok.decode(indices[:, :2], length=length)
    with pytest.raises(ValueError, match=r"length must be an int in \[1, 4\].*got 5"):  # past N: the N message
        tok.decode(indices, length=5)


# ---------------------------------------------------------------- no autograd graph at inference
def no_graph(tensor: torch.Tensor) -> bool:
    return not tensor.requires_grad and tensor.grad_fn is None


@pytest.mark.parametrize("name", ["vq", "gq"])
def test_inference_builds_no_autograd_graph_outside_no_grad(name: str) -> None:
    tok = tiny(name).train()  # trainable parameters, training mode, and gradients enabled
    assert torch.is_grad_enabled() and all(p.requires_grad for p in tok.parameters() if p.is_floating_point())
    images = unit_images()
    enc = tok.encode(images)
    tensors = [enc.indices, enc.codes, enc.latents, *enc.quantizer.losses.values(), *enc.quantizer.stats.values()]
    assert all(no_graph(t) for t in tensors)
    assert no_graph(tok.decode(enc.indices)) and no_graph(tok.decode(enc.indices[:, :2], length=torch.tensor([1, 2])))
    assert no_graph(tok.choose_length(images, target_psnr=10.0))
    assert no_graph(choose_length(tok, images, target_psnr=10.0))
    assert tok.training  # choose_length restores the mode
    out = tok(images)  # the training forward keeps its gradients
    assert out.recon.requires_grad and out.recon.grad_fn is not None
