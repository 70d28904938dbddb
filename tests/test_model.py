"""Transformer-XL: equivalences with references that a wrong implementation breaks."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from txl_audio.config import ModelConfig
from txl_audio.data import IGNORE_INDEX
from txl_audio.model import Memory, TransformerXL, attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from einsum_reference import from_model  # noqa: E402

V = 13



def tiny(**kw) -> ModelConfig:
    base = dict(
        vocab_size=V, n_layer=2, d_model=16, n_head=2, d_head=8, d_inner=32,
        dropout=0.0, dropatt=0.0, tgt_len=5, mem_len=7,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


def make_model(cfg: ModelConfig, seed: int = 0) -> TransformerXL:
    """A model with every parameter (u, v, biases, norms included) away from its init, in eval mode."""
    torch.manual_seed(seed)
    model = TransformerXL(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def run_segments(model, tokens, seg_len, doc_pos=None, **kw):
    """Forward segment by segment carrying memory; logits (B, N, V)."""
    mems, outs = None, []
    for s in range(0, tokens.shape[1], seg_len):
        dp = None if doc_pos is None else doc_pos[:, s : s + seg_len]
        out = model(tokens[:, s : s + seg_len], mems=mems, doc_pos=dp, **kw)
        mems = out.mems
        outs.append(out.logits)
    return torch.cat(outs, 1)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


# ---- memory ----


ATTN = ["relative", "rotary"]  # the attentions with a memory


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("pre_norm", [False, True])
def test_segments_with_memory_equal_one_pass(pre_norm, attn):
    model = make_model(tiny(pre_norm=pre_norm, mem_len=20, attention=attn))
    x = torch.randint(0, V, (2, 25))
    full = model(x).logits
    close(run_segments(model, x, 5), full)


def test_mems_are_last_mem_len_layer_inputs():
    cfg = tiny()
    model = make_model(cfg)
    x = torch.randint(0, V, (2, 10))
    out1 = model(x[:, :5])
    out2 = model(x[:, 5:], mems=out1.mems)
    whole = model(x, lengths=cfg.lengths(mem_len=10))  # memory of everything: all 10 positions' layer inputs
    assert len(out2.mems.layers) == cfg.n_layer and out2.mems.length == cfg.mem_len
    for m, w in zip(out2.mems.layers, whole.mems.layers):
        assert m.hidden.shape == (2, cfg.mem_len, cfg.d_model) and not m.hidden.requires_grad
        assert m.keys is None  # keys and values only when asked for (keep_kv, inference)
        close(m.hidden, w.hidden[:, -cfg.mem_len :])


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("pre_norm", [False, True])
def test_inference_reuses_memory_keys_values_when_asked(pre_norm, attn):
    model = make_model(tiny(pre_norm=pre_norm, mem_len=20, attention=attn))
    x = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        full = model(x).logits
        reused = run_segments(model, x, 5, keep_kv=True)  # memories carry keys/values along
        plain = run_segments(model, x, 5)  # hidden states only: keys/values re-projected
        close(reused, full)
        close(plain, full)

        out = model(x[:, :5], keep_kv=True)
        assert out.mems.layers[0].keys.shape == (2, 2, 5, 8)  # (B, H, M, Dh)
        # the carried keys/values are really used...
        bad = Memory(tuple(dataclasses.replace(m, keys=torch.zeros_like(m.keys)) for m in out.mems.layers),
                     offset=out.mems.offset)
        assert (model(x[:, 5:10], mems=bad).logits - full[:, 5:10]).abs().max() > 1e-3
        # ...and a memory without them is re-projected with the weights of the moment (whoever changes
        # the weights drops them: hidden_only)
        (model.layers[0].attn_norm.weight if pre_norm else model.layers[1].attn.qkv.weight).mul_(1.5)
        fresh = model(x[:, 5:10], mems=out.mems.hidden_only()).logits
        changed = model(x[:, 5:10], mems=out.mems).logits
        assert (fresh - changed).abs().max() > 1e-4
    # in training the memory is hidden states only, and keeping keys/values is refused
    assert model(x[:, :5]).mems.layers[0].keys is None
    with pytest.raises(ValueError, match="inference"):
        model(x[:, :5], keep_kv=True)


def test_memory_carries_no_gradient_into_previous_segment():
    model = make_model(tiny(tie_weights=False)).train()
    seg1 = torch.randint(0, 5, (2, 5))  # tokens 0..4 only here
    seg2 = torch.randint(5, V, (2, 5))  # tokens 5.. only here
    out1 = model(seg1)
    assert all(m.hidden.grad_fn is None and not m.hidden.requires_grad for m in out1.mems.layers)
    out2 = model(seg2, mems=out1.mems, targets=torch.randint(0, V, (2, 5)))
    out2.loss.sum().backward()
    g = model.word_emb.weight.grad
    assert torch.all(g[:5] == 0), "segment 2's loss reached segment 1's embeddings through the memory"
    assert g[torch.unique(seg2)].abs().sum(-1).min() > 0


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
@pytest.mark.parametrize("attn", ATTN)
def test_batched_equals_one_at_a_time(attn):
    model = make_model(tiny(attention=attn))
    x = torch.randint(0, V, (3, 15))
    doc_pos = torch.tensor(
        [list(range(15)), [4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3], list(range(3, 18))]
    )
    batched = run_segments(model, x, 5, doc_pos)
    for b in range(3):
        close(run_segments(model, x[b : b + 1], 5, doc_pos[b : b + 1]), batched[b : b + 1])


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("where", [2, 7, 12])
def test_causality_in_segment_and_through_memory(where, attn):
    model = make_model(tiny(attention=attn))
    x = torch.randint(0, V, (1, 15))
    y = x.clone()
    y[0, where] = (x[0, where] + 1) % V
    a, b = run_segments(model, x, 5), run_segments(model, y, 5)
    close(a[:, :where], b[:, :where], tol=0)
    # not vacuous: the change does reach later positions (through the memory from segment to segment)
    assert (a[:, where:] - b[:, where:]).abs().amax(-1).min() > 1e-4


def test_absolute_attention_refuses_memory_and_is_causal():
    with pytest.raises(ValueError, match="mem_len"):
        ModelConfig(attention="absolute", mem_len=4)
    model = make_model(tiny(attention="absolute", mem_len=0))
    x = torch.randint(0, V, (1, 5))
    out = model(x)
    assert out.mems.length == 0
    y = x.clone()
    y[0, 3] = (x[0, 3] + 1) % V
    close(model(y).logits[:, :3], out.logits[:, :3], tol=0)


def test_loss_is_per_token_nll_and_ignores_ignore_index():
    model = make_model(tiny())
    x = torch.randint(0, V, (2, 5))
    t = torch.randint(0, V, (2, 5))
    t[0, 2] = IGNORE_INDEX
    out = model(x, targets=t)
    logp = out.logits.log_softmax(-1)
    expect = -logp.gather(-1, t.clamp(min=0)[..., None])[..., 0]
    expect[0, 2] = 0.0
    close(out.loss, expect)
    lean = model(x, targets=t, return_logits=False)
    assert lean.logits is None
    close(lean.loss, out.loss, tol=0)


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
def test_matches_einsum_reference_in_float64():
    cfg = tiny(same_length=True, clamp_len=3, mem_len=6)
    model = make_model(cfg).double()
    ref = from_model(model)
    x = torch.randint(0, V, (2, 15))
    dp = torch.tensor([list(range(15)), [2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    close(run_segments(model, x, 5, dp), run_segments(ref, x, 5, dp), tol=1e-12)


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
@pytest.mark.parametrize("block", [0, 2], ids=["all_queries", "query_blocks"])
@pytest.mark.parametrize("kw", [dict(), dict(same_length=True, clamp_len=3)])
def test_inference_matches_einsum_reference(block, kw, monkeypatch):
    """The inference path (no autograd), also when the queries go in blocks that skip the keys no query
    of the block can see, with file boundaries inside segments."""
    monkeypatch.setattr(attention, "CPU_QUERY_BLOCK", block)
    cfg = tiny(mem_len=6, **kw)
    model = make_model(cfg).double()
    ref = from_model(model)
    x = torch.randint(0, V, (2, 15))
    dp = torch.tensor([list(range(15)), [2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        close(run_segments(model, x, 5, dp), run_segments(ref, x, 5, dp), tol=1e-12)


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
@pytest.mark.parametrize("kw", [dict(), dict(same_length=True, pre_norm=True)])
@pytest.mark.parametrize("chunk", [None, 1], ids=["one_chunk", "row_by_row"])
def test_gradients_match_einsum_reference(kw, chunk, monkeypatch):
    """The training path (a custom backward on CPU) gives the gradients autograd gives the einsum model."""
    if chunk is not None:  # force the attention to work one batch row at a time
        monkeypatch.setattr(attention, "_CPU_CHUNK_ELEMENTS", chunk)
    cfg = tiny(mem_len=6, **kw)
    model = make_model(cfg).double().train()
    ref = from_model(model)
    x = torch.randint(0, V, (2, 10))
    t = torch.randint(0, V, (2, 10))
    dp = torch.tensor([list(range(10)), [3, 4, 0, 1, 2, 3, 4, 5, 0, 1]])
    for m in (model, ref):
        mems = None
        for s in (0, 5):
            out = m(x[:, s : s + 5], mems=mems, targets=t[:, s : s + 5], doc_pos=dp[:, s : s + 5])
            out.loss.sum().backward()
            mems = out.mems
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-10, rtol=0, msg=name)


# ---- the CUDA path's layout of the position bias, checked on the CPU ----


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_position_bias_handed_to_sdpa_is_fresh_aligned_and_in_the_query_dtype(dtype, monkeypatch):
    """On CUDA the no-grad position bias must be a fresh, contiguous tensor of the queries' dtype: a
    view starting T-1 elements into the score buffer is misaligned for the CUDA kernels, and a float32
    bias beside bf16 queries is refused. The CPU takes it in place; here the CUDA rule is forced on the
    CPU, the tensors SDPA receives are checked, and the results still match the einsum reference."""
    monkeypatch.setattr(attention, "IN_PLACE_BIAS_DEVICES", ())
    monkeypatch.setattr(attention, "CPU_QUERY_BLOCK", 2)  # the query blocks too
    seen = []
    sdpa = attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.dtype, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = make_model(tiny(mem_len=6)).to(dtype)
    x = torch.randint(0, V, (2, 15))
    dp = torch.tensor([list(range(15)), [2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        got = run_segments(model, x, 5, dp)
    assert seen
    for q_dtype, bias in seen:
        assert bias.storage_offset() == 0 and bias.is_contiguous() and bias.dtype == q_dtype == dtype
        assert bias.data_ptr() % 16 == 0
    if dtype == torch.float64:
        ref = from_model(model)
        with torch.no_grad():
            close(got, run_segments(ref, x, 5, dp), tol=1e-12)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_padded_distance_rows_match_einsum_reference(train, monkeypatch):
    """CUDA pads the position-score rows from K+1 to a multiple of 8 columns (always-masked
    distances); forced on the CPU it gives the einsum model's outputs and gradients."""
    monkeypatch.setattr(attention, "ROW_ALIGN", {"cpu": 8})
    assert attention.distance_columns(10, torch.device("cpu")) == 16
    model = make_model(tiny(mem_len=6, same_length=True, clamp_len=3)).double().train(train)
    ref = from_model(model)
    x = torch.randint(0, V, (2, 15))
    t = torch.randint(0, V, (2, 15))
    dp = torch.tensor([list(range(15)), [2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.set_grad_enabled(train):
        outs = []
        for m in (model, ref):
            mems, logits = None, []
            for s in range(0, 15, 5):
                out = m(x[:, s : s + 5], mems=mems, targets=t[:, s : s + 5], doc_pos=dp[:, s : s + 5])
                if train:
                    out.loss.sum().backward()
                mems, _ = out.mems, logits.append(out.logits)
            outs.append(torch.cat(logits, 1))
    close(outs[0], outs[1], tol=1e-12)
    if train:
        grads = dict(ref.named_parameters())
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-10, rtol=0, msg=name)


def test_attention_mask_is_made_in_the_compute_dtype():
    """The -inf/0 mask is built in the dtype the position scores have (bf16 weights, or autocast), so
    no float32 (B, H, T, K) tensor is made beside bf16 scores."""
    x = torch.zeros(2, 3)
    assert attention.compute_dtype(x) == torch.float32
    assert attention.compute_dtype(x.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention.compute_dtype(x) == torch.bfloat16


def test_training_attention_allows_a_second_backward():
    model = make_model(tiny()).train()
    loss = model(torch.randint(0, V, (1, 5)), targets=torch.ones(1, 5, dtype=torch.long)).loss.sum()
    loss.backward(retain_graph=True)
    once = model.layers[0].attn.u.grad.clone()
    loss.backward()
    close(model.layers[0].attn.u.grad, 2 * once, tol=1e-6)


# ---- the paper's equation, written out with loops ----


def loop_reference(model: TransformerXL, tokens: list[int]) -> torch.Tensor:
    """Logits (N, V) of one stream evaluated segment by segment with memory, computed position by
    position from the paper's equation (post-norm). Query p in segment s sees keys j with
    max(0, s*tgt_len - mem_len) <= j <= p, and with same_length only p - j < mem_len; the score is
    (q_p + u).k_j + (q_p + v).(W_kR R_{min(p-j, clamp_len)}), R_d = [sin(d w_k) | cos(d w_k)]."""
    c = model.config
    D, H, Dh, T, M = c.d_model, c.n_head, c.d_head, c.tgt_len, c.mem_len
    N = len(tokens)

    def R(d: int) -> torch.Tensor:
        if c.clamp_len >= 0:
            d = min(d, c.clamp_len)
        w = [1.0 / 10000 ** (2 * k / D) for k in range(D // 2)]
        return torch.tensor(
            [math.sin(d * wk) for wk in w] + [math.cos(d * wk) for wk in w], dtype=torch.float64
        )

    def rotate(x: torch.Tensor, pos: int) -> torch.Tensor:
        """Rotary positions as complex numbers: pair (x_i, x_{i+r/2}) times e^{i pos theta_i}."""
        r = c.rotary_dims
        theta = torch.tensor([c.rotary_base ** (-2 * i / r) for i in range(r // 2)], dtype=torch.float64)
        z = torch.complex(x[: r // 2], x[r // 2 : r]) * torch.exp(1j * pos * theta)
        return torch.cat([z.real, z.imag, x[r:]])

    emb = model.word_emb.weight.double()
    h = [emb[t] * math.sqrt(D) for t in tokens]
    if c.attention == "absolute":
        h = [h[p] + R(p % T) for p in range(N)]  # absolute position within the segment
    for layer in model.layers:
        a = layer.attn
        W = a.qkv.weight.double()
        Wq, Wk, Wv = W[: H * Dh], W[H * Dh : 2 * H * Dh], W[2 * H * Dh :]
        new_h = []
        for p in range(N):
            lo = max(0, (p // T) * T - M)
            keys = [j for j in range(lo, p + 1) if not (c.same_length and M > 0 and p - j >= M)]
            q = Wq @ h[p]
            heads = []
            for n in range(H):
                sl = slice(n * Dh, (n + 1) * Dh)
                scores = []
                for j in keys:
                    k = (Wk @ h[j])[sl]
                    if c.attention == "rotary":
                        s = rotate(q[sl], p) @ rotate(k, j)
                        scores.append(s / math.sqrt(Dh))
                        continue
                    s = (q[sl] + (a.u[n].double() if model.relative else 0)) @ k
                    if model.relative:
                        r = (a.r_net.weight.double() @ R(p - j))[sl]
                        s = s + (q[sl] + a.v[n].double()) @ r
                    scores.append(s / math.sqrt(Dh))
                prob = torch.softmax(torch.stack(scores), 0)
                heads.append(sum(pj * (Wv @ h[j])[sl] for pj, j in zip(prob, keys)))
            attn = a.out.weight.double() @ torch.cat(heads)
            x = norm(layer.attn_norm, h[p] + attn)
            ff = linear(layer.ff.fc2, torch.relu(linear(layer.ff.fc1, x)))
            new_h.append(norm(layer.ff_norm, x + ff))
        h = new_h
    return torch.stack([linear(model.out, hp) for hp in h])


def linear(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return m.weight.double() @ x + m.bias.double()


def norm(m: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + m.eps) * m.weight.double() + m.bias.double()


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(clamp_len=2),
        dict(same_length=True),
        dict(same_length=True, clamp_len=1, mem_len=3),
        dict(attention="absolute", mem_len=0),
        dict(attention="rotary"),
        dict(attention="rotary", same_length=True, mem_len=3, rotary_fraction=0.5, rotary_base=100.0),
    ],
    ids=["plain", "clamp_len", "same_length", "both", "absolute", "rotary", "rotary_half_same_base100"],
)
@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
def test_matches_loop_implementation_of_the_paper(kw):
    cfg = tiny(tgt_len=4, **{"mem_len": 6, **kw})
    model = make_model(cfg)
    x = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        expect = loop_reference(model, x[0].tolist()).float()
        got = run_segments(model, x, cfg.tgt_len)[0]
    close(got, expect, tol=1e-4)


@pytest.mark.parametrize("kw", [dict(clamp_len=2), dict(same_length=True)])
def test_clamp_len_and_same_length_change_results(kw):
    x = torch.randint(0, V, (1, 12))
    base = run_segments(make_model(tiny(tgt_len=4, mem_len=6)), x, 4)
    other = run_segments(make_model(tiny(tgt_len=4, mem_len=6, **kw)), x, 4)
    close(base[:, :2], other[:, :2])  # distances < 2 everywhere: no difference yet
    assert (base - other).abs().max() > 1e-3


# ---- document boundaries ----


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("same_length", [False, True])
def test_doc_pos_blocks_attention_across_file_start(same_length, attn):
    cfg = tiny(tgt_len=8, mem_len=16, same_length=same_length, attention=attn)
    model = make_model(cfg)
    a = torch.randint(0, V, (1, 11))
    b = torch.randint(0, V, (1, 13))
    stream = torch.cat([a, b], 1)  # segments: a[:8] | a[8:] + b[:5] | b[5:13]
    doc_pos = torch.cat([torch.arange(11), torch.arange(13)])[None]
    mixed = run_segments(model, stream, 8, doc_pos)[:, 11:]
    alone = run_segments(model, b, 8)  # b from an empty memory, its own segmentation
    close(mixed, alone)
    # not vacuous: without doc_pos the memory of file a changes file b's predictions
    assert (run_segments(model, stream, 8)[:, 11:] - alone).abs().max() > 1e-3


# ---- rotary positions ----


def test_rotary_score_depends_on_distance_only_far_into_a_stream():
    """q_p . k_j after rotation is a function of p - j, also 10^8 positions into a stream (the angles
    are made in float64), and the dimensions past rotary_fraction pass unrotated."""
    inv = attention.rotary_inv_freq(8, 10_000.0)
    q, k = torch.randn(12), torch.randn(12)  # 8 rotated dimensions, 4 passed through

    def score(p: int, j: int) -> torch.Tensor:
        cq, sq = attention.rotary_tables(torch.tensor([p]), inv, torch.float32)
        ck, sk = attention.rotary_tables(torch.tensor([j]), inv, torch.float32)
        rq, rk = attention.apply_rotary(q[None], cq, sq)[0], attention.apply_rotary(k[None], ck, sk)[0]
        assert torch.equal(rq[8:], q[8:]) and torch.equal(rk[8:], k[8:])
        return rq @ rk

    near = torch.stack([score(d, 0) for d in range(6)])
    far = torch.stack([score(10**8 + d, 10**8) for d in range(6)])
    close(far, near, tol=1e-4)
    assert (near[1:] - near[0]).abs().min() > 1e-3  # not vacuous: the score changes with the distance


def test_rotary_memory_keys_keep_their_frame():
    """Keys carried in the memory were rotated where they were made; the next segment's queries are
    rotated in the same frame (Memory.offset), so carrying keys == re-projecting them, and a memory
    whose offset is wrong gives other results."""
    model = make_model(tiny(attention="rotary", mem_len=8, tgt_len=4))
    x = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        out = model(x[:, :12], keep_kv=True)
        assert out.mems.offset == 12 - 8  # the memory holds positions 4..11 of the first call's frame
        carried = model(x[:, 12:], mems=out.mems).logits
        close(carried, model(x[:, 12:], mems=out.mems.hidden_only()).logits)
        shifted = dataclasses.replace(out.mems, offset=out.mems.offset + 3)
        assert (model(x[:, 12:], mems=shifted).logits - carried).abs().max() > 1e-4


def test_rotary_runs_sdpa_without_a_float_bias(monkeypatch):
    """Causality alone reaches SDPA as is_causal (T == K) or, with a memory, as a boolean mask on CPU
    (on CUDA a lower-right causal bias: test_rotary_runs_in_the_flash_kernel_on_cuda); file starts as
    a boolean mask; never a float bias."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if kw.get("is_causal"):
            seen.append("causal")
        elif attn_mask is None or not isinstance(attn_mask, torch.Tensor):
            seen.append(type(attn_mask).__name__)
        else:
            seen.append(str(attn_mask.dtype))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = make_model(tiny(attention="rotary", mem_len=6, tgt_len=4)).train()
    x = torch.randint(0, V, (2, 4))
    out = model(x)  # no memory: T == K
    model(x, mems=out.mems, targets=x).loss.sum().backward()  # memory: T < K, with autograd
    model(x, mems=out.mems, doc_pos=torch.arange(4).repeat(2, 1) + 1)  # a file start: boolean mask
    assert seen == ["causal"] * 2 + ["torch.bool"] * 4, seen


def test_rotary_kernel_on_cpu_is_the_fused_flash_kernel():
    """Which kernel runs, by the profiler: the CPU flash kernel, forward and backward, with memory and
    with a file boundary (the relative model hands it a float bias; rotary a boolean mask or none)."""
    from torch.profiler import ProfilerActivity, profile

    model = make_model(tiny(attention="rotary", mem_len=6, tgt_len=4)).train()
    x = torch.randint(0, V, (2, 4))
    mems = model(x).mems
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, mems=mems, targets=x).loss.sum().backward()
        model(x, mems=mems, targets=x, doc_pos=torch.arange(4).repeat(2, 1) + 1).loss.sum().backward()
    names = [e.name for e in prof.events()]
    n = 2 * model.config.n_layer
    assert names.count("aten::_scaled_dot_product_flash_attention_for_cpu") == n
    assert names.count("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == n
    assert not any("math" in n for n in names)


@pytest.mark.cuda
def test_rotary_runs_in_the_flash_kernel_on_cuda():
    """With only the flash kernel allowed, rotary attention over memory + segment runs (flash takes no
    mask: causality goes in as the lower-right causal bias); with a file start the boolean mask needs
    the memory-efficient kernel, and runs there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = make_model(tiny(attention="rotary", mem_len=8, tgt_len=8, d_head=16, n_head=2)).cuda()
    x = torch.randint(0, V, (2, 8), device="cuda")
    with torch.autocast("cuda", torch.bfloat16), torch.no_grad():
        mems = model(x).mems
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            flash = model(x, mems=mems).logits.float()
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            doc = torch.arange(8, device="cuda").repeat(2, 1) + 3
            model(x, mems=mems, doc_pos=doc)
        with sdpa_kernel([SDPBackend.MATH]):
            math_ = model(x, mems=mems).logits.float()
    close(flash, math_, tol=5e-2)


# ---- cached decoding ----


def greedy_feeding_memories(model, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding through forward(): one token at a time with the hidden states of its context as
    memory, cut to mem_len at every segment boundary (mem_len = 0: recompute the segment so far)."""
    c = model.config
    seq = prompt.clone()
    ctx, seg_start = None, 0
    logits = None
    for p in range(seq.shape[1] + n_new - 1):
        if p % c.tgt_len == 0:
            seg_start = p
            if ctx is not None:
                ctx = ctx.last(c.mem_len)
        if c.mem_len == 0:
            logits = model(seq[:, seg_start : p + 1]).logits[:, -1]
        else:
            out = model(seq[:, p : p + 1], mems=ctx)
            new = out.mems.last(1)  # the token's layer inputs: the context grows by one position
            ctx, logits = (new if ctx is None else ctx.append(new)), out.logits[:, -1]
        if p + 1 >= seq.shape[1]:
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq[:, prompt.shape[1] :]


def greedy_cached(model, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    cache = model.init_cache(prompt.shape[0])
    logits = model.step(prompt, cache).logits
    toks = [logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(n_new - 1):
        logits = model.step(toks[-1], cache).logits
        assert cache.slots == model.config.mem_len + model.config.tgt_len
        toks.append(logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(toks, 1)


CACHE_CASES = [
    dict(),
    dict(mem_len=3),  # memory shorter than a segment
    dict(pre_norm=True, clamp_len=3),
    dict(same_length=True),
    dict(attention="absolute", mem_len=0),
    dict(attention="rotary"),
    dict(attention="rotary", same_length=True, pre_norm=True, rotary_fraction=0.5, mem_len=3),
]
CACHE_IDS = ["plain", "short_mem", "pre_norm_clamp", "same_length", "absolute", "rotary", "rotary_half_same"]


@pytest.mark.numerics  # kernels that differ between CPUs: CI reruns it as another CPU
@pytest.mark.parametrize("kw", CACHE_CASES, ids=CACHE_IDS)
@pytest.mark.parametrize("block", [256, 2], ids=["default_blocks", "query_blocks_of_2"])
def test_cached_decoding_equals_segment_by_segment_forward(kw, block, monkeypatch):
    monkeypatch.setattr(attention, "CPU_QUERY_BLOCK", block)  # 2: the chunks of 4 go in query blocks
    cfg = tiny(tgt_len=4, **{"mem_len": 6, **kw})
    model = make_model(cfg)
    x = torch.randint(0, V, (2, 30))  # 7.5 segments: the window slides many times
    expect = run_segments(model, x, cfg.tgt_len)
    cache = model.init_cache(2)
    one_at_a_time = torch.cat([model.step(x[:, t : t + 1], cache).logits for t in range(30)], 1)
    close(one_at_a_time, expect)
    # any chunking (crossing segment boundaries) gives the same
    cache = model.init_cache(2)
    cuts = [0, 3, 4, 11, 12, 13, 22, 30]
    chunked = torch.cat([model.step(x[:, a:b], cache).logits for a, b in zip(cuts, cuts[1:])], 1)
    close(chunked, expect)
    assert cache.position == 30 and int(cache.t) == 30 and cache.slots == cfg.mem_len + cfg.tgt_len


@pytest.mark.parametrize("kw", CACHE_CASES, ids=CACHE_IDS)
def test_greedy_cached_equals_feeding_memories_back(kw):
    cfg = tiny(tgt_len=4, **{"mem_len": 6, **kw})
    model = make_model(cfg)
    prompt = torch.randint(0, V, (2, 5))
    assert torch.equal(greedy_cached(model, prompt, 20), greedy_feeding_memories(model, prompt, 20))


# ---- learning ----


def test_tiny_model_overfits_a_repeated_pattern():
    torch.manual_seed(0)
    cfg = tiny(n_layer=2, d_model=32, d_head=16, d_inner=64, tgt_len=16, mem_len=16, dropout=0.0)
    model = TransformerXL(cfg)
    pattern = torch.randint(0, V, (11,))
    stream = pattern.repeat(20)[None]  # (1, 220)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    n_seg = 6
    for _ in range(40):  # 40 passes x 6 segments = 240 steps
        mems = None
        for s in range(n_seg):
            seg = stream[:, s * 16 : s * 16 + 17]
            out = model(seg[:, :-1], mems=mems, targets=seg[:, 1:], return_logits=False)
            out.loss.mean().backward()
            opt.step()
            opt.zero_grad()
            mems = out.mems
    model.eval()
    with torch.no_grad():
        mems, losses = None, []
        for s in range(n_seg):
            seg = stream[:, s * 16 : s * 16 + 17]
            out = model(seg[:, :-1], mems=mems, targets=seg[:, 1:])
            mems = out.mems
            losses.append(out.loss)
    loss = torch.cat(losses, 1)[:, 11:].mean()  # after the first period every token is predictable
    assert loss < 0.05, f"mean NLL {loss:.3f} after 240 steps"


# ---- compilation and mixed precision ----


@pytest.mark.slow
def test_torch_compile_matches_eager_on_cpu():
    model = make_model(tiny())
    x = torch.randint(0, V, (2, 10))
    compiled = torch.compile(model)
    with torch.no_grad():
        close(run_segments(compiled, x, 5), run_segments(model, x, 5), tol=1e-4)


COMPILED_TRAINING = """
import torch
from txl_audio.config import ModelConfig
from txl_audio.model import TransformerXL
cfg = ModelConfig(vocab_size=256, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16,
                  mem_len=16, dropout=0.0)
torch.manual_seed(0)
model = torch.compile(TransformerXL(cfg))
opt = torch.optim.AdamW(model.parameters())
mems = None
for _ in range(3):
    x = torch.randint(0, 256, (2, 17))
    out = model(x[:, :-1], mems=mems, targets=x[:, 1:], return_logits=False)
    out.loss.mean().backward()
    opt.step()
    opt.zero_grad()
    mems = out.mems
print("ok")
"""


@pytest.mark.slow  # two compilations: ~40 s on 2 cores
def test_compiled_training_runs_again_from_a_warm_compile_cache(tmp_path):
    """The second run of a compiled training reads torch.compile's caches. With the relative shift
    written as one as_strided view, the cached graph gave back a tensor of garbage sizes (torch 2.13):
    a second `txl-audio train` with train.compile=true failed where the first had worked."""
    import os
    import subprocess

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    for run in ("cold cache", "warm cache"):
        proc = subprocess.run([sys.executable, "-c", COMPILED_TRAINING], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (run, proc.stderr[-2000:])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_and_bf16_close_to_fp32():
    cfg = tiny(n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=128, tgt_len=32, mem_len=32)
    model = make_model(cfg).cuda()
    with torch.no_grad():
        for p in model.parameters():  # back to a realistic scale so bf16 rounding stays small
            p.mul_(0.3)
    x = torch.randint(0, V, (2, 96), device="cuda")
    t = torch.randint(0, V, (2, 96), device="cuda")
    with torch.no_grad():
        ref = run_segments(model, x, 32).float()
        compiled = torch.compile(model)
        close(run_segments(compiled, x, 32).float(), ref, tol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf = run_segments(model, x, 32).float()
            cbf = run_segments(compiled, x, 32).float()
            cache = model.init_cache(2)
            stepped = torch.cat([model.step(x[:, i : i + 1], cache).logits for i in range(96)], 1).float()
    scale = ref.abs().max()
    for got in (bf, cbf, stepped):
        assert (got - ref).abs().max() < 0.05 * scale
    # training step under bf16 autocast + compile runs and gives finite gradients
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(x[:, :32], targets=t[:, :32]).loss.mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_weights_made_under_inference_mode_evaluate_with_memory():
    """Parameters created under inference_mode (no version counter, no autograd): evaluating with the
    memory's keys/values carried along gives exactly what re-projecting them gives."""
    cfg = ModelConfig(
        vocab_size=16,
        n_layer=2,
        d_model=16,
        n_head=2,
        d_head=8,
        d_inner=32,
        dropout=0.0,
        tgt_len=4,
        mem_len=4,
    )
    with torch.inference_mode():
        torch.manual_seed(0)
        model = TransformerXL(cfg).eval()
        x = torch.randint(0, 16, (2, 12))
        mems, plain, outs, ref = None, None, [], []
        for seg in x.split(4, dim=1):
            out = model(seg, mems=mems, keep_kv=True)
            mems = out.mems
            outs.append(out.logits)
            r = model(seg, mems=plain)
            plain = r.mems
            ref.append(r.logits)
    torch.testing.assert_close(torch.cat(outs, 1), torch.cat(ref, 1), rtol=0, atol=1e-6)
