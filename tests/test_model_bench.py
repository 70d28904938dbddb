"""The model speed benchmark keeps running (tiny configuration) and its decoders agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import model_speed  # noqa: E402


def test_quick_benchmark_runs_and_writes_json(tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        res = model_speed.run(quick=True, out=tmp_path / "speed.json", threads=1)
    finally:
        torch.set_num_threads(n)
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["config"]["n_layer"] == res["config"]["n_layer"]
    for key in ("train", "eval"):
        assert saved[key]["ours"] > 0 and saved[key]["einsum"] > 0
    for b in (1, 16):
        # cached decoding and feeding memories back must pick the same greedy tokens
        assert saved[f"decode_b{b}"]["same_tokens"] is True
    assert "training" in capsys.readouterr().out
