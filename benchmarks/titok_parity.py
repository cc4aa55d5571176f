"""The parity figures of docs/titok.md: a converted TiTok against the released code's outputs, per fixture
variant (single-stage VQ; two-stage with the legacy layers and the VQGAN pixel decoder). Prints one JSON object:
index agreement and the largest absolute differences of latents and reconstructions (all 8 tokens and the
fixture's prefix), in float32 against the float32 reference and in float64 against the float64 reference.

    python benchmarks/titok_parity.py

The fixtures (tests/fixtures/titok_parity) were made from bytedance/1d-tokenizer by
tests/fixtures/titok_reference.py; tests/test_titok_parity.py asserts these figures' bounds.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_titok_parity import released_checkpoint, tokens_last
from vartok import Tokenizer
from vartok.convert.titok import convert_titok


def figures(variant: str, folder: Path) -> dict:
    meta, ref = released_checkpoint(variant, folder / "released")
    convert_titok(folder / "released", folder / "export")
    tok = Tokenizer.from_pretrained(folder / "export")
    k = meta["short_length"]
    with torch.no_grad():
        enc = tok.encode(ref["images"])
        out = {
            "tokens": int(enc.indices.numel()),
            "indices_equal": int((enc.indices == ref["indices"]).sum()),
            "float32_max_abs": {
                "latents": float((enc.latents - tokens_last(ref["latents"])).abs().max()),
                "recon": float((tok.decoder(enc.codes) - ref["recon"]).abs().max()),
                f"recon_first_{k}": float((tok.decoder(enc.codes[:, :k]) - ref["recon_short"]).abs().max()),
            },
        }
        tok = tok.double()
        codes = tok.quantizer.lookup_codes(ref["indices"])
        out["float64_max_abs"] = {
            "latents": float((tok.encoder(ref["images"].double()) - tokens_last(ref["latents_float64"])).abs().max()),
            "recon": float((tok.decoder(codes) - ref["recon_float64"]).abs().max()),
            f"recon_first_{k}": float((tok.decoder(codes[:, :k]) - ref["recon_short_float64"]).abs().max()),
        }
        out["reference_recon_range"] = [float(ref["recon"].min()), float(ref["recon"].max())]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = {variant: figures(variant, Path(tmp) / variant) for variant in ("single_stage", "two_stage")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
