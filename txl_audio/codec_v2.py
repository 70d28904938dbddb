"""Reading version-2 ``.txla`` files (txl-audio before the portable codec): kept so that files made
then still decode. Version 2 coded with the float model's own probabilities (``model.step`` through
:class:`~txl_audio.decoders.CachedDecoder`, float64 tables from its softmax or mixture), which are the
same only on the kind of machine that made them: such a file decodes with the checkpoint that made it,
the same torch version and the same kind of device (and CPU). New files are version 3
(:mod:`txl_audio.codec`), which decode anywhere.

The layout: magic, version, a zlib-compressed JSON header (model hash, tokenizer, sample rate, samples,
chunk layout, torch version, device kind, threads, SHA-256 of the samples, CRC-32 of the payload), then
one range code per batch of chunks (constriction's categorical model; a 16-bit sample as its high byte
then its low byte).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch

from txl_audio.codec import MAGIC, CodecError, config_json
from txl_audio.decoders import CachedDecoder
from txl_audio.model import TransformerXL
from txl_audio.model.sampling import Predicted
from txl_audio.tokenizers import start_token, tokenizer_from_dict

VERSION = 2  # 2: the JSON header zlib-compressed, without the model's config (its hash identifies it)


# ----------------------------------------------------------------------------------------------------
# what the coder needs from a model


def model_hash(model: TransformerXL) -> str:
    """SHA-256 of the model's config and weights (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256(config_json(model.config).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sixteen_bit(model: TransformerXL) -> bool:
    return model.config.vocab_size == 65_536


@dataclass
class Tables:
    """One step's symbols for a batch: the probability tables (n, K) float64 of the rows that code a
    sample now, and how their tokens map to and from the symbols."""

    model: TransformerXL
    predicted: Predicted  # (B,) the next token's distribution for every chunk of the batch

    def _head_params(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(rows, device=self.predicted.params[0].device)
        return tuple(p[idx] for p in self.predicted.params)

    def first(self, rows: np.ndarray) -> np.ndarray:
        """The first symbol's table: the whole distribution (8/10-bit), or the high byte's (16-bit)."""
        head = self.predicted.head
        if head is None:
            p = torch.softmax(self._head_params(rows)[0].double(), -1)
            if p.shape[-1] == 65_536:  # a 65,536-way softmax: its high bytes
                p = p.view(-1, 256, 256).sum(-1)
            return p.cpu().numpy()
        return head.coarse_probs(self._head_params(rows)).cpu().numpy()

    def second(self, rows: np.ndarray, first: np.ndarray) -> np.ndarray | None:
        """The second symbol's table given the first (16-bit: the low byte), or None (8/10-bit)."""
        if not sixteen_bit(self.model):
            return None
        head = self.predicted.head
        params = self._head_params(rows)
        c = torch.as_tensor(first, device=params[0].device, dtype=torch.long)
        if head is None:
            p = torch.softmax(params[0].double(), -1).view(-1, 256, 256)
            p = p[torch.arange(len(rows), device=p.device), c]
            return (p / p.sum(-1, keepdim=True)).cpu().numpy()
        return head.fine_probs(params, c).cpu().numpy()

    def symbols(self, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """tokens -> the coded 16-bit symbol (identity but for the dual softmax's residual)."""
        head = self.predicted.head
        if head is None or not sixteen_bit(self.model):
            return tokens
        t = torch.as_tensor(tokens, device=self.predicted.params[0].device, dtype=torch.long)
        return head.symbol(self._head_params(rows), t).cpu().numpy()

    def tokens(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        head = self.predicted.head
        if head is None or not sixteen_bit(self.model):
            return symbols
        s = torch.as_tensor(symbols, device=self.predicted.params[0].device, dtype=torch.long)
        return head.token(self._head_params(rows), s).cpu().numpy()


_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _log2(p: np.ndarray) -> float:
    """Sum of log2 p, a probability that underflowed to 0 counted at the smallest float's (-1022 bits)."""
    return float(np.log2(np.maximum(p, np.finfo(np.float64).tiny)).sum())


# ----------------------------------------------------------------------------------------------------
# one batch of chunks


StepFn = Callable[["Tables", int, np.ndarray], np.ndarray]
Progress = Callable[[int], None] | None


def _group_steps(model: TransformerXL, chunks: Sequence[np.ndarray], start: int, cuda_graph: bool | None,
                 on_step: Progress, step_fn: StepFn) -> None:
    """Run a batch of chunks step by step: at step t the rows whose chunk has a sample t get their
    tables; ``step_fn(tables, t, rows)`` codes them and returns their tokens, which are fed next."""
    B = len(chunks)
    lengths = np.array([len(c) for c in chunks])
    device = next(model.parameters()).device
    dec = CachedDecoder(model, B, cuda_graph=cuda_graph)
    predicted = dec.prefill(torch.full((B, 1), start, dtype=torch.long, device=device))
    feed = np.full(B, start, dtype=np.int64)
    for t in range(int(lengths.max())):
        rows = np.nonzero(lengths > t)[0]
        feed[rows] = step_fn(Tables(model, predicted), t, rows)
        if t + 1 < lengths.max():
            predicted = dec.step(torch.as_tensor(feed, device=device))
        if on_step is not None:
            on_step(len(rows))


def decode_group(model: TransformerXL, words: np.ndarray, lengths: Sequence[int], start: int,
                 cuda_graph: bool | None = None, on_step: Progress = None) -> list[np.ndarray]:
    """The inverse of :func:`encode_group`: the chunks' tokens from their range code."""
    dec = constriction.stream.queue.RangeDecoder(words)
    out = np.zeros((len(lengths), max(lengths)), dtype=np.int64)

    def code(tables: Tables, t: int, rows: np.ndarray) -> np.ndarray:
        hi = np.asarray(dec.decode(_FAMILY, tables.first(rows)), dtype=np.int64)
        second = tables.second(rows, hi)
        sym = hi if second is None else hi * 256 + np.asarray(dec.decode(_FAMILY, second), dtype=np.int64)
        out[rows, t] = tables.tokens(rows, sym)
        return out[rows, t]

    with torch.inference_mode():
        _group_steps(model, [np.zeros(n) for n in lengths], start, cuda_graph, on_step, code)
    return [out[i, :n] for i, n in enumerate(lengths)]


# ----------------------------------------------------------------------------------------------------
# the container


@dataclass
class Header:
    model_hash: str  # of the weights and the config
    tokenizer: dict[str, Any]
    sample_rate: int
    samples: int  # tokens in the file
    chunk: int  # samples per chunk
    batch: int  # chunks decoded together
    groups: list[list[int]]  # per batch of chunks: [payload bytes, its chunks]
    lossless: str  # "int16 samples" or "tokens"
    sha256: str  # of the samples (16-bit: int16 little endian) or the tokens (uint16 little endian)
    payload_crc32: int
    torch: str
    device: str  # the device kind the probabilities were computed on (cpu / cuda)
    threads: int  # torch CPU threads then (float results may depend on them)
    cuda_graph: bool
    source: str = ""
    created_with: str = "txl-audio"
    extra: dict[str, Any] = field(default_factory=dict)


def read_container(path: str | Path, data: bytes) -> tuple[Header, bytes]:
    """Header and payload of a version-2 ``.txla`` file's bytes; a CodecError naming it for anything
    wrong."""
    if data[:4] != MAGIC:
        raise CodecError(f"{path}: not a txl-audio compressed file (no {MAGIC.decode()} magic)")
    if len(data) < 9:
        raise CodecError(f"{path}: truncated (the header is cut off)")
    version, n = struct.unpack("<BI", data[4:9])
    if version != VERSION:
        raise CodecError(f"{path}: container version {version}; this txl-audio reads version {VERSION}")
    try:
        header = Header(**json.loads(zlib.decompress(data[9 : 9 + n]).decode()))
    except (ValueError, TypeError, UnicodeDecodeError, zlib.error) as e:
        raise CodecError(f"{path}: the header is damaged ({type(e).__name__}); the file is corrupt") from None
    payload = data[9 + n :]
    expected = sum(g[0] for g in header.groups)
    if len(payload) != expected:
        raise CodecError(f"{path}: truncated or damaged: {len(payload)} payload bytes, the header says "
                         f"{expected}")
    if zlib.crc32(payload) != header.payload_crc32:
        raise CodecError(f"{path}: the payload is corrupt (CRC-32 mismatch)")
    return header, payload


def _digest(tokens: np.ndarray, sixteen: bool) -> str:
    if sixteen:
        return hashlib.sha256((tokens.astype(np.int64) - 32_768).astype("<i2").tobytes()).hexdigest()
    return hashlib.sha256(tokens.astype("<u2").tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# files


def decompress_tokens(model: TransformerXL, path: str | Path, data: bytes, *, force: bool = False,
                      on_step: Callable[[int], None] | None = None) -> tuple[Header, np.ndarray]:
    """Decode a version-2 file's bytes with ``model``; returns its header and the tokens (checked
    against the header's SHA-256)."""
    header, payload = read_container(path, data)
    mine = model_hash(model)
    if header.model_hash != mine:
        raise CodecError(f"{path}: made with model {header.model_hash[:16]}, not with this checkpoint's "
                         f"{mine[:16]}: decompress it with the checkpoint that compressed it")
    device = next(model.parameters()).device
    if not force and (header.device != device.type or header.torch != torch.__version__):
        raise CodecError(f"{path}: made with torch {header.torch} on {header.device}, decoding here with "
                         f"torch {torch.__version__} on {device.type}: the probabilities could differ in the "
                         "last bit and the decoding would fail; use the same kind of device and torch "
                         "(or --force)")
    start_tok = start_token(tokenizer_of(header))
    other_cpu = (f"version-2 files were coded with the float model's own probabilities, which differ in "
                 f"their last bits between kinds of CPU (vector width, FMA, BLAS kernels): decode it on the "
                 f"kind of machine that made it (torch {header.torch} on {header.device}, {header.threads} "
                 "thread(s)) and compress the audio again; version-3 files decode on any machine")
    tokens, pos = [], 0
    for size, n in header.groups:
        words = np.frombuffer(payload[pos : pos + size], dtype="<u4").astype(np.uint32)
        pos += size
        first = len(tokens)
        lengths = [min(header.chunk, header.samples - (first + i) * header.chunk) for i in range(n)]
        try:
            tokens += decode_group(model, words, lengths, start_tok, header.cuda_graph, on_step)
        except AssertionError:  # constriction: the payload is invalid under these probabilities
            raise CodecError(f"{path}: does not decode on this machine: {other_cpu}") from None
    out = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
    if len(out) != header.samples or _digest(out, sixteen_bit(model)) != header.sha256:
        raise CodecError(f"{path}: does not decode on this machine: the decoded samples do not match the "
                         f"file's SHA-256 (the payload's CRC matched): {other_cpu}")
    return header, out


def tokenizer_of(header: Header):
    return tokenizer_from_dict(header.tokenizer)
