"""Log-mel spectrograms (the PNGs next to generated audio): equal to librosa's mel spectrogram and,
where it is importable, torchaudio's, on the same STFT settings; a tone lands in its mel band."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from txl_audio.spectrogram import log_mel_spectrogram, plot_spectrogram

SR, N_FFT, HOP, N_MELS = 16000, 1024, 160, 80


def signal(seconds=0.5, freq=1000.0, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def to_db(power: np.ndarray) -> np.ndarray:
    """Our normalization (power over the Hann window's squared sum) and floor, applied to a reference."""
    wsum = np.hanning(N_FFT + 1)[:-1].sum()  # periodic Hann, as torch.hann_window
    return 10 * np.log10(np.maximum(power / wsum**2, 1e-10))


def test_equals_librosa_melspectrogram():
    x = signal()
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                                         center=True, pad_mode="reflect", power=2.0)
    ours = log_mel_spectrogram(x, SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    assert ours.shape == ref.shape == (N_MELS, x.size // HOP + 1)
    np.testing.assert_allclose(ours, to_db(ref), atol=1e-3)  # dB


def test_equals_torchaudio_melspectrogram():
    T = pytest.importorskip("torchaudio.transforms")
    x = signal(seed=1)
    mel = T.MelSpectrogram(sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=2.0,
                           center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")
    ref = mel(torch.from_numpy(x)).double().numpy()
    ours = log_mel_spectrogram(x, SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    np.testing.assert_allclose(ours, to_db(ref), atol=1e-3)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_tone_peaks_in_its_mel_band(freq):
    db = log_mel_spectrogram(signal(freq=freq), SR, n_mels=N_MELS)
    centers = librosa.mel_frequencies(n_mels=N_MELS + 2, fmax=SR / 2)[1:-1]  # each filter's peak
    band = int(np.argmax(db[:, 10:-10].mean(axis=1)))
    assert abs(band - int(np.argmin(np.abs(centers - freq)))) <= 1
    assert db[band].mean() > db.mean() + 20  # dB above the rest


def test_silence_is_the_floor_and_short_clips_give_a_frame(tmp_path):
    db = log_mel_spectrogram(np.zeros(100, np.float32))
    assert db.shape[1] >= 1 and np.all(db == -100.0)
    png = plot_spectrogram(signal(0.2), tmp_path / "s.png", title="tone", boundary_seconds=0.1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
