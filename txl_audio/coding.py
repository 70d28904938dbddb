"""From the portable model's integer predictions to range-coded symbols, and back.

Every probability here is an integer computed with integer arithmetic and the tables of
:mod:`txl_audio.numerics` (in numba kernels: compiled loops over int64, which no vector width or
compiler contraction can change), so an encoder and a decoder on any two machines see the same
tables; the range coder (constriction, Bamler 2022) receives them as exactly representable float64
weights and normalises them deterministically.

How each head's distribution is coded:

- softmax (8-bit codes, or 65,536 levels): the weights 2^(-(max - logit)/ln 2) of every symbol
  (30-bit table), one categorical symbol (65,536 levels: the high byte's summed weights, then the low
  byte's within it);
- dual softmax: the coarse byte's categorical, then the fine byte's from the fine logits given it;
- logistic mixture: the sample's 16 bits from the top, each a binary decision whose probability is the
  mixture's mass above the midpoint of the interval left so far against below it (the CDF at 17 points
  instead of a table over 65,536 levels or two of 256). The mixture's CDF is a sum over components of
  w_k F((edge - mu_k) / s_k): weights from a 16-bit 2^-x table, F the logistic sigmoid from a
  table on a 2^-8 grid with linear interpolation, in units of 2^-32.

Shapes: N positions, V symbols, K mixture components.
"""

from __future__ import annotations

import numba
import numpy as np

from txl_audio.numerics import (
    ACT_BITS,
    EXP_FRAC_BITS,
    SIGMOID_ONE_BITS,
    SIGMOID_RANGE,
    SIGMOID_STEP_BITS,
    exp2_table,
    sigmoid_table,
)

LEVELS = 65_536
HALF = 32_768
ROUNDS = 16  # binary decisions per 16-bit sample
# logits (ACT_BITS fractional bits, nats) -> 2^-EXP_FRAC_BITS units of log2: y = (d * LOG2E) >> 16
# (round(2^16 / ln 2 * 2^(EXP_FRAC_BITS - ACT_BITS)), a constant)
LOG2E_MUL = 23_637
HEAD_ONE_BITS = 30  # a softmax symbol's weight: 2^30 for the most probable
MIX_ONE_BITS = 16  # a mixture component's weight: 2^16 for the heaviest
# the logistic scale's floor: LOG_SCALE_MIN = -14 (of full scale) in log2 of levels, 2^-10 units
LOG2_SCALE_MIN = -5_322  # round((LOG_SCALE_MIN / ln 2 + 15) * 1024), LOG_SCALE_MIN = -14 (model/heads.py)
LOG2_SCALE_MAX = 40 << EXP_FRAC_BITS

_EXP30 = exp2_table(HEAD_ONE_BITS)
_EXP30_INV = exp2_table(HEAD_ONE_BITS)  # 2^30 * 2^(-f/1024): 2^30 / s's mantissa
_EXP16 = exp2_table(MIX_ONE_BITS)
_SIG = sigmoid_table()
_Z_BITS = SIGMOID_STEP_BITS + 16  # z with 16 bits below the table's grid, for the interpolation


@numba.njit(cache=True, nogil=True)
def _softmax_weights(logits: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(N, V) int64 logits -> (N, V) int64 weights, 2^30 for the largest of each row."""
    N, V = logits.shape
    out = np.zeros((N, V), dtype=np.int64)
    mask = (1 << EXP_FRAC_BITS) - 1
    for i in range(N):
        top = logits[i, 0]
        for j in range(1, V):
            if logits[i, j] > top:
                top = logits[i, j]
        for j in range(V):
            d = top - logits[i, j]
            if d > (1 << 40):
                continue
            y = (d * LOG2E_MUL) >> 16
            n = y >> EXP_FRAC_BITS
            if n <= HEAD_ONE_BITS:
                out[i, j] = table[y & mask] >> n
    return out


def softmax_weights(logits: np.ndarray) -> np.ndarray:
    """Integer weights of a softmax head's symbols (see the module docstring)."""
    return _softmax_weights(np.ascontiguousarray(logits, dtype=np.int64), _EXP30)


@numba.njit(cache=True, nogil=True)
def _mixture_prepare(mix: np.ndarray, center: np.ndarray, base: np.ndarray, K: int, exp16: np.ndarray):
    """mix (N, 3K) [logit pi | mu | log s] (ACT_BITS), center (N,) the prior's prediction in levels
    (ACT_BITS), base (N,) log2 of the scale unit in levels (2^-10) -> per component: weights (N, K)
    <= 2^16, means (N, K) in token units (ACT_BITS), and the scale's log2 in levels (2^-10).

    As the float head: mu = center + mu_raw * unit, s = exp(log_s_raw) * unit, unit = 2^base levels
    (2^15 = full scale without a residual level)."""
    N = mix.shape[0]
    w = np.zeros((N, K), dtype=np.int64)
    mu = np.zeros((N, K), dtype=np.int64)
    ls = np.zeros((N, K), dtype=np.int64)
    mask = (1 << EXP_FRAC_BITS) - 1
    for i in range(N):
        top = mix[i, 0]
        for k in range(1, K):
            if mix[i, k] > top:
                top = mix[i, k]
        b = base[i]
        bn = b >> EXP_FRAC_BITS
        bf = b & mask
        # 2^base as a multiplier of the raw mean: 2^bn * (2^(bf/1024)), the fraction from the 2^-x
        # table as 2^(bf/1024) = 2 * 2^-((1024 - bf)/1024)
        for k in range(K):
            d = top - mix[i, k]
            if d <= (1 << 40):
                y = (d * LOG2E_MUL) >> 16
                n = y >> EXP_FRAC_BITS
                if n <= MIX_ONE_BITS:
                    w[i, k] = exp16[y & mask] >> n
            m = mix[i, K + k]  # raw mean offset, ACT_BITS
            if bf == 0:
                frac = 1 << 16
            else:
                frac = exp16[(1 << EXP_FRAC_BITS) - bf] << 1  # 2^16 * 2^(bf/1024)
            off = m * frac  # ACT_BITS + 16 bits, times 2^bn
            if bn >= 16:
                off = off << (bn - 16)
            else:
                off = off >> (16 - bn)
            mu[i, k] = (HALF << ACT_BITS) + center[i] + off
            s = ((mix[i, 2 * K + k] * LOG2E_MUL) >> 16) + b  # nats (ACT_BITS) -> log2 (2^-10)
            ls[i, k] = min(max(s, LOG2_SCALE_MIN), LOG2_SCALE_MAX)
    return w, mu, ls


@numba.njit(cache=True, nogil=True)
def _cdf(w, mu, ls, i, K, edge_level, sig, inv30):
    """The mixture's CDF (units of 2^-32 times the weights) at the lower edge of level ``edge_level``
    (0: nothing below; LEVELS: everything)."""
    total = 0
    if edge_level <= 0:
        return total
    if edge_level >= LEVELS:
        for k in range(K):
            total += w[i, k] << SIGMOID_ONE_BITS
        return total
    e = (edge_level << ACT_BITS) - (1 << (ACT_BITS - 1))  # level - 1/2
    last = sig.shape[0] - 1
    offset = SIGMOID_RANGE << _Z_BITS
    mask = (1 << EXP_FRAC_BITS) - 1
    for k in range(K):
        if w[i, k] == 0:
            continue
        d = e - mu[i, k]  # ACT_BITS
        if d > (1 << 30):
            d = 1 << 30
        elif d < -(1 << 30):
            d = -(1 << 30)
        s = ls[i, k]
        n = s >> EXP_FRAC_BITS
        # z = d / 2^s: d * 2^30 2^(-f/1024) / 2^(ACT_BITS + 30 + n), with _Z_BITS fractional bits
        sh = ACT_BITS + 30 + n - _Z_BITS
        z = d * inv30[s & mask]
        if sh >= 0:
            z = z >> sh
        else:
            z = z << (-sh) if abs(z) < (1 << 40) else (1 << 50 if z > 0 else -(1 << 50))
        u = z + offset
        if u <= 0:
            continue
        idx = u >> 16
        if idx >= last:
            total += w[i, k] << SIGMOID_ONE_BITS
            continue
        frac = u & 0xFFFF
        f = sig[idx] + (((sig[idx + 1] - sig[idx]) * frac) >> 16)
        total += w[i, k] * f
    return total


@numba.njit(cache=True, nogil=True)
def _mixture_path(w, mu, ls, K, tokens, sig, inv30):
    """The encoder's side: for each position the masses (N, 16, 2) below and above the midpoint of
    each of the 16 halvings on the way to its token."""
    N = tokens.shape[0]
    out = np.zeros((N, ROUNDS, 2), dtype=np.int64)
    for i in range(N):
        lo, hi = 0, LEVELS
        flo = _cdf(w, mu, ls, i, K, 0, sig, inv30)
        fhi = _cdf(w, mu, ls, i, K, LEVELS, sig, inv30)
        x = tokens[i]
        for r in range(ROUNDS):
            mid = (lo + hi) >> 1
            fm = _cdf(w, mu, ls, i, K, mid, sig, inv30)
            out[i, r, 0] = fm - flo
            out[i, r, 1] = fhi - fm
            if x >= mid:
                lo, flo = mid, fm
            else:
                hi, fhi = mid, fm
    return out


@numba.njit(cache=True, nogil=True)
def _mixture_round(w, mu, ls, K, lo, hi, flo, fhi, sig, inv30):
    """The decoder's side, one halving for every row: masses (N, 2) below / above the midpoint, and
    the CDF there (N,)."""
    N = lo.shape[0]
    out = np.zeros((N, 2), dtype=np.int64)
    fm_all = np.zeros(N, dtype=np.int64)
    for i in range(N):
        mid = (lo[i] + hi[i]) >> 1
        fm = _cdf(w, mu, ls, i, K, mid, sig, inv30)
        out[i, 0] = fm - flo[i]
        out[i, 1] = fhi[i] - fm
        fm_all[i] = fm
    return out, fm_all


class Mixture:
    """A logistic mixture's integer parameters for N positions (see ``_mixture_prepare``)."""

    def __init__(self, mix: np.ndarray, center: np.ndarray, base: np.ndarray | None, K: int) -> None:
        N = mix.shape[0]
        if base is None:
            base = np.full(N, 15 << EXP_FRAC_BITS, dtype=np.int64)  # the unit: full scale, 2^15 levels
        self.K = K
        self.w, self.mu, self.ls = _mixture_prepare(np.ascontiguousarray(mix, dtype=np.int64),
                                                    np.ascontiguousarray(center, dtype=np.int64),
                                                    np.ascontiguousarray(base, dtype=np.int64), K, _EXP16)

    def path(self, tokens: np.ndarray) -> np.ndarray:
        """(N, 16, 2) masses of the halvings to each token (the encoder's tables)."""
        return _mixture_path(self.w, self.mu, self.ls, self.K, np.ascontiguousarray(tokens, dtype=np.int64),
                             _SIG, _EXP30_INV)

    def start(self) -> tuple[np.ndarray, ...]:
        """The decoder's state for every row: lo, hi, CDF at lo, CDF at hi."""
        N = self.w.shape[0]
        lo = np.zeros(N, dtype=np.int64)
        hi = np.full(N, LEVELS, dtype=np.int64)
        flo = np.zeros(N, dtype=np.int64)
        fhi = self.w.sum(1) << SIGMOID_ONE_BITS
        return lo, hi, flo, fhi

    def round(self, lo, hi, flo, fhi) -> tuple[np.ndarray, np.ndarray]:
        return _mixture_round(self.w, self.mu, self.ls, self.K, lo, hi, flo, fhi, _SIG, _EXP30_INV)


def bernoulli_p(masses: np.ndarray) -> np.ndarray:
    """(..., 2) integer masses below / above -> P(above) as float64 (an exact quotient of exactly
    represented integers: the same double everywhere); 1/2 where both are 0 (beyond the tables'
    resolution)."""
    lo = masses[..., 0].astype(np.float64)
    hi = masses[..., 1].astype(np.float64)
    tot = lo + hi
    return np.where(tot > 0, hi / np.where(tot > 0, tot, 1.0), 0.5)


__all__ = ["HEAD_ONE_BITS", "LEVELS", "Mixture", "ROUNDS", "bernoulli_p", "softmax_weights"]


# ----------------------------------------------------------------------------------------------------
# coding batches of chunks with a portable model

import constriction  # noqa: E402
import torch  # noqa: E402

_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


class _Rows:
    """The rows of a batch: several groups (each one range code: one file's chunks, or part of them),
    their chunks' lengths, and which rows still have a sample at step t."""

    def __init__(self, lengths: list[list[int]]) -> None:
        self.group_rows: list[slice] = []
        flat: list[int] = []
        for g in lengths:
            self.group_rows.append(slice(len(flat), len(flat) + len(g)))
            flat += list(g)
        self.lengths = np.array(flat, dtype=np.int64)
        self.B = len(flat)
        self.T = int(self.lengths.max()) if flat else 0

    def active(self, t: int) -> list[np.ndarray]:
        """Per group, the indices (into the batch) of its rows with a sample at t."""
        return [np.arange(s.start, s.stop)[self.lengths[s] > t] for s in self.group_rows]


def _sample_bits(x: np.ndarray) -> np.ndarray:
    """(N,) tokens -> (N, 16) their bits from the top (the mixture's halvings)."""
    return ((x[:, None] >> (15 - np.arange(ROUNDS))) & 1).astype(np.int32)


ENCODE_POSITIONS = 2048  # positions the encoder scores per model call (128 rows: 16-token pieces)


class Scheme:
    """How one head's predictions become symbols: ``tables`` for known tokens (the encoder) yield, per
    coder call, (symbols (N,), family, parameters (N, ...)); ``decode`` pulls the tokens from the
    coders. Both see the positions in the same order: rows of the batch, one step at a time."""

    def __init__(self, pm) -> None:
        self.pm = pm
        self.head = pm.head
        self.sixteen = pm.config.vocab_size == LEVELS

    # -- the encoder: all positions of a segment at once; order within a step: rounds, then rows
    def encode_step(self, params, x: np.ndarray) -> list[tuple[np.ndarray, object, np.ndarray]]:
        """params (N, ...) of the positions of one step (rows), x (N,) their tokens -> the coder calls
        for them, in order."""
        if self.head == "logistic_mixture":
            m = Mixture(params.mix.cpu().numpy(), params.center.cpu().numpy(), _np(params.base), self.pm.K)
            return self._mixture_calls(m.path(x), x)
        return self._categorical_calls(params, x)

    def _mixture_calls(self, masses: np.ndarray, x: np.ndarray):
        p1 = bernoulli_p(masses)  # (N, 16)
        bits = _sample_bits(x)
        return [(bits[:, r], _BERNOULLI, p1[:, r]) for r in range(ROUNDS)]

    def _categorical_calls(self, params, x: np.ndarray):
        if self.head == "softmax":
            w = softmax_weights(params.logits.cpu().numpy()).astype(np.float64)
            if not self.sixteen:
                return [(x.astype(np.int32), _CATEGORICAL, w)]
            hi, lo = x >> 8, x & 255
            blocks = w.reshape(-1, 256, 256)
            fine = blocks[np.arange(len(x)), hi]
            return [(hi.astype(np.int32), _CATEGORICAL, blocks.sum(-1)),
                    (lo.astype(np.int32), _CATEGORICAL, fine)]
        # dual softmax: the residual against the prior's shift, coarse then fine
        shift = params.shift.cpu().numpy()
        r = np.remainder(x - shift, LEVELS)
        c, f = r >> 8, r & 255
        wc = softmax_weights(params.logits.cpu().numpy()).astype(np.float64)
        fl = self.pm.fine_logits(params.hidden, torch.as_tensor(c, device=params.hidden.device))
        wf = softmax_weights(fl.cpu().numpy()).astype(np.float64)
        return [(c.astype(np.int32), _CATEGORICAL, wc), (f.astype(np.int32), _CATEGORICAL, wf)]

    # -- the decoder: one step of every row; ``decode(k, family, params (n, ...))`` decodes the group
    # rows' symbols of call k
    def decode_step(self, params, groups: list[np.ndarray], decoders: list) -> np.ndarray:
        """params (N, ...) for the rows listed in ``groups`` (indices into params), one range decoder
        per group -> the tokens (N,) (only the listed rows are meaningful)."""
        N = (params.mix if params.mix is not None else params.logits).shape[0]
        out = np.zeros(N, dtype=np.int64)

        def pull(values: np.ndarray, family, table: np.ndarray) -> None:
            for rows, dec in zip(groups, decoders):
                if len(rows):
                    values[rows] = dec.decode(family, table[rows])

        if self.head == "logistic_mixture":
            m = Mixture(params.mix.cpu().numpy(), params.center.cpu().numpy(), _np(params.base), self.pm.K)
            lo, hi, flo, fhi = m.start()
            bit = np.zeros(N, dtype=np.int64)
            for _ in range(ROUNDS):
                masses, fm = m.round(lo, hi, flo, fhi)
                pull(bit, _BERNOULLI, bernoulli_p(masses))
                mid = (lo + hi) >> 1
                up = bit == 1
                lo, flo = np.where(up, mid, lo), np.where(up, fm, flo)
                hi, fhi = np.where(up, hi, mid), np.where(up, fhi, fm)
            return lo
        if self.head == "softmax":
            w = softmax_weights(params.logits.cpu().numpy()).astype(np.float64)
            if not self.sixteen:
                pull(out, _CATEGORICAL, w)
                return out
            blocks = w.reshape(-1, 256, 256)
            hi = np.zeros(N, dtype=np.int64)
            pull(hi, _CATEGORICAL, blocks.sum(-1))
            pull(out, _CATEGORICAL, blocks[np.arange(N), hi])
            return hi * 256 + out
        c = np.zeros(N, dtype=np.int64)
        pull(c, _CATEGORICAL, softmax_weights(params.logits.cpu().numpy()).astype(np.float64))
        fl = self.pm.fine_logits(params.hidden, torch.as_tensor(c, device=params.hidden.device))
        pull(out, _CATEGORICAL, softmax_weights(fl.cpu().numpy()).astype(np.float64))
        return np.remainder(c * 256 + out + params.shift.cpu().numpy(), LEVELS)


def _first_params(params, t: int):
    """HeadParams (B, n, ...) -> the positions at column t (B, ...)."""
    return params.select((slice(None), t))


def encode_groups(pm, groups: list[list[np.ndarray]], start: int, on_step=None) -> list[np.ndarray]:
    """Range-code groups of chunks (token arrays), all rows in one batch: each chunk from an empty
    memory after the start token; one range code (uint32 words) per group, its symbols step by step,
    within a step coder call by call (rounds), within a call the group's rows in order. The model
    scores a segment of every row at a time (the portable model's pieces are exact, so this gives the
    numbers the decoder's one-token steps give)."""
    rows = _Rows([[len(c) for c in g] for g in groups])
    scheme = Scheme(pm)
    chunks = [c for g in groups for c in g]
    tok = np.full((rows.B, rows.T), start, dtype=np.int64)
    for i, c in enumerate(chunks):
        tok[i, : len(c)] = c
    feed = np.concatenate([np.full((rows.B, 1), start, dtype=np.int64), tok[:, :-1]], axis=1)
    encoders = [constriction.stream.queue.RangeEncoder() for _ in groups]
    cache = pm.init_cache(rows.B)
    # pieces of at most ENCODE_POSITIONS positions (rows x tokens) per model call: the activations of a
    # call stay ~30 MB whatever the batch (exact pieces give the same numbers as whole segments)
    T = max(1, min(pm.config.tgt_len, ENCODE_POSITIONS // rows.B))
    for s in range(0, rows.T, T):
        e = min(rows.T, s + T)
        params = pm.step(torch.as_tensor(feed[:, s:e], device=pm.device), cache)
        for t in range(s, e):
            act = rows.active(t)
            idx = np.concatenate(act)
            calls = scheme.encode_step(params.select((torch.as_tensor(idx, device=pm.device), t - s)),
                                       tok[idx, t])
            # split each call's positions back into groups (idx lists the groups' rows in order)
            bounds = np.cumsum([0] + [len(a) for a in act])
            for g, enc in enumerate(encoders):
                lo, hi = bounds[g], bounds[g + 1]
                if hi > lo:
                    for sym, family, table in calls:
                        enc.encode(sym[lo:hi], family, table[lo:hi])
            if on_step is not None:
                on_step(len(idx))
    return [enc.get_compressed() for enc in encoders]


def decode_groups(pm, groups: list[tuple[np.ndarray, list[int]]], start: int, on_step=None
                  ) -> list[list[np.ndarray]]:
    """The inverse of :func:`encode_groups`: (words, chunk lengths) per group -> its chunks' tokens."""
    rows = _Rows([lens for _, lens in groups])
    scheme = Scheme(pm)
    decoders = [constriction.stream.queue.RangeDecoder(np.asarray(w, dtype=np.uint32)) for w, _ in groups]
    out = np.zeros((rows.B, max(rows.T, 1)), dtype=np.int64)
    cache = pm.init_cache(rows.B)
    feed = torch.full((rows.B, 1), start, dtype=torch.long, device=pm.device)
    for t in range(rows.T):
        params = pm.step(feed, cache).select((slice(None), 0))
        act = rows.active(t)
        out[:, t] = scheme.decode_step(params, act, decoders)
        nxt = torch.as_tensor(out[:, t], device=pm.device)
        feed = torch.where(torch.as_tensor(rows.lengths > t, device=pm.device), nxt,
                           torch.full_like(nxt, start))[:, None]
        if on_step is not None:
            on_step(int(sum(len(a) for a in act)))
    result, i = [], 0
    for _, lens in groups:
        result.append([out[i + j, :n].copy() for j, n in enumerate(lens)])
        i += len(lens)
    return result


def _np(t):
    return None if t is None else t.cpu().numpy()
