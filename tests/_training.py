"""Helpers shared by the training tests: a small synthetic corpus and a tiny run config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from txl_audio.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(path: Path, n_train: int = 12, n_valid: int = 2, length: int = 600, seed: int = 0) -> Path:
    """A mu-law corpus of tone-plus-noise 'files' of varied length (written without audio decoding)."""
    from txl_audio.data import CorpusWriter
    from txl_audio.tokenizers import MuLawTokenizer

    tok = MuLawTokenizer(8)
    rng = np.random.default_rng(seed)
    with CorpusWriter(path, tok, kind="audio", sample_rate=16_000) as w:
        for split, n in (("train", n_train), ("valid", n_valid), ("test", n_valid)):
            for i in range(n):
                m = int(length * rng.uniform(0.5, 1.5))
                t = np.arange(m) / 16_000
                wave = 0.5 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(m)
                w.add(split, tok.encode(np.clip(wave, -1, 1).astype(np.float32)), f"{split}_{i}.wav",
                      speaker=f"s{i}")
        w.commit()
    return path


def tiny_config(corpus: Path, model: dict | None = None, **train) -> RunConfig:
    d = {
        "model": {"vocab_size": 256, "n_layer": 2, "d_model": 32, "n_head": 2, "d_head": 16, "d_inner": 64,
                  "dropout": 0.1, "tgt_len": 16, "mem_len": 16, **(model or {})},
        "data": {"corpus": str(corpus), "eval_batch_size": 4, "max_eval_tokens": 512},
        "train": {"seed": 1, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "max_steps": 10,
                  "log_every": 2, "eval_every": 5, "ckpt_every": 4, "keep_checkpoints": 2, "threads": 1,
                  **train},
    }
    return RunConfig.from_dict(d)


def model_state(ckpt: Path) -> dict:
    from txl_audio.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)["model"]


def same_params(a: dict, b: dict, tol: float = 0.0) -> bool:
    """Same names and values (bit for bit, or within ``tol`` relative to each tensor's largest value)."""
    return a.keys() == b.keys() and all(
        bool(((a[k] - b[k]).abs() <= tol * b[k].abs().max()).all()) if tol else bool((a[k] == b[k]).all())
        for k in a
    )


# A training process for the crash tests: trains, and SIGKILLs itself right after step KILL_AT.
KILL_SCRIPT = r"""
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from txl_audio.config import RunConfig
from txl_audio.train import train
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
kill_at = int(sys.argv[3])
def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, sys.argv[2], progress=False, log=lambda m: None, on_step=on_step)
"""


def run_and_kill(config: RunConfig, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent))
    args = [sys.executable, "-c", script, json.dumps(config.to_dict()), str(out), str(kill_at)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)



def killed_and_resumed(config: RunConfig, tmp: Path, kill_at: int):
    """The uninterrupted run of ``config`` (in tmp/ref) and the same run SIGKILLed after step ``kill_at``
    and resumed (in tmp/run): their TrainResults, for the resume-equals-uninterrupted tests."""
    import signal

    from txl_audio.train import train

    ref = train(config, tmp / "ref", progress=False, log=lambda m: None)
    proc = run_and_kill(config, tmp / "run", kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return ref, train(config, tmp / "run", resume=True, progress=False, log=lambda m: None)
