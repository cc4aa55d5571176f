"""The LightningModule that trains a Tokenizer (manual optimization: tokenizer + optional discriminator).

One training step reads as: forward (encode, quantize, drop, decode), losses, tokenizer step, then — once
the GAN has started — a discriminator step, then EMA. Validation and export use the EMA tokenizer.

Losses (docs/definitions.md §5): pixel L1/L2, LPIPS (frozen VGG; held outside the module tree, so it is never in a
checkpoint, the EMA, DDP or the export), quantizer losses, and from `loss.gan_start_step` on the adversarial
term of a PatchDiscriminator (hinge or non-saturating, optional adaptive weight, optional LeCam).

Counting: `step_count` counts training steps, each one tokenizer optimizer step over
`optim.accumulate_grad_batches` micro-batches. The discriminator's optimizer steps through the strategy
(precision plugin) but not through Lightning's step counter, so `trainer.global_step` and `trainer.max_steps`
also count training steps.

Strategies: one device or DDP (`vartok.tokenizers.strategy` says why not FSDP). DDP with a discriminator
needs `--trainer.strategy ddp_find_unused_parameters_true` (checked at the start of fit).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vartok.models.discriminator import build_discriminator, frozen
from vartok.models.losses import LeCam, LPIPSLoss, adaptive_weight, discriminator_loss, generator_loss
from vartok.models.precision import no_autocast
from vartok.models.quantizers.binary import NonFiniteError
from vartok.models.quantizers.schedule import WeightSchedule
from vartok.models.weights import WeightsNotFoundError
from vartok.tokenizers.config import TokenizerConfig, preset_config
from vartok.tokenizers.ema import EMA
from vartok.tokenizers.length import LengthPolicy, pow2_lengths
from vartok.tokenizers.objectives import LossWeights, Optimization, build_optimizers, pixel_losses
from vartok.tokenizers.perturb import LatentPerturbation, PerturbationConfig
from vartok.tokenizers.randomness import keyed_seed, seeded_global_rng
from vartok.tokenizers.strategy import check_ddp_with_discriminator, check_strategy
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
        length_policy: training-time token dropping (docs/definitions.md §2).
        loss: loss weights, in one place.
        optim: optimizer, schedule, clipping and EMA settings.
        seed: seeds the per-step random draws (lengths, perturbation) with (seed, step, rank).
        val_lengths: token counts whose PSNR is logged at validation (None = 1, 2, 4, ..., N).
        discriminator: PatchDiscriminator arguments (channels, num_layers, ...); built when loss.gan > 0.
        lpips_weights: VGG16 weights file for the LPIPS loss (torchvision's vgg16-397923af.pth or a full LPIPS
            state dict); None = the torch hub cache. Resolved at the start of fit.
        lpips_random_init: build LPIPS with random weights and load nothing (tests and smoke runs only: the
            perceptual loss is then meaningless).
        perturbation: latent perturbation of the decoder's codes (docs/definitions.md §3, docs/perturbation.md); None = off.
        pca_images: with tokenizer.global_linear, how many training images the PCA that starts the linear path
            reads at the start of a fresh fit (at least N*D + 1; never on resume: the checkpoint has the weights).
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
        discriminator: dict[str, Any] | None = None,
        lpips_weights: str | None = None,
        lpips_random_init: bool = False,
        perturbation: PerturbationConfig | None = None,
        pca_images: int = 4096,
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
        # After the EMA copy, so that neither the EMA nor the export carries the hook.
        self.perturbation_config = perturbation
        if perturbation is not None:
            self.tokenizer.perturbation = LatentPerturbation(perturbation, self.tokenizer.quantizer)
        self.entropy_weight = WeightSchedule(
            self.loss_weights.entropy, self.loss_weights.entropy_start, self.loss_weights.entropy_decay_steps
        )
        self.seed = seed
        if config.global_linear and pca_images <= config.num_tokens * config.latent_dim:
            raise ValueError(f"pca_images must exceed num_tokens * token_dim = "
                             f"{config.num_tokens * config.latent_dim}, got {pca_images}")
        self.pca_images = pca_images
        n = config.num_tokens
        lengths = val_lengths or pow2_lengths(n)
        if any(not 1 <= k <= n for k in lengths):
            raise ValueError(f"val_lengths must be in [1, {n}], got {lengths}")
        self.val_lengths = lengths
        self.val_psnr = torch.nn.ModuleDict({str(k): MeanMetric() for k in lengths})
        self.step_count = 0  # training (= optimizer) steps, saved in checkpoints
        self.micro_step = 0  # micro-batches of the current accumulation done (optim.accumulate_grad_batches)
        self._resumed_grads: dict[str, Tensor] = {}  # partial sums of a checkpoint written inside an accumulation
        gan = self.loss_weights.gan > 0
        # Never part of self.tokenizer: so never in the EMA, the export or the tokenizer's parameter count.
        self.discriminator = build_discriminator(discriminator, config.image_size) if gan else None
        self.lecam = LeCam(self.loss_weights.lecam_decay) if gan and self.loss_weights.lecam > 0 else None
        self.lpips_weights, self.lpips_random_init = lpips_weights, lpips_random_init
        self._loss_networks: dict[str, nn.Module] = {}  # frozen LPIPS: deliberately not a submodule
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "preset": preset, "tokenizer": tokenizer, "length_policy": asdict(self.length_policy),
            "loss": asdict(self.loss_weights), "optim": asdict(self.optim), "seed": seed,
            "val_lengths": lengths, "discriminator": discriminator, "lpips_weights": lpips_weights,
            "lpips_random_init": lpips_random_init,
            "perturbation": asdict(perturbation) if perturbation is not None else None,
            "pca_images": pca_images,
        })

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_strategy(self.trainer)  # before any work: the demo data, PCA, weights files
        if self.tokenizer.perturbation is not None:
            self.tokenizer.perturbation.rank = self.global_rank
        configure = getattr(self.tokenizer.quantizer, "configure_world_size", None)
        if configure is not None and self.trainer is not None:
            configure(self.trainer.world_size)
            self.ema.module.quantizer.configure_world_size(self.trainer.world_size)
        if stage == "fit":
            self.perceptual_loss()  # missing VGG weights: one clear error now, not at the first step

    def init_linear_path(self) -> None:
        """PCA of the first `pca_images` training images starts the global linear path at the start of a fresh
        fit; rank 0's result is broadcast and copied in place into every rank's parameters (so DDP and the
        optimizer keep their references), the EMA starts there."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            rank_zero_info("global_linear: no datamodule to read training images from; the linear path starts at 0")
            return
        chunks, count = [], 0
        for batch in datamodule.train_dataloader():
            images, valid = batch_images(batch)
            chunks.append(images[valid])
            count += int(valid.sum())
            if count >= self.pca_images:
                break
        images = torch.cat(chunks)[: self.pca_images]
        if images.shape[0] < self.pca_images:
            raise ValueError(f"global_linear: the training stream gave {images.shape[0]} images, pca_images asks "
                             f"for {self.pca_images}")
        explained = self.tokenizer.init_linear_path(images)
        state = self.trainer.strategy.broadcast({k: v.cpu() for k, v in self.tokenizer.state_dict().items()}, 0)
        self.tokenizer.load_state_dict(state)
        ema_state = self.ema.module.state_dict()
        self.ema.module.load_state_dict({k: state[k] for k in ema_state})
        rank_zero_info(f"global linear path: PCA of {images.shape[0]} training images; its "
                       f"{self.tokenizer_config.num_tokens * self.tokenizer_config.latent_dim} components "
                       f"explain {explained:.1%} of their variance")

    def on_fit_start(self) -> None:
        # After any checkpoint is restored (Lightning restores after `setup`, where the path is not yet known):
        # step_count 0 here means a fresh fit.
        if self.discriminator is not None:
            check_ddp_with_discriminator(self.trainer, self.loss_weights.gan_start_step)
        if self.tokenizer_config.global_linear and self.step_count == 0:
            self.init_linear_path()
        counts = self.parameter_counts()
        rank_zero_info(", ".join(f"{name}: {count:,} parameters" for name, count in counts.items()))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable sizes: the tokenizer (what is exported) and, apart, the discriminator."""
        counts = {"tokenizer": self.tokenizer.num_parameters()}
        if self.discriminator is not None:
            counts["discriminator"] = sum(p.numel() for p in self.discriminator.parameters())
        return counts

    def perceptual_loss(self) -> nn.Module | None:
        """The frozen LPIPS loss on this module's device (built on first use); None when loss.lpips is 0."""
        if self.loss_weights.lpips == 0:
            return None
        if "lpips" not in self._loss_networks:
            try:
                self._loss_networks["lpips"] = LPIPSLoss(vgg_weights=self.lpips_weights,
                                                         random_init=self.lpips_random_init)
            except WeightsNotFoundError as err:
                raise WeightsNotFoundError(f"LPIPS loss (loss.lpips > 0): {err} In a training config the "
                                           "path is model.lpips_weights.") from None
        return self._loss_networks["lpips"].to(self.device)

    def configure_optimizers(self) -> Any:
        trainer = self.trainer
        # max_steps counts optimizer steps; Lightning's estimate counts batches (micro-batches here).
        total = trainer.max_steps if trainer.max_steps > 0 else \
            int(trainer.estimated_stepping_batches) // self.optim.accumulate_grad_batches
        return build_optimizers(self.optim, self.tokenizer, self.discriminator, self.loss_weights.gan_start_step,
                                max(1, int(total)))

    def step_seed(self) -> int:
        """Seed of this training step (and micro-batch) on this rank: a resume draws what the run would have."""
        micro = [self.micro_step] if self.micro_step else []  # one stream per micro-batch of an accumulation
        return keyed_seed(self.seed, self.step_count, self.global_rank, *micro)

    def step_generator(self) -> torch.Generator:
        """The CPU generator of this step's length draws."""
        return torch.Generator().manual_seed(self.step_seed())

    # ------------------------------------------------------------------ training
    def compute_loss(self, images: Tensor, out: TokenizerOutput) -> tuple[Tensor, dict[str, Tensor]]:
        """The tokenizer's total loss and its unweighted terms (plus, in the GAN phase, "gan_g" and
        "gan_weight"). images, out.recon: (B, 3, H, W) in [0, 1]."""
        w = self.loss_weights
        recon = out.recon.float()
        terms = pixel_losses(recon, images, w)
        weights = {"l1": w.l1, "l2": w.l2, "lpips": w.lpips, "commit": w.commit, "codebook": w.codebook,
                   "entropy": self.entropy_weight(self.step_count)}
        perceptual = self.perceptual_loss()
        if perceptual is not None:
            terms["lpips"] = perceptual(recon, images)
        reconstruction = sum(weights[name] * value for name, value in terms.items())  # pixel + perceptual
        terms.update({name: value for name, value in out.quantizer.losses.items() if name in weights})
        total = sum(weights[name] * value for name, value in terms.items())
        if self.discriminator is not None and w.gan_active(self.step_count):
            with frozen(self.discriminator):  # the generator's loss must not train the discriminator
                gan = generator_loss(self.discriminator(recon).float(), w.gan_loss)
            weight = torch.tensor(w.gan, device=recon.device)
            if w.adaptive_weight:
                head = self.tokenizer.decoder.last_layer
                weight = weight * adaptive_weight(reconstruction, gan, head, w.adaptive_weight_max)
            total = total + weight * gan
            terms.update(gan_g=gan, gan_weight=weight)
        return total, terms

    def discriminator_update(self, images: Tensor, recon: Tensor, first: bool, last: bool) -> dict[str, Tensor]:
        """The discriminator's part of one micro-step on real `images` and detached `recon` ((B, 3, H, W) in
        [0, 1]): its gradients accumulate from the `first` micro-step on; on the `last` it steps. Returns its
        logged terms."""
        w, optimizer, schedule = self.loss_weights, self.optimizers()[1], self.lr_schedulers()[1]
        logits_real = self.discriminator(images).float()
        logits_fake = self.discriminator(recon.detach()).float()
        loss = discriminator_loss(logits_real, logits_fake, w.gan_loss)
        terms = {"disc": loss.detach(), "logits_real": logits_real.detach().mean(),
                 "logits_fake": logits_fake.detach().mean()}
        if self.lecam is not None:
            penalty = self.lecam(logits_real, logits_fake)
            loss = loss + w.lecam * penalty
            terms["lecam"] = penalty.detach()
        if first:
            optimizer.zero_grad(set_to_none=True)
        with self.gradient_sync(last):
            self.manual_backward(loss / self.optim.accumulate_grad_batches)
        if last:
            clip = self.optim.discriminator()["grad_clip"]
            if clip > 0:
                self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            # Through the strategy (precision plugin, gradient scaler) but not LightningOptimizer.step, which
            # would count a second optimizer step per training step in trainer.global_step (so in max_steps).
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)
            schedule.step()
        terms["lr_disc"] = torch.tensor(schedule.get_last_lr()[0], device=images.device)
        return terms

    def gradient_sync(self, sync: bool) -> AbstractContextManager:
        """A backward pass that all-reduces the gradients over ranks (`sync`), or one that only accumulates
        them locally (DDP's no_sync: the micro-steps before the last of an accumulation)."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return nullcontext() if sync or block is None else block()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # A resume inside a gradient accumulation continues the sum saved in the checkpoint (on_load_checkpoint).
        if not self._resumed_grads:
            return
        grads, self._resumed_grads = self._resumed_grads, {}
        for name, param in self.named_parameters():
            if name in grads:
                param.grad = grads[name].to(device=param.device, dtype=param.dtype)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One micro-batch: forward and backward; on the last micro-batch of an accumulation (on every batch
        without accumulation) the tokenizer's optimizer steps, then the discriminator's, then the EMA."""
        images, _ = batch_images(batch)
        accumulate = self.optim.accumulate_grad_batches
        first, last = self.micro_step == 0, self.micro_step == accumulate - 1
        try:
            with seeded_global_rng(self.step_seed(), images.device):
                out = self.tokenizer(images, step=self.step_count, generator=self.step_generator())
        except NonFiniteError as err:
            raise NonFiniteError(f"training step {self.step_count}: {err}") from None
        loss, terms = self.compute_loss(images, out)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training step {self.step_count}: the loss is {loss.item()} ({terms})")
        optimizer = self.optimizers()[0] if self.discriminator is not None else self.optimizers()
        schedule = self.lr_schedulers()[0] if self.discriminator is not None else self.lr_schedulers()
        if first:
            optimizer.zero_grad(set_to_none=True)
        with self.gradient_sync(last):
            self.manual_backward(loss / accumulate)
        if last:
            if self.optim.grad_clip > 0:
                self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip,
                                    gradient_clip_algorithm="norm")
            optimizer.step()
            schedule.step()
        if self.discriminator is not None and self.loss_weights.gan_active(self.step_count):
            terms.update(self.discriminator_update(images, out.recon.float(), first, last))
        self.micro_step = 0 if last else self.micro_step + 1
        if last:
            self.ema.update(self.tokenizer, self.step_count)
            self.step_count += 1
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs.update({f"train/quantizer_{k}": v for k, v in out.quantizer.stats.items() if v.dim() == 0})
        logs["train/loss"] = loss.detach()
        logs["train/tokens"] = float(out.length if out.keep_len is None else out.keep_len.float().mean())
        logs["train/lr"] = schedule.get_last_lr()[0]
        hook = self.tokenizer.perturbation
        if hook is not None:
            logs["train/perturb_error_rate"] = hook.last_error_rate
            logs["train/perturb_alpha"] = hook.last_alpha
            logs["train/perturb_delta"] = float(hook.last_delta)
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    # ------------------------------------------------------------------ validation (EMA weights)
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, valid = batch_images(batch)
        tok = self.ema.module
        with no_autocast(images.device):
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
        """The step counters (they key the per-step random draws) and the architecture; inside a gradient
        accumulation (a validation or SLURM's signal between micro-batches) also the gradients summed so far,
        which belong to the training state then. The training data's position is the data module's state."""
        state = {"step_count": self.step_count, "micro_step": self.micro_step,
                 "tokenizer": self.tokenizer_config.to_dict()}
        if self.micro_step:
            state["partial_grads"] = {name: param.grad.detach().cpu().clone()
                                      for name, param in self.named_parameters() if param.grad is not None}
        checkpoint["vartok"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("vartok", {})
        self.step_count = int(state.get("step_count", 0))
        self.micro_step = int(state.get("micro_step", 0))
        grads = state.get("partial_grads") or {}
        self._resumed_grads = grads  # set at the first batch: Lightning zeroes the gradients before training
        if grads and self._trainer is not None and self.trainer.world_size > 1:
            rank_zero_warn("this checkpoint was written inside a gradient accumulation and holds rank 0's "
                           "partial gradients only, so the first step after the resume differs slightly from "
                           "the uninterrupted run's; resume from a checkpoint written at a step (last.ckpt) to "
                           "be exact.")

    def export_tokenizer(self, use_ema: bool = True) -> Tokenizer:
        """A standalone copy (EMA weights by default) with the architecture config, ready to save."""
        source = self.ema.module if use_ema else self.tokenizer
        tokenizer = Tokenizer.from_config(self.tokenizer_config)
        tokenizer.load_state_dict(source.state_dict())
        return tokenizer.eval()
