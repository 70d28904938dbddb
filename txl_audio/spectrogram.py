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


DB_RANGE = (-100.0, 0.0)  # the colour scale: dB relative to full scale (a full-scale sine's power)


def plot_spectrogram(
    wave: np.ndarray | torch.Tensor,
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    title: str | None = None,
    boundary_seconds: float | None = None,
) -> Path:
    """Write a PNG of the waveform (a strip on a fixed -1 .. 1 axis: a blow-up, an offset or silence shows
    at a glance) above its log-mel spectrogram on a fixed colour scale of -100 .. 0 dB relative to full
    scale (a full-scale sine at 0 dB; not scaled to the loudest bin, which would make everything but a
    full-scale tone look like silence); ``boundary_seconds`` draws a dashed line on both (e.g. where a
    prompt ends and the generated continuation begins)."""
    hop = 160
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    # a full-scale sine has power 1/2 in the periodogram normalized by the window's sum squared / 4:
    # +6 dB makes it 0 dB (the 1/4 of a one-sided bin), and the mel filters' area is ~1 per band
    db = log_mel_spectrogram(x, sample_rate, hop_length=hop) + 20.0 * np.log10(2.0)
    duration = x.size / sample_rate
    fig, (ax_w, ax) = plt.subplots(2, 1, figsize=(8, 4.2), dpi=100, sharex=True,
                                   gridspec_kw={"height_ratios": [1, 2.6]})
    t = np.arange(x.size) / sample_rate
    if x.size > 20_000:  # the envelope of each column: min and max of blocks (what a plot of all shows)
        n = x.size // 2000
        blocks = x[: n * 2000].reshape(2000, n)
        tb = t[: n * 2000].reshape(2000, n)[:, 0]
        ax_w.fill_between(tb, blocks.min(1), blocks.max(1), color="tab:blue", linewidth=0.3)
    else:
        ax_w.plot(t, x, color="tab:blue", linewidth=0.4)
    ax_w.set_ylim(-1.05, 1.05)
    ax_w.set_yticks([-1, 0, 1])
    ax_w.axhline(0.0, color="grey", linewidth=0.4)
    ax_w.set_ylabel("wave")
    peak = float(np.abs(x).max()) if x.size else 0.0
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    ax_w.text(0.995, 0.96, f"peak {peak:.2f}, RMS {20 * np.log10(max(rms, 1e-6)):.1f} dBFS",
              transform=ax_w.transAxes, ha="right", va="top", fontsize=7)
    im = ax.imshow(
        db, origin="lower", aspect="auto", cmap="magma", vmin=DB_RANGE[0], vmax=DB_RANGE[1],
        extent=(0.0, db.shape[1] * hop / sample_rate, 0, db.shape[0]),
    )
    ax.set_xlim(0, max(duration, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    if boundary_seconds is not None:
        for a, colour in ((ax, "white"), (ax_w, "black")):
            a.axvline(boundary_seconds, color=colour, linestyle="--", linewidth=1)
    if title:
        ax_w.set_title(title, fontsize=9)
    fig.colorbar(im, ax=[ax_w, ax], label="dB re full scale", fraction=0.04, pad=0.01)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
