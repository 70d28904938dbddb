"""What a training run reports: ``metrics.jsonl`` (one JSON record per log or validation step), the
curves PNG, TensorBoard (optional), the progress bar and messages. Rank 0 only: on the other ranks
every method does nothing.

A record: ``step``, ``split`` ("train" or "valid"), ``loss_nats`` and its report in the tokenizer's
unit (``bits`` per sample or character, ``ppl`` for words), ``unit``, ``tokens``, ``time`` (training
seconds); train records add ``tokens_per_s``, ``lr``, ``grad_norm`` and ``bad_steps``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from txl_audio.plots import plot_training_curves, read_metrics

LN2 = math.log(2.0)


def loss_report(loss_nats: float, unit: str) -> dict[str, float]:
    """How a loss is reported: bits per sample/character, or perplexity for words."""
    if unit == "word":
        return {"ppl": math.exp(min(loss_nats, 700.0))}
    return {"bits": loss_nats / LN2}


class TrainingLog:
    """metrics.jsonl, curves.png, TensorBoard and messages of a run in ``out_dir``."""

    def __init__(self, out_dir: Path, unit: str, enabled: bool,
                 log: Callable[[str], None] | None = None) -> None:
        self.out, self.unit, self.enabled = out_dir, unit, enabled
        self.path = out_dir / "metrics.jsonl"
        self._log = log
        self.tb = None

    def message(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._log is not None:
            self._log(msg)
        else:
            tqdm.write(msg)

    def open_tensorboard(self) -> None:
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard is not a dependency
        except ImportError:
            self.message("warning: train.tensorboard=true but tensorboard is not installed; skipping it")
            return
        self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def plot(self) -> None:
        if self.enabled:
            plot_training_curves(self.path, self.out / "curves.png")

    def truncate(self, step: int) -> None:
        """Drop the records of steps after ``step``: a run resumed from that checkpoint runs them again
        (a half-written line from a kill goes too)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class TrainWindow:
    """The training steps since the last train record: their token-weighted mean loss and the
    throughput over training time only (validation and checkpoints left out)."""

    def __init__(self) -> None:
        self.reset(time.time())

    def reset(self, now: float) -> None:
        self.loss, self.count, self.tokens, self.t, self.paused = 0.0, 0, 0, now, 0.0

    def add(self, loss: float, count: int, tokens: int) -> None:
        self.tokens += tokens
        if count:
            self.loss += loss * count
            self.count += count

    @property
    def mean(self) -> float:
        return self.loss / self.count if self.count else float("nan")

    def tokens_per_s(self, now: float) -> float:
        return self.tokens / max(now - self.t - self.paused, 1e-9)


class ProgressBar:
    """A tqdm bar over steps showing loss, its report, tokens/s and the time left."""

    def __init__(self, enabled: bool, total: int, initial: int, unit: str) -> None:
        self.unit = unit
        self.bar = (tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)
                    if enabled else None)

    def show(self, mean: float, tokens_per_s: float, seconds_left: float) -> None:
        if self.bar is None:
            return
        shown = {"loss": f"{mean:.3f}", **{k: f"{v:.3f}" for k, v in loss_report(mean, self.unit).items()}}
        self.bar.set_postfix(**shown, tok_s=f"{tokens_per_s:,.0f}", left=f"{seconds_left / 60:.1f}m",
                             refresh=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
