"""The numba kernels of the sample-adaptive predictor cascade (:mod:`txl_audio.model.prior`).

Every number that reaches an integer output is computed here in float64 with +, -, *, / and sqrt only,
in an order fixed by the code: no fastmath (so no FMA contraction, no reassociation), no BLAS, no
np.dot / np.linalg, no exp / log / pow (their results differ between libms). IEEE 754 rounds each of
these operations correctly, so the same inputs give the same bits on every machine, vector width and
thread count (issue 24); ``tests/test_prior.py`` checks the compiled kernels bit for bit against the
same code run as plain Python (``NUMBA_DISABLE_JIT=1``) and compiled for a generic CPU.

The state of one stream is one float64 row and one int64 row of a batch's state matrices; where each
piece sits is the layout in ``ip`` (int64) with the float parameters in ``fp`` and constant tables in
``ct``, all built by :class:`txl_audio.model.prior.CascadeConfig` (the indices below). One call steps
every selected row by one sample (``step_predict`` / ``step_update``) or runs a whole file
(``run_file``); both go through the same row functions, so streaming equals the whole file exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# ---- int parameters / layout (ip) ----
I_P = 0  # OLS order
I_SOLVE = 1  # solve the normal equations every I_SOLVE samples
I_S = 2  # NLMS stages
I_IRLS_Q = 3  # IRLS weight (esum + offset) ** (-q / 4)
I_SCALE_SHIFT = 4  # the scale's exponential average: rate 2 ** -shift
I_SCALE_INIT = 5  # its value before any residual (units of 1/16 level)
I_BIAS = 6  # 0: no bias stage, 1: on
I_HX, I_W0, I_R, I_B0 = 7, 8, 9, 10  # float-row offsets: history ring (2P), weights, covariance, rhs
I_MIXW, I_MIXG = 11, 12  # mixer weights (S), their gradient power (S)
I_PS, I_SPOW = 13, 14  # stage predictions (S), stage input power (S)
I_BIAS_T = 15  # bias tables: (BIAS_CTX, 2) sums and counts
I_SCAL = 16  # float scalars (F_*)
I_ZERO = 17  # a sampler's open loop (issue 28), adapting nothing but the scale: 1 predicts 0, 2 a fixed
# linear predictor (ct[ip[I_FIXED] :] times the last P samples); 0: the cascade
I_FIXED = 18  # where the fixed predictor's P coefficients start in ct
I_LEAK = 19  # 0, or with the loop open the scale also moves toward its starting value at 2 ** -I_LEAK
I_STAGE = 20  # per stage: order, history offset, weights offset, power-table offset (ct)
STAGE_FIELDS = 4

# ---- float parameters (fp) ----
P_LAMBDA = 0  # OLS forgetting factor
P_NU = 1  # ridge added to the covariance's diagonal
P_IRLS_DECAY = 2  # esum = decay * esum + |e|
P_IRLS_OFFSET = 3
P_PROJ = 4  # stage input: residual minus (1 - proj) * previous stages' sum - proj * cascade's total
P_MIX_STEP, P_MIX_BETA, P_MIX_EPS = 5, 6, 7
P_NLMS_EPS = 8  # added to the stage input's power
P_W_CLAMP = 9
P_BIAS_LIMIT = 10  # bias counts halve past this
P_BIAS_GAIN = 11
P_STAGE = 16  # per stage: step, (sum of its power table) / order
FP_STAGE_FIELDS = 2

# ---- float scalars in the row (offsets from ip[I_SCAL]) ----
F_P0, F_ESUM, F_PL, F_PB, F_PTOT = 0, 1, 2, 3, 4
N_FSCAL = 5

# ---- int row ----
G_HXPOS, G_KCNT, G_SACC, G_PRED, G_E1, G_E2, G_XPREV, G_STAGEPOS = 0, 1, 2, 3, 4, 5, 6, 7

BIAS_CTX = 64
SCALE_FRAC = 12  # the scale accumulator's fixed point: 2 ** 12 per 1/16 level
INT16_MIN, INT16_MAX = -32768, 32767


@njit(cache=True, nogil=True)
def _dot(a, b, n):
    """sum a[i] * b[i], i < n, in eight partial sums combined in a fixed order: fast (the partial sums
    are independent: the compiler may put them in one vector register, which changes nothing) and
    the same result on every machine (the order is the code's, not the compiler's). ``a``, ``b``
    are views starting at 0, so the compiler knows the indices are not negative."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for i in range(0, m, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    for i in range(m, n):
        s0 += a[i] * b[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, nogil=True)
def _power(t, b, n):
    """sum t[i] * b[i]^2 (a weighted power), eight partial sums as :func:`_dot`."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m = n - n % 8
    for i in range(0, m, 8):
        s0 += t[i] * (b[i] * b[i])
        s1 += t[i + 1] * (b[i + 1] * b[i + 1])
        s2 += t[i + 2] * (b[i + 2] * b[i + 2])
        s3 += t[i + 3] * (b[i + 3] * b[i + 3])
        s4 += t[i + 4] * (b[i + 4] * b[i + 4])
        s5 += t[i + 5] * (b[i + 5] * b[i + 5])
        s6 += t[i + 6] * (b[i + 6] * b[i + 6])
        s7 += t[i + 7] * (b[i + 7] * b[i + 7])
    for i in range(m, n):
        s0 += t[i] * (b[i] * b[i])
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, nogil=True)
def _pow_quarter(s, q):
    """s ** (-q / 4) for q in 0..4 from sqrt and division only (correctly rounded everywhere)."""
    if q == 0:
        return 1.0
    if q == 4:
        return 1.0 / s
    r = math.sqrt(s)
    if q == 2:
        return 1.0 / r
    rr = math.sqrt(r)
    if q == 1:
        return 1.0 / rr
    return 1.0 / (r * rr)


@njit(cache=True, nogil=True)
def _push(f, base, n, g, gi, v):
    """Push v into a ring of n values stored twice (f[base : base + 2n]); f[base + g[gi] + i] is then
    the i-th most recent value for i < n, a contiguous span."""
    p = g[gi] - 1
    if p < 0:
        p = n - 1
    g[gi] = p
    f[base + p] = v
    f[base + p + n] = v


@njit(cache=True, nogil=True)
def _solve(f, ip, fp, sc):
    """Solve (R + nu I) w = b (R symmetric, lower triangle stored) by an LDL^T factorization into
    the scratch ``sc``; keep the old weights when R + nu I is not positive definite."""
    P = ip[I_P]
    R = f[ip[I_R] : ip[I_R] + P * P]
    rhs = f[ip[I_B0] : ip[I_B0] + P]
    L = sc[: P * P]  # unit lower triangle, row-major
    D = sc[P * P : P * P + P]
    T = sc[P * P + P : P * P + 2 * P]  # L[j, :j] * D[:j]
    Y = sc[P * P + 2 * P : P * P + 3 * P]
    nu = fp[P_NU]
    for j in range(P):
        Lj = L[j * P : j * P + P]
        for k in range(j):
            T[k] = Lj[k] * D[k]
        dj = (R[j * P + j] + nu) - _dot(Lj, T, j)
        if not dj > 1e-9:
            return
        D[j] = dj
        inv = 1.0 / dj
        for i in range(j + 1, P):
            L[i * P + j] = (R[i * P + j] - _dot(L[i * P : i * P + P], T, j)) * inv
    for i in range(P):  # L y = b
        Y[i] = rhs[i] - _dot(L[i * P : i * P + P], Y, i)
    for i in range(P):  # D z = y
        Y[i] = Y[i] / D[i]
    for i in range(P - 1, -1, -1):  # L^T w = z
        v = Y[i]
        for k in range(i + 1, P):
            v -= L[k * P + i] * Y[k]
        Y[i] = v
    W = f[ip[I_W0] : ip[I_W0] + P]
    for i in range(P):
        W[i] = Y[i]


@njit(cache=True, nogil=True)
def _bias_context(g):
    """Which bias table entry: the signs of the last two final residuals and whether the last sample
    rose (3 x 3 x 2 = 18 of the 64 entries)."""
    e1, e2 = g[G_E1], g[G_E2]
    c1 = 0 if e1 < 0 else (1 if e1 == 0 else 2)
    c2 = 0 if e2 < 0 else (1 if e2 == 0 else 2)
    return c1 * 3 + c2


@njit(cache=True, nogil=True)
def predict_row(f, g, ip, fp, ct):
    """The prediction of the next sample of one stream (float, and the rounded int in g[G_PRED])."""
    P = ip[I_P]
    sc0 = ip[I_SCAL]
    if ip[I_ZERO] != 0:
        for i in range(N_FSCAL):
            if i != F_ESUM:
                f[sc0 + i] = 0.0
        q = 0
        if ip[I_ZERO] == 2:
            hx = ip[I_HX] + g[G_HXPOS]
            oc = ip[I_FIXED]
            p0 = _dot(ct[oc : oc + P], f[hx : hx + P], P)
            f[sc0 + F_P0] = p0
            f[sc0 + F_PTOT] = p0
            q = _clip_round(p0)
        g[G_PRED] = q
        return q
    hx = ip[I_HX] + g[G_HXPOS]
    p0 = _dot(f[ip[I_W0] : ip[I_W0] + P], f[hx : hx + P], P)
    f[sc0 + F_P0] = p0
    S = ip[I_S]
    ops, osp, omw = ip[I_PS], ip[I_SPOW], ip[I_MIXW]
    pl = 0.0
    for s in range(S):
        base = I_STAGE + STAGE_FIELDS * s
        n, oh, ow, ot = ip[base], ip[base + 1], ip[base + 2], ip[base + 3]
        h = oh + g[G_STAGEPOS + s]
        hv = f[h : h + n]
        ps = _dot(f[ow : ow + n], hv, n)
        f[ops + s] = ps
        f[osp + s] = _power(ct[ot : ot + n], hv, n)
        pl += f[omw + s] * ps
    f[sc0 + F_PL] = pl
    pb = 0.0
    if ip[I_BIAS] != 0:
        c = _bias_context(g)
        ob = ip[I_BIAS_T] + 2 * c
        pb = fp[P_BIAS_GAIN] * f[ob] / (f[ob + 1] + 1.0)
    f[sc0 + F_PB] = pb
    pt = (p0 + pl) + pb
    f[sc0 + F_PTOT] = pt
    # rounded half up, clipped to int16 (a NaN, never expected, predicts 0)
    if pt >= 32767.0:
        q = INT16_MAX
    elif pt <= -32768.0:
        q = INT16_MIN
    elif pt == pt:
        q = int(math.floor(pt + 0.5))
    else:
        q = 0
    g[G_PRED] = q
    return q


@njit(cache=True, nogil=True)
def scale_of(g):
    """The running mean of |residual| in units of 1/16 level (>= 1)."""
    s = (g[G_SACC] + (1 << (SCALE_FRAC - 1))) >> SCALE_FRAC
    return s if s > 1 else 1


@njit(cache=True, nogil=True)
def update_row(f, g, ip, fp, ct, sc, xv):
    """Feed the actual sample ``xv`` (an int) of one stream after :func:`predict_row`."""
    P = ip[I_P]
    sc0 = ip[I_SCAL]
    x = float(xv)
    if ip[I_ZERO] != 0:
        _integer_side(f, g, ip, xv, x)
        return
    ohx = ip[I_HX] + g[G_HXPOS]
    # ---- stage 1: least squares on the last P samples, covariance weighted by an IRLS factor
    # (recent |error| large -> small weight: a robust, near-L1 fit) and forgotten geometrically
    p0 = f[sc0 + F_P0]
    e0 = x - p0
    esum = fp[P_IRLS_DECAY] * f[sc0 + F_ESUM] + abs(e0)
    f[sc0 + F_ESUM] = esum
    lam = fp[P_LAMBDA]
    ff = (1.0 - lam) * _pow_quarter(esum + fp[P_IRLS_OFFSET], ip[I_IRLS_Q])
    R = f[ip[I_R] : ip[I_R] + P * P]
    rhs = f[ip[I_B0] : ip[I_B0] + P]
    hx = f[ohx : ohx + P]
    for j in range(P):
        fxj = ff * hx[j]
        Rj = R[j * P : j * P + j + 1]
        for i in range(j + 1):
            Rj[i] = lam * Rj[i] + fxj * hx[i]
        rhs[j] = lam * rhs[j] + fxj * x
    k = g[G_KCNT] + 1
    if k >= ip[I_SOLVE]:
        _solve(f, ip, fp, sc)
        k = 0
    g[G_KCNT] = k
    # ---- the NLMS cascade on the stage-1 residual: stage s predicts what the stages before it
    # left, from the past of that signal
    r0 = e0
    S = ip[I_S]
    ops, osp, omw, omg = ip[I_PS], ip[I_SPOW], ip[I_MIXW], ip[I_MIXG]
    pl = f[sc0 + F_PL]
    proj = fp[P_PROJ]
    prefix = 0.0
    wc = fp[P_W_CLAMP]
    for s in range(S):
        base = I_STAGE + STAGE_FIELDS * s
        n, oh, ow = ip[base], ip[base + 1], ip[base + 2]
        h = oh + g[G_STAGEPOS + s]
        target = r0 - ((1.0 - proj) * prefix + proj * pl)
        ps = f[ops + s]
        fb = P_STAGE + FP_STAGE_FIELDS * s
        grad = fp[fb] * (target - ps) * fp[fb + 1] / (f[osp + s] + fp[P_NLMS_EPS])
        W = f[ow : ow + n]
        hv = f[h : h + n]
        for i in range(n):
            W[i] = min(max(W[i] + grad * hv[i], -wc), wc)
        _push(f, oh, n, g, G_STAGEPOS + s, target)
        prefix += f[omw + s] * ps
    # ---- the mixer of the stages' predictions: sign-error gradient, each weight's step normalized
    # by its gradient's running power (Adagrad/RMSprop style)
    em = r0 - pl
    sg = 1.0 if em > 0 else (-1.0 if em < 0 else 0.0)
    beta = fp[P_MIX_BETA]
    for s in range(S):
        gr = sg * f[ops + s]
        v = beta * f[omg + s] + (1.0 - beta) * (gr * gr)
        f[omg + s] = v
        f[omw + s] += fp[P_MIX_STEP] * gr / (math.sqrt(v) + fp[P_MIX_EPS])
    # ---- bias: the final residual's running mean in a small context
    if ip[I_BIAS] != 0:
        c = _bias_context(g)
        ob2 = ip[I_BIAS_T] + 2 * c
        d = x - (p0 + pl)
        f[ob2] += d
        f[ob2 + 1] += 1.0
        if f[ob2 + 1] > fp[P_BIAS_LIMIT]:
            f[ob2] *= 0.5
            f[ob2 + 1] *= 0.5
    _integer_side(f, g, ip, xv, x)


@njit(cache=True, nogil=True)
def _integer_side(f, g, ip, xv, x):
    """The scale (the running mean of |xv - prediction|) and the sample and residual histories."""
    e = xv - g[G_PRED]
    ae = e if e >= 0 else -e
    sh = ip[I_SCALE_SHIFT]
    acc = g[G_SACC]
    acc = acc + (((ae << (SCALE_FRAC + 4)) - acc) >> sh)
    if ip[I_LEAK] != 0 and ip[I_ZERO] != 0:
        acc = acc + (((ip[I_SCALE_INIT] << SCALE_FRAC) - acc) >> ip[I_LEAK])
    g[G_SACC] = acc
    g[G_E2] = g[G_E1]
    g[G_E1] = e
    g[G_XPREV] = xv
    _push(f, ip[I_HX], ip[I_P], g, G_HXPOS, x)


@njit(cache=True, nogil=True)
def reset_row(f, g, ip, fp, ct):
    """A stream afresh: everything 0 but the mixer's weights (1: the stages' sum), the ring
    positions and the scale's starting value."""
    for i in range(f.shape[0]):
        f[i] = 0.0
    for i in range(g.shape[0]):
        g[i] = 0
    for s in range(ip[I_S]):
        f[ip[I_MIXW] + s] = 1.0
    g[G_SACC] = ip[I_SCALE_INIT] << SCALE_FRAC


@njit(cache=True, nogil=True)
def run_file(x, ip, fp, ct, nf, ng, nsc, pred, scale, stage1):
    """One stream over x (int64): pred, scale and the stage-1 prediction of every sample."""
    f = np.zeros(nf)
    g = np.zeros(ng, dtype=np.int64)
    sc = np.zeros(nsc)
    reset_row(f, g, ip, fp, ct)
    sc0 = ip[I_SCAL]
    for t in range(x.shape[0]):
        pred[t] = predict_row(f, g, ip, fp, ct)
        scale[t] = scale_of(g)
        stage1[t] = _clip_round(f[sc0 + F_P0])
        update_row(f, g, ip, fp, ct, sc, x[t])


@njit(cache=True, nogil=True)
def _clip_round(v):
    if v >= 32767.0:
        return INT16_MAX
    if v <= -32768.0:
        return INT16_MIN
    if v == v:
        return int(math.floor(v + 0.5))
    return 0


@njit(cache=True, nogil=True)
def step_predict(F, G, rows, ip, fp, ct, pred, scale, stage1):
    """Predict the next sample of each stream in ``rows`` (into pred/scale/stage1[j] for rows[j])."""
    sc0 = ip[I_SCAL]
    for j in range(rows.shape[0]):
        r = rows[j]
        pred[j] = predict_row(F[r], G[r], ip, fp, ct)
        scale[j] = scale_of(G[r])
        stage1[j] = _clip_round(F[r, sc0 + F_P0])


@njit(cache=True, nogil=True)
def step_update(F, G, rows, ip, fp, ct, sc, x):
    """Feed sample x[j] to the stream rows[j] (each after its step_predict)."""
    for j in range(rows.shape[0]):
        r = rows[j]
        update_row(F[r], G[r], ip, fp, ct, sc, x[j])


@njit(cache=True, nogil=True)
def step_reset(F, G, rows, ip, fp, ct):
    for j in range(rows.shape[0]):
        r = rows[j]
        reset_row(F[r], G[r], ip, fp, ct)
