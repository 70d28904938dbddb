"""Compressive memory (Rae et al. 2020): off, it is the plain Transformer-XL bit for bit; on, every
path (segment by segment, one forward over segments, cached step decoding, the reference decoder,
training, resume) compresses the same states into the same slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _models import sharp_model
from _training import killed_and_resumed, make_corpus, same_params, tiny_config

from txl_audio.checkpoint import load_checkpoint
from txl_audio.config import ConfigError, ModelConfig
from txl_audio.data import IGNORE_INDEX
from txl_audio.decoders import ReferenceDecoder
from txl_audio.model import TransformerXL
from txl_audio.model.compressive import Compressor
from txl_audio.train import train

pytestmark = pytest.mark.numerics  # CPU-sensitive results: CI reruns this file as another CPU


REFERENCE = Path(__file__).parent / "data" / "cmem_off_reference.pt"
ATTN = ["relative", "rotary"]


def segments(model, x, T, lengths=None):
    """Segment by segment with the memory carried: logits (B, N, V) and the last memory."""
    mems, out = None, []
    for s in range(0, x.shape[1], T):
        o = model(x[:, s : s + T], mems=mems, lengths=lengths)
        mems = o.mems
        out.append(o.logits)
    return torch.cat(out, 1), mems


def stepped(model, x, lengths=None):
    cache = model.init_cache(x.shape[0], lengths)
    return torch.cat([model.step(x[:, t : t + 1], cache).logits for t in range(x.shape[1])], 1)


def plain_outputs(attention: str, corpus: Path, out: Path) -> dict:
    """What the plain Transformer-XL computes (used to make REFERENCE with the code before the
    compressive memory existed, and to check the code now with cmem_len = 0), on one thread as the
    tests run."""
    torch.set_num_threads(1)
    # float64: the reference is compared on machines other than the one that made it
    model = sharp_model(vocab=16, mem_len=8, tgt_len=4, attention=attention).double()
    x = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        forward, _ = segments(model, x, 4)
        step = stepped(model, x)
    r = train(tiny_config(corpus, model={"attention": attention}, max_steps=4), out, progress=False,
              log=lambda m: None)
    return {"forward": forward, "step": step, "losses": torch.tensor(r.losses, dtype=torch.float64)}


# ---- off: the plain model ---------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ATTN)
def test_cmem_off_is_the_plain_model_bit_for_bit(attn, tmp_path):
    """REFERENCE holds the forward and step outputs (float64) and four fp32 training losses of the code
    before the compressive memory (made by tests/data/make_cmem_off_reference.py on that commit);
    cmem_len = 0 reproduces them to rounding.

    The tolerances are what another CPU's kernels (other vector width, FMA, summation order) can change:
    a reordered sum of n terms moves by at most about n * u relative (u = 2^-53 in float64, 2^-24 in
    float32). Float64 logits (largest 6.7, widest sum 64 terms, about 16 dependent operations along a
    24-step stream): 16 * 64 * 2^-53 * 6.7 = 7.6e-13 -> atol 1e-11. Float32 losses (widest sum the
    256-way softmax, 4 layers of it over 4 steps): 16 * 256 * 2^-24 = 2.4e-4 relative -> rtol 3e-4;
    a real regression (a lost memory, a shifted position) moves them by more than 1e-2."""
    ref = torch.load(REFERENCE)[attn]
    now = plain_outputs(attn, make_corpus(tmp_path / "c"), tmp_path / "run")
    for key in ("forward", "step"):
        assert ref[key].dtype == torch.float64
        torch.testing.assert_close(now[key], ref[key], rtol=0, atol=1e-11, msg=key)
    torch.testing.assert_close(now["losses"], ref["losses"], rtol=3e-4, atol=0, msg="losses")
    assert TransformerXL(ModelConfig(vocab_size=16, n_layer=1, d_model=8, n_head=2, d_head=4, d_inner=8,
                                     tgt_len=4, mem_len=4)).compress is None


@pytest.mark.parametrize("attn", ATTN)
def test_a_compressive_model_evaluated_without_its_cmem_is_the_plain_model(attn):
    """The same weights (mean pooling has none of its own): cmem_len 0 at evaluation gives the plain
    model's logits exactly, and with cmem on the logits differ once states have left the memory."""
    plain = sharp_model(vocab=16, mem_len=8, tgt_len=4, attention=attn, seed=1)
    comp = sharp_model(vocab=16, mem_len=8, tgt_len=4, attention=attn, seed=1, cmem_len=4, cmem_ratio=2)
    assert plain.state_dict().keys() == comp.state_dict().keys()
    comp.load_state_dict(plain.state_dict())
    x = torch.randint(0, 16, (2, 24))
    with torch.no_grad():
        a, _ = segments(plain, x, 4)
        b, _ = segments(comp, x, 4, comp.config.lengths(cmem_len=0))
        c, _ = segments(comp, x, 4)
    assert torch.equal(a, b)
    assert torch.equal(stepped(plain, x), stepped(comp, x, comp.config.lengths(cmem_len=0)))
    # the first 12 positions see no compressed slot yet (nothing left the memory before position 12)
    assert torch.equal(a[:, :12], c[:, :12]) and not torch.allclose(a[:, 12:], c[:, 12:])


# ---- on: every path compresses the same states --------------------------------------------------------

CASES = [
    dict(attention="relative"),
    dict(attention="rotary"),
    dict(attention="relative", cmem_fn="conv", pre_norm=True),
    dict(attention="rotary", cmem_fn="conv", cmem_ratio=4, mem_len=4),
    dict(attention="relative", clamp_len=5, same_length=True),
    dict(attention="relative", mem_len=2),  # memory shorter than a segment
]
IDS = ["relative", "rotary", "conv_pre_norm", "rotary_conv_rate4", "clamp_same_length", "short_memory"]


def compressive(seed=0, **kw):
    kw = {"mem_len": 8, "tgt_len": 4, "cmem_len": 3, "cmem_ratio": 2, **kw}
    model = sharp_model(vocab=16, seed=seed, **kw)
    if model.config.cmem_fn == "conv":  # away from the mean-pooling start, so the conv matters
        with torch.no_grad():
            for comp in model.compress:
                comp.conv.weight.add_(0.2 * torch.randn_like(comp.conv.weight))
    return model.double()  # float64: the paths agree to 1e-9, so a misplaced slot cannot hide in rounding


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_segments_step_and_chunks_agree_with_compression(kw):
    model = compressive(**kw)
    x = torch.randint(0, 16, (2, 44))  # 11 segments: the compressed memory fills and rolls over
    with torch.no_grad():
        expect, mems = segments(model, x, 4)
    assert mems.cmem_length == 3 and len(mems.cmem_pos) == 3
    torch.testing.assert_close(stepped(model, x), expect, rtol=0, atol=1e-9)
    cache = model.init_cache(2)
    cuts = [0, 3, 4, 11, 12, 13, 22, 37, 44]
    chunked = torch.cat([model.step(x[:, a:b], cache).logits for a, b in zip(cuts, cuts[1:])], 1)
    torch.testing.assert_close(chunked, expect, rtol=0, atol=1e-9)
    # evaluation's way: the memory's keys and values carried from segment to segment (keep_kv)
    with torch.no_grad():
        mems, out = None, []
        for s in range(0, 44, 4):
            o = model(x[:, s : s + 4], mems=mems, keep_kv=True)
            mems, out = o.mems, out + [o.logits]
    torch.testing.assert_close(torch.cat(out, 1), expect, rtol=0, atol=1e-9)


@pytest.mark.parametrize("stream", [False, True], ids=["per_file", "stream"])
def test_evaluate_scores_what_the_forward_pass_scores(stream):
    """txl-audio evaluate's pass (files packed in lanes, per file or as one stream) gives each file the
    NLL the model's own forward gives it alone (per file) or after the files before it (stream)."""
    from txl_audio.evaluate import evaluate_tokens

    model = compressive(attention="rotary").float()
    docs = [torch.randint(0, 16, (n,)).numpy() for n in (37, 52, 9, 44)]

    def nll(x, mems=None):  # summed over the document's predictions
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(x) - 1, 4):
                seg = torch.as_tensor(x[s : s + 5])[None]
                o = model(seg[:, :-1], mems=mems, targets=seg[:, 1:])
                mems, total = o.mems, total + float(o.loss.sum())
        return total

    res = evaluate_tokens(model, docs, batch_size=2 if not stream else 1, stream=stream, baselines=False,
                          progress=False)
    got = [f.nll_nats for f in res.files]
    if not stream:
        torch.testing.assert_close(torch.tensor(got), torch.tensor([nll(d) for d in docs]), rtol=1e-5, atol=0)
        return
    # one lane: the files as one stream, cut into segments from its start, attention (and the
    # compressed slots) stopping at each file start, no prediction across a start
    x = torch.as_tensor(np.concatenate(docs))[None]
    doc_pos = torch.as_tensor(np.concatenate([np.arange(len(d)) for d in docs]))[None]
    targets = torch.where(doc_pos[:, 1:] == 0, IGNORE_INDEX, x[:, 1:])
    total, mems = 0.0, None
    with torch.no_grad():
        for s in range(0, x.shape[1] - 1, 4):
            e = min(s + 4, x.shape[1] - 1)
            o = model(x[:, s:e], mems=mems, targets=targets[:, s:e], doc_pos=doc_pos[:, s:e])
            mems, total = o.mems, total + float(o.loss.sum())
    assert mems.cmem_length == 3
    assert sum(got) == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("kw", CASES[:3], ids=IDS[:3])
def test_reference_decoder_compresses_at_the_same_positions(kw):
    """Feeding memories back token by token (the reference decoder, which compresses what it cuts at
    each boundary) predicts what the cached step predicts."""
    model = compressive(**kw)
    x = torch.randint(0, 16, (2, 40))
    ref = ReferenceDecoder(model, 2)
    logits = [ref.prefill(x[:, :1]).logits]
    logits += [ref.step(x[:, t]).logits for t in range(1, 40)]
    torch.testing.assert_close(torch.stack(logits, 1), stepped(model, x), rtol=0, atol=1e-9)
    assert ref.context.cmem_length == 3


def test_mean_pooling_by_hand():
    """mem_len 2, tgt_len 2, rate 2, one layer: after the second segment, positions 0 and 1 have left
    the memory; the slot is their inputs' mean, at centroid 0.5, and what the next segment attends."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8, n_layer=1, d_model=8, n_head=2, d_head=4, d_inner=16, dropout=0.0,
                      tgt_len=2, mem_len=2, cmem_len=2, cmem_ratio=2)
    model = TransformerXL(cfg).eval()
    x = torch.tensor([[1, 5, 2, 7, 3, 6]])
    with torch.no_grad():
        o1 = model(x[:, :2])
        emb = model._embed(x[:, :2])  # layer 0's inputs at positions 0, 1 (no dropout)
        o2 = model(x[:, 2:4], mems=o1.mems)
    assert o1.mems.cmem is None and o2.mems.cmem_pos == (0,)
    torch.testing.assert_close(o2.mems.cmem[0], emb.mean(1, keepdim=True))
    assert model._centroids((0,), "cpu").item() == 0.5
    assert torch.equal(Compressor(8, 2, "mean")(emb), emb.mean(1, keepdim=True))


def test_slots_from_before_a_file_start_are_hidden():
    """Packed files: a slot summarising positions of the previous file is masked for the next one, so
    a file packed behind another is scored as if alone."""
    model = compressive()
    a, b = torch.randint(0, 16, (1, 20)), torch.randint(0, 16, (1, 12))
    with torch.no_grad():
        alone, _ = segments(model, b, 4)
        both = torch.cat([a, b], 1)
        doc_pos = torch.cat([torch.arange(20), torch.arange(12)])[None]
        mems, out = None, []
        for s in range(0, 32, 4):
            o = model(both[:, s : s + 4], mems=mems, doc_pos=doc_pos[:, s : s + 4])
            mems = o.mems
            out.append(o.logits)
    torch.testing.assert_close(torch.cat(out, 1)[:, 20:], alone, rtol=0, atol=1e-9)


def test_evaluation_overrides_and_refusals():
    model = compressive()
    assert model.config.lengths(cmem_len=1).cmem_len == 1
    with pytest.raises(ValueError, match="multiples of"):
        model.config.lengths(mem_len=5)
    with pytest.raises(ValueError, match="trained without a compressed memory"):
        sharp_model(vocab=16).config.lengths(cmem_len=2)
    with pytest.raises(ConfigError, match="absolute"):
        ModelConfig(attention="absolute", mem_len=0, cmem_len=2)
    with pytest.raises(ConfigError, match="cmem_fn"):
        ModelConfig(cmem_len=2, cmem_fn="max")


# ---- training ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


def test_reconstruction_loss_trains_the_compression_only(corpus):
    """The conv compression learns from the attention-reconstruction loss; the loss's gradient reaches
    no other parameter (the model's weights are constants in it)."""
    model = compressive(cmem_fn="conv").train()
    x = torch.randint(0, 16, (2, 16))
    mems = None
    for s in range(0, 16, 4):
        out = model(x[:, s : s + 4], mems=mems)
        mems = out.mems
    assert out.cmem_loss is not None and out.cmem_loss.item() > 0
    model.zero_grad()
    out.cmem_loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("compress.") for n in grads)


@pytest.mark.parametrize("fn", ["mean", "conv"])
def test_killed_compressive_run_resumes_to_identical_parameters(corpus, tmp_path, fn):
    cfg = tiny_config(corpus, model={"cmem_len": 4, "cmem_ratio": 4, "cmem_fn": fn}, max_steps=6)
    ref, r = killed_and_resumed(cfg, tmp_path, kill_at=5)
    assert r.resumed_from == 4 and r.losses == ref.losses[4:]
    a, b = load_checkpoint(ref.checkpoint), load_checkpoint(r.checkpoint)
    assert same_params(a["model"], b["model"])
    ma, mb = a["ranks"][0]["mems"][0], b["ranks"][0]["mems"][0]
    assert ma["cmem_pos"] == mb["cmem_pos"] and len(ma["cmem_pos"]) > 0
    assert all(torch.equal(x, y) for x, y in zip(ma["cmem"], mb["cmem"]))
