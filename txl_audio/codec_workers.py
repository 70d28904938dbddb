"""The codec on several CPU cores: each batch's groups split between worker processes.

A group (one file's chunks, or a run of a long file's) is its own range code, and the portable model
computes every row of a batch independently in integers, so coding a batch's groups in two processes
gives the very bytes that coding them in one does (tests/test_codec_workers.py). Processes, not
threads: a decoding step is hundreds of small tensor operations and coder calls that hold the GIL, so
two threads decode at 1.2x one thread's speed where two processes reach 2.3x (speech16, 236 chunks of
2,048 samples on this project's 2-core machine: one process 0.52x real time; two processes of 118 rows
each 0.59x each, 1.18x together; ``python benchmarks/codec_speed.py --models speech16 --batch 236
--chunk 2048 --workers 1 2``, random weights).

The workers are forked from the process that has the model loaded (no second import of torch, no
second copy of the weights to send); each runs torch on one thread. Where ``fork`` is not available
(Windows, and macOS where it is unsafe) the codec runs in one process. A worker that dies (killed, out
of memory) ends the command with one line, never a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from txl_audio.errors import TxlAudioError

ROWS_PER_WORKER = 128  # a worker's batch: 118-128 rows decode fastest on a 2-core machine (L2/L3)
MIN_SAMPLES = 20 * 16_000  # below ~20 s of audio, forking workers costs more than it saves

_CM: Any = None  # the worker's coding model (inherited through fork)
_PROGRESS: Any = None  # the queue a worker reports coded samples on
_PENDING = [0, 0.0]  # samples not yet reported, time of the last report


class WorkerError(TxlAudioError):
    """A worker process died."""


class BatchError(Exception):
    """Coding a batch failed: ``error`` (what the coder raised, in a worker or here) and the batch's
    ``tag``, so the caller can name its files."""

    def __init__(self, tag: Any, error: BaseException) -> None:
        super().__init__(str(error))
        self.tag, self.error = tag, error


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def choose_workers(requested: int | None, device_type: str, samples: int | None) -> int:
    """How many processes code: ``requested`` if given (1 on a GPU, or where fork is missing), else
    on the CPU one per usable core when there are at least MIN_SAMPLES samples (or an unknown number,
    from a pipe), else 1."""
    if device_type != "cpu" or not can_fork():
        return 1
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--workers must be at least 1, got {requested}")
        return requested
    if samples is not None and samples < MIN_SAMPLES:
        return 1
    return usable_cores()


def split_rows(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the items (with ``sizes`` rows each) into at most ``parts`` pieces of
    about equal rows: [(start, stop), ...], none empty."""
    parts = max(1, min(parts, len(sizes)))
    total = sum(sizes)
    out, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        acc += n
        left_items, left_parts = len(sizes) - i - 1, parts - len(out) - 1
        if left_parts and (acc * parts >= total * (len(out) + 1) or left_items == left_parts):
            out.append((start, i + 1))
            start = i + 1
    out.append((start, len(sizes)))
    return [r for r in out if r[1] > r[0]]


def _run(cm: Any, kind: str, groups: list, on_step: Callable | None) -> list:
    from txl_audio.coding import decode_groups, encode_groups

    fn = encode_groups if kind == "encode" else decode_groups
    return fn(cm.portable, groups, cm.start, on_step)


def _init(progress: Any) -> None:
    import torch

    global _PROGRESS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    torch.set_num_threads(1)
    _PROGRESS = progress


def _report(n: int) -> None:
    _PENDING[0] += n
    now = time.monotonic()
    if now - _PENDING[1] > 0.25:
        _PROGRESS.put(_PENDING[0])
        _PENDING[0], _PENDING[1] = 0, now


def _task(kind: str, groups: list) -> tuple[list, int]:
    out = _run(_CM, kind, groups, _report)
    left, _PENDING[0] = _PENDING[0], 0
    return out, left


class Coder:
    """Codes batches of groups, in one process or split between worker processes; results come back in
    the order the batches went in. Use as a context manager (the workers stop at its end)."""

    def __init__(self, cm: Any, workers: int, on_step: Callable[[int], None] | None = None) -> None:
        self.cm, self.workers, self.on_step = cm, workers, on_step
        self.pool: ProcessPoolExecutor | None = None
        self.progress = None

    def __enter__(self) -> Coder:
        if self.workers > 1:
            global _CM
            _CM = self.cm  # the forked workers inherit it
            ctx = mp.get_context("fork")
            self.progress = ctx.Queue()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                            initargs=(self.progress,))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        global _CM
        if self.pool is not None:
            if exc_type is not None:  # stop the workers now, whatever they are doing
                for p in list(getattr(self.pool, "_processes", {}).values()):
                    p.terminate()
                self.pool.shutdown(wait=False, cancel_futures=True)
            else:
                self.pool.shutdown(wait=True)
            self.pool = None
            _CM = None

    def _drain(self, timeout: float = 0.0) -> None:
        try:
            while True:
                n = self.progress.get(timeout=timeout) if timeout else self.progress.get_nowait()
                if self.on_step is not None:
                    self.on_step(n)
                timeout = 0.0
        except (queue_mod.Empty, OSError, ValueError):
            pass

    def run(self, kind: str, batches: Iterable[tuple[Any, list, list[int]]]) -> Iterator[tuple[Any, list]]:
        """``batches``: (tag, groups, rows of each group); yields (tag, one result per group): words
        (``kind`` "encode", groups of chunks) or chunks (``kind`` "decode", groups of (words,
        lengths))."""
        if self.pool is None:
            for tag, groups, _ in batches:
                try:
                    result = _run(self.cm, kind, groups, self.on_step)
                except Exception as e:
                    raise BatchError(tag, e) from e
                yield tag, result
            return
        window: deque = deque()  # (tag, futures) in order; two batches in flight keep every worker busy
        it = iter(batches)
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < 2:
                    try:
                        tag, groups, rows = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    futs = [self.pool.submit(_task, kind, groups[a:b])
                            for a, b in split_rows(rows, self.workers)]
                    window.append((tag, futs))
                if not window:
                    break
                tag, futs = window[0]
                while not all(f.done() for f in futs):
                    wait(futs, timeout=0.2, return_when=FIRST_COMPLETED)
                    self._drain()
                window.popleft()
                result: list = []
                for f in futs:
                    try:
                        part, left = f.result()
                    except BrokenProcessPool:
                        raise
                    except Exception as e:
                        raise BatchError(tag, e) from e
                    result += part
                    if self.on_step is not None and left:
                        self.on_step(left)
                yield tag, result
            self._drain(0.05)
        except BrokenProcessPool:
            raise WorkerError("a codec worker process died (killed, or out of memory): nothing was written "
                              "for the unfinished files; try --workers 1") from None


__all__ = ["BatchError", "Coder", "WorkerError", "choose_workers", "split_rows", "usable_cores"]
