"""The LightningModule that trains a Tokenizer (manual optimization, so a GAN can join later).

One training step reads as: forward (encode, quantize, drop, decode), losses, optimizer step, EMA.
Validation and export use the EMA tokenizer.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from vartok.models.quantizers.binary import NonFiniteError
from vartok.models.quantizers.schedule import WeightSchedule
from vartok.tokenizers.config import TokenizerConfig, preset_config
from vartok.tokenizers.ema import EMA
from vartok.tokenizers.length import LengthPolicy
from vartok.tokenizers.objectives import LossWeights, Optimization, parameter_groups, pixel_losses, warmup_cosine
from vartok.tokenizers.tokenizer import Tokenizer, TokenizerOutput


def batch_images(batch: dict[str, Any] | Tensor) -> tuple[Tensor, Tensor]:
    """uint8 (B, 3, H, W) batch (or dict with "image", "valid") -> float [0, 1] images and valid mask."""
    images = batch["image"] if isinstance(batch, dict) else batch
    valid = batch.get("valid") if isinstance(batch, dict) else None
    if valid is None:
        valid = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return images, valid.bool()


def psnr_per_image(recon: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR in dB of [0, 1] images, data range 1."""
    mse = (recon.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class TokenizerModule(pl.LightningModule):
    """Trains a 1D tokenizer.

    Args:
        preset: a registered preset name (`vartok.tokenizers.PRESETS`).
        tokenizer: overrides of the preset's TokenizerConfig fields (e.g. {num_tokens: 64}).
        length_policy: training-time token dropping (SPEC.md §2).
        loss: loss weights, in one place.
        optim: optimizer, schedule, clipping and EMA settings.
        seed: seeds the per-step random draws (lengths, perturbation) with (seed, step, rank).
        val_lengths: token counts whose PSNR is logged at validation (None = 1, 2, 4, ..., N).
    """

    def __init__(
        self,
        preset: str = "demo",
        tokenizer: dict[str, Any] | None = None,
        length_policy: LengthPolicy | None = None,
        loss: LossWeights | None = None,
        optim: Optimization | None = None,
        seed: int = 0,
        val_lengths: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.length_policy = length_policy or LengthPolicy()
        config = preset_config(preset, **(tokenizer or {}))
        if self.length_policy.mode == "nested_dropout":
            config.decode_fill = "mask_token"
        self.tokenizer_config: TokenizerConfig = config
        self.tokenizer = Tokenizer.from_config(config, self.length_policy)
        self.loss_weights = loss or LossWeights()
        self.optim = optim or Optimization()
        self.ema = EMA(self.tokenizer, self.optim.ema_decay)
        self.entropy_weight = WeightSchedule(
            self.loss_weights.entropy, self.loss_weights.entropy_start, self.loss_weights.entropy_decay_steps
        )
        self.seed = seed
        n = config.num_tokens
        lengths = val_lengths or sorted({min(2**i, n) for i in range(n.bit_length() + 1)})
        if any(not 1 <= k <= n for k in lengths):
            raise ValueError(f"val_lengths must be in [1, {n}], got {lengths}")
        self.val_lengths = lengths
        self.val_psnr = torch.nn.ModuleDict({str(k): MeanMetric() for k in lengths})
        self.step_count = 0  # training steps (not optimizer steps), saved in checkpoints
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "preset": preset, "tokenizer": tokenizer, "length_policy": asdict(self.length_policy),
            "loss": asdict(self.loss_weights), "optim": asdict(self.optim), "seed": seed, "val_lengths": lengths,
        })

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        configure = getattr(self.tokenizer.quantizer, "configure_world_size", None)
        if configure is not None and self.trainer is not None:
            configure(self.trainer.world_size)
            self.ema.module.quantizer.configure_world_size(self.trainer.world_size)

    def configure_optimizers(self) -> Any:
        opt = self.optim
        optimizer = torch.optim.AdamW(
            parameter_groups(self.tokenizer, opt.weight_decay), lr=opt.lr, betas=tuple(opt.betas)
        )
        total = max(1, int(self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(opt.warmup_steps, total, opt.min_lr_ratio))
        return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    def step_generator(self) -> torch.Generator:
        """RNG of this training step on this rank: reproducible on resume."""
        key = f"{self.seed}/{self.step_count}/{self.global_rank}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    # ------------------------------------------------------------------ training
    def compute_loss(self, images: Tensor, out: TokenizerOutput) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.loss_weights
        terms = pixel_losses(out.recon.float(), images, w)
        weights = {"l1": w.l1, "l2": w.l2, "commit": w.commit, "codebook": w.codebook,
                   "entropy": self.entropy_weight(self.step_count)}
        terms.update({name: value for name, value in out.quantizer.losses.items() if name in weights})
        total = sum(weights[name] * value for name, value in terms.items())
        return total, terms

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, _ = batch_images(batch)
        try:
            out = self.tokenizer(images, step=self.step_count, generator=self.step_generator())
        except NonFiniteError as err:
            raise NonFiniteError(f"training step {self.step_count}: {err}") from None
        loss, terms = self.compute_loss(images, out)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training step {self.step_count}: the loss is {loss.item()} ({terms})")
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.optim.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        schedule.step()
        self.ema.update(self.tokenizer, self.step_count)
        self.step_count += 1
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs.update({f"train/quantizer_{k}": v for k, v in out.quantizer.stats.items() if v.dim() == 0})
        logs["train/loss"] = loss.detach()
        logs["train/tokens"] = float(out.length if out.keep_len is None else out.keep_len.float().mean())
        logs["train/lr"] = schedule.get_last_lr()[0]
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    # ------------------------------------------------------------------ validation (EMA weights)
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, valid = batch_images(batch)
        tok = self.ema.module
        with torch.autocast(device_type=images.device.type, enabled=False):
            indices = tok.encode(images).indices
            for k in self.val_lengths:
                psnr = psnr_per_image(tok.decode(indices, length=k), images)
                self.val_psnr[str(k)].update(psnr[valid])

    def on_validation_epoch_end(self) -> None:
        for k, metric in self.val_psnr.items():
            if metric.update_count:
                self.log(f"val/psnr_{k}", metric.compute(), sync_dist=False)
                if int(k) == self.tokenizer_config.num_tokens:
                    self.log("val/psnr", metric.compute(), prog_bar=True)
            metric.reset()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vartok"] = {"step_count": self.step_count, "tokenizer": self.tokenizer_config.to_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.step_count = int(checkpoint.get("vartok", {}).get("step_count", 0))

    def export_tokenizer(self, use_ema: bool = True) -> Tokenizer:
        """A standalone copy (EMA weights by default) with the architecture config, ready to save."""
        source = self.ema.module if use_ema else self.tokenizer
        tokenizer = Tokenizer.from_config(self.tokenizer_config)
        tokenizer.load_state_dict(source.state_dict())
        return tokenizer.eval()
