"""The spread over training seeds of the generation study (docs/generation.md §4): reads the JSON of several
`generation_study.py` runs whose arms are named NAME/SEED (one run per trained tokenizer) and prints one JSON
object with, per feature network:

- each arm and stage, mean and sd over the training seeds (FIDs from different networks are on different
  scales, so they are never pooled across networks);
- post-training against its control and against the tokenizer as trained, as differences paired by training
  seed (the same tokenizer, prior and gFID samples; only the decoder differs);
- one arm against another, paired by training seed (the same initialisation and data order; only the training
  recipe differs);
- the rank correlation, over every tokenizer as trained, of gFID with pFID, rFID and bits per token: whether
  a cheap measure orders the tokenizers as generation does.

    python benchmarks/generation_spread.py reports/gs/*.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import rise_summary

STAGES = ("before", "after_posttraining", "control")


def load_runs(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """{arm: {seed: that tokenizer's stages}} from the study outputs, arms named NAME/SEED."""
    arms: dict[str, dict[str, dict]] = {}
    for path in paths:
        study = json.loads(path.read_text())
        for name, result in study.items():
            if name == "protocol":
                continue
            if "/" not in name:
                raise SystemExit(f"{path}: arm {name!r} is not named NAME/SEED (run generation_study.py with "
                                 "--arm NAME/SEED=RUN_DIR)")
            arm, seed = name.split("/", 1)
            if seed in arms.setdefault(arm, {}):
                raise SystemExit(f"{path}: arm {arm} seed {seed} appears twice")
            arms[arm][seed] = result
    return arms


def per_network(stage: dict, metric: str, pfid_alpha: str) -> list[float]:
    """One stage's values of `metric` (rfid, pfid, gfid), one per feature network."""
    summary = stage["pfid"][pfid_alpha] if metric == "pfid" else stage[metric]
    return summary["values"]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (no ties in float FIDs): Pearson's correlation of the ranks."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0.0] * len(v)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def paired(a: dict[str, dict], b: dict[str, dict], stage_a: str, stage_b: str, metrics: list[str],
           networks: int, pfid_alpha: str) -> dict:
    """a[stage_a] − b[stage_b] over the seeds both hold (with those stages), per metric and network, with how
    many are below 0."""
    seeds = sorted(s for s in set(a) & set(b) if stage_a in a[s] and stage_b in b[s])
    out: dict = {"seeds": seeds}
    for metric in metrics:
        if metric in ("psnr", "bits_per_token"):
            diffs = [a[s][stage_a][metric] - b[s][stage_b][metric] for s in seeds]
            out[metric] = {**rise_summary(diffs), "below_zero": sum(d < 0 for d in diffs)}
            continue
        out[metric] = []
        for j in range(networks):
            diffs = [per_network(a[s][stage_a], metric, pfid_alpha)[j]
                     - per_network(b[s][stage_b], metric, pfid_alpha)[j] for s in seeds]
            out[metric].append({**rise_summary(diffs), "below_zero": sum(d < 0 for d in diffs)})
    return out


def summarise(arms: dict[str, dict[str, dict]], pfid_alpha: str) -> dict:
    first = next(iter(next(iter(arms.values())).values()))
    networks = first["before"]["rfid"]["n"]
    fids = ["rfid", "pfid", "gfid"]
    out: dict = {"pfid_alpha": pfid_alpha, "networks": networks, "arms": {}, "posttraining": {}, "arm_vs_arm": {}}
    for arm, seeds in arms.items():
        out["arms"][arm] = {"seeds": sorted(seeds)}
        for stage in STAGES:
            held = [s for s in seeds.values() if stage in s]
            if not held:
                continue
            entry = {metric: [rise_summary([per_network(s[stage], metric, pfid_alpha)[j] for s in held])
                              for j in range(networks)] for metric in fids}
            entry["psnr"] = rise_summary([s[stage]["psnr"] for s in held])
            entry["bits_per_token"] = rise_summary([s[stage]["bits_per_token"] for s in held])
            out["arms"][arm][stage] = entry
        if any("after_posttraining" in s and "control" in s for s in seeds.values()):
            out["posttraining"][arm] = {
                "post_minus_control": paired(seeds, seeds, "after_posttraining", "control", fids + ["psnr"],
                                             networks, pfid_alpha),
                "post_minus_before": paired(seeds, seeds, "after_posttraining", "before", fids + ["psnr"],
                                            networks, pfid_alpha)}
    names = sorted(arms)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out["arm_vs_arm"][f"{b}_minus_{a}"] = paired(arms[b], arms[a], "before", "before",
                                                         fids + ["psnr", "bits_per_token"], networks, pfid_alpha)
    tokenizers = [(f"{arm}/{seed}", s["before"]) for arm in names for seed, s in sorted(arms[arm].items())]
    ranking: dict = {"tokenizers": [name for name, _ in tokenizers], "per_network": []}
    for j in range(networks):
        gfid = [per_network(s, "gfid", pfid_alpha)[j] for _, s in tokenizers]
        row = {"gfid": [round(v, 3) for v in gfid]}
        for metric in ("pfid", "rfid"):
            values = [per_network(s, metric, pfid_alpha)[j] for _, s in tokenizers]
            row[f"spearman_gfid_{metric}"] = spearman(gfid, values)
        row["spearman_gfid_bits"] = spearman(gfid, [s["bits_per_token"] for _, s in tokenizers])
        ranking["per_network"].append(row)
    out["ranking"] = ranking
    return out


def _pm(summary: dict, digits: int = 2) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


def _per_network(summaries: list[dict], digits: int = 2) -> str:
    return " / ".join(_pm(s, digits) for s in summaries)


def _diff(summaries: list[dict] | dict, digits: int = 2) -> str:
    """Paired differences: mean ± sd (how many of n are below 0), per network."""
    summaries = summaries if isinstance(summaries, list) else [summaries]
    return " / ".join(f"{s['mean']:+.{digits}f} ± {s['sd']:.{digits}f} ({s['below_zero']}/{s['n']})" for s in summaries)


def markdown(summary: dict) -> str:
    """The summary's tables as docs/generation.md prints them (FIDs: network 0 / network 1)."""
    alpha = summary["pfid_alpha"]
    lines = ["Mean ± sd over training seeds; FID cells give network 0 / network 1.", "",
             f"| arm | decoder | PSNR (dB) | bits/token | rFID | pFID α={alpha} | gFID |", "|---|---|---|---|---|---|---|"]
    names = {"before": "as trained", "after_posttraining": "post-trained", "control": "control"}
    for arm, entry in summary["arms"].items():
        for stage, label in names.items():
            if stage in entry:
                e = entry[stage]
                lines.append(f"| {arm} | {label} ({e['psnr']['n']} seeds) | {_pm(e['psnr'])} | {_pm(e['bits_per_token'], 3)} | "
                             f"{_per_network(e['rfid'])} | {_per_network(e['pfid'])} | {_per_network(e['gfid'])} |")
    lines += ["", "Paired by training seed: mean ± sd of the difference, then how many differences are below 0.", "",
              "| arm | difference | Δ gFID | Δ rFID | Δ pFID | Δ PSNR (dB) |", "|---|---|---|---|---|---|"]
    for arm, pairs in summary["posttraining"].items():
        for key, label in (("post_minus_control", "post-trained − control"),
                           ("post_minus_before", "post-trained − as trained")):
            d = pairs[key]
            lines.append(f"| {arm} | {label} | " + " | ".join(_diff(d[m]) for m in ("gfid", "rfid", "pfid"))
                         + f" | {_diff(d['psnr'])} |")
    for key, d in summary["arm_vs_arm"].items():
        lines.append(f"| {key.replace('_minus_', ' − ')} | as trained | " + " | ".join(_diff(d[m]) for m in ("gfid", "rfid", "pfid"))
                     + f" | {_diff(d['psnr'])} |")
        lines.append(f"| {key.replace('_minus_', ' − ')} | bits/token: {_diff(d['bits_per_token'], 3)} | | | | |")
    ranking = summary["ranking"]
    lines += ["", f"Spearman correlation with gFID over the {len(ranking['tokenizers'])} tokenizers as trained:", "",
              "| network | pFID | rFID | bits/token |", "|---|---|---|---|"]
    for j, row in enumerate(ranking["per_network"]):
        lines.append(f"| {j} | {row['spearman_gfid_pfid']:+.2f} | {row['spearman_gfid_rfid']:+.2f} | "
                     f"{row['spearman_gfid_bits']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="generation_study.py outputs (JSON)")
    parser.add_argument("--pfid-alpha", default="0.2", help="the perturbation strength whose pFID is compared")
    parser.add_argument("--markdown", action="store_true", help="print the tables of docs/generation.md, not JSON")
    args = parser.parse_args()
    summary = summarise(load_runs(args.studies), args.pfid_alpha)
    print(markdown(summary) if args.markdown else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
