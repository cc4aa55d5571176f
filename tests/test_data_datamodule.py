"""ImageDataModule inside a real Lightning fit (CPU), its config validation and its LightningCLI schema."""

from __future__ import annotations

from collections import Counter

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI

from tests.fixtures.data_shards import write_shards
from vartok.data import DataError, ImageDataModule


class Recorder(pl.LightningModule):
    """Records the keys of every batch; trains one scalar so the loop runs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_keys: dict[int, list[str]] = {}
        self.val_keys: dict[int, Counter] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 8, 8)
        self.train_keys.setdefault(self.current_epoch, []).extend(batch["key"])
        return (self.weight - batch["image"].float().mean() / 255) ** 2

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        keys = [k for k, v in zip(batch["key"], batch["valid"].tolist()) if v]
        self.val_keys.setdefault(self.current_epoch, Counter()).update(keys)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_reshuffles_every_epoch_and_validates_each_image_once(tmp_path):
    urls, keys = write_shards(tmp_path / "shards", [9, 7, 5])
    dm = ImageDataModule(train_shards=urls, val_shards=urls[:2], image_size=8, batch_size=4, val_batch_size=5,
                         num_workers=1, epoch_size=16, seed=7)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert sorted(model.train_keys) == [0, 1, 2]
    assert all(len(k) == 16 for k in model.train_keys.values())  # epoch_size samples per epoch
    assert len({tuple(k) for k in model.train_keys.values()}) == 3  # a new order every epoch
    for epoch in range(3):
        assert model.val_keys[epoch] == Counter(keys[:16])
    # The same seed replays the same epochs; the order depends on the trainer's epoch, not on call counts.
    again = Recorder()
    dm2 = ImageDataModule(train_shards=urls, val_shards=urls[:2], image_size=8, batch_size=4,
                          num_workers=0, epoch_size=16, seed=7)
    pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=2).fit(again, dm2)
    assert again.train_keys == model.train_keys
    assert dm.skipped() == {} and dm.steps_per_epoch() == 4


@pytest.mark.parametrize(("field", "value", "message"), [
    ("image_size", 0, "image_size=0"),
    ("batch_size", -1, "batch_size=-1"),
    ("num_workers", -2, "num_workers=-2"),
    ("epoch_size", 0, "epoch_size=0"),
    ("max_skip_fraction", 1.5, "max_skip_fraction=1.5"),
])
def test_bad_settings_name_the_field(tmp_path, field, value, message):
    urls, _ = write_shards(tmp_path / "shards", [3])
    with pytest.raises(DataError, match=message):
        ImageDataModule(train_shards=urls, **{field: value})


def test_shard_patterns_that_match_nothing_fail_at_construction(tmp_path):
    write_shards(tmp_path / "shards", [3, 3])
    with pytest.raises(DataError, match="matches no shard file"):
        ImageDataModule(train_shards=str(tmp_path / "shards" / "*.tgz"))
    with pytest.raises(DataError, match="do not exist"):
        ImageDataModule(train_shards=str(tmp_path / "shards" / "shard-{000000..000005}.tar"))
    with pytest.raises(DataError, match="val_shards"):
        ImageDataModule(train_shards=str(tmp_path / "shards"), val_shards=str(tmp_path / "nowhere.tar"))
    dm = ImageDataModule(train_shards=str(tmp_path / "shards" / "shard-{000000..000001}.tar"))
    assert len(dm._train_urls) == 2


def test_epoch_smaller_than_a_batch_is_refused(tmp_path):
    urls, _ = write_shards(tmp_path / "shards", [3])
    dm = ImageDataModule(train_shards=urls, batch_size=8, epoch_size=4, num_workers=0)
    with pytest.raises(DataError, match="epoch_size=4 is smaller than batch_size=8"):
        dm.train_dataloader()


def test_lightning_cli_reads_the_typed_init_as_schema(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["vartok-train"])
    urls, _ = write_shards(tmp_path / "shards", [3, 3])
    pattern = str(tmp_path / "shards" / "shard-{000000..000001}.tar")
    cli = LightningCLI(Recorder, ImageDataModule, run=False, args=[
        "--data.train_shards", pattern, "--data.val_shards", f"[{urls[0]}, {urls[1]}]",
        "--data.image_size", "8", "--data.batch_size", "2", "--data.resampled", "false",
        "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--seed_everything", "0"])
    assert isinstance(cli.datamodule, ImageDataModule)
    assert cli.datamodule.image_size == 8 and cli.datamodule.resampled is False
    assert cli.datamodule._val_urls == urls
