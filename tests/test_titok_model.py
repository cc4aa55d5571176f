"""The TiTok architecture's parts against their definitions: the quantizer by brute force, both encoder readings
and the VQGAN residual block computed by hand, truncation against key padding, configuration errors.
(Parity with the released code itself is tests/test_titok_parity.py.)"""

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.titok_seed import seeded_state
from vartok import Tokenizer
from vartok.models.pixel_decoder import PixelDecoder, PixelDecoderArgs, ResnetBlock
from vartok.models.quantizers import build_quantizer
from vartok.tokenizers import PRESETS, TokenizerConfig
from vartok.tokenizers.config import titok_fields


def tiny_config(**overrides) -> TokenizerConfig:
    values = {"architecture": "titok", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2,
              "num_tokens": 6, "quantizer": "titok_vq", "linear_shortcut": False,
              "quantizer_args": {"codebook_size": 32, "codebook_dim": 8, "l2_norm": False}}
    values.update(overrides)
    return TokenizerConfig(**values)


def two_stage_config(**overrides) -> TokenizerConfig:
    return tiny_config(patch_size=16, titok_reshape="legacy", titok_head="proxy_codes",
                       quantizer_args={"codebook_size": 32, "codebook_dim": 8, "l2_norm": True},
                       pixel_decoder={"proxy_codes": 16, "code_dim": 8, "channels": 32}, **overrides)


@pytest.mark.parametrize("l2_norm", [False, True])
def test_titok_vq_picks_the_nearest_code_and_reports_the_defined_losses(l2_norm):
    torch.manual_seed(0)
    vq = build_quantizer("titok_vq", 8, codebook_size=64, codebook_dim=8, l2_norm=l2_norm)
    torch.nn.init.normal_(vq.embedding.weight)
    z = torch.randn(3, 5, 8, requires_grad=True)
    out = vq(z)
    space = F.normalize if l2_norm else (lambda x, dim: x)
    zs, book = space(z.detach(), dim=-1), space(vq.embedding.weight.detach(), dim=-1)
    brute = torch.cdist(zs.reshape(-1, 8), book).argmin(1).view(3, 5)
    assert torch.equal(out.indices, brute)
    assert torch.allclose(out.codes, book[brute], atol=1e-6)
    assert torch.allclose(out.losses["commit"], ((zs - book[brute]) ** 2).mean(), atol=1e-6)
    assert torch.allclose(out.losses["codebook"], out.losses["commit"], atol=1e-6)
    out.codes.sum().backward()  # straight-through: the codes pass the gradient to z
    assert z.grad is not None and z.grad.abs().sum() > 0
    near = vq.nearest_codes(vq.symbol_latents(z)[:, :, 0].reshape(-1, 8), 4)
    assert torch.equal(near[:, 0], brute.reshape(-1))
    order = torch.cdist(zs.reshape(-1, 8), book).topk(4, largest=False).indices
    assert torch.equal(near, order)
    assert torch.equal(vq.indices_to_codes(out.indices), book[brute])


@pytest.mark.parametrize("reshape", ["fixed", "legacy"])
def test_encoder_reads_its_latent_outputs_as_defined(reshape):
    torch.manual_seed(0)
    tok = Tokenizer.from_config(tiny_config(titok_reshape=reshape)).eval()
    enc = tok.encoder
    images = torch.rand(2, 3, 32, 32)
    captured = {}
    enc.ln_post.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        latents = enc(images)
    out = captured["out"]  # (B, N, W)
    weight, bias = enc.conv_out.weight[:, :, 0, 0], enc.conv_out.bias  # (D, W)
    if reshape == "fixed":
        expected = out @ weight.T + bias  # token n reads its own features
    else:  # the (N, W) outputs reinterpreted as (W, N): token n reads column n of that array
        expected = out.reshape(2, 32, 6).transpose(1, 2) @ weight.T + bias
    assert torch.allclose(latents, expected, atol=1e-5)


def test_resnet_block_shortcut_reads_the_block_output():
    torch.manual_seed(0)
    block = ResnetBlock(32, 64).eval()
    x = torch.randn(1, 32, 4, 4)
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(F.silu(block.norm2(h)))
    assert torch.allclose(block(x), h + block.nin_shortcut(h), atol=1e-6)


def test_pixel_decoder_upsamples_by_two_per_level():
    args = PixelDecoderArgs(proxy_codes=8, code_dim=8, channels=32, channel_mult=[1, 2, 2])
    assert args.upsampling == 4
    assert PixelDecoder(args)(torch.randn(2, 8, 3, 3)).shape == (2, 3, 12, 12)


@pytest.mark.parametrize("make", [tiny_config, two_stage_config])
def test_per_sample_lengths_equal_truncation(make):
    torch.manual_seed(0)
    tok = Tokenizer.from_config(make()).eval()
    images = torch.rand(3, 3, 32, 32)
    indices = tok.encode(images).indices
    lengths = torch.tensor([1, 4, 6])
    batched = tok.decode(indices, length=lengths)
    for i, k in enumerate(lengths.tolist()):
        alone = tok.decode(indices[i:i + 1, :k])
        assert torch.allclose(batched[i:i + 1], alone, atol=1e-4), k
    assert torch.equal(tok.decode(indices[:, :4]), tok.decode(indices, length=4))


@pytest.mark.parametrize("make", [tiny_config, two_stage_config])
@torch.no_grad()
def test_decodes_at_every_k_from_its_first_k_tokens(make):
    tok = Tokenizer.from_config(make()).eval()
    # weights at the scale of a trained model (the parity fixtures' rule), so that every token matters
    tok.load_state_dict(seeded_state({k: list(v.shape) for k, v in tok.state_dict().items()}, base_seed=0))
    indices = tok.encode(torch.rand(1, 3, 32, 32)).indices
    for k in range(1, tok.num_tokens + 1):
        tail = indices.clone()
        tail[:, k:] = torch.randint(0, 32, (1, tok.num_tokens - k))  # codes past k must not matter
        last = indices.clone()
        last[:, k - 1] = (last[:, k - 1] + 1) % 32  # token k-1 must
        recon = tok.decode(torch.cat([indices, tail, last]), length=k)
        # rows of one batch may round differently in the convolutions: equal to float32 rounding
        torch.testing.assert_close(recon[1], recon[0], atol=1e-5, rtol=0)
        assert (recon[2] - recon[0]).abs().max() > 1e-3, k


def test_nested_dropout_fill_is_available_for_fine_tuning():
    tok = Tokenizer.from_config(tiny_config(decode_fill="mask_token")).eval()
    indices = tok.encode(torch.rand(2, 3, 32, 32)).indices
    assert tok.decoder.drop_token is not None
    assert tok.decode(indices, length=2).shape == (2, 3, 32, 32)


def test_training_forward_backward_reaches_every_part():
    tok = Tokenizer.from_config(two_stage_config())
    out = tok(torch.rand(2, 3, 32, 32))
    loss = out.recon.square().mean() + out.quantizer.losses["commit"] + out.quantizer.losses["codebook"]
    loss.backward()
    for part in (tok.encoder, tok.quantizer, tok.decoder.pixel_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"linear_shortcut": True}, "linear_shortcut is an option of architecture 'vartok'"),
    ({"latent_attention": "prefix_causal"}, "latent_attention is an option"),
    ({"titok_head": "proxy_codes"}, "patch_size = the pixel decoder's upsampling 16"),
    ({"pixel_decoder": {"channels": 32}}, "pixel_decoder belongs to titok_head 'proxy_codes'"),
    ({"titok_head": "logits"}, "titok_head"),
])
def test_configuration_errors_are_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_pixel_decoder_keys_are_checked():
    with pytest.raises(ValueError, match="unknown fields \\['width'\\]"):
        two_stage_config().__class__(**{**two_stage_config().to_dict(), "pixel_decoder": {"width": 3}})


def test_released_presets_follow_the_released_configs():
    # The two-stage models: 4096 codes of 12 on the sphere, legacy layers; the VQ-8k ones: 8192 of 64, fixed.
    l32 = PRESETS["released_titok_l32"]
    assert (l32["width"], l32["depth"], l32["heads"], l32["num_tokens"]) == (1024, 24, 16, 32)
    assert l32["quantizer_args"] == {"codebook_size": 4096, "codebook_dim": 12, "l2_norm": True}
    assert (l32["titok_reshape"], l32["titok_head"]) == ("legacy", "proxy_codes")
    sl256 = PRESETS["released_titok_sl256_vq8k"]
    assert (sl256["width"], sl256["decoder_width"], sl256["num_tokens"]) == (512, 1024, 256)
    assert (sl256["titok_reshape"], sl256["titok_head"]) == ("fixed", "pixels")


@pytest.mark.parametrize(("vq_model", "message"), [
    ({"quantize_mode": "vae"}, "quantize_mode 'vae'"),
    ({"finetune_decoder": False, "is_legacy": True}, "not a released model"),
    ({"vit_enc_model_size": "huge"}, "vit_enc_model_size 'huge' is unknown"),
])
def test_unsupported_released_variants_are_refused(vq_model, message):
    base = {"vit_enc_model_size": "small", "vit_dec_model_size": "small", "vit_enc_patch_size": 16,
            "vit_dec_patch_size": 16, "num_latent_tokens": 8, "codebook_size": 16, "token_size": 8,
            "use_l2_norm": True}
    with pytest.raises(ValueError, match=message):
        titok_fields({**base, **vq_model}, 256)


def test_no_weight_decay_on_tokens_position_embeddings_or_codebooks():
    from vartok.training.optim import parameter_groups

    tok = Tokenizer.from_config(two_stage_config())
    names = {id(p): n for n, p in tok.named_parameters()}
    decay, no_decay = (sorted(names[id(p)] for p in g["params"]) for g in parameter_groups(tok, 0.1))
    for name in ("encoder.class_embedding", "encoder.positional_embedding", "encoder.latent_tokens",
                 "encoder.latent_token_positional_embedding", "decoder.mask_token", "quantizer.embedding.weight",
                 "decoder.proxy_codebook.weight", "encoder.ln_pre.weight", "decoder.blocks.0.norm1.weight"):
        assert name in no_decay, name
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "decoder.pixel_decoder.conv_in.weight" in decay
