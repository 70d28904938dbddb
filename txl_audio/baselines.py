"""Baselines beside the model's numbers: general-purpose compressors' code length on the very same
tokens, and bootstrap intervals over files."""

from __future__ import annotations

import bz2
import csv
import lzma
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from txl_audio.tokenizers import token_dtype

# ----------------------------------------------------------------------------------------------
# compressor baselines


def token_bytes(tokens: np.ndarray, vocab_size: int) -> bytes:
    """Tokens as the smallest little-endian unsigned integers that hold the vocabulary (the corpus's
    on-disk format): the byte string the compressors see."""
    dtype = token_dtype(vocab_size).newbyteorder("<")
    return np.ascontiguousarray(tokens, dtype=dtype).tobytes()


def compressed_sizes(data: bytes) -> tuple[int, int]:
    """(xz -9e, bzip2 -9) sizes in bytes of ``data``, container headers included (a real code length)."""
    xz = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    return len(xz), len(bz2.compress(data, compresslevel=9))


def compressor_baselines(
    docs: Sequence[np.ndarray], vocab_size: int, workers: int | None = None
) -> list[tuple[int, int]]:
    """Per file: compressed sizes of exactly the tokens the model predicts (``doc[1:]``)."""
    payloads = [token_bytes(d[1:], vocab_size) for d in docs]
    # lzma and bz2 release the GIL while compressing, so threads use every core
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(compressed_sizes, payloads))


# ----------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(
    values: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval over items (files) of their mean, or of the weighted mean
    ``sum(values * weights) / sum(weights)`` when weights are given. Seeded: same input, same interval."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (n_boot, n) resampled files
    means = (values[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-300)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def read_per_file(path) -> dict[str, tuple[int, float]]:
    """An evaluation's ``per_file.csv`` -> {file: (predicted tokens, bits per token)}; the model's
    column is ``bits_per_sample`` (audio), ``bits_per_byte`` or ``bits_per_word`` (text)."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        col = next((c for c in rows.fieldnames or [] if c.startswith("bits_per_")), None)
        if col is None:
            raise ValueError(f"{path}: no bits_per_* column; is it an evaluation's per_file.csv?")
        return {r["file"]: (int(r["tokens"]), float(r[col])) for r in rows}


def paired_difference(
    a: dict[str, tuple[int, float]], b: dict[str, tuple[int, float]], min_files: int = 10, seed: int = 0
) -> tuple[float, float, float] | None:
    """Bits per token of model ``b`` minus model ``a`` over the files both scored (``read_per_file``
    dicts), token-weighted so it equals the difference of the two totals, with a 95% bootstrap interval
    over files. The files are paired (the same clip under both models), so the interval is far
    tighter than either model's own. None with fewer than ``min_files`` files (one text stream)."""
    files = [f for f in a if f in b and a[f][0] > 0 and math.isfinite(a[f][1]) and math.isfinite(b[f][1])]
    if len(files) < min_files:
        return None
    tokens = np.array([a[f][0] for f in files], dtype=np.float64)
    diff = np.array([b[f][1] - a[f][1] for f in files])
    lo, hi = bootstrap_ci(diff, seed=seed, weights=tokens)
    return float((diff * tokens).sum() / tokens.sum()), lo, hi
