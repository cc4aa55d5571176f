"""The LightningModule that trains a token prior (`vartok.models.prior.TokenPrior`) on a frozen tokenizer's tokens.

A step encodes its images with the tokenizer export (in fp32, without gradients), keeps the first `length`
tokens and minimises the prior's mean negative log-likelihood per token. Encoding happens on the fly rather
than from a token cache written once: on the demo it is about 15 % of the step (benchmarks/prior_step.py: 159
against 186 images/s on one CPU thread), it needs no cache to write or invalidate when the export changes, and
the data's random flips reach the prior as they would reach a generator trained on the same data.

The tokenizer is held OUTSIDE the module tree: it is in no state dict (so in no checkpoint: a resume and the
export read the folder again), in no optimizer, under no DDP wrapper and in no model summary; it follows the
batches to their device at the first step. Validation logs `val/bits_per_token`, the held-out nats summed over
every valid image and token, divided by their count (both summed over ranks, so DDP equals one process) and
by ln 2. At the end of fit, rank 0 writes the prior export to `<default_root_dir>/prior` (`TokenPrior
.save_pretrained`) with `training.json` (the final held-out bits per token and the tokenizer it is for).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from vartok.data.batch import parse_batch, to_unit
from vartok.models.precision import no_autocast
from vartok.models.prior import TokenPrior, TokenSpec
from vartok.tokenizers.tokenizer import Tokenizer
from vartok.training import optim
from vartok.training.strategy import check_strategy

EXPORT_FOLDER, SUMMARY_FILE = "prior", "training.json"
BETAS = (0.9, 0.95)  # AdamW's usual setting for autoregressive transformers
LABEL_KEY = "label"  # a batch's class labels: int64 (B,), when the prior is class-conditional
# val/bits_per_token is logged once reduced over the ranks (`finish_bits`): Lightning's advice to sync it again
# would average the global value with itself.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/bits_per_token'")


def load_tokenizer(path: str) -> Tokenizer:
    """The frozen tokenizer export at `path` (eval mode, no gradients), or one sentence naming model.tokenizer."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"model.tokenizer {path} is not a folder: give a tokenizer export (config.json + "
                         "model.safetensors), e.g. runs/demo/export written by `vartok-train fit --config "
                         "configs/demo.yaml`")
    try:
        tokenizer = Tokenizer.from_pretrained(folder)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"model.tokenizer {path} is not a usable tokenizer export: {err}") from None
    tokenizer.requires_grad_(False)
    return tokenizer.eval()


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """One sentence for a setting that is not a finite number > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"model.{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


class PriorModule(pl.LightningModule):
    """Trains a TokenPrior over the tokens a frozen tokenizer export gives the training images.

    Args:
        tokenizer: the tokenizer export folder (config.json + model.safetensors) whose tokens the prior models;
            loaded here, frozen, never trained or saved in a checkpoint (a resume reads the folder again).
        width, depth, heads: the prior transformer's width, blocks and attention heads.
        num_classes: 0 = unconditional; > 0 = class-conditional on the batches' "label" (int64 (B,) in
            [0, num_classes)); vartok's image data carries no labels, so with ImageDataModule it must be 0.
        mlp_ratio: hidden width of the prior's MLPs over `width`.
        lr: peak AdamW learning rate; weight_decay: AdamW's (never on norms, biases, embeddings).
        warmup_steps: linear warmup from 0, then cosine to lr * min_lr_ratio at the trainer's max_steps.
        min_lr_ratio: the final learning rate over the peak, in [0, 1].
        seed: seeds the prior's initial weights (the same on every rank and in every run with this seed).
        length: model the first `length` tokens of each sequence only (1 <= length <= N); None = all N.
        init_from: a prior export (TokenPrior.save_pretrained) whose weights the prior starts from; it must be
            for this tokenizer and have the architecture given here.
    """

    def __init__(self, tokenizer: str, width: int = 256, depth: int = 4, heads: int = 4, num_classes: int = 0,
                 mlp_ratio: float = 4.0, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, seed: int = 0, length: int | None = None,
                 init_from: str | None = None) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio),
                            ("lr", lr)):
            check_positive(name, value)
        for name, value in (("num_classes", num_classes), ("weight_decay", weight_decay),
                            ("warmup_steps", warmup_steps)):
            check_positive(name, value, allow_zero=True)
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"model.min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
        frozen = load_tokenizer(tokenizer)
        self.__dict__["_tokenizer"] = frozen  # outside the module tree: see the module docstring
        self.tokenizer_path = str(tokenizer)
        num_tokens = frozen.num_tokens
        if length is not None and not 1 <= length <= num_tokens:
            raise ValueError(f"model.length must be in [1, {num_tokens}] (the tokens of model.tokenizer "
                             f"{tokenizer}), got {length}; None trains on all {num_tokens}")
        self.length = num_tokens if length is None else int(length)
        self.spec = TokenSpec.from_quantizer(frozen.quantizer, num_tokens)
        self.num_classes, self.lr, self.weight_decay = num_classes, lr, weight_decay
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        with torch.random.fork_rng(devices=[]):  # the prior's weights depend on `seed` only
            torch.manual_seed(seed)
            self.prior = TokenPrior(self.spec, width=width, depth=depth, heads=heads, num_classes=num_classes,
                                    mlp_ratio=mlp_ratio)
        if init_from is not None:
            self.prior.load_state_dict(self._read_prior(init_from).state_dict())
        self._val_sums: Tensor | None = None  # (nats, tokens) of this validation, float64
        self.last_val: dict[str, Any] | None = None  # the latest validation's bits per token and its step
        self._fingerprint: str | None = None
        self.save_hyperparameters()

    @property
    def tokenizer(self) -> Tokenizer:
        """The frozen tokenizer (not a submodule: in no state dict, optimizer or DDP wrapper)."""
        return self.__dict__["_tokenizer"]

    def _read_prior(self, path: str) -> TokenPrior:
        """The init_from prior export, refused in one sentence when it is for another tokenizer or architecture."""
        if not Path(path).is_dir():
            raise ValueError(f"model.init_from {path} is not a folder: give a prior export (written at the end of "
                             "`vartok-prior fit` to <default_root_dir>/prior)")
        try:
            source = TokenPrior.from_pretrained(path)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"model.init_from {path} is not a usable prior export: {err}") from None
        source.check_tokenizer(self.spec, f"model.init_from {path}", f"model.tokenizer {self.tokenizer_path}")
        differ = {k: v for k, v in source.config.items() if self.prior.config.get(k) != v}
        if differ:
            given = {k: self.prior.config.get(k) for k in differ}
            raise ValueError(f"model.init_from {path} has {differ}, but this run asks for {given}; set "
                             + ", ".join(f"--model.{k} {v}" for k, v in differ.items()) + " to start from it")
        return source

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Refuse, before any data is read, what cannot train: a sharded strategy, labels the data lacks."""
        if stage == "fit":
            check_strategy(self.trainer)
        from vartok.data import ImageDataModule

        data = self.trainer.datamodule if self._trainer is not None else None
        if self.num_classes and isinstance(data, ImageDataModule):
            raise ValueError(f"model.num_classes={self.num_classes} asks for a class-conditional prior, but "
                             "vartok's image data carries no class labels; set model.num_classes 0")
        size = getattr(data, "image_size", None)
        if size is not None and size != self.tokenizer.image_size:
            raise ValueError(f"data.image_size={size} does not match the image size {self.tokenizer.image_size} "
                             f"of model.tokenizer {self.tokenizer_path}; set --data.image_size "
                             f"{self.tokenizer.image_size}")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the prior (weight decay on its matrices only), warmup-cosine per optimizer step."""
        optimizer = torch.optim.AdamW(optim.parameter_groups(self.prior, self.weight_decay), lr=self.lr,
                                      betas=BETAS)
        total = optim.total_steps(self.trainer, self.trainer.accumulate_grad_batches)
        factor = optim.warmup_cosine(self.warmup_steps, total, self.min_lr_ratio)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ tokens
    def tokens(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        """A batch's first `length` tokens (B, length[, G]) int64, its valid mask (B,) and labels (B,) or None."""
        images, valid, _ = parse_batch(batch)
        labels = self.labels(batch)
        tokenizer = self.tokenizer
        if next(tokenizer.parameters()).device != images.device:
            tokenizer.to(images.device)
        with no_autocast(images.device):  # the export's own fp32 tokens, whatever the trainer's precision
            indices = tokenizer.encode(to_unit(images)).indices[:, : self.length]
        return indices, valid, labels

    def labels(self, batch: Any) -> Tensor | None:
        """The batch's class labels when the prior is class-conditional (one sentence when they are missing)."""
        if not self.num_classes:
            return None
        labels = batch.get(LABEL_KEY) if isinstance(batch, dict) else None
        if labels is None:
            raise ValueError(f"model.num_classes={self.num_classes} needs class labels, but the batch has no "
                             f"{LABEL_KEY!r} entry; give batches with {LABEL_KEY!r} or set model.num_classes 0")
        return torch.as_tensor(labels).long()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Encode (no gradients), then the prior's mean nats per token: the loss."""
        indices, _, labels = self.tokens(batch)  # training batches are all valid
        loss = self.prior.nll(indices, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training step {self.global_step}: the prior's loss is {loss.item()}")
        self.log("train/nll", loss.detach(), on_step=True, on_epoch=False)
        bits = loss.detach() / math.log(2)
        self.log("train/bits_per_token", bits, on_step=True, on_epoch=False)
        self.log("bits", bits, prog_bar=True, on_step=True, on_epoch=False, logger=False)  # short, for the bar
        return loss

    # ------------------------------------------------------------------ held-out bits per token
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._val_sums += self.held_out_sums(batch)

    @torch.no_grad()
    def held_out_sums(self, batch: Any) -> Tensor:
        """(nats, tokens) of the batch's valid images, float64 on its device (padding samples count nothing)."""
        indices, valid, labels = self.tokens(batch)
        nats = self.prior.log_prob(indices, labels).neg().double()  # (B, length)
        return torch.stack([nats[valid].sum(), valid.sum().double() * indices.shape[1]])

    def on_validation_epoch_end(self) -> None:
        sums, self._val_sums = self._val_sums, None
        if sums is None or self.trainer.sanity_checking:
            return
        bits = self.finish_bits(sums)
        if bits is not None:
            self.log("val/bits_per_token", bits, prog_bar=True, sync_dist=False)  # already the global value

    def finish_bits(self, sums: Tensor) -> float | None:
        """Sum (nats, tokens) over ranks, record and return bits per token (None when no token was seen)."""
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # sums, not a mean of means
        if float(sums[1]) == 0:
            return None
        bits = float(sums[0] / sums[1]) / math.log(2)
        self.last_val = {"bits_per_token": bits, "step": int(self.trainer.global_step), "tokens": int(sums[1])}
        return bits

    def measure_bits(self, loader: Any, max_batches: float = math.inf) -> float | None:
        """Held-out bits per token over the first `max_batches` batches of a validation loader (every rank its
        share), outside Lightning's loop: the end-of-fit figure when the last validation was at an earlier step."""
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        was_training = self.prior.training
        self.prior.eval()
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            sums += self.held_out_sums(move_data_to_device(batch, self.device))
        self.prior.train(was_training)
        return self.finish_bits(sums)

    # ------------------------------------------------------------------ end of fit, checkpoints
    def on_fit_end(self) -> None:
        """Rank 0 writes `<default_root_dir>/prior` (the export) and its training.json; every rank measures the
        final held-out bits per token first when the last validation was at an earlier step."""
        trainer = self.trainer
        if any(getattr(callback, "preempted", False) for callback in trainer.callbacks):
            return  # stopped for a requeue: the requeued run exports when it finishes
        loaders = trainer.val_dataloaders  # None when validation is off (limit_val_batches 0, no val data)
        if loaders is not None and (self.last_val is None or self.last_val["step"] != trainer.global_step):
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            self.measure_bits(loader, trainer.num_val_batches[0] if trainer.num_val_batches else math.inf)
        if trainer.is_global_zero:
            folder = self.export(Path(trainer.default_root_dir) / EXPORT_FOLDER)
            shown = "no validation data" if self.last_val is None else \
                f"held-out {self.last_val['bits_per_token']:.4f} bits/token"
            rank_zero_info(f"exported the prior to {folder} ({shown})")

    def export(self, folder: Path) -> Path:
        """Write the prior export and training.json (final held-out bits per token, the tokenizer it is for)."""
        source = {"tokenizer": self.tokenizer_path, "tokenizer_sha256": self.tokenizer_fingerprint()}
        folder = self.prior.save_pretrained(folder, source=source)
        summary = {**source, "length": self.length, "steps": int(self.trainer.global_step),
                   "val_bits_per_token": None if self.last_val is None else self.last_val["bits_per_token"],
                   "val_step": None if self.last_val is None else self.last_val["step"],
                   "val_tokens": None if self.last_val is None else self.last_val["tokens"]}
        (Path(folder) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return Path(folder)

    def tokenizer_fingerprint(self) -> str:
        """sha256 of the export's weights file: which exact tokenizer the prior was trained for."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            with open(Path(self.tokenizer_path) / "model.safetensors", "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vartok_prior"] = {"spec": self.spec.to_dict(), "tokenizer": self.tokenizer_path,
                                      "last_val": self.last_val}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of a prior for another token layout (before its weights are loaded)."""
        state = checkpoint.get("vartok_prior", {})
        saved = state.get("spec")
        if saved is not None and TokenSpec.from_dict(saved) != self.spec:
            raise ValueError(f"the checkpoint's prior was trained for the tokenizer {state.get('tokenizer')} "
                             f"({saved}), not for model.tokenizer {self.tokenizer_path} ({self.spec.to_dict()}); "
                             "resume with the tokenizer it was trained for, or start a fresh fit")
        self.last_val = state.get("last_val")
