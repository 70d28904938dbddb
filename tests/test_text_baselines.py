"""Text baselines: corpus preparation as the literature counts it, and a word-level model that learns.

- PTB (Mikolov's split): 887,521 training words + one <eos> per line, vocabulary 10,000 from train.
- enwik8 / text8: first 90M / next 5M / last 5M units; checked on a small generated file with the
  standard sizes scaled down (the cut logic is the same code path).
- a tiny word-level Transformer-XL with adaptive softmax trains for ~12 s on a slice of PTB
  and its validation perplexity falls below the unigram perplexity of that slice.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from txl_audio.config import RunConfig
from txl_audio.data import Corpus
from txl_audio.prepare import prepare_text

PTB_TRAIN_WORDS = 887_521
PTB_TRAIN_LINES = 42_068
PTB_VALID_TOKENS = 73_760  # words + <eos>, the counts every PTB paper's data loader gives
PTB_TEST_TOKENS = 82_430


def _ptb(shared_data: Path) -> Path:
    folder = shared_data / "text" / "ptb"
    if not (folder / "ptb.train.txt").is_file():
        pytest.skip(f"PTB not found in {folder}")
    return folder


def test_ptb_token_counts_match_the_standard(shared_data, tmp_path):
    report = prepare_text(tmp_path / "ptb", format="words", input=_ptb(shared_data))
    assert not report.warnings
    c = Corpus(tmp_path / "ptb")
    train = np.asarray(c.tokens("train"))
    tok = c.tokenizer
    assert c.n_tokens("train") == PTB_TRAIN_WORDS + PTB_TRAIN_LINES
    assert int((train == tok.eos_id).sum()) == PTB_TRAIN_LINES
    assert c.n_tokens("valid") == PTB_VALID_TOKENS
    assert c.n_tokens("test") == PTB_TEST_TOKENS
    assert tok.vocab_size == 10_000  # 9,999 words (PTB's own <unk> among them as id 0) + <eos>
    # every line ends with <eos>: the token before each <eos> is a word, and the stream ends with one
    assert train[-1] == tok.eos_id and train[0] != tok.eos_id
    assert tok.itos[:3] == ["<unk>", "<eos>", "the"]


def test_word_vocabulary_from_train_only_and_unk_and_eos(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "toy.train.txt").write_text("a b a\nc a\n")
    (tmp_path / "src" / "toy.valid.txt").write_text("a zebra\n\nb\n")
    (tmp_path / "src" / "toy.test.txt").write_text("c c\n")
    prepare_text(tmp_path / "toy", format="words", input=tmp_path / "src")
    c = Corpus(tmp_path / "toy")
    tok = c.tokenizer
    assert tok.itos == ["<unk>", "<eos>", "a", "b", "c"]  # by decreasing train count; 'zebra' absent
    a, b, cc, eos, unk = tok.stoi["a"], tok.stoi["b"], tok.stoi["c"], tok.eos_id, tok.unk_id
    assert list(c.tokens("train")) == [a, b, a, eos, cc, a, eos]
    assert list(c.tokens("valid")) == [a, unk, eos, eos, b, eos]  # an empty line is just <eos>
    assert list(c.tokens("test")) == [cc, cc, eos]


@pytest.mark.parametrize("fmt", ["enwik8", "text8"])
def test_char_level_standard_split_on_a_small_generated_file(tmp_path, monkeypatch, fmt):
    # the standard split is 90M / 5M / 5M units; scaled down 100,000x the same code cuts 900 / 50 / 50
    import txl_audio.prepare as prep

    monkeypatch.setattr(prep, "STANDARD_SPLIT", (900, 50, 50))
    rng = np.random.default_rng(0)
    if fmt == "text8":
        text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 1000))
        data = text.encode()
    else:  # enwik8 is raw bytes of XML with UTF-8 inside: a multi-byte character may straddle a cut
        data = ("<page><title>Zoë</title>" * 60).encode()[:1000]
        assert len(data) == 1000
    src = tmp_path / fmt
    src.write_bytes(data)
    report = prepare_text(tmp_path / "corpus", format=fmt, input=src)
    assert not report.warnings
    c = Corpus(tmp_path / "corpus")
    assert [c.n_tokens(s) for s in ("train", "valid", "test")] == [900, 50, 50]
    joined = b"".join(np.asarray(c.tokens(s), dtype=np.uint8).tobytes() for s in ("train", "valid", "test"))
    assert joined == data  # nothing lost or reordered, each split a contiguous run
    assert c.vocab_size == 256


def test_char_level_small_file_is_split_proportionally(tmp_path):
    src = tmp_path / "small.txt"
    src.write_bytes(b"x" * 2000)
    report = prepare_text(tmp_path / "corpus", format="enwik8", input=src)
    assert any("proportionally" in w for w in report.warnings)  # the user is told it is not the standard cut
    c = Corpus(tmp_path / "corpus")
    assert [c.n_tokens(s) for s in ("train", "valid", "test")] == [1800, 100, 100]


def test_shakespeare_split_as_nanogpt(shared_data, tmp_path):
    src = shared_data / "text" / "tinyshakespeare.txt"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    prepare_text(tmp_path / "shakes", format="bytes", input=src, split_fractions=(0.9, 0.1, 0.0))
    c = Corpus(tmp_path / "shakes")
    data = src.read_bytes()
    n = int(len(data) * 0.9)  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
    assert c.n_tokens("train") == n == 1_003_854
    assert np.asarray(c.tokens("valid")).tobytes() == data[n:]


def _unigram_ppl(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> float:
    """Perplexity of ``valid`` under the add-one-smoothed unigram distribution of ``train``."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return math.exp(-logp[valid].mean())


def test_tiny_word_model_beats_unigram_perplexity(shared_data, tmp_path):
    import torch

    from txl_audio.train import train

    ptb = _ptb(shared_data)
    src = tmp_path / "slice"
    src.mkdir()
    # a slice of PTB: 8,000 training lines (~170k words), 300 validation lines, 4,000-word vocabulary
    lines = (ptb / "ptb.train.txt").read_text().split("\n")
    (src / "s.train.txt").write_text("\n".join(lines[:8000]) + "\n")
    (src / "s.valid.txt").write_text("\n".join((ptb / "ptb.valid.txt").read_text().split("\n")[:300]) + "\n")
    prepare_text(tmp_path / "corpus", format="words", input=src, max_vocab=4000)
    c = Corpus(tmp_path / "corpus")
    V = c.vocab_size
    train_ids, valid_ids = (np.asarray(c.tokens(s), np.int64) for s in ("train", "valid"))
    unigram = _unigram_ppl(train_ids, valid_ids, V)

    config = RunConfig.from_dict({
        "model": {"vocab_size": V, "n_layer": 2, "d_model": 64, "n_head": 2, "d_head": 32, "d_inner": 128,
                  "dropout": 0.0, "tgt_len": 32, "mem_len": 32, "cutoffs": [500, 2000], "div_val": 2},
        "data": {"corpus": str(tmp_path / "corpus"), "eval_batch_size": 8},
        "train": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "max_steps": 400, "max_time": 15.0,
                  "log_every": 1000, "eval_every": 100000, "ckpt_every": 100000, "clip": 1.0,
                  "device": "cpu", "seed": 0, "threads": 1},
    })
    torch.manual_seed(0)
    result = train(config, tmp_path / "run", progress=False, log=lambda s: None)
    ppl = result.valid["ppl"]
    assert math.isfinite(ppl)
    # from uniform (ppl = V = 4000) to well below the unigram model of the slice (~299; the model: ~200)
    assert ppl < 0.85 * unigram < V, (ppl, unigram, result.step)
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_unigram_perplexity_helper_on_known_distribution():
    # two symbols seen 1 and 3 times: add-one gives p = 2/6, 4/6; valid = [1, 1] -> ppl = 1.5
    assert _unigram_ppl(np.array([0, 1, 1, 1]), np.array([1, 1]), 2) == pytest.approx(1.5)


# ---- the recipes end to end on tiny generated corpora and a tiny model ---------------------------------

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
        "--set", "model.d_head=16", "--set", "model.d_inner=64", "--set", "model.tgt_len=16",
        "--set", "model.mem_len=16", "--set", "train.batch_size=4", "--set", "train.max_steps=3",
        "--set", "train.max_time=0", "--set", "data.max_eval_tokens=256", "--set", "train.threads=1"]


def _words_folder(folder: Path, prefix: str, ext: str, n_words: int = 100) -> Path:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(n_words)]
    folder.mkdir(parents=True)
    for split, n in (("train", 300), ("valid", 40), ("test", 40)):
        lines = [" ".join(rng.choice(vocab, rng.integers(3, 12))) for _ in range(n)]
        (folder / f"{prefix}.{split}.{ext}").write_text("\n".join(lines) + "\n")
    return folder


def _run_recipe(tmp_path: Path, args: list[str], **env_extra: str):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.update({"TXL": f"{sys.executable} -m txl_audio", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                **env_extra})
    proc = subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("recipe,prefix,ext", [
    ("ptb.sh", "ptb", "txt"),
    pytest.param("wikitext2.sh", "wiki", "tokens", marks=pytest.mark.slow),
])
def test_word_recipe_end_to_end(tmp_path, recipe, prefix, ext):
    src = _words_folder(tmp_path / "src", prefix, ext)
    out = tmp_path / "out"
    # the CPU config's adaptive softmax, cut to the 102-word toy vocabulary
    proc = _run_recipe(tmp_path, [f"recipes/{recipe}", str(src), *TINY, "--set", "model.cutoffs=[20, 60]"],
                       OUT=str(out))
    summary = json.loads((out / "run" / "eval_test" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["mode"] == "stream"
    assert 1 < summary["perplexity"] < 1000
    assert "perplexity" in proc.stdout
    assert "cutoffs = [20, 60]" in (out / "run" / "config.toml").read_text()


@pytest.mark.parametrize("recipe,fmt", [
    ("shakespeare_char.sh", "bytes"),
    pytest.param("enwik8.sh", "enwik8", marks=pytest.mark.slow),
    pytest.param("text8.sh", "text8", marks=pytest.mark.slow),
])
def test_char_recipe_end_to_end(tmp_path, recipe, fmt):
    src = tmp_path / "input.txt"
    rng = np.random.default_rng(0)
    src.write_text("".join(rng.choice(list("abcdefgh \n"), 20_000)))
    out = tmp_path / "out"
    config = "recipes/configs/shakespeare_char_cpu.toml"
    proc = _run_recipe(tmp_path, [f"recipes/{recipe}", str(src), *TINY], OUT=str(out), CONFIG=config,
                       EVAL="--mem-len 32")
    split = "valid" if recipe == "shakespeare_char.sh" else "test"
    summary = json.loads((out / "run" / f"eval_{split}" / "summary.json").read_text())
    assert summary["mem_len"] == 32  # EVAL reached the evaluation
    assert 0 < summary["bits_per_token"] < 9
    corpus = json.loads((out / "corpus" / "meta.json").read_text())
    assert corpus["source"]["format"] == fmt
    if recipe == "shakespeare_char.sh":
        assert "nats/char" in proc.stdout
        assert corpus["splits"]["train"]["tokens"] == 18_000  # nanoGPT's 90 / 10 split


@pytest.mark.slow  # 7 commands (~30 s); ptb.sh and shakespeare_char.sh cover the shared stages by default
def test_text_baselines_end_to_end(tmp_path):
    src = tmp_path / "input.txt"
    rng = np.random.default_rng(0)
    src.write_text("".join(rng.choice(list("abcdefgh \n"), 20_000)))
    out = tmp_path / "out"
    proc = _run_recipe(tmp_path, ["recipes/text_baselines.sh", str(src), *TINY], OUT=str(out), STEPS="3")
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # no header
    assert [r[1].strip() for r in rows] == ["Transformer-XL", "no memory (mem_len 0)", "absolute positions",
                                            "rotary positions, same memory"]
    assert all(0 < float(r[-3]) < 9 for r in rows)  # valid nats/token, a number for each
    for run, attention, mem in (("xl", "relative", 16), ("no_memory", "relative", 0),
                                ("absolute", "absolute", 0), ("rotary", "rotary", 16)):
        cfg = (out / run / "config.toml").read_text()
        assert f'attention = "{attention}"' in cfg and f"mem_len = {mem}\n" in cfg
        assert "max_steps = 3\n" in cfg  # equal compute: the same steps for all four
