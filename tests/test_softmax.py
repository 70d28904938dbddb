"""Adaptive embedding / adaptive softmax: properties that a wrong implementation breaks."""

import math

import pytest
import torch
import torch.nn.functional as F

from txl_audio.model.softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax

V, D = 50, 16


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    # biases and cluster logits start at zero; give everything values so the checks are not trivial
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("cutoffs,div_val", [([], 1), ([10, 30], 1), ([10, 30], 2), ([5, 20, 40], 4)])
def test_log_prob_is_normalized_over_full_vocab(cutoffs, div_val):
    torch.manual_seed(0)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, cutoffs, div_val)
    _randomize(sm)
    lp = sm.log_prob(torch.randn(7, D))
    assert lp.shape == (7, V)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(7), atol=1e-5, rtol=0)


def test_single_cluster_equals_full_softmax_of_linear_layer():
    torch.manual_seed(0)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, [])
    _randomize(sm)
    linear = torch.nn.Linear(D, V)
    with torch.no_grad():
        linear.weight.copy_(sm.weights[0])
        linear.bias.copy_(sm.biases[0])
    h = torch.randn(9, D)
    ref = F.log_softmax(linear(h), -1)
    torch.testing.assert_close(sm.log_prob(h), ref)
    t = torch.randint(0, V, (9,))
    torch.testing.assert_close(sm.nll(h, t), F.cross_entropy(linear(h), t, reduction="none"))


def test_single_cluster_with_projection_equals_projected_softmax():
    torch.manual_seed(0)
    sm = ProjectedAdaptiveLogSoftmax(V, 8, D, [])  # d_embed 8 != d_proj 16: a projection is used
    _randomize(sm)
    h = torch.randn(5, D)
    ref = F.log_softmax((h @ sm.projs["0"]) @ sm.weights[0].T + sm.biases[0], -1)
    torch.testing.assert_close(sm.log_prob(h), ref)


@pytest.mark.parametrize("cutoffs,div_val", [([10, 30], 1), ([10, 30], 2), ([5, 20, 40], 4)])
def test_nll_equals_gathered_log_prob_and_ignores_negative_targets(cutoffs, div_val):
    torch.manual_seed(1)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, cutoffs, div_val)
    _randomize(sm)
    h = torch.randn(40, D)
    t = torch.randint(0, V, (40,))
    t[::7] = -100
    nll = sm.nll(h, t)
    lp = sm.log_prob(h)
    keep = t >= 0
    torch.testing.assert_close(nll[keep], -lp[keep].gather(1, t[keep, None]).squeeze(1))
    assert torch.all(nll[~keep] == 0)


def test_nll_gradients_match_full_log_prob():
    torch.manual_seed(2)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, [10, 30], 2)
    _randomize(sm)
    h = torch.randn(20, D, requires_grad=True)
    t = torch.randint(0, V, (20,))
    sm.nll(h, t).sum().backward()
    g1 = h.grad.clone()
    h.grad = None
    (-sm.log_prob(h).gather(1, t[:, None])).sum().backward()
    torch.testing.assert_close(g1, h.grad)


def test_probabilities_of_a_cluster_split_as_head_times_tail():
    # log p(w) for a tail word must be log p(cluster) + log p(w | cluster): the cluster's words sum to
    # the head's cluster probability.
    torch.manual_seed(3)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, [10, 30], 1)
    _randomize(sm)
    h = torch.randn(4, D)
    lp = sm.log_prob(h)
    head = sm._head_log_prob(h)
    torch.testing.assert_close(lp[:, 10:30].logsumexp(-1), head[:, 10])
    torch.testing.assert_close(lp[:, 30:].logsumexp(-1), head[:, 11])


@pytest.mark.parametrize("div_val", [1, 2])
def test_tying_shares_storage(div_val):
    emb = AdaptiveEmbedding(V, D, D, [10, 30], div_val)
    sm = ProjectedAdaptiveLogSoftmax(
        V, D, D, [10, 30], div_val, embedding=emb, tie_weights=True, tie_projs=True
    )
    for i in range(3):
        assert sm.weights[i].data_ptr() == emb.weights[i].data_ptr()
    assert set(sm.projs) == set(emb.projs) == ({"1", "2"} if div_val > 1 else set())
    for k in sm.projs:
        assert sm.projs[k] is emb.projs[k]
    # one optimizer step moves both; a module holding both counts shared parameters once
    both = torch.nn.ModuleList([emb, sm])
    n_untied = sum(p.numel() for p in ProjectedAdaptiveLogSoftmax(V, D, D, [10, 30], div_val).parameters())
    n_emb = sum(p.numel() for p in emb.parameters())
    n_own = sum(b.numel() for b in sm.biases) + sm.cluster_weight.numel() + sm.cluster_bias.numel()
    assert sum(p.numel() for p in both.parameters()) == n_emb + n_own < n_emb + n_untied
    with torch.no_grad():
        emb.weights[1].add_(1.0)
    assert torch.equal(sm.weights[1], emb.weights[1])


def test_untied_has_own_parameters():
    emb = AdaptiveEmbedding(V, D, D, [10, 30], 2)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, [10, 30], 2, embedding=emb)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(sm.weights, emb.weights))


def test_embedding_matches_per_cluster_lookup_and_scale():
    torch.manual_seed(4)
    emb = AdaptiveEmbedding(V, D, D, [10, 30], 2)
    tokens = torch.tensor([[0, 9, 10, 29], [30, 49, 3, 15]])
    out = emb(tokens)
    assert out.shape == (2, 4, D)
    for b in range(2):
        for t in range(4):
            w = int(tokens[b, t])
            i = 0 if w < 10 else 1 if w < 30 else 2
            lo = [0, 10, 30][i]
            e = emb.weights[i][w - lo]
            ref = e if emb.proj(i) is None else emb.proj(i) @ e
            torch.testing.assert_close(out[b, t], ref * math.sqrt(D))
    assert [w.shape[1] for w in emb.weights] == [16, 8, 4]


def test_single_cluster_embedding_is_plain_lookup():
    emb = AdaptiveEmbedding(V, D, D, [])
    tokens = torch.randint(0, V, (3, 5))
    torch.testing.assert_close(emb(tokens), F.embedding(tokens, emb.weights[0]) * math.sqrt(D))


def test_bad_cutoffs_raise_clear_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        ProjectedAdaptiveLogSoftmax(V, D, D, [10, 50])
    with pytest.raises(ValueError, match="increasing"):
        AdaptiveEmbedding(V, D, D, [30, 10])
    with pytest.raises(ValueError, match="tie"):
        ProjectedAdaptiveLogSoftmax(V, D, D, [10], tie_weights=True)


# ---- wired into TransformerXL (config.cutoffs non-empty) ---------------------------------------------


def _adaptive_model(tie: bool = True, **kw):
    from txl_audio.config import ModelConfig
    from txl_audio.model import TransformerXL

    cfg = dict(vocab_size=V, n_layer=2, d_model=D, n_head=2, d_head=8, d_inner=32, dropout=0.0,
               tgt_len=6, mem_len=6, cutoffs=[10, 30], div_val=2, tie_weights=tie)
    cfg.update(kw)
    torch.manual_seed(0)
    return TransformerXL(ModelConfig(**cfg)).eval()


def test_transformer_xl_adaptive_loss_is_nll_of_its_log_probs():
    model = _adaptive_model()
    tokens = torch.randint(0, V, (3, 6))
    targets = torch.randint(0, V, (3, 6))
    targets[0, :2] = -100
    out = model(tokens, targets=targets)
    assert out.loss.shape == (3, 6) and out.logits.shape == (3, 6, V)
    torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(3, 6), atol=1e-5, rtol=0)
    keep = targets >= 0
    ref = -out.logits[keep].gather(1, targets[keep][:, None]).squeeze(1)
    torch.testing.assert_close(out.loss[keep], ref)
    assert torch.all(out.loss[~keep] == 0)
    assert model(tokens, targets=targets, return_logits=False).logits is None


def test_transformer_xl_adaptive_tying_shares_parameters_and_survives_state_dict():
    tied, untied = _adaptive_model(True), _adaptive_model(False)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    emb = tied.word_emb
    n_words = sum(w.numel() for w in emb.weights) + sum(p.numel() for p in emb.projs.values())
    assert n_untied - n_tied == n_words
    for a, b in zip(tied.out.weights, tied.word_emb.weights):
        assert a.data_ptr() == b.data_ptr()
    # a fresh model loaded from the state dict computes the same and stays tied
    other = _adaptive_model(True, init_std=0.5)
    other.load_state_dict(tied.state_dict())
    tokens = torch.randint(0, V, (2, 6))
    torch.testing.assert_close(other(tokens).logits, tied(tokens).logits)
    assert other.out.weights[1].data_ptr() == other.word_emb.weights[1].data_ptr()


def test_transformer_xl_adaptive_cached_step_equals_forward():
    model = _adaptive_model()
    tokens = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        o1 = model(tokens[:, :6])
        o2 = model(tokens[:, 6:], mems=o1.mems)
        ref = torch.cat([o1.logits, o2.logits], 1)
        cache = model.init_cache(2)
        got = model.step(tokens[:, :5], cache).logits
        got2 = model.step(tokens[:, 5:], cache).logits
    torch.testing.assert_close(torch.cat([got, got2], 1), ref, atol=1e-4, rtol=1e-4)


def test_transformer_xl_adaptive_trains():
    model = _adaptive_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, V, (4, 6))
    targets = torch.roll(tokens, -1, 1)
    first = None
    for _ in range(30):
        loss = model(tokens, targets=targets, return_logits=False).loss.mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_adaptive_model_runs_under_bf16_autocast():
    # the GPU configs train in bf16 autocast: mixed dtypes inside the cluster loops must not fail
    model = _adaptive_model()
    tokens = torch.randint(0, V, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens, targets=tokens)
    ref = model(tokens, targets=tokens)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, atol=0.1, rtol=0.05)


def test_every_parameter_gets_a_gradient_even_when_a_cluster_is_absent():
    # DistributedDataParallel needs a gradient for every parameter in every step
    emb = AdaptiveEmbedding(V, D, D, [10, 30], 2)
    sm = ProjectedAdaptiveLogSoftmax(V, D, D, [10, 30], 2)  # untied: nothing reaches the tails via emb
    tokens = torch.randint(0, 10, (12,))  # head cluster only, in and out
    sm.nll(emb(tokens), tokens).sum().backward()
    for name, p in [*emb.named_parameters(), *sm.named_parameters()]:
        assert p.grad is not None, name
