"""The predictor cascade of the 16-bit heads (txl_audio/model/prior.py, model/cascade_kernels.py):

- streaming (CascadeStream: a batch of rows stepped one sample at a time, rows reset at a file's start)
  gives exactly the whole-file pass (cascade_predict) of each file;
- the compiled kernels give the same integers as the same code run as plain Python
  (``NUMBA_DISABLE_JIT=1``) and as the code compiled for a generic CPU (``NUMBA_CPU_NAME=generic``):
  bit for bit, so no vector width, FMA contraction or libm enters (issue 24);
- the sampler's open loop (issue 28) predicts 0 and keeps only the scale, which is then the integer
  running mean of |x| the module docstring defines, computed here independently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from txl_audio.model.prior import CascadeConfig, CascadeStream, cascade_predict

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted((ROOT / "data" / "speech_commands_v002_test").rglob("*.flac"))[::50][:4]
BIAS = CascadeConfig(bias=True, nlms_orders=(32, 16), nlms_steps=(0.004, 0.004),
                     nlms_power_quarters=(3, 2), ols_order=16)  # the bias stage and other orders too


def _clip(i: int, n: int | None = None) -> np.ndarray:
    x = sf.read(CLIPS[i], dtype="int16")[0].astype(np.int64)
    return x[:n] if n else x


def _digest(x: np.ndarray, config: CascadeConfig) -> str:
    o = cascade_predict(x, config)
    return hashlib.sha256(o.pred.tobytes() + o.scale.tobytes() + o.stage1.tobytes()).hexdigest()


@pytest.mark.parametrize("config", [CascadeConfig(), BIAS], ids=["default", "bias"])
def test_streaming_equals_the_whole_file(config):
    files = [_clip(i, 3000) for i in range(3)]
    second = _clip(3, 1500)  # row 0 starts a second file half way
    stream = CascadeStream(3, config)
    T = 3000
    got = np.zeros((3, 3, T + len(second)), dtype=np.int64)
    for t in range(T + len(second)):
        if t == T:
            stream.reset([0])
        rows = np.arange(3) if t < T else np.array([0])
        pred, scale = stream.predict(rows)
        x = np.array([files[r][t] if t < T else second[t - T] for r in rows])
        got[0, rows, t], got[1, rows, t], got[2, rows, t] = pred, scale, stream.stage1
        stream.update(x, rows)
    for r in range(3):
        o = cascade_predict(files[r], config)
        assert np.array_equal(got[0, r, :T], o.pred) and np.array_equal(got[1, r, :T], o.scale)
        assert np.array_equal(got[2, r, :T], o.stage1)
    o = cascade_predict(second, config)
    assert np.array_equal(got[0, 0, T:], o.pred) and np.array_equal(got[1, 0, T:], o.scale)
    # and the cascade predicts: its residual is far below the signal (a wrong layout would not)
    assert np.abs(files[0] - cascade_predict(files[0], config).pred).mean() < 0.5 * np.abs(files[0]).mean()


@pytest.mark.numerics
@pytest.mark.parametrize("env", [{"NUMBA_DISABLE_JIT": "1"}, {"NUMBA_CPU_NAME": "generic"}],
                         ids=["plain-python", "generic-cpu"])
def test_compiled_kernels_equal_plain_python_and_a_generic_cpu(env, tmp_path):
    n = 1500  # plain Python runs ~1 ms a sample
    want = [_digest(_clip(0, n), c) for c in (CascadeConfig(), BIAS)]
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "import test_prior as T\n"
        "from txl_audio.model.prior import CascadeConfig\n"
        f"print(json.dumps([T._digest(T._clip(0, {n}), c) for c in (CascadeConfig(), T.BIAS)]))\n"
    )
    e = {**os.environ, **env, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    out = subprocess.run([sys.executable, "-c", script], env=e, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == want


def test_open_loop_predicts_zero_and_keeps_the_scale_of_the_signal():
    c = CascadeConfig()
    x = np.stack([_clip(0, 2000), _clip(1, 2000)])
    stream = CascadeStream(2, c)
    stream.open_loop(True)
    acc = np.full(2, c.scale_init << 12, dtype=np.int64)  # the scale's accumulator: 2^12 per 1/16 level
    for t in range(x.shape[1]):
        pred, scale = stream.predict()
        assert not pred.any() and not stream.stage1.any()
        assert np.array_equal(scale, np.maximum((acc + 2048) >> 12, 1))
        acc = acc + (((np.abs(x[:, t]) << 16) - acc) >> c.scale_shift)
        stream.update(x[:, t])
    # switched back, the same rows run the cascade again (its state was kept, not adapted)
    stream.open_loop(False)
    pred, _ = stream.predict()
    assert np.array_equal(pred, [0, 0])  # weights untouched by the open loop: still zero
    stream.reset()
    closed = CascadeStream(2, c)
    for t in range(200):
        a, b = stream.predict(), closed.predict()
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        stream.update(x[:, t])
        closed.update(x[:, t])


def test_open_loop_with_a_fixed_predictor_and_an_anchored_scale():
    """The sampler's open loop with the corpus's long-term predictor (issue 28): every row predicts
    round(sum a_i x_{t-i}) from its own last P samples, and its scale is the running mean of
    |x - pred| at 2^-8 pulled toward its starting value at 2^-12, starting there after a reset, all
    computed here independently in integers and float64."""
    c = CascadeConfig()
    P = c.ols_order
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.05, P)
    a[0] = 0.9
    x = np.stack([_clip(0, 3000), _clip(2, 3000)])
    stream = CascadeStream(2, c)
    stream.open_loop(True, a, scale_shift=8, scale_init=4000, leak_shift=12)
    stream.reset()
    acc = np.full(2, 4000 << 12, dtype=np.int64)
    for t in range(x.shape[1]):
        pred, scale = stream.predict()
        hist = np.zeros((2, P))
        k = min(P, t)
        if k:
            hist[:, :k] = x[:, t - k : t][:, ::-1]
        want = np.array([math.floor(float(sum(a[i] * hist[r, i] for i in range(P))) + 0.5) for r in range(2)])
        assert np.all(np.abs(pred - want) <= 1), t  # (the kernel's fixed summation order may round apart)
        assert np.array_equal(scale, np.maximum((acc + 2048) >> 12, 1)), t
        acc = acc + (((np.abs(x[:, t] - pred.astype(np.int64)) << 16) - acc) >> 8)
        acc = acc + (((4000 << 12) - acc) >> 12)
        stream.update(x[:, t])
    # closed again: the configured scale and a fresh cascade, bit for bit
    stream.open_loop(False)
    stream.reset()
    o = cascade_predict(x[0, :500], c)
    for t in range(500):
        p, s = stream.predict(rows=[0])
        assert p[0] == o.pred[t] and s[0] == o.scale[t]
        stream.update(x[0, t : t + 1], rows=[0])
    with pytest.raises(ValueError, match="coefficients"):
        stream.open_loop(True, a[:-1])


def test_long_term_predictor_solves_the_normal_equations_and_is_stable():
    """quality.levinson (plain loops) = numpy's solve of the Toeplitz normal equations, and the
    long-term predictor of the bundled clips' spectrum has every pole inside the unit circle."""
    from txl_audio import quality as Q

    waves = [sf.read(f, dtype="int16")[0].astype(np.float64) for f in CLIPS]
    lt = Q._long_term(waves)
    R = np.asarray(lt["autocorrelation"])
    for order in (1, 8, 32):
        a, err = Q.levinson(R, order)
        T = np.array([[R[abs(i - j)] for j in range(order)] for i in range(order)])
        assert np.allclose(a, np.linalg.solve(T, R[1 : order + 1]), rtol=1e-9, atol=1e-12)
        assert np.isclose(err, (R[0] - a @ R[1 : order + 1]) / R[0])
        assert np.abs(np.roots(np.concatenate([[1.0], -a]))).max() < 1.0
    a, level = Q.long_term_predictor(lt, 32)
    assert lt["prediction_gain_db"] > 0 and level == lt["residual_level"] > 0
    a16, level16 = Q.long_term_predictor(lt, 16)
    assert len(a16) == 16 and level16 >= level  # a shorter predictor leaves at least as much
