"""Audio in and out: any file soundfile reads -> mono float32 in [-1, 1] at ``SAMPLE_RATE``; save;
:func:`describe_audio` for the facts ``txl-audio info`` shows (level, clipping, the codes' entropy).

Every problem with a file is raised as :class:`AudioError` naming the path and what was wrong, so a
caller (a command, corpus preparation) can report it in one line and go on with the other files.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from txl_audio.errors import TxlAudioError
from txl_audio.tokenizers import Tokenizer, code_counts, unigram_entropy

# soundfile and librosa are dependencies, but an environment may lack them (the GPU image does):
# SAMPLE_RATE and everything that touches no file still import, and reading, writing or resampling
# says what is missing. librosa (>= 0.10) loads its submodules on first use, so importing it is free
# (about 1 ms); the first resample pays about 1.4 s (numba, scipy; 2-core CPU).
try:
    import soundfile as sf
except ImportError:  # pragma: no cover (tested in a subprocess that hides it)
    sf = None
try:
    import librosa
except ImportError:  # pragma: no cover
    librosa = None


class MissingDependency(TxlAudioError, RuntimeError):
    """A package this needs is not installed; the message says which and how to get it."""


def require(module, name: str):
    """``module`` (imported at the top of the calling module), or a MissingDependency naming it."""
    if module is None:
        raise MissingDependency(f"{name} is not installed: `pip install {name}` (or, on a machine without "
                                "network, the wheels `make gpu-wheels` downloads)")
    return module

SAMPLE_RATE = 16_000

# Extensions find_audio_files picks up (lower-case, with the dot). All are read by libsndfile >= 1.1
# (.mp3 needs libsndfile >= 1.1, which the soundfile wheels bundle).
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".mp3", ".au", ".caf",
    ".w64", ".rf64",
)

# A float file whose peak is above this is rejected as mis-scaled (e.g. int PCM values stored as
# float); peaks in (1, MAX_FLOAT_PEAK] are ordinary overshoot of processed audio and are clipped to
# [-1, 1], as writing the file to integer PCM would do. 2.0 is +6 dB over full scale.
MAX_FLOAT_PEAK = 2.0

# |x| at or above this after loading counts as full scale, i.e. (very likely) clipped
FULL_SCALE = 0.999

_SAVE_SUBTYPES = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}


class AudioError(TxlAudioError, ValueError):
    """A file that cannot be used as audio; the message names the path and the problem."""


@dataclass
class AudioInfo:
    """What the file on disk is (before any resampling or channel mixing)."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float  # seconds
    format: str  # soundfile's major format, e.g. "WAV", "FLAC", "OGG"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS"

    def to_dict(self) -> dict:
        return asdict(self)


def _open_error(path: Path, e: Exception) -> AudioError:
    """Turn a soundfile/libsndfile error into a message a user can act on."""
    detail = str(getattr(e, "error_string", "") or e).strip().rstrip(".")
    if "Format not recognised" in detail or "unknown format" in detail.lower():
        return AudioError(
            f"{path}: not an audio file (libsndfile does not recognise its format; "
            "WAV, FLAC, OGG, AIFF, MP3 and others are read)"
        )
    return AudioError(f"{path}: unreadable or corrupt audio file ({detail})")


def audio_info(path: str | Path) -> AudioInfo:
    """Read only the header of an audio file."""
    path = Path(path)
    _check_exists(path)
    soundfile = require(sf, "soundfile")
    try:
        i = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise _open_error(path, e) from None
    return AudioInfo(
        path=str(path), sample_rate=int(i.samplerate), channels=int(i.channels), frames=int(i.frames),
        duration=float(i.frames) / i.samplerate if i.samplerate else 0.0, format=i.format,
        subtype=i.subtype,
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes), not audio")


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """Read ``path`` as mono float32 in [-1, 1] at ``sample_rate`` (channels averaged, resampled with
    soxr's high-quality filter). The returned info describes the original file.

    Raises AudioError (naming the path) for: a missing, empty, unreadable or corrupt file; a file that
    is not audio; zero samples; NaN or inf samples; a float file whose peak exceeds MAX_FLOAT_PEAK.
    """
    path = Path(path)
    _check_exists(path)
    soundfile = require(sf, "soundfile")
    try:
        with soundfile.SoundFile(str(path)) as f:
            info = AudioInfo(
                path=str(path), sample_rate=int(f.samplerate), channels=int(f.channels), frames=0,
                duration=0.0, format=f.format, subtype=f.subtype,
            )
            # always_2d: (N, C) whatever the channel count; integer PCM is scaled to [-1, 1) by libsndfile
            wave = f.read(dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise _open_error(path, e) from None
    info.frames = int(wave.shape[0])  # frames actually decoded (a truncated file has fewer than its header)
    info.duration = info.frames / info.sample_rate if info.sample_rate else 0.0
    if info.frames == 0:
        raise AudioError(f"{path}: contains zero samples")
    if info.sample_rate <= 0:
        raise AudioError(f"{path}: invalid sample rate {info.sample_rate}")
    return _to_mono(wave, info.sample_rate, sample_rate, str(path), info.subtype), info


def mono_waveform(wave: Any, sample_rate: int = SAMPLE_RATE, target_rate: int = SAMPLE_RATE,
                  name: str = "waveform") -> np.ndarray:
    """An in-memory waveform as :func:`read_audio` turns a file's samples into the model's input: mono
    float32 in [-1, 1] at ``target_rate`` (channels averaged, resampled with soxr's high-quality
    filter, slight overs clipped).

    ``wave``: a numpy array or torch tensor, (N,) mono or 2-D multi-channel, either (N, C) as soundfile
    reads a file or (C, N) as torchaudio loads one: the shorter axis is taken as the channels (a square
    array is refused). Floats are taken as they are (full scale 1.0); signed integers are scaled by
    their full scale (int16 by 32768), as libsndfile reads integer PCM. ``sample_rate``: the rate of
    ``wave``. ``name`` names it in errors. Raises AudioError (naming ``name``) as read_audio does for a
    file: no samples, NaN or inf, a peak above MAX_FLOAT_PEAK, a shape or dtype that is not audio.
    """
    if hasattr(wave, "detach"):  # a torch tensor, on any device
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    dtype = str(wave.dtype)
    if wave.dtype.kind == "i":
        wave = wave.astype(np.float32) / np.float32(2 ** (8 * wave.dtype.itemsize - 1))
    elif wave.dtype.kind != "f":
        raise AudioError(f"{name}: samples of dtype {wave.dtype} are not audio; give floats in [-1, 1] or "
                         "signed integer PCM")
    if wave.ndim == 1:
        wave = wave[:, None]
    elif wave.ndim == 2:
        if wave.shape[0] == wave.shape[1] and wave.shape[0] > 1:
            raise AudioError(f"{name}: shape {wave.shape} is ambiguous: which axis holds the channels? give "
                             "(samples, channels) with more samples than channels, or a 1-D mono array")
        if wave.shape[0] < wave.shape[1]:
            wave = np.ascontiguousarray(wave.T)  # (C, N) -> (N, C), laid out as soundfile reads it
    else:
        raise AudioError(f"{name}: expected a 1-D (samples,) or 2-D (samples, channels) waveform, got shape "
                         f"{wave.shape}")
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise AudioError(f"{name}: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    # a copy: the result is clipped in place and must not write into the caller's array
    return _to_mono(np.array(wave, dtype=np.float32), int(sample_rate), target_rate, name, dtype)


def _to_mono(wave: np.ndarray, rate: int, target_rate: int, name: str, subtype: str) -> np.ndarray:
    """(N, C) float32 samples at ``rate`` -> checked mono float32 in [-1, 1] at ``target_rate``."""
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: contains zero samples")
    finite = np.isfinite(wave)
    if not finite.all():
        n_nan = int(np.isnan(wave).sum())
        n_inf = int(wave.size - np.count_nonzero(finite)) - n_nan
        first = int(np.argmin(finite.all(axis=1)))
        raise AudioError(
            f"{name}: {n_nan} NaN and {n_inf} infinite sample value(s), the first at "
            f"{first / rate:.3f} s; the file is damaged or was written from a broken computation"
        )
    peak = float(np.abs(wave).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(
            f"{name}: {subtype} samples reach {peak:.4g}, {20 * math.log10(peak):.1f} dB above full "
            f"scale (expected within [-1, 1]; up to {MAX_FLOAT_PEAK:g} is clipped); the file is probably "
            "mis-scaled: divide it by its peak or by the integer full scale (e.g. 32768) and save again"
        )
    # (N, C) -> (N,): mean over channels, the usual downmix
    mono = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    if rate != target_rate:
        mono = resample(mono, rate, target_rate)
    # slight overs in float files, and resampling ringing next to full-scale peaks, are clipped
    return np.clip(mono, -1.0, 1.0, out=np.ascontiguousarray(mono, dtype=np.float32))


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio file at ``path`` (any format libsndfile reads) as a mono float32 waveform (N,) in
    [-1, 1] at ``sample_rate`` (default 16 kHz): channels averaged, resampled with soxr. A file that
    cannot be used is an AudioError naming it; see :func:`read_audio`."""
    return read_audio(path, sample_rate)[0]


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D (or (..., N)) float waveform with soxr's high-quality filter (via librosa)."""
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    out = require(librosa, "librosa").resample(np.asarray(wave, dtype=np.float32), orig_sr=orig_sr,
                                               target_sr=target_sr, res_type="soxr_hq")
    return out.astype(np.float32, copy=False)


def describe_audio(path: str | Path, tokenizer: Tokenizer,
                   sample_rate: int = SAMPLE_RATE) -> tuple[dict, np.ndarray]:
    """What an audio file is and what ``tokenizer`` (an audio tokenizer) makes of it.

    Returns ``(facts, counts)``: facts are the file's header (:class:`AudioInfo`) plus, for the waveform
    as loaded at ``sample_rate``: ``tokenizer`` (its dict), ``token_rate``, ``tokens``, ``entropy_bits``
    (unigram entropy of the codes), ``codes_used``, ``most_common_code`` and its ``most_common_share``,
    ``full_scale_share`` (fraction of samples at or above FULL_SCALE: clipping), ``peak_dbfs`` and
    ``rms_dbfs``; counts are how often each code occurs (for totals over several files). Raises
    AudioError as :func:`read_audio` does.
    """
    wave, info = read_audio(path, sample_rate)
    codes = tokenizer.encode(wave)
    counts = code_counts(codes, tokenizer.vocab_size)
    peak = float(np.abs(wave).max())
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    d = info.to_dict()
    d.update(
        tokenizer=tokenizer.to_dict(), token_rate=sample_rate, tokens=int(codes.size),
        entropy_bits=unigram_entropy(counts), codes_used=int(np.count_nonzero(counts)),
        most_common_code=int(np.argmax(counts)), most_common_share=float(counts.max() / codes.size),
        full_scale_share=float(np.mean(np.abs(wave) >= FULL_SCALE)),
        peak_dbfs=_dbfs(peak), rms_dbfs=_dbfs(rms),
    )
    return d, counts


def _dbfs(v: float) -> float:
    """Level relative to full scale (1.0) in dB; -inf for silence."""
    return 20 * math.log10(v) if v > 0 else -math.inf


def save_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono (N,) or multichannel (N, C) float waveform as 16-bit PCM WAV or FLAC (by the
    extension). Values are clipped to [-1, 1]; the parent folder is created."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _SAVE_SUBTYPES:
        raise AudioError(f"{path}: cannot save as {ext or 'no extension'!r}; use .wav or .flac")
    if hasattr(wave, "detach"):  # a torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise AudioError(f"{path}: expected a non-empty (N,) or (N, C) waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: refusing to save a waveform with NaN or infinite values")
    fmt, subtype = _SAVE_SUBTYPES[ext]
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile = require(sf, "soundfile")
    soundfile.write(str(path), np.clip(wave, -1.0, 1.0), int(sample_rate), format=fmt, subtype=subtype)


def find_audio_files(folder: str | Path) -> list[Path]:
    """All files under ``folder`` (recursively) whose extension is in AUDIO_EXTENSIONS, sorted by path.
    A single audio file given as ``folder`` is returned as a one-element list."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such file or folder")
    if folder.is_file():
        if folder.suffix.lower() in AUDIO_EXTENSIONS:
            return [folder]
        raise AudioError(f"{folder}: not a folder and not a file with an audio extension")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [Path(root) / f for f in files if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
    return sorted(found, key=lambda p: p.as_posix())
