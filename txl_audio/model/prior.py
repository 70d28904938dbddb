"""The causal predictor the 16-bit heads are centred on: a sample-adaptive cascade, computed identically
on every machine.

The cascade (the structure of the strongest classical lossless audio coders: Sac's OLS + NLMS cascade,
Monkey's Audio's NLMS filters; our own code, see docs/architecture.md) predicts x[t] from x[:t]:

1. **Least squares** of order ``ols_order`` on the last samples, refitted every ``ols_solve_interval``
   samples from a covariance updated every sample and forgotten geometrically (``ols_lambda``). Each
   sample's contribution is weighted by ``(esum + ols_irls_offset) ** -(ols_irls_quarter / 4)``, esum
   a short running sum of |error| (``ols_irls_decay``): iteratively reweighted least squares, which
   fits loud and quiet passages alike (near an L1 fit) instead of letting the loud ones dominate.
2. **NLMS stages** (orders ``nlms_orders``) on the stage-1 residual: stage s predicts what the stages
   before it left, from that signal's own past (the long stage sees pitch periods), normalized by the
   input's power weighted towards recent samples ((1 + i) ** -(q / 4), ``nlms_power_quarters``).
3. **A mixer** of the stages' predictions (sign-error gradient, per-weight RMS-normalized steps), and
   optionally a **bias** stage (the final residual's running mean in a context of recent signs).

The integer outputs (``pred``, ``scale``, ``stage1``) are computed with +, -, *, /, sqrt in float64 and
integer arithmetic in a fixed order (:mod:`txl_audio.model.cascade_kernels`): the same on every machine.

``scale`` is the residual's magnitude the network's scale is measured in: an exponential average, rate
2 ** -``scale_shift``, of |x[t] - pred[t]| in exact integer arithmetic, in units of 1/16 of a level
(``scale / 16`` is the mean absolute residual in int16 levels), at least 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from txl_audio.model import cascade_kernels as K

SCALE_UNIT = 16  # scale is in units of 1 / SCALE_UNIT of an int16 level


@dataclass(frozen=True)
class CascadeConfig:
    """Every parameter of the cascade (JSON-able with ``asdict``; ``CascadeConfig(**d)`` rebuilds it).
    Defaults tuned on the training speakers of Speech Commands (docs/results.md, issue 25)."""

    ols_order: int = 32
    ols_lambda: float = 0.998
    ols_ridge: float = 0.001  # added to the covariance's diagonal, times (1 - lambda)
    ols_solve_interval: int = 8
    ols_irls_decay: float = 0.6
    ols_irls_offset: float = 2.0
    ols_irls_quarter: int = 3  # the IRLS weight's exponent: -quarter / 4 (0 .. 4: sqrt only)
    nlms_orders: tuple[int, ...] = (256, 32, 16)
    nlms_steps: tuple[float, ...] = (0.002, 0.004, 0.004)
    nlms_power_quarters: tuple[int, ...] = (3, 3, 3)  # power weights (1 + i) ** -(q / 4)
    nlms_eps: float = 1.0
    nlms_weight_clamp: float = 10.0
    stage_projection: float = 0.1
    mix_step: float = 0.002
    mix_beta: float = 0.95
    mix_eps: float = 1e-5
    bias: bool = False
    bias_limit: float = 32.0
    bias_gain: float = 1.0
    scale_shift: int = 4
    scale_init: int = 16 * 16  # 16 levels, before any residual

    def __post_init__(self) -> None:
        object.__setattr__(self, "nlms_orders", tuple(int(v) for v in self.nlms_orders))
        object.__setattr__(self, "nlms_steps", tuple(float(v) for v in self.nlms_steps))
        object.__setattr__(self, "nlms_power_quarters", tuple(int(v) for v in self.nlms_power_quarters))
        S = len(self.nlms_orders)
        if len(self.nlms_steps) != S or len(self.nlms_power_quarters) != S:
            raise ValueError(f"nlms_orders, nlms_steps and nlms_power_quarters need one entry per stage, "
                             f"got {S}, {len(self.nlms_steps)}, {len(self.nlms_power_quarters)}")
        if self.ols_order < 1 or any(n < 1 for n in self.nlms_orders):
            raise ValueError(f"orders must be >= 1: ols_order {self.ols_order}, "
                             f"nlms_orders {self.nlms_orders}")
        if not 0 <= self.ols_irls_quarter <= 4 or any(not 0 <= q <= 4 for q in self.nlms_power_quarters):
            raise ValueError("ols_irls_quarter and nlms_power_quarters must be in 0 .. 4 (exponents q / 4)")
        if self.ols_solve_interval < 1 or not 0 <= self.scale_shift <= 16:
            raise ValueError("ols_solve_interval must be >= 1 and scale_shift in 0 .. 16")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CascadeConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown cascade parameters {sorted(unknown)}")
        return cls(**d)


class _Kernel:
    """A config's arrays for the kernels: the layout and int parameters (ip), the float parameters
    (fp), the power tables (ct), and the row sizes."""

    def __init__(self, c: CascadeConfig) -> None:
        P, S = c.ols_order, len(c.nlms_orders)
        ip = np.zeros(K.I_STAGE + K.STAGE_FIELDS * S, dtype=np.int64)
        fp = np.zeros(K.P_STAGE + K.FP_STAGE_FIELDS * S)
        off = 0

        def take(n: int) -> int:
            nonlocal off
            o, off = off, off + n
            return o

        ip[K.I_P], ip[K.I_SOLVE], ip[K.I_S] = P, c.ols_solve_interval, S
        ip[K.I_IRLS_Q], ip[K.I_SCALE_SHIFT], ip[K.I_SCALE_INIT] = (c.ols_irls_quarter, c.scale_shift,
                                                                   c.scale_init)
        ip[K.I_BIAS] = int(c.bias)
        ip[K.I_HX], ip[K.I_W0], ip[K.I_R], ip[K.I_B0] = take(2 * P), take(P), take(P * P), take(P)
        ip[K.I_MIXW], ip[K.I_MIXG], ip[K.I_PS], ip[K.I_SPOW] = take(S), take(S), take(S), take(S)
        ip[K.I_BIAS_T] = take(2 * K.BIAS_CTX)
        ip[K.I_SCAL] = take(K.N_FSCAL)
        tables, t_off = [], 0
        for s, (n, q) in enumerate(zip(c.nlms_orders, c.nlms_power_quarters)):
            b = K.I_STAGE + K.STAGE_FIELDS * s
            ip[b], ip[b + 1], ip[b + 2], ip[b + 3] = n, take(2 * n), take(n), t_off
            i1 = np.arange(1, n + 1, dtype=np.float64)
            # (1 + i) ** -(q / 4) from sqrt (correctly rounded on every machine)
            r = np.sqrt(i1)
            rr = np.sqrt(r)
            t = [np.ones(n), 1.0 / rr, 1.0 / r, 1.0 / (r * rr), 1.0 / i1][q]
            tables.append(t)
            t_off += n
            fb = K.P_STAGE + K.FP_STAGE_FIELDS * s
            fp[fb] = c.nlms_steps[s]
            fp[fb + 1] = float(np.sum(t)) / n  # sequential numpy sum of a constant table: fixed order
        fp[K.P_LAMBDA], fp[K.P_NU] = c.ols_lambda, (1.0 - c.ols_lambda) * c.ols_ridge
        fp[K.P_IRLS_DECAY], fp[K.P_IRLS_OFFSET] = c.ols_irls_decay, c.ols_irls_offset
        fp[K.P_PROJ] = c.stage_projection
        fp[K.P_MIX_STEP], fp[K.P_MIX_BETA], fp[K.P_MIX_EPS] = c.mix_step, c.mix_beta, c.mix_eps
        fp[K.P_NLMS_EPS], fp[K.P_W_CLAMP] = c.nlms_eps, c.nlms_weight_clamp
        fp[K.P_BIAS_LIMIT], fp[K.P_BIAS_GAIN] = c.bias_limit, c.bias_gain
        self.ip, self.fp = ip, fp
        self.tables = np.concatenate(tables) if tables else np.zeros(1)
        self.ct = self.tables
        self.nf = off
        self.ng = K.G_STAGEPOS + S
        self.nsc = P * P + 3 * P


@dataclass
class CascadeOutput:
    """Per sample t of a file, all from x[:t] only: ``pred`` the cascade's prediction of x[t] (int32,
    rounded, in the int16 range), ``scale`` the running mean |x - pred| before t in 1/16 level (int32,
    >= 1), ``stage1`` the least-squares stage's prediction alone (int32, rounded, int16 range)."""

    pred: np.ndarray
    scale: np.ndarray
    stage1: np.ndarray


def _samples(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"the cascade reads a 1-D integer array of int16 samples, got {a.dtype} {a.shape}")
    a = a.astype(np.int64)
    if len(a) and (a.min() < K.INT16_MIN or a.max() > K.INT16_MAX):
        raise ValueError(f"samples outside the int16 range: {a.min()} .. {a.max()}")
    return a


def cascade_predict(x: Any, config: CascadeConfig | None = None) -> CascadeOutput:
    """The cascade over one file's int16 samples ``x`` (any integer dtype)."""
    c = config or CascadeConfig()
    a = _samples(x)
    k = _Kernel(c)
    n = len(a)
    pred, scale, stage1 = (np.zeros(n, dtype=np.int32) for _ in range(3))
    K.run_file(a, k.ip, k.fp, k.ct, k.nf, k.ng, k.nsc, pred, scale, stage1)
    return CascadeOutput(pred, scale, stage1)


class CascadeStream:
    """B independent streams of the cascade, for decoders and the codec: ``predict()`` gives each
    stream's next (pred, scale), ``update(x)`` feeds its actual samples, ``reset(rows)`` starts rows
    afresh. ``rows`` (an index array) restricts a call to some streams, in any order; a row must get
    its ``update`` after its ``predict``. Everything equals :func:`cascade_predict` on each stream.

    The state is two arrays (``F`` float64 (B, nf), ``G`` int64 (B, ng)); each call is one numba call
    for all its rows. ``stage1`` holds the last predict's stage-1 predictions."""

    def __init__(self, batch: int, config: CascadeConfig | None = None) -> None:
        self.config = config or CascadeConfig()
        self._k = k = _Kernel(self.config)
        self.batch = batch
        self.F = np.zeros((batch, k.nf))
        self.G = np.zeros((batch, k.ng), dtype=np.int64)
        self._sc = np.zeros(k.nsc)
        self._all = np.arange(batch, dtype=np.int64)
        self.stage1 = np.zeros(batch, dtype=np.int32)
        self.reset()

    def open_loop(self, on: bool, fixed: Any = None, scale_shift: int | None = None,
                  scale_init: int | None = None, leak_shift: int = 0) -> None:
        """``on``: from now on every row adapts nothing but its scale (the running mean of |x - its
        prediction|) and histories, and predicts 0, or with ``fixed`` (ols_order float coefficients, the
        most recent sample's first) that fixed linear predictor: what a sampler runs (issue 28: the
        cascade refitted on its own output is an unstable closed loop). ``scale_shift``: the scale's
        rate 2 ** -shift while open, ``scale_init`` its value in a row reset from then on (1/16 level;
        None: the config's); ``leak_shift`` > 0: the scale is also pulled toward ``scale_init`` at rate
        2 ** -leak_shift, so a level has an anchor. Off (the default): the cascade, as configured."""
        k = self._k
        k.ip[K.I_SCALE_SHIFT] = self.config.scale_shift
        k.ip[K.I_SCALE_INIT] = self.config.scale_init
        k.ip[K.I_ZERO] = 0
        k.ip[K.I_LEAK] = 0
        k.ct = k.tables
        if not on:
            return
        if scale_shift is not None:
            if not 0 <= int(scale_shift) <= 16:
                raise ValueError(f"scale_shift must be in 0 .. 16, got {scale_shift}")
            k.ip[K.I_SCALE_SHIFT] = int(scale_shift)
        if scale_init is not None:
            k.ip[K.I_SCALE_INIT] = max(1, int(scale_init))
        if not 0 <= int(leak_shift) <= 30:
            raise ValueError(f"leak_shift must be in 0 .. 30, got {leak_shift}")
        k.ip[K.I_LEAK] = int(leak_shift)
        k.ip[K.I_ZERO] = 1
        if fixed is not None:
            a = np.asarray(fixed, dtype=np.float64).reshape(-1)
            if len(a) != self.config.ols_order or not np.isfinite(a).all():
                raise ValueError(f"a fixed predictor needs {self.config.ols_order} finite coefficients, "
                                 f"got {len(a)}")
            n = len(k.tables)
            k.ct = np.concatenate([k.tables, a])
            k.ip[K.I_FIXED] = n
            k.ip[K.I_ZERO] = 2

    @property
    def state_bytes_per_row(self) -> int:
        return 8 * (self._k.nf + self._k.ng)

    def _rows(self, rows: Any) -> np.ndarray:
        if rows is None:
            return self._all
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= self.batch):
            raise IndexError(f"rows outside 0 .. {self.batch - 1}")
        return r

    def reset(self, rows: Any = None) -> None:
        k = self._k
        K.step_reset(self.F, self.G, self._rows(rows), k.ip, k.fp, k.ct)

    def predict(self, rows: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(pred, scale), int32 (len(rows),): the next sample's prediction and residual scale."""
        r = self._rows(rows)
        k = self._k
        pred = np.empty(len(r), dtype=np.int32)
        scale = np.empty(len(r), dtype=np.int32)
        stage1 = np.empty(len(r), dtype=np.int32)
        K.step_predict(self.F, self.G, r, k.ip, k.fp, k.ct, pred, scale, stage1)
        self.stage1 = stage1
        return pred, scale

    def update(self, x: Any, rows: Any = None) -> None:
        """Feed each stream (of ``rows``) its actual next sample x (len(rows),)."""
        r = self._rows(rows)
        xv = np.asarray(x).astype(np.int64).reshape(-1)
        if len(xv) != len(r):
            raise ValueError(f"update got {len(xv)} samples for {len(r)} rows")
        k = self._k
        K.step_update(self.F, self.G, r, k.ip, k.fp, k.ct, self._sc, xv)
