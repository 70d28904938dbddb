"""The benchmark against the authors' Transformer-XL runs (tiny configuration) when their code is here.

Their code is not part of the project and CI has no network: set TXL_AUTHORS_CODE to the pytorch/
folder of a checkout of kimiyoung/transformer-xl to run this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_authors_benchmark_runs_and_writes_json(tmp_path):
    authors = os.environ.get("TXL_AUTHORS_CODE")
    if not authors or not (Path(authors) / "mem_transformer.py").is_file():
        pytest.skip(
            "set TXL_AUTHORS_CODE to the pytorch/ folder of kimiyoung/transformer-xl "
            "(holding mem_transformer.py) to compare against the authors' code"
        )
    out = tmp_path / "authors.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "authors_speed.py"), "--authors", authors,
         "--quick", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    for key in ("train", "eval"):
        assert res[key]["ours"] > 0 and res[key]["authors"] > 0
        # same weights: both implementations compute the same losses
        assert res[key]["max_abs_loss_diff"] < 1e-4
    assert "| training" in proc.stdout
