"""Plots as PNG files (matplotlib, Agg backend: no display needed).

A set of independent functions, one per figure; each takes plain data or a file path and writes one PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a half-written last line, from a kill, is skipped)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _metric_of(records: list[dict[str, Any]]) -> tuple[str, str]:
    """(key, axis label): bits when the run reports bits (audio, characters), else loss in nats."""
    if any("bits" in r for r in records):
        unit = next((r.get("unit") for r in records if r.get("unit")), None)
        label = {"sample": "bits per sample", "byte": "bits per character"}.get(unit, "bits per token")
        return "bits", label
    return "loss_nats", "loss (nats per token)"


def plot_training_curves(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Training and validation loss against step from a run's ``metrics.jsonl`` -> ``out_path`` PNG."""
    records = read_metrics(metrics_path)
    key, label = _metric_of(records)
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        pts = [(r["step"], r[key]) for r in records
               if r.get("split") == split and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=split, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title(title or Path(metrics_path).parent.name)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)  # viewers never see a half-written image
    return out_path
