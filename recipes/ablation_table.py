"""The table of recipes/text_baselines.sh and recipes/audio_baselines.sh: Transformer-XL against its two
ablations (no memory; absolute positions), each run's evaluation summary and training record side by side.

    python recipes/ablation_table.py OUT SPLIT      # OUT holds the runs xl/, no_memory/, absolute/
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from txl_audio.baselines import bootstrap_ci
from txl_audio.config import load_config

RUNS = (("xl", "Transformer-XL"), ("no_memory", "no memory (mem_len 0)"), ("absolute", "absolute positions"))


def paired_difference(out: Path, split: str, name: str) -> tuple[float, float, float] | None:
    """Bits per token of run ``name`` minus the Transformer-XL's, over the same files (token-weighted,
    so it equals the difference of the two totals), with a 95% bootstrap interval over files: the
    files are paired, so the interval is much tighter than either model's own. None with fewer than
    10 files (a text stream is one file)."""

    def per_file(run: str) -> dict[str, tuple[int, float]]:
        with open(out / run / f"eval_{split}" / "per_file.csv", newline="") as f:
            return {r["file"]: (int(r["tokens"]), float(r["bits_per_sample"])) for r in csv.DictReader(f)}

    a, b = per_file("xl"), per_file(name)
    files = [f for f in a if f in b and a[f][0] > 0 and math.isfinite(a[f][1]) and math.isfinite(b[f][1])]
    if len(files) < 10:
        return None
    tokens = np.array([a[f][0] for f in files], dtype=np.float64)
    diff = np.array([b[f][1] - a[f][1] for f in files])
    lo, hi = bootstrap_ci(diff, weights=tokens)
    return float((diff * tokens).sum() / tokens.sum()), lo, hi


def table(out: Path, split: str) -> str:
    rows, summaries = [], []
    for name, label in RUNS:
        run = out / name
        s = json.loads((run / f"eval_{split}" / "summary.json").read_text())
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        train = [r for r in recs if r.get("split") == "train"]
        m = load_config(run / "config.toml").model
        value = f"{s['perplexity']:.2f}" if "perplexity" in s else f"{s['bits_per_token']:.4f}"
        d = paired_difference(out, split, name) if name != "xl" else None
        vs = "-" if d is None else f"{d[0]:+.4f} ({d[1]:+.4f} to {d[2]:+.4f})"
        rows.append([label, m.attention, m.tgt_len, m.mem_len, train[-1]["step"], f"{train[-1]['time']:.0f}",
                     f"{s['nll_nats_per_token']:.4f}", value, vs])
        summaries.append(s)
    first = summaries[0]
    metric = "perplexity" if "perplexity" in first else first.get("metric", "bits per token")
    lines = [f"| model | attention | tgt_len | mem_len | steps | train s | {split} nats/token | {metric} "
             "| bits/token vs Transformer-XL (95% CI, files paired) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    how = "as one stream" if first.get("mode") == "stream" else "with every file from an empty memory"
    note = f"({first['tokens']:,} {split} tokens, each model evaluated {how} at its training lengths"
    if first.get("xz_bits_per_token") is not None:  # None with --no-baselines
        note += f"; xz -9e on the same tokens: {first['xz_bits_per_token']:.4f} {metric}"
    return "\n".join(lines) + "\n\n" + note + ")"


if __name__ == "__main__":
    print()
    print(table(Path(sys.argv[1]), sys.argv[2]))
