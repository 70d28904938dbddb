"""What a waveform sounds like in numbers: level over time, clipping, zero crossings, spectral flatness;
the same figures for a training corpus; and the checks that say a generated sample has degenerated.

``txl-audio generate`` measures every sample it writes (:func:`wave_stats`) beside the corpus's figures
(:func:`corpus_stats`, computed at training time and stored in the checkpoint as ``corpus_stats``) and
warns when a sample degenerates (:func:`degeneration`): sustained full scale, a constant, a pure tone,
silence. Waveforms are float in [-1, 1) (an int16 value v is v / 32,768), at 16 kHz.

Definitions (frames are 0.1 s, 1,600 samples, without overlap; a last partial frame counts when it
holds at least half a frame):

- RMS: of the whole sample and of each frame, in dB relative to full scale (a full-scale square wave
  is 0 dBFS; digital silence is floored at -120 dBFS);
- clipped: the share of samples at either rail (|v| >= 32,767 of 32,768);
- ZCR: sign changes between consecutive samples per sample (0.5: every other sample, a Nyquist tone);
- spectral flatness: the geometric over the arithmetic mean of a frame's power spectrum (Hann window),
  the median over the frames that are not silent (1: white noise; near 0: a pure tone);
- tonal frame: one whose power within 2 bins of its strongest bin is over 90% of the frame's power.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FRAME = 1600  # 0.1 s at 16 kHz
RAIL = 32767.0 / 32768.0  # |v| at or above this is at a rail
FLOOR_DB = -120.0
SILENT_DB = -70.0  # a frame quieter than this is silent (Speech Commands' quietest background: ~-60)
LOUD_DB = -3.0  # a frame louder than this is (sustained) full scale: speech stays well below it
TONAL_SHARE = 0.9
SUSTAIN_FRAMES = 5  # 0.5 s of frames in a row make full scale or a constant sustained
TONE_FRAMES = 10  # 1 s of tonal frames at one frequency make a pure tone (a sung vowel holds ~0.5 s)
SILENT_SHARE = 0.9  # silence: this share of the frames silent (a 1 s command clip is often 70%) ...
SILENT_RUN_FRAMES = 30  # ... or 3 s of them in a row (read speech pauses for less)
CORPUS_FILES = 256  # files a corpus's figures are computed from (evenly spread over the split)
CORPUS_SECONDS = 30.0  # of each file at most
LONG_TERM_ORDER = 32  # the corpus's long-term-spectrum predictor (a sampler's fixed prior, issue 28)
LONG_TERM_LAGS = 64  # autocorrelation lags stored: predictors of any order up to this
LONG_TERM_FRAME = 512  # Hann frames, hop 256, each normalised to unit energy
LAG_WINDOW_HZ = 60.0  # Gaussian lag window (bandwidth expansion, as speech codecs do)
WHITE_NOISE_CORRECTION = 1e-3  # added to lag 0 (-30 dB): no pole is sharper than the window allows


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float64), 1e-300)), FLOOR_DB)


def _frames(x: np.ndarray) -> np.ndarray:
    """(n_frames, FRAME): the whole frames, plus the last partial one zero-padded when it holds at
    least half a frame (a sample shorter than that is one padded frame)."""
    n = len(x)
    whole = n // FRAME
    rest = n - whole * FRAME
    if whole == 0 or rest >= FRAME // 2:
        x = np.concatenate([x, np.zeros((whole + 1) * FRAME - n)])
        whole += 1
    return x[: whole * FRAME].reshape(whole, FRAME)


def _frame_spectra(frames: np.ndarray) -> np.ndarray:
    w = np.hanning(FRAME)
    return np.abs(np.fft.rfft(frames * w, axis=-1)) ** 2  # (n, FRAME/2 + 1)


def wave_stats(wave: Any) -> dict[str, Any]:
    """The figures of one waveform (see the module docstring): ``rms_dbfs``, ``frame_rms_dbfs`` (per
    0.1 s), ``loudest_frame_dbfs``, ``clipped``, ``zcr``, ``flatness``, ``dc`` (the mean), ``peak``,
    ``tonal_frames`` (share), ``silent_frames`` (share), ``seconds``."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("wave_stats needs at least one sample")
    frames = _frames(x)
    frame_db = _db(np.mean(frames**2, axis=1))
    silent = frame_db < SILENT_DB
    spec = _frame_spectra(frames)
    flat = np.exp(np.mean(np.log(spec + 1e-30), axis=-1)) / np.maximum(spec.mean(-1), 1e-300)
    tonal, _ = _tonal(spec, frame_db)
    signs = np.signbit(x)
    return {
        "seconds": x.size / 16_000,
        "rms_dbfs": float(_db(np.mean(x**2))),
        "frame_rms_dbfs": [round(float(v), 1) for v in frame_db],
        "loudest_frame_dbfs": float(frame_db.max()),
        "clipped": float(np.mean(np.abs(x) >= RAIL)),
        "zcr": float(np.mean(signs[1:] != signs[:-1])) if x.size > 1 else 0.0,
        "flatness": float(np.median(flat[~silent])) if (~silent).any() else 0.0,
        "dc": float(x.mean()),
        "peak": float(np.abs(x).max()),
        "tonal_frames": float(tonal.mean()),
        "silent_frames": float(silent.mean()),
    }


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for m in mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


def _tonal(spec: np.ndarray, frame_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: tonal (over 90% of the power within 2 bins of the strongest, which is above 20 Hz: an
    offset is a constant, not a tone; not silent) and the strongest bin."""
    peak_bin = spec.argmax(-1)
    near = np.abs(np.arange(spec.shape[1])[None, :] - peak_bin[:, None]) <= 2
    share = (spec * near).sum(-1) / np.maximum(spec.sum(-1), 1e-300)
    return (share > TONAL_SHARE) & (peak_bin > 2) & (frame_db >= SILENT_DB), peak_bin


def _longest_tone(tonal: np.ndarray, peak_bin: np.ndarray) -> int:
    """Longest run of tonal frames whose strongest bin moves by at most 2 bins (10 Hz each) per frame."""
    best = run = 0
    for i, t in enumerate(tonal):
        run = (run + 1 if run and abs(int(peak_bin[i]) - int(peak_bin[i - 1])) <= 2 else 1) if t else 0
        best = max(best, run)
    return best


def degeneration(wave: Any, stats: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with a generated waveform, as short phrases (empty: nothing): sustained full scale
    (0.5 s of frames above -3 dBFS, or with over a quarter of their samples at the rails), a constant
    (0.5 s of frames whose samples span at most 2 levels, away from 0), a pure tone (1 s of tonal frames
    at one frequency), silence (90% of the frames, or 3 s in a row, below -70 dBFS or flat at 0). A
    sample shorter than a run needs all its frames to show it. Calibrated on the bundled real speech
    (data/: none of its 619 files shows any)."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    s = stats or wave_stats(x)
    frames = _frames(x)
    n = len(frames)
    frame_db = np.asarray(s["frame_rms_dbfs"])
    railed = np.mean(np.abs(frames) >= RAIL, axis=1) > 0.25
    span = (frames.max(1) - frames.min(1)) * 32768.0
    flat_line = span <= 2.0
    at_zero = np.abs(frames.mean(1)) * 32768.0 <= 2.0
    tonal, peak_bin = _tonal(_frame_spectra(frames), frame_db)
    silent = (frame_db < SILENT_DB) | (flat_line & at_zero)
    found = []
    if _longest_run((frame_db > LOUD_DB) | railed) >= min(SUSTAIN_FRAMES, n):
        found.append(f"sustained full scale ({100 * s['clipped']:.0f}% of samples at the rails, "
                     f"loudest 0.1 s {s['loudest_frame_dbfs']:.1f} dBFS)")
    if _longest_run(flat_line & ~at_zero) >= min(SUSTAIN_FRAMES, n):
        found.append(f"a constant (DC {s['dc'] * 32768:+.0f} levels)")
    if _longest_tone(tonal & ~flat_line, peak_bin) >= min(TONE_FRAMES, n):
        hz = np.bincount(peak_bin[tonal]).argmax() * 16_000 / FRAME
        found.append(f"a pure tone (~{hz:.0f} Hz)")
    if silent.mean() >= SILENT_SHARE or _longest_run(silent) >= SILENT_RUN_FRAMES:
        found.append(f"silence ({100 * silent.mean():.0f}% of the 0.1 s frames below {SILENT_DB:.0f} dBFS)")
    return found


# ---- a corpus's figures --------------------------------------------------------------------------------


def _quantiles(v: list[float], qs: tuple[float, ...] = (0.01, 0.05, 0.5, 0.95, 0.99)) -> dict[str, float]:
    a = np.asarray(v, dtype=np.float64)
    return {f"p{q * 100:g}": float(np.quantile(a, q)) for q in qs}


def summarize(per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of many waveforms (``wave_stats`` of each): quantiles over the files of their RMS, ZCR,
    flatness and clipped share, and of all their frames' RMS."""
    if not per_file:
        raise ValueError("summarize needs at least one waveform's figures")
    frames = [v for s in per_file for v in s["frame_rms_dbfs"]]
    return {
        "files": len(per_file),
        "seconds": float(sum(s["seconds"] for s in per_file)),
        "rms_dbfs": _quantiles([s["rms_dbfs"] for s in per_file]),
        "frame_rms_dbfs": {**_quantiles(frames, (0.01, 0.05, 0.5, 0.95, 0.99, 0.999)),
                           "max": float(max(frames))},
        "clipped": {"mean": float(np.mean([s["clipped"] for s in per_file])),
                    **_quantiles([s["clipped"] for s in per_file], (0.5, 0.99)),
                    "max": float(max(s["clipped"] for s in per_file))},
        "zcr": _quantiles([s["zcr"] for s in per_file]),
        "flatness": _quantiles([s["flatness"] for s in per_file]),
    }


def _autocorrelation(x: np.ndarray, lags: int = LONG_TERM_LAGS) -> tuple[np.ndarray, int]:
    """The sum over a wave's Hann frames (512, hop 256) of their autocorrelations at lags 0 .. ``lags``,
    each frame's divided by its energy (every frame counts the same, loud or quiet), and the count."""
    n = len(x)
    if n < LONG_TERM_FRAME:
        return np.zeros(lags + 1), 0
    starts = np.arange(0, n - LONG_TERM_FRAME + 1, LONG_TERM_FRAME // 2)
    frames = x[starts[:, None] + np.arange(LONG_TERM_FRAME)] * np.hanning(LONG_TERM_FRAME)
    energy = np.sum(frames**2, axis=1)
    frames = frames[energy > 0]
    if len(frames) == 0:
        return np.zeros(lags + 1), 0
    spec = np.abs(np.fft.rfft(frames, 2 * LONG_TERM_FRAME, axis=1)) ** 2
    r = np.fft.irfft(spec, axis=1)[:, : lags + 1]
    return (r / r[:, :1]).sum(0), len(frames)


def levinson(r: Any, order: int) -> tuple[np.ndarray, float]:
    """Levinson-Durbin on autocorrelations r[0 .. order] (plain float64 loops: the same result on every
    machine): the predictor a (x_t ~ sum a_i x_{t-1-i}, most recent sample first) and the prediction
    error's power relative to r[0]. A positive definite r gives a stable (minimum-phase) filter."""
    r = [float(v) for v in np.asarray(r, dtype=np.float64)[: order + 1]]
    if len(r) < order + 1 or not r[0] > 0:
        raise ValueError(f"levinson needs {order + 1} autocorrelations with r[0] > 0")
    a = [0.0] * (order + 1)
    a[0] = 1.0
    err = r[0]
    for m in range(1, order + 1):
        acc = r[m]
        for i in range(1, m):
            acc += a[i] * r[m - i]
        k = -acc / err
        prev = a[:]
        for i in range(1, m + 1):
            a[i] = prev[i] + k * prev[m - i]
        err *= 1.0 - k * k
    return np.array([-v for v in a[1:]]), err / r[0]


def long_term_predictor(lt: dict[str, Any], order: int) -> tuple[np.ndarray, float]:
    """A corpus's long-term-spectrum predictor of ``order`` (<= 64) from its figures' ``long_term``
    entry, and the residual level (mean |x - prediction| in int16 levels) to start a sample at: the
    corpus's median file's for the stored order, scaled by the root of the error powers for another."""
    if not 1 <= order <= len(lt["autocorrelation"]) - 1:
        raise ValueError(f"the corpus's long-term spectrum holds predictors of order 1 .. "
                         f"{len(lt['autocorrelation']) - 1}, not {order}")
    a, err = levinson(lt["autocorrelation"], order)
    level = float(lt["residual_level"])
    if order != lt["order"]:
        _, err0 = levinson(lt["autocorrelation"], int(lt["order"]))
        level *= math.sqrt(err / err0)
    return a, level


def _long_term(waves: list[np.ndarray]) -> dict[str, Any] | None:
    """The ``long_term`` entry of a corpus's figures: the lag-windowed mean normalised autocorrelation
    of its frames, and for the order-32 predictor from it its prediction gain and the median over the
    files of the mean |residual| in int16 levels."""
    R, count = np.zeros(LONG_TERM_LAGS + 1), 0
    for x in waves:
        r, c = _autocorrelation(x)
        R, count = R + r, count + c
    if count == 0:
        return None
    R = R / count
    k = np.arange(LONG_TERM_LAGS + 1)
    R = R * np.exp(-0.5 * (2 * np.pi * LAG_WINDOW_HZ * k / 16_000) ** 2)
    R[0] *= 1.0 + WHITE_NOISE_CORRECTION
    a, err = levinson(R, LONG_TERM_ORDER)
    levels = []
    for x in waves:
        pred = np.convolve(x, np.concatenate([[0.0], a]))[: len(x)]
        levels.append(float(np.mean(np.abs(x - np.clip(np.floor(pred + 0.5), -32768, 32767)))))
    return {"order": LONG_TERM_ORDER, "autocorrelation": [float(v) for v in R],
            "prediction_gain_db": float(-10.0 * np.log10(err)),
            "residual_level": float(np.median(levels))}


def corpus_stats(corpus: Any, split: str = "train", max_files: int = CORPUS_FILES) -> dict[str, Any] | None:
    """The figures of up to ``max_files`` files of an audio corpus's ``split`` (evenly spread over it,
    at most 30 s of each), decoded by its tokenizer; None for a text corpus or an empty split."""
    tok = corpus.tokenizer
    if getattr(tok, "unit", None) != "sample" or split not in corpus.splits:
        return None
    files = [f for f in corpus.files(split) if f.get("length", 0) > 0]
    if not files:
        return None
    pick = np.unique(np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int))
    tokens = corpus.tokens(split)
    rate = corpus.sample_rate or 16_000
    per_file, waves = [], []
    for i in pick:
        f = files[i]
        n = min(int(f["length"]), int(CORPUS_SECONDS * rate))
        codes = np.asarray(tokens[int(f["offset"]) : int(f["offset"]) + n]).astype(np.int64)
        wave = np.asarray(tok.decode(codes), dtype=np.float64)
        per_file.append(wave_stats(wave))
        waves.append(np.round(wave * 32768.0))
    out = summarize(per_file)
    out["split"] = split
    lt = _long_term(waves)
    if lt is not None:
        out["long_term"] = lt
    return out


# ---- a sample beside its corpus ------------------------------------------------------------------------

RANGE_MARGIN_DB = 3.0  # level checks allow this much beyond the corpus's range


def within_corpus(stats: dict[str, Any], corpus: dict[str, Any]) -> dict[str, bool]:
    """Whether a sample's level, loudest frame, clipping and ZCR lie in the corpus's range: RMS within
    the files' 1st..99th percentile (3 dB of margin), loudest 0.1 s at most the corpus's 99.9th percentile
    frame + 3 dB, clipped share at most the 99th percentile file's (or 0.1%), ZCR within the files' 1st
    .. 99th percentile."""
    r, f, z = corpus["rms_dbfs"], corpus["frame_rms_dbfs"], corpus["zcr"]
    return {
        "rms": r["p1"] - RANGE_MARGIN_DB <= stats["rms_dbfs"] <= r["p99"] + RANGE_MARGIN_DB,
        "loudest": stats["loudest_frame_dbfs"] <= f["p99.9" if "p99.9" in f else "max"] + RANGE_MARGIN_DB,
        "clipped": stats["clipped"] <= max(corpus["clipped"]["p99"], 1e-3),
        "zcr": z["p1"] <= stats["zcr"] <= z["p99"],
    }


def sample_line(name: str, stats: dict[str, Any]) -> str:
    return (f"{name}: RMS {stats['rms_dbfs']:.1f} dBFS (loudest 0.1 s {stats['loudest_frame_dbfs']:.1f}), "
            f"clipped {100 * stats['clipped']:.2f}%, ZCR {stats['zcr']:.3f}, "
            f"flatness {stats['flatness']:.3f}")


def corpus_line(c: dict[str, Any]) -> str:
    r, z, fl = c["rms_dbfs"], c["zcr"], c["flatness"]
    return (f"corpus ({c.get('split', 'train')}, {c['files']} files): RMS {r['p50']:.1f} dBFS "
            f"({r['p1']:.1f} .. {r['p99']:.1f}; loudest 0.1 s {c['frame_rms_dbfs'].get('p99.9', 0.0):.1f}), "
            f"clipped {100 * c['clipped']['mean']:.2f}%, "
            f"ZCR {z['p50']:.3f} ({z['p1']:.3f} .. {z['p99']:.3f}), "
            f"flatness {fl['p50']:.3f} ({fl['p1']:.3f} .. {fl['p99']:.3f})")


def quality_report(waves: list[tuple[str, np.ndarray]], corpus: dict[str, Any] | None) -> dict[str, Any]:
    """Every sample's figures, degenerations and range checks beside the corpus's figures (None: not
    known), with ``lines`` (one per sample, then the corpus's) and ``warnings`` (one per degenerate
    sample) to print."""
    samples, lines, warnings = [], [], []
    for name, wave in waves:
        s = wave_stats(wave)
        problems = degeneration(wave, s)
        entry: dict[str, Any] = {"name": name, **s, "degenerate": problems}
        line = sample_line(name, s)
        if corpus is not None:
            ok = within_corpus(s, corpus)
            entry["within_corpus"] = ok
            bad = [k for k, v in ok.items() if not v]
            line += ("; within the corpus's range" if not bad
                     else f"; OUTSIDE the corpus's range: {', '.join(bad)}")
        if problems:
            warnings.append(f"warning: {name} degenerated: {'; '.join(problems)}")
        samples.append(entry)
        lines.append(line)
    lines.append(corpus_line(corpus) if corpus is not None else "corpus: figures not known (not in the "
                 "checkpoint and its corpus not found)")
    all_ok = all(not e["degenerate"] and all(e.get("within_corpus", {}).values()) for e in samples)
    return {"samples": samples, "corpus": corpus, "lines": lines, "warnings": warnings, "ok": all_ok}


def db_to_amplitude(db: float) -> float:
    return math.pow(10.0, db / 20.0)
