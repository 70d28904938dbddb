"""Machine-independent arithmetic: what the lossless codec's probabilities are computed with.

A range coder fails if the encoder's and the decoder's probabilities differ in a single bit (Balle,
Johnston, Minnen 2019, "Integer networks for data compression with latent-variable models": range
coding "can fail catastrophically if the computation of the prior differs even slightly between the
sending and the receiving side"). A float32 network's outputs differ in their last bits between CPUs
(vector width, FMA contraction, BLAS kernels), thread counts and CPU vs GPU. So the coding path
computes only with operations whose result is the same everywhere:

- integers (int64 tensors): +, -, *, comparisons, shifts, floor division, gathers, sums. Exact on
  every CPU and GPU, in any order;
- matrix products in float64 of integer-valued operands whose products and partial sums stay below
  2^53 in magnitude (:func:`linear`, :func:`exact_matmul`): every intermediate result is an integer that
  float64 represents exactly, so the sum is the same in any order, with or without FMA, on any BLAS
  or GPU. The bound is checked when the weights are quantised (``check_exact``), and inputs are clamped
  to the range the check assumed;
- lookup tables for the non-linear functions (2^-x, the logistic sigmoid, sin/cos), made from
  Python's exact integer and ``decimal`` arithmetic (software, the same on every machine), never
  from the platform's libm.

Fixed point: a real value v is held as the integer round(v * 2^F); ``ACT_BITS`` = 12 fractional bits
for activations. See docs/architecture.md, "Same results on every machine".
"""

from __future__ import annotations

import decimal
import functools
import math

import numba
import numpy as np
import torch
from torch import Tensor

ACT_BITS = 12  # fractional bits of activations (resolution 2.4e-4)
ACT_ONE = 1 << ACT_BITS
MATMUL_IN_MAX = (1 << 23) - 1  # matmul inputs are clamped to +-2^23 (values +-2048)
QKV_MAX = (1 << 22) - 1  # queries, keys, values: +-2^22 (values +-1024), so q.k over 128 dims < 2^53
WEIGHT_BITS = 15  # weights: each output row scaled so its largest |w| is below 2^15
EXACT = 1 << 53  # float64 represents every integer below this exactly

EXP_FRAC_BITS = 10  # tables of 2^-f for f in [0, 1) in steps of 2^-10
SIGMOID_STEP_BITS = 8  # the sigmoid table's grid: z in steps of 2^-8
SIGMOID_RANGE = 32  # z in [-32, 32]: beyond, 0 or 1 (sigmoid(-32) = 1.3e-14 < 2^-32)
SIGMOID_ONE_BITS = 32  # sigmoid values in units of 2^-32


class NotExact(ValueError):
    """A product or sum could leave the range where float64 is exact: the quantisation refuses."""


# ----------------------------------------------------------------------------------------------------
# integer helpers (int64 tensors)


def round_shift(x: Tensor, s: int | Tensor) -> Tensor:
    """round(x / 2^s) for int64 x (ties up), s >= 0 (a tensor of shifts broadcasts: per column)."""
    if isinstance(s, int):
        return x if s == 0 else (x + (1 << (s - 1))) >> s
    return (x + rounding_half(s)) >> s


def rounding_half(s: Tensor) -> Tensor:
    """2^(s-1) where s > 0, else 0: what round-half-up adds before shifting right by s."""
    return torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))


def round_div(a: Tensor, b: Tensor | int) -> Tensor:
    """round(a / b) for int64 a and positive int64 b (ties up): floor((2a + b) / 2b)."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


def isqrt(n: Tensor) -> Tensor:
    """floor(sqrt(n)) for int64 n in [0, 2^62): float64's sqrt gives a start within one of the answer
    (n rounded to 53 bits moves sqrt(n) by less than 1 below 2^62), then integer corrections make it
    exact whatever the sqrt returned."""
    r = torch.sqrt(n.double()).long()
    r = torch.where(r * r > n, r - 1, r)
    r = torch.where(r * r > n, r - 1, r)
    r = torch.where((r + 1) * (r + 1) <= n, r + 1, r)
    return torch.where((r + 1) * (r + 1) <= n, r + 1, r)


def exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for int64 tensors whose products' absolute sums are below 2^53 (the caller's bound):
    computed in float64, exact in any summation order; returns int64."""
    return torch.matmul(a.double(), b.double()).long()


# ----------------------------------------------------------------------------------------------------
# quantised linear layers


class Linear:
    """y = x W^T + b in fixed point. x: int64 with ACT_BITS fractional bits, clamped to +-in_max;
    W quantised per output row j as round(w * 2^s_j) (|w_q| < 2^WEIGHT_BITS); the product is exact in
    float64 (checked), then shifted by s_j back to ``out_bits`` fractional bits (ACT_BITS by default,
    more for outputs that need them) with round-half-up, plus the bias."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, in_max: int = MATMUL_IN_MAX,
                 out_bits: int = ACT_BITS, name: str = "linear") -> None:
        w = weight.detach().to("cpu", torch.float64)
        out_features, in_features = w.shape
        peak = w.abs().amax(dim=1)
        # s_j: the largest shift keeping |w| * 2^s below 2^WEIGHT_BITS (frexp: peak = m 2^e, m in [.5, 1))
        exps = torch.tensor([math.frexp(float(p))[1] if p > 0 else -60 for p in peak], dtype=torch.long)
        shift = (WEIGHT_BITS - exps).clamp(max=60)
        wq = torch.round(w * torch.pow(2.0, shift.double())[:, None])  # exact: a power of two
        total = wq.abs().sum(dim=1).max().item() * in_max
        if total >= EXACT:
            raise NotExact(f"{name}: inputs up to {in_max} times weights summing to "
                           f"{wq.abs().sum(dim=1).max().item():.0f} reach 2^{math.log2(total):.1f}")
        self.in_max = in_max
        self.weight_t = wq.t().contiguous()  # (in, out) float64 holding integers
        # the product is in 2^-(ACT_BITS + s_j); out_bits fractional bits wanted: shift by s_j + ACT - out
        self.shift = (shift + ACT_BITS - out_bits).clamp(min=0)
        self.left = (out_bits - ACT_BITS - shift).clamp(min=0)  # only for weights above 2^15 (never)
        self.bias = None
        if bias is not None:
            self.bias = torch.round(bias.detach().to("cpu", torch.float64) * 2.0**out_bits).long()
        self.out_features = out_features
        self.kernel = True  # on the CPU: the numba passes (the same integers as the tensor operations)

        self._post()

    def _post(self) -> None:
        """What follows the product, per output column: add the rounding half of the shift, shift
        right, add the bias (``left`` shifts up instead: never nonzero for weights below 2^15)."""
        self.half = rounding_half(self.shift)
        self.plain = not bool(self.left.any())
        self.bias0 = self.bias if self.bias is not None else torch.zeros_like(self.shift)

    def to(self, device: torch.device) -> Linear:
        self.weight_t = self.weight_t.to(device)
        self.shift, self.left = self.shift.to(device), self.left.to(device)
        if self.bias is not None:
            self.bias = self.bias.to(device)
        self._post()
        return self

    def __call__(self, x: Tensor, add: Tensor | None = None, lo: int | None = None, hi: int | None = None
                 ) -> Tensor:
        """x W^T + b, plus ``add`` (the same shape as the output: a residual), clamped to [lo, hi] where
        given: on the CPU one pass after the product instead of a tensor operation each."""
        cpu = self.kernel and x.device.type == "cpu"
        if cpu and x.dtype == torch.long and x.numel():  # clamp and convert in one pass
            xd = torch.from_numpy(_clamp_double(x.reshape(-1, x.shape[-1]).contiguous().numpy(),
                                                self.in_max)).view(x.shape)
        else:
            xd = x.clamp(-self.in_max, self.in_max).double()
        acc = torch.matmul(xd, self.weight_t)  # integers below 2^53: exact
        if cpu and self.plain:  # one pass instead of five tensor operations
            M = acc.shape[-1]
            a = (add.reshape(-1, M).contiguous().numpy() if add is not None
                 else np.zeros((0, M), dtype=np.int64))
            out = _shift_columns(acc.reshape(-1, M).numpy(), self.half.numpy(), self.shift.numpy(),
                                 self.bias0.numpy(), a, -(1 << 62) if lo is None else lo,
                                 (1 << 62) if hi is None else hi)
            return torch.from_numpy(out).view(acc.shape)
        y = (acc.long() + self.half) >> self.shift << self.left
        if self.bias is not None:
            y = y + self.bias
        if add is not None:
            y = y + add
        return y if lo is None and hi is None else y.clamp(lo, hi)


@numba.njit(cache=True, nogil=True)
def _shift_columns(acc, half, shift, bias, add, lo, hi):  # pragma: no cover
    """clamp(((int64(acc) + half) >> shift) + bias (+ add), lo, hi) per column; acc (N, M) float64
    holding integers below 2^53 (exactly converted); add (N, M) int64, or (0, M): none."""
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
def _clamp_double(x, m):  # pragma: no cover
    """float64(clamp(x, -m, m)) for int64 x (N, M): exact (|x| <= m < 2^53)."""
    N, M = x.shape
    out = np.empty((N, M), dtype=np.float64)
    for i in range(N):
        for j in range(M):
            out[i, j] = np.float64(min(max(x[i, j], -m), m))
    return out


def quantise(t: Tensor, bits: int = ACT_BITS) -> Tensor:
    """A float tensor as fixed-point int64 (round half to even, the same everywhere)."""
    return torch.round(t.detach().to("cpu", torch.float64) * 2.0**bits).long()


class LayerNorm:
    """LayerNorm in integers: x (..., D) with ACT_BITS fractional bits -> the same format.

    mean = round(sum / D); c = x - mean (clamped to +-2^25); var = sum(c^2) // D + eps; the
    normalised value c / sqrt(var) is computed as round(c * gamma_q * 2^S / isqrt(var * 2^(2S))) with
    S = 6 extra bits of the standard deviation, plus beta."""

    STD_BITS = 6
    C_MAX = (1 << 25) - 1

    def __init__(self, weight: Tensor, bias: Tensor, eps: float) -> None:
        self.g = quantise(weight)
        self.b = quantise(bias)
        self.eps = max(1, round(eps * ACT_ONE * ACT_ONE))
        if self.g.abs().max() >= (1 << 20):
            raise NotExact("a LayerNorm gain above 256")
        self.kernel = True  # on the CPU: the numba kernel below (the same integers)

    def to(self, device: torch.device) -> LayerNorm:
        self.g, self.b = self.g.to(device), self.b.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        if self.kernel and x.device.type == "cpu" and x.numel():  # one pass per row instead of ~20 ops
            out = _layer_norm_rows(x.reshape(-1, x.shape[-1]).contiguous().numpy(), self.g.numpy(),
                                   self.b.numpy(), self.eps, self.C_MAX, self.STD_BITS)
            return torch.from_numpy(out).view(x.shape)
        return self.tensor_path(x)

    def tensor_path(self, x: Tensor) -> Tensor:
        """The same integers in tensor operations (what a GPU runs; the kernel is tested against it)."""
        D = x.shape[-1]
        mean = round_div(x.sum(-1, keepdim=True), D)
        c = (x - mean).clamp(-self.C_MAX, self.C_MAX)
        var = torch.div((c * c).sum(-1, keepdim=True), D, rounding_mode="floor") + self.eps
        S = self.STD_BITS
        sd = isqrt(var.clamp(max=(1 << 50) - 1) << (2 * S))  # sqrt(var) * 2^S
        # c * g: |c| < 2^25, |g| < 2^20, times 2^S: < 2^51
        return round_div((c * self.g) << S, sd) + self.b


@numba.njit(cache=True, nogil=True)
def _isqrt_int(n):  # pragma: no cover
    """floor(sqrt(n)) for int64 0 <= n < 2^62, as :func:`isqrt`: a float start, integer corrections."""
    r = np.int64(np.sqrt(np.float64(n)))
    for _ in range(2):
        if r * r > n:
            r -= 1
    for _ in range(2):
        if (r + 1) * (r + 1) <= n:
            r += 1
    return r


@numba.njit(cache=True, nogil=True)
def _layer_norm_rows(x, g, b, eps, c_max, std_bits):  # pragma: no cover
    """:meth:`LayerNorm.tensor_path` per row of x (N, D) int64: the same integers (Python's floor
    division and int64 arithmetic, bounded as there)."""
    N, D = x.shape
    out = np.empty((N, D), dtype=np.int64)
    c = np.empty(D, dtype=np.int64)
    for i in range(N):
        total = np.int64(0)
        for j in range(D):
            total += x[i, j]
        mean = (2 * total + D) // (2 * D)
        sq = np.int64(0)
        for j in range(D):
            v = x[i, j] - mean
            v = min(max(v, -c_max), c_max)
            c[j] = v
            sq += v * v
        var = sq // D + eps
        var = min(var, (np.int64(1) << 50) - 1)
        sd = _isqrt_int(var << (2 * std_bits))
        for j in range(D):
            a = (c[j] * g[j]) << std_bits
            out[i, j] = (2 * a + sd) // (2 * sd) + b[j]
    return out


# ----------------------------------------------------------------------------------------------------
# tables, from software arithmetic (decimal, Python integers): the same bits on every machine

_DEC = decimal.Context(prec=40)


@functools.cache
def exp2_table(one_bits: int) -> np.ndarray:
    """round(2^one_bits * 2^(-f / 2^EXP_FRAC_BITS)) for f = 0 .. 2^EXP_FRAC_BITS - 1 (int64)."""
    n = 1 << EXP_FRAC_BITS
    one = decimal.Decimal(1 << one_bits)
    two = decimal.Decimal(2)
    return np.array([int(_DEC.multiply(one, _DEC.power(two, decimal.Decimal(-f) / n)).to_integral_value(
        rounding=decimal.ROUND_HALF_EVEN)) for f in range(n)], dtype=np.int64)


@functools.cache
def log2_table() -> np.ndarray:
    """round(2^10 log2(1 + i / 1024)) for i = 0 .. 1023 (int64)."""
    ctx = decimal.Context(prec=40)
    ln2 = ctx.ln(decimal.Decimal(2))
    out = []
    for i in range(1024):
        v = ctx.divide(ctx.ln(ctx.add(1, ctx.divide(decimal.Decimal(i), 1024))), ln2) * 1024
        out.append(int(v.to_integral_value(rounding=decimal.ROUND_HALF_EVEN)))
    return np.array(out, dtype=np.int64)


@functools.cache
def sigmoid_table() -> np.ndarray:
    """round(2^32 sigmoid(z)) on z = -32, -32 + 2^-8, ..., 32 (int64, symmetric: T[i] + T[-1-i] = 2^32
    exactly, so F(z) + F(-z) = 1 holds in the integers)."""
    step = 1 << SIGMOID_STEP_BITS
    n_half = SIGMOID_RANGE * step
    one = 1 << SIGMOID_ONE_BITS
    ctx = decimal.Context(prec=40)
    neg = []
    for i in range(n_half + 1):  # z = -32 .. 0
        z = decimal.Decimal(-(n_half - i)) / step
        s = ctx.divide(decimal.Decimal(1), ctx.add(decimal.Decimal(1), ctx.exp(-z)))
        neg.append(int(ctx.multiply(s, one).to_integral_value(rounding=decimal.ROUND_HALF_EVEN)))
    neg[-1] = one // 2
    table = neg + [one - v for v in reversed(neg[:-1])]  # z = 2^-8 .. 32 by symmetry
    return np.array(table, dtype=np.int64)


def _dec_cos_sin(x: decimal.Decimal) -> tuple[decimal.Decimal, decimal.Decimal]:
    """cos and sin of a decimal angle (|x| <= ~10) by their Taylor series at 40 digits."""
    ctx = decimal.Context(prec=45)
    x2 = ctx.multiply(x, x)
    c, s = decimal.Decimal(0), decimal.Decimal(0)
    term_c, term_s = decimal.Decimal(1), x
    k = 0
    while True:
        c, s = ctx.add(c, term_c), ctx.add(s, term_s)
        term_c = ctx.divide(ctx.multiply(-term_c, x2), (2 * k + 1) * (2 * k + 2))
        term_s = ctx.divide(ctx.multiply(-term_s, x2), (2 * k + 2) * (2 * k + 3))
        k += 1
        if abs(term_c) < decimal.Decimal(10) ** -44 and abs(term_s) < decimal.Decimal(10) ** -44:
            return c, s


_ROT_BITS = 62  # the recurrences' fixed point


def frequency(base: float, i: int, dims: int) -> decimal.Decimal:
    """base^(-2i/dims) to 40 digits (decimal: no libm)."""
    ctx = decimal.Context(prec=40)
    return ctx.power(decimal.Decimal(repr(float(base))), decimal.Decimal(-2 * i) / dims)


@functools.lru_cache(maxsize=64)
def cos_sin_table(freqs: tuple[str, ...], start_num: int, count: int, denom: int, bits: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (count, len(freqs)) int64 with ``bits`` fractional bits of the angles
    ((start_num + i) / denom) * w_k, i = 0 .. count - 1, for the frequencies w_k (decimal strings).
    A rotation recurrence in 62-bit Python integers from the exact first angle: no libm, the same
    integers on every machine."""
    one = 1 << _ROT_BITS
    cos = np.zeros((count, len(freqs)), dtype=np.int64)
    sin = np.zeros((count, len(freqs)), dtype=np.int64)
    ctx = decimal.Context(prec=40)
    scale = 1 << (_ROT_BITS - bits)
    for k, f in enumerate(freqs):
        w = decimal.Decimal(f)
        step = ctx.divide(w, denom)
        # the first angle reduced modulo 2 pi (decimal pi to 40 digits)
        a0 = ctx.multiply(decimal.Decimal(start_num), step)
        a0 = ctx.subtract(a0, ctx.multiply(_TWO_PI, (a0 / _TWO_PI).to_integral_value(decimal.ROUND_FLOOR)))
        cs, ss = _dec_cos_sin(step)
        c0, s0 = _dec_cos_sin(a0)
        dc, ds = int(cs * one), int(ss * one)
        c, s = int(c0 * one), int(s0 * one)
        for i in range(count):
            cos[i, k] = (c + scale // 2) // scale
            sin[i, k] = (s + scale // 2) // scale
            c, s = (c * dc - s * ds) >> _ROT_BITS, (s * dc + c * ds) >> _ROT_BITS
    return cos, sin


_TWO_PI = decimal.Decimal("6.283185307179586476925286766559005768394")


def sinusoid_q(start_num: int, count: int, denom: int, dim: int, bits: int = 14) -> Tensor:
    """The model's sinusoid embedding [sin(d w_k) | cos(d w_k)], w_k = 10000^(-2k/dim), of the distances
    d = (start_num + i) / denom, i < count, as (count, dim) int64 with ``bits`` fractional bits."""
    freqs = tuple(str(frequency(10_000.0, k, dim)) for k in range(dim // 2))
    cos, sin = cos_sin_table(freqs, start_num, count, denom, bits)
    return torch.from_numpy(np.concatenate([sin, cos], axis=1))


def rotary_q(positions_start_num: int, count: int, denom: int, dims: int, base: float,
             bits: int = 14) -> tuple[Tensor, Tensor]:
    """Rotary cos, sin (count, dims/2) int64 with ``bits`` fractional bits at positions
    (start_num + i) / denom (RoFormer's frequencies base^(-2i/dims))."""
    freqs = tuple(str(frequency(base, i, dims)) for i in range(dims // 2))
    cos, sin = cos_sin_table(freqs, positions_start_num, count, denom, bits)
    return torch.from_numpy(cos), torch.from_numpy(sin)


# ----------------------------------------------------------------------------------------------------
# softmax weights


def log2_units(scale: float, in_bits: int, pre_shift: int) -> tuple[int, int]:
    """(multiplier, shift) turning an integer difference d of scores (2^-in_bits units, already shifted
    right by pre_shift) into 2^-EXP_FRAC_BITS units of log2: y = (d * mul) >> shift ~ d * scale / ln 2.
    The multiplier is a deterministic rounding of a decimal."""
    ctx = decimal.Context(prec=40)
    ln2 = ctx.ln(decimal.Decimal(2))
    shift = 16
    exact = ctx.divide(decimal.Decimal(repr(float(scale))), ln2) * (
        decimal.Decimal(2) ** (EXP_FRAC_BITS + shift + pre_shift - in_bits))
    return int(exact.to_integral_value(rounding=decimal.ROUND_HALF_EVEN)), shift


def softmax_weights(y: Tensor, table: Tensor, one_bits: int) -> Tensor:
    """Unnormalised weights 2^-y (y >= 0 in 2^-EXP_FRAC_BITS units of log2, int64) as integers with
    ``one_bits`` bits for 2^0 (0 once below one unit)."""
    n = y >> EXP_FRAC_BITS
    f = y & ((1 << EXP_FRAC_BITS) - 1)
    w = table[f] >> n.clamp(max=62)
    return torch.where(n > one_bits, torch.zeros_like(w), w)
