"""Log-mel spectrograms of waveforms (torch.stft) and their PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from txl_audio.audio import SAMPLE_RATE, librosa, require

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def log_mel_spectrogram(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 1024,
    hop_length: int = 160,
    n_mels: int = 80,
    floor_db: float = -100.0,
) -> np.ndarray:
    """Power mel spectrogram in dB, ``(n_mels, frames)`` float32; a Hann window of n_fft samples every
    hop_length samples (64 ms / 10 ms at 16 kHz), mel filters from librosa (Slaney-normalized),
    10 log10 of the filtered power spectrum (normalized by the window's sum), floored at ``floor_db``."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    if x.numel() < n_fft:  # short clips: pad so there is at least one frame
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    power = spec.abs().pow(2) / window.sum().pow(2)  # (F, frames)
    filters = require(librosa, "librosa").filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    mel = torch.from_numpy(filters).float()
    mel_power = mel @ power  # (n_mels, frames)
    db = 10.0 * torch.log10(mel_power.clamp_min(10 ** (floor_db / 10)))
    return db.numpy().astype(np.float32)


def plot_spectrogram(
    wave: np.ndarray | torch.Tensor,
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    title: str | None = None,
    boundary_seconds: float | None = None,
) -> Path:
    """Write a PNG of the waveform's log-mel spectrogram; ``boundary_seconds`` draws a dashed line
    (e.g. where a prompt ends and the generated continuation begins)."""
    hop = 160
    db = log_mel_spectrogram(wave, sample_rate, hop_length=hop)
    duration = np.asarray(wave).size / sample_rate
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    vmax = float(db.max())
    im = ax.imshow(
        db, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 80, vmax=vmax,
        extent=(0.0, db.shape[1] * hop / sample_rate, 0, db.shape[0]),
    )
    ax.set_xlim(0, max(duration, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    if boundary_seconds is not None:
        ax.axvline(boundary_seconds, color="white", linestyle="--", linewidth=1)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
