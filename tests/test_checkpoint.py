"""Checkpoints: a killed run resumes into exactly the uninterrupted run; corrupt files are reported."""

from __future__ import annotations

import json
import random
import signal

import numpy as np
import pytest
import torch
from _training import killed_and_resumed, make_corpus, model_state, run_and_kill, same_params, tiny_config

from txl_audio.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from txl_audio.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """The reference: 10 steps in one go (checkpoints at 4 and 8, the last at 10)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = train(tiny_config(corpus), out, progress=False, log=lambda m: None)
    return out, r


def test_killed_run_resumes_to_identical_parameters(corpus, uninterrupted, tmp_path):
    ref_dir, ref = uninterrupted
    out = tmp_path / "run"
    # the process dies by SIGKILL after step 6: ckpt_4 is on disk, steps 5-6 are lost
    proc = run_and_kill(tiny_config(corpus), out, kill_at=6)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_4.pt"]
    logs = []
    r = train(tiny_config(corpus), out, resume=True, progress=False, log=logs.append)
    assert r.resumed_from == 4 and r.step == 10
    assert any("ckpt_4.pt" in m for m in logs)
    # same losses for the steps run after the resume, same final weights, optimizer state and memory
    assert r.losses == ref.losses[4:]
    a, b = load_checkpoint(ref.checkpoint), load_checkpoint(r.checkpoint)
    assert same_params(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma, mb = a["ranks"][0]["mems"][0]["hidden"], b["ranks"][0]["mems"][0]["hidden"]
    assert len(ma) == len(mb) > 0 and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]
    # the metrics of the lost steps were replaced, not duplicated
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == [2, 4, 6, 8, 10]


def test_killed_rotary_run_resumes_to_identical_parameters(corpus, tmp_path):
    """The same for rotary attention (its memory is hidden states, rotated afresh in every segment)."""
    cfg = tiny_config(corpus, model={"attention": "rotary"}, max_steps=6)
    ref, r = killed_and_resumed(cfg, tmp_path, kill_at=5)
    assert r.resumed_from == 4 and r.losses == ref.losses[4:]
    assert same_params(load_checkpoint(ref.checkpoint)["model"], load_checkpoint(r.checkpoint)["model"])


def test_truncated_newest_checkpoint_is_reported_and_the_previous_used(corpus, uninterrupted, tmp_path):
    import shutil

    ref_dir, ref = uninterrupted
    out = tmp_path / "run"
    train(tiny_config(corpus, keep_checkpoints=3), out, progress=False, log=lambda m: None)
    (out / "ckpt_10.pt").unlink()  # as if the run had been killed after step 8
    ckpt8 = out / "ckpt_8.pt"
    data = ckpt8.read_bytes()
    ckpt8.write_bytes(data[: len(data) // 2])  # a disk-full / copy accident
    logs = []
    r = train(tiny_config(corpus), out, resume=True, progress=False, log=logs.append)
    assert any(str(ckpt8) in m and "truncated or corrupt" in m for m in logs)
    assert r.resumed_from == 4 and r.step == 10
    assert same_params(model_state(ref.checkpoint), model_state(r.checkpoint))
    # nothing valid at all: a clear error naming the files
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in out.glob("ckpt_*.pt"):
        shutil.copy(p, bad / p.name)
        (bad / p.name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        train(tiny_config(corpus), bad, resume=True, progress=False, log=lambda m: None)


def test_resume_without_checkpoint_or_with_another_model_is_an_error(corpus, uninterrupted, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_config(corpus), tmp_path / "empty", resume=True, progress=False, log=lambda m: None)
    ref_dir, _ = uninterrupted
    other = tiny_config(corpus, max_steps=12).with_overrides(["model.d_model=48"])
    with pytest.raises(CheckpointError, match="d_model"):
        train(other, ref_dir, resume=True, progress=False, log=lambda m: None)


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    save_checkpoint(tmp_path / "s.pt", {"model": {}, "config": {}, "rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])


def test_to_plain_makes_numpy_state_weights_only_loadable(tmp_path):
    state = {"a": np.arange(3, dtype=np.int32), "b": (np.int64(4), np.float32(0.5)), "c": [{"d": "x"}]}
    save_checkpoint(tmp_path / "p.pt", {"model": {}, "config": {}, "s": to_plain(state)})
    s = load_checkpoint(tmp_path / "p.pt")["s"]
    assert s["a"].tolist() == [0, 1, 2] and s["b"] == [4, 0.5] and s["c"] == [{"d": "x"}]


def test_prune_keeps_the_newest_and_latest_skips_corrupt(tmp_path):
    for step in (1, 5, 10, 20):
        save_checkpoint(tmp_path / f"ckpt_{step}.pt", {"model": {}, "config": {}, "step": step})
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["ckpt_1.pt", "ckpt_5.pt"]
    (tmp_path / "ckpt_20.pt").write_bytes(b"\x00" * 10)
    seen = []
    path, state = latest_checkpoint(tmp_path, report=seen.append)
    assert path.name == "ckpt_10.pt" and state["step"] == 10 and "ckpt_20.pt" in seen[0]
