"""The recipes run end to end (prepare -> train -> evaluate -> generate) on tiny audio and a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
        "--set", "model.d_head=16", "--set", "model.d_inner=64", "--set", "model.tgt_len=32",
        "--set", "model.mem_len=32", "--set", "train.batch_size=2", "--set", "train.max_steps=3",
        "--set", "train.eval_every=3", "--set", "train.ckpt_every=3", "--set", "data.max_eval_tokens=512"]


def speech_commands_like(folder: Path, speakers: int = 8, per_speaker: int = 2, seconds: float = 0.2) -> Path:
    """Tiny keyword-clip folder named like Speech Commands (LABEL/SPEAKER_nohash_N.wav)."""
    rng = np.random.default_rng(0)
    n = int(16_000 * seconds)
    for s in range(speakers):
        for i in range(per_speaker):
            t = np.arange(n) / 16_000
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + 0.02 * rng.standard_normal(n)
            path = folder / ("yes", "no")[i % 2] / f"{s:08x}_nohash_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave.astype(np.float32), 16_000, subtype="PCM_16")
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TXL": f"{sys.executable} -m txl_audio", "OMP_NUM_THREADS": "1", **extra})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _check_run(out: Path, proc: subprocess.CompletedProcess) -> None:
    for name in ("config.toml", "metrics.jsonl", "best.pt", "ckpt_3.pt", "curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "eval_test" / "summary.json").read_text())
    text = json.dumps(summary)
    assert "xz" in text  # the compressor baseline is reported next to the model
    assert "bits per sample" in proc.stdout and "xz" in proc.stdout
    assert list((out / "samples").glob("*.wav")) and list((out / "samples").glob("*.png"))


def test_quickstart_end_to_end(tmp_path):
    data = speech_commands_like(tmp_path / "audio")
    out = tmp_path / "demo"
    env = _env(tmp_path, QUICK="1", DATA=str(data), OUT=str(out), QUICK_GEN_SECONDS="0.01")
    proc = _run(["bash", "recipes/quickstart.sh"], env)
    _check_run(out, proc)
    # the time budget reached the run
    assert "max_time = 180" in (out / "config.toml").read_text()


# both recipes share recipes/audio_recipe.sh; the second differs only in its prepare-audio split options
@pytest.mark.parametrize(
    "recipe", ["speech_commands.sh", pytest.param("read_speech.sh", marks=pytest.mark.slow)])
def test_audio_recipe_end_to_end(tmp_path, recipe):
    data = speech_commands_like(tmp_path / "audio")
    out = tmp_path / "run"
    env = _env(tmp_path, OUT=str(out), CONFIG="recipes/configs/tiny_cpu.toml", GEN_SECONDS="0.01",
               GEN_NUM="1")
    proc = _run(["bash", f"recipes/{recipe}", str(data), *TINY], env)
    _check_run(out, proc)


def test_recipe_names_a_missing_data_folder(tmp_path):
    proc = subprocess.run(["bash", "recipes/speech_commands.sh", str(tmp_path / "nope")], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "nope" in proc.stderr


def test_configs_load_and_audio_base_memory_spans_over_1_5_s():
    from txl_audio.config import load_config

    for name in ("tiny_cpu", "audio_small", "audio_base"):
        cfg = load_config(ROOT / "recipes" / "configs" / f"{name}.toml")
        assert cfg.model.vocab_size == 256
        assert cfg.train.batch_size % cfg.train.grad_accum == 0
    long = load_config(ROOT / "recipes" / "configs" / "audio_long_cmem.toml").model  # recipes/long_range.sh
    assert long.mem_len / 16_000 >= 1.0 and long.cmem_len * long.cmem_ratio / 16_000 >= 3.0
    assert (long.tgt_len + long.mem_len + long.cmem_len * long.cmem_ratio) / 16_000 > 4.0
    base = load_config(ROOT / "recipes" / "configs" / "audio_base.toml").model
    assert base.n_layer == 12 and base.d_model == 512
    assert base.tgt_len >= 2048 and base.mem_len >= 2048 and base.n_layer * base.mem_len / 16_000 > 1.5
    assert shutil.which("bash")


@pytest.mark.slow  # 85 s: five trainings and a context analysis; the other recipe tests cover the stages
def test_audio_baselines_end_to_end(tmp_path):
    """Transformer-XL, no memory and absolute positions trained with the same steps, one table, one
    context analysis of the three on the same held-out clips."""
    data = speech_commands_like(tmp_path / "audio")
    out = tmp_path / "ab"
    env = _env(tmp_path, OUT=str(out), STEPS="3", MEM_LENS="0,32", PREPARE="--valid 0.2 --test 0.3")
    proc = _run(["bash", "recipes/audio_baselines.sh", str(data), *TINY], env)
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # no header
    assert [r[1].strip() for r in rows] == ["Transformer-XL", "no memory (mem_len 0)", "absolute positions",
                                            "rotary positions, same memory",
                                            "compressive, rate 4, same attention cost",
                                            "compressive, rate 8, same attention cost"]
    assert all(0 < float(r[-3]) < 9 for r in rows)  # bits per sample, a number for each
    assert all(float(r[8].replace(",", "")) > 0 for r in rows)  # training tokens/s
    assert "xz -9e on the same tokens" in proc.stdout
    for run, attention, mem, cmem in (("xl", "relative", 32, 0), ("no_memory", "relative", 0, 0),
                                      ("absolute", "absolute", 0, 0), ("rotary", "rotary", 32, 0),
                                      ("cmem4", "relative", 16, 16), ("cmem8", "relative", 16, 16)):
        cfg = (out / run / "config.toml").read_text()
        assert f'attention = "{attention}"' in cfg and f"mem_len = {mem}\n" in cfg
        assert f"cmem_len = {cmem}\n" in cfg
        assert "max_steps = 3\n" in cfg  # equal compute: the same steps for all
    assert "cmem_ratio = 8\n" in (out / "cmem8" / "config.toml").read_text()
    span = (out / "context" / "context_span.csv").read_text()
    assert all(str(out / run) in span for run in ("xl", "no_memory", "absolute", "rotary", "cmem4", "cmem8"))
    # the compressive runs' span counts their compressed reach: memory + segment + 16 slots x 8
    assert any(line.startswith(f"{out / 'cmem8'},relative,32,") and line.endswith(",16,8")
               for line in span.splitlines())
    assert (out / "context" / "nll_vs_context.png").stat().st_size > 0

