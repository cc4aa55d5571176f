"""The LightningModule that trains a Tokenizer (manual optimization: tokenizer + optional discriminator).

A training step reads: forward (encode, quantize, perturb, drop, decode), the objective, the tokenizer's
update, then — once the GAN has started — the discriminator's, then the EMA. Validation and export use the EMA
tokenizer. The parts live beside this file: settings (loss weights, optimisation), objective (the loss),
adversary (the GAN terms), optim (optimizers, schedules, accumulation), ema, pca_start, init_from, posttrain
(decoder post-training on tokens mixed by a token prior), strategy, callbacks.

Counting: `step_count` counts training steps, each one tokenizer optimizer step over
`optim.accumulate_grad_batches` micro-batches; `trainer.global_step` and `trainer.max_steps` count the same
(the discriminator steps uncounted). Strategies: one device or DDP (`strategy.py` says why not FSDP).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from vartok.data.batch import parse_batch, to_unit
from vartok.models.discriminator import DiscriminatorArgs, build_discriminator, discriminator_args
from vartok.models.losses import LeCam
from vartok.models.precision import no_autocast
from vartok.models.quantizers.binary import NonFiniteError
from vartok.pixels import psnr_per_image, to_uint8
from vartok.tokenizers.config import TokenizerConfig, TokenizerOverrides, tokenizer_overrides
from vartok.tokenizers.length import LengthPolicy, pow2_lengths
from vartok.tokenizers.perturb import LatentPerturbation, PerturbationConfig
from vartok.tokenizers.randomness import keyed_seed, step_randomness
from vartok.tokenizers.tokenizer import Tokenizer
from vartok.training import optim
from vartok.training.adversary import discriminator_terms
from vartok.training.checks import check_architecture, check_image_size
from vartok.training.ema import EMA
from vartok.training.init_from import (
    check_freeze,
    check_same_architecture,
    freeze_parts,
    hold_frozen_in_eval,
    load_export_weights,
    parameter_line,
    read_export,
    run_config,
)
from vartok.training.objective import Objective
from vartok.training.pca_start import start_linear_path
from vartok.training.posttrain import PostTrainConfig, PostTrainer, posttrain_freeze
from vartok.training.settings import LossWeights, Optimization
from vartok.training.strategy import check_ddp_with_discriminator, check_strategy

# The defaults of the typed arguments (read, never mutated): no override of the preset, the discriminator's own.
NO_OVERRIDES = TokenizerOverrides()
DEFAULT_DISCRIMINATOR = DiscriminatorArgs()


class TokenizerModule(pl.LightningModule):
    """Trains a 1D tokenizer.

    Args:
        preset: a registered preset name (`vartok.tokenizers.PRESETS`), or None to take the architecture of the
            `init_from` export.
        tokenizer: overrides of the preset's (or the export's) TokenizerConfig fields (e.g. {num_tokens: 64}): a
            TokenizerOverrides (its fields left None keep the preset's values) or, from Python, a dict of some fields.
        length_policy: training-time token dropping (docs/definitions.md §2).
        loss: loss weights, in one place.
        optim: optimizer, schedule, accumulation, clipping and EMA settings.
        seed: seeds the per-step random draws (lengths, perturbation, library draws) with (seed, step, rank).
        val_lengths: token counts whose PSNR is logged at validation (None = 1, 2, 4, ..., N).
        discriminator: PatchDiscriminator arguments (channels, num_layers, ...): a DiscriminatorArgs or, from
            Python, a dict of some of them; built when loss.gan > 0.
        lpips_weights: VGG16 weights file for the LPIPS loss (torchvision's vgg16-397923af.pth or a full LPIPS
            state dict); None = the torch hub cache. Resolved at the start of fit.
        lpips_random_init: build LPIPS with random weights and load nothing (tests and smoke runs only).
        perturbation: latent perturbation of the decoder's codes (docs/definitions.md §3); None = off.
        pca_images: with tokenizer.global_linear, how many training images the PCA that starts the linear path
            reads at the start of a fresh fit (at least N*D + 1; never on resume: the checkpoint has the weights;
            never with init_from: the export has them).
        init_from: an export folder (config.json + model.safetensors) whose weights the tokenizer and its EMA
            start from; with a preset, the run's architecture must be the export's (`training/init_from.py`). A
            resume takes the checkpoint's weights, but reads the folder again, so it must stay in place.
        freeze: parts of the tokenizer that do not train: among encoder, quantizer, decoder (a frozen quantizer
            needs a frozen encoder); [encoder, quantizer] = decoder-only fine-tuning.
        posttrain: decoder post-training on tokens mixed by a token prior (`training/posttrain.py`); needs
            init_from, and freezes the encoder and quantizer. None = off.
    """

    def __init__(
        self,
        preset: str | None = "demo",
        tokenizer: TokenizerOverrides = NO_OVERRIDES,
        length_policy: LengthPolicy | None = None,
        loss: LossWeights | None = None,
        optim: Optimization | None = None,
        seed: int = 0,
        val_lengths: list[int] | None = None,
        discriminator: DiscriminatorArgs = DEFAULT_DISCRIMINATOR,
        lpips_weights: str | None = None,
        lpips_random_init: bool = False,
        perturbation: PerturbationConfig | None = None,
        pca_images: int = 4096,
        init_from: str | None = None,
        freeze: list[str] | None = None,
        posttrain: PostTrainConfig | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.length_policy = length_policy or LengthPolicy()
        overrides, disc_args = tokenizer_overrides(tokenizer), discriminator_args(discriminator)
        if posttrain is not None:  # before anything is read
            freeze = posttrain_freeze(init_from, freeze, perturbation)
        self.frozen_parts = check_freeze(freeze)
        self.init_from = None if init_from is None else str(init_from)
        export = read_export(init_from) if init_from is not None else None
        config = run_config(preset, overrides, export)
        if self.length_policy.mode == "nested_dropout":
            config.decode_fill = "mask_token"
        if export is not None and preset is not None:
            check_same_architecture(export.config, config, init_from)
        self.tokenizer_config: TokenizerConfig = config
        self.tokenizer = Tokenizer.from_config(config, self.length_policy)
        if export is not None:  # before the EMA copy, so that it starts from the same weights
            load_export_weights(self.tokenizer, export, init_from, overrides)
        freeze_parts(self.tokenizer, self.frozen_parts)
        # A plain attribute, not a submodule: the prior is never in the EMA, the export, a checkpoint or DDP.
        self.posttrain = PostTrainer(posttrain, self.tokenizer, self.init_from) if posttrain is not None else None
        self.loss_weights, self.optim = loss or LossWeights(), optim or Optimization()
        self.ema = EMA(self.tokenizer, self.optim.ema_decay)
        # After the EMA copy, so that neither the EMA nor the export carries the hook.
        if perturbation is not None:
            self.tokenizer.perturbation = LatentPerturbation(perturbation, self.tokenizer.quantizer)
        self.objective = Objective(self.loss_weights, lpips_weights, lpips_random_init)
        if config.global_linear and pca_images <= config.num_tokens * config.latent_dim:
            raise ValueError(f"pca_images must exceed num_tokens * token_dim = "
                             f"{config.num_tokens * config.latent_dim}, got {pca_images}")
        self.seed, self.pca_images = seed, pca_images
        lengths = val_lengths or pow2_lengths(config.num_tokens)
        if any(not 1 <= k <= config.num_tokens for k in lengths):
            raise ValueError(f"val_lengths must be in [1, {config.num_tokens}], got {lengths}")
        self.val_lengths = lengths
        self.val_psnr = torch.nn.ModuleDict({str(k): MeanMetric() for k in lengths})
        self.step_count = 0  # training (= optimizer) steps, saved in checkpoints
        self.micro_step = 0  # micro-batches of the current accumulation done
        self._resumed_grads: dict[str, Tensor] = {}  # partial sums of a checkpoint written inside an accumulation
        gan = self.loss_weights.gan > 0
        # Never part of self.tokenizer: so never in the EMA, the export or the tokenizer's parameter count.
        self.discriminator = build_discriminator(disc_args, config.image_size) if gan else None
        self.lecam = LeCam(self.loss_weights.lecam_decay) if gan and self.loss_weights.lecam > 0 else None
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "preset": preset, "tokenizer": overrides, "length_policy": asdict(self.length_policy),
            "loss": asdict(self.loss_weights), "optim": asdict(self.optim), "seed": seed, "val_lengths": lengths,
            "discriminator": asdict(disc_args), "lpips_weights": lpips_weights,
            "lpips_random_init": lpips_random_init,
            "perturbation": asdict(perturbation) if perturbation is not None else None, "pca_images": pca_images,
            "init_from": self.init_from, "freeze": list(self.frozen_parts),
            "posttrain": asdict(posttrain) if posttrain is not None else None,
        })

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_strategy(self.trainer)  # before any work: the demo data, PCA, weights files
        if self._trainer is not None and self.trainer.datamodule is not None:
            check_image_size(self.trainer.datamodule, self.tokenizer_config, self.hparams)
        if self.tokenizer.perturbation is not None:
            self.tokenizer.perturbation.rank = self.global_rank
        configure = getattr(self.tokenizer.quantizer, "configure_world_size", None)
        if configure is not None and self.trainer is not None:
            configure(self.trainer.world_size)
            self.ema.module.quantizer.configure_world_size(self.trainer.world_size)
        hold_frozen_in_eval(self.tokenizer, self.frozen_parts)  # a rebuilt quantizer starts in training mode
        if stage == "fit":
            self.objective.perceptual(self.device)  # missing VGG weights: one clear error now, not at step 1

    def on_fit_start(self) -> None:
        # After any checkpoint is restored (Lightning restores after `setup`): step_count 0 means a fresh fit.
        if self.discriminator is not None:
            check_ddp_with_discriminator(self.trainer, self.loss_weights.gan_start_step)
        if self.tokenizer_config.global_linear and self.step_count == 0 and self.init_from is None:
            start_linear_path(self, self.pca_images)
        if self.init_from is not None and self.step_count == 0:
            rank_zero_info(f"the tokenizer and its EMA start from the export {self.init_from}")
        if self.posttrain is not None:
            rank_zero_info(self.posttrain.describe(self.init_from))
        frozen = sum(p.numel() for p in self.tokenizer.parameters() if not p.requires_grad)
        rank_zero_info(parameter_line(self.parameter_counts(), frozen, self.frozen_parts))

    def train(self, mode: bool = True) -> TokenizerModule:
        """Lightning's (or a caller's) training mode, except for the frozen parts (model.freeze): eval."""
        super().train(mode)
        if getattr(self, "frozen_parts", None):  # nn.Module's train may run before __init__ has set them
            hold_frozen_in_eval(self.tokenizer, self.frozen_parts)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Sizes: the tokenizer (what is exported, frozen parts included) and, apart, the discriminator."""
        counts = {"tokenizer": self.tokenizer.num_parameters()}
        if self.discriminator is not None:
            counts["discriminator"] = sum(p.numel() for p in self.discriminator.parameters())
        return counts

    def configure_optimizers(self) -> Any:
        total = optim.total_steps(self.trainer, self.optim.accumulate_grad_batches)
        return optim.build_optimizers(self.optim, self.tokenizer, self.discriminator,
                                      self.loss_weights.gan_start_step, total)

    def step_seed(self) -> int:
        """Seed of this training step (and micro-batch) on this rank: a resume draws what the run would have."""
        micro = [self.micro_step] if self.micro_step else []  # one stream per micro-batch of an accumulation
        return keyed_seed(self.seed, self.step_count, self.global_rank, *micro)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_grads:  # a resume inside an accumulation continues the checkpoint's sums
            optim.restore_gradients(self, self._resumed_grads)
            self._resumed_grads = {}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One micro-batch: forward and backward; on the last micro-batch of an accumulation (on every batch
        without accumulation) the tokenizer's optimizer steps, then the discriminator's, then the EMA."""
        images = to_unit(parse_batch(batch).images)
        step, seed = self.step_count, self.step_seed()
        try:
            with step_randomness(seed, images.device) as generator:
                out = self.tokenizer(images, step=step, generator=generator) if self.posttrain is None \
                    else self.posttrain(self.tokenizer, images, step, seed, generator)
        except NonFiniteError as err:
            raise NonFiniteError(f"training step {step}: {err}") from None
        loss, terms = self.objective(images, out, step, self.discriminator, self.tokenizer.decoder.last_layer)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training step {step}: the loss is {loss.item()} ({terms})")
        optimizers, schedules = self.optimizers(), self.lr_schedulers()
        gan = self.discriminator is not None
        optimizer, schedule = (optimizers[0], schedules[0]) if gan else (optimizers, schedules)
        accumulate = self.optim.accumulate_grad_batches
        optim.accumulate_update(self, optimizer, schedule, loss, self.micro_step, accumulate, self.optim.grad_clip,
                                counted=True)
        if gan and self.loss_weights.gan_active(step):
            disc_loss, disc_terms = discriminator_terms(self.discriminator, self.lecam, images, out.recon.float(),
                                                        self.loss_weights)
            optim.accumulate_update(self, optimizers[1], schedules[1], disc_loss, self.micro_step, accumulate,
                                    self.optim.discriminator()["grad_clip"], counted=False)
            terms.update(disc_terms, lr_disc=torch.tensor(schedules[1].get_last_lr()[0], device=images.device))
        last = self.micro_step == accumulate - 1
        self.micro_step = 0 if last else self.micro_step + 1
        if last:
            self.ema.update(self.tokenizer, step)
            self.step_count += 1
        self.log_training(loss, terms, out, schedule.get_last_lr()[0])
        return loss

    def log_training(self, loss: Tensor, terms: dict[str, Tensor], out: Any, lr: float) -> None:
        """`train/<term>` of this micro-batch, quantizer statistics, tokens kept, lr and perturbation figures."""
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs.update({f"train/quantizer_{k}": v for k, v in out.quantizer.stats.items() if v.dim() == 0})
        logs["train/loss"] = loss.detach()
        logs["train/tokens"] = float(out.length if out.keep_len is None else out.keep_len.float().mean())
        logs["train/lr"] = lr
        hook = self.tokenizer.perturbation
        if hook is not None:
            logs.update({"train/perturb_error_rate": hook.last_error_rate, "train/perturb_alpha": hook.last_alpha,
                         "train/perturb_delta": float(hook.last_delta)})
        if self.posttrain is not None:
            logs["train/post_kept"] = self.posttrain.last_kept
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)

    # ------------------------------------------------------------------ validation (EMA weights)
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """PSNR (metrics.quality: of the 8-bit reconstruction, as the report measures it) at each val length."""
        originals, valid, _ = parse_batch(batch)
        tok = self.ema.module
        with no_autocast(originals.device):
            indices = tok.encode(to_unit(originals)).indices
            for k in self.val_lengths:
                psnr = psnr_per_image(to_uint8(tok.decode(indices, length=k)), to_uint8(to_unit(originals)))
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
        accumulation (a validation or SLURM's signal between micro-batches) also the gradients summed so far.
        The training data's position is the data module's state."""
        state = {"step_count": self.step_count, "micro_step": self.micro_step,
                 "tokenizer": self.tokenizer_config.to_dict()}
        if self.micro_step:
            state["partial_grads"] = optim.partial_gradients(self)
        checkpoint["vartok"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = self.trainer.ckpt_path if self._trainer is not None else None
        saved_discriminator = self.discriminator is not None and any(
            k.startswith("discriminator.") for k in checkpoint.get("state_dict", {}))
        check_architecture(checkpoint, path, self.tokenizer_config, self.hparams["discriminator"] if
                           saved_discriminator else None)  # before Lightning loads its weights into this module
        state = checkpoint.get("vartok", {})
        self.step_count, self.micro_step = int(state.get("step_count", 0)), int(state.get("micro_step", 0))
        self._resumed_grads = state.get("partial_grads") or {}  # set at the first batch (Lightning zeroes before)
        if self._resumed_grads and self._trainer is not None and self.trainer.world_size > 1:
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

