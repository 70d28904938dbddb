"""The training loop as a library function: ``train(config, out_dir, resume=False) -> TrainResult``.

AdamW with linear warmup and cosine decay, gradient clipping, gradient accumulation, the Transformer-XL
memory carried from segment to segment of each stream, periodic validation, crash-safe checkpoints that
resume the very same run, and DistributedDataParallel when launched by ``torchrun``.

Gradient accumulation splits each batch along its streams (Dai et al.'s ``batch_chunk``): every chunk
keeps the memory of its own streams, so accumulating changes memory use only, not the gradient.

Loss normalisation: the loss of a step is the sum of the per-token NLLs over all valid targets of the
global batch divided by their global count. Each rank backpropagates ``local_sum * world / global_count``;
DDP's gradient averaging (divide by world) then gives exactly the single-process gradient, even when the
ranks hold different numbers of ignored targets (file ends).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from txl_audio.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from txl_audio.config import RunConfig, TrainConfig, save_config
from txl_audio.data import IGNORE_INDEX
from txl_audio.devices import resolve_device

LN2 = math.log(2.0)


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


def loss_report(loss_nats: float, unit: str) -> dict[str, float]:
    """How a loss is reported: bits per sample/character, or perplexity for words."""
    if unit == "word":
        return {"ppl": math.exp(min(loss_nats, 700.0))}
    return {"bits": loss_nats / LN2}


# ---------------------------------------------------------------- processes and devices


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _init_distributed(use_cuda: bool) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    d = _Dist(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        d.owns_group = True
    return d


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. ``fused``: one kernel for all parameters (the CUDA
    fast path; CPU has a fused kernel too, which the tests compare with the plain one)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(tc.beta1, tc.beta2), **({"fused": True} if fused else {}),
    )


def _autocast(device: torch.device, tc: TrainConfig):
    dtype = tc.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext
    if dtype != "bf16":
        raise ValueError(f"train.dtype must be auto, bf16 or fp32, got {tc.dtype!r}")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- data streams


class _Batches:
    """An endless iterator over a SegmentStream: a new epoch starts when one ends. Its state (epoch and
    the stream's own position) is plain data for the checkpoint."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.epoch = 0
        self._it = None

    def next(self):
        for _ in range(2):
            if self._it is None:
                if hasattr(self.stream, "set_epoch"):
                    self.stream.set_epoch(self.epoch)
                self._it = iter(self.stream)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
        raise RuntimeError("the training split yields no batches: is the corpus empty?")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stream": to_plain(self.stream.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(self.epoch)
        self.stream.load_state_dict(state["stream"])
        self._it = None


def _stream(corpus, split: str, global_batch: int, tgt_len: int, d: _Dist, shuffle: bool, seed: int):
    """This rank's share of the ``global_batch`` streams of ``split``."""
    from txl_audio.data import SegmentStream

    return SegmentStream(corpus, split, batch_size=global_batch // d.world, tgt_len=tgt_len,
                         shuffle=shuffle, seed=seed, rank=d.rank, world_size=d.world)


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
    writes files.
    """
    device = resolve_device(config.train.device, option="train.device")
    d = _init_distributed(device.type == "cuda")
    try:
        result = _Trainer(config, Path(out_dir), d, device, progress, log).run(resume, on_step)
        if d.world > 1:
            # no rank tears the group down while another still has collectives in flight: gloo then
            # aborts the process ("terminate called without an active exception") after a good run
            dist.barrier()
        return result
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    def __init__(self, config: RunConfig, out_dir: Path, d: _Dist, device: torch.device,
                 progress: bool, log: Callable[[str], None] | None) -> None:
        from txl_audio.data import Corpus
        from txl_audio.model import TransformerXL

        self.config, self.out, self.d, self.device = config, out_dir, d, device
        tc = self.tc = config.train
        self.progress = progress and d.main
        self._log = log
        if device.type == "cuda":
            if d.world > 1:
                self.device = device = torch.device("cuda", d.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // d.local_world))
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "ckpt_every"):
            if getattr(tc, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(tc, name)}")
        if tc.batch_size % (d.world * tc.grad_accum):
            raise ValueError(
                f"train.batch_size={tc.batch_size} must be divisible by the number of processes ({d.world}) "
                f"times train.grad_accum ({tc.grad_accum}): each process takes an equal share of the streams"
            )
        self.corpus = Corpus(config.data.corpus)
        self.tokenizer = self.corpus.tokenizer
        self.unit = getattr(self.tokenizer, "unit", "sample")
        if config.model.vocab_size != self.tokenizer.vocab_size:
            self.log(f"model.vocab_size set to {self.tokenizer.vocab_size} (the corpus tokenizer's), "
                     f"was {config.model.vocab_size}")
            config.model.vocab_size = self.tokenizer.vocab_size
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.raw_model = TransformerXL(config.model).to(device)
        self.model = self.raw_model
        if tc.compile:
            self.model = torch.compile(self.model)
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.model, device_ids=[d.local_rank] if device.type == "cuda" else None)
        # dropout differs per rank, as it would across the rows of one big batch
        torch.manual_seed(tc.seed + 1_000_003 * d.rank)
        self.optimizer = make_optimizer(self.raw_model, tc, fused=device.type == "cuda")
        self.autocast = _autocast(device, tc)
        self.batches = _Batches(_stream(self.corpus, config.data.train_split, tc.batch_size,
                                        config.model.tgt_len, d, shuffle=True, seed=tc.seed))
        self.mems: list[Any] = [None] * tc.grad_accum  # one memory per accumulation chunk of streams
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of earlier processes of this run
        self.tokens = 0  # tokens trained on, all ranks
        self.best_valid: float | None = None
        self.bad_in_row = 0
        self.metrics_path = out_dir / "metrics.jsonl"
        self.tb = None

    # ---- output (rank 0 only)

    def log(self, msg: str) -> None:
        if not self.d.main:
            return
        if self._log is not None:
            self._log(msg)
        else:
            from tqdm import tqdm

            tqdm.write(msg)

    def write_metrics(self, record: dict[str, Any]) -> None:
        if not self.d.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

    # ---- checkpoints

    def _rank_state(self) -> dict[str, Any]:
        mems = [None if m is None else [t.detach().cpu() for t in m] for m in self.mems]
        return {"data": self.batches.state_dict(), "rng": rng_state(), "mems": mems}

    def save(self, elapsed: float) -> Path | None:
        mine = self._rank_state()
        if self.d.world > 1:  # every rank's stream position, RNG and memory, so all of them resume
            ranks: list[Any] = [None] * self.d.world if self.d.main else None
            dist.gather_object(mine, ranks, dst=0)
        else:
            ranks = [mine]
        path = None
        if self.d.main:
            state = {
                "format": 1,
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": "warmup_cosine", "lr": self.optimizer.param_groups[0]["lr"]},
                "step": self.step,
                "elapsed": elapsed,
                "tokens": self.tokens,
                "best_valid_loss": self.best_valid,
                "bad_steps_in_row": self.bad_in_row,
                "config": self.config.to_dict(),
                "tokenizer": self.tokenizer.to_dict(),
                "world_size": self.d.world,
                "ranks": ranks,
            }
            path = save_checkpoint(checkpoint_path(self.out, self.step), state)
            prune_checkpoints(self.out, self.tc.keep_checkpoints)
        return path

    def save_best(self, record: dict[str, Any]) -> None:
        if self.d.main:
            save_checkpoint(self.out / "best.pt", {
                "format": 1, "model": self.raw_model.state_dict(), "step": self.step,
                "config": self.config.to_dict(), "tokenizer": self.tokenizer.to_dict(), "valid": record,
            })

    def restore(self) -> int:
        found = latest_checkpoint(self.out, report=self.log) if self.d.main else None
        if self.d.world > 1:  # rank 0 chose the file (and reported bad ones); all ranks read that one
            box = [str(found[0]) if found else None]
            dist.broadcast_object_list(box, src=0)
            from txl_audio.checkpoint import load_checkpoint

            found = (Path(box[0]), load_checkpoint(box[0])) if box[0] else None
        if found is None:
            raise CheckpointError(f"--resume: {self.out} holds no checkpoint (ckpt_*.pt) to resume from; "
                                  "start without --resume")
        path, state = found
        saved = RunConfig.from_dict(state["config"])
        if saved.model != self.config.model:
            diff = {k: (v, getattr(self.config.model, k)) for k, v in vars(saved.model).items()
                    if getattr(self.config.model, k) != v}
            raise CheckpointError(f"{path}: the model config differs from the checkpoint's "
                                  f"(checkpoint, now): {diff}; resume with the run's own config.toml")
        if state.get("world_size", 1) != self.d.world:
            raise CheckpointError(f"{path}: written by {state.get('world_size')} process(es), resumed with "
                                  f"{self.d.world}: resume with the same number of processes")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.tokens = int(state.get("tokens", 0))
        self.best_valid = state.get("best_valid_loss")
        self.bad_in_row = int(state.get("bad_steps_in_row", 0))
        mine = state["ranks"][self.d.rank]
        self.batches.load_state_dict(mine["data"])
        set_rng_state(mine["rng"])
        # a run resumed without autocast (e.g. a GPU run continued on a CPU) needs float32 memories
        dtype = None if self.autocast is not contextlib.nullcontext else torch.float32
        self.mems = [None if m is None else tuple(t.to(device=self.device, dtype=dtype) for t in m)
                     for m in mine["mems"]]
        if len(self.mems) != self.tc.grad_accum:
            raise CheckpointError(f"{path}: saved with grad_accum={len(self.mems)}, now "
                                  f"{self.tc.grad_accum}: resume with the same train.grad_accum")
        if self.d.main:
            self._truncate_metrics(self.step)
            self.log(f"resuming from {path} (step {self.step})")
        return self.step

    def _truncate_metrics(self, step: int) -> None:
        """Drop records of steps after the checkpoint: the interrupted process ran them, the resumed one
        runs them again."""
        if not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a half-written line from the kill
        self.metrics_path.write_text("".join(x + "\n" for x in keep))

    # ---- one step

    def train_step(self) -> tuple[float, float, int, bool]:
        """One optimizer update on the next global batch: (mean loss nats, grad norm, valid targets, ok)."""
        tc, d = self.tc, self.d
        batch = self.batches.next()
        tokens = batch.tokens.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        doc_pos = None if batch.doc_pos is None else batch.doc_pos.to(self.device, non_blocking=True)
        count = d.sum_((targets != IGNORE_INDEX).sum().to(torch.float64)).item()
        self.tokens += tokens.numel() * d.world
        if count == 0:  # nothing to learn from (all targets ignored): keep the memory, skip the update
            return float("nan"), 0.0, 0, True
        chunk = tokens.shape[0] // tc.grad_accum
        scale = d.world / count
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(tc.grad_accum):
            rows = slice(i * chunk, (i + 1) * chunk)
            sync = i == tc.grad_accum - 1 or d.world == 1
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            with ctx:
                with self.autocast():
                    out = self.model(tokens[rows], self.mems[i], targets[rows],
                                     None if doc_pos is None else doc_pos[rows], return_logits=False)
                    loss = out.loss.float().sum()
                (loss * scale).backward()
            self.mems[i] = out.mems
            loss_sum += loss.detach().to(torch.float64)
        mean_loss = d.sum_(loss_sum).item() / count
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, tc.clip if tc.clip > 0 else float("inf")).item()
        ok = math.isfinite(mean_loss) and math.isfinite(norm)
        if ok:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr
            self.optimizer.step()
        else:  # the memory may hold inf/NaN too: start the streams' context afresh
            self.mems = [None] * tc.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, norm, int(count), ok

    # ---- validation

    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        dc, d = self.config.data, self.d
        model = self.raw_model
        model.eval()
        stream = _stream(self.corpus, dc.valid_split, max(dc.eval_batch_size, d.world) // d.world * d.world,
                         self.config.model.tgt_len, d, shuffle=False, seed=0)
        mems = None
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        for batch in stream:
            targets = batch.targets.to(self.device)
            with self.autocast():
                doc_pos = None if batch.doc_pos is None else batch.doc_pos.to(self.device)
                out = model(batch.tokens.to(self.device), mems, targets, doc_pos, return_logits=False)
            mems = out.mems
            loss_sum += out.loss.float().sum().to(torch.float64)
            count += (targets != IGNORE_INDEX).sum()
            seen += batch.tokens.numel() * d.world
            if dc.max_eval_tokens and seen >= dc.max_eval_tokens:
                break
        model.train()
        d.sum_(loss_sum)
        d.sum_(count)
        if count.item() == 0:
            return None
        loss = loss_sum.item() / count.item()
        return {"step": self.step, "split": "valid", "loss_nats": loss, **loss_report(loss, self.unit),
                "unit": self.unit, "tokens": int(count.item()), "mem_len": self.config.model.mem_len}

    def _validate_and_record(self, elapsed: float) -> dict[str, Any] | None:
        record = self.validate()
        if record is None:
            self.log(f"warning: validation split {self.config.data.valid_split!r} has no tokens")
            return None
        record["time"] = round(elapsed, 3)
        self.write_metrics(record)
        if self.best_valid is None or record["loss_nats"] < self.best_valid:
            self.best_valid = record["loss_nats"]
            self.save_best(record)
        if self.d.main:
            from txl_audio.plots import plot_training_curves

            plot_training_curves(self.metrics_path, self.out / "curves.png")
        return record

    # ---- the run

    def _stop_now(self, elapsed: float) -> bool:
        """max_time reached? Rank 0's clock decides for everyone, so all ranks stop at the same step."""
        if self.tc.max_time <= 0:
            return False
        flag = torch.tensor([1.0 if elapsed >= self.tc.max_time else 0.0], device=self.device)
        if self.d.world > 1:
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def run(self, resume: bool, on_step: Callable[[int], None] | None) -> TrainResult:
        tc, d = self.tc, self.d
        resumed_from = None
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            resumed_from = self.restore()
        elif d.main:
            if self.metrics_path.exists() or list(self.out.glob("ckpt_*.pt")):
                raise ValueError(f"{self.out} already holds a run (metrics.jsonl / checkpoints): pass "
                                 "--resume to continue it, or choose another --out")
        if d.main:
            save_config(self.config, self.out / "config.toml")
            if tc.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.out / "tensorboard"))
                except ImportError:
                    self.log("warning: train.tensorboard=true but tensorboard is not installed; skipping it")
        result = TrainResult(out_dir=self.out, step=self.step, resumed_from=resumed_from)
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.log(f"model: {n_params / 1e6:.2f}M parameters; {self.device}, {d.world} process(es); "
                 f"global batch {tc.batch_size} x {self.config.model.tgt_len} tokens, "
                 f"mem_len {self.config.model.mem_len}")

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.step, unit="step", dynamic_ncols=True, disable=None)
        t0 = time.time()
        win = {"loss": 0.0, "count": 0, "tokens": 0, "t": t0, "paused": 0.0}
        last_ckpt = last_valid = -1
        stopped_by = "max_steps"
        self.raw_model.train()
        try:
            while self.step < tc.max_steps:
                elapsed = self.elapsed_before + time.time() - t0
                self.lr = lr_at(self.step, tc, elapsed)
                tokens_before = self.tokens
                loss, norm, count, ok = self.train_step()
                self.step += 1
                result.losses.append(loss if ok else float("nan"))
                win["tokens"] += self.tokens - tokens_before
                if ok:
                    self.bad_in_row = 0
                    if count:
                        win["loss"] += loss * count
                        win["count"] += count
                else:
                    self.bad_in_row += 1
                    result.bad_steps += 1
                    self.log(f"warning: step {self.step}: non-finite loss ({loss}) or gradient norm "
                             f"({norm}); step skipped ({self.bad_in_row} in a row)")
                    if self.bad_in_row >= tc.max_bad_steps:
                        raise NonFiniteLossError(
                            f"training stopped at step {self.step}: the loss or gradient was not finite for "
                            f"{self.bad_in_row} steps in a row (train.max_bad_steps={tc.max_bad_steps}); no "
                            f"weights were updated by those steps and the checkpoints in {self.out} are "
                            "intact. Lower train.lr, raise train.warmup_steps or use train.dtype=fp32")
                now = time.time()
                elapsed = self.elapsed_before + now - t0
                stop = self._stop_now(elapsed)
                if stop:
                    stopped_by = "max_time"
                last = stop or self.step >= tc.max_steps
                if self.step % tc.log_every == 0 or last:
                    # training throughput: validation and checkpoint time left out
                    tps = win["tokens"] / max(now - win["t"] - win["paused"], 1e-9)
                    mean = win["loss"] / win["count"] if win["count"] else float("nan")
                    rec = {"step": self.step, "split": "train", "loss_nats": mean,
                           **loss_report(mean, self.unit), "unit": self.unit, "tokens": self.tokens,
                           "tokens_per_s": round(tps, 1),
                           "lr": self.lr, "grad_norm": norm, "bad_steps": result.bad_steps,
                           "time": round(elapsed, 3)}
                    self.write_metrics(rec)
                    if bar is not None:
                        left = (tc.max_steps - self.step) * (now - t0) / max(1, len(result.losses))
                        if tc.max_time > 0:
                            left = min(left, max(0.0, tc.max_time - elapsed))
                        shown = {"loss": f"{mean:.3f}", **{k: f"{v:.3f}" for k, v in
                                                           loss_report(mean, self.unit).items()}}
                        bar.set_postfix(**shown, tok_s=f"{tps:,.0f}", left=f"{left / 60:.1f}m", refresh=False)
                    win = {"loss": 0.0, "count": 0, "tokens": 0, "t": now, "paused": 0.0}
                if self.step % tc.eval_every == 0 or last:
                    result.valid = self._validate_and_record(elapsed) or result.valid
                    last_valid = self.step
                if self.step % tc.ckpt_every == 0 or last:
                    result.checkpoint = self.save(elapsed)
                    last_ckpt = self.step
                win["paused"] += time.time() - now
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(self.step)
                if stop:
                    self.log(f"train.max_time={tc.max_time:g} s reached at step {self.step}")
                    break
            if last_valid != self.step:  # resumed at/after max_steps: still report and checkpoint
                elapsed = self.elapsed_before + time.time() - t0
                result.valid = self._validate_and_record(elapsed) or result.valid
            if last_ckpt != self.step:
                result.checkpoint = self.save(self.elapsed_before + time.time() - t0)
            if d.main and not (self.out / "best.pt").exists():
                self.save_best({"step": self.step, "split": "none"})  # no validation data: the last weights
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        result.step = self.step
        result.best_valid_loss = self.best_valid
        result.stopped_by = stopped_by
        result.elapsed = self.elapsed_before + time.time() - t0
        return result
