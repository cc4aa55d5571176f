"""vartok-eval end to end on a stand-in tokenizer and loader: report files, pFID without an operator listed
as unavailable, --target-psnr, and user mistakes as one line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

import vartok.data
import vartok.tokenizers
from tests.fixtures import commands
from tests.fixtures.doubles import ThumbnailTokenizer, photo_crops
from vartok.cli.evaluate import main
from vartok.pixels import psnr_per_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class ChoosingTokenizer(ThumbnailTokenizer):
    """Adds the lead's ``choose_length`` by brute force (smallest k whose PSNR meets the target, else N)."""

    def choose_length(self, images: torch.Tensor, target_psnr: float) -> torch.Tensor:
        indices = self.encode(images).indices
        chosen = torch.full((images.shape[0],), self.num_tokens)
        for k in range(self.num_tokens, 0, -1):
            ok = psnr_per_image(self.decode(indices, length=k), images) >= target_psnr
            chosen = torch.where(ok, torch.tensor(k), chosen)
        return chosen


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(vartok.tokenizers, "load_tokenizer", lambda path, use_ema=True: ChoosingTokenizer(16))
    monkeypatch.setitem(sys.modules, "vartok.tokenizers.perturb", None)  # no perturbation operator installed
    images = photo_crops(6, 16, seed=2)
    calls = []

    def val_loader(shards, image_size, batch_size, num_workers=0, rank=0, world_size=1, **settings):
        calls.append((shards, image_size, batch_size))
        return [{"image": images[i : i + batch_size], "valid": torch.ones(len(images[i : i + batch_size]), dtype=bool),
                 "key": [str(j) for j in range(i, i + batch_size)]} for i in range(0, 6, batch_size)]

    monkeypatch.setattr(vartok.data, "val_loader", val_loader)
    return calls


def test_cli_writes_report_and_lists_unavailable(stand_ins, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(["--checkpoint", "ckpt", "--data", "shards-{0..1}.tar", "--metrics", "psnr,ssim,pfid",
                 "--out", str(out), "--batch-size", "4", "--device", "cpu", "--target-psnr", "20"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["lengths"]) == ["1", "2", "4", "8", "12"]  # default: powers of two, plus N
    assert "perturbation" in report["unavailable"]["pfid"]
    assert sum(report["target"]["chosen_lengths"].values()) == 6
    assert (out / "rd.png").is_file() and (out / "grid.png").is_file()
    assert stand_ins[0] == ("shards-{0..1}.tar", 16, 4)
    assert "PSNR" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--lengths", "1,x"], "--lengths '1,x' must be comma-separated integers"),
    (["--lengths", "0,4"], "lengths=[0, 4] is not allowed"),
    (["--metrics", "psnr,fid"], "'fid'"),
    (["--batch-size", "0"], "--batch-size=0"),
    (["--metrics", "rfid", "--inception-weights", "/nowhere/inc.pth"], "/nowhere/inc.pth"),
])
def test_cli_user_mistakes_are_one_line(stand_ins, tmp_path, capsys, argv, message) -> None:
    base = ["--checkpoint", "ckpt", "--data", "x", "--out", str(tmp_path / "o")]
    code = commands.exit_status(main, base + argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
