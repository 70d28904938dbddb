"""Plots as PNG files (matplotlib, Agg backend: no display needed).

A set of independent functions, one per figure; each takes plain data or a file path and writes one PNG.
Spectrograms are in :mod:`txl_audio.spectrogram` (they need torch; these figures do not).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

from txl_audio.tokenizers import metric_name

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
        unit = next((r["unit"] for r in records if r.get("unit")), None)
        levels = next((r["levels"] for r in records if r.get("levels")), None)
        return "bits", metric_name(unit, levels) if unit else "bits per token"
    return "loss_nats", "loss (nats per token)"


def plot_training_curves(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Training and validation loss against step from a run's ``metrics.jsonl`` -> ``out_path`` PNG."""
    records = read_metrics(metrics_path)
    key, label = _metric_of(records)
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        pts = [
            (r["step"], r[key])
            for r in records
            if r.get("split") == split and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
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


# ---- context-length figures (txl-audio context) ----


def _ms_axis(ax: Any, sample_rate: int | None) -> None:
    """A secondary x axis in milliseconds of audio above a token axis."""
    if sample_rate:
        sec = ax.secondary_xaxis(
            "top", functions=(lambda n: n * 1000 / sample_rate, lambda ms: ms * sample_rate / 1000)
        )
        sec.set_xlabel("milliseconds of audio")


def _finish_nll_plot(
    fig: Any,
    ax: Any,
    xlabel: str,
    metric: str,
    sample_rate: int | None,
    title: str | None,
    out_path: str | Path,
) -> Path:
    """Labels, millisecond axis, grid, legend and title of an NLL plot, then save it as PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    _ms_axis(ax, sample_rate)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_nll_vs_context(
    curves: list[dict[str, Any]],
    out_path: str | Path,
    metric: str = "bits per sample",
    sample_rate: int | None = None,
    title: str | None = None,
) -> Path:
    """One line per checkpoint: ``{"name", "spans", "bits", "fixed"}``; a fixed-context model (the
    absolute-position baseline) is one point extended as a dashed flat line for comparison."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    all_spans = [s for c in curves for s in c["spans"]]
    for c in curves:
        if not c["spans"]:
            continue
        if c.get("fixed"):
            (line,) = ax.plot(c["spans"][:1], c["bits"][:1], "s", ms=7, label=f"{c['name']} (fixed context)")
            if all_spans:
                ax.hlines(
                    c["bits"][0], min(all_spans), max(all_spans), colors=line.get_color(), linestyles="--"
                )
        else:
            ax.plot(c["spans"], c["bits"], "o-", label=c["name"])
    ax.set_xscale("log", base=2)
    return _finish_nll_plot(
        fig,
        ax,
        "attention span at evaluation (mem_len + tgt_len tokens)",
        metric,
        sample_rate,
        title,
        out_path,
    )


def plot_nll_vs_position(
    series: list[dict[str, Any]],
    out_path: str | Path,
    metric: str = "bits per sample",
    sample_rate: int | None = None,
    title: str | None = None,
) -> Path:
    """Loss by position of the predicted token in its file: ``{"name", "lo", "hi", "bits"}`` per line,
    one value per bucket [lo, hi) of token indices, drawn at the bucket's geometric centre; series with
    the same optional ``"group"`` (a checkpoint) share a colour."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[str, int] = {}
    styles = ["o-", "s--", "^:", "d-.", "v-", "x--"]
    for s in series:
        # one colour per checkpoint ("group"), one line style per memory length within it
        g = s.get("group", s["name"])
        k = groups.setdefault(g, len(groups))
        n = sum(1 for t in series[: series.index(s)] if t.get("group", t["name"]) == g)
        x = [(max(lo, 1) * hi) ** 0.5 for lo, hi in zip(s["lo"], s["hi"])]
        ax.plot(x, s["bits"], styles[n % len(styles)], color=colors[k % len(colors)], label=s["name"], ms=4)
    ax.set_xscale("log")
    return _finish_nll_plot(
        fig,
        ax,
        "position of the predicted token in its file (tokens, log-spaced buckets)",
        metric,
        sample_rate,
        title,
        out_path,
    )
