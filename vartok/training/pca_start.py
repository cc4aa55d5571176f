"""The start of the global linear path (tokenizer.global_linear) at the beginning of a fresh fit: PCA of the
first training images, computed on rank 0's stream and broadcast, so that every rank and the EMA start from
the same weights."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from vartok.data.batch import valid_images
from vartok.metrics.progress import ProgressLines, elapsed_text

LABEL = "global linear path: reading training images for its PCA"


def first_images(loader: Iterable[Any], num_images: int, show: bool = True) -> Tensor:
    """The first `num_images` valid images of a training stream, as the start of a fit reads them.

    Args:
        loader: training batches (the data module's train_dataloader()).
        num_images: how many images to read.
        show: print progress lines on standard error (rank 0 only).

    Returns:
        float32 (num_images, 3, H, W) in [0, 1].
    """
    lines = ProgressLines(LABEL, num_images, "images") if show else None
    chunks, count = [], 0
    for batch in loader:
        chunks.append(valid_images(batch))
        if lines is not None:
            lines.advance(min(chunks[-1].shape[0], num_images - count))
        count += chunks[-1].shape[0]
        if count >= num_images:
            break
    if lines is not None:
        lines.finish()
    if count < num_images:
        raise ValueError(f"global_linear: the training stream gave {count} images, pca_images asks "
                         f"for {num_images}; lower model.pca_images or give more training data.")
    return torch.cat(chunks)[:num_images]


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
    show = module.trainer.is_global_zero
    images = first_images(datamodule.train_dataloader(), num_images, show=show)
    started = time.monotonic()
    if show:  # the SVD is the slow part on a CPU (a minute or more for the demo's 4,096 × 3,072 on 2 cores)
        print(f"global linear path: PCA of {images.shape[0]:,} images of {images[0].numel():,} values (an SVD) ...",
              file=sys.stderr, flush=True)
    explained = module.tokenizer.init_linear_path(images)
    if show:
        print(f"global linear path: PCA done, {elapsed_text(time.monotonic() - started)}", file=sys.stderr, flush=True)
    state = module.trainer.strategy.broadcast({k: v.cpu() for k, v in module.tokenizer.state_dict().items()}, 0)
    module.tokenizer.load_state_dict(state)
    ema_state = module.ema.module.state_dict()
    module.ema.module.load_state_dict({k: state[k] for k in ema_state})
    config = module.tokenizer_config
    rank_zero_info(f"global linear path: PCA of {images.shape[0]} training images; its "
                   f"{config.num_tokens * config.latent_dim} components explain {explained:.1%} of their variance")
