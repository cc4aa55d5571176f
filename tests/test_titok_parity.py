"""Converted TiTok models reproduce the released code (bytedance/1d-tokenizer) exactly.

The fixtures in tests/fixtures/titok_parity hold, per variant (single-stage VQ; two-stage with the legacy
layers and the VQGAN pixel decoder), the reference's config, its weight names and shapes, and its outputs on
two images; `tests/fixtures/titok_reference.py` made them from the reference code, whose weights it filled by
the per-key rule of `tests/fixtures/titok_seed.py`. Here the same rule rebuilds those weights as a released
checkpoint (pytorch_model.bin or model.safetensors + config.json); `vartok-convert` turns it into an export,
and the export must give the reference's indices exactly and its latents and reconstructions to 1e-5, at all
8 tokens and at a prefix of 3.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures.titok_seed import seeded_state
from vartok import Tokenizer
from vartok.cli.convert import main as convert_main
from vartok.convert.titok import convert_titok

FIXTURES = Path(__file__).parent / "fixtures" / "titok_parity"
# float32: the reference's own rounding differs by CPU kernel (0 on one machine, 1.7e-5 through the two-stage
# VQGAN decoder on another); a wrong operation differs by far more, and the float64 check below is the tight one
TOLERANCE = 1e-4


def released_checkpoint(variant: str, folder: Path, weights_format: str = "bin") -> tuple[dict, dict]:
    """Write the fixture's reference weights as a released checkpoint folder; returns (fixture json, outputs)."""
    meta = json.loads((FIXTURES / f"{variant}.json").read_text())
    state = seeded_state(meta["weights"], meta["base_seed"])
    folder.mkdir(parents=True, exist_ok=True)
    if weights_format == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(meta["config"]))
    return meta, load_file(str(FIXTURES / f"{variant}.safetensors"))


def tokens_last(x: torch.Tensor) -> torch.Tensor:
    """The reference's (B, D, 1, N) token layout -> vartok's (B, N, D)."""
    return x[:, :, 0].transpose(1, 2)


@pytest.mark.parametrize(("variant", "weights_format"), [("single_stage", "bin"), ("two_stage", "safetensors")])
def test_converted_model_matches_the_reference(tmp_path, variant, weights_format):
    meta, ref = released_checkpoint(variant, tmp_path / "released", weights_format)
    convert_titok(tmp_path / "released", tmp_path / "export")
    tok = Tokenizer.from_pretrained(tmp_path / "export")  # what users load: the export on disk
    k = meta["short_length"]
    with torch.no_grad():
        enc = tok.encode(ref["images"])
        assert torch.equal(enc.indices, ref["indices"]), "indices differ from the reference"
        assert (enc.latents - tokens_last(ref["latents"])).abs().max() <= TOLERANCE
        assert (enc.codes - tokens_last(ref["codes"])).abs().max() <= TOLERANCE
        recon = tok.decoder(enc.codes)  # [0, 1] scale, unclamped, as the reference returns it
        recon_short = tok.decoder(enc.codes[:, :k])
        assert (recon - ref["recon"]).abs().max() <= TOLERANCE
        assert (recon_short - ref["recon_short"]).abs().max() <= TOLERANCE
        # The public path clamps to [0, 1], as the reference's users do; from indices it decodes the exact
        # codebook entries (the float64 reference), which float32 reaches to its own rounding (~2e-5 here).
        for length, key in ((None, "recon_float64"), (k, "recon_short_float64")):
            public = tok.decode(enc.indices, length=length)
            assert (public.double() - ref[key].clamp(0, 1)).abs().max() <= 5e-5


@pytest.mark.parametrize("variant", ["single_stage", "two_stage"])
def test_converted_model_matches_the_float64_reference(tmp_path, variant):
    """In float64 the rounding of both implementations vanishes: they agree to ~1e-12, which no
    near-equivalent computation (another norm epsilon, another attention scale) would."""
    meta, ref = released_checkpoint(variant, tmp_path / "released")
    tok = convert_titok(tmp_path / "released", tmp_path / "export").double()
    k = meta["short_length"]
    with torch.no_grad():
        latents = tok.encoder(ref["images"].double())
        assert (latents - tokens_last(ref["latents_float64"])).abs().max() <= 1e-9
        codes = tok.quantizer.lookup_codes(ref["indices"])
        assert ((tok.decoder(codes)) - ref["recon_float64"]).abs().max() <= 1e-9
        assert ((tok.decoder(codes[:, :k])) - ref["recon_short_float64"]).abs().max() <= 1e-9


def test_command_line_conversion(tmp_path, capsys):
    released_checkpoint("single_stage", tmp_path / "released")
    convert_main(["titok", "--checkpoint", str(tmp_path / "released" / "pytorch_model.bin"),
                  "--out", str(tmp_path / "export")])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "pixels TiTok" in printed and "8 tokens of 6 bits" in printed
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["tokenizer"]["architecture"] == "titok"
    assert config["source"]["converted_from"].endswith("pytorch_model.bin")
