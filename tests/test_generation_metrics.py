"""Generation metrics of a token prior inside vartok's evaluation (issue 17, item 2): bits per token and gFID.

A tiny demo tokenizer export (its decoder head scaled up so that decodes depend visibly on the tokens) and a
tiny random prior built here; the FID network is tests/fixtures/doubles.py's TinyFeatureNet. Checked: bits per
token equal the prior's own log_prob on each prefix of the images' tokens (categorical, grouped and bit codes,
class-conditional with labels); gFID of decodes of the images' own tokens equals rFID at every k; gFID of the
prior's samples is finite, differs from rFID and is set by the seed; the samples' union does not depend on the
number of ranks (fast, by hand) and 2 gloo processes give the report of one (slow); vartok-eval end to end and
its mistakes, each one sentence before any work.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vartok.metrics.networks
from tests.fixtures import commands
from tests.fixtures.doubles import TinyFeatureNet, photo_crops
from tests.fixtures.photo_shards import photo_shards
from tests.fixtures.processes import assert_tree_close, free_port
from vartok.cli.evaluate import main as eval_main
from vartok.metrics import EvalPlan, Networks, evaluate
from vartok.metrics.generation import Generation, PriorSamples
from vartok.models.prior import TokenPrior, TokenSpec
from vartok.tokenizers import Tokenizer
from vartok.tokenizers.randomness import keyed_seed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE, COUNT, BATCH, SAMPLES, WORLD = 16, 11, 2, 9, 2
LENGTHS = [1, 2, 4]
QUANTIZERS = {"fsq": "categorical", "gq": "grouped", "lfq": "bits"}


def tiny_tokenizer(quantizer: str = "fsq") -> Tokenizer:
    """demo_tiny (4 tokens, 16 px) with its decoder head ×8: decodes of different tokens differ clearly."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_preset("demo_tiny", quantizer=quantizer).eval()
    with torch.no_grad():
        tokenizer.decoder.head.weight.mul_(8)
    return tokenizer


def tiny_prior(tokenizer: Tokenizer, num_classes: int = 0, seed: int = 1) -> TokenPrior:
    """A random prior for `tokenizer`'s tokens, its head scaled up so that it is far from uniform."""
    torch.manual_seed(seed)
    prior = TokenPrior(TokenSpec.from_quantizer(tokenizer.quantizer, tokenizer.num_tokens), width=16, depth=1,
                       heads=2, num_classes=num_classes)
    with torch.no_grad():
        prior.codec.head.weight.mul_(60)
    return prior.eval()


def batches(images: torch.Tensor, rank: int = 0, world: int = 1, labels: torch.Tensor | None = None) -> list[dict]:
    """This rank's images (rank::world) in batches of BATCH, the short rank padded with invalid copies."""
    mine = list(range(rank, images.shape[0], world))
    per_rank = -(-images.shape[0] // world)
    out = []
    for b in range(-(-per_rank // BATCH)):
        ids = mine[b * BATCH : (b + 1) * BATCH]
        valid = [True] * len(ids) + [False] * (BATCH - len(ids))
        ids = ids + [0] * (BATCH - len(ids))
        batch = {"image": images[ids], "valid": torch.tensor(valid), "key": [f"i{i}" for i in ids]}
        if labels is not None:
            batch["label"] = labels[ids]
        out.append(batch)
    return out


def plan(generation: Generation, metrics: tuple[str, ...] = ("rfid", "gfid", "bits")) -> EvalPlan:
    return EvalPlan(LENGTHS, metrics, "cpu", Networks(inception=TinyFeatureNet(16)), baselines=False,
                    grid_images=0, show=False, generation=generation)


class RealTokens:
    """A TokenSource of the evaluated images' own tokens, batch by batch as seen: their gFID must be rFID."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def observe(self, indices: torch.Tensor) -> None:
        self.seen.append(indices.clone())

    def draw(self, length: int, samples: int, rank: int, world: int, batch_size: int):
        for tokens in self.seen:
            yield tokens[:, :length]

    def describe(self) -> dict:
        return {"tokens": "the evaluated images' own"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return photo_crops(COUNT, SIZE, seed=7)


# ---------------------------------------------------------------------------------------------- bits per token
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_bits_per_token_are_the_priors_own_log_prob_of_each_prefix(images, quantizer) -> None:
    tokenizer = tiny_tokenizer(quantizer)
    prior = tiny_prior(tokenizer)
    assert prior.spec.kind == QUANTIZERS[quantizer]
    report = evaluate(tokenizer, batches(images), plan(Generation(prior), ("psnr", "bits")))
    with torch.no_grad():
        tokens = tokenizer.encode(images.float() / 255).indices
        for k in LENGTHS:  # the first k tokens scored on their own: the prefix of an autoregressive likelihood
            expected = -prior.log_prob(tokens[:, :k]).double().mean().item() / math.log(2)
            assert report["lengths"][str(k)]["bits_per_token"] == pytest.approx(expected, rel=1e-5), k
    assert "gfid" not in report["lengths"]["4"] and report["unavailable"] == {}


def test_a_class_conditional_prior_scores_with_the_batch_labels_or_says_why_not(images) -> None:
    tokenizer = tiny_tokenizer()
    prior = tiny_prior(tokenizer, num_classes=3)
    labels = torch.arange(COUNT) % 3
    report = evaluate(tokenizer, batches(images, labels=labels), plan(Generation(prior), ("bits",)))
    with torch.no_grad():
        tokens = tokenizer.encode(images.float() / 255).indices
        expected = -prior.log_prob(tokens, labels).double().mean().item() / math.log(2)
    assert report["lengths"]["4"]["bits_per_token"] == pytest.approx(expected, rel=1e-5)
    unlabelled = evaluate(tokenizer, batches(images), plan(Generation(prior, name="P"), ("bits",)))
    assert "bits_per_token" not in unlabelled["lengths"]["4"]
    assert unlabelled["unavailable"]["bits"].startswith(f"the prior P is class-conditional and {COUNT} evaluated")


# ---------------------------------------------------------------------------------------------- gFID
def test_gfid_of_the_images_own_tokens_equals_rfid_at_every_length(images) -> None:
    tokenizer = tiny_tokenizer()
    report = evaluate(tokenizer, batches(images), plan(Generation(tiny_prior(tokenizer), source=RealTokens())))
    rfid = {k: report["lengths"][str(k)]["rfid"] for k in LENGTHS}
    for k in LENGTHS:
        assert report["lengths"][str(k)]["gfid"] == pytest.approx(rfid[k], rel=1e-9, abs=1e-9), k
    assert min(abs(rfid[a] - rfid[b]) for a in LENGTHS for b in LENGTHS if a < b) > 1e-3  # a wrong k would show


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_gfid_of_prior_samples_is_finite_differs_and_is_set_by_the_seed(images, quantizer) -> None:
    tokenizer = tiny_tokenizer(quantizer)
    prior = tiny_prior(tokenizer)
    first = evaluate(tokenizer, batches(images), plan(Generation(prior, samples=SAMPLES, batch_size=4, name="P")))
    again = evaluate(tokenizer, batches(images), plan(Generation(prior, samples=SAMPLES, batch_size=3, name="P")))
    other = evaluate(tokenizer, batches(images), plan(Generation(prior, samples=SAMPLES, seed=5, name="P")))
    for k in map(str, LENGTHS):
        gfid, rfid = first["lengths"][k]["gfid"], first["lengths"][k]["rfid"]
        assert math.isfinite(gfid) and abs(gfid - rfid) > 1e-3 * rfid, k
        assert again["lengths"][k]["gfid"] == pytest.approx(gfid, rel=1e-6)  # batches do not change samples
        assert other["lengths"][k]["gfid"] != pytest.approx(gfid, rel=1e-6)
    assert first["prior"] == {"path": "P", "spec": prior.spec.to_dict(), "num_classes": 0, "samples": SAMPLES,
                              "sampling": {"tokens": "sampled from the prior", "temperature": 1.0, "top_k": None,
                                           "seed": 0, "labels": None}}


def test_sample_union_over_ranks_does_not_depend_on_the_world_size() -> None:
    prior = tiny_prior(tiny_tokenizer(), num_classes=3)
    source = PriorSamples(prior, temperature=0.7, top_k=20, seed=3)
    one = torch.cat(list(source.draw(4, 7, 0, 1, batch_size=2)))  # samples 0..6 in order
    for world in (2, 3):  # chunks of 2 samples, rank r drawing chunks r, r + world, ...
        shares = [torch.cat(list(source.draw(4, 7, r, world, batch_size=2))) for r in range(world)]
        order = [i for r in range(world) for chunk in range(r, 4, world) for i in range(2 * chunk, min(2 * chunk + 2, 7))]
        assert torch.equal(torch.cat(shares), one[order])
    assert torch.equal(torch.cat(list(source.draw(2, 7, 0, 1, batch_size=7))), one[:, :2])  # prefixes, batch 7
    assert len({tuple(row.tolist()) for row in one}) > 1
    # sample i is what one draw of sample i alone gives with keyed_seed(3, i): its label, then its tokens
    with torch.no_grad():
        for i in range(7):
            generator = torch.Generator().manual_seed(keyed_seed(3, i))
            label = torch.randint(3, (1,), generator=generator)
            alone = prior.eval().sample(1, 4, label, temperature=0.7, top_k=20, generator=generator)
            assert torch.equal(alone[0], one[i])


# ---------------------------------------------------------------------------------------------- DDP (slow)
def _ddp_report(folder: Path, rank: int, world: int) -> dict:
    tokenizer = Tokenizer.from_pretrained(folder / "tok")
    generation = Generation(TokenPrior.from_pretrained(folder / "prior"), samples=SAMPLES, batch_size=3)
    return evaluate(tokenizer, batches(photo_crops(COUNT, SIZE, seed=7), rank, world), plan(generation))


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        report = _ddp_report(Path(folder), rank, WORLD)
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_gfid_and_bits_of_one_process(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    tiny_prior(tokenizer).save_pretrained(tmp_path / "prior")
    context = mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process evaluation did not finish within 300 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    single = json.loads(json.dumps(_ddp_report(tmp_path, 0, 1)))
    assert ranks[0] == ranks[1] and ranks[0]["num_images"] == single["num_images"] == COUNT
    assert ranks[0]["prior"] == single["prior"] and single["prior"]["samples"] == SAMPLES
    for k in map(str, LENGTHS):
        assert {"rfid", "gfid", "bits_per_token"} <= set(single["lengths"][k])
    assert_tree_close(ranks[0]["lengths"], single["lengths"], rel=1e-6)


# ---------------------------------------------------------------------------------------------- vartok-eval
@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """A tokenizer export, a prior for it, a prior for another tokenizer and one shard of photo crops."""
    root = tmp_path_factory.mktemp("generation_cli")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(root / "tok")
    tiny_prior(tokenizer).save_pretrained(root / "prior")
    tiny_prior(tiny_tokenizer("vq")).save_pretrained(root / "vq_prior")
    bits = tiny_tokenizer("lfq")
    bits.save_pretrained(root / "lfq_tok")
    tiny_prior(bits).save_pretrained(root / "lfq_prior")
    (root / "inception.pth").write_bytes(b"never read: the FID network is a stand-in")
    return {"root": root, "shard": photo_shards(root / "shards", count=6, size=SIZE, shards=1, seed=3)[0]}


def eval_cli(exports: dict, out: Path, capsys, *extra: str, data: str | None = None,
             tokenizer: str = "tok") -> tuple[int, str]:
    argv = ["--checkpoint", str(exports["root"] / tokenizer), "--data", data or exports["shard"], "--out", str(out),
            "--lengths", "1,4", "--no-baselines", "--device", "cpu", "--grid-images", "0",
            "--inception-weights", str(exports["root"] / "inception.pth"), *extra]
    code, _, err = commands.run_main(eval_main, capsys, *argv)
    return code, err


def test_cli_writes_gfid_bits_and_the_prior_section(exports, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(vartok.metrics.networks, "build_inception", lambda *a, **k: TinyFeatureNet(16))
    prior = exports["root"] / "prior"
    code, err = eval_cli(exports, tmp_path / "o", capsys, "--metrics", "psnr,rfid,gfid,bits", "--prior", str(prior),
                         "--gfid-samples", "5", "--gfid-temperature", "0.8", "--gfid-top-k", "50", "--gfid-seed", "2")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for k in ("1", "4"):
        entry = report["lengths"][k]
        assert all(math.isfinite(entry[m]) for m in ("rfid", "gfid", "bits_per_token")), entry
    assert report["prior"]["path"] == str(prior) and report["prior"]["samples"] == 5
    assert report["prior"]["spec"] == TokenPrior.from_pretrained(prior).spec.to_dict()
    assert report["prior"]["sampling"] | {"tokens": None} == {"tokens": None, "temperature": 0.8, "top_k": 50,
                                                              "seed": 2, "labels": None}


@pytest.mark.parametrize("extra, parts", [
    (("--metrics", "psnr,gfid"), ["--metrics gfid measures a token prior", "--prior PRIOR_DIR"]),
    (("--metrics", "bits,gfid,rfid"), ["--metrics gfid,bits measures a token prior", "--prior PRIOR_DIR"]),
    (("--metrics", "gfid", "--prior", "{root}/nowhere"), ["--prior {root}/nowhere does not exist"]),
    (("--metrics", "psnr", "--prior", "{root}/prior"), ["asks for neither gfid nor bits"]),
    (("--metrics", "gfid", "--prior", "{root}/prior", "--gfid-temperature", "0"), ["--gfid-temperature=0.0"]),
    (("--metrics", "gfid", "--prior", "{root}/prior", "--gfid-samples", "1"), ["--gfid-samples=1", "at least 2"]),
    (("--metrics", "gfid", "--prior", "{root}/prior", "--gfid-top-k", "0"), ["--gfid-top-k=0"]),
    (("--metrics", "gfid", "--prior", "{root}/lfq_prior", "--gfid-top-k", "5"),
     ["--gfid-top-k does not apply to the prior {root}/lfq_prior", "18-bit binary codes"]),
    (("--metrics", "bits", "--prior", "{root}/vq_prior"),
     [("the prior {root}/vq_prior predicts 4 tokens of 4096 codes but the tokenizer {root}/tok has 4 tokens of "
       "125 codes")]),
])
def test_cli_mistakes_are_one_sentence_before_any_work(exports, tmp_path, capsys, extra, parts) -> None:
    root = str(exports["root"])
    extra = [part.format(root=root) for part in extra]
    tokenizer = "lfq_tok" if "lfq_prior" in " ".join(extra) else "tok"
    code, err = eval_cli(exports, tmp_path / "o", capsys, *extra, data=str(tmp_path / "no_such_shards"),
                         tokenizer=tokenizer)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vartok-eval: error: "), err
    for part in parts:
        assert part.format(root=root) in lines[0], err
    assert not (tmp_path / "o").exists()


def test_api_mistakes(images) -> None:
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"metrics bits, gfid measure a token prior.*EvalPlan\(generation="):
        evaluate(tokenizer, batches(images), EvalPlan(LENGTHS, ["gfid", "bits"], show=False))
    vq_prior = tiny_prior(tiny_tokenizer("vq"))
    with pytest.raises(ValueError, match=r"the prior Q predicts 4 tokens of 4096 codes but the tokenizer"):
        evaluate(tokenizer, batches(images), plan(Generation(vq_prior, name="Q")))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        evaluate(tokenizer, batches(images), plan(Generation(tiny_prior(tokenizer), temperature=0.0)))


def test_the_training_callback_refuses_generation_metrics_in_one_sentence() -> None:
    from vartok.metrics.callbacks import EvaluationCallback

    with pytest.raises(ValueError, match="metrics gfid need a token prior .* vartok-eval --prior PRIOR_DIR"):
        EvaluationCallback(every_n_steps=10, metrics=["psnr", "gfid"])
