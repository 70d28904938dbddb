"""Baselines beside the model's numbers, each coding the very samples the model predicts, and bootstrap
intervals over files.

- 8-bit (and text) tokens: xz -9e and bzip2 -9 on the tokens as bytes.
- 16-bit PCM (:func:`pcm16_baselines`): FLAC at its highest compression level (the ``flac`` command,
  ``-8 --no-padding --no-seektable``, when installed; else libFLAC through libsndfile at level 8 with
  the metadata blocks other than STREAMINFO not counted), xz -9e on the raw int16 bytes, and a
  classical column: order-32 linear prediction with coefficients fitted on past samples only and a
  sample-by-sample adaptive Laplace scale (no side information: :func:`lpc_laplace_bits`).
"""

from __future__ import annotations

import bz2
import csv
import io
import lzma
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

from txl_audio.audio import require, sf
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
# 16-bit PCM

PCM16_OFFSET = 32_768  # tokens of the pcm16 (linear16) tokenizer: int16 sample + 32,768
FLAC_ARGS = ("-8", "--no-padding", "--no-seektable", "--silent", "--force-raw-format", "--endian=little",
             "--sign=signed", "--channels=1", "--bps=16")


def pcm16_samples(tokens: np.ndarray) -> np.ndarray:
    """pcm16 tokens -> int16 samples (exact)."""
    return (np.asarray(tokens, dtype=np.int64) - PCM16_OFFSET).astype(np.int16)


def flac_encoder() -> str:
    """Which FLAC encoder :func:`flac_bytes` uses: the ``flac`` command (its version) or libsndfile."""
    exe = shutil.which("flac")
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        return f"{out or 'flac'} -8 --no-padding --no-seektable"
    return "libFLAC via libsndfile, level 8, metadata other than STREAMINFO not counted"


def _flac_metadata_bytes(data: bytes) -> int:
    """Bytes of a FLAC file's metadata blocks other than STREAMINFO (block headers included)."""
    pos, extra = 4, 0  # after "fLaC"
    while pos + 4 <= len(data):
        last, kind = data[pos] & 0x80, data[pos] & 0x7F
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if kind != 0:
            extra += 4 + length
        pos += 4 + length
        if last:
            break
    return extra


def flac_bytes(samples: np.ndarray, sample_rate: int = 16_000) -> int:
    """Size in bytes of ``samples`` (int16) as FLAC at the highest compression level, without padding
    or seek table (on a 1-second clip FLAC's default 8 KB of padding alone would cost 4 bits per
    sample)."""
    raw = np.ascontiguousarray(samples, dtype="<i2").tobytes()
    exe = shutil.which("flac")
    if exe:
        out = subprocess.run([exe, *FLAC_ARGS, f"--sample-rate={sample_rate}", "-c", "-"], input=raw,
                             capture_output=True, check=True)
        return len(out.stdout)
    buf = io.BytesIO()
    soundfile = require(sf, "soundfile")
    soundfile.write(buf, np.asarray(samples, dtype=np.int16), sample_rate, format="FLAC", subtype="PCM_16",
                    compression_level=1.0)
    data = buf.getvalue()
    return len(data) - _flac_metadata_bytes(data)


LPC_ORDER, LPC_BLOCK, LPC_WINDOW = 32, 64, 512


def lpc_predictions(samples: np.ndarray, order: int = LPC_ORDER, block: int = LPC_BLOCK,
                    window: int = LPC_WINDOW) -> np.ndarray:
    """The backward-adaptive linear prediction of every sample (float, before rounding): the
    coefficients for samples s .. s + block - 1 (s a multiple of ``block``) are fitted by the
    autocorrelation method (Hann-windowed, Levinson-Durbin) on the ``window`` samples before s, of
    order min(order, available / 4); order 1 with coefficient 1 when that is 0 or the past is silent;
    no prediction (0) in the first block."""
    x = np.asarray(samples, dtype=np.float64)
    n = len(x)
    pred = np.zeros(n)
    for s in range(block, n, block):  # the first block has no past: 0
        e = min(n, s + block)
        past = x[max(0, s - window) : s]
        p = min(order, len(past) // 4)
        if p >= 1 and np.abs(past).max() > 0:
            w = past * np.hanning(len(past) + 2)[1:-1]
            r = np.correlate(w, w, mode="full")[len(w) - 1 : len(w) + p]  # lags 0 .. p
            r[0] = r[0] * (1.0 + 1e-9) + 1e-9
            a = solve_toeplitz(r[:p], r[1 : p + 1])  # x[t] ~ sum a_i x[t-i]
        else:
            a, p = np.array([1.0]), 1
        lo = max(0, s - p)
        seg = x[lo:e]
        y = lfilter(np.concatenate([[0.0], a]), [1.0], seg)  # y[t] = sum_i a_i seg[t-i]
        pred[s:e] = y[s - lo :]
    return pred


def lpc_laplace_bits(samples: np.ndarray, order: int = LPC_ORDER, block: int = LPC_BLOCK,
                     window: int = LPC_WINDOW, alpha: float = 1 / 16) -> float:
    """Code length in bits of int16 ``samples`` under the backward-adaptive linear prediction of
    :func:`lpc_predictions` and a discretized Laplace distribution of its residual, whose scale for
    each sample is an exponential average of the past residuals' magnitudes. Both use past samples
    only, so a decoder can follow: no side information. A classical lossless coder's structure (FLAC,
    Shorten, MPEG-4 ALS predict and code a residual) without the side information."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 0:
        return 0.0
    resid = x - np.clip(np.round(lpc_predictions(x, order, block, window)), -32768, 32767)
    mag = np.abs(resid)
    # scale for sample t: the average magnitude of the residuals before it (a start of 16)
    avg = lfilter([alpha], [1.0, -(1.0 - alpha)], mag, zi=[(1.0 - alpha) * 16.0])[0]
    b = np.maximum(np.concatenate([[16.0], avg[:-1]]), 0.3)  # Laplace scale, in sample units
    # P(e) = F(e + 1/2) - F(e - 1/2) for the zero-mean Laplace CDF F with scale b
    p0 = -np.expm1(-0.5 / b)
    log_pm = np.log(0.5) - (mag - 0.5) / b + np.log(-np.expm1(-1.0 / b))
    log_p = np.where(mag == 0, np.log(p0), log_pm)
    return float(-log_p.sum() / math.log(2))


def pcm16_baselines(docs: Sequence[np.ndarray], sample_rate: int = 16_000,
                    workers: int | None = None) -> list[dict[str, float]]:
    """Per file, bits for exactly the samples the model predicts (``doc[1:]`` of pcm16 tokens): FLAC
    -8, xz -9e on the raw int16 bytes, and the backward-adaptive order-32 linear prediction."""

    def one(doc: np.ndarray) -> dict[str, float]:
        x = pcm16_samples(doc[1:])
        xz = lzma.compress(np.ascontiguousarray(x, dtype="<i2").tobytes(), format=lzma.FORMAT_XZ,
                           preset=9 | lzma.PRESET_EXTREME)
        return {"flac": 8.0 * flac_bytes(x, sample_rate), "xz": 8.0 * len(xz), "lpc": lpc_laplace_bits(x)}

    # lzma, the flac process and numpy's filters leave the GIL: threads use every core
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(one, docs))


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
