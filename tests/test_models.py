"""The named models shipped in the package: each loads with weights_only, is the model its README names
(id, parameter count), and works out of the box: `txl-audio compress FILE` with no --model uses speech16
and gives back the file's samples; every command that takes a checkpoint takes a name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import txl_audio
from txl_audio import codec
from txl_audio.cli import main
from txl_audio.models import FOLDER, NAMED, named_path

ROOT = Path(__file__).resolve().parents[1]
CLIP = sorted((ROOT / "data" / "speech_commands_v002_test").rglob("*.flac"))[0]


@pytest.mark.parametrize("name", sorted(NAMED))
def test_shipped_model_is_the_one_its_readme_names(name):
    path = named_path(name)
    assert path is not None and path.is_file(), f"{path}: the shipped model is missing"
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"model", "config", "tokenizer"} and "optimizer" not in state
    assert all(v.dtype != torch.float64 for v in state["model"].values())  # float32 weights only
    cm = codec.load_coding_model(name)
    readme = (FOLDER / "README.md").read_text().splitlines()
    row = next(line for line in readme if line.startswith(f"| `{name}` |"))
    assert f"`{cm.id.hex()}`" in row, (name, cm.id.hex(), row)
    params = int(re.search(r"\| ([\d,]+) \|", row).group(1).replace(",", ""))
    assert params == sum(p.numel() for p in cm.model.parameters())


def test_compress_without_a_model_uses_speech16_and_round_trips(tmp_path):
    x = sf.read(CLIP, dtype="int16")[0]
    wav = tmp_path / "clip.wav"
    sf.write(wav, x, 16_000, subtype="PCM_16")
    assert main(["compress", str(wav), "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    f = tmp_path / "c" / "clip.txla"
    c = codec.parse_container(f.read_bytes(), f.name)
    assert c.model_id == codec.load_coding_model("speech16").id
    assert f.stat().st_size - sum(n for _, n, _ in c.groups) <= 48  # the container, for a named model
    assert main(["decompress", str(f), "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert np.array_equal(sf.read(tmp_path / "d" / "clip.wav", dtype="int16")[0], x)
    # the shipped model codes this held-out-speaker-like clip well below 16 bits
    assert 8 * f.stat().st_size / len(x) < 12


def test_names_work_where_a_checkpoint_goes(tmp_path):
    m = txl_audio.load("speech8")
    assert m.name == "speech8"
    s = m.score(CLIP)
    assert 0 < s.mean_bits < 8
    assert main(["evaluate", "speech8", "--audio", str(CLIP), "--no-progress", "--no-baselines",
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["generate", "speech8", "--out", str(tmp_path / "g"), "--seconds", "0.05", "--num", "1",
                 "--device", "cpu", "--no-plots"]) == 0
    assert not (FOLDER / "eval_files").exists()  # nothing written into the package


@pytest.fixture(scope="module")
def bundled_figures() -> dict:
    """The quality figures of every bundled Speech Commands clip (computed once for all models)."""
    from txl_audio.quality import summarize, wave_stats

    return summarize([wave_stats(sf.read(f, dtype="float32")[0])
                      for f in sorted((ROOT / "data" / "speech_commands_v002_test").rglob("*.flac"))])


@pytest.mark.parametrize("name", sorted(NAMED))
def test_shipped_model_carries_its_training_corpus_figures(name, bundled_figures):
    """`generate` puts each sample beside the training audio's figures (issue 28); a shipped model
    without them (speech16 was, until 2026-12-07) prints "figures not known" and checks nothing. The
    figures must be those of the speech it was trained on: the bundled clips (the same recordings'
    test split: 593 clips of other speakers) have a median RMS within 3 dB and a median ZCR within 25%
    (-25.8 dBFS and 0.116 against the training split's -24.4 and 0.135)."""
    stats = torch.load(named_path(name), weights_only=True).get("corpus_stats")
    assert stats is not None, f"{name}: no corpus_stats in the shipped file"
    bundled = bundled_figures
    assert abs(stats["rms_dbfs"]["p50"] - bundled["rms_dbfs"]["p50"]) < 3.0
    assert abs(stats["zcr"]["p50"] / bundled["zcr"]["p50"] - 1) < 0.25
    _, report = txl_audio.load(name).generate(tokens=1600, num=1, seed=0, return_report=True)
    assert report["corpus"] == stats and "within_corpus" in report["samples"][0]
    assert not any("figures not known" in line for line in report["lines"])
    lp = getattr(txl_audio.load(name).model, "lp", None)
    if lp is not None:  # a 16-bit prior samples with the corpus's long-term predictor (issue 28)
        assert "long_term" in stats and lp.long_term is not None


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.numerics
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])])
@pytest.mark.parametrize("name", ["speech8", "speech16"])
def test_files_made_on_another_machine_decode_bit_for_bit(name, device, tmp_path):
    """tests/data/v3_{name}.txla: CLIP compressed with the shipped model on an AMD EPYC (Zen 4, AVX-512,
    torch 2.13.0+cpu, 2 threads; 2026-12-07), where the suite's own round trips ran on Intel Xeons.
    Decoded here (and in CI under other ATEN_CPU_CAPABILITY values), it gives the clip back exactly:
    its samples (speech16) or their mu-law codes (speech8). If a shipped model is retrained, its id
    changes and these files must be made again (`txl-audio compress CLIP --model NAME`). On a GPU
    (`pytest -m cuda`, which benchmarks/gpu_check.sh runs) the same files decode on the card."""
    f = ROOT / "tests" / "data" / f"v3_{name}.txla"
    c = codec.parse_container(f.read_bytes(), f.name)
    cm = codec.load_coding_model(name)
    assert c.model_id == cm.id, f"{f.name} was made with another {name}: make it again"
    assert main(["decompress", str(f), "--out", str(tmp_path), "--no-progress", "--device", device]) == 0
    back = sf.read(tmp_path / f"v3_{name}.wav", dtype="int16" if name == "speech16" else "float32")[0]
    if name == "speech16":
        assert np.array_equal(back, sf.read(CLIP, dtype="int16")[0])
    else:
        tok = cm.tokenizer
        want = np.asarray(tok.encode(sf.read(CLIP, dtype="float32")[0]))
        assert np.array_equal(np.asarray(tok.encode(back)), want)
