"""A global linear codec beside the ViT, for small images: z += A·x, pixels += B·codes.

Why: a linear autoencoder with tail drop has ordered PCA as its optimum, but gradient descent reaches the
small-variance components only slowly (their curvature is tiny), and through a ViT it reaches them not at all
on a CPU budget (docs/design.md has the measurements). Starting A and B at PCA of the first training images,
scaled so that each coefficient fills the quantizer's range, gives ordered tokens (token t carries PCA
components t·D .. t·D + D - 1) from step 0; the ViT learns the non-linear remainder.

The maps are dense over the whole image: 3·H·W·N·D weights each way, so the option is for small images only
(`MAX_WEIGHTS`). Neither class imports Lightning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Most weights per direction (3·H·W·N·D) the global linear path may have: 32 px, 128 tokens of 8 dims.
MAX_WEIGHTS = 2**22


def check_size(image_size: int, num_tokens: int, token_dim: int) -> None:
    """One clear error when the dense maps would be too large."""
    weights = 3 * image_size**2 * num_tokens * token_dim
    if weights > MAX_WEIGHTS:
        raise ValueError(
            f"tokenizer.global_linear needs 3*image_size^2*num_tokens*token_dim = {weights:,} weights per "
            f"direction (image_size {image_size}, {num_tokens} tokens of {token_dim}); at most {MAX_WEIGHTS:,} "
            "are allowed: it is for small images (the demo); use the ViT's own linear_shortcut at this size"
        )


class LinearEncoderPath(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> (B, N, D), added to the ViT encoder's latents."""

    def __init__(self, image_size: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        check_size(image_size, num_tokens, token_dim)
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.linear = nn.Linear(3 * image_size**2, num_tokens * token_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.linear(images.flatten(1)).view(images.shape[0], self.num_tokens, self.token_dim)


class LinearDecoderPath(nn.Module):
    """codes (B, k, D) of the first k tokens -> (B, 3, H, W), added to the ViT decoder's pixels.

    Missing tokens (past k, or past keep_len[b]) count as 0, the mean of a PCA coefficient, so the first k
    tokens alone give the best linear estimate from them.
    """

    def __init__(self, image_size: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        check_size(image_size, num_tokens, token_dim)
        self.image_size, self.num_tokens, self.token_dim = image_size, num_tokens, token_dim
        self.linear = nn.Linear(num_tokens * token_dim, 3 * image_size**2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, codes: Tensor, real: Tensor | None = None) -> Tensor:
        batch, k, _ = codes.shape
        if real is not None:  # (B, k) bool: True = a real token
            codes = codes * real[..., None].to(codes.dtype)
        full = torch.cat([codes, codes.new_zeros(batch, self.num_tokens - k, self.token_dim)], dim=1)
        side = self.image_size
        return self.linear(full.flatten(1).to(self.linear.weight.dtype)).view(batch, 3, side, side)


# The quantizer's range [-1, 1] holds +-3 standard deviations of each coefficient, so clipping is rare. With
# the demo's FSQ [32, 32] the PCA start reaches 22.9 dB at 32 tokens with spread 3 against 20.8 with 1.5 (tanh
# bound; 23.9 with the clamp bound).
PCA_SPREAD = 3.0


@torch.no_grad()
def pca_init(encoder_path: LinearEncoderPath, decoder_path: LinearDecoderPath, images: Tensor,
             spread: float = PCA_SPREAD) -> Tensor:
    """Set both paths to PCA of `images` (B, 3, H, W) in [0, 1]: coefficient j of the image is written to
    latent dim j (token j // D) divided by `spread` times its standard deviation, and read back the same way.

    Returns the fraction of the images' variance the N·D components explain (on these images).
    """
    dims = encoder_path.num_tokens * encoder_path.token_dim
    x = (images.float() * 2 - 1).flatten(1)  # the encoder's input space, [-1, 1]
    if x.shape[0] < dims + 1:
        raise ValueError(f"pca_init needs more than {dims} images (N*D components), got {x.shape[0]}")
    mean = x.mean(0)
    centered = x - mean
    _, singular, basis = torch.linalg.svd(centered, full_matrices=False)
    basis = basis[:dims]  # (dims, 3HW), orthonormal rows, decreasing variance
    scale = (centered @ basis.T).std(0).clamp_min(1e-6) * spread  # (dims,)
    encoder_path.linear.weight.copy_(basis / scale[:, None])
    encoder_path.linear.bias.copy_(-(basis @ mean) / scale)
    decoder_path.linear.weight.copy_((basis * scale[:, None]).T)
    decoder_path.linear.bias.copy_(mean)
    variance = singular.square()
    return variance[:dims].sum() / variance.sum()
