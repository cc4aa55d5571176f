"""TiTok's exact encoder and decoder (the layers of the released TiTok / One-D-Piece checkpoints), our own code.

Encoder: a 16x16-patch convolution, a class token and the patches with one position embedding each, then the N
learned latent tokens with their own position embeddings; `ln_pre`, pre-norm ViT blocks, `ln_post` on the
latent outputs, and a 1x1 convolution to the token width D. Two readings of the latent outputs exist:
"fixed" hands the convolution each token's own W features; "legacy" (the two-stage TiTok models and One-D-Piece)
reinterprets the (N, W) outputs as a (W, N) array first, as the first release did, so every token reads a mix
of positions. Reproducing it is what makes those weights work.

Decoder: the k quantized tokens (any 1 <= k <= N: a prefix decodes by truncation, as One-D-Piece decodes) are
embedded and appended after a class token and one mask token per patch; after `ln_pre`, the blocks and
`ln_post`, the patch outputs become pixels through one of two heads:
- "pixels" (single-stage models): a 1x1 convolution to 3 * p * p values per patch, laid out as pixels, then a 3x3
  convolution across patch borders;
- "proxy_codes" (two-stage models): a 1x1 conv, tanh, 1x1 conv to logits over the 1024 codes of MaskGIT's VQGAN,
  whose softmax weights those codes, and the VQGAN's convolutional decoder (`vartok.models.pixel_decoder`).
The released networks take and return images in [0, 1], and so do these (`unit_pixels`; vartok's own ViTs work
in [-1, 1]): converting at the edges would round the inputs, and a two-stage decoder is sensitive enough to
show one float32 step of its input. Blocks are timm's (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`), the
same computation as the released `nn.MultiheadAttention` blocks, so converting weights is a rename.
Shapes: B batch, P patches, g = sqrt(P), N tokens, W width, D token width.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vartok.models.pixel_decoder import PixelDecoder, PixelDecoderArgs
from vartok.models.vit import check_geometry, hide_tail, trunc_normal_init


def _init(module: nn.Module) -> None:
    """The released models' initialisation: the ViT one, the convolutions included."""
    trunc_normal_init(module, layers=(nn.Linear, nn.Conv2d))


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    """timm blocks with torch's LayerNorm (eps 1e-5, as the released blocks; timm's default is 1e-6)."""
    return nn.ModuleList(Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
                         for _ in range(depth))


def _embedding(*shape: int, width: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * width**-0.5)


class TiTokEncoder(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> latents (B, N, D).

    Args:
        image_size, patch_size, width, depth, heads, mlp_ratio: the ViT.
        num_tokens: N learned latent tokens.
        token_dim: D, the width of each latent (the quantizer's code width).
        reshape: "fixed" or "legacy" reading of the latent outputs (module docstring).
    """

    unit_pixels = True

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, num_tokens: int,
                 token_dim: int, mlp_ratio: float = 4.0, reshape: Literal["fixed", "legacy"] = "fixed") -> None:
        super().__init__()
        check_geometry(image_size, patch_size, num_tokens, width, heads)
        if reshape not in ("fixed", "legacy"):
            raise ValueError(f"titok reshape must be 'fixed' or 'legacy', got {reshape!r}")
        self.image_size, self.patch_size, self.num_tokens, self.width = image_size, patch_size, num_tokens, width
        self.reshape, self.linear_path = reshape, None
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.class_embedding = _embedding(1, width, width=width)
        self.positional_embedding = _embedding(patches + 1, width, width=width)
        self.latent_tokens = _embedding(num_tokens, width, width=width)
        self.latent_token_positional_embedding = _embedding(num_tokens, width, width=width)
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_dim, 1)
        self.apply(_init)

    def forward(self, images: Tensor) -> Tensor:
        batch = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, W)
        x = torch.cat([self.class_embedding.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        latents = (self.latent_tokens + self.latent_token_positional_embedding).expand(batch, -1, -1).to(x.dtype)
        x = self.ln_pre(torch.cat([x, latents], dim=1))
        for block in self.blocks:
            x = block(x)
        out = self.ln_post(x[:, -self.num_tokens:])  # (B, N, W)
        if self.reshape == "legacy":  # the first release's reinterpretation of (N, W) as (W, N)
            grid = out.reshape(batch, self.width, self.num_tokens, 1)
        else:
            grid = out.transpose(1, 2)[..., None]  # (B, W, N, 1)
        return self.conv_out(grid)[..., 0].transpose(1, 2)  # (B, N, D)


class TiTokDecoder(nn.Module):
    """Codes (B, k, D), 1 <= k <= N -> images (B, 3, H, W) in [0, 1] scale (unclamped).

    Args:
        image_size, patch_size, width, depth, heads, mlp_ratio, num_tokens, token_dim: as the encoder.
        head: "pixels" (single-stage) or "proxy_codes" (two-stage; patch_size must equal the pixel decoder's
            upsampling, 16 for the released one).
        pixel_decoder: the VQGAN decoder's shape (head "proxy_codes" only).
        drop_token: build the learned token that replaces positions >= keep_len with fill="mask_token"
            (nested dropout fine-tuning; not in the released models).
    `forward(codes, keep_len, fill)` has the meaning of `vartok.models.vit.Decoder.forward`: with fill="pad" the
    positions >= keep_len[b] are excluded from attention, which equals truncating sample b to keep_len[b] tokens.
    """

    unit_pixels = True

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, num_tokens: int,
                 token_dim: int, mlp_ratio: float = 4.0, head: Literal["pixels", "proxy_codes"] = "pixels",
                 pixel_decoder: PixelDecoderArgs | None = None, drop_token: bool = False) -> None:
        super().__init__()
        check_geometry(image_size, patch_size, num_tokens, width, heads)
        if head not in ("pixels", "proxy_codes"):
            raise ValueError(f"titok head must be 'pixels' or 'proxy_codes', got {head!r}")
        args = pixel_decoder or PixelDecoderArgs()
        if head == "proxy_codes" and patch_size != args.upsampling:
            raise ValueError(f"a proxy_codes head needs patch_size = the pixel decoder's upsampling "
                             f"{args.upsampling}, got {patch_size}")
        self.patch_size, self.num_tokens, self.head = patch_size, num_tokens, head
        self.grid, self.linear_path = image_size // patch_size, None
        self.decoder_embed = nn.Linear(token_dim, width)
        self.class_embedding = _embedding(1, width, width=width)
        self.positional_embedding = _embedding(self.grid**2 + 1, width, width=width)
        self.mask_token = _embedding(1, 1, width, width=width)
        self.latent_token_positional_embedding = _embedding(num_tokens, width, width=width)
        drop = _embedding(width, width=width)  # drawn in every case: the other weights' init does not depend on it
        self.drop_token = drop if drop_token else None
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        if head == "pixels":
            self.ffn = nn.Sequential(nn.Conv2d(width, 3 * patch_size**2, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
            self.proxy_codebook, self.pixel_decoder = None, None
        else:
            self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.Tanh(),
                                     nn.Conv2d(2 * width, args.proxy_codes, 1))
            self.conv_out = None
        self.apply(_init)
        if head == "proxy_codes":  # after _init: these keep their own (PyTorch default) initialisation
            self.proxy_codebook = nn.Embedding(args.proxy_codes, args.code_dim)
            self.pixel_decoder = PixelDecoder(args)

    def forward(self, codes: Tensor, keep_len: Tensor | None = None, fill: str = "pad") -> Tensor:
        batch, k, _ = codes.shape
        tokens, _, padded = hide_tail(self.decoder_embed(codes), keep_len, fill, self.drop_token)  # (B, k, W)
        attn_mask = None
        if padded is not None:
            attn_mask = torch.cat([padded.new_ones(batch, 1 + self.grid**2), padded], dim=1)[:, None, None, :]
        queries = self.mask_token.expand(batch, self.grid**2, -1).to(tokens.dtype)  # (B, P, W)
        queries = torch.cat([self.class_embedding.expand(batch, -1, -1).to(tokens.dtype), queries], dim=1)
        queries = queries + self.positional_embedding.to(tokens.dtype)
        tokens = tokens + self.latent_token_positional_embedding[:k].to(tokens.dtype)
        x = self.ln_pre(torch.cat([queries, tokens], dim=1))
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        x = self.ln_post(x[:, 1:1 + self.grid**2])  # (B, P, W)
        # Contiguous (channels-first) as the released code: a channels-last view would run another convolution
        # kernel, whose different summation order shows through the pixel decoder's GroupNorms.
        x = x.transpose(1, 2).reshape(batch, -1, self.grid, self.grid).contiguous()  # (B, W, g, g)
        return self._pixels(self.ffn(x))

    def _pixels(self, out: Tensor) -> Tensor:
        """The head's output after ffn -> pixels in [0, 1] scale."""
        if self.head == "pixels":
            p = self.patch_size
            return self.conv_out(rearrange(out, "b (p q c) h w -> b c (h p) (w q)", p=p, q=p))
        weights = out.softmax(1)  # (B, codes, g, g)
        return self.pixel_decoder(torch.einsum("bchw,cd->bdhw", weights, self.proxy_codebook.weight.to(weights.dtype)))

    @property
    def pixel_layer(self) -> nn.Module:
        """The layer that writes the pixels."""
        return self.conv_out if self.head == "pixels" else self.pixel_decoder.conv_out

    @property
    def last_layer(self) -> Tensor:
        """Weight of the layer that writes the pixels (for the adaptive GAN weight)."""
        return self.pixel_layer.weight
