"""The vq quantizer's `dead_code_threshold` is an EMA cluster size, as documented: a code whose EMA count falls
below it is re-seeded from the batch, whatever the other codes' counts. (vector-quantize-pytorch 1.34 made the
threshold a ratio of the mean cluster size, which re-seeds far fewer codes; pyproject.toml keeps it below 1.34.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vartok.models.quantizers import build_quantizer


def test_a_code_below_the_threshold_is_reseeded_and_one_above_is_kept() -> None:
    torch.manual_seed(0)
    quantizer = build_quantizer("vq", 4, codebook_size=16, codebook_dim=4, ema=True, decay=0.99,
                                dead_code_threshold=1.0).train()
    codebook = quantizer.vq._codebook
    direction = F.normalize(torch.tensor([1.0, 2.0, -1.0, 0.5]), dim=0)
    embed = F.normalize(torch.randn(16, 4), dim=-1)
    embed[0], embed[3], embed[5] = direction, -direction, -direction  # 3 and 5: never nearest to the batch
    counts = torch.full((16,), 10.0)
    counts[3], counts[5] = 0.8, 1.2  # after one decay: 0.79 (below 1, dead) and 1.19 (alive)
    with torch.no_grad():
        codebook.embed.copy_(embed[None])
        codebook.cluster_size.copy_(counts[None])
        codebook.embed_avg.copy_((embed * counts[:, None])[None])
        codebook.initted.fill_(True)
    latents = direction + 0.05 * torch.randn(2, 32, 4)  # (B, N, D), all nearest to code 0
    out = quantizer(latents)
    assert out.indices.eq(0).all()
    after = codebook.embed[0].detach()  # (K, D)
    assert F.cosine_similarity(after[3], direction, dim=0) > 0.95  # re-seeded from a latent of the batch
    assert torch.allclose(after[5], -direction, atol=1e-4)  # above the threshold: kept
    # under a ratio of the mean cluster size (about 9.4 / 16 = 0.59 here) code 3 would have been kept too
