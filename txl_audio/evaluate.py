"""Likelihood evaluation: per-file (each file from an empty memory) or as one continuous stream.

The model's loss is the natural-log NLL of each predicted token; it is reported as bits per token
(nats / ln 2): bits per sample for audio, bits per character for byte-level text, perplexity for words.
Beside it, general-purpose compressors (xz -9e, bzip2 -9) code the very same tokens, each file on its
own, so every result shows how far the model is below a lossless baseline.

How the lengths interact (Dai et al. 2019, section 3.2): the model reads ``tgt_len`` tokens per forward
pass and attends to those plus ``mem_len`` cached hidden states of the previous tokens, so a prediction
sees between ``mem_len + 1`` and ``mem_len + tgt_len`` tokens directly (fewer near the start of a file)
and up to ``n_layer * mem_len`` through the recurrence. ``clamp_len`` makes every relative distance
beyond it share one positional embedding; ``same_length`` makes every query in a segment attend over the
same number of keys. All four may be set at evaluation differently from training: a relative-position
model can use a longer memory than it was trained with (as the paper does).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from txl_audio.baselines import bootstrap_ci, compressor_baselines
from txl_audio.model import compiled_layers

IGNORE = -100  # targets that are not predicted (the model's IGNORE_INDEX)
LENGTH_FIELDS = ("mem_len", "tgt_len", "clamp_len", "same_length")


# ----------------------------------------------------------------------------------------------
# evaluation-time lengths


@dataclass
class Lengths:
    mem_len: int
    tgt_len: int
    clamp_len: int
    same_length: bool


@contextmanager
def evaluation_lengths(
    model: torch.nn.Module,
    mem_len: int | None = None,
    tgt_len: int | None = None,
    clamp_len: int | None = None,
    same_length: bool | None = None,
) -> Iterator[Lengths]:
    """Temporarily set the model's memory/segment settings (None keeps the trained value); restored on
    exit. The model reads them from ``model.config`` at each forward pass."""
    cfg = model.config
    new = {"mem_len": mem_len, "tgt_len": tgt_len, "clamp_len": clamp_len, "same_length": same_length}
    new = {k: (getattr(cfg, k) if v is None else v) for k, v in new.items()}
    if new["mem_len"] < 0 or new["tgt_len"] <= 0:
        raise ValueError(f"evaluation needs mem_len >= 0 and tgt_len > 0, got {new}")
    if getattr(cfg, "attention", "relative") == "absolute":
        if new["mem_len"] != 0:
            raise ValueError(
                "this checkpoint is the absolute-position baseline: it has no recurrence memory and can only "
                f"be evaluated with mem_len 0 (got --mem-len {new['mem_len']})"
            )
        if new["tgt_len"] > cfg.tgt_len:
            raise ValueError(
                f"the absolute-position baseline learned positions 0..{cfg.tgt_len - 1} only: "
                f"evaluate it with --tgt-len <= {cfg.tgt_len} (got {new['tgt_len']})"
            )
    saved = {k: getattr(cfg, k) for k in LENGTH_FIELDS}
    try:
        for k, v in new.items():
            setattr(cfg, k, v)
        yield Lengths(
            int(new["mem_len"]), int(new["tgt_len"]), int(new["clamp_len"]), bool(new["same_length"])
        )
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)


# ----------------------------------------------------------------------------------------------
# lanes: how documents are laid out in the batch


class _PerFileLanes:
    """Each document starts at a segment boundary of some lane, so it is split into segments exactly as
    when evaluated alone; its last segment is padded (targets ignored) and the next document's first
    token has doc_pos 0, so nothing crosses the boundary. Longest-first onto the shortest lane."""

    def __init__(self, docs: Sequence[np.ndarray], batch_size: int, tgt_len: int):
        self.docs, self.T = docs, tgt_len
        n_seg = [math.ceil((len(d) - 1) / tgt_len) for d in docs]
        self.lanes: list[list[tuple[int, int]]] = [[] for _ in range(min(batch_size, max(1, len(docs))))]
        for i in sorted(range(len(docs)), key=lambda i: -n_seg[i]):
            lane = min(self.lanes, key=len)
            lane.extend((i, k) for k in range(n_seg[i]))
        self.lanes = [lane for lane in self.lanes if lane] or [[]]
        self.n_steps = max(len(lane) for lane in self.lanes)

    def batch(self, step: int) -> tuple[np.ndarray, ...]:
        B, T = len(self.lanes), self.T
        inp = np.zeros((B, T), np.int64)
        tgt = np.full((B, T), IGNORE, np.int64)
        pos = np.zeros((B, T), np.int64)
        fid = np.full((B, T), -1, np.int64)
        for b, lane in enumerate(self.lanes):
            if step >= len(lane):
                continue
            i, k = lane[step]
            d = self.docs[i]
            lo, hi = k * T, min(k * T + T, len(d) - 1)
            inp[b, : hi - lo] = d[lo:hi]
            tgt[b, : hi - lo] = d[lo + 1 : hi + 1]
            pos[b] = np.arange(lo, lo + T)  # the padding continues the file: it sees it, nothing sees it
            fid[b, : hi - lo] = i
        return inp, tgt, pos, fid


class _StreamLanes:
    """The documents concatenated in order and cut into ``batch_size`` contiguous lanes (the paper's
    ordered evaluation). Every prediction is counted once; targets across a file boundary are ignored and
    doc_pos stops attention across it; segments are not aligned with file starts."""

    def __init__(self, docs: Sequence[np.ndarray], batch_size: int, tgt_len: int):
        self.T = tgt_len
        self.stream = np.concatenate([np.asarray(d) for d in docs])  # corpus dtype: 1 byte per 8-bit token
        lengths = np.array([len(d) for d in docs], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.ends = self.starts + lengths
        N = len(self.stream)
        per_lane = math.ceil(N / batch_size)
        self.lane_lo = np.arange(0, N, per_lane, dtype=np.int64)
        self.lane_hi = np.minimum(self.lane_lo + per_lane, N)
        self.n_steps = math.ceil(per_lane / tgt_len)

    def batch(self, step: int) -> tuple[np.ndarray, ...]:
        g = self.lane_lo[:, None] + step * self.T + np.arange(self.T)  # (B, T) global positions
        live = g < self.lane_hi[:, None]
        g = np.minimum(g, len(self.stream) - 1)
        doc = np.searchsorted(self.starts, g, side="right") - 1
        predicted = live & (g + 1 < self.ends[doc])
        inp = np.where(live, self.stream[g].astype(np.int64), 0)
        nxt = self.stream[np.minimum(g + 1, len(self.stream) - 1)].astype(np.int64)
        tgt = np.where(predicted, nxt, IGNORE)
        pos = np.where(live, g - self.starts[doc], 0)
        fid = np.where(predicted, doc, -1)
        return inp, tgt, pos, fid


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class FileResult:
    name: str
    tokens: int  # predictions (the file's length - 1)
    nll_nats: float  # summed over its predictions
    xz_bytes: int | None = None
    bzip2_bytes: int | None = None

    @property
    def bits_per_token(self) -> float:
        return self.nll_nats / math.log(2) / max(self.tokens, 1)


@dataclass
class EvalResult:
    mode: str  # "per-file" or "stream"
    split: str
    unit: str  # tokenizer.unit: "sample", "byte", "word"
    lengths: Lengths
    batch_size: int
    files: list[FileResult]
    sample_rate: int | None = None  # audio: tokens per second
    seconds: float = 0.0  # wall time of the model pass
    device: str = "cpu"
    dtype: str = "fp32"
    position_edges: list[int] | None = None  # position analysis: bucket edges (predicted token's index)
    position_nll: list[float] | None = None  # summed nats per bucket
    position_tokens: list[int] | None = None
    ci_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(f.tokens for f in self.files)

    @property
    def nll_nats(self) -> float:
        return sum(f.nll_nats for f in self.files)

    @property
    def bits_per_token(self) -> float:
        """Over all predicted tokens (each file weighted by its length)."""
        return self.nll_nats / math.log(2) / max(self.tokens, 1)

    @property
    def metric(self) -> str:
        return {"sample": "bits per sample", "byte": "bits per character", "word": "bits per word"}.get(
            self.unit, f"bits per {self.unit}"
        )

    def file_bits(self) -> np.ndarray:
        return np.array([f.bits_per_token for f in self.files if f.tokens > 0])

    def compressor_bits(self, which: str) -> float | None:
        sizes = [getattr(f, f"{which}_bytes") for f in self.files if f.tokens > 0]
        if not sizes or any(s is None for s in sizes):
            return None
        return 8 * sum(sizes) / max(self.tokens, 1)

    def summary(self) -> dict[str, Any]:
        fb = self.file_bits()
        lo, hi = bootstrap_ci(fb, seed=self.ci_seed)
        d: dict[str, Any] = {
            "mode": self.mode,
            "split": self.split,
            "metric": self.metric,
            "files": int(len(fb)),
            "tokens": self.tokens,
            "bits_per_token": self.bits_per_token,
            "nll_nats_per_token": self.nll_nats / max(self.tokens, 1),
            "file_mean_bits_per_token": float(fb.mean()) if len(fb) else math.nan,
            "file_mean_ci95": [lo, hi],
            "xz_bits_per_token": self.compressor_bits("xz"),
            "bzip2_bits_per_token": self.compressor_bits("bzip2"),
            **asdict(self.lengths),
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else None,
            **self.extra,
        }
        if self.unit == "word":
            d["perplexity"] = math.exp(d["nll_nats_per_token"])
        if self.sample_rate:
            d["audio_seconds"] = (self.tokens + len(fb)) / self.sample_rate
        return d

    def report(self) -> str:
        s = self.summary()
        L = self.lengths
        how = "each file from an empty memory" if self.mode == "per-file" else "one continuous stream"
        dur = f" ({s['audio_seconds']:.1f} s of audio)" if self.sample_rate else ""
        lines = [
            f"split {self.split!r}, {self.mode} ({how}): {s['files']} files, "
            f"{s['tokens']:,} predicted tokens{dur}",
            f"segment length (tgt_len) {L.tgt_len}, memory length (mem_len) {L.mem_len}, "
            f"clamp_len {L.clamp_len}, same_length {str(L.same_length).lower()}: each prediction attends "
            f"to up to {L.mem_len + L.tgt_len} previous tokens of its file",
            f"model   {s['bits_per_token']:.4f} {self.metric} over all tokens; mean over files "
            f"{s['file_mean_bits_per_token']:.4f} (95% bootstrap CI {s['file_mean_ci95'][0]:.4f}"
            f"-{s['file_mean_ci95'][1]:.4f})",
        ]
        if self.unit == "word":
            lines.append(f"        perplexity {s['perplexity']:.2f}")
        for name, label in (("xz", "xz -9e"), ("bzip2", "bzip2 -9")):
            if s[f"{name}_bits_per_token"] is not None:
                label = f"{label:<9}"
                lines.append(
                    f"{label}{s[f'{name}_bits_per_token']:.4f} {self.metric} (same tokens, each file alone)"
                )
        if self.seconds > 0:
            lines.append(f"{s['tokens_per_second']:,.0f} tokens/s on {self.device} ({self.dtype})")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> Path:
        """per_file.csv and summary.json in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "per_file.csv", "w", newline="") as f:
            w = csv.writer(f)
            u = self.unit  # sample, byte or word: the column names say which
            w.writerow(["file", "tokens", f"bits_per_{u}", f"xz_bits_per_{u}", f"bzip2_bits_per_{u}"])
            for r in self.files:
                xz = "" if r.xz_bytes is None else f"{8 * r.xz_bytes / max(r.tokens, 1):.6f}"
                bz = "" if r.bzip2_bytes is None else f"{8 * r.bzip2_bytes / max(r.tokens, 1):.6f}"
                w.writerow([r.name, r.tokens, f"{r.bits_per_token:.6f}", xz, bz])
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return out


# ----------------------------------------------------------------------------------------------
# the model pass


def evaluate_tokens(
    model: torch.nn.Module,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    unit: str = "sample",
    split: str = "files",
    mem_len: int | None = None,
    tgt_len: int | None = None,
    clamp_len: int | None = None,
    same_length: bool | None = None,
    batch_size: int = 8,
    stream: bool = False,
    dtype: str = "fp32",
    baselines: bool = True,
    position_edges: Sequence[int] | None = None,
    sample_rate: int | None = None,
    progress: bool = True,
    compile: bool = False,
) -> EvalResult:
    """Evaluate the model on token documents (1-D integer arrays); the model stays on its device.

    Per-file mode (default): every document from an empty memory, many per batch (segments aligned to
    each document's start, so the result equals evaluating each alone). ``stream=True``: the documents
    in order as one stream cut into ``batch_size`` lanes, memory carried across segments.
    ``position_edges``: also sum the loss by the predicted token's index in its file, bucketed.
    ``compile``: run the model's layers through ``torch.compile`` (worth its start-up time on a GPU
    and a large split; the result equals the plain path up to float rounding).
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    names = list(names) if names is not None else [f"doc{i}" for i in range(len(docs))]
    docs = [np.asarray(d) for d in docs]
    vocab = model.config.vocab_size
    for name, d in zip(names, docs):
        if len(d) and (int(d.max()) >= vocab or int(d.min()) < 0):
            raise ValueError(
                f"{name}: tokens outside the model's vocabulary 0..{vocab - 1}; wrong tokenizer?"
            )
    usable = [i for i, d in enumerate(docs) if len(d) >= 2]
    if not usable:
        raise ValueError("nothing to evaluate: every file has fewer than 2 tokens")
    device = next(model.parameters()).device
    results = [FileResult(names[i], max(len(docs[i]) - 1, 0), 0.0) for i in range(len(docs))]
    lengths = evaluation_lengths(model, mem_len, tgt_len, clamp_len, same_length)
    with lengths as L, compiled_layers(model, compile):
        sub = [docs[i] for i in usable]
        lanes = (_StreamLanes if stream else _PerFileLanes)(sub, batch_size, L.tgt_len)
        n = len(sub)
        nll = torch.zeros(n + 1, dtype=torch.float64, device=device)  # last slot: padding
        edges = torch.tensor(list(position_edges or []), dtype=torch.int64, device=device)
        n_buckets = max(len(edges) - 1, 0)
        pos_nll = torch.zeros(n_buckets + 2, dtype=torch.float64, device=device)
        pos_cnt = torch.zeros(n_buckets + 2, dtype=torch.int64, device=device)
        preds = np.array([len(d) - 1 for d in sub])
        done = np.zeros(n, np.int64)
        scale = sample_rate or 1
        bar = _progress(progress, preds.sum() / scale, "s audio" if sample_rate else "tok", n)
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if dtype == "bf16"
            else nullcontext()
        )
        mems = None
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            for step in range(lanes.n_steps):
                inp, tgt, pos, fid = lanes.batch(step)
                ti, tt, tp, tf = (
                    torch.from_numpy(a).to(device, non_blocking=True) for a in (inp, tgt, pos, fid)
                )
                out = model(ti, mems=mems, targets=tt, doc_pos=tp, return_logits=False)
                mems = out.mems
                loss = torch.where(tt != IGNORE, out.loss.float(), 0.0).double()  # (B, T)
                slot = torch.where(tf >= 0, tf, n)
                nll.index_add_(0, slot.reshape(-1), loss.reshape(-1))
                if n_buckets:
                    # bucket of the predicted token's index in its file (= input's doc_pos + 1)
                    b = torch.bucketize(tp + 1, edges, right=True).clamp_(0, n_buckets + 1)
                    b = torch.where(tt != IGNORE, b, n_buckets + 1).reshape(-1)
                    pos_nll.index_add_(0, b, loss.reshape(-1))
                    pos_cnt.index_add_(0, b, (tt != IGNORE).reshape(-1).long())
                if bar is not None:
                    valid = fid[fid >= 0]
                    done += np.bincount(valid, minlength=n)
                    bar.update(len(valid) / scale)
                    bar.set_postfix_str(f"files {(done >= preds).sum()}/{n}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
    for j, i in enumerate(usable):
        results[i].nll_nats = float(nll[j])
    if baselines:
        sizes = compressor_baselines(sub, vocab)
        for (xz, bz), i in zip(sizes, usable):
            results[i].xz_bytes, results[i].bzip2_bytes = xz, bz
    res = EvalResult(
        mode="stream" if stream else "per-file",
        split=split,
        unit=unit,
        lengths=L,
        batch_size=batch_size,
        files=results,
        sample_rate=sample_rate,
        seconds=seconds,
        device=str(device),
        dtype=dtype,
    )
    if n_buckets:
        # bucket k of bucketize(right=True) holds edges[k-1] <= x < edges[k]; keep the in-range ones
        res.position_edges = [int(e) for e in edges.tolist()]
        res.position_nll = pos_nll[1 : n_buckets + 1].tolist()
        res.position_tokens = pos_cnt[1 : n_buckets + 1].tolist()
    return res


def _progress(enabled: bool, total: float, unit: str, n_files: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=round(float(total), 2),
        unit=unit,
        unit_scale=False,
        disable=None,
        desc="evaluate",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} {unit} [{elapsed}<{remaining}{postfix}]",
    )


# ----------------------------------------------------------------------------------------------
# sources: a prepared corpus, or audio / text files tokenized on the fly


def corpus_documents(corpus: Any, split: str) -> tuple[list[np.ndarray], list[str]]:
    """Each file of a prepared corpus split as a token array (views into the memmap) and its name."""
    tokens = corpus.tokens(split)
    files = corpus.files(split)
    if not files:
        raise ValueError(f"corpus split {split!r} holds no files; choose another --split")
    docs = [tokens[int(f["offset"]) : int(f["offset"]) + int(f["length"])] for f in files]
    return docs, [str(f.get("path", f"file{i}")) for i, f in enumerate(files)]


def file_documents(tokenizer: Any, paths: Sequence[str | Path]) -> tuple[list[np.ndarray], list[str]]:
    """Audio files/folders (or text files for text tokenizers) tokenized with the checkpoint's tokenizer."""
    from txl_audio import audio

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (
                audio.find_audio_files(p)
                if tokenizer.unit == "sample"
                else sorted(q for q in p.rglob("*") if q.is_file())
            )
            if not found:
                raise FileNotFoundError(
                    f"{p}: folder holds no {'audio' if tokenizer.unit == 'sample' else ''} files"
                )
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    docs = []
    for p in files:
        if tokenizer.unit == "sample":
            docs.append(np.asarray(tokenizer.encode(audio.load_audio(p))).astype(np.int64))
        else:
            text = p.read_text(encoding="utf-8", errors="replace")
            enc = tokenizer.encode(text.splitlines() if tokenizer.unit == "word" else text)
            docs.append(np.asarray(enc).astype(np.int64))
    return docs, [str(p) for p in files]


def evaluate_corpus(model: torch.nn.Module, corpus: Any, split: str = "test", **kwargs: Any) -> EvalResult:
    """:func:`evaluate_tokens` on every file of a prepared corpus split (``Corpus`` from data.py)."""
    docs, names = corpus_documents(corpus, split)
    unit = getattr(corpus.tokenizer, "unit", "sample")
    kwargs.setdefault("sample_rate", _sample_rate(corpus.meta, unit))
    return evaluate_tokens(model, docs, names, unit=unit, split=split, **kwargs)


def evaluate_files(
    model: torch.nn.Module, tokenizer: Any, paths: Sequence[str | Path], **kwargs: Any
) -> EvalResult:
    """:func:`evaluate_tokens` on audio files or folders, tokenized on the fly."""
    from txl_audio.audio import SAMPLE_RATE

    docs, names = file_documents(tokenizer, paths)
    kwargs.setdefault("sample_rate", SAMPLE_RATE if tokenizer.unit == "sample" else None)
    return evaluate_tokens(model, docs, names, unit=tokenizer.unit, split="files", **kwargs)


def _sample_rate(meta: dict, unit: str) -> int | None:
    if unit != "sample":
        return None
    from txl_audio.audio import SAMPLE_RATE

    return int(meta.get("sample_rate") or SAMPLE_RATE)
