"""Training callbacks: a reconstruction grid logged periodically (EMA weights, several lengths), its rows
labelled (original, k = 1, 2, ...) in the saved PNG and in TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vartok.data.batch import valid_images
from vartok.models.precision import no_autocast


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def labelled_grid(rows: list[Tensor], labels: list[str], padding: int = 1) -> Tensor:
    """The rows of images one under another, each with its label in a white margin on the left.

    Args:
        rows: one float (b, 3, H, W) tensor in [0, 1] per row, the same b, H and W in each.
        labels: one label per row ("original", "k = 1", ...).
        padding: pixels between images.

    Returns:
        float (3, rows·(H+padding)+padding, margin + b·(W+padding)+padding) in [0, 1].
    """
    if len(rows) != len(labels):
        raise ValueError(f"labelled_grid needs one label per row, got {len(rows)} rows and {len(labels)} labels")
    count, height = rows[0].shape[0], rows[0].shape[2]
    grid = make_grid(torch.cat(rows).clamp(0, 1), nrow=count, padding=padding, pad_value=1.0)
    font = _font(int(min(24, max(10, 0.4 * height))))
    margin = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) for text in labels) + 8
    canvas = Image.new("RGB", (margin + grid.shape[2], grid.shape[1]), "white")
    pixels = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
    canvas.paste(Image.fromarray(pixels), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(labels):
        middle = padding + i * (height + padding) + height / 2
        draw.text((margin - 4, middle), text, fill="black", font=font, anchor="rm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


class ReconstructionGrid(pl.Callback):
    """Every `every_n_steps` training steps: originals (top row) and EMA reconstructions from the first
    k tokens for k = 1, 2, 4, ..., N (one row each), on a fixed validation batch, each row labelled; logged to
    TensorBoard (tag "reconstructions") and saved as `<run dir>/grids/step_XXXXXXX.png`.

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
            if loaders is None and trainer.datamodule is not None and hasattr(trainer.datamodule, "val_dataloader"):
                loaders = trainer.datamodule.val_dataloader()  # no validation has run (yet): ask the data module
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
        labels = ["original"] + [f"k = {k}" for k in pl_module.val_lengths]
        grid = labelled_grid([row.float().cpu() for row in rows], labels)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("reconstructions", grid, global_step=step)
        out = Path(trainer.default_root_dir) / "grids"
        out.mkdir(parents=True, exist_ok=True)
        save_image(grid, out / f"step_{step:07d}.png")
