"""The Python API (txl_audio.load -> Model): each method gives the numbers or samples of the command that
shares its library function, inputs are read as the commands read them, mistakes are TxlAudioErrors
naming the thing, and the README's Python example runs as written."""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import txl_audio
from txl_audio.checkpoint import save_checkpoint
from txl_audio.cli import main
from txl_audio.config import ModelConfig, RunConfig
from txl_audio.model import TransformerXL
from txl_audio.tokenizers import ByteTokenizer, MuLawTokenizer

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(path: Path, tokenizer, seed: int = 0, **model) -> Path:
    kw = dict(vocab_size=256, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0,
              tgt_len=16, mem_len=16)
    cfg = ModelConfig(**{**kw, **model})
    torch.manual_seed(seed)
    net = TransformerXL(cfg)
    with torch.no_grad():  # spread-out predictions: a wrong context or a wrong token shows in the numbers
        for p in net.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    save_checkpoint(path, {"model": net.state_dict(), "config": RunConfig(model=cfg).to_dict(),
                           "tokenizer": tokenizer.to_dict(), "step": 0})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny mu-law checkpoint in a run folder, a byte-level text checkpoint, and an 8 kHz stereo WAV
    (so reading it resamples and mixes down)."""
    d = tmp_path_factory.mktemp("api")
    write_checkpoint(d / "run" / "best.pt", MuLawTokenizer(8))
    write_checkpoint(d / "run" / "ckpt_5.pt", MuLawTokenizer(8), seed=1)  # best.pt wins in a folder
    write_checkpoint(d / "text.pt", ByteTokenizer(), tgt_len=8, mem_len=8)
    t = np.arange(800) / 8000
    left = 0.5 * np.sin(2 * np.pi * 300 * t) + 0.05 * np.random.default_rng(0).standard_normal(800)
    stereo = np.stack([left, 0.3 * np.sin(2 * np.pi * 500 * t)], axis=1).astype(np.float32)
    sf.write(d / "clip.wav", stereo, 8000, subtype="PCM_16")
    (d / "text.txt").write_text("the cat sat on the mat.\nthe dog sat on the log.\n")
    return d


@pytest.fixture(scope="module")
def model(files):
    return txl_audio.load(files / "run", device="cpu")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- load --------------------------------------------------------------------------------------------


def test_load_reads_best_pt_of_a_run_folder_and_equals_loading_the_file(files, model):
    assert model.path == files / "run" / "best.pt"
    assert model.device == torch.device("cpu") and model.sample_rate == 16_000 and model.dtype is None
    direct = txl_audio.load(files / "run" / "best.pt", device="cpu")
    other = txl_audio.load(str(files / "run" / "ckpt_5.pt"))
    state, same, different = model.model.state_dict(), direct.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state)
    assert model.config.model.tgt_len == 16 and model.tokenizer.to_dict() == MuLawTokenizer(8).to_dict()


# ---- score == txl-audio evaluate ------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [[], ["--mem-len", "4", "--tgt-len", "8"]])
def test_score_equals_the_evaluate_command(files, model, tmp_path, lengths):
    out = tmp_path / "eval"
    assert main(["evaluate", str(files / "run"), "--audio", str(files / "clip.wav"), "--out", str(out),
                 "--device", "cpu", "--no-progress", "--no-baselines", *lengths]) == 0
    summary = json.loads((out / "summary.json").read_text())
    row = read_csv(out / "per_file.csv")[0]
    kw = dict(zip(("mem_len", "tgt_len"), map(int, lengths[1::2])))
    score = model.score(files / "clip.wav", **kw)
    assert score.predictions == summary["tokens"] == int(row["tokens"]) == 1599  # 0.1 s at 16 kHz, less one
    assert score.mean_bits == pytest.approx(summary["bits_per_token"], rel=1e-12)
    assert f"{score.mean_bits:.6f}" == row["bits_per_sample"]
    assert (score.mem_len, score.tgt_len) == (summary["mem_len"], summary["tgt_len"])
    assert (score.device, score.dtype, score.metric) == ("cpu", "fp32", "bits per sample")
    # the per-sample losses are the summary's, and each sits at its sample's time
    assert score.bits.shape == (1599,) and score.bits.sum() == pytest.approx(score.total_bits, rel=1e-9)
    assert score.total_bits / score.predictions == pytest.approx(score.mean_bits, rel=1e-12)
    assert score.times[0] == 1 / 16_000 and score.times[-1] == 1599 / 16_000  # the predicted samples


def test_score_of_a_compressive_model_equals_the_command_with_cmem_len(files, tmp_path):
    ckpt = write_checkpoint(tmp_path / "cmem.pt", MuLawTokenizer(8), tgt_len=8, mem_len=8, cmem_len=4,
                            cmem_ratio=2)
    cmem = txl_audio.load(ckpt, device="cpu")
    for flag in ([], ["--cmem-len", "0"]):
        out = tmp_path / f"eval{len(flag)}"
        assert main(["evaluate", str(ckpt), "--audio", str(files / "clip.wav"), "--out", str(out), "--device",
                     "cpu", "--no-progress", "--no-baselines", *flag]) == 0
        summary = json.loads((out / "summary.json").read_text())
        score = cmem.score(files / "clip.wav", cmem_len=int(flag[1]) if flag else None)
        assert score.cmem_len == (0 if flag else 4)
        assert score.mean_bits == pytest.approx(summary["bits_per_token"], rel=1e-12)
    assert score.mean_bits != pytest.approx(cmem.score(files / "clip.wav").mean_bits, rel=1e-6)


def test_score_of_an_array_equals_score_of_the_file(files, model):
    """Samples at their own rate, (N, C) or (C, N), numpy or torch, are read as the file is: mixed down
    and resampled to 16 kHz with soxr."""
    from_file = model.score(str(files / "clip.wav"))
    wave, rate = sf.read(files / "clip.wav", dtype="float32")  # (800, 2) at 8 kHz
    for samples in (wave, torch.from_numpy(wave.T.copy()), (wave * 32768).round().astype(np.int16)):
        s = model.score(samples, sample_rate=rate)
        np.testing.assert_array_equal(s.bits, from_file.bits)
        assert s.source == "array"
    # at another rate it is other audio: the check can tell
    assert model.score(wave, sample_rate=16_000).predictions == 799


def test_score_memory_changes_the_later_samples_only(model, files):
    """mem_len 0 with short segments forgets what a long memory keeps: the first segment is the same,
    later predictions differ."""
    full = model.score(files / "clip.wav", mem_len=64, tgt_len=8)
    none = model.score(files / "clip.wav", mem_len=0, tgt_len=8)
    np.testing.assert_allclose(full.bits[:8], none.bits[:8], rtol=1e-5)
    assert np.abs(full.bits[8:] - none.bits[8:]).max() > 1e-3


def test_text_checkpoint_scores_a_text_file_or_a_string_as_the_command_does(files, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(files / "text.pt"), "--audio", str(files / "text.txt"), "--out", str(out),
                 "--device", "cpu", "--no-progress", "--no-baselines"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    text_model = txl_audio.load(files / "text.pt", device="cpu")
    from_file = text_model.score(files / "text.txt")
    assert from_file.mean_bits == pytest.approx(summary["bits_per_token"], rel=1e-12)
    assert from_file.metric == summary["metric"] == "bits per character" and from_file.sample_rate is None
    from_str = text_model.score(text=(files / "text.txt").read_text())
    np.testing.assert_array_equal(from_str.bits, from_file.bits)
    assert text_model.score(text="the cat").predictions == 6


# ---- generate == txl-audio generate ------------------------------------------------------------------


def test_generate_gives_the_samples_of_the_generate_command(files, model, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", str(files / "run"), "--out", str(out), "--seconds", "0.01", "--num", "3",
                 "--batch-size", "2", "--prompt", str(files / "clip.wav"), "--prompt-seconds", "0.005",
                 "--top-k", "50", "--seed", "5", "--device", "cpu", "--no-plots"]) == 0
    audio = model.generate(0.01, num=3, prompt=files / "clip.wav", prompt_seconds=0.005, top_k=50, seed=5,
                           batch_size=2)
    assert audio.shape == (3, 80 + 160) and audio.dtype == np.float32
    for i in range(3):
        txl_audio.save_audio(tmp_path / f"api_{i}.wav", audio[i])  # the command's float -> 16-bit rounding
        ours, _ = sf.read(tmp_path / f"api_{i}.wav", dtype="int16")
        theirs, rate = sf.read(out / f"sample_{i:03d}.wav", dtype="int16")
        assert rate == 16_000
        np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(audio[0, 80:], audio[1, 80:])
    # the prompt is what the model heard, and can be left out
    new = model.generate(0.01, num=3, prompt=files / "clip.wav", prompt_seconds=0.005, top_k=50, seed=5,
                         batch_size=2, include_prompt=False)
    np.testing.assert_array_equal(new, audio[:, 80:])
    # a prompt given as samples (stereo, 8 kHz) is read as the file is
    wave, rate = sf.read(files / "clip.wav", dtype="float32")
    again = model.generate(0.01, num=3, prompt=wave, sample_rate=rate, prompt_seconds=0.005, top_k=50,
                           seed=5, batch_size=2)
    np.testing.assert_array_equal(again, audio)


def test_generate_unconditional_seeds(model):
    a = model.generate(tokens=50, num=2, seed=1)
    assert a.shape == (2, 50)
    np.testing.assert_array_equal(model.generate(tokens=50, num=2, seed=1), a)
    assert not np.array_equal(model.generate(tokens=50, num=2, seed=2), a)
    assert not np.array_equal(model.generate(tokens=50, seed=None), model.generate(tokens=50, seed=None))


def test_text_generation_equals_the_command(files, tmp_path):
    (tmp_path / "prompt.txt").write_text("the cat ")
    out = tmp_path / "gen"
    assert main(["generate", str(files / "text.pt"), "--out", str(out), "--tokens", "20", "--num", "2",
                 "--prompt", str(tmp_path / "prompt.txt"), "--seed", "3", "--device", "cpu"]) == 0
    text_model = txl_audio.load(files / "text.pt", device="cpu")
    texts = text_model.generate(tokens=20, num=2, prompt=tmp_path / "prompt.txt", seed=3)
    written = [open(out / f"sample_{i:03d}.txt", encoding="utf-8", newline="").read() for i in range(2)]
    assert texts == written  # (newline="": random bytes include carriage returns)
    assert all(t.startswith("the cat ") for t in texts) and texts[0] != texts[1]
    assert text_model.generate(tokens=20, num=2, prompt_text="the cat ", seed=3) == texts


# ---- context_curve == txl-audio context -----------------------------------------------------------


def test_context_curve_equals_the_context_command(files, model, tmp_path):
    out = tmp_path / "ctx"
    assert main(["context", str(files / "run" / "best.pt"), "--audio", str(files / "clip.wav"),
                 "--mem-lens", "0,4,64", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    rows = read_csv(out / "context_span.csv")
    curve = model.context_curve(files / "clip.wav", mem_lens=[0, 4, 64])
    assert curve.mem_lens == [int(r["mem_len"]) for r in rows] == [0, 4, 64]
    assert [f"{b:.6f}" for b in curve.bits] == [r["bits_per_token"] for r in rows]
    assert curve.bits[0] != curve.bits[2]  # memory matters for this model
    # the middle memory length is score's number at that setting
    assert curve.bits[1] == pytest.approx(model.score(files / "clip.wav", mem_len=4).mean_bits, rel=1e-9)


# ---- compress / decompress == the codec commands ------------------------------------------------------


def test_compress_and_decompress_are_the_codec_commands(files, model, tmp_path):
    pytest.importorskip("constriction")
    ckpt = str(files / "run" / "best.pt")
    assert main(["compress", ckpt, str(files / "clip.wav"), "--out", str(tmp_path / "cli"), "--chunk", "400",
                 "--no-progress"]) == 0
    report = model.compress(files / "clip.wav", tmp_path / "api", chunk=400)
    assert [r.path.name for r in report.results] == ["clip.txla"] and report.samples == 1600
    assert (tmp_path / "api" / "clip.txla").read_bytes() == (tmp_path / "cli" / "clip.txla").read_bytes()
    back = model.decompress([tmp_path / "api" / "clip.txla"], tmp_path / "wav")
    assert back.results[0].samples == 1600
    assert main(["decompress", str(tmp_path / "cli"), "--out", str(tmp_path / "cli_wav"),
                 "--no-progress"]) == 0
    decoded, _ = sf.read(tmp_path / "wav" / "clip.wav", dtype="float32")
    assert (tmp_path / "wav" / "clip.wav").read_bytes() == (tmp_path / "cli_wav" / "clip.wav").read_bytes()
    # an 8-bit model gives back the codes: the decoded waveform encodes to the file's codes
    tok = model.tokenizer
    codes = tok.encode(txl_audio.load_audio(files / "clip.wav"))
    np.testing.assert_array_equal(tok.encode(decoded), codes)
    assert torch.get_num_threads() == 1  # the codec's thread setting did not leak


# ---- errors --------------------------------------------------------------------------------------------


def test_mistakes_are_txl_audio_errors_naming_the_thing_as_on_the_command_line(files, model, tmp_path,
                                                                              capsys):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(txl_audio.CheckpointError, match="nothing.pt: checkpoint not found") as e:
        txl_audio.load(missing)
    assert main(["evaluate", str(missing), "--audio", str(files / "clip.wav")]) == 1
    assert str(e.value) in capsys.readouterr().err  # the same message as the command's
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(txl_audio.TxlAudioError, match="empty_run: run directory holds no checkpoint"):
        txl_audio.load(tmp_path / "empty_run")

    with pytest.raises(txl_audio.ArgumentTypeError, match="audio must be a path, a numpy array or a "
                                                            "torch tensor, got int 123"):
        model.score(123)
    with pytest.raises(TypeError, match="path must be"):  # an ArgumentTypeError is a TypeError too
        txl_audio.load(3.5)

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file at all" * 10)
    with pytest.raises(txl_audio.AudioError, match=re.escape(str(bad))) as e:
        model.score(bad)
    assert main(["evaluate", str(files / "run"), "--audio", str(bad), "--device", "cpu"]) == 1
    assert str(e.value) in capsys.readouterr().err
    with pytest.raises(txl_audio.AudioError, match="gone.wav: no such file"):
        model.score(tmp_path / "gone.wav")
    with pytest.raises(txl_audio.AudioError, match="NaN"):
        model.score(np.full(100, np.nan, np.float32))

    for call, match in [
        (lambda: model.generate(seconds=-1), "seconds must be positive"),
        (lambda: model.generate(0.01, temperature=-1), "temperature must be"),
        (lambda: model.generate(0.01, num=0), "num must be >= 1"),
        (lambda: model.score(files / "clip.wav", mem_len=-2), "mem_len must be >= 0"),
        (lambda: model.score(files / "clip.wav", sample_rate=8000), "sample_rate must be None when audio"),
        (lambda: txl_audio.load(files / "run", device="tpu"), "device must be auto, cpu or cuda"),
        (lambda: txl_audio.load(files / "run", dtype="fp16"), "dtype must be None, 'fp32' or 'bf16'"),
        (lambda: model.generate(tokens=5, prompt_text="hi"), "prompt_text must be None for an audio model"),
        (lambda: model.context_curve(files / "clip.wav", mem_lens=5), "mem_lens must be a non-empty list"),
    ]:
        with pytest.raises(txl_audio.TxlAudioError, match=match):
            call()


# ---- the package's exports ---------------------------------------------------------------------------


def test_import_is_light_and_every_export_resolves_with_a_docstring():
    code = ("import sys, txl_audio; assert 'torch' not in sys.modules and 'numpy' not in sys.modules;"
            "print(len(txl_audio.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in txl_audio.__all__:
        value = getattr(txl_audio, name)
        if name != "__version__":
            assert len(inspect.getdoc(value) or "") > 40, f"txl_audio.{name} needs a docstring"
    assert set(txl_audio.__all__) <= set(dir(txl_audio))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        txl_audio.nope  # noqa: B018


def test_train_export_trains_and_load_reads_its_best_checkpoint(tmp_path):
    """txl_audio.train is the training function whatever was imported before it (the command imports
    the submodule), and its run folder is what load reads."""
    from _training import make_corpus, tiny_config

    import txl_audio.train as train_module

    assert txl_audio.train is train_module and callable(txl_audio.train)
    assert inspect.signature(txl_audio.train) == inspect.signature(train_module.train)
    config = tiny_config(make_corpus(tmp_path / "corpus", n_train=4, length=200), max_steps=2,
                         eval_every=2, ckpt_every=2)
    result = txl_audio.train(config, tmp_path / "run", progress=False, log=lambda m: None)
    assert result.step == 2 and (tmp_path / "run" / "best.pt").is_file()
    loaded = txl_audio.load(tmp_path / "run", device="cpu")
    assert loaded.path.name == "best.pt" and loaded.config.model.n_layer == 2


# ---- the README's Python example, as written -----------------------------------------------------------


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has no Python example"
    # runs/demo as `make demo` leaves it (a smaller model than the demo's, for time) and the bundled data
    write_checkpoint(tmp_path / "runs" / "demo" / "best.pt", MuLawTokenizer(8), n_layer=1)
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert sf.info(tmp_path / "generated.wav").frames == 16_000


# ---- GPU (run with -m cuda on a machine with one) -----------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_score_and_bf16_generation_equal_the_commands(files, tmp_path):
    """On CUDA the API decodes with a bf16 copy of the weights (the command converts its own model):
    the same samples with the same seed; scoring stays fp32 as the command's default."""
    cuda = txl_audio.load(files / "run", device="cuda")
    assert main(["generate", str(files / "run"), "--out", str(tmp_path / "gen"), "--tokens", "300", "--num",
                 "2", "--seed", "4", "--device", "cuda", "--no-plots"]) == 0
    audio = cuda.generate(tokens=300, num=2, seed=4)
    assert next(cuda.model.parameters()).dtype == torch.float32  # the bf16 copy is a copy
    for i in range(2):
        txl_audio.save_audio(tmp_path / f"api_{i}.wav", audio[i])
        ours, _ = sf.read(tmp_path / f"api_{i}.wav", dtype="int16")
        theirs, _ = sf.read(tmp_path / "gen" / f"sample_{i:03d}.wav", dtype="int16")
        np.testing.assert_array_equal(ours, theirs)
    assert main(["evaluate", str(files / "run"), "--audio", str(files / "clip.wav"), "--out",
                 str(tmp_path / "eval"), "--device", "cuda", "--no-progress", "--no-baselines"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    score = cuda.score(files / "clip.wav")
    assert score.dtype == "fp32" and score.device.startswith("cuda")
    assert score.mean_bits == pytest.approx(summary["bits_per_token"], rel=1e-9)
