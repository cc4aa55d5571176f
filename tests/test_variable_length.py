"""Variable-length tokens (docs/definitions.md §2) on the model: per-sample decode equals decoding alone, nested dropout
hides exactly the tail, prefix_causal latents never see later tokens, the training forward follows the
policy, every preset decodes at every k, and choose_length equals a brute-force scan with O(log N) decodes."""

import math

import pytest
import torch

from vartok import Tokenizer
from vartok.models.vit import Encoder
from vartok.tokenizers import PRESETS, LengthPolicy, preset_config
from vartok.tokenizers.choose_length import choose_length

ATOL = 1e-5  # float reduction order differs between a padded batch and a lone sample


def make(preset: str = "demo", policy: LengthPolicy | None = None, **overrides) -> Tokenizer:
    base = PRESETS[preset]
    small = {"image_size": 2 * base["patch_size"], "depth": 1} if base["image_size"] > 64 else {}
    return Tokenizer.from_config(preset_config(preset, **{**small, **overrides}), policy)


def images_for(tok: Tokenizer, batch: int) -> torch.Tensor:
    return (torch.rand(batch, 3, tok.image_size, tok.image_size) * 255).round() / 255


def capture_block_input(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().clone()))


# ---------------------------------------------------------------- per-sample lengths
@pytest.mark.parametrize("fill", ["pad", "mask_token"])
@pytest.mark.parametrize("linear_shortcut", [True, False])
@torch.no_grad()
def test_per_sample_decode_equals_decoding_each_sample_alone(fill, linear_shortcut):
    tok = make(decode_fill=fill, linear_shortcut=linear_shortcut).eval()
    indices = tok.encode(images_for(tok, 6)).indices
    lengths = torch.tensor([1, 32, 5, 17, 2, 9])
    mixed = tok.decode(indices, length=lengths)
    for b, k in enumerate(lengths.tolist()):
        alone = tok.decode(indices[b : b + 1], length=k)
        torch.testing.assert_close(mixed[b : b + 1], alone, atol=ATOL, rtol=0)
    assert (mixed[0] - tok.decode(indices[:1], length=32)[0]).abs().max() > 1e-3  # k matters: not vacuous


@pytest.mark.parametrize("fill", ["pad", "mask_token"])
@torch.no_grad()
def test_decoder_output_ignores_codes_past_keep_len(fill):
    tok = make(linear_shortcut=True, decode_fill=fill).eval()
    codes = tok.encode(images_for(tok, 4)).codes  # (B, N, D)
    keep_len = torch.tensor([3, 1, 32, 12])
    other = codes.clone()
    past = torch.arange(32)[None, :] >= keep_len[:, None]  # (B, N)
    other[past] = torch.randn(int(past.sum()), codes.shape[-1])
    torch.testing.assert_close(tok.decoder(other, keep_len, fill), tok.decoder(codes, keep_len, fill))
    other[0, 2] += 1.0  # a kept position does change the output
    assert (tok.decoder(other, keep_len, fill)[0] - tok.decoder(codes, keep_len, fill)[0]).abs().max() > 1e-4


@torch.no_grad()
def test_nested_dropout_puts_the_mask_token_past_k_and_leaves_the_rest():
    tok = make(decode_fill="mask_token").eval()
    dec = tok.decoder
    codes = tok.encode(images_for(tok, 3)).codes  # (B, N, D)
    keep_len = torch.tensor([4, 1, 31])
    seen: list = []
    handle = capture_block_input(dec.blocks[0], seen)
    dec(codes, keep_len, fill="mask_token")
    handle.remove()
    tokens = seen[0][:, :32]  # (B, N, W): the decoder's token input, before any block
    for b, k in enumerate(keep_len.tolist()):
        real = codes[b, :k] @ dec.token_embed.weight.T + dec.token_embed.bias + dec.token_pos[:k]
        torch.testing.assert_close(tokens[b, :k], real)  # positions < k untouched
        masked = dec.drop_token + dec.token_pos[k:]
        torch.testing.assert_close(tokens[b, k:], masked)  # positions >= k hold the one mask token
    assert tokens.shape[1] == 32 and seen[0].shape[1] == 32 + 16  # the sequence stays N (+ P patch queries)


# ---------------------------------------------------------------- prefix_causal
@pytest.mark.parametrize("linear_shortcut", [True, False])
@torch.no_grad()
def test_prefix_causal_latent_i_ignores_latent_tokens_after_i(linear_shortcut):
    kwargs = {"image_size": 16, "patch_size": 8, "width": 32, "depth": 2, "heads": 2, "num_tokens": 6,
              "token_dim": 4, "linear_shortcut": linear_shortcut}
    causal, full = Encoder(latent_attention="prefix_causal", **kwargs), Encoder(latent_attention="full", **kwargs)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    for encoder in (causal, full):
        before = encoder(images)  # (B, N, D)
        changed_early = []
        for j in range(6):
            saved = encoder.latent_tokens[j].clone()
            encoder.latent_tokens[j] += torch.randn(32)  # not a constant: LayerNorm would erase a uniform shift
            after = encoder(images)
            encoder.latent_tokens[j] = saved
            changed_early.append(not torch.allclose(after[:, :j], before[:, :j], atol=1e-6, rtol=0))
            assert (after[:, j] - before[:, j]).abs().max() > 1e-3  # token j itself does react
        if encoder is causal:
            assert not any(changed_early)
        else:
            assert all(changed_early[1:])  # full attention: the oracle can tell the difference


# ---------------------------------------------------------------- training forward follows the policy
def test_training_forward_batch_granularity_truncates_to_one_k():
    policy = LengthPolicy(mode="tail_drop", granularity="batch", distribution="pow2")
    tok = make(policy=policy).train()
    images = images_for(tok, 3)
    generator, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shapes: list = []
    handle = tok.decoder.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    lengths = set()
    for step in range(12):
        with torch.no_grad():
            out = tok(images, step=step, generator=generator)
        k = policy.sample(3, 32, step, replay).length  # the same draw, replayed
        assert out.length == k and out.keep_len is None and shapes[-1] == (3, k, tok.decoder.token_embed.in_features)
        assert out.quantizer.indices.shape == (3, 32)  # the quantizer saw all N tokens
        lengths.add(k)
        if step < 3:
            with torch.no_grad():
                expected = tok.eval().decode(out.quantizer.indices, length=k)
            tok.train()
            torch.testing.assert_close(out.recon.clamp(0, 1), expected, atol=ATOL, rtol=0)
    handle.remove()
    assert lengths <= {1, 2, 4, 8, 16, 32} and len(lengths) > 1
    with torch.no_grad():
        assert tok.eval()(images).length == 32  # eval: always every token


@pytest.mark.parametrize(("mode", "fill"), [("tail_drop", "pad"), ("nested_dropout", "mask_token")])
@torch.no_grad()
def test_training_forward_sample_granularity_gives_each_image_its_k(mode, fill):
    policy = LengthPolicy(mode=mode, granularity="sample", distribution="uniform")
    tok = make(policy=policy, decode_fill=fill).train()
    images = images_for(tok, 8)
    seen: list = []
    handle = capture_block_input(tok.decoder.blocks[0], seen)
    out = tok(images, step=0, generator=torch.Generator().manual_seed(7))
    handle.remove()
    keep_len = out.keep_len
    assert keep_len.shape == (8,) and len(set(keep_len.tolist())) > 1
    assert out.length == (int(keep_len.max()) if mode == "tail_drop" else 32)
    tok.eval()
    for b, k in enumerate(keep_len.tolist()):
        alone = tok.decode(out.quantizer.indices[b : b + 1], length=k)
        torch.testing.assert_close(out.recon[b : b + 1].clamp(0, 1), alone, atol=ATOL, rtol=0)
        if mode == "nested_dropout":
            dec = tok.decoder
            torch.testing.assert_close(seen[0][b, k:32], dec.drop_token + dec.token_pos[k:])
    assert tok(images, step=0).keep_len is None  # eval mode: no dropping


# ---------------------------------------------------------------- every preset at every k
EXPENSIVE = {"titok_l_128", "titok_l_256", "titok_b_256"}  # N·width² too large for the fast suite


# The released TiTok presets decode at every k at a small size in tests/test_titok_model.py.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in EXPENSIVE else n for n in sorted(PRESETS)
             if not n.startswith("released_")]
)
@torch.no_grad()
def test_every_preset_decodes_at_every_k_from_its_first_k_tokens(name):
    tok = make(name).eval()
    n, size = tok.num_tokens, tok.codebook_size
    indices = tok.encode(images_for(tok, 1)).indices  # (1, N)
    for k in range(1, n + 1):
        tail = indices.clone()
        tail[:, k:] = torch.randint(0, size, (1, n - k))  # other codes past k: must not matter
        last = indices.clone()
        last[:, k - 1] = (last[:, k - 1] + 1 + torch.randint(0, size - 1, (1,))) % size  # token k-1 must
        recon = tok.decode(torch.cat([indices, tail, last]), length=k)
        assert recon.shape == (3, 3, tok.image_size, tok.image_size) and torch.isfinite(recon).all()
        assert recon.min() >= 0 and recon.max() <= 1
        torch.testing.assert_close(recon[1], recon[0], atol=ATOL, rtol=0)
        assert not torch.equal(recon[2], recon[0]), f"{name}: decoding at k={k} ignores token {k - 1}"


@pytest.mark.parametrize(
    ("length", "message"),
    [(0, r"int in \[1, 32\].*got 0"), (33, "got 33"), (torch.tensor([1, 2]), r"shape \(3,\).*shape \(2,\)"),
     (torch.tensor([1.0, 2.0, 3.0]), "float32 tensor"), (torch.tensor([1, 2, 40]), r"\[1, 32\], got values")],
)
def test_tokenizer_decode_bad_length_names_the_range(length, message):
    tok = make().eval()
    indices = torch.zeros(3, 32, dtype=torch.long)
    with pytest.raises(ValueError, match=f"length must be .*{message}"):
        tok.decode(indices, length=length)


# ---------------------------------------------------------------- a stored prefix of k tokens
@pytest.mark.parametrize(
    ("mode", "fill", "quantizer"),
    [("tail_drop", "pad", None), ("nested_dropout", "mask_token", None), ("tail_drop", "pad", "gq"),
     ("nested_dropout", "mask_token", "gq")],
)
def test_a_stored_prefix_of_k_tokens_decodes_exactly_as_the_full_indices_at_length_k(mode, fill, quantizer):
    tok = make(policy=LengthPolicy(mode=mode, granularity="sample"), decode_fill=fill, quantizer=quantizer).eval()
    indices = tok.encode(images_for(tok, 3)).indices  # (B, N) or (B, N, G)
    n = tok.num_tokens
    assert indices.shape[1] == n and indices.dim() == (3 if quantizer == "gq" else 2)
    for k in (1, 2, 5, 17, n - 1, n):
        full_at_k = tok.decode(indices, length=k)
        stored = indices[:, :k].clone()  # what a caller keeps: k tokens, nothing after them
        assert torch.equal(tok.decode(stored), full_at_k)  # length defaults to k
        assert torch.equal(tok.decode(stored, length=k), full_at_k)
    lengths = torch.tensor([3, 9, 6])  # per image, within the prefix
    assert torch.equal(tok.decode(indices[:, :9].clone(), length=lengths), tok.decode(indices, length=lengths))
    assert not torch.equal(tok.decode(indices[:, :2]), tok.decode(indices[:, :3]))  # k matters: not vacuous


# ---------------------------------------------------------------- choose_length
class ProgressiveFake:
    """Decoding k of N tokens gives image + noise·(N−k)/N: the error shrinks with k for every pixel (also after
    clamping and 8-bit rounding of 8-bit originals), so quality is monotone in k by construction."""

    training = False

    def __init__(self, images: torch.Tensor, num_tokens: int) -> None:
        self.images, self.num_tokens = images, num_tokens
        scale = torch.linspace(0.01, 0.6, images.shape[0])[:, None, None, None]  # images differ in difficulty
        self.noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) * scale
        self.encodes, self.decode_lengths = 0, []

    def encode(self, images: torch.Tensor):
        self.encodes += 1
        ids = torch.arange(images.shape[0])[:, None].expand(-1, self.num_tokens)  # (B, N): the image id
        return type("Encoded", (), {"indices": ids})()

    def decode(self, indices: torch.Tensor, length) -> torch.Tensor:
        length = torch.as_tensor(length).expand(indices.shape[0])
        self.decode_lengths.append(length.clone())
        ids, fraction = indices[:, 0], (self.num_tokens - length.float()) / self.num_tokens
        return (self.images[ids] + self.noise[ids] * fraction[:, None, None, None]).clamp(0, 1)


def as_saved(recon: torch.Tensor) -> torch.Tensor:
    """Quality is judged on the 8-bit image, as vartok.metrics evaluates it."""
    return (recon.clamp(0, 1) * 255).round() / 255


def psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    mse = (as_saved(recon) - images).double().pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def scan(tok, images: torch.Tensor, good) -> torch.Tensor:
    """Brute force: decode at every k; the first k that meets the target, else N."""
    indices = tok.encode(images).indices
    table = torch.stack([good(tok.decode(indices, length=k), images) for k in range(1, tok.num_tokens + 1)], 1)
    first = torch.where(table.any(1), table.float().argmax(1) + 1, tok.num_tokens)
    return first, table


@pytest.mark.parametrize("num_tokens", [1, 2, 5, 64])
@pytest.mark.parametrize("metric", ["psnr", "lpips"])
def test_choose_length_equals_a_brute_force_scan_with_log_n_decodes(num_tokens, metric):
    images = (torch.rand(24, 3, 8, 8) * 255).round() / 255
    distance = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # a monotone LPIPS stand-in
    targets = [0.0, 14.0, 20.0, 26.0, 33.0, 200.0] if metric == "psnr" else [0.0, 0.005, 0.02, 0.08, 1.0]
    spread = 0
    for target in targets:
        fake = ProgressiveFake(images, num_tokens)
        if metric == "psnr":
            chosen = choose_length(fake, images, target_psnr=target)
            good = lambda r, x, t=target: psnr(r, x) >= t
        else:
            chosen = choose_length(fake, images, target_lpips=target, lpips_fn=distance)
            good = lambda r, x, t=target: distance(as_saved(r), x) <= t
        expected, table = scan(ProgressiveFake(images, num_tokens), images, good)
        assert (table[:, 1:] >= table[:, :-1]).all()  # the fake is monotone, so the scan is the truth
        assert chosen.dtype == torch.int64 and torch.equal(chosen, expected), (target, chosen, expected)
        assert fake.encodes == 1 and len(fake.decode_lengths) <= math.ceil(math.log2(num_tokens))
        assert all(lengths.dim() == 1 for lengths in fake.decode_lengths)  # one batched per-sample decode a step
        spread = max(spread, len(set(expected.tolist())))
    assert spread >= min(num_tokens, 4)  # some target spreads the images over several k: not vacuous


def test_tokenizer_choose_length_is_one_encode_and_a_batched_bisection():
    tok = make().train()
    images = images_for(tok, 12)
    with torch.no_grad():
        indices = tok.encode(images).indices
        table = torch.stack([psnr(tok.decode(indices, length=k), images) for k in range(1, 33)], 1)  # (B, N)
    values = table.flatten().sort().values[table.numel() // 4 : 3 * table.numel() // 4]
    gap = int((values[1:] - values[:-1]).argmax())
    target = float(values[gap] + values[gap + 1]) / 2  # far from every measured PSNR: no borderline flips
    expected = []
    for row in table:  # the bisection, replayed on the brute-force table
        low, high = 1, 32
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if row[mid - 1] >= target else (mid + 1, high)
        expected.append(low)
    calls = {"encoder": 0, "decoder": 0}
    hooks = [getattr(tok, part).register_forward_hook(lambda *_, part=part: calls.__setitem__(part, calls[part] + 1))
             for part in calls]
    chosen = tok.choose_length(images, target_psnr=target)
    for hook in hooks:
        hook.remove()
    assert chosen.tolist() == expected and calls == {"encoder": 1, "decoder": 5}  # ceil(log2 32)
    assert tok.training  # the mode is restored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "exactly one of target_psnr"), ({"target_psnr": 30.0, "target_lpips": 0.1}, "exactly one of"),
     ({"target_psnr": float("nan")}, "target_psnr must be a finite number"),
     ({"target_lpips": -0.1, "lpips_fn": lambda a, b: a.mean()}, "target_lpips must be a finite distance >= 0"),
     ({"target_lpips": 0.1}, "target_lpips needs lpips_fn"),
     ({"target_lpips": 0.1, "lpips_fn": lambda a, b: (a - b).abs().mean()}, r"one distance per image, shape \(2,\)")],
)
def test_choose_length_bad_target(kwargs, message):
    tok = make("demo_tiny").eval()
    with pytest.raises(ValueError, match=message):
        tok.choose_length(torch.rand(2, 3, 16, 16), **kwargs)
