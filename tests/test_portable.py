"""The portable (integer) model and its arithmetic: a whole segment at a time gives exactly the numbers
of one token at a time, for every architecture the codec takes; its code lengths stay within a
fraction of a percent of the float model's NLL; the integer helpers are exact; the tables are the same
bits as on the machine that recorded their hashes."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from txl_audio import numerics
from txl_audio.coding import Mixture, bernoulli_p, softmax_weights
from txl_audio.config import ModelConfig
from txl_audio.model import TransformerXL
from txl_audio.model.portable import HeadParams, NotExact, PortableModel

pytestmark = pytest.mark.numerics  # CPU-sensitive results: CI reruns this file as another CPU


VARIANTS = {
    "relative": dict(),
    "rotary": dict(attention="rotary"),
    "absolute": dict(attention="absolute", mem_len=0),
    "pre_norm_same_length_clamp": dict(pre_norm=True, same_length=True, clamp_len=10),
    "cmem_mean": dict(cmem_len=4, cmem_ratio=2),
    "cmem_conv_rotary": dict(cmem_len=4, cmem_ratio=4, cmem_fn="conv", attention="rotary"),
}
HEADS = {
    "mulaw": dict(vocab_size=256),
    "mixture": dict(vocab_size=65536, head="logistic_mixture", mixture_components=4),
    "mixture_prior": dict(vocab_size=65536, head="logistic_mixture", mixture_components=4, lp_order=6),
    "dual_prior": dict(vocab_size=65536, head="dual_softmax", lp_order=6),
    "mixture_cascade": dict(vocab_size=65536, head="logistic_mixture", mixture_components=4, lp_order=1,
                            lp_coefficients="cascade"),
    "dual_cascade": dict(vocab_size=65536, head="dual_softmax", lp_order=1, lp_coefficients="cascade"),
    "softmax16": dict(vocab_size=65536),
}


def model(sharp: float = 0.25, seed: int = 0, **kw) -> TransformerXL:
    base = dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0, tgt_len=8, mem_len=16)
    torch.manual_seed(seed)
    m = TransformerXL(ModelConfig(**{**base, **kw}))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "proj" not in name and "coef" not in name:
                p.normal_(0, sharp)
        if getattr(m, "cascade", False):  # the cascade's features count for something
            m.lp.features.weight.normal_(0, 0.3)
        if hasattr(m.out, "proj"):
            m.out.proj.weight.normal_(0, 0.05)
    return m.eval()


def signal(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if vocab == 256:
        x = np.clip(128 + 50 * np.sin(t / 7) + rng.normal(0, 6, n), 0, 255)
    else:
        x = np.clip(32768 + 4000 * np.sin(t / 7) + rng.normal(0, 400, n), 0, 65535)
    return torch.as_tensor(np.stack([x, x[::-1]]).astype(np.int64))


def params_equal(a, b) -> bool:
    return all((getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f))
               for f in HeadParams.FIELDS)


def concat(parts):
    fields = {}
    for name in HeadParams.FIELDS:
        xs = [getattr(p, name) for p in parts]
        fields[name] = None if xs[0] is None else torch.cat(xs, dim=1)
    return HeadParams(**fields)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("head", ["mulaw", "mixture_prior", "mixture_cascade"])
def test_segment_pass_equals_one_token_steps_exactly(variant, head):
    """A whole stream in one call (cut at segment boundaries inside), one token at a time, and pieces
    of 5 across segments give the same integers, with the CPU's numba kernels (attention, LayerNorm,
    the Linear's passes with their residuals and clamps) and with the tensor path (what a GPU runs)."""
    m = model(**{**HEADS[head], **VARIANTS[variant]})
    pm = PortableModel(m)
    x = signal(70, m.config.vocab_size)
    got = []
    threads = torch.get_num_threads()
    try:
        for kernel, n_threads in ((True, 1), (True, 2), (False, 2)):  # one thread: position scores by matmul
            pm.use_kernels(kernel)
            torch.set_num_threads(n_threads)
            whole = pm.step(x, pm.init_cache(2))
            c = pm.init_cache(2)
            ones = concat([pm.step(x[:, i : i + 1], c) for i in range(x.shape[1])])
            c = pm.init_cache(2)
            odd = concat([pm.step(x[:, i : i + 5], c) for i in range(0, x.shape[1], 5)])
            got += [whole, ones, odd]
    finally:
        torch.set_num_threads(threads)
    assert all(params_equal(got[0], g) for g in got[1:])


def float_bits(m: TransformerXL, x: torch.Tensor) -> float:
    """The float model's NLL in bits of x[:, 1:] given what comes before (cached step path)."""
    with torch.no_grad():
        pred = m.step(x, m.init_cache(x.shape[0]))
        if pred.head is None:
            lp = torch.log_softmax(pred.params[0].double(), -1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
        else:
            lp = pred.log_prob(torch.cat([x[:, 1:], x[:, :1]], 1))[:, :-1].double()
    return float(-lp.sum()) / math.log(2)


def portable_bits(pm: PortableModel, x: torch.Tensor) -> float:
    """The code length the codec's tables give x[:, 1:] (before the range coder's quantisation)."""
    p = pm.step(x, pm.init_cache(x.shape[0]))
    nxt = x[:, 1:].reshape(-1).numpy()
    if pm.head == "logistic_mixture":
        base = None if p.base is None else p.base[:, :-1].reshape(-1).numpy()
        mix = Mixture(p.mix[:, :-1].reshape(-1, p.mix.shape[-1]).numpy(),
                      p.center[:, :-1].reshape(-1).numpy(),
                      base, pm.K)
        p1 = bernoulli_p(mix.path(nxt))
        bits = (nxt[:, None] >> (15 - np.arange(16))) & 1
        return float(-np.log2(np.where(bits == 1, p1, 1 - p1)).sum())
    if pm.head == "dual_softmax":
        r = np.remainder(nxt - p.shift[:, :-1].reshape(-1).numpy(), 65536)
        wc = softmax_weights(p.logits[:, :-1].reshape(-1, 256).numpy()).astype(np.float64)
        h = p.hidden[:, :-1].reshape(-1, p.hidden.shape[-1])
        wf = softmax_weights(pm.fine_logits(h, torch.as_tensor(r >> 8)).numpy()).astype(np.float64)
        pc = wc[np.arange(len(r)), r >> 8] / wc.sum(-1)
        pf = wf[np.arange(len(r)), r & 255] / wf.sum(-1)
        return float(-np.log2(pc * pf).sum())
    w = softmax_weights(p.logits[:, :-1].reshape(-1, p.logits.shape[-1]).numpy()).astype(np.float64)
    return float(-np.log2(w[np.arange(len(nxt)), nxt] / w.sum(-1)).sum())


@pytest.mark.parametrize("head", list(HEADS))
def test_code_length_is_within_a_fraction_of_a_percent_of_the_float_nll(head):
    m = model(sharp=0.2, **HEADS[head], **VARIANTS["relative"])
    x = signal(300, m.config.vocab_size)
    a, b = float_bits(m, x), portable_bits(PortableModel(m), x)
    assert abs(b - a) <= 0.002 * a, (a, b)


def test_the_fitted_prior_and_text_models_are_refused_by_name():
    with pytest.raises(NotExact, match="fitted linear-prediction prior"):
        PortableModel(model(**HEADS["mixture"], lp_order=4, lp_coefficients="fitted"))
    with pytest.raises(NotExact, match="adaptive softmax"):
        PortableModel(model(vocab_size=100, cutoffs=(20, 50)))


def test_a_linear_layer_whose_sums_could_leave_float64s_exact_range_is_refused():
    w = torch.full((4, 1 << 17), 1.0)  # 2^17 inputs, weights quantised to 2^14, inputs up to 2^23: 2^54
    with pytest.raises(NotExact, match="2\\^54"):
        numerics.Linear(w, None)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 62) - 1))
def test_isqrt_is_the_exact_integer_square_root(n):
    r = int(numerics.isqrt(torch.tensor([n]))[0])
    assert r * r <= n < (r + 1) * (r + 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 62) - 1))
def test_the_kernels_isqrt_is_the_exact_integer_square_root(n):
    r = int(numerics._isqrt_int(n))
    assert r * r <= n < (r + 1) * (r + 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.integers(0, 2**32 - 1), st.sampled_from([8, 12, 20, 30, 40]),
       st.floats(1e-6, 1e-3))
def test_layer_norm_kernel_equals_the_tensor_path(D, seed, bits, eps):
    """The CPU's numba LayerNorm gives the tensor path's integers (what a GPU runs), from tiny to
    clamped (|x - mean| above 2^25) rows, constant rows (variance 0: eps alone) and negative gains."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g, dtype=torch.float64) * 3
    b = torch.randn(D, generator=g, dtype=torch.float64)
    ln = numerics.LayerNorm(w, b, eps)
    x = torch.randint(-(1 << bits), 1 << bits, (5, 3, D), generator=g)
    x[0, 0] = x[0, 0, :1]  # a constant row
    ln.kernel = True
    got = ln(x)
    assert torch.equal(got, ln.tensor_path(x))
    assert got.dtype == torch.long and got.shape == x.shape


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=20), st.integers(0, 30))
def test_round_shift_and_round_div_round_half_up(values, s):
    x = torch.tensor(values)
    got = numerics.round_shift(x, s).tolist()
    assert got == [math.floor(v / 2**s + 0.5) for v in values]
    d = (1 << s) + 3
    assert numerics.round_div(x, d).tolist() == [(2 * v + d) // (2 * d) for v in values]


def test_exact_matmul_is_independent_of_summation_order():
    """Integers whose products sum below 2^53: every order and blocking gives the same result."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(1 << 22), 1 << 22, (7, 300), generator=g)
    b = torch.randint(-(1 << 22), 1 << 22, (300, 5), generator=g)
    ref = [[sum(int(a[i, k]) * int(b[k, j]) for k in range(300)) for j in range(5)] for i in range(7)]
    assert numerics.exact_matmul(a, b).tolist() == ref
    perm = torch.randperm(300, generator=g)
    assert numerics.exact_matmul(a[:, perm], b[perm]).tolist() == ref


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a), dtype="<i8").tobytes())
    return h.hexdigest()[:16]


# the tables' bits as made on the development machine (Python 3.11, libmpdec); they come from decimal and
# Python integer arithmetic only, so any machine must make the very same ones
TABLE_HASHES = {
    "exp2_16": "7093c94252872d0e",
    "exp2_30": "ee41e5a8fbd47f52",
    "sigmoid": "130d624ba8802376",
    "sinusoid": "acde574e8c4ff55e",
    "rotary": "c742b28747bd6ab9",
}


def tables() -> dict[str, str]:
    cos, sin = numerics.rotary_q(0, 300, 2, 16, 10_000.0)
    return {
        "exp2_16": _digest(numerics.exp2_table(16)),
        "exp2_30": _digest(numerics.exp2_table(30)),
        "sigmoid": _digest(numerics.sigmoid_table()),
        "sinusoid": _digest(numerics.sinusoid_q(-3, 500, 2, 32, 12)),
        "rotary": _digest(cos, sin),
    }


def test_tables_are_the_same_bits_everywhere():
    assert tables() == TABLE_HASHES


def test_tables_hold_the_values_they_claim():
    e = numerics.exp2_table(16)
    assert e[0] == 1 << 16 and abs(e[512] - 2**16 * 2**-0.5) <= 0.5
    s = numerics.sigmoid_table()
    one = 1 << 32
    mid = len(s) // 2
    assert s[mid] == one // 2 and all(s[i] + s[-1 - i] == one for i in range(0, len(s), 97))
    z = 1.5
    assert abs(s[mid + int(z * 256)] / one - 1 / (1 + math.exp(-z))) < 1e-9
    tab = numerics.sinusoid_q(0, 100, 1, 8, 14)
    d = np.arange(100)[:, None] * 10_000 ** (-2 * np.arange(4) / 8)[None]
    assert np.abs(tab[:, :4].numpy() / 2**14 - np.sin(d)).max() < 1e-4
    assert np.abs(tab[:, 4:].numpy() / 2**14 - np.cos(d)).max() < 1e-4
