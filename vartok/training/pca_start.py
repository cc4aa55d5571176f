"""The start of the global linear path (tokenizer.global_linear) at the beginning of a fresh fit: PCA of the
first training images, computed on rank 0's stream and broadcast, so that every rank and the EMA start from
the same weights."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from vartok.data.batch import valid_images


def start_linear_path(module: Any, num_images: int) -> None:
    """PCA of the first `num_images` training images into `module.tokenizer`'s linear path; rank 0's result is
    broadcast and copied in place into every rank's parameters (so DDP and the optimizer keep their
    references) and into the EMA.

    Args:
        module: the TokenizerModule (its trainer, tokenizer and EMA).
        num_images: how many training images the PCA reads (at least N*D + 1).
    """
    datamodule = module.trainer.datamodule
    if datamodule is None:
        rank_zero_info("global_linear: no datamodule to read training images from; the linear path starts at 0")
        return
    chunks, count = [], 0
    for batch in datamodule.train_dataloader():
        chunks.append(valid_images(batch))
        count += chunks[-1].shape[0]
        if count >= num_images:
            break
    images = torch.cat(chunks)[:num_images]
    if images.shape[0] < num_images:
        raise ValueError(f"global_linear: the training stream gave {images.shape[0]} images, pca_images asks "
                         f"for {num_images}")
    explained = module.tokenizer.init_linear_path(images)
    state = module.trainer.strategy.broadcast({k: v.cpu() for k, v in module.tokenizer.state_dict().items()}, 0)
    module.tokenizer.load_state_dict(state)
    ema_state = module.ema.module.state_dict()
    module.ema.module.load_state_dict({k: state[k] for k in ema_state})
    config = module.tokenizer_config
    rank_zero_info(f"global linear path: PCA of {images.shape[0]} training images; its "
                   f"{config.num_tokens * config.latent_dim} components explain {explained:.1%} of their variance")
