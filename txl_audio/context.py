"""How much a model's predictions gain from longer context.

Two views of the same question, both with each file evaluated from an empty memory:

- NLL against the attention span at evaluation: the model re-evaluated with memory lengths 0, 256, 1k,
  4k, ... (a prediction then attends directly to up to ``mem_len + tgt_len`` previous tokens of its file).
  A relative-position (or rotary) model may use a longer memory than it was trained with; a model trained with
  ``mem_len = 0`` is evaluated the same way (does it generalise to memory it never saw?). The
  absolute-position baseline has no memory and learned only ``tgt_len`` positions: it is evaluated at its
  own context once and shown as one point (a flat line).
- NLL against the position of the predicted sample in its file, in log-spaced buckets (0-10 ms,
  10-30 ms, 30-100 ms, ..., seconds): the first milliseconds are hard for any model; a model that uses
  context keeps improving later into the file.

The effective-context figure, in the spirit of the paper's relative effective context length (RECL,
Dai et al. 2019 section 4.2): the shortest evaluated span such that no longer evaluated span lowers the
loss by 1% of its loss or more.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from txl_audio.evaluate import evaluate_tokens
from txl_audio.model import TransformerXL
from txl_audio.plots import plot_nll_vs_context, plot_nll_vs_position
from txl_audio.tokenizers import metric_name

DEFAULT_MEM_LENS = (0, 256, 1024, 4096)
GAIN_THRESHOLD = 0.01


def position_edges(max_len: int, sample_rate: int | None = None) -> list[int]:
    """Bucket edges over the predicted token's index in its file (1 = the first predicted token), log
    spaced in a 1-3-10 pattern: milliseconds for audio (0-10 ms, 10-30 ms, ...), tokens otherwise.
    The last edge is >= ``max_len``, so every prediction (index <= max_len - 1) falls in a bucket."""
    per_unit = sample_rate / 1000 if sample_rate else 1.0  # tokens per ms, or per token
    edges, k = [1], 0
    while edges[-1] < max_len:  # the last predicted index is max_len - 1
        step = 10 * (10 ** (k // 2)) * (3 if k % 2 else 1)  # 10, 30, 100, 300, ...
        edges.append(max(int(round(step * per_unit)), edges[-1] + 1))
        k += 1
    return edges


def bucket_label(lo: int, hi: int, sample_rate: int | None) -> str:
    """'10-30 ms', '1-3 s' for audio; '10-30' (token index) otherwise."""
    if not sample_rate:
        return f"{lo if lo > 1 else 0}-{hi}"

    def fmt(n: int) -> str:
        ms = n * 1000 / sample_rate
        return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"

    a = "0" if lo <= 1 else fmt(lo)
    b = fmt(hi)
    if a.endswith(" s") and b.endswith(" s") or a.endswith(" ms") and b.endswith(" ms"):
        a = a.rsplit(" ", 1)[0]
    return f"{a}-{b}"


@dataclass
class SpanPoint:
    mem_len: int
    tgt_len: int
    tokens: int
    bits: float  # per predicted token, over all tokens
    position_bits: list[float]  # per position bucket (nan where empty)
    position_tokens: list[int]
    cmem_len: int = 0  # compressed slots (a compressive model)
    cmem_ratio: int = 1  # positions summarised by each

    @property
    def span(self) -> int:
        """The longest reach of a prediction: memory plus segment, plus what the compressed memory
        summarises (cmem_len x cmem_ratio positions) for a compressive model."""
        return self.mem_len + self.tgt_len + self.cmem_len * self.cmem_ratio


@dataclass
class ContextCurve:
    """One checkpoint's loss against memory length (``mem_lens``, ``bits``; each :class:`SpanPoint`
    also splits it by position in the file, over the buckets ``edges``), and notes on what was left
    out. :func:`analyse_context` makes it; ``txl-audio context`` writes and plots it."""

    name: str  # the checkpoint as given on the command line
    attention: str  # "relative", "rotary" or "absolute"
    trained_mem_len: int
    trained_tgt_len: int
    edges: list[int]
    points: list[SpanPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fixed_context(self) -> bool:
        return self.attention == "absolute"

    @property
    def mem_lens(self) -> list[int]:
        """The memory lengths evaluated, in order."""
        return [p.mem_len for p in self.points]

    @property
    def bits(self) -> list[float]:
        """Bits per predicted token (per sample for audio) over all files, one per memory length."""
        return [p.bits for p in self.points]

    def effective_context(self, threshold: float = GAIN_THRESHOLD) -> tuple[SpanPoint | None, bool]:
        """(shortest point beyond which every longer span gains < threshold x its loss, reached?).
        ``reached`` is False when the longest evaluated span still gained: the figure is then a lower
        bound. (None, False) with fewer than two points."""
        pts = sorted(self.points, key=lambda p: p.span)
        if len(pts) < 2:
            return None, False
        for i, p in enumerate(pts):
            if all(p.bits - q.bits < threshold * p.bits for q in pts[i + 1 :]):
                return p, i < len(pts) - 1
        return pts[-1], False  # pragma: no cover (the last point always qualifies)


def analyse_context(
    model: TransformerXL,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    name: str = "model",
    mem_lens: Sequence[int] = DEFAULT_MEM_LENS,
    tgt_len: int | None = None,
    clamp_len: int | None = None,
    sample_rate: int | None = None,
    unit: str = "sample",
    batch_size: int = 8,
    dtype: str = "fp32",
    progress: bool = True,
    cmem_len: int | None = None,
) -> ContextCurve:
    """Evaluate ``docs`` per file at each memory length; the loss by span and by position in the file.

    Memory lengths past the longest file add nothing in per-file evaluation (every token already sees
    its whole file), so evaluation stops at the first one that covers every file; on a GPU, a memory
    length that runs out of memory ends the sweep with a note ("up to what fits").

    A compressive model keeps its compressed memory (``cmem_len`` slots, the trained number by default)
    at every memory length that is a multiple of its ratio (others are evaluated without it, with a
    note), and its span counts the compressed reach."""
    cfg = model.config
    max_len = max(len(d) for d in docs)
    edges = position_edges(max_len, sample_rate)
    curve = ContextCurve(name, cfg.attention, cfg.mem_len, cfg.tgt_len, edges)
    T = tgt_len or cfg.tgt_len
    if curve.fixed_context:
        T = min(T, cfg.tgt_len)
        mem_lens = [0]
        curve.notes.append(
            f"absolute-position baseline: no memory, evaluated at its own context ({T} tokens) only"
        )
    C = (cfg.cmem_len if cmem_len is None else int(cmem_len)) if cfg.cmem_len else 0
    for m in sorted(set(int(m) for m in mem_lens)):
        cm = C if C and m % cfg.cmem_ratio == 0 and T % cfg.cmem_ratio == 0 else 0
        if C and not cm:
            curve.notes.append(f"mem_len {m}: not a multiple of cmem_ratio {cfg.cmem_ratio}, evaluated "
                               "without the compressed memory")
        try:
            res = evaluate_tokens(
                model,
                docs,
                names,
                unit=unit,
                mem_len=m,
                tgt_len=T,
                clamp_len=clamp_len if cfg.attention == "relative" else None,  # the others have no clamp
                cmem_len=cm,
                batch_size=batch_size,
                dtype=dtype,
                baselines=False,
                position_edges=edges,
                sample_rate=sample_rate,
                progress=progress,
            )
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            curve.notes.append(f"mem_len {m} did not fit in GPU memory at batch size {batch_size}; stopped")
            break
        pb = [s / n / math.log(2) if n else math.nan for s, n in zip(res.position_nll, res.position_tokens)]
        curve.points.append(SpanPoint(m, T, res.tokens, res.bits_per_token, pb, res.position_tokens, cm,
                                      cfg.cmem_ratio))
        if m >= max_len - 2 or T >= max_len - 1:  # every prediction already sees its whole file
            rest = [x for x in mem_lens if x > m]
            if rest:
                curve.notes.append(
                    f"mem_len {m} already covers the longest file ({max_len} tokens): "
                    f"{', '.join(map(str, rest))} would give the same numbers, not evaluated"
                )
            break
    return curve


def summary_text(curves: Sequence[ContextCurve], unit: str, sample_rate: int | None,
                 levels: int | None = None) -> str:
    metric = metric_name(unit, levels)

    def span_str(n: int) -> str:
        return f"{n} tokens" + (f" ({n * 1000 / sample_rate:.0f} ms)" if sample_rate else "")

    lines = []
    for c in curves:
        lines.append(
            f"{c.name}: {c.attention} attention, trained with tgt_len {c.trained_tgt_len}, "
            f"mem_len {c.trained_mem_len}"
        )
        for p in sorted(c.points, key=lambda p: p.span):
            lines.append(
                f"  mem_len {p.mem_len:>6} tgt_len {p.tgt_len:>5}"
                + (f" cmem_len {p.cmem_len} x {p.cmem_ratio}" if p.cmem_len else "")
                + f" (span up to {p.span:>6}): "
                f"{p.bits:.4f} {metric} over {p.tokens:,} tokens"
            )
        eff, reached = c.effective_context()
        if c.fixed_context:
            lines.append(f"  fixed context of {span_str(c.points[0].span)}: no effective-context figure")
        elif eff is None:
            lines.append("  one span evaluated: no effective-context figure (give several --mem-lens)")
        elif reached:
            lines.append(
                f"  effective context: {span_str(eff.span)} (mem_len {eff.mem_len}); no longer span gains "
                f"{GAIN_THRESHOLD:.0%} of the loss"
            )
        else:
            lines.append(
                f"  effective context: at least {span_str(eff.span)} (mem_len {eff.mem_len}): "
                "the longest span evaluated still gained; try longer --mem-lens"
            )
        lines += [f"  note: {n}" for n in c.notes]
    return "\n".join(lines)


def write_context(
    curves: Sequence[ContextCurve], out_dir: str | Path, unit: str = "sample", sample_rate: int | None = None,
    levels: int | None = None,
) -> dict[str, Path]:
    """context_span.csv, context_position.csv, summary.txt and the two PNG plots in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        k: out / v
        for k, v in (
            ("span_csv", "context_span.csv"),
            ("position_csv", "context_position.csv"),
            ("summary", "summary.txt"),
            ("span_png", "nll_vs_context.png"),
            ("position_png", "nll_vs_position.png"),
        )
    }
    with open(paths["span_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "attention", "mem_len", "tgt_len", "span", "tokens", "bits_per_token",
                    "cmem_len", "cmem_ratio"])
        for c in curves:
            for p in c.points:
                w.writerow([c.name, c.attention, p.mem_len, p.tgt_len, p.span, p.tokens, f"{p.bits:.6f}",
                            p.cmem_len, p.cmem_ratio])
    with open(paths["position_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["checkpoint", "mem_len", "bucket", "first_index", "end_index", "tokens", "bits_per_token"]
        )
        for c in curves:
            for p in c.points:
                for k, (bits, n) in enumerate(zip(p.position_bits, p.position_tokens)):
                    lo, hi = c.edges[k], c.edges[k + 1]
                    w.writerow(
                        [
                            c.name,
                            p.mem_len,
                            bucket_label(lo, hi, sample_rate),
                            lo,
                            hi,
                            n,
                            "" if not n else f"{bits:.6f}",
                        ]
                    )
    paths["summary"].write_text(summary_text(curves, unit, sample_rate, levels) + "\n")
    metric = metric_name(unit, levels)
    plot_nll_vs_context(
        [
            {
                "name": c.name,
                "spans": [p.span for p in c.points],
                "bits": [p.bits for p in c.points],
                "fixed": c.fixed_context,
            }
            for c in curves
        ],
        paths["span_png"],
        metric=metric,
        sample_rate=sample_rate,
    )
    series: list[dict[str, Any]] = []
    for c in curves:
        for p in c.points:
            keep = [k for k, n in enumerate(p.position_tokens) if n]
            series.append(
                {
                    "name": f"{c.name} mem_len {p.mem_len}"
                    if len(c.points) > 1 or len(curves) == 1
                    else c.name,
                    "group": c.name,
                    "lo": [c.edges[k] for k in keep],
                    "hi": [c.edges[k + 1] for k in keep],
                    "bits": [p.position_bits[k] for k in keep],
                }
            )
    plot_nll_vs_position(series, paths["position_png"], metric=metric, sample_rate=sample_rate)
    return paths
