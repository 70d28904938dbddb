"""Baselines beside the model's numbers, and bootstrap intervals over files.

- 8-bit (and text) tokens: xz -9e and bzip2 -9 on exactly the tokens the model predicts, as bytes.
- 16-bit PCM (:func:`pcm16_baselines`): every coder codes the whole file as the user has it (all its
  samples, each file alone, headers included where a coder writes them): FLAC at its highest level
  (the ``flac`` command, ``-8 --no-padding --no-seektable``, when installed; else libFLAC through
  libsndfile at level 8 with the metadata blocks other than STREAMINFO not counted), WavPack's
  highest mode (``wavpack -hh -x6``, where Debian's ``wavpack`` is installed), Sac (a state-of-the-art
  lossless coder, where a binary is given: ``TXL_SAC``), xz -9e on the raw int16 bytes, and two
  classical columns without side information: order-32 linear prediction with coefficients fitted on
  past samples only and an adaptive Laplace scale (:func:`lpc_laplace_bits`), and the sample-adaptive
  cascade the 16-bit heads are centred on with an adaptive residual coder (:func:`cascade_bits`).
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
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numba import njit
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

from txl_audio.audio import require, sf
from txl_audio.model.prior import CascadeConfig, cascade_predict
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


def wavpack_bytes(samples: np.ndarray, sample_rate: int = 16_000) -> int | None:
    """Size in bytes of ``samples`` (int16) as a WavPack file at its highest compression
    (``wavpack -hh -x6``), or None without the ``wavpack`` command (Debian: apt-get install wavpack)."""
    exe = shutil.which("wavpack")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        wav, wv = Path(d) / "x.wav", Path(d) / "x.wv"
        require(sf, "soundfile").write(wav, np.asarray(samples, dtype=np.int16), sample_rate,
                                       subtype="PCM_16")
        subprocess.run([exe, "-hh", "-x6", "-q", "-y", str(wav), "-o", str(wv)], check=True,
                       capture_output=True)
        return wv.stat().st_size


def wavpack_encoder() -> str | None:
    exe = shutil.which("wavpack")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return f"{out[0] if out else 'wavpack'} -hh -x6"


SAC_ENV = "TXL_SAC"  # path of a Sac binary (github.com/slmdev/sac, built by the user): adds its column


def sac_binary(path: str | os.PathLike | None = None) -> str | None:
    """The Sac binary to use: ``path``, else $TXL_SAC, else None. A path that is not an executable file
    is an error naming it."""
    p = path if path is not None else os.environ.get(SAC_ENV) or None
    if p is None:
        return None
    p = str(p)
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        raise FileNotFoundError(f"Sac binary {p!r} (from {'--sac' if path is not None else SAC_ENV}) is not "
                                "an executable file; build it from github.com/slmdev/sac (docs/results.md)")
    return p


def sac_bytes(samples: np.ndarray, exe: str, mode: str = "normal", sample_rate: int = 16_000) -> int:
    """Size in bytes of ``samples`` (int16) as a Sac file (``sac --encode --MODE``; headers included)."""
    with tempfile.TemporaryDirectory() as d:
        wav, out = Path(d) / "x.wav", Path(d) / "x.sac"
        require(sf, "soundfile").write(wav, np.asarray(samples, dtype=np.int16), sample_rate,
                                       subtype="PCM_16")
        r = subprocess.run([exe, "--encode", f"--{mode}", str(wav), str(out)], capture_output=True, text=True)
        if r.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{exe} --encode --{mode} failed (exit {r.returncode}): "
                               f"{r.stderr.strip()[-300:]}")
        return out.stat().st_size


# ---- the cascade's column: the cascade's prediction and scale, and an adaptive residual coder ----

CODER_CONTEXTS = 40  # half octaves of the scale, from 1/4 level up
CODER_BINS = 64  # |residual| 0 .. 15 exactly, then 4 bins per octave up to 65,535
CODER_PRIOR = 256.0  # counts each context's table starts with, shaped as a Laplace of its scale
CODER_LIMIT = 65_536.0  # a context's counts halve past this


@njit(cache=True)
def _bin_of(u):
    """|residual| -> (bin, its first value, its width)."""
    if u < 16:
        return u, u, 1
    nb = 0
    v = u
    while v >= 8:
        v >>= 1
        nb += 1
    return 16 + (nb - 2) * 4 + (v - 4), v << nb, 1 << nb


@njit(cache=True)
def _coder_tables():
    """The counts every file starts with: per context c (scale 2 ** ((c + 0.5) / 2 - 2) levels) the
    probability of each bin of |residual| under a discretized Laplace of that scale, times
    CODER_PRIOR, plus a floor."""
    T = np.zeros((CODER_CONTEXTS, CODER_BINS))
    for c in range(CODER_CONTEXTS):
        b = 2.0 ** ((c + 0.5) / 2.0 - 2.0)
        for u in range(65_536):  # exact bin masses, summed over their values
            z, lo, w = _bin_of(u)
            if u == 0:
                pm = -math.expm1(-0.5 / b)
            else:
                pm = math.exp(-(u - 0.5) / b) * -math.expm1(-1.0 / b)
            T[c, z] += pm
        for z in range(CODER_BINS):
            T[c, z] = CODER_PRIOR * T[c, z] + 0.02
    return T


@njit(cache=True, nogil=True)
def _residual_code_length(x, pred, scale, T0):
    """Ideal code length in bits of x under the cascade: each residual x - pred coded with the
    adaptive counts of its scale's context (its bin), the offset in the bin and the sign at one bit
    each. The same state a decoder has: only past residuals."""
    T = T0.copy()
    tot = np.zeros(CODER_CONTEXTS)
    for c in range(CODER_CONTEXTS):
        s = 0.0
        for z in range(CODER_BINS):
            s += T[c, z]
        tot[c] = s
    bits = 0.0
    for t in range(x.shape[0]):
        e = x[t] - pred[t]
        u = e if e >= 0 else -e
        a = scale[t] / 16.0  # levels
        c = int(2.0 * (math.log2(max(a, 0.25)) + 2.0))
        c = min(max(c, 0), CODER_CONTEXTS - 1)
        z, lo, w = _bin_of(u)
        bits += math.log2(tot[c] / T[c, z]) + math.log2(w) + (1.0 if u != 0 else 0.0)
        T[c, z] += 1.0
        tot[c] += 1.0
        if tot[c] > CODER_LIMIT:
            s = 0.0
            for k in range(CODER_BINS):
                T[c, k] *= 0.5
                s += T[c, k]
            tot[c] = s
    return bits


_TABLES: list[np.ndarray] = []


def cascade_bits(samples: np.ndarray, config: CascadeConfig | None = None) -> float:
    """Code length in bits of int16 ``samples`` (a whole file: the first sample is coded too, from
    no past) under the cascade (:func:`txl_audio.model.prior.cascade_predict`) and an adaptive residual
    coder: the residual's magnitude in 64 bins (exact up to 15, then four per octave), counted
    adaptively in 40 contexts of the cascade's scale (half octaves), each starting from 256 counts
    shaped as a discretized Laplace of its scale; the position within a bin and the sign at one bit
    each. Past samples only, no side information: a decoder could follow it. The ideal code length
    (an arithmetic coder lands within a few bytes of it)."""
    x = np.asarray(samples).astype(np.int64)
    if len(x) == 0:
        return 0.0
    if not _TABLES:
        _TABLES.append(_coder_tables())
    o = cascade_predict(x, config)
    return float(_residual_code_length(x, o.pred.astype(np.int64), o.scale.astype(np.int64), _TABLES[0]))


FIRST_SAMPLE_BITS = 16  # the model does not predict a file's first sample: it is counted as stored raw


def pcm16_baselines(docs: Sequence[np.ndarray], sample_rate: int = 16_000, workers: int | None = None,
                    sac: str | None = None) -> list[dict[str, float]]:
    """Per file (pcm16 tokens), bits for the whole file (every sample, each file alone): FLAC -8,
    WavPack -hh -x6 (where installed), Sac --normal (where ``sac`` or $TXL_SAC gives a binary), xz -9e on
    the raw int16 bytes, the backward-adaptive order-32 linear prediction, and the cascade alone."""
    exe = sac_binary(sac)

    def one(doc: np.ndarray) -> dict[str, float]:
        x = pcm16_samples(doc)
        xz = lzma.compress(np.ascontiguousarray(x, dtype="<i2").tobytes(), format=lzma.FORMAT_XZ,
                           preset=9 | lzma.PRESET_EXTREME)
        out = {"flac": 8.0 * flac_bytes(x, sample_rate)}
        wv = wavpack_bytes(x, sample_rate)
        if wv is not None:
            out["wavpack"] = 8.0 * wv
        if exe is not None:
            out["sac"] = 8.0 * sac_bytes(x, exe, "normal", sample_rate)
        out.update({"xz": 8.0 * len(xz), "lpc": lpc_laplace_bits(x), "cascade": cascade_bits(x)})
        return out

    # lzma, the coders' processes, numpy's filters and the cascade's kernels leave the GIL: threads
    # use every core
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
