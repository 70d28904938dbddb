"""DistributedDataParallel: 2 processes under torchrun (gloo, CPU) train exactly like 1 process with the
same global batch, and their checkpoint holds both ranks' states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _training import ROOT, make_corpus, model_state, tiny_config

from txl_audio.train import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
from txl_audio.config import RunConfig
from txl_audio.train import train
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
r = train(cfg, sys.argv[2], resume=len(sys.argv) > 4, progress=False, log=lambda m: None)
if int(os.environ["RANK"]) == 0:
    with open(sys.argv[3], "w") as f:
        json.dump({{"losses": r.losses, "valid": r.valid, "world": int(os.environ["WORLD_SIZE"])}}, f)
"""


def _config(corpus: Path):
    cfg = tiny_config(corpus, max_steps=5, batch_size=4, eval_every=5, ckpt_every=5)
    # dropout masks are drawn per process: equal only without it
    return cfg.with_overrides(["model.dropout=0.0", "data.max_eval_tokens=0"])


def test_two_processes_match_one(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=7, length=500)
    cfg = _config(corpus)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    result = tmp_path / "result.json"

    def torchrun(config, *extra):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(script), json.dumps(config.to_dict()), str(tmp_path / "ddp"), str(result), *extra],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(result.read_text())

    ddp = torchrun(cfg)
    assert ddp["world"] == 2
    single = train(cfg, tmp_path / "single", progress=False, log=lambda m: None)
    # the ranks hold different numbers of ignored targets (file ends): the global normalisation must
    # still give the single-process loss and gradient
    assert ddp["losses"] == pytest.approx(single.losses, abs=1e-5)
    assert ddp["valid"]["loss_nats"] == pytest.approx(single.valid["loss_nats"], abs=1e-5)
    assert ddp["valid"]["tokens"] == single.valid["tokens"]
    a, b = model_state(tmp_path / "ddp" / "ckpt_5.pt"), model_state(single.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # both ranks' stream positions and memories are in the checkpoint, so both can resume
    state = torch.load(tmp_path / "ddp" / "ckpt_5.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["mems"][0]["hidden"][0].shape[0] == 2  # 2 of the 4 streams each
    # resuming the 2-process run continues both ranks' streams: still the single-process run
    longer = _config(corpus).with_overrides(["train.max_steps=7"])
    ddp2 = torchrun(longer, "--resume")
    single2 = train(longer, tmp_path / "single", resume=True, progress=False, log=lambda m: None)
    assert ddp2["losses"] == pytest.approx(single2.losses, abs=1e-5) and len(ddp2["losses"]) == 2


def test_two_processes_match_one_with_a_trained_compression(tmp_path):
    """A compressive model with the conv compression: the reconstruction loss (a mean per rank, equal
    batch shares) averaged by DDP is the single process's, and the compressed memories go along."""
    corpus = make_corpus(tmp_path / "corpus", n_train=7, length=500)
    cfg = _config(corpus).with_overrides(["model.cmem_len=4", "model.cmem_ratio=4", "model.cmem_fn=conv"])
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(cfg.to_dict()), str(tmp_path / "ddp"), str(result)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = train(cfg, tmp_path / "single", progress=False, log=lambda m: None)
    assert json.loads(result.read_text())["losses"] == pytest.approx(single.losses, abs=1e-5)
    a, b = model_state(tmp_path / "ddp" / "ckpt_5.pt"), model_state(single.checkpoint)
    assert any(k.startswith("compress.") for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    state = torch.load(tmp_path / "ddp" / "ckpt_5.pt", weights_only=True)
    assert len(state["ranks"][0]["mems"][0]["cmem_pos"]) > 0
