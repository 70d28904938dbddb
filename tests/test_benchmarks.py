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


def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    """Every step of benchmarks/gpu_check.sh runs (tiny sizes, CPU) and leaves its results under $OUT:
    a flag, path or config key that went stale would otherwise surface only on a lent GPU."""
    import os
    import subprocess

    out = tmp_path / "gpu"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = (out / "summary.txt").read_text()
    assert "exit status" not in summary, summary  # no step failed or ran out of time
    for name in ("gpu_speed_small.json", "gpu_speed_base.json", "generate_speed.json", "memory_scaling.json",
                 "eval_summary.json", "metrics.jsonl", "curves.png", "generation.json"):
        assert (out / name).stat().st_size > 0, name
    small = json.loads((out / "gpu_speed_small.json").read_text())["rows"][0]
    assert {"train_ours", "train_einsum", "train_ours_compiled", "eval_ours_compiled"} <= small.keys()
    gen = json.loads((out / "generate_speed.json").read_text())["rows"]
    assert all(r["cached_samples_per_s"] > 0 and r["speedup"] > 0 for r in gen)
    assert json.loads((out / "eval_summary.json").read_text())["split"] == "test"
    assert summary.rstrip().endswith("done")
