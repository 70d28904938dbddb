"""The table of recipes/text_baselines.sh and recipes/audio_baselines.sh: Transformer-XL against its two
ablations (no memory; absolute positions), its rotary-position variant and (audio) its compressive-memory
variants, each run's evaluation summary and training record side by side.

    python recipes/ablation_table.py OUT SPLIT   # OUT: xl/, no_memory/, absolute/ [rotary/ cmem4/ cmem8/]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from txl_audio.baselines import paired_difference, read_per_file
from txl_audio.config import load_config
from txl_audio.plots import read_metrics

RUNS = (("xl", "Transformer-XL"), ("no_memory", "no memory (mem_len 0)"), ("absolute", "absolute positions"),
        ("rotary", "rotary positions, same memory"), ("cmem4", "compressive, rate 4, same attention cost"),
        ("cmem8", "compressive, rate 8, same attention cost"))
OPTIONAL = ("rotary", "cmem4", "cmem8")  # runs made before these variants existed have none


def table(out: Path, split: str) -> str:
    rows, summaries = [], []
    for name, label in RUNS:
        run = out / name
        if not run.is_dir() and name in OPTIONAL:
            continue
        s = json.loads((run / f"eval_{split}" / "summary.json").read_text())
        train = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]
        value = f"{s['perplexity']:.2f}" if "perplexity" in s else f"{s['bits_per_token']:.4f}"
        d = None
        if name != "xl":  # the ablation minus the Transformer-XL on the same files, interval over files
            per_file = [read_per_file(out / r / f"eval_{split}" / "per_file.csv") for r in ("xl", name)]
            d = paired_difference(*per_file)
        vs = "-" if d is None else f"{d[0]:+.4f} ({d[1]:+.4f} to {d[2]:+.4f})"
        m = load_config(run / "config.toml").model
        rate = train[-1]["tokens"] / train[-1]["time"] if train[-1]["time"] else float("nan")
        cmem = f"{m.cmem_len} x {m.cmem_ratio}" if m.cmem_len else "-"
        rows.append([label, m.attention, m.tgt_len, m.mem_len, cmem, train[-1]["step"],
                     f"{train[-1]['time']:.0f}", f"{rate:,.0f}", f"{s['nll_nats_per_token']:.4f}", value, vs])
        summaries.append(s)
    first = summaries[0]
    metric = "perplexity" if "perplexity" in first else first.get("metric", "bits per token")
    lines = [f"| model | attention | tgt_len | mem_len | compressed | steps | train s | train tokens/s "
             f"| {split} nats/token | {metric} | bits/token vs Transformer-XL (95% CI, files paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    how = "as one stream" if first.get("mode") == "stream" else "with every file from an empty memory"
    note = f"({first['tokens']:,} {split} tokens, each model evaluated {how} at its training lengths"
    if first.get("xz_bits_per_token") is not None:  # None with --no-baselines
        note += f"; xz -9e on the same tokens: {first['xz_bits_per_token']:.4f} {metric}"
    return "\n".join(lines) + "\n\n" + note + ")"


if __name__ == "__main__":
    print()
    print(table(Path(sys.argv[1]), sys.argv[2]))
