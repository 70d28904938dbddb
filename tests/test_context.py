"""Context-length analysis: each span point is an evaluation at that memory, the position buckets
partition the same losses, the effective-context rule, and the command end to end with --compare."""

import csv
import math

import numpy as np
import pytest
import torch
from _models import sharp_model

from txl_audio.config import RunConfig
from txl_audio.context import (
    ContextCurve,
    SpanPoint,
    analyse_context,
    bucket_label,
    position_edges,
)
from txl_audio.evaluate import evaluate_tokens


def test_position_edges_and_labels():
    e = position_edges(20000, 16000)
    assert e[:7] == [1, 160, 480, 1600, 4800, 16000, 48000]  # 0, 10, 30, 100, 300 ms, 1 s, 3 s
    assert bucket_label(1, 160, 16000) == "0-10 ms"
    assert bucket_label(4800, 16000, 16000) == "300 ms-1 s"
    assert bucket_label(16000, 48000, 16000) == "1-3 s"
    t = position_edges(50)
    assert t == [1, 10, 30, 100] and bucket_label(10, 30, None) == "10-30"


def test_span_points_are_evaluations_and_positions_partition_the_loss():
    model = sharp_model(mem_len=8, tgt_len=8)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 16, n) for n in (70, 45, 33)]
    curve = analyse_context(
        model, docs, mem_lens=[64, 0, 8, 16, 200], unit="byte", batch_size=2, progress=False
    )
    # sorted, and stopped at the first memory covering the longest file (64 >= 70 - 2 is false: 64 < 68)
    assert [p.mem_len for p in curve.points] == [0, 8, 16, 64, 200]
    curve = analyse_context(model, docs, mem_lens=[0, 8, 68, 200], unit="byte", batch_size=2, progress=False)
    assert [p.mem_len for p in curve.points] == [0, 8, 68]
    assert any("200" in n for n in curve.notes)
    for p in curve.points:
        ref = evaluate_tokens(model, docs, mem_len=p.mem_len, batch_size=3, baselines=False, progress=False)
        assert p.bits == pytest.approx(ref.bits_per_token, rel=1e-6)
        assert sum(p.position_tokens) == p.tokens == 69 + 44 + 32
        total = sum(b * n for b, n in zip(p.position_bits, p.position_tokens) if n)
        assert total == pytest.approx(p.bits * p.tokens, rel=1e-6)
    # positions against per-token losses computed here: one full pass per file (memory covers it)
    full = curve.points[-1]
    sums, counts = np.zeros(len(curve.edges) - 1), np.zeros(len(curve.edges) - 1)
    with torch.no_grad():
        for d in docs:
            x = torch.as_tensor(d)[None]
            loss = model(x[:, :-1], targets=x[:, 1:]).loss[0].numpy() / math.log(2)
            idx = np.arange(1, len(d))  # index of each predicted token in its file
            k = np.searchsorted(curve.edges, idx, side="right") - 1
            np.add.at(sums, k, loss)
            np.add.at(counts, k, 1)
    assert full.position_tokens == counts.astype(int).tolist()
    np.testing.assert_allclose(full.position_bits[:3], (sums / np.maximum(counts, 1))[:3], rtol=1e-5)


def _curve(bits_by_mem, attention="relative"):
    c = ContextCurve("m", attention, 0, 100, [1, 10])
    c.points = [SpanPoint(m, 100, 1000, b, [], []) for m, b in bits_by_mem]
    return c


def test_effective_context_rule():
    # gains: 0->256 big, 256->1024 2%, 1024->4096 0.5% => effective at mem 1024 (span 1124)
    eff, reached = _curve([(0, 5.0), (256, 4.0), (1024, 3.92), (4096, 3.90)]).effective_context()
    assert (eff.mem_len, eff.span, reached) == (1024, 1124, True)
    # a plateau does not end the search when a longer span gains again (1024 -> 4096: 2.8%)
    eff, reached = _curve([(0, 5.0), (256, 4.0), (1024, 3.99), (4096, 3.88)]).effective_context()
    assert (eff.mem_len, reached) == (4096, False)
    # still gaining at the longest: a lower bound
    eff, reached = _curve([(0, 5.0), (256, 4.0), (1024, 3.5)]).effective_context()
    assert (eff.mem_len, reached) == (1024, False)
    # no gain at all: the shortest span already suffices
    eff, reached = _curve([(0, 4.0), (256, 4.01)]).effective_context()
    assert (eff.mem_len, reached) == (0, True)
    assert _curve([(0, 4.0)]).effective_context() == (None, False)


def test_context_command_compares_three_kinds(tmp_path):
    from txl_audio.audio import save_audio
    from txl_audio.checkpoint import save_checkpoint
    from txl_audio.cli import main
    from txl_audio.tokenizers import make_tokenizer

    tok = make_tokenizer("mulaw8")
    ckpts = []
    for seed, (name, mem, att) in enumerate(
        (("xl", 16, "relative"), ("nomem", 0, "relative"), ("abs", 0, "absolute"))
    ):
        m = sharp_model(vocab=256, mem_len=mem, tgt_len=16, attention=att, seed=seed)
        path = tmp_path / f"{name}.pt"
        save_checkpoint(
            path,
            {
                "model": m.state_dict(),
                "config": RunConfig(model=m.config).to_dict(),
                "tokenizer": tok.to_dict(),
                "step": 0,
            },
        )
        ckpts.append(str(path))
    t = np.arange(900) / 16000
    for i, n in enumerate((900, 500)):
        save_audio(
            tmp_path / "audio" / f"clip{i}.wav", (0.5 * np.sin(2 * np.pi * 300 * t[:n])).astype(np.float32)
        )
    out = tmp_path / "ctx"
    rc = main(
        [
            "context",
            ckpts[0],
            "--compare",
            *ckpts[1:],
            "--audio",
            str(tmp_path / "audio"),
            "--mem-lens",
            "0,64,1024",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "context_span.csv")))
    by = {}
    for r in rows:
        by.setdefault(r["checkpoint"], []).append(int(r["mem_len"]))
    assert by == {ckpts[0]: [0, 64, 1024], ckpts[1]: [0, 64, 1024], ckpts[2]: [0]}
    assert all(int(r["tokens"]) == 899 + 499 for r in rows)
    pos = list(csv.DictReader(open(out / "context_position.csv")))
    assert pos[0]["bucket"] == "0-10 ms"
    text = (out / "summary.txt").read_text()
    assert "effective context" in text and "absolute-position baseline" in text
    for png in ("nll_vs_context.png", "nll_vs_position.png"):
        assert (out / png).stat().st_size > 5000
    # the evaluate command on the same audio gives the same number as the context point
    ev = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                ckpts[0],
                "--audio",
                str(tmp_path / "audio"),
                "--mem-len",
                "64",
                "--out",
                str(ev),
                "--no-progress",
            ]
        )
        == 0
    )
    import json

    s = json.loads((ev / "summary.json").read_text())
    point = next(r for r in rows if r["checkpoint"] == ckpts[0] and r["mem_len"] == "64")
    assert s["bits_per_token"] == pytest.approx(float(point["bits_per_token"]), abs=1e-5)
    assert s["tokens"] == 899 + 499 and s["metric"] == "bits per sample"
