"""The training loop: determinism, schedule, accumulation, non-finite losses, time limit, outputs, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _training import make_corpus, model_state, same_params, tiny_config

from txl_audio.config import TrainConfig, load_config
from txl_audio.train import NonFiniteLossError, lr_at, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


def quiet(**kw):
    return dict(progress=False, log=lambda m: None, **kw)


def test_same_seed_same_losses_different_seed_different(corpus, tmp_path):
    a = train(tiny_config(corpus, max_steps=6), tmp_path / "a", **quiet())
    b = train(tiny_config(corpus, max_steps=6), tmp_path / "b", **quiet())
    c = train(tiny_config(corpus, max_steps=6, seed=2), tmp_path / "c", **quiet())
    assert len(a.losses) == 6 and all(math.isfinite(x) for x in a.losses)
    assert a.losses == b.losses  # bit-identical on CPU
    assert same_params(model_state(a.checkpoint), model_state(b.checkpoint))
    assert a.losses != c.losses
    # it learns something: the tone corpus is far from uniform (8 bits)
    assert a.valid["bits"] < 8.0


def test_outputs_metrics_checkpoints_and_plot(corpus, tmp_path):
    out = tmp_path / "run"
    r = train(tiny_config(corpus, max_steps=10), out, **quiet())
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [x for x in recs if x["split"] == "train"]
    valid_recs = [x for x in recs if x["split"] == "valid"]
    assert [x["step"] for x in train_recs] == [2, 4, 6, 8, 10]
    assert [x["step"] for x in valid_recs] == [5, 10]
    for x in train_recs:
        assert {"loss_nats", "bits", "tokens", "tokens_per_s", "lr", "time"} <= set(x)
        assert x["bits"] == pytest.approx(x["loss_nats"] / math.log(2))
    # the logged loss is the token-weighted mean of the steps it covers
    assert train_recs[0]["tokens"] == 2 * 4 * 16
    assert valid_recs[-1] == {**valid_recs[-1], **r.valid}
    # keep_checkpoints=2: steps 4 and 8 were written, 4 pruned when 10 (the last) came
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_10.pt", "ckpt_8.pt"]
    assert (out / "best.pt").is_file() and (out / "curves.png").stat().st_size > 1000
    assert load_config(out / "config.toml") == tiny_config(corpus, max_steps=10)
    # plain contents: loads with weights_only=True and holds what a resume needs
    state = torch.load(out / "ckpt_10.pt", weights_only=True)
    assert state["step"] == 10 and len(state["ranks"]) == 1
    assert {"model", "optimizer", "scheduler", "config", "tokenizer"} <= set(state)
    assert {"data", "rng", "mems"} <= set(state["ranks"][0])
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["valid"]["loss_nats"] == min(x["loss_nats"] for x in valid_recs)


def test_validation_bits_equal_evaluate_stream_on_the_same_checkpoint(corpus, tmp_path):
    """metrics.jsonl's valid bits and `txl-audio evaluate --stream` (same checkpoint, split and lanes)
    come from the same code and agree."""
    from txl_audio.cli import main

    out = tmp_path / "run"
    cfg = tiny_config(corpus, max_steps=4, eval_every=4).with_overrides(["data.max_eval_tokens=0"])
    train(cfg, out, **quiet())
    valid = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "valid"]
    assert len(valid) == 1
    assert main(["evaluate", str(out / "best.pt"), "--corpus", str(corpus), "--split", "valid", "--stream",
                 "--batch-size", str(cfg.data.eval_batch_size), "--no-baselines", "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 0
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert s["tokens"] == valid[0]["tokens"]
    assert s["bits_per_token"] == pytest.approx(valid[0]["bits"], rel=1e-6)


def test_train_does_not_change_the_callers_config(corpus, tmp_path):
    cfg = tiny_config(corpus, max_steps=2).with_overrides(["model.vocab_size=300"])
    before = cfg.to_dict()
    train(cfg, tmp_path / "run", **quiet())  # the run uses the corpus's 256
    assert cfg.to_dict() == before
    assert load_config(tmp_path / "run" / "config.toml").model.vocab_size == 256


def test_refuses_to_overwrite_a_run(corpus, tmp_path):
    train(tiny_config(corpus, max_steps=2), tmp_path, **quiet())
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_config(corpus, max_steps=2), tmp_path, **quiet())


def test_lr_schedule_warmup_then_cosine_to_min():
    tc = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=14)
    assert [lr_at(s, tc) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, tc) == pytest.approx(0.55)  # half way through the decay
    assert lr_at(14, tc) == pytest.approx(0.1) and lr_at(100, tc) == pytest.approx(0.1)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(4, 20))
    timed = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10**9, max_time=100.0)
    assert lr_at(5, timed, elapsed=50.0) == pytest.approx(0.5)  # the time budget drives the decay


def test_grad_accumulation_gives_the_same_training(corpus, tmp_path):
    # accumulation splits the batch's streams: same gradient, same memory per stream
    kw = {"max_steps": 5, "batch_size": 4}
    cfg1, cfg2 = (tiny_config(corpus, **kw).with_overrides(["model.dropout=0.0"]),
                  tiny_config(corpus, grad_accum=2, **kw).with_overrides(["model.dropout=0.0"]))
    a = train(cfg1, tmp_path / "a", **quiet())
    b = train(cfg2, tmp_path / "b", **quiet())
    assert a.losses == pytest.approx(b.losses, abs=1e-5)


def test_non_finite_loss_skips_the_step_and_stops_after_max_bad(corpus, tmp_path, monkeypatch):
    import txl_audio.train as train_module

    Real = train_module.TransformerXL
    poison = {"steps": set()}
    calls = {"n": 0}

    class Poisoned(Real):
        def forward(self, tokens, mems=None, targets=None, doc_pos=None, **kw):
            out = super().forward(tokens, mems, targets, doc_pos, **kw)
            if self.training:
                calls["n"] += 1
                if calls["n"] in poison["steps"]:
                    out.loss = out.loss * float("nan")
            return out

    monkeypatch.setattr(train_module, "TransformerXL", Poisoned)
    # one bad step: skipped (no update), training goes on and ends with finite weights
    poison["steps"] = {3}
    logs = []
    r = train(tiny_config(corpus, max_steps=6), tmp_path / "one", progress=False, log=logs.append)
    assert r.bad_steps == 1 and math.isnan(r.losses[2]) and all(math.isfinite(x) for i, x in
                                                               enumerate(r.losses) if i != 2)
    assert any("step 3" in m and "skipped" in m for m in logs)
    assert all(torch.isfinite(v).all() for v in model_state(r.checkpoint).values() if v.is_floating_point())
    # every step bad: a clear error after max_bad_steps in a row, no NaN weights written
    calls["n"] = 0
    poison["steps"] = set(range(1, 100))
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train(tiny_config(corpus, max_steps=20, max_bad_steps=3, ckpt_every=1), tmp_path / "all", **quiet())
    for p in (tmp_path / "all").glob("ckpt_*.pt"):
        assert all(torch.isfinite(v).all() for v in model_state(p).values() if v.is_floating_point())


def test_max_time_stops_cleanly_with_checkpoint_and_validation(corpus, tmp_path):
    r = train(tiny_config(corpus, max_steps=10_000, max_time=1e-6), tmp_path, **quiet())
    assert r.stopped_by == "max_time" and r.step == 1
    assert r.checkpoint.name == "ckpt_1.pt" and r.valid["step"] == 1


def test_cli_writes_resolved_config(corpus, tmp_path):
    from txl_audio.cli import main
    from txl_audio.config import save_config

    cfg_file = tmp_path / "c.toml"
    save_config(tiny_config(corpus, max_steps=2), cfg_file)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(cfg_file), "--set", "train.lr=0.001", "--set", "model.vocab_size=300",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    resolved = load_config(out / "config.toml")
    assert resolved.train.lr == 0.001
    assert resolved.model.vocab_size == 256  # taken from the corpus tokenizer
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 1  # no config: clear error


@pytest.mark.cuda
@pytest.mark.parametrize("compile_model", [False, True])
def test_trains_on_cuda_with_bf16(corpus, tmp_path, compile_model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    r = train(tiny_config(corpus, device="cuda", max_steps=6, compile=compile_model), tmp_path, **quiet())
    assert all(math.isfinite(x) for x in r.losses) and r.valid["bits"] < 8.0
    # the checkpoint is device-free: it loads and resumes on the CPU
    state = torch.load(r.checkpoint, weights_only=True, map_location="cpu")
    assert state["ranks"][0]["mems"][0]["hidden"][0].device.type == "cpu"
    more = tiny_config(corpus, device="cpu", max_steps=8)
    assert train(more, tmp_path, resume=True, **quiet()).step == 8


# ---- fast paths against the plain path, on the CPU ----


def test_fused_adamw_equals_plain():
    """train.py's fused optimizer (the CUDA fast path; the CPU has a fused kernel too) makes the same
    updates as the plain one, weight-decay groups included."""
    from txl_audio.model import TransformerXL
    from txl_audio.train import make_optimizer

    cfg = tiny_config(Path("unused"), weight_decay=0.1)
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = TransformerXL(cfg.model)
        opt = make_optimizer(model, cfg.train, fused=fused)
        assert opt.defaults["fused"] is (True if fused else None)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        models.append(model)
    plain, fused = (dict(m.named_parameters()) for m in models)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_bf16_autocast_training_on_cpu_close_to_fp32(corpus, tmp_path):
    fp32 = train(tiny_config(corpus, max_steps=3), tmp_path / "fp32", **quiet())
    bf16 = train(tiny_config(corpus, max_steps=3, dtype="bf16"), tmp_path / "bf16", **quiet())
    assert all(math.isfinite(x) for x in bf16.losses)
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=2e-2)  # same weights, same batch
    assert bf16.losses != fp32.losses  # it did run in bf16
    # the checkpoint holds float32 weights and memories, so the run resumes in fp32
    state = torch.load(bf16.checkpoint, weights_only=True, map_location="cpu")
    assert state["ranks"][0]["mems"][0]["hidden"][0].dtype == torch.float32
    assert train(tiny_config(corpus, max_steps=4), tmp_path / "bf16", resume=True, **quiet()).step == 4


@pytest.mark.slow  # compilation: ~30 s on 2 cores
def test_compiled_training_matches_eager_on_cpu(corpus, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    runs = []
    for compile_model in (False, True):
        cfg = tiny_config(corpus, max_steps=4, eval_every=4, compile=compile_model)
        cfg = cfg.with_overrides(["model.dropout=0.0"])  # compiled dropout draws its own random numbers
        runs.append(train(cfg, tmp_path / str(compile_model), **quiet()))
    eager, compiled = runs
    assert counters["stats"]["unique_graphs"] >= 1  # the second run did go through torch.compile
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert compiled.valid["bits"] == pytest.approx(eager.valid["bits"], rel=1e-4)
    assert same_params(model_state(compiled.checkpoint), model_state(eager.checkpoint), tol=1e-4)
