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
    """Every step of benchmarks/gpu_check.sh runs (tiny sizes, CPU) and leaves its results in the archive
    under $OUT, with at most 8 files there (what the device machine gives back): a flag, path or config
    key that went stale would otherwise surface only on a lent GPU."""
    import os
    import subprocess
    import tarfile

    out = tmp_path / "gpu"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "report.md", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    assert "exit status" not in summary, summary  # no step failed or ran out of time
    work = tmp_path / "unpacked"
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        tar.extractall(work, filter="data")
    for name in ("gpu_speed_small.json", "gpu_speed_base.json", "generate_speed.json", "memory_scaling.json",
                 "codec_speed.json", "rotary_speed.json", "cmem_speed.json",
                 "eval_summary.json", "metrics.jsonl", "curves.png", "generation.json", "preflight.log",
                 "cuda_tests.log", "quickstart.log", "report.md", "summary.txt"):
        assert (work / name).stat().st_size > 0, name
    assert "GO (" in (work / "preflight.log").read_text()
    small = json.loads((work / "gpu_speed_small.json").read_text())["rows"][0]
    assert {"train_ours", "train_einsum", "train_ours_compiled", "eval_ours_compiled"} <= small.keys()
    gen = json.loads((work / "generate_speed.json").read_text())["rows"]
    assert all(r["cached_samples_per_s"] > 0 and r["speedup"] > 0 for r in gen)
    assert json.loads((work / "eval_summary.json").read_text())["split"] == "test"
    codec_rows = json.loads((work / "codec_speed.json").read_text())["rows"]
    assert [r["batch"] for r in codec_rows] == [1, 4]
    assert all(r["decompress_samples_per_s"] > 0 for r in codec_rows)
    cmem_rows = json.loads((work / "cmem_speed.json").read_text())["rows"]
    assert [(r["mode"], r["mem_len"]) for r in cmem_rows] == [("train", 32), ("eval", 32), ("train", 64),
                                                              ("eval", 64)]
    report = (out / "report.md").read_text()
    assert "missing" not in report and "not measured" not in report, report
    assert "| audio_small (fp32) | 2 x 16 | train |" in report and "| eval step |" in report
    assert "xz -9e, same tokens" in report and report.count("**m") >= 2  # goals marked met/missed
    assert "attention kernels" in report and "flash_attention_for_cpu" in report
    assert summary.rstrip().endswith("done")
    # the quickstart inside the check trains uncompiled (its minutes go to training)
    assert "compile = false" in (work / "config.toml").read_text()


def test_gpu_check_stops_at_a_failed_go_no_go(tmp_path):
    """A failing go/no-go ends the run early, says why, and still packs what it has."""
    import os
    import subprocess

    out = tmp_path / "gpu"
    env = {**os.environ, "DEVICE": "cuda:7", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "NO-GO" in summary and "cuda tests" not in summary
    assert (out / "gpu_check.tar.gz").stat().st_size > 0 and (out / "report.md").is_file()


def test_gpu_report_marks_goals_from_the_numbers(tmp_path):
    import gpu_report

    speed = {"date": "2026-01-01", "rows": [{
        "config": "audio_small", "dtype": "bf16", "batch": 16, "tgt_len": 1024,
        "train_ours": {"tokens_per_s": 320_000.0, "peak_gib": 5.0},
        "train_einsum": {"tokens_per_s": 100_000.0},
        "train_ours_vs_einsum": 3.2, "eval_ours": {"tokens_per_s": 900_000.0}, "eval_einsum": {"oom": True}}]}
    (tmp_path / "gpu_speed_small.json").write_text(json.dumps(speed))
    rows = [{"model": "audio_small", "n_layer": 6, "d_model": 384, "mem_len": 1024, "tgt_len": 1024,
             "batch": b,
             "cached_samples_per_s": rate, "cached_realtime_factor": rate / 16_000} for b, rate in
            ((1, 3_000.0), (64, 40_000.0))]
    rows += [{"model": "issue3_mixture", "head": "logistic_mixture", "n_layer": 4, "d_model": 256,
              "mem_len": 1024, "tgt_len": 512, "batch": 1, "cached_samples_per_s": 2_000.0,
              "cached_realtime_factor": 0.125,
              "head_cost": 1.4}]
    gen = {"dtype": "bf16", "device": "GPU X", "torch": "2.x", "rows": rows}
    (tmp_path / "generate_speed.json").write_text(json.dumps(gen))
    (tmp_path / "summary.txt").write_text("== 10:00:00 machine\nGPU X, 80 GiB\n== 10:00:01 cuda tests\n")
    report = gpu_report.report(tmp_path)
    assert report.startswith("GPU results, 2026-01-01: GPU X, 80 GiB")
    assert "3.20x (best of plain and compiled): **met**" in report
    assert "2.50x at batch 64: **met**" in report  # aggregate: 40,000 samples/s = 2.5x real time
    assert "3,000 samples/s = 0.188x: **missed**" in report  # single stream under 4,000 samples/s
    assert "| out of memory |" in report  # an einsum run that ran out of memory is said so
    assert "(gpu_speed_base.json missing)" in report and "(memory_scaling.json missing)" in report
    assert ("logistic_mixture at most 1.25x the 8-bit softmax's cached step (issue-3 trunk, batch 1): "
            "1.40x: **missed**") in report
    assert "| 16-bit head: 1.40x the softmax step |" in report and "(codec_speed.json missing)" in report
