"""The GPU benchmark script runs (on CPU, tiny sizes) and reports what it measured, so it does not
rot between the sessions that have a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_speed  # noqa: E402


def test_gpu_speed_script_runs_on_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "gpu.json"
    assert gpu_speed.main(["--device", "cpu", "--quick", "--dtype", "fp32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["config"] for r in res["rows"]] == ["audio_small", "audio_base"]
    for row in res["rows"]:
        for mode in ("train", "eval"):
            assert row[f"{mode}_ours"]["tokens_per_s"] > 0
            assert row[f"{mode}_einsum"]["tokens_per_s"] > 0
            assert row[f"{mode}_ours_vs_einsum"] > 0
    assert "| audio_small | train |" in capsys.readouterr().out
