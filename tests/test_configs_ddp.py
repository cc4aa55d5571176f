"""Every shipped config, scaled down by command-line overrides only, trains under 2-process gloo DDP with the
strategy it names, through `train.py` under torchrun (docs/launch.md, section 3), evaluates and exports at the
end of fit; a second run resumed from a mid-epoch checkpoint of the first ends with the same weights
(every tensor of the module's state: tokenizer, EMA, discriminator, and the optimizer moments) as the
uninterrupted run.

Slow (one pair of 2-process fits per config): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.processes import free_port

ROOT = Path(__file__).parents[1]
# configs/prior/ configures vartok-prior (tests/test_prior_training.py), not vartok-train
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                 if "prior" not in p.relative_to(ROOT).parts)
STEPS, MID = 6, 3  # 700 samples per rank and epoch at batch 4: 175 steps per epoch, so step 3 is mid-epoch
TINY_SHAPE = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}  # the recipe's 128 tokens


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict:
    """Shards of 32 px photo crops and a torch hub cache holding randomly initialised FID Inception and LPIPS
    weights under their official file names (the recipes resolve them from there; nothing is downloaded)."""
    from tests.fixtures.doubles import make_random_inception_weights, photo_crops
    from vartok.nets.lpips import LPIPS

    root = tmp_path_factory.mktemp("configs_ddp")
    photo_shards(root / "shards", count=48, size=32, shards=4)
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    make_random_inception_weights(hub / "weights-inception-2015-12-05-6726825d.pth", photo_crops(8, 48, seed=1))
    torch.save(LPIPS(random_init=True, seed=0).net.state_dict(), hub / "vgg16-397923af.pth")
    export = tiny_titok_export(root / "titok_export")
    from tests.test_configs import tiny_demo_export_and_prior

    demo_export, demo_prior = tiny_demo_export_and_prior(root)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               TORCH_HOME=str(root / "torch"), VARTOK_CACHE=str(root / "cache"))
    return {"root": root, "shards": str(root / "shards"), "env": env, "export": str(export),
            "demo_export": str(demo_export), "demo_prior": str(demo_prior)}


def tiny_titok_export(folder: Path) -> Path:
    """What the fine-tuning recipes start from: a two-stage TiTok-architecture export (the converter's output
    format) at 32 px with a small pixel decoder, its 256 codes enough for the robust recipe's 64 neighbours."""
    from vartok import Tokenizer
    from vartok.tokenizers import TokenizerConfig

    config = TokenizerConfig(architecture="titok", image_size=32, patch_size=16, width=32, depth=1, heads=2,
                             num_tokens=8, quantizer="titok_vq", quantizer_args={"codebook_size": 256,
                                                                                 "codebook_dim": 8},
                             linear_shortcut=False, titok_reshape="legacy", titok_head="proxy_codes",
                             pixel_decoder={"proxy_codes": 64, "code_dim": 16, "channels": 32})
    return Tokenizer.from_config(config).save_pretrained(folder)


def overrides(config: str, shards: str, run_dir: Path, environment: dict) -> list[str]:
    """Scale a recipe down without editing it: tiny shapes, 32 px, few steps, a checkpoint every 3 steps."""
    args = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_steps", str(STEPS),
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps",
            "1", "--trainer.default_root_dir", str(run_dir),
            "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps", str(MID), "--trainer.callbacks.save_top_k", "-1",
            "--trainer.callbacks.filename", "mid-{step}", "--trainer.callbacks.dirpath", str(run_dir / "mid"),
            "--data.train_shards", shards, "--data.val_shards", shards, "--data.image_size", "32",
            "--data.batch_size", "4", "--data.val_batch_size", "4", "--data.num_workers", "0",
            "--data.epoch_size", "700", "--report_images", "8", "--model.optim.warmup_steps", "2"]
    if "imagenet" in config:  # the recipe's own tokenizer settings (its quantizer) with a tiny shape
        recipe = yaml.safe_load((ROOT / config).read_text())["model"].get("tokenizer") or {}
        args += ["--model.tokenizer", json.dumps({**recipe, **TINY_SHAPE})]
    elif "finetune" in config:  # the architecture is the export's
        args += ["--model.init_from", environment["export"]]
    elif "posttrain" in config:  # a demo-shaped export and a prior for its tokens
        args += ["--model.init_from", environment["demo_export"], "--model.posttrain.prior", environment["demo_prior"]]
    else:  # the demo preset is already 32 px; its PCA start reads fewer images (more than N x D = 512 at most)
        args += ["--model.pca_images", "600"]
    if "gan" in config:
        args += ["--model.loss.gan_start_step", "2", "--model.discriminator.channels", "8",
                 "--model.discriminator.norm_groups", "4"]
    return args


def train(config: str, environment: dict, run_dir: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "train.py"), "fit", "--config", config,
           *overrides(config, environment["shards"], run_dir, environment), *extra]
    done = subprocess.run(cmd, check=False, env=environment["env"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, f"{config}: {done.stderr[-4000:]}"


def training_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = dict(raw["state_dict"])
    for index, optimizer in enumerate(raw["optimizer_states"]):
        for param, moments in optimizer["state"].items():
            state.update({f"optimizer{index}.{param}.{k}": v for k, v in moments.items() if torch.is_tensor(v)})
    return state


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_under_ddp_and_resumes_mid_epoch_exactly(environment, config: str) -> None:
    name = Path(config).stem
    full, resumed = environment["root"] / f"{name}_full", environment["root"] / f"{name}_resumed"
    train(config, environment, full)
    assert (full / "export" / "model.safetensors").is_file() and (full / "report" / "report.json").is_file()
    middle = full / "mid" / f"mid-step={MID}.ckpt"
    assert torch.load(middle, weights_only=True)["vartok"]["step_count"] == MID
    train(config, environment, resumed, "--ckpt_path", str(middle), "--skip_report", "true")
    expected = training_state(full / "mid" / f"mid-step={STEPS}.ckpt")
    actual = training_state(resumed / "mid" / f"mid-step={STEPS}.ckpt")
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"{config}: {len(different)} tensors differ after the resume, e.g. {different[:5]}"
    start = training_state(middle)
    assert any(not torch.equal(start[k], expected[k]) for k in start if k.startswith("tokenizer."))  # it trained
