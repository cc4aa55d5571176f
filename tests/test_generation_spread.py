"""benchmarks/generation_spread.py, which makes docs/generation.md's seed tables: paired differences and rank
correlations checked against a hand computation and scipy on made-up study outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from generation_spread import load_runs, markdown, spearman, summarise

STAGES = ("before", "after_posttraining", "control")


def stage(rfid: list[float], pfid: list[float], gfid: list[float], psnr: float, bits: float) -> dict:
    def summary(values: list[float]) -> dict:
        return {"mean": sum(values) / len(values), "sd": 0.0, "n": len(values), "values": values}

    return {"rfid": summary(rfid), "pfid": {"0.2": summary(pfid)}, "gfid": summary(gfid), "psnr": psnr,
            "bits_per_token": bits}


def write_studies(folder: Path) -> list[Path]:
    """Two arms × three seeds, two networks; gFID of seed s, network j, stage i: 10 s + j + i (arm robust: − 5);
    pFID 2 s + j + i (robust: + 0.3), no ties."""
    paths = []
    for arm, shift in (("clean", 0.0), ("robust", -5.0)):
        for seed in range(3):
            result = {name: stage([seed + j + 0.5 * i for j in range(2)], [seed * 2.0 + j + i - shift * 0.06 for j in range(2)],
                                  [10.0 * seed + j + i + shift for j in range(2)], 20.0 + i, 6.0 + seed)
                      for i, name in enumerate(STAGES)}
            path = folder / f"{arm}_{seed}.json"
            path.write_text(json.dumps({"protocol": {}, f"{arm}/{seed}": result}))
            paths.append(path)
    return paths


def test_spearman_matches_scipy() -> None:
    x, y = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0], [2.0, 7.0, 1.0, 8.0, 2.5, 0.5]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


@pytest.mark.parametrize("partial", [False, True])
def test_paired_differences_and_rankings(tmp_path, partial: bool) -> None:
    """partial: seed 2 measured as trained only (the post-training pairs then cover seeds 0 and 1)."""
    paths = write_studies(tmp_path)
    if partial:
        for path in paths:
            study = json.loads(path.read_text())
            for name, result in study.items():
                if name.endswith("/2"):
                    study[name] = {"before": result["before"]}
            path.write_text(json.dumps(study))
    summary = summarise(load_runs(paths), "0.2")
    post = summary["posttraining"]["clean"]
    # after_posttraining (i = 1) − control (i = 2): −1 in every seed and network
    assert post["post_minus_control"]["seeds"] == (["0", "1"] if partial else ["0", "1", "2"])
    for network in post["post_minus_control"]["gfid"]:
        assert network["mean"] == pytest.approx(-1.0) and network["sd"] == pytest.approx(0.0)
        assert network["below_zero"] == network["n"] == (2 if partial else 3)
    assert post["post_minus_before"]["rfid"][0]["mean"] == pytest.approx(0.5)
    versus = summary["arm_vs_arm"]["robust_minus_clean"]
    assert versus["gfid"][1]["mean"] == pytest.approx(-5.0) and versus["bits_per_token"]["mean"] == 0.0
    assert summary["arms"]["clean"]["before"]["gfid"][0]["mean"] == pytest.approx(10.0)  # seeds 0, 10, 20
    # network 0 over the six tokenizers as trained (clean 0-2, robust 0-2), by hand
    gfid = [10.0 * s - 5.0 * (arm == "robust") for arm in ("clean", "robust") for s in range(3)]
    pfid = [2.0 * s + 0.3 * (arm == "robust") for arm in ("clean", "robust") for s in range(3)]
    row = summary["ranking"]["per_network"][0]
    assert row["spearman_gfid_pfid"] == pytest.approx(spearmanr(gfid, pfid).statistic)
    assert f"| clean | post-trained − control | -1.00 ± 0.00 ({2 if partial else 3}/{2 if partial else 3})" in \
        markdown(summary)
