"""Training callbacks: a reconstruction grid logged periodically (EMA weights, several lengths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid, save_image

from vartok.data.batch import valid_images
from vartok.models.precision import no_autocast


class ReconstructionGrid(pl.Callback):
    """Every `every_n_steps` training steps: originals (top row) and EMA reconstructions from the first
    k tokens for k = 1, 2, 4, ..., N (one row each), on a fixed validation batch; logged to TensorBoard
    and saved as `<run dir>/grids/step_XXXXXXX.png`.

    Args:
        every_n_steps: period in training steps (> 0).
        num_images: images per row.
    """

    def __init__(self, every_n_steps: int = 1000, num_images: int = 8) -> None:
        if every_n_steps < 1 or num_images < 1:
            raise ValueError(f"every_n_steps and num_images must be >= 1, got {every_n_steps}, {num_images}")
        self.every_n_steps, self.num_images = every_n_steps, num_images
        self._images: torch.Tensor | None = None

    def _fixed_batch(self, trainer: pl.Trainer) -> torch.Tensor | None:
        if self._images is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, list) and loaders else loaders
            if loader is None or isinstance(loader, list):
                return None
            self._images = valid_images(next(iter(loader)))[: self.num_images]
        return self._images

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = pl_module.step_count
        # micro_step > 0: inside a gradient accumulation, the step is not complete yet.
        if step % self.every_n_steps or pl_module.micro_step or not trainer.is_global_zero:
            return
        images = self._fixed_batch(trainer)
        if images is None:
            return
        tok = pl_module.ema.module
        images = images.to(pl_module.device)
        with torch.no_grad(), no_autocast(images.device):
            indices = tok.encode(images).indices
            rows = [images] + [tok.decode(indices, length=k) for k in pl_module.val_lengths]
        grid = make_grid(torch.cat(rows).cpu(), nrow=len(images), padding=1)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("reconstructions", grid, global_step=step)
        out = Path(trainer.default_root_dir) / "grids"
        out.mkdir(parents=True, exist_ok=True)
        save_image(grid, out / f"step_{step:07d}.png")
