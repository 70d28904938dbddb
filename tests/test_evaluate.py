"""Likelihood evaluation: equal to the model's own losses, packing and streaming change nothing they
should not, compressor baselines are exact, and a model that learned a signal beats the compressors."""

import bz2
import csv
import json
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import sharp_model

from txl_audio.baselines import bootstrap_ci
from txl_audio.config import ModelConfig, RunConfig
from txl_audio.evaluate import evaluate_tokens
from txl_audio.model import TransformerXL


def random_docs(lengths, vocab=16, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).astype(np.int64) for n in lengths]


@torch.no_grad()
def full_pass_nll(model, doc) -> float:
    """Summed NLL (nats) of doc[1:] from one forward over the whole file: full context, no memory."""
    x = torch.as_tensor(doc, dtype=torch.long)[None]
    out = model(x[:, :-1], targets=x[:, 1:])
    # the model's loss must be its own log-probabilities; check against the logits where it gives them
    if getattr(out, "logits", None) is not None:
        ref = torch.nn.functional.cross_entropy(out.logits[0].float(), x[0, 1:], reduction="sum")
        assert float(out.loss.sum()) == pytest.approx(float(ref), rel=1e-5)
    return float(out.loss.sum())


@torch.no_grad()
def alone_nll(model, doc, tgt_len) -> float:
    """Summed NLL of doc[1:] evaluated alone: segments of tgt_len from its start, memory carried, no
    doc_pos. Uses the model's own mem_len."""
    x = torch.as_tensor(doc, dtype=torch.long)[None]
    total, mems = 0.0, None
    for lo in range(0, len(doc) - 1, tgt_len):
        hi = min(lo + tgt_len, len(doc) - 1)
        out = model(x[:, lo:hi], mems=mems, targets=x[:, lo + 1 : hi + 1])
        mems = out.mems
        total += float(out.loss.sum())
    return total


@pytest.mark.parametrize("attn", ["relative", "rotary"])
def test_bits_equal_mean_of_model_losses(attn):
    model = sharp_model(mem_len=64, tgt_len=8, attention=attn)
    docs = random_docs([37, 50, 23, 2])
    res = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False)
    ref = [full_pass_nll(model, d) for d in docs]
    for f, r, d in zip(res.files, ref, docs):
        assert f.tokens == len(d) - 1
        assert f.nll_nats == pytest.approx(r, rel=1e-5, abs=1e-5)
    n = sum(len(d) - 1 for d in docs)
    assert res.tokens == n
    assert res.bits_per_token == pytest.approx(sum(ref) / n / math.log(2), rel=1e-5)
    s = res.summary()
    assert s["file_mean_bits_per_token"] == pytest.approx(
        np.mean([r / (len(d) - 1) / math.log(2) for r, d in zip(ref, docs)]), rel=1e-5
    )
    # the model's settings were restored after evaluation
    assert (model.config.mem_len, model.config.tgt_len) == (64, 8)


@pytest.mark.parametrize("attn", ["relative", "rotary"])
def test_packed_files_equal_each_file_alone(attn):
    # memory shorter than the files: the result depends on where segments start, so packing must align
    # every file with a segment start and stop attention at its boundary
    model = sharp_model(mem_len=8, tgt_len=8, attention=attn)
    docs = random_docs([37, 50, 23, 9, 64, 17], seed=2)
    packed = evaluate_tokens(model, docs, batch_size=3, baselines=False, progress=False)
    for f, d in zip(packed.files, docs):
        assert f.nll_nats == pytest.approx(alone_nll(model, d, 8), rel=1e-5)
        one = evaluate_tokens(model, [d], batch_size=1, baselines=False, progress=False)
        assert one.files[0].nll_nats == pytest.approx(f.nll_nats, rel=1e-5)
    # and the test can tell: a wrong context (no memory) gives different numbers
    short = evaluate_tokens(model, docs, batch_size=3, mem_len=0, baselines=False, progress=False)
    assert abs(short.nll_nats - packed.nll_nats) > 1e-2


@torch.no_grad()
def full_pass_token_nll(model, doc) -> np.ndarray:
    """Every prediction's NLL (nats) from one forward over the whole file."""
    x = torch.as_tensor(doc, dtype=torch.long)[None]
    return model(x[:, :-1], targets=x[:, 1:]).loss[0].double().numpy()


@pytest.mark.parametrize("attn", ["relative", "rotary"])
def test_per_token_nll_is_each_prediction_in_its_place(attn):
    """token_nll=True keeps every prediction's loss where it belongs: packed files of different lengths
    in segments with memory give, token by token, one full pass over each file alone; a short memory
    gives other numbers at the tokens it cannot see back to (so the check can fail)."""
    model = sharp_model(mem_len=64, tgt_len=8, attention=attn)
    docs = random_docs([37, 50, 2, 23, 9], seed=6)
    res = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False, token_nll=True)
    for f, d in zip(res.files, docs):
        assert f.token_nll.shape == (len(d) - 1,) and f.token_nll.dtype == np.float64
        np.testing.assert_allclose(f.token_nll, full_pass_token_nll(model, d), rtol=1e-5, atol=1e-6)
        assert f.token_nll.sum() == pytest.approx(f.nll_nats, rel=1e-9)
    short = evaluate_tokens(model, docs[:1], mem_len=0, batch_size=1, baselines=False, progress=False,
                            token_nll=True)
    differs = np.abs(short.files[0].token_nll - res.files[0].token_nll) > 1e-3
    assert not differs[:8].any() and differs[8:].any()  # the first segment has no memory either way
    with pytest.raises(ValueError, match="per-file"):
        evaluate_tokens(model, docs, stream=True, baselines=False, progress=False, token_nll=True)


@pytest.mark.parametrize("attn", ["relative", "rotary"])
def test_length_overrides_change_context(attn):
    model = sharp_model(mem_len=0, tgt_len=8, attention=attn)
    docs = random_docs([60, 41], seed=3)
    # evaluation memory longer than training memory, covering the files == one full pass
    res = evaluate_tokens(model, docs, mem_len=64, batch_size=2, baselines=False, progress=False)
    assert res.nll_nats == pytest.approx(sum(full_pass_nll(model, d) for d in docs), rel=1e-5)
    assert res.lengths.mem_len == 64 and model.config.mem_len == 0
    # longer segments, no memory, covering the files: the same
    res2 = evaluate_tokens(model, docs, tgt_len=64, batch_size=2, baselines=False, progress=False)
    assert res2.nll_nats == pytest.approx(res.nll_nats, rel=1e-5)


@pytest.mark.parametrize("attn", ["relative", "rotary"])
def test_stream_with_covering_memory_equals_full_pass(attn):
    model = sharp_model(mem_len=80, tgt_len=8, attention=attn)
    doc = random_docs([61], seed=4)[0]
    res = evaluate_tokens(model, [doc], stream=True, batch_size=1, baselines=False, progress=False)
    assert res.nll_nats == pytest.approx(full_pass_nll(model, doc), rel=1e-5)
    # several files in one stream: every prediction counted once, none across a file boundary
    docs = random_docs([30, 45, 12], seed=5)
    res = evaluate_tokens(
        model, docs, stream=True, batch_size=1, mem_len=128, baselines=False, progress=False
    )
    assert [f.tokens for f in res.files] == [29, 44, 11]
    for f, d in zip(res.files, docs):
        assert f.nll_nats == pytest.approx(full_pass_nll(model, d), rel=1e-5)
    lanes = evaluate_tokens(
        model, docs, stream=True, batch_size=3, mem_len=8, baselines=False, progress=False
    )
    assert lanes.tokens == 29 + 44 + 11


def test_compressor_baselines_and_outputs(tmp_path):
    model = sharp_model(vocab=256, mem_len=16, tgt_len=16)
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    docs = [
        (128 + 60 * np.sin(2 * np.pi * t[:n] / 37.3) + rng.normal(0, 3, n)).clip(0, 255).astype(np.uint8)
        for n in (3000, 1200, 500)
    ]
    res = evaluate_tokens(model, docs, ["a.wav", "b.wav", "c.wav"], batch_size=2, progress=False)
    total_xz = total_bz = 0
    for f, d in zip(res.files, docs):
        payload = d[1:].astype(np.uint8).tobytes()  # exactly the predicted tokens
        xz = len(lzma.compress(payload, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))
        bz = len(bz2.compress(payload, 9))
        assert (f.xz_bytes, f.bzip2_bytes) == (xz, bz)
        total_xz += xz
        total_bz += bz
    n = sum(len(d) - 1 for d in docs)
    assert res.compressor_bits("xz") == pytest.approx(total_xz * 8 / n)
    assert res.compressor_bits("bzip2") == pytest.approx(total_bz * 8 / n)
    res.write(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "per_file.csv")))
    assert [r["file"] for r in rows] == ["a.wav", "b.wav", "c.wav"]
    xz0 = len(lzma.compress(docs[0][1:].tobytes(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))
    assert float(rows[0]["xz_bits_per_sample"]) == pytest.approx(xz0 * 8 / 2999, abs=1e-5)
    assert float(rows[1]["bits_per_sample"]) == pytest.approx(res.files[1].bits_per_token, abs=1e-5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tokens"] == n and summary["mem_len"] == 16 and summary["tgt_len"] == 16
    assert summary["bits_per_token"] == pytest.approx(res.bits_per_token)


def test_bootstrap_interval():
    x = np.random.default_rng(0).normal(5, 1, 400)
    lo, hi = bootstrap_ci(x, seed=3)
    assert (lo, hi) == bootstrap_ci(x, seed=3)  # seeded
    assert lo < x.mean() < hi
    se = x.std() / math.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # the normal-theory width


def noisy_cycle(n, perm, p, rng):
    """A periodic token sequence (a fixed cycle through ``perm``) with each step replaced, with
    probability p, by a random symbol of the cycle."""
    x = [int(rng.choice(perm))]
    nxt = {int(a): int(b) for a, b in zip(perm, np.roll(perm, -1))}
    for _ in range(n - 1):
        x.append(int(rng.choice(perm)) if rng.random() < p else nxt[x[-1]])
    return np.array(x, np.int64)


def test_learned_periodic_signal_is_far_below_compressors(tmp_path):
    from txl_audio.checkpoint import load_model, save_checkpoint
    from txl_audio.cli import main
    from txl_audio.tokenizers import ByteTokenizer

    rng = np.random.default_rng(0)
    perm = rng.permutation(np.arange(48, 112))  # a cycle of period 64 through printable characters
    train = noisy_cycle(20000, perm, 0.05, rng)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=256,
        n_layer=2,
        d_model=64,
        n_head=2,
        d_head=32,
        d_inner=128,
        dropout=0.0,
        tgt_len=32,
        mem_len=32,
    )
    model = TransformerXL(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.as_tensor(train)
    for _ in range(250):
        starts = torch.randint(0, len(x) - 33, (16,))
        seg = torch.stack([x[s : s + 33] for s in starts])  # (16, 33)
        loss = model(seg[:, :-1], targets=seg[:, 1:]).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "config": RunConfig(model=cfg).to_dict(),
            "tokenizer": ByteTokenizer().to_dict(),
            "step": 250,
        },
    )
    files = []
    for i in range(3):
        path = tmp_path / f"signal{i}.txt"
        path.write_bytes(noisy_cycle(1000, perm, 0.05, rng).astype(np.uint8).tobytes())
        files.append(str(path))
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(ckpt),
                "--audio",
                *files,
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["metric"] == "bits per character" and s["tokens"] == 3 * 999
    ideal = -(0.95 * math.log2(0.95 + 0.05 / 64) + 0.05 * 63 / 64 * math.log2(0.05 / 64))
    assert s["bits_per_token"] < 2 * ideal + 0.3, s
    assert s["bits_per_token"] < 0.5 * min(s["xz_bits_per_token"], s["bzip2_bits_per_token"]), s
    # the command's numbers are the library's
    m, tok, _ = load_model(ckpt)
    docs = [np.frombuffer(open(f, "rb").read(), np.uint8).astype(np.int64) for f in files]
    lib = evaluate_tokens(m, docs, batch_size=1, baselines=False, progress=False)
    assert lib.bits_per_token == pytest.approx(s["bits_per_token"], rel=1e-5)


def test_absolute_baseline_refuses_memory():
    model = sharp_model(mem_len=0, tgt_len=16, attention="absolute")
    docs = random_docs([40, 30], seed=6)
    with pytest.raises(ValueError, match="absolute"):
        evaluate_tokens(model, docs, mem_len=16, baselines=False, progress=False)
    with pytest.raises(ValueError, match="tgt-len"):
        evaluate_tokens(model, docs, tgt_len=32, baselines=False, progress=False)
    res = evaluate_tokens(model, docs, tgt_len=8, batch_size=2, baselines=False, progress=False)
    for f, d in zip(res.files, docs):
        assert f.nll_nats == pytest.approx(alone_nll(model, d, 8), rel=1e-5)


def test_bad_input_is_named():
    model = sharp_model(vocab=16)
    with pytest.raises(ValueError, match="song.wav.*vocabulary"):
        evaluate_tokens(model, [np.array([1, 2, 99])], ["song.wav"], progress=False)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        evaluate_tokens(model, [np.array([1])], progress=False)


def test_corpus_split_through_the_command(tmp_path):
    from txl_audio.audio import load_audio, save_audio
    from txl_audio.checkpoint import save_checkpoint
    from txl_audio.cli import main
    from txl_audio.data import Corpus
    from txl_audio.prepare import prepare_audio
    from txl_audio.tokenizers import make_tokenizer

    rng = np.random.default_rng(0)
    for i in range(6):
        n = int(rng.integers(300, 900))
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(n) / 16000) + rng.normal(0, 0.01, n)
        save_audio(tmp_path / "wav" / f"spk{i}_nohash_0.wav", wave.astype(np.float32))
    prepare_audio([tmp_path / "wav"], tmp_path / "corpus", valid=0.2, test=0.3, progress=False)
    corpus = Corpus(tmp_path / "corpus")
    files = corpus.files("test")
    assert files
    tok = make_tokenizer("mulaw8")
    model = sharp_model(vocab=256, mem_len=32, tgt_len=16)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "config": RunConfig(model=model.config).to_dict(),
            "tokenizer": tok.to_dict(),
            "step": 0,
        },
    )
    # the same files decoded and tokenized here
    docs = [
        np.asarray(tok.encode(load_audio(tmp_path / "wav" / Path(f["path"]).name))).astype(np.int64)
        for f in files
    ]
    for extra in ([], ["--stream", "--batch-size", "1"]):
        out = tmp_path / f"eval{len(extra)}"
        assert (
            main(
                [
                    "evaluate",
                    str(ckpt),
                    "--corpus",
                    str(tmp_path / "corpus"),
                    "--split",
                    "test",
                    "--out",
                    str(out),
                    "--no-progress",
                    *extra,
                ]
            )
            == 0
        )
        s = json.loads((out / "summary.json").read_text())
        lib = evaluate_tokens(model, docs, stream=bool(extra), batch_size=1, baselines=False, progress=False)
        assert s["split"] == "test" and s["tokens"] == sum(len(d) - 1 for d in docs)
        assert s["bits_per_token"] == pytest.approx(lib.bits_per_token, rel=1e-5)
        assert s["mode"] == ("stream" if extra else "per-file")


@pytest.mark.cuda
def test_cuda_fp32_and_bf16_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = sharp_model(vocab=256, mem_len=64, tgt_len=32)
    docs = random_docs([500, 333, 210], vocab=256, seed=7)
    cpu = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False)
    model.cuda()
    fp32 = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False)
    bf16 = evaluate_tokens(model, docs, batch_size=2, dtype="bf16", baselines=False, progress=False)
    assert fp32.device.startswith("cuda")
    assert fp32.bits_per_token == pytest.approx(cpu.bits_per_token, rel=1e-3)  # TF32 matmuls allowed
    assert bf16.bits_per_token == pytest.approx(cpu.bits_per_token, rel=3e-2)


def test_bf16_autocast_on_cpu_close_to_fp32():
    """The bf16 path (autocast, fp64 loss sums) runs on the CPU too and stays within bf16 rounding."""
    model = sharp_model(vocab=256, mem_len=32, tgt_len=16)
    docs = random_docs([300, 170], vocab=256, seed=3)
    fp32 = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False)
    bf16 = evaluate_tokens(model, docs, batch_size=2, dtype="bf16", baselines=False, progress=False)
    assert bf16.dtype == "bf16"
    assert bf16.bits_per_token == pytest.approx(fp32.bits_per_token, rel=2e-2)
    assert bf16.bits_per_token != fp32.bits_per_token  # it did run in bf16


@pytest.mark.slow  # compilation: ~15 s on 2 cores
def test_compiled_evaluation_equals_plain_and_restores_the_model():
    model = sharp_model(vocab=256, mem_len=32, tgt_len=16)
    layers = list(model.layers)
    docs = random_docs([300, 170, 90], vocab=256, seed=4)
    plain = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False)
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = evaluate_tokens(model, docs, batch_size=2, baselines=False, progress=False, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # it did go through torch.compile
    assert [f.nll_nats for f in compiled.files] == pytest.approx([f.nll_nats for f in plain.files], rel=1e-5)
    assert list(model.layers) == layers and "_orig_mod" not in "".join(model.state_dict())


def test_paired_difference_over_files(tmp_path):
    """The ablation tables' difference column: the difference of the two totals over the same files, with
    a bootstrap interval over files that holds it; too few files give no interval."""
    from txl_audio.baselines import paired_difference, read_per_file

    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, 16000, 40)
    a_bits = rng.uniform(2.5, 4.5, 40)
    b_bits = a_bits + rng.normal(0.07, 0.02, 40)
    paths = []
    for name, bits in (("a", a_bits), ("b", b_bits)):
        rows = "".join(f"f{i}.flac,{t},{x:.6f},,\n" for i, (t, x) in enumerate(zip(tokens, bits)))
        path = tmp_path / f"{name}.csv"
        path.write_text("file,tokens,bits_per_sample,xz_bits_per_sample,bzip2_bits_per_sample\n" + rows)
        paths.append(path)
    a, b = (read_per_file(p) for p in paths)
    mean, lo, hi = paired_difference(a, b)
    ta = sum(a[f][0] * a[f][1] for f in a) / sum(a[f][0] for f in a)
    tb = sum(b[f][0] * b[f][1] for f in b) / sum(b[f][0] for f in b)
    assert mean == pytest.approx(tb - ta, abs=1e-9)
    assert 0 < lo < mean < hi < 0.14
    assert paired_difference(a, a) == (0.0, 0.0, 0.0)
    few = dict(list(a.items())[:9])
    assert paired_difference(few, b) is None  # fewer than 10 paired files


def test_per_file_columns_name_the_unit(tmp_path):
    from txl_audio.baselines import read_per_file

    model = sharp_model(vocab=16, mem_len=8, tgt_len=8)
    docs = random_docs([40, 30], vocab=16)
    res = evaluate_tokens(model, docs, unit="word", baselines=False, progress=False)
    res.write(tmp_path)
    header = (tmp_path / "per_file.csv").read_text().splitlines()[0]
    assert header == "file,tokens,bits_per_word,xz_bits_per_word,bzip2_bits_per_word"
    back = read_per_file(tmp_path / "per_file.csv")
    assert [v[1] for v in back.values()] == pytest.approx([f.bits_per_token for f in res.files], abs=1e-6)
    (tmp_path / "bad.csv").write_text("file,tokens\na,3\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_per_file(tmp_path / "bad.csv")
