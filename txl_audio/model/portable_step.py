"""The portable model's one-token decoding step on the CPU, fused: each layer in four matrix products
and four numba passes instead of ~40 tensor operations.

A decoder steps one token at a time for every row of its batch, and with a small model (speech8:
d_model 64) the per-operation cost of torch's dispatch and of the tensors' Python wrappers, not the
arithmetic, set the pace (measured: ~1 ms of a 1.7 ms step at batch 16). Here everything between the
products runs in numba over NumPy views: the LayerNorms, the Linear's shift-round-bias-clamp passes,
the residual additions, the rotary rotation, the ring writes and the attention itself. The products
stay torch's (float64 of integers below 2^53: exact in any order, so MKL's kernels and thread count
cannot change a bit).

It computes the very integers of :meth:`PortableModel._piece` on one token (the tensor path a GPU
runs), which tests/test_portable.py checks for every architecture it takes: relative, rotary and
absolute attention, pre- and post-norm, same_length and clamp_len. The compressive memory keeps the
general path.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from txl_audio.numerics import EXP_FRAC_BITS, MATMUL_IN_MAX, QKV_MAX, _clamp_double, _layer_norm_rows

TRIG_BITS = 14  # as portable.py
PRE_SHIFT = 14
RESIDUAL_MAX = (1 << 40) - 1
NO_LIMIT = 1 << 62


@numba.njit(cache=True, nogil=True)
def _norm_double(x, g, b, eps, c_max, std_bits, m):  # pragma: no cover
    """LayerNorm rows of x (N, D) int64, then float64(clamp(., +-m)): a Linear's input."""
    return _clamp_double(_layer_norm_rows(x, g, b, eps, c_max, std_bits), m)


@numba.njit(cache=True, nogil=True)
def _post(acc, half, shift, bias, add, lo, hi):  # pragma: no cover
    """The Linear's pass: clamp(((int64(acc) + half) >> shift) + bias (+ add), lo, hi); add (0, M): none."""
    N, M = acc.shape
    out = np.empty((N, M), dtype=np.int64)
    with_add = add.shape[0] > 0
    for i in range(N):
        for j in range(M):
            v = ((np.int64(acc[i, j]) + half[j]) >> shift[j]) + bias[j]
            if with_add:
                v += add[i, j]
            out[i, j] = min(max(v, lo), hi)
    return out


@numba.njit(cache=True, nogil=True)
def _post_double(acc, half, shift, bias, lo, hi, m):  # pragma: no cover
    """The Linear's pass clamped to [lo, hi], then float64(clamp(., +-m)): the next Linear's input."""
    N, M = acc.shape
    out = np.empty((N, M), dtype=np.float64)
    for i in range(N):
        for j in range(M):
            v = ((np.int64(acc[i, j]) + half[j]) >> shift[j]) + bias[j]
            v = min(max(v, lo), hi)
            out[i, j] = np.float64(min(max(v, -m), m))
    return out


@numba.njit(cache=True, nogil=True)
def _add_norm(x, a, g, b, eps, c_max, std_bits):  # pragma: no cover
    """LayerNorm(x + a) (post-norm's sublayer ends), int64 rows."""
    return _layer_norm_rows(x + a, g, b, eps, c_max, std_bits)


def _round_shift(v, s):  # pragma: no cover (numba inlines it)
    return (v + (1 << (s - 1))) >> s


_round_shift = numba.njit(cache=True, nogil=True, inline="always")(_round_shift)


# fastmath reassoc/contract: every sum is of integer-valued float64 products whose absolute values sum
# below 2^53 (QKV_MAX, MAX_KEYS), so any order and any fusing give the same exact integer (portable.py)
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _attend_step(acc, half, shift, bias, H, Dh, u, v, relative, cos, sin, keys, values, slot, table_t, idx,
                 hidden, mul, mul_shift, exp_table, m):  # pragma: no cover
    """One token's attention for every row, from the qkv product acc (B, 3 H Dh) float64: the Linear's
    pass clamped to +-QKV_MAX, the rotary rotation where cos (r/2,) is not empty, the new key and value
    written into the int32 ring (B, H, S, Dh) at ``slot``, the content and position biases u, v (H, Dh)
    where ``relative``, the scores against every slot (keys, plus the position term from table_t
    (H, Dh, R) at idx (S,) each slot's distance), the softmax weights from the 2^-x table, and the
    weighted values; returns the output projection's input (B, H Dh) float64 clamped to +-m."""
    B = acc.shape[0]
    S = keys.shape[2]
    HD = H * Dh
    R = table_t.shape[2]
    rh = cos.shape[0]
    fmask = (1 << EXP_FRAC_BITS) - 1
    out = np.empty((B, HD), dtype=np.float64)
    qkv = np.empty(3 * HD, dtype=np.int64)
    q1 = np.empty(Dh, dtype=np.float64)
    q2 = np.empty(Dh, dtype=np.float64)
    by_dist = np.empty(R, dtype=np.float64)
    scores = np.empty(S, dtype=np.int64)
    acc_v = np.empty(Dh, dtype=np.float64)
    vis = np.empty(S, dtype=np.int64)
    nvis = 0
    rmax = 0
    for s in range(S):
        if not hidden[s]:
            vis[nvis] = s
            nvis += 1
            if R > 0:
                rmax = max(rmax, idx[s])
    for b in range(B):
        for j in range(3 * HD):
            y = ((np.int64(acc[b, j]) + half[j]) >> shift[j]) + bias[j]
            qkv[j] = min(max(y, -QKV_MAX), QKV_MAX)
        for h in range(H):
            q0 = h * Dh
            k0 = HD + h * Dh
            v0 = 2 * HD + h * Dh
            if rh > 0:  # pairs i, i + r/2 of the query's and the key's head, as _rotate, then clamped
                for base in (q0, k0):
                    for i in range(rh):
                        x1 = qkv[base + i]
                        x2 = qkv[base + rh + i]
                        r1 = _round_shift(x1 * cos[i] - x2 * sin[i], TRIG_BITS)
                        r2 = _round_shift(x2 * cos[i] + x1 * sin[i], TRIG_BITS)
                        qkv[base + i] = min(max(r1, -QKV_MAX), QKV_MAX)
                        qkv[base + rh + i] = min(max(r2, -QKV_MAX), QKV_MAX)
            for d in range(Dh):
                keys[b, h, slot, d] = np.int32(qkv[k0 + d])
                values[b, h, slot, d] = np.int32(qkv[v0 + d])
            for d in range(Dh):
                q = qkv[q0 + d]
                if relative:
                    q1[d] = np.float64(min(max(q + u[h, d], -QKV_MAX), QKV_MAX))
                    q2[d] = np.float64(min(max(q + v[h, d], -QKV_MAX), QKV_MAX))
                else:
                    q1[d] = np.float64(q)
            if relative:  # qv against the table's rows up to the farthest visible distance (d outer:
                for r in range(rmax + 1):  # the inner loop vectorises)
                    by_dist[r] = 0.0
                for d in range(Dh):
                    qd = q2[d]
                    for r in range(rmax + 1):
                        by_dist[r] += qd * table_t[h, d, r]
            top = -(1 << 62)
            for k in range(nvis):  # the visible slots only (hidden ones get no weight)
                s = vis[k]
                sc = 0.0
                for d in range(Dh):
                    sc += q1[d] * keys[b, h, s, d]
                if relative:
                    sc += by_dist[idx[s]]
                isc = np.int64(sc)
                scores[k] = isc
                top = max(top, isc)
            for d in range(Dh):
                acc_v[d] = 0.0
            total = 0
            for k in range(nvis):
                diff = min((top - scores[k]) >> PRE_SHIFT, 1 << 38)
                y = (diff * mul) >> mul_shift
                e = y >> EXP_FRAC_BITS
                if e > 16:
                    continue
                w = exp_table[y & fmask] >> e
                total += w
                wf = np.float64(w)
                s = vis[k]
                for d in range(Dh):
                    acc_v[d] += wf * values[b, h, s, d]
            for d in range(Dh):
                o = (2 * np.int64(acc_v[d]) + total) // (2 * total)
                out[b, q0 + d] = np.float64(min(max(o, -m), m))
    return out


def _lin(lin) -> tuple:
    """A Linear's pieces as the passes take them: (W^T float64 tensor, half, shift, bias, in_max)."""
    return (lin.weight_t, lin.half.numpy(), lin.shift.numpy(), lin.bias0.numpy(), lin.in_max)


def _norm(ln) -> tuple:
    return (ln.g.numpy(), ln.b.numpy(), ln.eps, ln.C_MAX, ln.STD_BITS)


class FusedLayers:
    """The layers of a :class:`~txl_audio.model.portable.PortableModel` for one-token CPU steps."""

    EMPTY_ADD = np.zeros((0, 0), dtype=np.int64)

    def __init__(self, pm) -> None:
        self.layers = []
        for layer in pm.layers:
            lins = (layer.qkv, layer.out, layer.fc1, layer.fc2)
            if not all(lin.plain for lin in lins):
                raise ValueError("a weight above 2^15 (never made by quantisation)")
            H, Dh = layer.H, layer.Dh
            self.layers.append(dict(
                pre=layer.pre_norm, H=H, Dh=Dh, qkv=_lin(layer.qkv), out=_lin(layer.out),
                fc1=_lin(layer.fc1), fc2=_lin(layer.fc2), attn_norm=_norm(layer.attn_norm),
                ff_norm=_norm(layer.ff_norm), relative=layer.relative,
                u=layer.u.numpy() if layer.relative else np.zeros((H, Dh), dtype=np.int64),
                v=layer.v.numpy() if layer.relative else np.zeros((H, Dh), dtype=np.int64),
                mul=layer.mul, mul_shift=layer.mul_shift))
        self.exp_table = pm.exp_table.numpy()
        self.no_trig = np.zeros(0, dtype=np.int64)

    def run(self, h: np.ndarray, keys: list, values: list, slot: int, tables: list, idx: np.ndarray,
            hidden: np.ndarray, rope) -> np.ndarray:
        """h (B, D) int64 after the embedding -> after the last layer; keys/values the rings (numpy),
        tables per layer (H, Dh, R) float64 (or (H, Dh, 0)), idx (S,) int64, hidden (S,) bool, rope
        (cos, sin) (r/2,) int64 or None."""
        cos, sin = rope if rope is not None else (self.no_trig, self.no_trig)
        mm = torch.mm
        for i, p in enumerate(self.layers):
            w, half, shift, bias, m = p["qkv"]
            x = _norm_double(h, *p["attn_norm"], m) if p["pre"] else _clamp_double(h, m)
            acc = mm(torch.from_numpy(x), w).numpy()
            wo, half_o, shift_o, bias_o, m_o = p["out"]
            o = _attend_step(acc, half, shift, bias, p["H"], p["Dh"], p["u"], p["v"], p["relative"], cos, sin,
                             keys[i], values[i], slot, tables[i], idx, hidden, p["mul"], p["mul_shift"],
                             self.exp_table, m_o)
            acc = mm(torch.from_numpy(o), wo).numpy()
            w1, half1, shift1, bias1, m1 = p["fc1"]
            w2, half2, shift2, bias2, m2 = p["fc2"]
            if p["pre"]:  # h + attention, then h + ff(norm(.)), each clamped to the residual range
                a = _post(acc, half_o, shift_o, bias_o, h, -RESIDUAL_MAX, RESIDUAL_MAX)
                y = _norm_double(a, *p["ff_norm"], m1)
                acc = mm(torch.from_numpy(y), w1).numpy()
                y = _post_double(acc, half1, shift1, bias1, 0, MATMUL_IN_MAX, m2)
                acc = mm(torch.from_numpy(y), w2).numpy()
                h = _post(acc, half2, shift2, bias2, a, -RESIDUAL_MAX, RESIDUAL_MAX)
            else:  # norm(h + attention), then norm(x + ff(x))
                a = _post(acc, half_o, shift_o, bias_o, self.EMPTY_ADD, -NO_LIMIT, NO_LIMIT)
                x = _add_norm(h, a, *p["attn_norm"])
                acc = mm(torch.from_numpy(_clamp_double(x, m1)), w1).numpy()
                y = _post_double(acc, half1, shift1, bias1, 0, MATMUL_IN_MAX, m2)
                acc = mm(torch.from_numpy(y), w2).numpy()
                f = _post(acc, half2, shift2, bias2, self.EMPTY_ADD, -NO_LIMIT, NO_LIMIT)
                h = _add_norm(x, f, *p["ff_norm"])
        return h
