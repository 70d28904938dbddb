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
model can use a longer memory than it was trained with (as the paper does); they are a ``Lengths``
value passed to the model, the checkpoint's config is never changed.

Who owns what: :func:`score_lanes` owns the memory of a pass (one per batch of lanes, keys and values
included: the weights do not change during a pass); the lanes (which document goes where) come from
:mod:`txl_audio.data`. The trainer's validation calls the same :func:`score_lanes`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from txl_audio import audio
from txl_audio.baselines import bootstrap_ci, compressor_baselines, flac_encoder, pcm16_baselines
from txl_audio.config import Lengths
from txl_audio.data import IGNORE_INDEX, Corpus, FileLanes, LaneBatch, Lanes
from txl_audio.model import TransformerXL, compiled_layers
from txl_audio.tokenizers import metric_name

# ----------------------------------------------------------------------------------------------
# results


PCM16_LEVELS = 65_536

# The baselines a report may carry (baselines.py), in the order shown, with their labels
BASELINES = {"flac": "FLAC -8", "wavpack": "WavPack -hh -x6", "sac": "Sac --normal",
             "lpc": "LPC-32 + adaptive Laplace",
             "cascade": "cascade alone", "xz": "xz -9e", "bzip2": "bzip2 -9"}
PCM16_FIRST_SAMPLE_BITS = 16  # the model does not predict a file's first sample: stored as is


@dataclass
class FileResult:
    name: str
    tokens: int  # predictions (the file's length - 1)
    nll_nats: float  # summed over its predictions
    baseline_bits: dict[str, float] = field(default_factory=dict)  # code length of the same tokens
    # with evaluate_tokens(token_nll=True): (tokens,) float64 nats, entry i = the loss of token i + 1
    token_nll: np.ndarray | None = None

    @property
    def bits_per_token(self) -> float:
        return self.nll_nats / math.log(2) / max(self.tokens, 1)

    @property
    def xz_bytes(self) -> int | None:
        return None if "xz" not in self.baseline_bits else round(self.baseline_bits["xz"] / 8)

    @property
    def bzip2_bytes(self) -> int | None:
        return None if "bzip2" not in self.baseline_bits else round(self.baseline_bits["bzip2"] / 8)


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
    levels: int | None = None  # the vocabulary: 65,536 for 16-bit PCM (reported per 16-bit sample)
    cmem_ratio: int = 1  # a compressive model's positions per compressed slot

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
        return metric_name(self.unit, self.levels)

    def file_bits(self) -> np.ndarray:
        return np.array([f.bits_per_token for f in self.files if f.tokens > 0])

    @property
    def baseline_names(self) -> list[str]:
        present = {k for f in self.files for k in f.baseline_bits}
        return [k for k in BASELINES if k in present]

    @property
    def whole_files(self) -> bool:
        """16-bit audio: the baselines coded whole files (every sample), and the model is compared on
        whole files too (its first sample per file at 16 bits)."""
        return self.unit == "sample" and self.levels == PCM16_LEVELS

    def whole_file_bits(self) -> float:
        """The model's bits per sample of whole files: every predicted token's NLL plus 16 bits for
        each file's first sample, over all samples."""
        n = sum(1 for f in self.files if f.tokens > 0)
        return (self.nll_nats / math.log(2) + PCM16_FIRST_SAMPLE_BITS * n) / max(self.tokens + n, 1)

    def compressor_bits(self, which: str) -> float | None:
        """A baseline's bits per token over all files (None when it was not run); for 16-bit audio per
        sample of the whole files (the baselines code every sample)."""
        bits = [f.baseline_bits.get(which) for f in self.files if f.tokens > 0]
        if not bits or any(b is None for b in bits):
            return None
        return sum(bits) / max(self.tokens + (len(bits) if self.whole_files else 0), 1)

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
            **{f"{k}_bits_per_token": self.compressor_bits(k) for k in ("xz", "bzip2")},
            **{f"{k}_bits_per_token": self.compressor_bits(k) for k in self.baseline_names},
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
        if self.whole_files:
            d["whole_file_bits_per_sample"] = self.whole_file_bits()
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
            f"to up to {L.mem_len + L.tgt_len} previous tokens of its file"
            + (f", and to {L.cmem_len} compressed slots of {self.cmem_ratio} tokens each before them "
               f"(reach {L.mem_len + L.tgt_len + L.cmem_len * self.cmem_ratio} tokens)"
               if L.cmem_len else ""),
            f"model   {s['bits_per_token']:.4f} {self.metric} over all tokens; mean over files "
            f"{s['file_mean_bits_per_token']:.4f} (95% bootstrap CI {s['file_mean_ci95'][0]:.4f}"
            f"-{s['file_mean_ci95'][1]:.4f})",
        ]
        if self.unit == "word":
            lines.append(f"        perplexity {s['perplexity']:.2f}")
        width = max([9, *(len(BASELINES[k]) + 1 for k in self.baseline_names)])
        if self.whole_files and self.baseline_names:
            lines.append(f"{'model':<{width}}{s['whole_file_bits_per_sample']:.4f} "
                         f"{self.metric} of whole files "
                         f"(each file's first sample at {PCM16_FIRST_SAMPLE_BITS} bits), beside:")
        for name in self.baseline_names:
            label = f"{BASELINES[name]:<{width}}"
            what = "the same whole files, each alone" if self.whole_files else "same tokens, each file alone"
            lines.append(f"{label}{s[f'{name}_bits_per_token']:.4f} {self.metric} ({what})")
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
            names = self.baseline_names or ["xz", "bzip2"]
            whole = ["whole_file_bits_per_sample"] if self.whole_files else []
            w.writerow(["file", "tokens", f"bits_per_{u}", *whole, *(f"{k}_bits_per_{u}" for k in names)])
            for r in self.files:
                per = r.tokens + (1 if self.whole_files and r.tokens else 0)  # whole files: all samples
                base = ["" if k not in r.baseline_bits else f"{r.baseline_bits[k] / max(per, 1):.6f}"
                        for k in names]
                if whole:  # the model on the whole file: its first sample at 16 bits
                    wb = (r.nll_nats / math.log(2) + PCM16_FIRST_SAMPLE_BITS) / per if r.tokens else 0.0
                    base = [f"{wb:.6f}", *base]
                w.writerow([r.name, r.tokens, f"{r.bits_per_token:.6f}", *base])
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return out


# ----------------------------------------------------------------------------------------------
# the model pass


@dataclass
class LaneScores:
    """Summed NLL (nats) and predictions per document of a pass over lanes, optionally by the
    predicted token's position in its document (bucket k: edges[k-1] <= index < edges[k]), and
    optionally every prediction's own NLL (``token_nll[i][j]``: document i's token j + 1)."""

    nll: torch.Tensor  # (n_docs,) float64
    count: torch.Tensor  # (n_docs,) int64
    position_nll: torch.Tensor | None = None  # (n_buckets,) float64
    position_count: torch.Tensor | None = None  # (n_buckets,) int64
    token_nll: list[torch.Tensor] | None = None  # per document: (len - 1,) float64


@torch.inference_mode()
def score_lanes(
    model: TransformerXL,
    lanes: Lanes | FileLanes,
    n_docs: int,
    lengths: Lengths,
    *,
    autocast: Callable[[], Any] = nullcontext,
    position_edges: Sequence[int] | None = None,
    max_steps: int | None = None,
    on_batch: Callable[[LaneBatch], None] | None = None,
    token_nll: bool = False,
) -> LaneScores:
    """Run the model over ``lanes`` batch by batch, carrying the memory along each lane, and sum the
    NLL of every predicted token into its document (0 .. n_docs - 1). The memory's keys and values go
    along with it (``keep_kv``): the weights do not change during the pass. ``max_steps`` stops early
    (the trainer's capped validation). ``token_nll``: also keep every prediction's NLL, in its place in
    its document (per-file lanes only: there ``doc_pos`` is the index in the document). Used by
    :func:`evaluate_tokens` and the trainer's validation, so both report the same numbers for the same
    lanes."""
    device = next(model.parameters()).device
    nll = torch.zeros(n_docs + 1, dtype=torch.float64, device=device)  # last slot: no target
    cnt = torch.zeros(n_docs + 1, dtype=torch.int64, device=device)
    edges = torch.tensor(list(position_edges or []), dtype=torch.int64, device=device)
    n_buckets = max(len(edges) - 1, 0)
    pos_nll = torch.zeros(n_buckets + 2, dtype=torch.float64, device=device)
    pos_cnt = torch.zeros(n_buckets + 2, dtype=torch.int64, device=device)
    if token_nll:
        if not isinstance(lanes, FileLanes):
            raise ValueError("per-token NLL needs per-file lanes (FileLanes: each document from its start)")
        n_pred = [max(len(d) - 1, 0) for d in lanes.docs]  # document i's predictions
        first = torch.tensor(np.cumsum([0, *n_pred[:-1]]), dtype=torch.int64, device=device)  # (n_docs,)
        flat = torch.zeros(sum(n_pred) + 1, dtype=torch.float64, device=device)  # last slot: no target
    mems = None
    steps = lanes.n_steps if max_steps is None else min(max_steps, lanes.n_steps)
    for step in range(steps):
        b = lanes.batch(step)
        tokens, targets, doc_pos, doc = (
            torch.from_numpy(a).to(device, non_blocking=True) for a in (b.tokens, b.targets, b.doc_pos, b.doc)
        )
        with autocast():
            out = model(tokens, mems, targets, doc_pos, lengths=lengths, return_logits=False, keep_kv=True)
        mems = out.mems
        predicted = targets != IGNORE_INDEX
        loss = torch.where(predicted, out.loss.float(), 0.0).double().reshape(-1)  # (B*T,)
        slot = torch.where(doc >= 0, doc, n_docs).reshape(-1)
        nll.index_add_(0, slot, loss)
        cnt.index_add_(0, slot, predicted.reshape(-1).long())
        if n_buckets:
            # bucket of the predicted token's index in its file (= input's doc_pos + 1)
            k = torch.bucketize(doc_pos + 1, edges, right=True).clamp_(0, n_buckets + 1)
            k = torch.where(predicted, k, n_buckets + 1).reshape(-1)
            pos_nll.index_add_(0, k, loss)
            pos_cnt.index_add_(0, k, predicted.reshape(-1).long())
        if token_nll:
            # the prediction of token doc_pos + 1 of document doc sits at first[doc] + doc_pos
            at = torch.where(predicted, first[doc.clamp(min=0)] + doc_pos, len(flat) - 1).reshape(-1)
            flat.index_add_(0, at, loss)
        if on_batch is not None:
            on_batch(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    scores = LaneScores(nll[:n_docs], cnt[:n_docs])
    if n_buckets:
        # bucket k of bucketize(right=True) holds edges[k-1] <= x < edges[k]; keep the in-range ones
        scores.position_nll, scores.position_count = pos_nll[1 : n_buckets + 1], pos_cnt[1 : n_buckets + 1]
    if token_nll:
        scores.token_nll = list(flat[:-1].split(n_pred))
    return scores


def evaluate_tokens(
    model: TransformerXL,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    unit: str = "sample",
    split: str = "files",
    mem_len: int | None = None,
    tgt_len: int | None = None,
    clamp_len: int | None = None,
    same_length: bool | None = None,
    cmem_len: int | None = None,
    batch_size: int = 8,
    stream: bool = False,
    dtype: str = "fp32",
    baselines: bool = True,
    position_edges: Sequence[int] | None = None,
    sample_rate: int | None = None,
    progress: bool = True,
    compile: bool = False,
    token_nll: bool = False,
) -> EvalResult:
    """Evaluate the model on token documents (1-D integer arrays); the model stays on its device.

    Per-file mode (default): every document from an empty memory, many per batch (segments aligned to
    each document's start, so the result equals evaluating each alone). ``stream=True``: the documents
    in order as one stream cut into ``batch_size`` lanes, memory carried across segments.
    ``mem_len``, ``tgt_len``, ``clamp_len``, ``same_length``, ``cmem_len``: the lengths to evaluate with
    (None = the trained value; see ``ModelConfig.lengths``). ``position_edges``: also sum the loss by the
    predicted token's index in its file, bucketed. ``compile``: run the model's layers through
    ``torch.compile`` (worth its start-up time on a GPU and a large split; the result equals the plain
    path up to float rounding). ``token_nll``: also return every prediction's NLL in nats
    (``FileResult.token_nll``; per-file mode only), from the same pass that gives the totals.
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if token_nll and stream:
        raise ValueError("per-token NLL is kept in per-file mode only; evaluate without stream=True")
    L = model.config.lengths(mem_len, tgt_len, clamp_len, same_length, cmem_len)
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
    sub = [docs[i] for i in usable]
    if stream:
        lanes: Lanes | FileLanes = Lanes.of_documents(sub, batch_size, L.tgt_len)
    else:
        lanes = FileLanes(sub, batch_size, L.tgt_len)
    n = len(sub)
    preds = np.array([len(d) - 1 for d in sub])
    scale = sample_rate or 1
    bar = _progress(progress, preds.sum() / scale, "s audio" if sample_rate else "tok")
    done = np.zeros(n, np.int64)

    def on_batch(b: LaneBatch) -> None:
        valid = b.doc[b.doc >= 0]
        done[:] += np.bincount(valid, minlength=n)
        bar.update(len(valid) / scale)
        bar.set_postfix_str(f"files {(done >= preds).sum()}/{n}", refresh=False)

    bf16 = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731
    t0 = time.perf_counter()
    with compiled_layers(model, compile):
        scores = score_lanes(model, lanes, n, L, autocast=bf16 if dtype == "bf16" else nullcontext,
                             position_edges=position_edges, on_batch=None if bar is None else on_batch,
                             token_nll=token_nll)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    results = [FileResult(names[i], max(len(docs[i]) - 1, 0), 0.0) for i in range(len(docs))]
    for j, i in enumerate(usable):
        results[i].nll_nats = float(scores.nll[j])
        if scores.token_nll is not None:
            results[i].token_nll = scores.token_nll[j].cpu().numpy()
    pcm16 = unit == "sample" and vocab == PCM16_LEVELS
    if baselines and pcm16:
        for bits, i in zip(pcm16_baselines(sub, sample_rate or audio.SAMPLE_RATE), usable):
            results[i].baseline_bits = bits
    elif baselines:
        for (xz, bz), i in zip(compressor_baselines(sub, vocab), usable):
            results[i].baseline_bits = {"xz": 8.0 * xz, "bzip2": 8.0 * bz}
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
        levels=vocab,
        cmem_ratio=model.config.cmem_ratio,
    )
    if baselines and pcm16:
        res.extra["flac_encoder"] = flac_encoder()
    if scores.position_nll is not None:
        res.position_edges = [int(e) for e in position_edges]
        res.position_nll = scores.position_nll.tolist()
        res.position_tokens = scores.position_count.tolist()
    return res


def _progress(enabled: bool, total: float, unit: str):
    if not enabled:
        return None
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


def corpus_documents(corpus: Corpus, split: str) -> tuple[list[np.ndarray], list[str]]:
    """Each file of a prepared corpus split as a token array (views into the memmap) and its name."""
    tokens = corpus.tokens(split)
    files = corpus.files(split)
    if not files:
        raise ValueError(f"corpus split {split!r} holds no files; choose another --split")
    docs = [tokens[int(f["offset"]) : int(f["offset"]) + int(f["length"])] for f in files]
    return docs, [str(f.get("path", f"file{i}")) for i, f in enumerate(files)]


def file_documents(tokenizer: Any, paths: Sequence[str | Path]) -> tuple[list[np.ndarray], list[str]]:
    """Audio files/folders (or text files for text tokenizers) tokenized with the checkpoint's tokenizer."""
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
                    f"{p}: folder holds no {'audio' if tokenizer.unit == 'sample' else 'text'} files"
                )
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return [tokenize_file(tokenizer, p) for p in files], [str(p) for p in files]


def tokenize_file(tokenizer: Any, path: str | Path) -> np.ndarray:
    """One file as the model's int64 tokens: audio (mono, 16 kHz, see :func:`audio.load_audio`; an
    unusable file is an AudioError naming it) for an audio tokenizer, UTF-8 text otherwise (words: one
    ``<eos>`` per line)."""
    if tokenizer.unit == "sample":
        return np.asarray(tokenizer.encode(audio.load_audio(path))).astype(np.int64)
    return tokenize_text(tokenizer, Path(path).read_text(encoding="utf-8", errors="replace"))


def tokenize_text(tokenizer: Any, text: str) -> np.ndarray:
    """Text as a text model's int64 tokens, as a text file is read for evaluation (words: one ``<eos>``
    per line)."""
    enc = tokenizer.encode(text.splitlines() if tokenizer.unit == "word" else text)
    return np.asarray(enc).astype(np.int64)


@dataclass
class Documents:
    """What a command evaluates: token documents, their names, the unit, the sample rate (audio) and
    a label for the split."""

    docs: list[np.ndarray]
    names: list[str]
    unit: str
    sample_rate: int | None
    split: str


def load_documents(tokenizer: Any, corpus: str | Path | None = None, split: str = "test",
                   paths: Sequence[str | Path] | None = None) -> Documents:
    """A prepared corpus split (``corpus``, ``split``) or files (``paths``) as documents for a model
    with ``tokenizer``; a corpus prepared with another tokenizer is refused."""
    if corpus is not None:
        c = Corpus(corpus)
        if c.tokenizer.to_dict() != tokenizer.to_dict():
            raise ValueError(
                f"corpus {corpus} was tokenized with {c.tokenizer.to_dict()} but the checkpoint "
                f"uses {tokenizer.to_dict()}; prepare the corpus with the checkpoint's tokenizer"
            )
        docs, names = corpus_documents(c, split)
        sr = int(c.sample_rate or audio.SAMPLE_RATE) if tokenizer.unit == "sample" else None
        return Documents(docs, names, tokenizer.unit, sr, split)
    if not paths:
        raise ValueError("give a corpus or some files to evaluate")
    docs, names = file_documents(tokenizer, paths)
    sr = audio.SAMPLE_RATE if tokenizer.unit == "sample" else None
    return Documents(docs, names, tokenizer.unit, sr, "files")
