"""The training loop as a library function: ``train(config, out_dir, resume=False) -> TrainResult``.

``config`` is a :class:`~txl_audio.config.RunConfig` (``load_config("recipes/configs/tiny_cpu.toml",
["data.corpus=DIR"])``); ``out_dir`` receives config.toml, metrics.jsonl, curves.png, the step
checkpoints and best.pt (what ``txl_audio.load(out_dir)`` reads); the :class:`TrainResult` says how far
it got. ``txl-audio train`` calls it, and so does ``txl_audio.train(config, out_dir)``: see the end of
this docstring.

AdamW with linear warmup and cosine decay, gradient clipping, gradient accumulation, the Transformer-XL
memory carried from segment to segment of each stream, periodic validation, crash-safe checkpoints that
resume the very same run, and DistributedDataParallel when launched by ``torchrun``.

Who owns what: :func:`train` reads top to bottom (set up, resume or start, then per step: update, log,
validate, checkpoint, stop); :class:`Run` holds the run's objects and its plain-data state (step,
tokens, best validation loss, the memory of each accumulation chunk of streams); the pieces are small
functions here and in :mod:`txl_audio.training_log` (metrics, progress) and
:mod:`txl_audio.distributed` (processes). The caller's config is never changed: the run uses a copy
with the corpus's vocabulary size.

Gradient accumulation splits each batch along its streams (Dai et al.'s ``batch_chunk``): every chunk
keeps the memory of its own streams, so accumulating changes memory use only, not the gradient.

Loss normalisation: the loss of a step is the sum of the per-token NLLs over all valid targets of the
global batch divided by their global count. Each rank backpropagates ``local_sum * world / global_count``;
DDP's gradient averaging (divide by world) then gives exactly the single-process gradient, even when the
ranks hold different numbers of ignored targets (file ends).

The module itself is callable: ``txl_audio.train(config, out_dir)`` calls :func:`train`. The package
exports ``train`` (``from txl_audio import train``), and this submodule has the same name: once anything
imports it, the import system sets the package's ``train`` attribute to the module, so a plain function
export would be shadowed depending on import order. A callable module is right in every order and keeps
``import txl_audio.train as m`` and ``from txl_audio.train import train`` working as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import random
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from txl_audio.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from txl_audio.config import RunConfig, TrainConfig, save_config
from txl_audio.data import IGNORE_INDEX, Corpus, SegmentStream
from txl_audio.devices import resolve_device
from txl_audio.distributed import Processes, init_processes
from txl_audio.evaluate import score_lanes
from txl_audio.model import Memory, TransformerXL
from txl_audio.quality import corpus_stats
from txl_audio.training_log import ProgressBar, TrainingLog, TrainWindow, loss_report


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses too many steps in a row."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # steps done in total (including those before a resume)
    losses: list[float] = field(default_factory=list)  # global mean loss (nats) of each step of this call
    valid: dict[str, Any] | None = None  # the last validation record
    best_valid_loss: float | None = None
    stopped_by: str = "max_steps"  # or "max_time"
    resumed_from: int | None = None  # step of the checkpoint resumed from
    bad_steps: int = 0  # steps skipped for a non-finite loss in this call
    elapsed: float = 0.0  # seconds of training in total
    checkpoint: Path | None = None  # the last step checkpoint written


def lr_at(step: int, tc: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup to ``lr``, then cosine decay to
    ``min_lr`` at ``max_steps``. With a time budget the decay follows whichever of steps and time is
    further along, so a run stopped by ``max_time`` also ends at ``min_lr``."""
    if tc.warmup_steps > 0 and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    if tc.max_time > 0:
        progress = max(progress, elapsed / tc.max_time)
    progress = min(1.0, max(0.0, progress))
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. ``fused``: one kernel for all parameters (the CUDA
    fast path; CPU has a fused kernel too, which the tests compare with the plain one)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(tc.beta1, tc.beta2), **({"fused": True} if fused else {}),
    )


def autocast_for(device: torch.device, tc: TrainConfig) -> Callable[[], Any]:
    """A context factory: bf16 autocast (train.dtype bf16, or auto on CUDA) or nothing (fp32)."""
    dtype = tc.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext
    if dtype != "bf16":
        raise ValueError(f"train.dtype must be auto, bf16 or fp32, got {tc.dtype!r}")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _check_head(config: RunConfig, corpus: Corpus) -> None:
    """A 16-bit head needs a 16-bit corpus and a 16-bit corpus a 16-bit head (or a 65,536-way softmax
    asked for by name): one line naming both, before anything is built."""
    m, tok = config.model, corpus.tokenizer
    levels = tok.vocab_size
    name = f"{tok.to_dict().get('type')}{tok.to_dict().get('bits', '')}"
    if m.head != "softmax" and levels != 65_536:
        raise ValueError(f"model.head={m.head!r} models 16-bit PCM (65,536 levels), but the corpus "
                         f"{corpus.path} holds {name} tokens ({levels} symbols): prepare it with --tokenizer "
                         "pcm16, or train with model.head=softmax")
    if m.head == "softmax" and levels == 65_536 and m.vocab_size != 65_536:
        raise ValueError(f"the corpus {corpus.path} holds 16-bit PCM (65,536 levels) but the model is a "
                         f"{m.vocab_size}-way softmax: set model.head=dual_softmax or logistic_mixture "
                         "(or model.vocab_size=65536 for a 65,536-way softmax)")


def _check(tc: TrainConfig, procs: Processes) -> None:
    for name in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "ckpt_every"):
        if getattr(tc, name) <= 0:
            raise ValueError(f"train.{name} must be positive, got {getattr(tc, name)}")
    if tc.batch_size % (procs.world * tc.grad_accum):
        raise ValueError(
            f"train.batch_size={tc.batch_size} must be divisible by the number of processes ({procs.world}) "
            f"times train.grad_accum ({tc.grad_accum}): each process takes an equal share of the streams"
        )


# ---------------------------------------------------------------- the run's objects and state


class Batches:
    """An endless iterator over a SegmentStream (a new epoch starts when one ends); its position is
    plain data for the checkpoint."""

    def __init__(self, stream: SegmentStream) -> None:
        self.stream = stream
        self._it = iter(stream)

    def next(self):
        return next(self._it)  # the training stream is endless (shuffle=True)

    def state_dict(self) -> dict[str, Any]:
        return to_plain(self.stream.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stream" in state:  # written before 2026-11-29: {"epoch": ..., "stream": the stream's state}
            state = state["stream"]
        self.stream.load_state_dict(state)
        self._it = iter(self.stream)


@dataclass
class Run:
    """A training run in progress: its config (a copy resolved against the corpus), processes, model,
    optimizer, data, and the state a checkpoint saves."""

    config: RunConfig
    out: Path
    procs: Processes
    device: torch.device
    corpus: Corpus
    model: TransformerXL  # the plain module: weights, checkpoints, validation
    forward: torch.nn.Module  # what the step calls: the model, compiled and/or wrapped in DDP
    optimizer: torch.optim.AdamW
    autocast: Callable[[], Any]
    batches: Batches
    log: TrainingLog
    step: int = 0
    elapsed_before: float = 0.0  # training seconds of earlier processes of this run
    tokens: int = 0  # tokens trained on, all ranks
    best_valid: float | None = None
    bad_in_row: int = 0
    memories: list[Memory | None] = field(default_factory=list)  # one per accumulation chunk of streams
    corpus_stats: dict[str, Any] | None = None  # the training audio's figures (quality.py), in checkpoints

    @property
    def tc(self) -> TrainConfig:
        return self.config.train

    @property
    def unit(self) -> str:
        return self.corpus.tokenizer.unit


def _stream(corpus: Corpus, split: str, global_batch: int, tgt_len: int, procs: Processes,
            shuffle: bool, seed: int) -> SegmentStream:
    """This process's share of the ``global_batch`` streams of ``split``."""
    return SegmentStream(corpus, split, batch_size=global_batch // procs.world, tgt_len=tgt_len,
                         shuffle=shuffle, seed=seed, rank=procs.rank, world_size=procs.world)


def set_up(config: RunConfig, out: Path, procs: Processes, device: torch.device,
           log: Callable[[str], None] | None) -> Run:
    """Seed, corpus, model (the same initial weights on every rank), optimizer and streams."""
    tc = config.train
    _check(tc, procs)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // procs.local_world))
    corpus = Corpus(config.data.corpus)
    tlog = TrainingLog(out, corpus.tokenizer.unit, procs.main, log)
    vocab = corpus.tokenizer.vocab_size
    _check_head(config, corpus)
    if config.model.vocab_size != vocab:
        tlog.message(f"model.vocab_size set to {vocab} (the corpus tokenizer's), "
                     f"was {config.model.vocab_size}")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = TransformerXL(config.model).to(device)
    forward: torch.nn.Module = torch.compile(model) if tc.compile else model
    if procs.world > 1:
        ids = [procs.local_rank] if device.type == "cuda" else None
        forward = DistributedDataParallel(forward, device_ids=ids)
    # dropout differs per rank, as it would across the rows of one big batch
    torch.manual_seed(tc.seed + 1_000_003 * procs.rank)
    batches = Batches(_stream(corpus, config.data.train_split, tc.batch_size, config.model.tgt_len, procs,
                              shuffle=True, seed=tc.seed))
    optimizer = make_optimizer(model, tc, fused=device.type == "cuda")
    # what generation compares its samples with (rank 0 writes the checkpoints; a second or two)
    stats = corpus_stats(corpus, config.data.train_split) if procs.main else None
    return Run(config, out, procs, device, corpus, model, forward, optimizer, autocast_for(device, tc),
               batches, tlog, memories=[None] * tc.grad_accum, corpus_stats=stats)


# ---------------------------------------------------------------- one step


@dataclass
class StepResult:
    loss: float  # global mean loss (nats) over the step's valid targets; nan when there were none
    grad_norm: float
    count: int  # valid targets, all ranks
    tokens: int  # tokens read, all ranks
    ok: bool  # finite loss and gradient: the update was made


def train_step(run: Run, lr: float) -> StepResult:
    """One optimizer update on the next global batch."""
    tc, procs = run.tc, run.procs
    batch = run.batches.next()  # on the CPU: counting its targets there costs no device sync
    count = int((batch.targets != IGNORE_INDEX).sum())
    if procs.world > 1:
        count = int(procs.sum_(torch.tensor(count, dtype=torch.float64, device=run.device)).item())
    batch = batch.to(run.device, non_blocking=True)
    tokens = batch.tokens.numel() * procs.world
    if count == 0:  # nothing to learn from (all targets ignored): keep the memory, skip the update
        return StepResult(float("nan"), 0.0, 0, tokens, True)
    chunk = batch.tokens.shape[0] // tc.grad_accum
    scale = procs.world / count
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    for i in range(tc.grad_accum):
        rows = slice(i * chunk, (i + 1) * chunk)
        sync = i == tc.grad_accum - 1 or procs.world == 1
        with contextlib.nullcontext() if sync else run.forward.no_sync():
            with run.autocast():
                out = run.forward(batch.tokens[rows], run.memories[i], batch.targets[rows],
                                  batch.doc_pos[rows], return_logits=False)
                loss = out.loss.float().sum()
                # the linear-prediction prior's own likelihood trains its coefficients (not reported)
                aux = 0.0
                if out.aux_loss is not None:
                    aux = run.config.model.lp_aux_weight * out.aux_loss.float().sum()
                # a trained compression learns from its attention-reconstruction loss alone (a mean
                # per micro-batch; its gradient reaches only the compression network)
                recon = 0.0
                if out.cmem_loss is not None:
                    recon = run.config.model.cmem_loss_weight * out.cmem_loss.float() / tc.grad_accum
            ((loss + aux) * scale + recon).backward()
        run.memories[i] = out.mems
        loss_sum += loss.detach().to(torch.float64)
    procs.sum_(loss_sum)
    params = [p for p in run.model.parameters() if p.grad is not None]
    norm_t = torch.nn.utils.clip_grad_norm_(params, tc.clip if tc.clip > 0 else float("inf"))
    # the step's one wait for the device: loss and norm together (the update depends on both being finite)
    loss_total, norm = torch.stack([loss_sum, norm_t.to(torch.float64)]).tolist()
    mean_loss = loss_total / count
    ok = math.isfinite(mean_loss) and math.isfinite(norm)
    if ok:
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        run.optimizer.step()
    else:  # the memory may hold inf/NaN too: start the streams' context afresh
        run.memories = [None] * tc.grad_accum
    run.optimizer.zero_grad(set_to_none=True)
    return StepResult(mean_loss, norm, count, tokens, ok)


# ---------------------------------------------------------------- validation


def validate(run: Run) -> dict[str, Any] | None:
    """The validation split as ordered streams with memory (the trained lengths), through the same
    :func:`txl_audio.evaluate.score_lanes` as ``txl-audio evaluate --stream`` with
    ``--batch-size data.eval_batch_size``: the same numbers for the same weights. None when the split
    has no targets."""
    dc, procs, c = run.config.data, run.procs, run.config.model
    batch = max(dc.eval_batch_size, procs.world) // procs.world * procs.world
    stream = _stream(run.corpus, dc.valid_split, batch, c.tgt_len, procs, shuffle=False, seed=0)
    max_steps = math.ceil(dc.max_eval_tokens / (batch * c.tgt_len)) if dc.max_eval_tokens else None
    run.model.eval()
    try:
        scores = score_lanes(run.model, stream.lanes(), len(stream.corpus.files(dc.valid_split)), c.lengths(),
                             autocast=run.autocast, max_steps=max_steps)
    finally:
        run.model.train()
    loss_sum, count = procs.sum_(scores.nll.sum()), procs.sum_(scores.count.sum())
    if count.item() == 0:
        return None
    loss = loss_sum.item() / count.item()
    return {"step": run.step, "split": "valid", "loss_nats": loss, **loss_report(loss, run.unit),
            "unit": run.unit, "levels": c.vocab_size, "tokens": int(count.item()), "mem_len": c.mem_len}


def validate_and_record(run: Run, elapsed: float) -> dict[str, Any] | None:
    """Validate, write the record and the curves, and keep best.pt when the loss is the lowest yet."""
    record = validate(run)
    if record is None:
        run.log.message(f"warning: validation split {run.config.data.valid_split!r} has no tokens")
        return None
    record["time"] = round(elapsed, 3)
    run.log.write(record)
    if run.best_valid is None or record["loss_nats"] < run.best_valid:
        run.best_valid = record["loss_nats"]
        save_best(run, record)
    run.log.plot()
    return record


# ---------------------------------------------------------------- checkpoints


def save_best(run: Run, record: dict[str, Any]) -> None:
    if run.procs.main:
        save_checkpoint(run.out / "best.pt", {
            "format": 1, "model": run.model.state_dict(), "step": run.step,
            "config": run.config.to_dict(), "tokenizer": run.corpus.tokenizer.to_dict(), "valid": record,
            "corpus_stats": run.corpus_stats,
        })


def save(run: Run, elapsed: float) -> Path | None:
    """ckpt_STEP.pt with everything a resume needs: weights, optimizer, every rank's stream position,
    RNG states and memories (gathered on rank 0, which writes it), and the run's counters."""
    mine = {"data": run.batches.state_dict(), "rng": rng_state(),
            "mems": [None if m is None else m.state() for m in run.memories]}
    ranks = run.procs.gather_to_main(mine)
    if not run.procs.main:
        return None
    path = save_checkpoint(checkpoint_path(run.out, run.step), {
        "format": 1,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"name": "warmup_cosine", "lr": run.optimizer.param_groups[0]["lr"]},
        "step": run.step,
        "elapsed": elapsed,
        "tokens": run.tokens,
        "best_valid_loss": run.best_valid,
        "bad_steps_in_row": run.bad_in_row,
        "config": run.config.to_dict(),
        "tokenizer": run.corpus.tokenizer.to_dict(),
        "corpus_stats": run.corpus_stats,
        "world_size": run.procs.world,
        "ranks": ranks,
    })
    prune_checkpoints(run.out, run.tc.keep_checkpoints)
    return path


def restore(run: Run) -> int:
    """Continue from the newest valid checkpoint in the run folder (a corrupt newer one is reported
    and skipped); returns its step."""
    procs = run.procs
    found = latest_checkpoint(run.out, report=run.log.message) if procs.main else None
    # rank 0 chose the file (and reported bad ones); every rank reads that one
    chosen = procs.broadcast_object(str(found[0]) if found else None)
    if chosen is None:
        raise CheckpointError(f"--resume: {run.out} holds no checkpoint (ckpt_*.pt) to resume from; "
                              "start without --resume")
    path = Path(chosen)
    state = found[1] if found else load_checkpoint(path)
    saved = RunConfig.from_dict(state["config"])
    if saved.model != run.config.model:
        diff = {f.name: (getattr(saved.model, f.name), getattr(run.config.model, f.name))
                for f in dataclasses.fields(saved.model)
                if getattr(saved.model, f.name) != getattr(run.config.model, f.name)}
        raise CheckpointError(f"{path}: the model config differs from the checkpoint's "
                              f"(checkpoint, now): {diff}; resume with the run's own config.toml")
    if state.get("world_size", 1) != procs.world:
        raise CheckpointError(f"{path}: written by {state.get('world_size')} process(es), resumed with "
                              f"{procs.world}: resume with the same number of processes")
    mine = state["ranks"][procs.rank]
    if len(mine["mems"]) != run.tc.grad_accum:
        raise CheckpointError(f"{path}: saved with grad_accum={len(mine['mems'])}, now "
                              f"{run.tc.grad_accum}: resume with the same train.grad_accum")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step = int(state["step"])
    run.elapsed_before = float(state.get("elapsed", 0.0))
    run.tokens = int(state.get("tokens", 0))
    run.best_valid = state.get("best_valid_loss")
    run.bad_in_row = int(state.get("bad_steps_in_row", 0))
    run.batches.load_state_dict(mine["data"])
    set_rng_state(mine["rng"])
    # a run resumed without autocast (e.g. a GPU run continued on a CPU) needs float32 memories
    dtype = None if run.autocast is not contextlib.nullcontext else torch.float32
    n_layer = run.config.model.n_layer
    run.memories = [None if m is None else Memory.from_state(m, n_layer).to(run.device, dtype)
                    for m in mine["mems"]]
    run.log.truncate(run.step)
    run.log.message(f"resuming from {path} (step {run.step})")
    return run.step


# ---------------------------------------------------------------- the loop


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (resolved config, metrics.jsonl, curves.png, checkpoints).

    ``resume`` continues from the newest valid checkpoint in ``out_dir`` (a corrupt newer one is reported
    and skipped). ``on_step(step)`` is called after each finished step (its checkpoint, if any, written).
    Launched by ``torchrun`` (env WORLD_SIZE > 1) it trains with DistributedDataParallel; only rank 0
    writes files. Returns a :class:`TrainResult` (steps, per-step losses, the last validation, the
    best validation loss, why it stopped, the last checkpoint); ``best.pt`` in ``out_dir`` is what
    ``txl_audio.load(out_dir)`` reads.
    """
    device = resolve_device(config.train.device, option="train.device")
    procs = init_processes(device.type == "cuda")
    if device.type == "cuda" and procs.world > 1:
        device = torch.device("cuda", procs.local_rank)
    try:
        result = _train(config, Path(out_dir), procs, device, resume, progress, log, on_step)
        procs.barrier()
        return result
    finally:
        procs.close()


def _train(config: RunConfig, out: Path, procs: Processes, device: torch.device, resume: bool,
           progress: bool, log: Callable[[str], None] | None, on_step: Callable[[int], None] | None
           ) -> TrainResult:
    run = set_up(config, out, procs, device, log)
    tc = run.tc
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    resumed_from = restore(run) if resume else None
    if not resume and procs.main and (run.log.path.exists() or list(out.glob("ckpt_*.pt"))):
        raise ValueError(f"{out} already holds a run (metrics.jsonl / checkpoints): pass "
                         "--resume to continue it, or choose another --out")
    if procs.main:
        save_config(run.config, out / "config.toml")
    if tc.tensorboard:
        run.log.open_tensorboard()
    result = TrainResult(out_dir=out, step=run.step, resumed_from=resumed_from)
    n_params = sum(p.numel() for p in run.model.parameters())
    run.log.message(f"model: {n_params / 1e6:.2f}M parameters; {device}, {procs.world} process(es); "
                    f"global batch {tc.batch_size} x {run.config.model.tgt_len} tokens, "
                    f"mem_len {run.config.model.mem_len}")
    bar = ProgressBar(progress and procs.main, tc.max_steps, run.step, run.unit)
    t0 = time.time()
    window = TrainWindow()
    last_ckpt = last_valid = -1
    run.model.train()
    try:
        while run.step < tc.max_steps:
            lr = lr_at(run.step, tc, run.elapsed_before + time.time() - t0)
            s = train_step(run, lr)
            run.step += 1
            run.tokens += s.tokens
            result.losses.append(s.loss if s.ok else float("nan"))
            window.add(s.loss if s.ok else 0.0, s.count if s.ok else 0, s.tokens)
            _count_bad_steps(run, s, result)
            now = time.time()
            elapsed = run.elapsed_before + now - t0
            stop = tc.max_time > 0 and procs.broadcast_flag(elapsed >= tc.max_time, device)
            last = stop or run.step >= tc.max_steps
            if run.step % tc.log_every == 0 or last:
                tps = window.tokens_per_s(now)
                run.log.write({"step": run.step, "split": "train", "loss_nats": window.mean,
                               **loss_report(window.mean, run.unit), "unit": run.unit,
                               "levels": run.config.model.vocab_size, "tokens": run.tokens,
                               "tokens_per_s": round(tps, 1), "lr": lr, "grad_norm": s.grad_norm,
                               "bad_steps": result.bad_steps, "time": round(elapsed, 3)})
                left = (tc.max_steps - run.step) * (now - t0) / max(1, len(result.losses))
                if tc.max_time > 0:
                    left = min(left, max(0.0, tc.max_time - elapsed))
                bar.show(window.mean, tps, left)
                window.reset(now)
            if run.step % tc.eval_every == 0 or last:
                result.valid = validate_and_record(run, elapsed) or result.valid
                last_valid = run.step
            if run.step % tc.ckpt_every == 0 or last:
                result.checkpoint = save(run, elapsed)
                last_ckpt = run.step
            window.paused += time.time() - now
            bar.update()
            if on_step is not None:
                on_step(run.step)
            if stop:
                result.stopped_by = "max_time"
                run.log.message(f"train.max_time={tc.max_time:g} s reached at step {run.step}")
                break
        if last_valid != run.step:  # resumed at/after max_steps: still report and checkpoint
            result.valid = validate_and_record(run, run.elapsed_before + time.time() - t0) or result.valid
        if last_ckpt != run.step:
            result.checkpoint = save(run, run.elapsed_before + time.time() - t0)
        if procs.main and not (out / "best.pt").exists():
            save_best(run, {"step": run.step, "split": "none"})  # no validation data: the last weights
    finally:
        bar.close()
        run.log.close()
    result.step = run.step
    result.best_valid_loss = run.best_valid
    result.elapsed = run.elapsed_before + time.time() - t0
    return result


def _count_bad_steps(run: Run, s: StepResult, result: TrainResult) -> None:
    """A non-finite step was skipped: say so, and stop after train.max_bad_steps in a row."""
    if s.ok:
        run.bad_in_row = 0
        return
    run.bad_in_row += 1
    result.bad_steps += 1
    run.log.message(f"warning: step {run.step}: non-finite loss ({s.loss}) or gradient norm ({s.grad_norm}); "
                    f"step skipped ({run.bad_in_row} in a row)")
    if run.bad_in_row >= run.tc.max_bad_steps:
        raise NonFiniteLossError(
            f"training stopped at step {run.step}: the loss or gradient was not finite for "
            f"{run.bad_in_row} steps in a row (train.max_bad_steps={run.tc.max_bad_steps}); no "
            f"weights were updated by those steps and the checkpoints in {run.out} are "
            "intact. Lower train.lr, raise train.warmup_steps or use train.dtype=fp32")


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`train` (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


__signature__ = inspect.signature(train)  # what help() and notebooks show for txl_audio.train(...)
sys.modules[__name__].__class__ = _CallableModule
