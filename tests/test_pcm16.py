"""16-bit audio end to end: prepare keeps the int16 samples exactly, the trainer refuses a corpus and
a head that do not fit, evaluation reports FLAC / LPC / xz on the same samples, generation writes
16-bit WAVs; the baselines are real code lengths."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
from _training import tiny_config

from txl_audio import baselines
from txl_audio.data import Corpus
from txl_audio.prepare import prepare_audio


def speech_like(n: int, seed: int) -> np.ndarray:
    """int16 samples: a few decaying harmonics and noise (something a predictor can predict)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16_000
    f0 = rng.uniform(100, 300)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    x = 6000 * x * np.exp(-t * rng.uniform(0.5, 3)) + rng.normal(0, 30, n)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def pcm16_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pcm16")
    for i in range(8):
        sf.write(folder / f"spk{i}_nohash_{i}.wav", speech_like(4000, i), 16_000, subtype="PCM_16")
    # a 24-bit file and a float file: rounded to 16 bits, and counted
    sf.write(folder / "spk8_nohash_8.wav", speech_like(3000, 8) / 32768.0 + 3e-6, 16_000, subtype="PCM_24")
    sf.write(folder / "spk9_nohash_9.flac", speech_like(3000, 9), 16_000, subtype="PCM_16")
    sf.write(folder / "spk10_nohash_10.wav", (speech_like(3000, 10) / 32768.0).astype(np.float32) + 1e-5,
             16_000, subtype="FLOAT")
    report = prepare_audio(folder, folder / "corpus", tokenizer="pcm16", split_by="file", valid=0.2, test=0.2,
                           speaker_regex=r"(spk\d+)_", progress=False)
    return folder, folder / "corpus", report


def test_prepare_pcm16_keeps_16_bit_files_exactly(pcm16_corpus):
    folder, corpus_dir, report = pcm16_corpus
    corpus = Corpus(corpus_dir)
    assert corpus.meta["tokenizer"] == {"type": "linear", "bits": 16} and corpus.dtype == np.uint16
    assert report.conversions["converted_bit_depth"] == 2  # the 24-bit and the float file
    seen = 0
    for split in corpus.splits:
        tokens = corpus.tokens(split)
        for f in corpus.files(split):
            samples = baselines.pcm16_samples(tokens[f["offset"] : f["offset"] + f["length"]])
            if "PCM_16" in sf.info(f["path"]).subtype:
                original, _ = sf.read(f["path"], dtype="int16")
                assert np.array_equal(samples, original), f["path"]  # bit for bit, the first sample too
                seen += 1
            else:  # rounded to the nearest 16-bit value
                original, _ = sf.read(f["path"], dtype="float64")
                assert np.abs(samples - original * 32768).max() <= 0.5 + 1e-6
    assert seen == 9


def test_trainer_refuses_a_corpus_and_head_that_do_not_fit(pcm16_corpus, tmp_path):
    from txl_audio.train import train

    _, corpus_dir, _ = pcm16_corpus
    with pytest.raises(ValueError, match="16-bit PCM.*256-way softmax.*model.head=dual_softmax"):
        train(tiny_config(corpus_dir), tmp_path / "a", progress=False, log=lambda m: None)
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    from _training import make_corpus

    mulaw = make_corpus(tmp_path / "mulaw", n_train=2, n_valid=1, length=300)
    cfg = tiny_config(mulaw).with_overrides(["model.head=dual_softmax", "model.vocab_size=65536"])
    with pytest.raises(ValueError, match="model.head='dual_softmax' models 16-bit PCM.*mulaw8.*pcm16"):
        train(cfg, tmp_path / "b", progress=False, log=lambda m: None)


@pytest.mark.parametrize("head", ["dual_softmax", "logistic_mixture"])
def test_train_evaluate_and_generate_16_bit(pcm16_corpus, tmp_path, head):
    from txl_audio.cli import main

    _, corpus_dir, _ = pcm16_corpus
    out = tmp_path / "run"
    cfg = tiny_config(corpus_dir, max_steps=3, eval_every=3).with_overrides(
        [f"model.head={head}", "model.vocab_size=65536", "model.lp_order=8", "model.mixture_components=3"])
    from txl_audio.train import train

    r = train(cfg, out, progress=False, log=lambda m: None)
    assert all(math.isfinite(x) for x in r.losses) and r.valid["levels"] == 65_536
    assert main(["evaluate", str(out), "--corpus", str(corpus_dir), "--split", "test", "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 0
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert s["metric"] == "bits per 16-bit sample"
    for k in ("flac", "lpc", "xz"):
        assert 0 < s[f"{k}_bits_per_token"] < 16, k
    assert s["bzip2_bits_per_token"] is None and "flac" in s["flac_encoder"].lower()
    header = (tmp_path / "eval" / "per_file.csv").read_text().splitlines()[0]
    wavpack = ["wavpack"] if shutil.which("wavpack") else []
    columns = [f"{k}_bits_per_sample" for k in ["flac", *wavpack, "lpc", "cascade", "xz"]]
    assert header == ",".join(["file", "tokens", "bits_per_sample", "whole_file_bits_per_sample", *columns])
    # whole files on both sides: the model's first sample of each file at 16 bits, over every sample
    files, tokens = s["files"], s["tokens"]
    assert s["whole_file_bits_per_sample"] == pytest.approx(
        (s["bits_per_token"] * tokens + 16 * files) / (tokens + files))
    # generation writes 16-bit PCM
    assert main(["generate", str(out), "--out", str(tmp_path / "gen"), "--seconds", "0.01", "--num", "2",
                 "--device", "cpu", "--no-plots"]) == 0
    info = sf.info(tmp_path / "gen" / "sample_000.wav")
    assert (info.subtype, info.samplerate, info.frames) == ("PCM_16", 16_000, 160)


# ---- the baselines are real code lengths ----


def sequential_lpc_bits(x: np.ndarray, order=32, block=64, window=512, alpha=1 / 16) -> float:
    """The LPC baseline written as a decoder would run it, one sample at a time, looking only back."""
    from scipy.linalg import solve_toeplitz

    x = x.astype(np.float64)
    bits, avg = 0.0, 16.0
    a = None
    for t in range(len(x)):
        if t % block == 0:
            past = x[max(0, t - window) : t]
            p = min(order, len(past) // 4)
            if p >= 1 and np.abs(past).max() > 0:
                w = past * np.hanning(len(past) + 2)[1:-1]
                r = np.correlate(w, w, mode="full")[len(w) - 1 : len(w) + p]
                r[0] = r[0] * (1 + 1e-9) + 1e-9
                a = solve_toeplitz(r[:p], r[1 : p + 1])
            else:
                a = np.array([1.0]) if t > 0 else None
        pred = 0.0 if a is None else sum(a[i] * x[t - 1 - i] for i in range(len(a)) if t - 1 - i >= 0)
        e = abs(x[t] - np.clip(np.round(pred), -32768, 32767))
        b = max(avg, 0.3)
        p = -math.expm1(-0.5 / b) if e == 0 else 0.5 * math.exp(-(e - 0.5) / b) * -math.expm1(-1 / b)
        bits -= math.log2(p)
        avg = (1 - alpha) * avg + alpha * e
    return bits


def test_lpc_baseline_uses_the_past_only():
    x = speech_like(700, 3)
    assert baselines.lpc_laplace_bits(x) == pytest.approx(sequential_lpc_bits(x), rel=1e-9)
    # and a good predictor: below FLAC -8 on a longer clip of this signal
    y = speech_like(8000, 3)
    assert baselines.lpc_laplace_bits(y) < 8 * baselines.flac_bytes(y)


def test_flac_baseline_without_padding_through_both_encoders(monkeypatch):
    x = speech_like(16000, 4)
    libsndfile = None
    with monkeypatch.context() as m:
        m.setattr(baselines.shutil, "which", lambda name: None)
        libsndfile = baselines.flac_bytes(x)
        assert "libsndfile" in baselines.flac_encoder()
    assert libsndfile < 16000 * 2 * 0.9  # compressed, and no 8 KB of padding
    if shutil.which("flac") is None:
        pytest.skip("the flac command is not installed (apt-get install flac): libsndfile's encoder only")
    cli = baselines.flac_bytes(x)
    assert abs(cli - libsndfile) <= 0.02 * cli, (cli, libsndfile)  # the same libFLAC at level 8
    assert baselines.flac_encoder().startswith("flac ")


def test_pcm16_baselines_code_the_whole_file():
    """Every classical coder codes all of a file's samples (as the user has the file), not only the ones
    the model predicts."""
    doc = speech_like(5000, 6).astype(np.int64) + 32768
    (b,) = baselines.pcm16_baselines([doc])
    x = baselines.pcm16_samples(doc)
    assert len(x) == len(doc)
    assert b["flac"] == 8 * baselines.flac_bytes(x) and b["lpc"] == baselines.lpc_laplace_bits(x)
    assert b["xz"] < 2 * 8 * len(x)
