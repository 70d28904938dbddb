"""Corpus folders and SegmentStream: contiguity, coverage, rank sharding, resume, boundaries."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from txl_audio.data import IGNORE_INDEX, Corpus, CorpusError, CorpusWriter, SegmentStream
from txl_audio.tokenizers import WordTokenizer


def make_corpus(path, lengths, split="train"):
    """A corpus whose every token is unique (its global index + 2), so a token names its position."""
    n = int(sum(lengths))
    tok = WordTokenizer(["<unk>", "<eos>"] + [f"w{i}" for i in range(n)])
    files = []
    with CorpusWriter(path, tok, kind="text") as w:
        start = 0
        for i, n_i in enumerate(lengths):
            ids = np.arange(start, start + n_i) + 2
            w.add(split, ids, path=f"f{i}", speaker=f"s{i}")
            files.append(ids)
            start += n_i
        w.commit()
    return Corpus(path), files


def true_pairs(files):
    """Every (input, target) prediction of the split: next token within the same file."""
    return Counter((int(f[i]), int(f[i + 1])) for f in files for i in range(len(f) - 1))


def stream_pairs(batches):
    c = Counter()
    for b in batches:
        m = b.targets != IGNORE_INDEX
        c.update(zip(b.tokens[m].tolist(), b.targets[m].tolist()))
    return c


def live_tokens(batches):
    """Input tokens of all batches, excluding padding (padding is token 0; real ones are >= 2)."""
    return Counter(t for b in batches for t in b.tokens.flatten().tolist() if t != 0)


LENGTHS = [37, 5, 1, 64, 12, 90, 3, 41]


@pytest.mark.parametrize("batch_size,tgt_len", [(1, 7), (3, 10), (4, 16), (5, 128)])
def test_eval_stream_counts_every_prediction_once(tmp_path, batch_size, tgt_len):
    corpus, files = make_corpus(tmp_path / "c", LENGTHS)
    batches = list(SegmentStream(corpus, "train", batch_size, tgt_len))
    assert stream_pairs(batches) == true_pairs(files)  # exactly once each, none across files
    assert live_tokens(batches) == Counter(int(t) for f in files for t in f)
    assert sum(b.n_targets for b in batches) == sum(n - 1 for n in LENGTHS)
    assert all(b.tokens.shape == (batch_size, tgt_len) and b.tokens.dtype == torch.int64 for b in batches)


def test_streams_are_contiguous_across_batches(tmp_path):
    corpus, files = make_corpus(tmp_path / "c", LENGTHS)
    seq = np.concatenate(files)
    s = SegmentStream(corpus, "train", batch_size=3, tgt_len=9)
    batches = list(s)
    rows = torch.cat([b.tokens for b in batches], dim=1).numpy()  # (B, n_batches * T)
    L = s.stream_len
    for b in range(3):
        want = seq[b * L:(b + 1) * L]
        assert np.array_equal(rows[b, :want.size], want)  # each stream is one contiguous run
        assert not rows[b, want.size:].any()  # then padding
    # memory carries: batch k+1 starts exactly where batch k's last target pointed
    for k in range(len(batches) - 1):
        last = batches[k].targets[:, -1]
        ok = last != IGNORE_INDEX
        assert torch.equal(last[ok], batches[k + 1].tokens[ok, 0])


def test_doc_pos_counts_from_file_start_or_stream_start(tmp_path):
    corpus, files = make_corpus(tmp_path / "c", LENGTHS)
    start_of = {}  # token -> (file start token, index within file)
    for f in files:
        for i, t in enumerate(f):
            start_of[int(t)] = i
    s = SegmentStream(corpus, "train", batch_size=3, tgt_len=9)
    L = s.stream_len
    for b in s:
        for row in range(3):
            for t, d in zip(b.tokens[row].tolist(), b.doc_pos[row].tolist()):
                if t == 0:
                    assert d == 0
                    continue
                g = t - 2
                stream_start = (g // L) * L
                assert d == min(start_of[t], g - stream_start)
    # a file's first token is never a target (nothing before it to predict it from)
    firsts = {int(f[0]) for f in files}
    for b in SegmentStream(corpus, "train", batch_size=2, tgt_len=5):
        assert not firsts & set(b.targets.flatten().tolist())


@pytest.mark.parametrize("shuffle", [False, True])
def test_rank_sharding_covers_every_token_once(tmp_path, shuffle):
    corpus, files = make_corpus(tmp_path / "c", LENGTHS)
    world, B, T = 3, 2, 8
    per_rank = []
    for r in range(world):
        s = SegmentStream(corpus, "train", B, T, shuffle=shuffle, seed=5, rank=r, world_size=world, epochs=1)
        per_rank.append(list(s))
    assert len({len(x) for x in per_rank}) == 1  # every rank takes the same number of steps (DDP)
    all_batches = [b for x in per_rank for b in x]
    assert live_tokens(all_batches) == Counter(int(t) for f in files for t in f)
    assert stream_pairs(all_batches) == true_pairs(files)
    # world_size ranks of B streams == one process with the global batch, stream for stream
    single = list(SegmentStream(corpus, "train", B * world, T, shuffle=shuffle, seed=5, epochs=1))
    for k in range(len(single)):
        got = torch.cat([per_rank[r][k].tokens for r in range(world)])
        assert torch.equal(got, single[k].tokens)


def test_shuffled_epochs_differ_and_each_covers_all(tmp_path):
    corpus, files = make_corpus(tmp_path / "c", LENGTHS)
    s = SegmentStream(corpus, "train", 2, 11, shuffle=True, seed=1)
    assert s.epochs is None
    it = iter(s)
    epochs = [[next(it) for _ in range(s.batches_per_epoch)] for _ in range(3)]
    assert all(b.epoch == e for e, bs in enumerate(epochs) for b in bs)
    for bs in epochs:
        assert stream_pairs(bs) == true_pairs(files)
    firsts = [torch.stack([b.tokens for b in bs]) for bs in epochs]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
    again = SegmentStream(corpus, "train", 2, 11, shuffle=True, seed=1)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(iter(again), epochs[0]))
    other = SegmentStream(corpus, "train", 2, 11, shuffle=True, seed=2)
    assert not all(torch.equal(a.tokens, b.tokens) for a, b in zip(iter(other), epochs[0]))


@pytest.mark.parametrize("k", [0, 3, 7, 12])
def test_resume_mid_epoch_gives_identical_batches(tmp_path, k):
    corpus, _ = make_corpus(tmp_path / "c", LENGTHS)
    a = SegmentStream(corpus, "train", 2, 13, shuffle=True, seed=3)
    it = iter(a)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON/checkpoint round trip
    expect = [next(it) for _ in range(10)]  # crosses epoch boundaries (batches_per_epoch is small)
    b = SegmentStream(Corpus(tmp_path / "c"), "train", 2, 13, shuffle=True, seed=3)
    b.load_state_dict(state)
    got = [bb for bb, _ in zip(b, range(10))]
    for x, y in zip(expect, got):
        assert (x.epoch, x.index) == (y.epoch, y.index)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.doc_pos, y.doc_pos)
    with pytest.raises(ValueError, match="batch_size"):
        SegmentStream(corpus, "train", 3, 13, shuffle=True, seed=3).load_state_dict(state)


def test_finite_stream_repeats_and_has_length(tmp_path):
    corpus, _ = make_corpus(tmp_path / "c", LENGTHS)
    s = SegmentStream(corpus, "train", 2, 10)
    first, second = list(s), list(s)
    assert len(first) == len(s) == s.batches_per_epoch
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(first, second))


def test_corpus_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Corpus(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CorpusError, match="not a prepared corpus"):
        Corpus(tmp_path / "plain")
    corpus, _ = make_corpus(tmp_path / "c", [10, 10])
    with pytest.raises(CorpusError, match="no split 'dev'"):
        corpus.tokens("dev")
    with pytest.raises(CorpusError, match="empty"):
        SegmentStream(corpus, "valid", 1, 4)
    with open(tmp_path / "c" / "train.bin", "r+b") as f:
        f.truncate(7)
    with pytest.raises(CorpusError, match="damaged"):
        Corpus(tmp_path / "c").tokens("train")


def test_writer_replaces_a_corpus_whole_or_not_at_all(tmp_path):
    out = tmp_path / "c"
    make_corpus(out, [5, 6])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tok = WordTokenizer(["<unk>", "<eos>", "a"])
    with pytest.raises(RuntimeError, match="boom"), CorpusWriter(out, tok, kind="text") as w:
        w.add("train", np.array([2, 2, 2]), path="x")
        raise RuntimeError("boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    with CorpusWriter(out, tok, kind="text") as w:
        w.add("train", np.array([2, 2, 2]), path="x")
        w.commit()
    assert Corpus(out).n_tokens("train") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folders left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="refusing to replace"):
        CorpusWriter(tmp_path / "mine", tok, kind="text")


def test_no_context_leaks_across_a_file_start(tmp_path):
    """Losses of file B streamed right after file A (inside the same segment, with A in the memory)
    equal the losses of B streamed alone; without doc_pos they would not."""
    model_mod = pytest.importorskip("txl_audio.model")
    from txl_audio.config import ModelConfig

    rng = np.random.default_rng(0)
    a, b = rng.integers(2, 50, 45), rng.integers(2, 50, 30)
    tok = WordTokenizer(["<unk>", "<eos>"] + [f"w{i}" for i in range(48)])
    for name, files in (("ab", [a, b]), ("b", [b])):
        with CorpusWriter(tmp_path / name, tok, kind="text") as w:
            for i, f in enumerate(files):
                w.add("train", f, path=f"f{i}")
            w.commit()
    torch.manual_seed(0)
    T = 16  # B starts at position 45 = 2 * 16 + 13: mid-segment, A's tail in the same segment and memory
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64,
                      dropout=0.0, tgt_len=T, mem_len=48)  # mem_len >= len(B): B sees all of itself
    model = model_mod.TransformerXL(cfg).eval()

    def losses_from(corpus_dir, start, use_doc_pos=True):
        """Per-position losses of one stream (batch_size 1), from stream position ``start`` on."""
        mems, losses = None, []
        with torch.no_grad():
            for batch in SegmentStream(Corpus(corpus_dir), "train", 1, T):
                o = model(batch.tokens, mems=mems, targets=batch.targets,
                          doc_pos=batch.doc_pos if use_doc_pos else None)
                mems = o.mems
                losses.append(torch.where(batch.targets[0] == IGNORE_INDEX, torch.nan, o.loss[0]))
        out = torch.cat(losses)[start:start + len(b) - 1].numpy()
        assert not np.isnan(out).any()  # every prediction inside B is made
        return out

    alone, after_a = losses_from(tmp_path / "b", 0), losses_from(tmp_path / "ab", len(a))
    np.testing.assert_allclose(after_a, alone, rtol=1e-5, atol=1e-5)
    leaky = losses_from(tmp_path / "ab", len(a), use_doc_pos=False)
    assert not np.allclose(leaky, alone, atol=1e-4)
