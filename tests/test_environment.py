"""What must still import where a dependency is missing: the GPU image has no soundfile or librosa
(their wheels are carried there by `make gpu-wheels`), and a failed import there would stop the CUDA
tests and the benchmarks before they measure anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HIDDEN = r"""
import sys
sys.modules["soundfile"] = None  # import soundfile now raises ImportError
sys.modules["librosa"] = None
sys.path.insert(0, "benchmarks")
import txl_audio.audio as audio
assert audio.SAMPLE_RATE == 16_000
import txl_audio.cli, txl_audio.evaluate, txl_audio.generate, txl_audio.train, txl_audio.context  # noqa
import gpu_speed, generate_speed, memory_scaling, gpu_report, gpu_preflight  # noqa
try:
    audio.load_audio(sys.argv[1])
except audio.MissingDependency as e:
    print("load:", e)
try:
    audio.resample(audio.np.zeros(10, "float32"), 8000, 16000)
except audio.MissingDependency as e:
    print("resample:", e)
"""


def test_package_and_benchmarks_import_without_soundfile_and_librosa(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    proc = subprocess.run([sys.executable, "-c", HIDDEN, str(tmp_path / "x.wav")], cwd=ROOT,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "load: soundfile is not installed: `pip install soundfile`" in proc.stdout
    assert "resample: librosa is not installed" in proc.stdout
