"""Training-time evaluation (EvaluationCallback) and the GAN under DDP.

Fast (one process): a missing Inception file stops fit at its start with the file, folder and flag — or the
metric is reported unavailable when configured so; the logged PSNR equals a hand computation on the subset.

Slow (2 gloo processes through torchrun, this file being the script):
- a GAN fit whose discriminator starts mid-run neither hangs nor errors on unused parameters (and plain `ddp`
  is refused with a clear message); both ranks end with identical weights; the callback's rFID / LPIPS / PSNR
  are identical on both ranks and equal one process evaluating the same images with the exported EMA weights;
- `evaluate` over `vartok.data.val_loader` with 2 workers per rank on 13 images (not a multiple of
  ranks × workers × batch = 8) equals one process: PSNR, SSIM, LPIPS (random VGG file) and rFID (random
  Inception file), each image counted once. (tests/test_metrics_ddp.py covers hand-split batches without
  DataLoader workers; this adds the real loader split.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.fixtures.processes import assert_tree_close, free_port, state_hash
from vartok.metrics.callbacks import EvaluationCallback
from vartok.nets.weights import WeightsNotFoundError
from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization

ROOT = Path(__file__).resolve().parents[1]
WORLD, VAL_COUNT, EVAL_BATCH, SUBSET = 2, 13, 2, 8
LENGTHS = [3, 12]


# ---------------------------------------------------------------- fast, one process
def _random_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)


def _val_batches() -> list[dict]:
    """Batches with a padding sample (valid=False) that the callback must skip."""
    images = _random_images(10, seed=4)
    valid = torch.tensor([True, False, True, True, True, True, True, True, True, True])
    keys = [f"k{i}" for i in range(10)]
    return [{"image": images[i : i + 4], "valid": valid[i : i + 4], "key": keys[i : i + 4]}
            for i in range(0, 10, 4)]


class _Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"image": image} for image in _random_images(8, seed=1)], batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_val_batches(), batch_size=None)


def _fit(callback: EvaluationCallback, root: Path, steps: int = 2) -> TokenizerModule:
    module = TokenizerModule(preset="demo_tiny", optim=Optimization(lr=1e-3, warmup_steps=1))
    trainer = pl.Trainer(default_root_dir=root, max_steps=steps, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=_Data())
    return module


@pytest.fixture
def empty_hub(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub" / "checkpoints"


def test_missing_inception_weights_stop_fit_at_its_start(empty_hub, tmp_path) -> None:
    callback = EvaluationCallback(every_n_steps=1, num_images=4, metrics=["psnr", "rfid"])
    with pytest.raises(WeightsNotFoundError) as info:
        _fit(callback, tmp_path)
    message = str(info.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(empty_hub) in message
    assert "--inception-weights" in message and "inception_weights" in message
    assert "missing_weights: unavailable" in message
    assert callback.last_report is None  # nothing was evaluated


def test_missing_weights_can_be_reported_unavailable_and_psnr_matches_by_hand(empty_hub, tmp_path) -> None:
    callback = EvaluationCallback(every_n_steps=2, num_images=5, metrics=["psnr", "rfid"],
                                  missing_weights="unavailable", batch_size=2, cache_reference=False)
    module = _fit(callback, tmp_path)
    report = callback.last_report
    assert "weights-inception" in callback.unavailable["rfid"] and "rfid" in report["unavailable"]
    assert callback.last_step == 2 and report["num_images"] == 5
    # Oracle: the first 5 VALID images (k1 is padding), EMA weights, 8-bit reconstructions, mean PSNR.
    batches = _val_batches()
    images = torch.cat([b["image"][b["valid"]] for b in batches])[:5]
    originals = images.double() / 255
    with torch.no_grad():
        tok = module.ema.module
        recon = tok.decode(tok.encode(originals.float()).indices)
    recon = (recon.double().clamp(0, 1) * 255).round() / 255
    mse = (recon - originals).pow(2).flatten(1).mean(1)
    expected = float((-10 * torch.log10(mse)).mean())
    entry = report["lengths"][str(tok.num_tokens)]
    assert entry["psnr"] == pytest.approx(expected, rel=1e-6) and "rfid" not in entry
    assert [k for b in callback.subset(None) for k in b["key"]] == ["k0", "k2", "k3", "k4", "k5"]


def test_bad_callback_arguments() -> None:
    with pytest.raises(ValueError, match="EvaluationCallback.every_n_steps must be an integer >= 1, got 0"):
        EvaluationCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="missing_weights must be one of error, unavailable, got 'skip'"):
        EvaluationCallback(missing_weights="skip")
    with pytest.raises(ValueError, match=r"metrics \['fvd'\] are not known; choose from psnr, ssim, lpips, rfid, pfid"):
        EvaluationCallback(metrics=["fvd"])
    with pytest.raises(ValueError, match="pFID needs >= 2 pfid_seeds"):
        EvaluationCallback(metrics=["pfid"], pfid_seeds=[0])


def test_callback_lengths_beyond_the_tokenizer_stop_fit_at_its_start(tmp_path) -> None:
    callback = EvaluationCallback(lengths=[2, 32], metrics=["psnr"])
    module = TokenizerModule(preset="demo_tiny")  # 4 tokens
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=1, accelerator="cpu", logger=False,
                         enable_progress_bar=False, callbacks=[callback])
    with pytest.raises(ValueError, match=r"EvaluationCallback: lengths=\[2, 32\] is not allowed.*1 ≤ k ≤ 4"):
        trainer.fit(module, torch.utils.data.DataLoader([{"image": torch.zeros(3, 16, 16, dtype=torch.uint8)}]))
    assert module.step_count == 0


def test_callback_pfid_at_alpha_zero_equals_rfid(tmp_path) -> None:
    from tests.fixtures.doubles import make_random_inception_weights, photo_crops

    weights = make_random_inception_weights(tmp_path / "inc.pth", photo_crops(8, 48, seed=1))
    callback = EvaluationCallback(every_n_steps=2, num_images=6, metrics=["rfid", "pfid"], batch_size=3,
                                  inception_weights=str(weights), fid_feature=64, cache_reference=False,
                                  pfid_alpha=[0.0, 0.5], pfid_delta=3)
    module = _fit(callback, tmp_path)
    entry = callback.last_report["lengths"][str(module.tokenizer.num_tokens)]
    assert entry["pfid"]["0"]["mean"] == entry["rfid"]
    assert entry["pfid"]["0.5"]["mean"] != entry["rfid"]
    figures = EvaluationCallback.figures(callback.last_report, module.tokenizer.num_tokens)
    assert figures["eval/pfid_0"] == figures["eval/rfid"]


# ---------------------------------------------------------------- slow: 2 processes (torchrun)


def _gan_module() -> TokenizerModule:
    return TokenizerModule(
        preset="demo_tiny",
        loss=LossWeights(l1=1.0, l2=1.0, lpips=0.1, gan=0.5, gan_start_step=3, adaptive_weight=True,
                         lecam=0.01),
        optim=Optimization(lr=1e-3, warmup_steps=2, ema_decay=0.9),
        discriminator={"channels": 8, "num_layers": 2, "norm_groups": 4},
        lpips_random_init=True,
    )


def _gan_fit(args: dict, strategy: str, callbacks: list) -> tuple[TokenizerModule, pl.Trainer]:
    from vartok.data import ImageDataModule

    data = ImageDataModule(train_shards=args["train"], val_shards=args["val"], image_size=16, batch_size=4,
                           val_batch_size=EVAL_BATCH, num_workers=0, epoch_size=8, shuffle_buffer=4)
    module = _gan_module()
    trainer = pl.Trainer(default_root_dir=args["out"], accelerator="cpu", devices=WORLD, strategy=strategy,
                         max_steps=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return module, trainer


def _eval_over_loader(args: dict, rank: int, world: int, workers: int) -> dict:
    from tests.fixtures.doubles import ThumbnailTokenizer
    from vartok.data import val_loader
    from vartok.metrics import EvalPlan, Networks, evaluate
    from vartok.nets.inception import build_inception
    from vartok.nets.lpips import LPIPS

    loader = val_loader(args["val"], 16, EVAL_BATCH, num_workers=workers, rank=rank, world_size=world)
    networks = Networks(inception=build_inception(args["inception"], 64), lpips=LPIPS(args["lpips"]))
    return evaluate(ThumbnailTokenizer(16), loader, EvalPlan(LENGTHS, ["psnr", "ssim", "lpips", "rfid"], "cpu",
                                                             networks, baselines=False, grid_images=0, show=False))


def main(args: dict) -> None:
    """One torchrun rank: (A) plain ddp refused, (B) GAN fit with the callback, (C) evaluation via loaders."""
    torch.set_num_threads(1)
    record: dict = {}
    try:
        _gan_fit(args, "ddp", [])
    except ValueError as err:
        record["plain_ddp"] = str(err)
    callback = EvaluationCallback(every_n_steps=3, num_images=SUBSET, metrics=["psnr", "lpips", "rfid"],
                                  inception_weights=args["inception"], lpips_weights=args["lpips"],
                                  fid_feature=64, batch_size=3)
    module, trainer = _gan_fit(args, "ddp_find_unused_parameters_true", [callback])
    rank = trainer.global_rank
    record.update(step_count=module.step_count, global_step=trainer.global_step, rank=rank,
                  tokenizer=state_hash(module.tokenizer), ema=state_hash(module.ema),
                  discriminator=state_hash(module.discriminator), lecam=state_hash(module.lecam),
                  callback=callback.last_report, callback_step=callback.last_step,
                  subset=[k for batch in callback.subset(trainer) for k in batch["key"]])
    if rank == 0:
        module.export_tokenizer().save_pretrained(Path(args["out"]) / "export")
    record["loader_eval"] = _eval_over_loader(args, rank, WORLD, workers=2)
    Path(args["out"], f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.barrier()






@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[dict, list[dict]]:
    from tests.fixtures.doubles import make_random_inception_weights, photo_crops
    from tests.fixtures.photo_shards import photo_shards
    from vartok.nets.lpips import LPIPS

    tmp = tmp_path_factory.mktemp("ddp_eval")
    args = {"train": photo_shards(tmp / "train", count=32, size=16, shards=2, seed=1),
            "val": photo_shards(tmp / "val", count=VAL_COUNT, size=16, shards=3, seed=2),
            "inception": str(make_random_inception_weights(tmp / "inc.pth", photo_crops(8, 48, seed=1))),
            "lpips": str(tmp / "lpips.pth"), "out": str(tmp / "out")}
    torch.save(LPIPS(random_init=True, seed=0).net.state_dict(), args["lpips"])  # a full LPIPS state dict
    Path(args["out"]).mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(free_port()), __file__, json.dumps(args)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return args, [json.loads((Path(args["out"]) / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow
def test_ddp_gan_fit_with_delayed_discriminator_and_synced_callback(ddp_run) -> None:
    from vartok.data import val_loader
    from vartok.metrics import EvalPlan, Networks, evaluate
    from vartok.nets.inception import build_inception
    from vartok.nets.lpips import LPIPS
    from vartok.tokenizers import Tokenizer

    args, ranks = ddp_run
    for record in ranks:
        assert "ddp_find_unused_parameters_true" in record["plain_ddp"]
        assert record["step_count"] == record["global_step"] == 6 and record["callback_step"] == 6
    for name in ("tokenizer", "ema", "discriminator", "lecam"):  # DDP kept every rank identical
        assert ranks[0][name] == ranks[1][name], name
    assert ranks[0]["callback"] == ranks[1]["callback"]  # synced: the same figures on every rank
    keys = ranks[0]["subset"] + ranks[1]["subset"]
    assert len(keys) == len(set(keys)) == SUBSET == ranks[0]["callback"]["num_images"]
    # Oracle: one process, the exported EMA tokenizer, the same images, the same frozen networks.
    by_key = {}
    for batch in val_loader(args["val"], 16, 4, num_workers=0, rank=0, world_size=1):
        by_key.update({k: image for k, image, ok in zip(batch["key"], batch["image"], batch["valid"]) if ok})
    images = torch.stack([by_key[k] for k in keys])
    batch = [{"image": images, "valid": torch.ones(len(keys), dtype=torch.bool), "key": keys}]
    tok = Tokenizer.from_pretrained(Path(args["out"]) / "export")
    networks = Networks(inception=build_inception(args["inception"], 64), lpips=LPIPS(args["lpips"]))
    single = evaluate(tok, batch, EvalPlan([tok.num_tokens], ["psnr", "lpips", "rfid"], "cpu", networks,
                                           baselines=False, grid_images=0, show=False))
    got, expected = ranks[0]["callback"]["lengths"], single["lengths"]
    for name in ("psnr", "lpips", "rfid"):
        full = str(tok.num_tokens)
        assert got[full][name] == pytest.approx(expected[full][name], rel=1e-4), name


@pytest.mark.slow
def test_ddp_evaluation_through_loader_workers_equals_one_process(ddp_run) -> None:
    args, ranks = ddp_run
    assert ranks[0]["loader_eval"] == ranks[1]["loader_eval"]
    single = json.loads(json.dumps(_eval_over_loader(args, 0, 1, workers=0)))
    assert ranks[0]["loader_eval"]["num_images"] == single["num_images"] == VAL_COUNT  # each image once
    assert ranks[0]["loader_eval"]["padding_samples"] > 0  # the split was uneven: padding was masked out
    for k in map(str, LENGTHS):
        assert {"psnr", "ssim", "lpips", "rfid"} <= set(single["lengths"][k])
    assert_tree_close(ranks[0]["loader_eval"]["lengths"], single["lengths"], rel=1e-5)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
