"""Generated audio beside its training corpus (issue 28): the figures and degeneration checks of
txl_audio/quality.py, the corpus figures training stores in checkpoints, the report `generate` writes,
and a small 16-bit model's samples staying within the corpus's level range.

The model is trained once per module (300 steps, ~10 s on one thread) on the bundled Speech Commands
sample as a 16-bit corpus (tests keep to one thread).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from txl_audio import quality as Q
from txl_audio.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SC = ROOT / "data" / "speech_commands_v002_test"
LJ = ROOT / "data" / "ljspeech_sentences_read"


def _model_config(corpus: Path, head: str, lp_order: int, lp: str = "fitted", steps: int = 300) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"vocab_size": 65536, "n_layer": 2, "d_model": 64, "n_head": 2, "d_head": 32,
                  "d_inner": 128, "dropout": 0.0, "dropatt": 0.0, "tgt_len": 64, "mem_len": 64,
                  "pre_norm": True, "head": head, "mixture_components": 10, "lp_order": lp_order,
                  "lp_coefficients": lp, "lp_aux_weight": 1.0},
        "data": {"corpus": str(corpus), "eval_batch_size": 8, "max_eval_tokens": 8192},
        "train": {"seed": 0, "batch_size": 8, "lr": 2e-3, "min_lr": 5e-5, "warmup_steps": 50,
                  "max_steps": steps, "log_every": 100, "eval_every": 1000, "ckpt_every": 1000,
                  "keep_checkpoints": 1, "threads": 1},
    })


@pytest.fixture(scope="module")
def corpus16(tmp_path_factory) -> Path:
    from txl_audio.prepare import prepare_audio

    out = tmp_path_factory.mktemp("q") / "corpus16"
    prepare_audio([str(SC)], str(out), tokenizer="pcm16", workers=1, progress=False)
    return out


def _train(corpus: Path, out: Path, head: str, lp_order: int, lp: str = "fitted") -> Path:
    from txl_audio.train import train

    torch.set_num_threads(1)
    train(_model_config(corpus, head, lp_order, lp), out, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def lossless16_run(corpus16, tmp_path_factory) -> Path:
    """A logistic mixture on the fitted order-32 LPC prior, small (the lossless16 recipe's head until
    2026-12-07; the cascade, its head now, is a case of test_every_16bit_head_stays_in_corpus_range)."""
    return _train(corpus16, tmp_path_factory.mktemp("q") / "run", "logistic_mixture", 32)


# ---- the figures and the checks --------------------------------------------------------------------------


def _speech() -> list[np.ndarray]:
    files = sorted(LJ.glob("*.flac"))[:6] + sorted(SC.glob("*/*.flac"))[::10]
    return [sf.read(f, dtype="float64")[0] for f in files]


def test_figures_of_simple_signals():
    t = np.arange(32_000) / 16_000
    nyquist = np.where(np.arange(32_000) % 2 == 0, 32767, -32768) / 32768.0
    s = Q.wave_stats(nyquist)
    assert s["clipped"] == 1.0 and s["zcr"] == pytest.approx(1.0) and s["rms_dbfs"] > -0.01
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    s = Q.wave_stats(sine)
    assert s["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    assert s["zcr"] == pytest.approx(2 * 440 / 16_000, rel=0.01) and s["flatness"] < 1e-3
    noise = np.random.default_rng(0).standard_normal(32_000) * 0.1
    assert Q.wave_stats(noise)["flatness"] > 0.4
    assert len(Q.wave_stats(noise)["frame_rms_dbfs"]) == 20


@pytest.mark.parametrize("kind, phrase", [
    ("nyquist", "sustained full scale"), ("railed", "sustained full scale"), ("dc", "a constant"),
    ("tone", "a pure tone"), ("silence", "silence"), ("near_silence", "silence"),
])
def test_warning_fires_on_degenerate_samples(kind, phrase):
    n = 32_000
    rng = np.random.default_rng(1)
    speech_start = np.concatenate([_speech()[0][:8000], np.zeros(n - 8000)])
    waves = {
        # the blow-up: speech-like start, then a full-scale square wave at the Nyquist frequency
        "nyquist": np.concatenate([speech_start[:4000],
                                   np.where(np.arange(n - 4000) % 2 == 0, 32767, -32768) / 32768.0]),
        "railed": np.full(n, 32767 / 32768.0),
        "dc": np.full(n, 0.25),
        "tone": 0.3 * np.sin(2 * np.pi * 1000 * np.arange(n) / 16_000),
        "silence": np.zeros(n),
        "near_silence": rng.integers(-1, 2, n) / 32768.0,
    }
    report = Q.quality_report([("sample_000.wav", waves[kind])], None)
    assert len(report["warnings"]) == 1 and phrase in report["warnings"][0], report["warnings"]
    assert report["warnings"][0].startswith("warning: sample_000.wav degenerated:")
    assert not report["ok"]


def test_warning_does_not_fire_on_real_speech():
    for wave in _speech():
        assert Q.degeneration(wave) == []


# ---- the corpus's figures in the checkpoint, the report generate writes --------------------------------


def test_checkpoint_holds_corpus_figures(lossless16_run):
    from txl_audio.checkpoint import load_checkpoint

    for name in ("best.pt", "ckpt_300.pt"):
        c = load_checkpoint(lossless16_run / name)["corpus_stats"]
        assert c["split"] == "train" and c["files"] > 100
        assert -45 < c["rms_dbfs"]["p50"] < -15 and 0.02 < c["zcr"]["p50"] < 0.3
        assert c["clipped"]["mean"] < 1e-3


def test_generate_writes_quality_report(lossless16_run, tmp_path, capsys):
    from txl_audio.cli import main

    assert main(["generate", str(lossless16_run), "--out", str(tmp_path), "--tokens", "3200", "--num", "1",
                 "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "quality: sample_000.wav: RMS" in printed and "quality: corpus (train" in printed
    report = json.loads((tmp_path / "generation.json").read_text())
    q = report["quality"]
    (s,) = q["samples"]
    assert s["name"] == "sample_000.wav" and len(s["frame_rms_dbfs"]) == 2
    assert {"rms_dbfs", "clipped", "zcr", "flatness", "degenerate", "within_corpus"} <= set(s)
    assert q["corpus"]["files"] > 100
    assert (tmp_path / "sample_000.png").stat().st_size > 10_000
    assert report["settings"]["prior_prediction"] is False  # the default: the prior predicts 0


def test_sampling_opens_the_prior_loop_and_closes_it_after(lossless16_run):
    """While sampling, the fitted prior is the training corpus's fixed long-term predictor (from the
    checkpoint's figures) with a slow level anchored at the corpus's, or without those figures predicts
    0 (its unit the signal's own level); after it, and with prior_prediction=True, it is as trained."""
    from txl_audio.checkpoint import load_model
    from txl_audio.generate import open_loop_prior, sample
    from txl_audio.model.heads import HALF

    model, _, _ = load_model(lossless16_run, "cpu")
    assert model.lp.long_term is not None  # attached from the checkpoint's corpus figures
    a, start = model.lp.long_term
    wave = sf.read(sorted(SC.glob("*/*.flac"))[0], dtype="int16")[0].astype(np.int64)
    loud = int(np.argmax(np.convolve(wave.astype(float) ** 2, np.ones(1024), "valid")))  # a word, not silence
    tokens = torch.from_numpy(wave[loud : loud + 1024] + 32768)[None]
    n = tokens.shape[1]
    closed, _ = model.lp.context(tokens, None, None)
    with open_loop_prior(model):
        fixed, _ = model.lp.context(tokens, None, None)
        h = torch.zeros(n, model.config.d_model)
        pred, _ = model.lp(h, fixed.windows[0], fixed.base[0], fixed.level[0])
    win = fixed.windows[0].double()
    assert torch.allclose(fixed.base[0], torch.as_tensor(a).expand(n, -1))
    assert torch.allclose(pred.double(), (win @ torch.as_tensor(a)).clamp(-1, 1), atol=1e-6)
    # its level: the running mean of |x - round(pred)| at 2^-8, pulled to the start at 2^-12
    x = tokens[0].double() - 32768
    p = torch.round(win @ torch.as_tensor(a) * HALF).clamp(-HALF, HALF - 1)
    m, want = float(start), []
    for t in range(n):
        if t > 0:
            m = m + (abs(float(x[t] - p[t - 1])) - m) / 256 + (float(start) - m) / 4096
        want.append(math.log(m + 1) - math.log(32768))
    assert torch.allclose(fixed.level[0].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)
    model.lp.long_term = None  # a checkpoint without the figures: the prior predicts 0
    with open_loop_prior(model):
        opened, _ = model.lp.context(tokens, None, None)
        h = torch.zeros(n, model.config.d_model)
        pred, _ = model.lp(h, opened.windows[0], opened.base[0], opened.level[0])
    assert not opened.base.any() and not pred.any()
    # the open loop's level is the mean |x| of the last 16 samples after the file's first (the closed
    # loop's is the mean |residual|)
    x = tokens[0].double() - 32768
    mean = torch.stack([x[max(1, t - 15) : t + 1].abs().mean() for t in range(1, n)])  # noqa
    want = torch.log(mean + 1) - math.log(32768)
    assert torch.allclose(opened.level[0, 1:].double(), want, atol=1e-5)
    assert (closed.level[0, 512:] < opened.level[0, 512:] - 1).float().mean() > 0.5  # the LPC predicts
    assert model.lp.open_loop is False
    sample(model, None, 8, batch_size=1, start_token=32768)
    assert model.lp.open_loop is False


def test_api_generate_returns_the_report(lossless16_run):
    import txl_audio

    m = txl_audio.load(lossless16_run)
    samples, report = m.generate(tokens=1600, num=1, seed=0, return_report=True)
    assert samples.shape == (1, 1600)
    assert report["samples"][0]["rms_dbfs"] == pytest.approx(Q.wave_stats(samples[0])["rms_dbfs"], abs=0.01)
    assert report["corpus"] is not None


# ---- the samples themselves --------------------------------------------------------------------------


def test_shipped_speech16_samples_stay_in_corpus_range():
    """Issue 28's fix on the shipped 16-bit model: while sampling its prior is the training corpus's
    fixed long-term predictor with a slow level anchored at the corpus's (the cascade refitted on the
    model's own output is an unstable closed loop), and 2 s x 2 streams stay within
    the training corpus's level, loudest frame, clipping and ZCR, with no degeneration. On the code
    before (the head centred on the cascade's prediction) the same call gives -6.8 / -6.6 dBFS, 2.0% /
    6.9% clipped, a DC constant and a Nyquist tone (docs/results.md)."""
    import txl_audio

    _, report = txl_audio.load("speech16").generate(seconds=2.0, num=2, seed=0, return_report=True)
    for s in report["samples"]:
        assert not s["degenerate"] and all(s["within_corpus"].values()), report["lines"]


@pytest.mark.slow
def test_shipped_speech8_samples_stay_in_corpus_range():
    """The 8-bit softmax head (the shipped mu-law model, no prior): 2 s x 2 streams at two seeds within
    its training corpus's level, loudest frame, clipping and ZCR (measured 2026-12-07: -29.0 .. -19.6
    dBFS, at most 0.02% clipped)."""
    import txl_audio

    model = txl_audio.load("speech8")
    for seed in (0, 1):
        _, report = model.generate(seconds=2.0, num=2, seed=seed, return_report=True)
        for s in report["samples"]:
            assert not s["degenerate"] and all(s["within_corpus"].values()), report["lines"]


@pytest.mark.slow  # 25 s
def test_shipped_speech16_with_the_prior_prediction_leaves_the_corpus_range():
    """The same with ``prior_prediction=True`` (the training-time head, what issue 28 reported): both
    streams leave the corpus's range. If this starts to pass, the closed loop got stable and the
    default can be reconsidered."""
    import txl_audio

    _, report = txl_audio.load("speech16").generate(seconds=2.0, num=2, seed=0, return_report=True,
                                                    prior_prediction=True)
    for s in report["samples"]:
        assert not all(s["within_corpus"].values()), report["lines"]


def _generate(run: Path, seconds: float, num: int = 1) -> list[np.ndarray]:
    from txl_audio.checkpoint import load_model
    from txl_audio.generate import generate_tokens

    model, tok, _ = load_model(run, "cpu")
    gen = generate_tokens(model, tok, int(seconds * 16_000), num, num, seed=0, show_progress=False)
    return [np.asarray(tok.decode(r), dtype=np.float64) for r in gen.tokens]


def _assert_within_corpus(run: Path, waves: list[np.ndarray]) -> None:
    from txl_audio.checkpoint import load_checkpoint

    corpus = load_checkpoint(run / "best.pt")["corpus_stats"]
    report = Q.quality_report([(f"sample_{i:03d}", w) for i, w in enumerate(waves)], corpus)
    for s in report["samples"]:
        assert not s["degenerate"], report["lines"]
        assert s["within_corpus"]["rms"] and s["within_corpus"]["loudest"], report["lines"]
        assert s["within_corpus"]["clipped"] and s["within_corpus"]["zcr"], report["lines"]


@pytest.mark.slow  # 40 s
def test_16bit_fitted_prior_samples_stay_in_corpus_range(lossless16_run):
    """The old lossless16 recipe's head (small, 300 steps): 2 s of samples at the corpus's level, no
    sustained clipping. With the prior's prediction (the code before 2026-12-07) both streams reach full
    scale within 0.3 s; with the prior predicting 0 one stream is in range and the other silent; with
    the corpus's long-term predictor and the anchored level (now) both in range."""
    _assert_within_corpus(lossless16_run, _generate(lossless16_run, 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("head, lp_order, lp", [
    ("logistic_mixture", 0, "fitted"), ("dual_softmax", 0, "fitted"), ("dual_softmax", 32, "fitted"),
    ("logistic_mixture", 32, "cascade"), ("dual_softmax", 32, "cascade"),
])
def test_every_16bit_head_stays_in_corpus_range(corpus16, tmp_path, head, lp_order, lp):
    run = _train(corpus16, tmp_path / "run", head, lp_order, lp)
    _assert_within_corpus(run, _generate(run, 2.0, 2))
