"""The table of recipes/lossless16_heads.sh: each 16-bit head's held-out bits per 16-bit sample beside
FLAC -8, the backward-adaptive LPC column and xz on the same samples, and its difference from FLAC
with a 95% bootstrap interval over the paired files.

    python recipes/heads_table.py OUT VARIANT...      # OUT holds VARIANT/eval_test for each
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from txl_audio.baselines import bootstrap_ci
from txl_audio.config import load_config
from txl_audio.plots import read_metrics


def per_file(path: Path) -> dict[str, dict[str, float]]:
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        return {r["file"]: {k: float(v) for k, v in r.items() if k != "file" and v != ""} for r in rows}


def versus(rows: dict[str, dict[str, float]], column: str) -> tuple[float, float, float]:
    """Model minus ``column`` in bits per sample over all files (token-weighted), with its interval."""
    files = [f for f in rows if rows[f]["tokens"] > 0]
    w = np.array([rows[f]["tokens"] for f in files])
    # whole files on both sides where the report has them (16-bit: the baselines code every sample)
    whole = "whole_file_bits_per_sample"
    key = whole if whole in rows[files[0]] else "bits_per_sample"
    d = np.array([rows[f][key] - rows[f][column] for f in files])
    lo, hi = bootstrap_ci(d, weights=w)
    return float((d * w).sum() / w.sum()), lo, hi


def table(out: Path, variants: list[str]) -> str:
    lines = ["| variant | head | prior | steps | train s | test bits per 16-bit sample | vs FLAC -8 (95% CI, "
             "files paired) | vs LPC column |", "|---|---|---|---|---|---|---|---|"]
    base = None
    for v in variants:
        run = out / v
        s = json.loads((run / "eval_test" / "summary.json").read_text())
        rows = per_file(run / "eval_test" / "per_file.csv")
        train = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]
        m = load_config(run / "config.toml").model
        prior = "-" if not m.lp_order else f"order {m.lp_order}, {m.lp_coefficients}"
        d, lo, hi = versus(rows, "flac_bits_per_sample")
        dl, lol, hil = versus(rows, "lpc_bits_per_sample")
        lines.append(f"| {v} | {m.head} | {prior} | {train[-1]['step']} | {train[-1]['time']:.0f} | "
                     f"{s['bits_per_token']:.4f} | {d:+.4f} ({lo:+.4f} to {hi:+.4f}) | "
                     f"{dl:+.4f} ({lol:+.4f} to {hil:+.4f}) |")
        base = base or s
    note = (f"({base['tokens']:,} test samples of {base['files']} files, each from an empty memory; on the "
            f"same samples FLAC -8 {base['flac_bits_per_token']:.4f}, LPC-32 + adaptive Laplace "
            f"{base['lpc_bits_per_token']:.4f}, xz -9e {base['xz_bits_per_token']:.4f} bits per 16-bit "
            f"sample; FLAC: {base.get('flac_encoder', '?')})")
    return "\n".join(lines) + "\n\n" + note


if __name__ == "__main__":
    print()
    print(table(Path(sys.argv[1]), sys.argv[2:]))
