"""Prepared corpora on disk, and the ordered segment streams Transformer-XL trains and evaluates on.

A prepared corpus is a folder:

- ``meta.json``: format version, kind (audio or text), tokenizer (``to_dict()``), sample rate, token
  dtype, per-split totals, conversion counts, and one entry per source file (path, speaker, split,
  token offset and length inside its split's shard);
- ``train.bin``, ``valid.bin``, ``test.bin``: every file of the split, concatenated, as raw tokens of
  the smallest unsigned dtype holding the vocabulary (read back with ``numpy.memmap``);
- ``skipped.tsv`` (audio): files left out, with the reason.

``txl_audio.prepare`` builds such folders (``prepare_audio``, ``prepare_text``) with the
:class:`CorpusWriter` defined here; this module does not import it.

Cutting documents into the B parallel lanes a Transformer-XL reads (its memory carries along a lane
from one batch to the next) is done here, in one place, for everything that runs the model over a
split: :class:`Lanes` (documents end to end, cut into contiguous lanes: training, validation and
``evaluate --stream``) and :class:`FileLanes` (each document from a segment start with an empty
memory: per-file evaluation). :class:`SegmentStream` serves a corpus split as :class:`Lanes` batches
with epochs, shuffling, process sharding and an exact resume position.

``IGNORE_INDEX`` marks a target with nothing to predict (the last token of a file, padding); the
model's loss is 0 there. This module imports no torch at module level: ``prepare`` (and its worker
processes) import it, and ``import torch`` costs 1.1 s there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from txl_audio.errors import TxlAudioError
from txl_audio.tokenizers import token_dtype, tokenizer_from_dict

if TYPE_CHECKING:  # torch is imported where batches are made (see the module docstring)
    import torch

FORMAT_NAME = "txl_audio corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100  # target of a position that predicts nothing; the model's loss is 0 there


class CorpusError(TxlAudioError, ValueError):
    """A folder that is not a (complete) prepared corpus, or a request it cannot serve."""


# --------------------------------------------------------------------------------------------
# writing


class CorpusWriter:
    """Writes a corpus into a temporary folder next to ``out_dir`` and moves it into place on
    ``commit``, so an existing corpus at ``out_dir`` is replaced whole or not at all.

    Use as a context manager: an exception inside the ``with`` block removes the temporary folder
    and leaves ``out_dir`` untouched.
    """

    def __init__(self, out_dir: str | Path, tokenizer: Any, kind: str, sample_rate: int | None = None):
        self.out_dir = Path(out_dir)
        check_replaceable(self.out_dir)
        self.tokenizer = tokenizer
        self.kind = kind
        self.sample_rate = sample_rate
        self.dtype = np.dtype(token_dtype(tokenizer.vocab_size))
        self.files: list[dict[str, Any]] = []
        self.split_tokens = {s: 0 for s in SPLITS}
        self.split_files = {s: 0 for s in SPLITS}
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}"
        if self.tmp_dir.exists():  # left by a killed run of this same process id
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir()
        self._shards: dict[str, BinaryIO] = {s: open(self.tmp_dir / f"{s}.bin", "wb") for s in SPLITS}

    def add(self, split: str, tokens: np.ndarray, path: str, speaker: str | None = None,
            **extra: Any) -> dict[str, Any]:
        """Append one file's tokens to ``split``; returns its meta.json entry."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype).reshape(-1)
        entry = {"path": path, "speaker": speaker, "split": split,
                 "offset": self.split_tokens[split], "length": int(tokens.size), **extra}
        self._shards[split].write(tokens.tobytes())
        self.split_tokens[split] += int(tokens.size)
        self.split_files[split] += 1
        self.files.append(entry)
        return entry

    def write_text(self, name: str, text: str) -> None:
        (self.tmp_dir / name).write_text(text, encoding="utf-8")

    def commit(self, **meta_extra: Any) -> Path:
        """Write meta.json and move the folder into place; returns ``out_dir``."""
        for f in self._shards.values():
            f.close()
        splits = {}
        for s in SPLITS:
            splits[s] = {"files": self.split_files[s], "tokens": self.split_tokens[s]}
            if self.sample_rate:
                splits[s]["seconds"] = round(self.split_tokens[s] / self.sample_rate, 3)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "tokenizer": self.tokenizer.to_dict(),
            "unit": self.tokenizer.unit,
            "vocab_size": int(self.tokenizer.vocab_size),
            "sample_rate": self.sample_rate,
            "dtype": self.dtype.name,
            "splits": splits,
            **meta_extra,
            "files": self.files,  # last: the long part
        }
        # no timestamps, insertion-ordered keys: the same input gives byte-identical output
        (self.tmp_dir / "meta.json").write_text(_meta_json(meta), encoding="utf-8")
        _replace_dir(self.tmp_dir, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        for f in self._shards.values():
            f.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp_dir.exists():
            self.abort()  # after a successful commit tmp_dir no longer exists: nothing to do


def _meta_json(meta: dict[str, Any]) -> str:
    """Indented JSON, except one line per file entry (a corpus can list millions of files)."""
    head = {k: v for k, v in meta.items() if k != "files"}
    text = json.dumps({**head, "files": []}, indent=1, ensure_ascii=False)
    assert text.endswith('"files": []\n}')
    rows = ",\n".join("  " + json.dumps(f, ensure_ascii=False) for f in meta["files"])
    return text[: -len("[]\n}")] + ("[\n" + rows + "\n ]\n}\n" if rows else "[]\n}\n")


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than a prepared corpus."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CorpusError(f"output path {out_dir} exists and is not a folder; choose another --out")
        if any(out_dir.iterdir()) and not (out_dir / "meta.json").is_file():
            raise CorpusError(
                f"output folder {out_dir} is not empty and is not a prepared corpus (no meta.json); "
                "refusing to replace it: choose another --out or empty it")


def _replace_dir(new: Path, dest: Path) -> None:
    # Two renames instead of one because a non-empty folder cannot be renamed over another.
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old)
    else:
        os.rename(new, dest)


# --------------------------------------------------------------------------------------------
# reading


class Corpus:
    """A prepared corpus folder: ``meta``, ``tokenizer``, ``tokens(split)``, ``files(split)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        hint = "prepare one with `txl-audio prepare-audio` or `txl-audio prepare-text`"
        if not self.path.exists():
            raise FileNotFoundError(f"corpus folder {self.path} does not exist; {hint}")
        if not meta_path.is_file():
            raise CorpusError(f"{self.path} is not a prepared corpus (no meta.json); {hint}")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(f"{meta_path} is not valid JSON ({e}); prepare the corpus again") from None
        if self.meta.get("format") != FORMAT_NAME or self.meta.get("version") != FORMAT_VERSION:
            raise CorpusError(
                f"{meta_path} is not a txl_audio corpus of format version {FORMAT_VERSION} "
                f"(format={self.meta.get('format')!r}, version={self.meta.get('version')!r}); {hint}")
        self.dtype = np.dtype(self.meta["dtype"])

    @cached_property
    def tokenizer(self) -> Any:
        return tokenizer_from_dict(self.meta["tokenizer"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def sample_rate(self) -> int | None:
        return self.meta.get("sample_rate")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def _check_split(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise CorpusError(f"corpus {self.path} has no split {split!r}; it has {self.splits}")

    def n_tokens(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """All tokens of ``split`` as a read-only memmap (1-D, the corpus dtype)."""
        n = self.n_tokens(split)
        shard = self.path / f"{split}.bin"
        if not shard.is_file():
            raise CorpusError(f"corpus {self.path} is incomplete: {shard.name} is missing; prepare it again")
        size = shard.stat().st_size
        if size != n * self.dtype.itemsize:
            raise CorpusError(f"{shard} holds {size} bytes but meta.json says {n} tokens of "
                              f"{self.dtype.name}; the corpus is damaged: prepare it again")
        if n == 0:
            return np.zeros(0, dtype=self.dtype)  # numpy cannot map an empty file
        return np.memmap(shard, dtype=self.dtype, mode="r", shape=(n,))

    def files(self, split: str) -> list[dict[str, Any]]:
        """meta.json entries (path, speaker, split, offset, length, ...) of ``split`` in shard order."""
        self._check_split(split)
        return [f for f in self.meta["files"] if f["split"] == split]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={v['tokens']}" for s, v in self.meta["splits"].items())
        return f"Corpus({str(self.path)!r}, {self.meta['kind']}, tokens: {sizes})"


# --------------------------------------------------------------------------------------------
# lanes: documents cut into the batch's parallel streams


@dataclass
class LaneBatch:
    """One step's (B, T) arrays (int64): the input tokens, their targets (the next token of the same
    document, IGNORE_INDEX otherwise), each token's position in its document (counted from the lane's
    start if the lane began inside it; attention never reaches further back), and the document of
    each target (-1 where there is none)."""

    tokens: np.ndarray
    targets: np.ndarray
    doc_pos: np.ndarray
    doc: np.ndarray


class Lanes:
    """Documents laid end to end in the given order, cut into ``n_lanes`` contiguous lanes of
    L = ceil(N / n_lanes) tokens (the paper's ordered streams); this process reads lanes
    ``first_lane .. first_lane + batch_size - 1``. Batch k holds tokens k*T .. k*T+T-1 of each of its
    lanes, so the model's memory carries from one batch to the next; positions past a lane's end are
    padding (token 0, target IGNORE_INDEX, doc_pos 0).

    Targets never cross a document boundary: the last token of a document predicts nothing, so a
    document of n tokens contributes n - 1 predictions, each exactly once over all lanes (a lane's
    last position predicts the first token of the next lane when both are in the same document).

    ``data``: 1-D token array (a memmap is read lazily); document i is
    ``data[offsets[i] : offsets[i] + lengths[i]]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, n_lanes: int,
                 tgt_len: int, first_lane: int = 0, batch_size: int | None = None) -> None:
        if n_lanes < 1 or tgt_len < 1:
            raise ValueError(f"lanes need n_lanes >= 1 and tgt_len >= 1, got {n_lanes} and {tgt_len}")
        self.data, self.tgt_len = data, tgt_len
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # in the lanes
        self.n_tokens = int(self.lengths.sum())
        self.lane_len = math.ceil(self.n_tokens / n_lanes)
        self.n_steps = math.ceil(self.lane_len / tgt_len)
        B = n_lanes - first_lane if batch_size is None else batch_size
        lane = first_lane + np.arange(B, dtype=np.int64)
        self.lane_start = lane * self.lane_len  # (B,); lane g covers [g * L, min((g + 1) * L, N))
        self.lane_end = np.minimum(self.lane_start + self.lane_len, self.n_tokens)

    @classmethod
    def of_documents(cls, docs: Sequence[np.ndarray], n_lanes: int, tgt_len: int) -> Lanes:
        """Lanes over token arrays held in memory (concatenated once, in the corpus dtype)."""
        data = np.concatenate([np.asarray(d) for d in docs])
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        return cls(data, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths, n_lanes, tgt_len)

    def batch(self, k: int) -> LaneBatch:
        T, N = self.tgt_len, self.n_tokens
        # positions in the documents' sequence, one extra for the last target
        v = self.lane_start[:, None] + k * T + np.arange(T + 1)[None, :]  # (B, T+1)
        vc = np.minimum(v, N - 1)
        doc = np.searchsorted(self.starts, vc, side="right") - 1  # (B, T+1) document of each position
        dstart = self.starts[doc]
        tok = self.data[self.offsets[doc] + (vc - dstart)].astype(np.int64)  # (B, T+1)
        live = v[:, :T] < self.lane_end[:, None]  # (B, T) inside this lane
        has_next = live & (v[:, 1:] < N) & (doc[:, 1:] == doc[:, :T])
        since = np.maximum(dstart[:, :T], self.lane_start[:, None])  # document start, or lane start
        return LaneBatch(
            tokens=np.where(live, tok[:, :T], 0),
            targets=np.where(has_next, tok[:, 1:], IGNORE_INDEX),
            doc_pos=np.where(live, v[:, :T] - since, 0),
            doc=np.where(has_next, doc[:, :T], -1),
        )


class FileLanes:
    """Each document starts at a segment boundary of some lane with an empty memory, so it is cut into
    segments exactly as when it is read alone: its last segment is padded (targets ignored) and the
    next document's first token has doc_pos 0, so nothing crosses the boundary. Documents go
    longest-first onto the shortest lane. Same batches as :class:`Lanes`."""

    def __init__(self, docs: Sequence[np.ndarray], batch_size: int, tgt_len: int) -> None:
        self.docs, self.tgt_len = docs, tgt_len
        n_seg = [math.ceil((len(d) - 1) / tgt_len) for d in docs]
        lanes: list[list[tuple[int, int]]] = [[] for _ in range(min(batch_size, max(1, len(docs))))]
        for i in sorted(range(len(docs)), key=lambda i: -n_seg[i]):
            lane = min(lanes, key=len)
            lane.extend((i, k) for k in range(n_seg[i]))
        self.lanes = [lane for lane in lanes if lane] or [[]]
        self.n_steps = max(len(lane) for lane in self.lanes)

    def batch(self, step: int) -> LaneBatch:
        B, T = len(self.lanes), self.tgt_len
        out = LaneBatch(np.zeros((B, T), np.int64), np.full((B, T), IGNORE_INDEX, np.int64),
                        np.zeros((B, T), np.int64), np.full((B, T), -1, np.int64))
        for b, lane in enumerate(self.lanes):
            if step >= len(lane):
                continue
            i, k = lane[step]
            d = self.docs[i]
            lo, hi = k * T, min(k * T + T, len(d) - 1)
            out.tokens[b, : hi - lo] = d[lo:hi]
            out.targets[b, : hi - lo] = d[lo + 1 : hi + 1]
            # the padding continues the file: it sees the file, nothing sees it
            out.doc_pos[b] = np.arange(lo, lo + T)
            out.doc[b, : hi - lo] = i
        return out


# --------------------------------------------------------------------------------------------
# streaming a corpus split


@dataclass
class Batch:
    """One step's input for B parallel streams of T tokens."""

    tokens: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64: next token of the same file, IGNORE_INDEX otherwise
    doc_pos: torch.Tensor  # (B, T) int64: position in its file, counted from the stream start at most
    epoch: int
    index: int  # batch number within the epoch

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        return Batch(self.tokens.to(device, non_blocking=non_blocking),
                     self.targets.to(device, non_blocking=non_blocking),
                     self.doc_pos.to(device, non_blocking=non_blocking), self.epoch, self.index)

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


class SegmentStream:
    """Batches of ``batch_size`` parallel streams of ``tgt_len`` tokens of a corpus split, for
    Transformer-XL training and validation: the split's :class:`Lanes` with epochs.

    Per epoch the split's files are put in order (a seeded permutation when ``shuffle``, the
    prepared order otherwise) and cut into S = batch_size * world_size lanes; process ``rank`` owns
    lanes rank*B .. rank*B+B-1. Every rank gets ceil(L / T) batches per epoch (see :class:`Lanes` for
    targets, doc_pos and padding). A file of n tokens contributes n - 1 predictions, each exactly once
    per epoch over all ranks.

    ``epochs``: number of passes; None = endless. The default ("auto") is endless when ``shuffle``
    (training) and one pass otherwise (evaluation). A finished finite pass resets the position,
    so iterating again repeats it. ``state_dict``/``load_state_dict`` save and restore the exact
    position; the file order of epoch e is drawn from a generator seeded with (seed, e), so the
    epoch number is the whole RNG state.
    """

    def __init__(self, corpus: Corpus | str | Path, split: str, batch_size: int, tgt_len: int,
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epochs: int | None | str = "auto"):
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        if batch_size < 1 or tgt_len < 1:
            raise ValueError(f"batch_size and tgt_len must be >= 1, got {batch_size} and {tgt_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        self.split, self.batch_size, self.tgt_len = split, batch_size, tgt_len
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epochs = (None if shuffle else 1) if epochs == "auto" else epochs
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {self.epochs}")
        files = self.corpus.files(split)
        self.data = self.corpus.tokens(split)
        self.n_tokens = int(self.data.size)
        if self.n_tokens == 0:
            raise CorpusError(f"split {split!r} of corpus {self.corpus.path} is empty; nothing to stream")
        self._offsets = np.array([f["offset"] for f in files], dtype=np.int64)
        self._lengths = np.array([f["length"] for f in files], dtype=np.int64)
        self.stream_len = math.ceil(self.n_tokens / (batch_size * world_size))
        self.batches_per_epoch = math.ceil(self.stream_len / tgt_len)
        self._epoch = 0
        self._batch = 0
        self._lanes: tuple[int, Lanes] | None = None  # (epoch, its lanes)

    # -- position --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batch": self._batch, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size, "tgt_len": self.tgt_len,
                "world_size": self.world_size, "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "shuffle", "batch_size", "tgt_len", "world_size", "n_tokens"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"cannot resume this stream: saved {key}={state.get(key)!r} but this stream has "
                    f"{key}={getattr(self, key)!r} (resuming needs the same data and batch layout)")
        if not 0 <= state["batch"] <= self.batches_per_epoch:
            raise ValueError(f"saved batch {state['batch']} is outside 0..{self.batches_per_epoch}")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless SegmentStream (epochs=None) has no length")
        return self.batches_per_epoch * self.epochs

    # -- batches ---------------------------------------------------------------------------
    def lanes(self, epoch: int = 0) -> Lanes:
        """This process's lanes of epoch ``epoch`` (the files in that epoch's order)."""
        if self._lanes is None or self._lanes[0] != epoch:
            n = self._lengths.size
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            lanes = Lanes(self.data, self._offsets[order], self._lengths[order],
                          self.batch_size * self.world_size, self.tgt_len,
                          first_lane=self.rank * self.batch_size, batch_size=self.batch_size)
            self._lanes = (epoch, lanes)
        return self._lanes[1]

    def batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of epoch ``epoch`` (pure: does not move the stream's position)."""
        import torch  # here, not at the top: see the module docstring

        b = self.lanes(epoch).batch(index)
        return Batch(torch.from_numpy(b.tokens), torch.from_numpy(b.targets), torch.from_numpy(b.doc_pos),
                     epoch, index)

    def __iter__(self):
        while self.epochs is None or self._epoch < self.epochs:
            while self._batch < self.batches_per_epoch:
                epoch, index = self._epoch, self._batch
                self._batch += 1  # before yielding: a state saved now resumes at the next batch
                yield self.batch(epoch, index)
            self._epoch += 1
            self._batch = 0
        self._epoch = 0  # a finished finite pass starts over when iterated again
