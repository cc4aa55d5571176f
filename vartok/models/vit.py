"""ViT encoder and decoder of a 1D tokenizer (timm blocks, fused attention).

Encoder: patches + N learned latent tokens -> ViT -> the N latent outputs -> token_dim.
Decoder: N (or fewer) quantized tokens + one mask token per patch -> ViT -> pixels of each patch.
Neither imports Lightning. Shapes: B batch, P patches, N latent tokens, W width, D token_dim.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vartok.models.linear_path import LinearDecoderPath, LinearEncoderPath


def check_geometry(image_size: int, patch_size: int, num_tokens: int, width: int, heads: int) -> None:
    """One clear error per bad field, before any tensor is built."""
    if patch_size < 1 or image_size < 1 or image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if heads < 1 or width % heads:
        raise ValueError(f"width {width} must be a positive multiple of heads {heads}")


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float, qk_norm: bool) -> nn.ModuleList:
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, qk_norm=qk_norm) for _ in range(depth)
    )


def pyramid_mixing(num_tokens: int, grid: int) -> tuple[Tensor, Tensor]:
    """Coarse-to-fine (Haar pyramid) initial weights of the linear shortcut.

    Token 0 reads the mean of all patches; the next 4 tokens the 2x2 block means minus their parent's mean,
    the next 16 the 4x4 ones, ... (raster order within a level), while 2^level <= grid. The decoder adds
    each token back to the patches of its block, so along the linear path the first 1, 5, 21, ... tokens
    rebuild the 1x1, 2x2, 4x4, ... block means (a Laplacian pyramid). Tokens past the finest level start
    random. Everything stays trainable; this only sets where training starts.
    Returns (patch_to_latent (N, P), latent_to_patch (P, N)).
    """
    num_patches = grid * grid
    enc = torch.randn(num_tokens, num_patches) / num_patches**0.5
    dec = torch.randn(num_patches, num_tokens) / num_tokens**0.5
    rows, cols = (t.flatten() for t in torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"))

    def blocks(level: int) -> Tensor:  # (P,) block id of each patch at this level
        side = grid // 2**level
        return (rows // side) * 2**level + cols // side

    def mean_weights(ids: Tensor, cell: int) -> Tensor:  # (P,) weights of the mean over one block
        inside = (ids == cell).float()
        return inside / inside.sum()

    token, level = 0, 0
    while token < num_tokens and 2**level <= grid:
        ids = blocks(level)
        for cell in range(min(4**level, num_tokens - token)):
            enc[token] = mean_weights(ids, cell)
            if level:
                parent_ids = blocks(level - 1)
                parent = int(parent_ids[(ids == cell).nonzero()[0, 0]])
                enc[token] -= mean_weights(parent_ids, parent)
            dec[:, token] = (ids == cell).float()
            token += 1
        level += 1
    return enc, dec


def shortcut_weights(init: str, num_tokens: int, grid: int) -> tuple[Tensor, Tensor]:
    """Initial (patch_to_latent (N, P), latent_to_patch (P, N)): "pyramid" or "random" (std 1/sqrt(fan-in))."""
    if init == "pyramid":
        return pyramid_mixing(num_tokens, grid)
    if init == "random":
        return torch.randn(num_tokens, grid**2) / grid, torch.randn(grid**2, num_tokens) / num_tokens**0.5
    raise ValueError(f"shortcut_init must be 'random' or 'pyramid', got {init!r}")


def hide_tail(tokens: Tensor, keep_len: Tensor | None, fill: str,
              drop_token: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The decoders' treatment of the tokens past each sample's length.

    Args:
        tokens: (B, k, W) embedded tokens.
        keep_len: (B,) per-sample lengths, or None (every token is real).
        fill: "mask_token" (positions >= keep_len take the learned drop token) or "pad" (they are excluded from
            attention by a key-padding mask, which equals truncating the sample).
        drop_token: (W,) the decoder's drop token, or None for a decoder built without one.
    Returns:
        (tokens, real (B, k) bool or None, padded: `real` when fill is "pad" (the keys the mask keeps), else None).
    """
    if keep_len is None:
        return tokens, None, None
    real = torch.arange(tokens.shape[1], device=tokens.device) < keep_len[:, None]  # (B, k)
    if fill != "mask_token":
        return tokens, real, real
    if drop_token is None:
        raise ValueError("fill='mask_token' needs a decoder built with drop_token=True (a tokenizer trained with "
                         "nested dropout: decode_fill 'mask_token')")
    return torch.where(real[..., None], tokens, drop_token.to(tokens.dtype)), real, None


def _init_fan_in(layer: nn.Linear) -> None:
    """std 1/sqrt(fan-in): unit-variance outputs for unit-variance inputs."""
    nn.init.normal_(layer.weight, std=layer.in_features**-0.5)


def trunc_normal_init(module: nn.Module, layers: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
    """ViT initialisation, for `module.apply`: truncated normal (std 0.02) weights and zero biases for the `layers`
    types, unit LayerNorms."""
    if isinstance(module, layers):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """Writes an image (in [-1, 1]: `unit_pixels` False) into N ordered latent vectors.

    Args:
        image_size, patch_size: square images (B, 3, H, W) cut into P = (H / patch)^2 patches.
        width, depth, heads, mlp_ratio: the ViT.
        num_tokens: N latent tokens; their outputs are the latents.
        token_dim: D, width of each latent handed to the quantizer.
        latent_attention: "full", or "prefix_causal" (latent i sees every patch and latents <= i only,
            so the first k latents never depend on later ones).
        embed_std: init std of position embeddings and latent tokens (1.0 keeps tokens distinguishable
            at init; 0.02 makes all latents read the same average and collapse early — docs/calibration.md).
        global_linear: add a dense linear map of the whole image to the latents (`vartok.models.linear_path`;
            small images only), zero until `Tokenizer.init_linear_path` sets it to PCA.
    """

    unit_pixels = False  # images enter in [-1, 1]

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_tokens: int,
        token_dim: int,
        mlp_ratio: float = 4.0,
        latent_attention: Literal["full", "prefix_causal"] = "full",
        qk_norm: bool = False,
        embed_std: float = 1.0,
        linear_shortcut: bool = True,
        shortcut_init: Literal["random", "pyramid"] = "pyramid",
        global_linear: bool = False,
    ) -> None:
        super().__init__()
        check_geometry(image_size, patch_size, num_tokens, width, heads)
        if latent_attention not in ("full", "prefix_causal"):
            raise ValueError(f"latent_attention must be 'full' or 'prefix_causal', got {latent_attention!r}")
        self.patch_size, self.num_tokens, self.latent_attention = patch_size, num_tokens, latent_attention
        self.image_size = image_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(3 * patch_size**2, width)
        self.pos_embed = nn.Parameter(torch.randn(num_patches, width) * embed_std)
        self.latent_tokens = nn.Parameter(torch.randn(num_tokens, width) * embed_std)
        # Each latent starts as its own linear mix of the patch embeddings: a PCA-like path that carries
        # information through the 1D bottleneck from step 0, which attention then refines.
        self.patch_to_latent = (
            nn.Parameter(shortcut_weights(shortcut_init, num_tokens, image_size // patch_size)[0])
            if linear_shortcut else None
        )
        self.blocks = _blocks(width, depth, heads, mlp_ratio, qk_norm)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, token_dim)
        self.linear_path = LinearEncoderPath(image_size, num_tokens, token_dim) if global_linear else None
        self.apply(trunc_normal_init)
        # Unit-variance interfaces: image content enters the residual stream at the scale of the (std 1)
        # position embeddings, and the latents leave it spread over the quantizer's range (+1 dB on the demo).
        _init_fan_in(self.patch_embed)
        _init_fan_in(self.proj)
        if latent_attention == "prefix_causal":
            self.register_buffer("attn_mask", self._prefix_causal_mask(num_patches, num_tokens), persistent=False)
        else:
            self.attn_mask = None

    @staticmethod
    def _prefix_causal_mask(num_patches: int, num_tokens: int) -> Tensor:
        """(P+N, P+N) bool, True = may attend. Patches see patches; latent i sees patches and latents <= i."""
        size = num_patches + num_tokens
        allowed = torch.zeros(size, size, dtype=torch.bool)
        allowed[:, :num_patches] = True
        allowed[num_patches:, num_patches:] = torch.ones(num_tokens, num_tokens).tril().bool()
        return allowed

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> latents (B, N, D)."""
        p = self.patch_size
        patches = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        x = self.patch_embed(patches) + self.pos_embed  # (B, P, W)
        latents = self.latent_tokens.expand(x.shape[0], -1, -1)  # (B, N, W)
        if self.patch_to_latent is not None:
            latents = latents + torch.einsum("np,bpw->bnw", self.patch_to_latent.to(x.dtype), x)
        x = torch.cat([x, latents], dim=1)  # (B, P+N, W)
        for block in self.blocks:
            x = block(x, attn_mask=self.attn_mask)
        latents = self.proj(self.norm(x[:, -self.num_tokens :]))  # (B, N, D)
        return latents if self.linear_path is None else latents + self.linear_path(images).to(latents.dtype)


class Decoder(nn.Module):
    """Reconstructs pixels from the first k latent tokens, any 1 <= k <= N.

    Args:
        image_size, patch_size, width, depth, heads, mlp_ratio, embed_std: as the Encoder.
        num_tokens: N, the most tokens it reads.
        token_dim: D, width of the (quantized) tokens.
        conv_channels: 0 = linear pixel head; > 0 = linear head to that many channels + two 3x3 convolutions.
        global_linear: add a dense linear map of the tokens to the pixels (the encoder's mirror).
        drop_token: build the learned token that replaces positions >= keep_len with fill="mask_token".
    `forward(codes, keep_len)`: codes (B, k, D). keep_len None = all k tokens are real; a (B,) tensor
    gives per-sample lengths, and positions >= keep_len[b] are either excluded from attention
    (fill="pad", a key-padding mask) or replaced by one learned drop token (fill="mask_token").
    """

    unit_pixels = False  # writes images in [-1, 1]

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_tokens: int,
        token_dim: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        embed_std: float = 1.0,
        linear_shortcut: bool = True,
        shortcut_init: Literal["random", "pyramid"] = "pyramid",
        conv_channels: int = 0,
        global_linear: bool = False,
        drop_token: bool = False,
    ) -> None:
        super().__init__()
        check_geometry(image_size, patch_size, num_tokens, width, heads)
        if conv_channels < 0:
            raise ValueError(f"conv_channels must be >= 0, got {conv_channels}")
        self.patch_size, self.num_tokens = patch_size, num_tokens
        self.grid = image_size // patch_size
        self.token_embed = nn.Linear(token_dim, width)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, width) * embed_std)
        # Nested dropout's mask token, built only for decoders that use it: a parameter that no loss reaches
        # breaks DDP (every parameter must receive a gradient in every step).
        # Drawn in every case, so the initialisation of the other weights does not depend on it.
        drop = torch.randn(width) * embed_std
        self.drop_token = nn.Parameter(drop) if drop_token else None
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.randn(self.grid**2, width) * embed_std)
        # Each patch query starts as a linear mix of the real tokens (the mirror of the encoder's shortcut).
        self.latent_to_patch = (
            nn.Parameter(shortcut_weights(shortcut_init, num_tokens, self.grid)[1]) if linear_shortcut else None
        )
        self.blocks = _blocks(width, depth, heads, mlp_ratio, qk_norm)
        self.norm = nn.LayerNorm(width)
        # Pixel head: linear per patch, or (conv_channels > 0) linear to `conv_channels` feature maps followed by
        # two 3x3 convolutions across patch borders, which removes the blocking of per-patch outputs.
        self.head = nn.Linear(width, (conv_channels or 3) * patch_size**2)
        self.conv_out = (
            nn.Sequential(nn.Conv2d(conv_channels, conv_channels, 3, padding=1), nn.GELU(),
                          nn.Conv2d(conv_channels, 3, 3, padding=1))
            if conv_channels else None
        )
        self.linear_path = LinearDecoderPath(image_size, num_tokens, token_dim) if global_linear else None
        self.apply(trunc_normal_init)
        _init_fan_in(self.token_embed)  # token content at the scale of the token position embeddings

    def forward(self, codes: Tensor, keep_len: Tensor | None = None, fill: str = "pad") -> Tensor:
        """codes (B, k, D) -> images (B, 3, H, W) in [-1, 1] (unclamped)."""
        batch, k, _ = codes.shape
        tokens, real, padded = hide_tail(self.token_embed(codes), keep_len, fill, self.drop_token)  # (B, k, W)
        attn_mask = None
        if padded is not None:
            attn_mask = torch.cat([padded, padded.new_ones(batch, self.grid**2)], dim=1)[:, None, None, :]  # (B,1,1,k+P)
        queries = (self.mask_token + self.pos_embed).expand(batch, -1, -1).to(tokens.dtype)  # (B, P, W)
        if self.latent_to_patch is not None:
            mixed = tokens if real is None else tokens * real[..., None].to(tokens.dtype)  # padding adds 0
            queries = queries + torch.einsum("pk,bkw->bpw", self.latent_to_patch[:, :k].to(tokens.dtype), mixed)
        tokens = tokens + self.token_pos[:k]
        x = torch.cat([tokens, queries], dim=1)  # (B, k+P, W)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        pixels = self.head(self.norm(x[:, k:]))  # (B, P, 3*p*p)
        p = self.patch_size
        image = rearrange(pixels, "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid, p=p, q=p)
        image = image if self.conv_out is None else self.conv_out(image)
        return image if self.linear_path is None else image + self.linear_path(codes, real).to(image.dtype)

    @property
    def pixel_layer(self) -> nn.Module:
        """The layer that writes the pixels: the linear head, or the last convolution with conv_channels."""
        return self.head if self.conv_out is None else self.conv_out[-1]

    @property
    def last_layer(self) -> Tensor:
        """Weight of the layer that writes the pixels (for the adaptive GAN weight)."""
        return self.pixel_layer.weight
