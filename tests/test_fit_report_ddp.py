"""The end-of-fit evaluation of `vartok-train fit` under 2-process gloo DDP (torchrun; this file is the
script).

The CLI fits a tiny tokenizer for 2 steps on 2 ranks with `--report_images 11` (of 13 validation images) and
an EvaluationCallback whose frozen networks (random Inception / LPIPS files) the report reuses. Then:
- both ranks evaluated, rank 0 the subset's positions 0-4 and rank 1 positions 5-10, and each measured the
  codec baselines on exactly its own images (the sweep is split, not serialized on rank 0);
- every rank returns the same report, and rank 0's report.json holds it;
- its numbers (PSNR, SSIM, LPIPS, rFID per length, codebook, JPEG / WebP / thumbnail curves and best-at-budget
  figures) equal one process evaluating the exported tokenizer on the first 11 images of the validation
  loader, with baselines on those same 11 images;
- `evaluate` of a 1-image subset, whose rank 0 share is empty, syncs on both ranks (no hang) and gives the
  codebook figures of that image on both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.fixtures.processes import assert_tree_close, free_port

ROOT = Path(__file__).resolve().parents[1]
WORLD, VAL_COUNT, REPORT_IMAGES = 2, 13, 11
METRICS = ["psnr", "ssim", "lpips", "rfid"]


def _config(args: dict) -> str:
    callback = {"class_path": "vartok.metrics.callbacks.EvaluationCallback",
                "init_args": {"every_n_steps": 1000, "num_images": 4, "metrics": ["psnr", "lpips", "rfid"],
                              "inception_weights": args["inception"], "lpips_weights": args["lpips"],
                              "fid_feature": 64, "at_fit_end": False, "cache_reference": False}}
    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": args["out"], "accelerator": "cpu", "devices": WORLD,
                    "strategy": "ddp_find_unused_parameters_true", "max_steps": 2, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [callback]},
        "model": {"preset": "demo_tiny", "optim": {"lr": 0.001, "warmup_steps": 1}},
        "data": {"train_shards": args["train"], "val_shards": args["val"], "image_size": 16, "batch_size": 4,
                 "val_batch_size": 3, "num_workers": 0, "epoch_size": 8, "shuffle_buffer": 4},
        "report_images": REPORT_IMAGES, "report_metrics": METRICS,
    }
    path = Path(args["out"]) / "config.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    return str(path)


def main(args: dict) -> None:
    """One torchrun rank: `vartok-train fit` in-process, counting what this rank evaluates."""
    from vartok.cli.train import main as train_main
    from vartok.metrics import fit_report
    from vartok.metrics.baselines import BaselineStats
    from vartok.metrics.evaluation import Evaluation, evaluate
    from vartok.metrics.plan import EvalPlan
    from vartok.metrics.subset import ShardSubset
    from vartok.tokenizers import Tokenizer

    torch.set_num_threads(1)
    counts: Counter[str] = Counter()
    record: dict = {}
    step, update, after_fit = Evaluation.step, BaselineStats.update, fit_report.evaluate_after_fit

    def counting_step(self, batch: dict, batch_index: int) -> None:
        counts["images"] += int(torch.as_tensor(batch["valid"]).sum())
        record.setdefault("keys", []).extend(k for k, ok in zip(batch["key"], batch["valid"].tolist()) if ok)
        step(self, batch, batch_index)

    def counting_update(self, images: torch.Tensor) -> None:
        counts["baseline_images"] += images.shape[0]
        update(self, images)

    def recording(*a, **kw) -> dict:
        record["distributed"] = torch.distributed.is_initialized()
        record["report"] = after_fit(*a, **kw)
        return record["report"]

    Evaluation.step, BaselineStats.update = counting_step, counting_update
    fit_report.evaluate_after_fit = recording
    train_main(["fit", "--config", _config(args)])
    rank = torch.distributed.get_rank()
    record.update(rank=rank, counts=dict(counts))
    Evaluation.step, BaselineStats.update = step, update
    torch.distributed.barrier()  # the export is written
    # One image on two ranks: rank 0's share is empty, yet it must take part in every sync.
    tok = Tokenizer.from_pretrained(Path(args["out"]) / "export")
    subset = ShardSubset(args["val"], 16, 3, num_images=1, rank=rank, world=WORLD)
    record["one_image"] = evaluate(tok, subset, EvalPlan([1, 2, 4], ["psnr", "ssim"], grid_images=0, show=False))
    Path(args["out"], f"rank{rank}.json").write_text(json.dumps(record))






@pytest.mark.slow
@pytest.mark.timeout(900)
def test_end_of_fit_report_under_ddp_is_split_over_ranks_and_equals_one_process(tmp_path) -> None:
    from tests.fixtures.doubles import make_random_inception_weights, photo_crops
    from tests.fixtures.photo_shards import photo_shards
    from vartok.data import val_loader
    from vartok.metrics import EvalPlan, Networks, evaluate
    from vartok.nets.inception import build_inception
    from vartok.nets.lpips import LPIPS
    from vartok.tokenizers import Tokenizer

    args = {"train": photo_shards(tmp_path / "train", count=32, size=16, shards=2, seed=1),
            "val": photo_shards(tmp_path / "val", count=VAL_COUNT, size=16, shards=3, seed=2),
            "inception": str(make_random_inception_weights(tmp_path / "inc.pth", photo_crops(8, 48, seed=1))),
            "lpips": str(tmp_path / "lpips.pth"), "out": str(tmp_path / "out")}
    torch.save(LPIPS(random_init=True, seed=0).net.state_dict(), args["lpips"])
    Path(args["out"]).mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(free_port()), __file__, json.dumps(args)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=840,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(WORLD)]

    # Every rank took part, on its own share; the codec sweep was split the same way.
    assert all(r["distributed"] for r in ranks)
    assert [r["counts"]["images"] for r in ranks] == [5, 6]
    assert [r["counts"]["baseline_images"] for r in ranks] == [5, 6]
    keys = ranks[0]["keys"] + ranks[1]["keys"]
    assert ranks[0]["report"] == ranks[1]["report"]
    report = ranks[0]["report"]
    written = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert written == json.loads(json.dumps(report)) and (tmp_path / "out" / "report" / "grid.png").is_file()
    assert report["num_images"] == report["baseline_images"] == REPORT_IMAGES
    assert report["subset"] == {"selection": "first_in_shard_order", "limit": REPORT_IMAGES,
                                "samples": REPORT_IMAGES, "available": VAL_COUNT, "ranks": WORLD,
                                "description": "the first 11 of 13 samples of the 3 validation shards, in "
                                               "shard order"}
    assert "images: the first 11 of 13 samples" in done.stdout and "exported the EMA tokenizer" in done.stdout
    assert ranks[0]["one_image"] == ranks[1]["one_image"]
    assert ranks[0]["one_image"]["num_images"] == ranks[0]["one_image"]["baseline_images"] == 1
    assert ranks[0]["one_image"]["codebook"]["tokens"] == 4  # rank 1's image, known on rank 0 too

    # Oracle: one process, the exported tokenizer, the first 11 images of the validation loader.
    batches = list(val_loader(args["val"], 16, 4, num_workers=0, rank=0, world_size=1))
    images = torch.cat([b["image"][b["valid"]] for b in batches])[:REPORT_IMAGES]
    oracle_keys = [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist()) if ok][:REPORT_IMAGES]
    assert keys == oracle_keys
    tok = Tokenizer.from_pretrained(tmp_path / "out" / "export")
    networks = Networks(inception=build_inception(args["inception"], 64), lpips=LPIPS(args["lpips"]))
    single = evaluate(tok, [{"image": images, "valid": torch.ones(REPORT_IMAGES, dtype=torch.bool),
                             "key": oracle_keys}], EvalPlan([1, 2, 4], METRICS, networks=networks, grid_images=0,
                                                            show=False))
    single = json.loads(json.dumps(single))
    for k in ("1", "2", "4"):
        assert set(METRICS) <= set(single["lengths"][k])
    for name in ("lengths", "codebook", "baselines", "baseline_images", "num_images"):
        assert_tree_close(report[name], single[name], rel=1e-5, path=name)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
