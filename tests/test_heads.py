"""16-bit output distributions: each against a float64 reference, normalised over the 65,536 levels,
sampled with the right frequencies, and inside the model equal segment by segment, one pass, step by
step, batched and alone, cached and reference decoding; with and without the linear-prediction prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from txl_audio.config import ModelConfig
from txl_audio.model import TransformerXL
from txl_audio.model.heads import (
    HALF,
    LEVELS,
    DualSoftmaxHead,
    LinearPredictor,
    LogisticMixtureHead,
    cdf,
)

# ---- the logistic mixture against a float64 reference summing the bins ----


def reference_mixture_log_prob(logit_pi, mu, log_s, k) -> np.ndarray:
    """log P(level k) in float64 from the definition: the mixture of the logistic CDF's differences
    over each level's bin [x - 1/65536, x + 1/65536), the edge levels taking the tails."""
    from scipy.special import expit, logsumexp

    x = (k.astype(np.float64) - HALF) / HALF
    log_pi = logit_pi - logsumexp(logit_pi, axis=-1, keepdims=True)
    s = np.exp(np.maximum(log_s, -14.0))
    upper = np.where(k[..., None] == LEVELS - 1, 1.0, expit((x[..., None] + 1 / 65536 - mu) / s))
    lower = np.where(k[..., None] == 0, 0.0, expit((x[..., None] - 1 / 65536 - mu) / s))
    return logsumexp(log_pi + np.log(np.maximum(upper - lower, 1e-300)), axis=-1)


def mixture_params(K: int, seed: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logit_pi = torch.randn(n, K, generator=g)
    mu = torch.rand(n, K, generator=g) * 2.2 - 1.1  # some means beyond the range: the edges matter
    log_s = torch.rand(n, K, generator=g) * 10 - 12  # scales from 6e-6 (a fifth of a level) to 0.1
    return torch.cat([logit_pi, mu, log_s], dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logistic_mixture_matches_float64_bins_and_sums_to_one(seed):
    head = LogisticMixtureHead(8, components=3)
    mix = mixture_params(3, seed)
    lp = head.log_probs((mix,))  # (4, 65536)
    assert torch.isfinite(lp).all()
    probs = torch.exp(lp.double()).sum(-1)
    torch.testing.assert_close(probs, torch.ones(4, dtype=torch.float64), atol=2e-5, rtol=0)
    k = np.arange(LEVELS)
    m = mix.double().numpy()
    ref = reference_mixture_log_prob(m[:, :3, None].transpose(0, 2, 1), m[:, 3:6][:, None], m[:, 6:][:, None],
                                     np.broadcast_to(k, (4, LEVELS)))
    # where the probability is not negligible, the log-probabilities agree closely
    big = ref > -30
    np.testing.assert_allclose(lp.double().numpy()[big], ref[big], atol=2e-3, rtol=1e-4)
    # the edge levels take the tails
    tokens = torch.tensor([0, LEVELS - 1, 12345, HALF])
    np.testing.assert_allclose(head.log_prob((mix,), tokens).double().numpy(),
                               lp.gather(1, tokens[:, None])[:, 0].double().numpy(), atol=1e-5)


def test_logistic_mixture_tail_and_narrow_bins_stay_finite():
    """A scale far below one level and a mean far outside the range: no NaN, no -inf inside the bulk."""
    head = LogisticMixtureHead(8, components=1)
    mix = torch.tensor([[0.0, 0.3, -20.0], [0.0, 5.0, -3.0], [0.0, -0.5, 2.0]])
    lp = head.log_probs((mix,))
    assert torch.isfinite(lp).all()
    assert lp[0].argmax() == round(0.3 * HALF) + HALF  # a spike on the nearest level
    assert lp[1].argmax() == LEVELS - 1  # everything above the range falls on the top level
    torch.testing.assert_close(torch.exp(lp.double()).sum(-1), torch.ones(3, dtype=torch.float64), atol=2e-5,
                               rtol=0)


# ---- the dual softmax ----


def test_dual_softmax_normalised_consistent_and_shifted():
    torch.manual_seed(0)
    head = DualSoftmaxHead(16)
    h = torch.randn(3, 16)
    shift = torch.tensor([0, 1000, -32768])
    lp = head.log_probs((h, shift))
    torch.testing.assert_close(torch.exp(lp.double()).sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    tokens = torch.tensor([5, 40000, 65535])
    torch.testing.assert_close(head.log_prob((h, shift), tokens), lp.gather(1, tokens[:, None])[:, 0])
    # the shift re-centres the distribution: level x with shift s has the probability of x - s without
    unshifted = head.log_probs((h, torch.zeros(3, dtype=torch.long)))
    for row, s in enumerate(shift.tolist()):
        torch.testing.assert_close(lp[row], torch.roll(unshifted[row], s))


def test_dual_softmax_open_loop_draws_in_units_of_the_level():
    """With a ``unit`` (the sampler's open loop, issue 28) the drawn residual e becomes
    round(e x unit / E|e|), E|e| the distribution's mean magnitude, on top of the prediction: checked
    against the plain draw with the same generator and E|e| from the 65,536 log-probabilities."""
    torch.manual_seed(0)
    head = DualSoftmaxHead(8)
    n = 1200
    h = torch.randn(4, 8).repeat_interleave(n // 4, 0)
    zero = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        probs = torch.exp(head.log_probs((h, zero)).double())  # by token = e + 2^15 with shift 0
        mean_abs = (probs * (torch.arange(LEVELS, dtype=torch.float64) - HALF).abs()).sum(-1)
        plain = head.sample((h, zero), torch.Generator().manual_seed(3)) - HALF  # the residuals e
        # unit = E|e|: the plain draw itself
        same = head.sample((h, zero, mean_abs), torch.Generator().manual_seed(3)) - HALF
        assert torch.equal(same, plain)
        # another unit and a prediction: the prediction plus e in that unit, kept in the 16-bit range
        unit = torch.full((n,), 40.0, dtype=torch.float64)
        shift = torch.randint(-2000, 2000, (n,))
        got = head.sample((h, shift, unit), torch.Generator().manual_seed(3)) - HALF
    want = (shift + torch.round(plain.double() * 40.0 / mean_abs).long()).clamp(-HALF, HALF - 1)
    assert torch.equal(got, want)
    # the draws' mean magnitude is the unit (a property of E|e|: 1,200 draws, within 10%)
    assert abs((got - shift).abs().double().mean().item() / 40.0 - 1.0) < 0.1


@pytest.mark.parametrize("kind", ["dual_softmax", "logistic_mixture"])
def test_exact_samplers_follow_the_distribution(kind):
    torch.manual_seed(0)
    if kind == "dual_softmax":
        head = DualSoftmaxHead(8)
        with torch.no_grad():
            head.coarse.weight.mul_(20)  # a peaked coarse distribution: few bins to check
        params = (torch.randn(1, 8).expand(20000, 8), torch.full((20000,), 300))
    else:
        head = LogisticMixtureHead(8, components=2)
        params = (torch.tensor([[0.0, 1.0, -0.1, 0.2, -3.0, -4.0]]).expand(20000, 6),)
    with torch.no_grad():
        draws = head.sample(params, torch.Generator().manual_seed(1))
        probs = torch.exp(head.log_probs(tuple(p[:1] for p in params))[0].double())
    # 64 buckets of 1,024 levels: every frequency within 5 sigma of its probability
    bucket_p = probs.view(64, 1024).sum(-1)
    freq = torch.bincount(draws // 1024, minlength=64).double() / len(draws)
    sigma = (bucket_p * (1 - bucket_p) / len(draws)).sqrt()
    assert torch.all((freq - bucket_p).abs() <= 5 * sigma + 1e-4), (freq, bucket_p)


def test_cdf_is_monotone_and_ends_at_one():
    head = LogisticMixtureHead(8, components=3)
    c = cdf(head.log_probs((mixture_params(3, 5),)))
    assert c.shape == (4, LEVELS + 1) and c.dtype == torch.float64
    assert torch.all(c[:, 1:] >= c[:, :-1]) and torch.all(c[:, 0] == 0) and torch.all(c[:, -1] == 1)


def test_prior_windows_look_back_no_further_than_the_file():
    from txl_audio.model.heads import PriorState

    lp = LinearPredictor(8, order=3)
    tokens = torch.tensor([[HALF + 1, HALF + 2, HALF + 3, HALF + 4]])
    state = PriorState(torch.tensor([[HALF + 9]]), None, torch.tensor([7]))
    inputs, new = lp.context(tokens, state, torch.tensor([[5, 0, 1, 5]]))  # a file starts at position 1
    v = lambda *xs: [x / HALF for x in xs]  # noqa: E731
    w = inputs.windows
    torch.testing.assert_close(w[0].float(), torch.tensor([v(1, 9, 0), v(2, 0, 0), v(3, 2, 0), v(4, 3, 2)]))
    assert inputs.base is None and new.history.tolist() == [[HALF + 3, HALF + 4]]
    assert new.seen.tolist() == [11]


def test_fitted_prior_is_the_baselines_backward_adaptive_lpc():
    """With the network's correction at zero, the fitted prior predicts every sample of a file exactly as
    baselines.lpc_predictions does (the classical column of 16-bit reports), whether the file is read in
    one call, in segments, or one token at a time."""
    from txl_audio.baselines import lpc_predictions

    x = wave_tokens(1, 700, seed=4)[0]
    expect = lpc_predictions((x.numpy().astype(np.int64) - HALF).astype(np.float64)) / HALF  # per sample
    lp = LinearPredictor(8, order=32, fitted=True)
    with torch.no_grad():
        lp.coef.weight.zero_()
        lp.coef.bias.zero_()

    def predictions(chunks, dense=False):
        state, preds = None, []
        for a, b in chunks:
            inputs, state = lp.context(x[None, a:b], state, None, dense=dense)
            pred, _ = lp(torch.zeros(b - a, 8), inputs.windows[0], inputs.base[0])
            preds.append(pred)
        return torch.cat(preds).detach().double().numpy()

    # position t predicts sample t + 1
    for chunks in ([(0, 700)], [(s, min(s + 100, 700)) for s in range(0, 700, 100)], [(0, 300), (300, 301),
                                                                                        (301, 700)]):
        np.testing.assert_allclose(predictions(chunks)[:699], np.clip(expect[1:], -1, 1 - 1 / HALF),
                                   atol=2e-6, rtol=0)
    # the CUDA-graph form (fit at every position, keep the block starts') gives the same, token by token
    one = [(t, t + 1) for t in range(700)]
    np.testing.assert_array_equal(predictions(one, dense=True), predictions(one))


# ---- inside the model ----

HEAD_CASES = [
    dict(head="dual_softmax"),
    dict(head="dual_softmax", lp_order=4),
    dict(head="logistic_mixture", mixture_components=3),
    dict(head="logistic_mixture", mixture_components=3, lp_order=4),
    dict(head="logistic_mixture", mixture_components=3, lp_order=4, lp_coefficients="fitted"),
    dict(head="dual_softmax", lp_order=4, lp_coefficients="fitted"),
    dict(head="logistic_mixture", mixture_components=3, lp_order=4, lp_coefficients="cascade"),
    dict(head="dual_softmax", lp_order=4, lp_coefficients="cascade"),
]
HEAD_IDS = ["dual", "dual_lp", "mixture", "mixture_lp", "mixture_fitted", "dual_fitted", "mixture_cascade",
            "dual_cascade"]


def head_model(seed: int = 0, **kw) -> TransformerXL:
    cfg = ModelConfig(**{**dict(vocab_size=LEVELS, n_layer=2, d_model=16, n_head=2, d_head=8, d_inner=32,
                                dropout=0.0, tgt_len=5, mem_len=20), **kw})
    torch.manual_seed(seed)
    model = TransformerXL(cfg)
    with torch.no_grad():  # weights far from their start; the prior's and the mixture's stay at theirs
        for name, p in model.named_parameters():  # (logistics narrower than a level are float-fragile)
            if not name.startswith(("lp.", "out.proj")):
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def wave_tokens(B: int, N: int, seed: int = 0) -> torch.Tensor:
    """16-bit tokens of smooth random waves (the prior has something to predict)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(N, dtype=torch.float64)
    f = torch.rand(B, 1, generator=g, dtype=torch.float64) * 0.3 + 0.05
    x = 0.5 * torch.sin(f * t) + 0.01 * torch.randn(B, N, generator=g, dtype=torch.float64)
    return (torch.round(x * HALF) + HALF).long()


def segments(model, x, seg, doc_pos=None):
    mems, outs = None, []
    for s in range(0, x.shape[1], seg):
        dp = None if doc_pos is None else doc_pos[:, s : s + seg]
        o = model(x[:, s : s + seg], mems=mems, doc_pos=dp)
        mems = o.mems
        outs.append(o.logits)
    return torch.cat(outs, 1)


def close_probs(a, b, tol=1e-4):
    """Two distributions over the 65,536 levels (log-probabilities (..., V)) agree: total variation at
    most ``tol`` at every position (float32 differences in the hidden state move a narrow logistic a
    little; this bounds what that costs)."""
    tv = (torch.exp(a.double()) - torch.exp(b.double())).abs().sum(-1) / 2
    assert tv.max() <= tol, tv.max()


@pytest.mark.parametrize("kw", HEAD_CASES, ids=HEAD_IDS)
def test_heads_segments_with_memory_equal_one_pass_and_step(kw):
    model = head_model(**kw)
    x = wave_tokens(2, 15)
    with torch.no_grad():
        full = model(x).logits
        seg = segments(model, x, 5)
        close_probs(seg, full)
        cache = model.init_cache(2)
        stepped = torch.cat([model.step(x[:, t : t + 1], cache).logits for t in range(15)], 1)
        close_probs(stepped, seg)
        cache = model.init_cache(2)
        chunked = torch.cat([model.step(x[:, a:b], cache).logits for a, b in ((0, 3), (3, 11), (11, 15))], 1)
        close_probs(chunked, seg)
    # the loss is the log-probability of the target among the 65,536 levels
    t = wave_tokens(2, 15, seed=3)
    out = model(x, targets=t)
    torch.testing.assert_close(out.loss, -full.gather(-1, t[..., None])[..., 0], atol=1e-3, rtol=1e-5)
    # a learned or fitted prior has its own Laplace loss; the cascade is not trained
    assert (out.aux_loss is not None) == (bool(kw.get("lp_order")) and kw.get("lp_coefficients") != "cascade")


@pytest.mark.parametrize("kw", HEAD_CASES, ids=HEAD_IDS)
def test_heads_batched_equal_alone_across_a_file_start(kw):
    """Two files packed in one stream (doc_pos restarts) give the second file what it gets alone: the
    attention and the prior's history both stop at the file start."""
    model = head_model(**kw, tgt_len=8, mem_len=16)
    a, b = wave_tokens(1, 11, seed=1), wave_tokens(1, 13, seed=2)
    stream = torch.cat([a, b], 1)
    doc_pos = torch.cat([torch.arange(11), torch.arange(13)])[None]
    with torch.no_grad():
        mixed = segments(model, stream, 8, doc_pos)[:, 11:]
        alone = segments(model, b, 8)
    close_probs(mixed, alone)


@pytest.mark.parametrize("kw", HEAD_CASES, ids=HEAD_IDS)
def test_heads_cached_sampling_equals_reference_decoding(kw):
    from txl_audio.generate import sample

    model = head_model(**kw, tgt_len=4, mem_len=6)
    prompt = wave_tokens(2, 7)
    greedy = sample(model, prompt, 20, temperature=0.0)
    assert torch.equal(greedy, sample(model, prompt, 20, temperature=0.0, use_cache=False))
    # the exact sampler at temperature 1, same seed: the same draws through both decoders
    a = sample(model, prompt, 20, 1.0, generator=torch.Generator().manual_seed(4))
    b = sample(model, prompt, 20, 1.0, generator=torch.Generator().manual_seed(4), use_cache=False)
    assert torch.equal(a, b) and len(torch.unique(a)) > 5
    # through the full distribution (top-k): the same too
    c = sample(model, prompt, 10, 0.8, top_k=50, generator=torch.Generator().manual_seed(5))
    d = sample(model, prompt, 10, 0.8, top_k=50, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(c, d)


def test_prior_starts_as_the_previous_sample_and_learns_a_sine():
    """The prior's coefficients start at "the next sample is this one" and, trained by its Laplace
    likelihood, learn to predict a sine far better than that."""
    model = head_model(head="logistic_mixture", lp_order=4, mixture_components=2).train()
    x = wave_tokens(4, 65)
    inp, tgt = x[:, :-1], x[:, 1:]
    with torch.no_grad():
        start = model(inp, targets=tgt, return_logits=False).aux_loss.mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model(inp, targets=tgt, return_logits=False)
        (out.loss + out.aux_loss).mean().backward()
        opt.step()
        opt.zero_grad()
    assert out.aux_loss.mean().item() < start - 1.0, (start, out.aux_loss.mean().item())
    assert math.isfinite(out.loss.mean().item())


def test_16_bit_heads_need_a_16_bit_vocabulary():
    from txl_audio.config import ConfigError

    with pytest.raises(ConfigError, match="vocab_size=65536"):
        ModelConfig(head="dual_softmax", vocab_size=256)
    with pytest.raises(ConfigError, match="lp_order"):
        ModelConfig(lp_order=4)  # the prior is for the 16-bit heads
    with pytest.raises(ConfigError, match="model.head must be one of"):
        ModelConfig(head="mol", vocab_size=LEVELS)
