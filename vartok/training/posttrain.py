"""Decoder post-training (`model.posttrain`): the decoder of an export learns to reconstruct images from the
token sequences a generator would produce, not only from the encoder's own (RobusTok's second stage).

Each training step encodes the real images with the frozen encoder and quantizer, lets a trained token prior
(vartok.models.prior) re-predict the sequence teacher-forced — each position keeps its true token with
probability `keep_prob`, otherwise takes a token sampled from the prior given the mixed prefix — looks the
mixed token ids up in the frozen codebook (never re-encoding a decoded image) and decodes them, with the run's
length policy; the module's objective then pulls the decoder's output towards the ORIGINAL image.

The encoder, the quantizer and its codebook are frozen explicitly (model.freeze [encoder, quantizer]:
requires_grad False, eval mode, so no EMA codebook update or dead-code reset either), so the token space the
prior was trained on keeps its meaning. The prior is held outside the module's submodules: never in the
EMA, the export, a checkpoint or DDP; a resume reads its folder again.

The mixing draws from a generator keyed by the step's seed (seed, step, rank, micro-batch), so a resumed run
redraws the uninterrupted run's mixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vartok.models.precision import no_autocast
from vartok.tokenizers.randomness import keyed_seed
from vartok.tokenizers.tokenizer import Tokenizer, TokenizerOutput
from vartok.training.init_from import check_freeze

DECODER_ONLY = ["encoder", "quantizer"]  # model.freeze of every post-training run


@dataclass
class PostTrainConfig:
    """Args:
    prior: the folder of a trained token prior for the model.init_from tokenizer (config.json +
        model.safetensors, as the prior training writes it to `<run dir>/prior`).
    keep_prob: probability that a position keeps the encoder's token (1 = the clean tokens, 0 = every token
        sampled from the prior given the sampled prefix).
    temperature: the prior's sampling temperature (> 0).
    seed: mixed into the key of each step's draws (with the module's seed, the step and the rank).
    """

    prior: str
    keep_prob: float = 0.7
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prior, (str, Path)) or not str(self.prior):
            raise ValueError(f"model.posttrain.prior must be the folder of a trained token prior, got {self.prior!r}")
        self.prior = str(self.prior)
        keep = self.keep_prob
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
            raise ValueError(f"model.posttrain.keep_prob must be a probability in [0, 1] (the paper keeps 0.7 of "
                             f"the tokens), got {keep!r}")
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"model.posttrain.temperature must be a finite number > 0 (1 = the prior's own "
                             f"distribution), got {temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"model.posttrain.seed must be an integer, got {self.seed!r}")


def posttrain_freeze(init_from: str | None, freeze: list[str] | None, perturbation: Any) -> list[str]:
    """The model.freeze of a post-training run ([encoder, quantizer]), or one sentence for settings that cannot
    post-train; called before anything is read.

    Args:
        init_from: model.init_from (the tokenizer to post-train); freeze: model.freeze as given (None = unset).
        perturbation: model.perturbation (must be None).
    """
    if init_from is None:
        raise ValueError("model.posttrain post-trains the decoder of an existing tokenizer, but model.init_from "
                         "is not set: give the export folder to post-train (e.g. --model.init_from "
                         "runs/demo/export)")
    if perturbation is not None:
        raise ValueError("model.posttrain and model.perturbation cannot be combined: post-training decodes the "
                         "prior's mixed tokens, which the latent perturbation would never see; set "
                         "model.perturbation: null")
    if freeze is None:
        return list(DECODER_ONLY)
    if check_freeze(freeze) != DECODER_ONLY:
        raise ValueError(f"model.posttrain trains the decoder only, but model.freeze is [{', '.join(freeze)}]: the "
                         "encoder, quantizer and codebook must stay frozen so that the tokens keep the meaning "
                         "the prior learned; set model.freeze: [encoder, quantizer] or leave it out")
    return list(DECODER_ONLY)


def load_prior(config: PostTrainConfig, tokenizer: Tokenizer, init_from: str) -> torch.nn.Module:
    """The frozen, eval-mode prior of `config.prior`, or one sentence naming the folder (and the tokenizer,
    when the prior was trained for another one).

    Args:
        config: the post-training settings; tokenizer: the run's tokenizer (its quantizer and token count).
        init_from: the model.init_from folder (named in a mismatch).
    """
    from vartok.models.prior import TokenPrior, TokenSpec

    folder = Path(config.prior)
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"model.posttrain.prior {folder} {state}: give the folder of a token prior trained on "
                         "this tokenizer's tokens (config.json + model.safetensors, as the prior training writes "
                         "it to <run dir>/prior; configs/prior/); a resume reads it again, so keep it in place")
    try:
        prior = TokenPrior.from_pretrained(folder)
    except (ValueError, FileNotFoundError) as err:  # its sentences name the file and what is wrong with it
        raise ValueError(f"model.posttrain.prior {folder}: {err}") from None
    spec = TokenSpec.from_quantizer(tokenizer.quantizer, tokenizer.num_tokens)
    prior.check_tokenizer(spec, f"model.posttrain.prior {folder}", f"model.init_from {init_from}")
    if prior.num_classes:
        raise ValueError(f"model.posttrain.prior {folder} is class-conditional ({prior.num_classes} classes), but "
                         "the training batches carry no class labels; give an unconditional prior (num_classes 0)")
    return prior.requires_grad_(False).eval()


class PostTrainer:
    """The post-training forward of one step (in place of `Tokenizer.forward`). Not an nn.Module, so the prior
    is never a submodule of the training module.

    Args:
        config: the post-training settings; tokenizer: the run's tokenizer (encoder and quantizer frozen).
        init_from: the model.init_from folder.
    """

    def __init__(self, config: PostTrainConfig, tokenizer: Tokenizer, init_from: str) -> None:
        self.config = config
        self.prior = load_prior(config, tokenizer, init_from)
        self.last_kept = torch.tensor(float("nan"))  # fraction of true tokens kept at the last step

    def describe(self, init_from: str) -> str:
        return (f"post-training the decoder of {init_from} on its tokens mixed by the prior {self.config.prior} "
                f"(keep_prob {self.config.keep_prob}, temperature {self.config.temperature}); encoder and "
                "quantizer frozen")

    def __call__(self, tokenizer: Tokenizer, images: Tensor, step: int, seed: int,
                 generator: torch.Generator) -> TokenizerOutput:
        """Encode, mix, look up, decode: the decoder's reconstruction of `images` from the mixed tokens.

        Args:
            tokenizer: the run's tokenizer in training mode (frozen parts in eval mode).
            images: (B, 3, H, W) float in [0, 1].
            step: the training step (length policy); seed: the step's seed (keys the mixing draws).
            generator: the step's generator (the length policy's draws, as in `Tokenizer.forward`).
        Returns:
            TokenizerOutput whose quantizer output is that of the clean encoding (its losses carry no gradient)
            and whose decoder_codes (B, length, D) are the mixed tokens' codes.
        """
        tokenizer._check_images(images, values=False)
        prior = self.prior_on(images.device)
        cfg = self.config
        with torch.no_grad():
            enc = tokenizer._encode(images)  # frozen encoder + quantizer in eval mode: (B, N[, G]) indices
            mixed, kept = prior.mix(enc.indices, cfg.keep_prob, temperature=cfg.temperature,
                                    generator=mix_generator(seed, cfg.seed, images.device))
            with no_autocast(images.device):  # float32 codes, as the quantizer's forward gives them
                codes = tokenizer.quantizer.lookup_codes(mixed)  # (B, N, D), the mixed ids themselves
        self.last_kept = kept.float().mean()
        draw = tokenizer.length_policy.sample(images.shape[0], tokenizer.num_tokens, step, generator, images.device)
        decoder_codes = codes[:, : draw.length]
        recon = tokenizer.decoder(decoder_codes, draw.keep_len, fill=draw.fill)
        return TokenizerOutput(tokenizer._unit(recon), enc.quantizer, draw.keep_len, draw.length, decoder_codes)

    def prior_on(self, device: torch.device) -> torch.nn.Module:
        """The prior on `device` (moved once; it is not a submodule, so Lightning does not move it)."""
        if next(self.prior.parameters()).device != device:
            self.prior.to(device)
        return self.prior


def mix_generator(step_seed: int, seed: int, device: torch.device) -> torch.Generator:
    """The mixing draws of one step: a generator on `device` (the prior draws on its logits' device), keyed by
    the step's seed (seed, step, rank, micro-batch) and model.posttrain.seed, apart from the length policy's.

    Args:
        step_seed: `TokenizerModule.step_seed()`; seed: model.posttrain.seed; device: the images' device.
    """
    return torch.Generator(device=device).manual_seed(keyed_seed(step_seed, "posttrain", seed))
