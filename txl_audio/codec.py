"""Lossless compression with a Transformer-XL: arithmetic (range) coding with the model's predictive
distribution stores a recording in about its negative log-likelihood.

What comes back bit for bit:

- a 16-bit model (a pcm16 corpus, model.head dual_softmax / logistic_mixture, or a 65,536-way
  softmax): the exact int16 samples of a 16 kHz mono file (a file that would need resampling, mixing
  down or another bit depth is refused unless ``convert=True``, and then the converted samples come
  back, not the original bytes);
- an 8-bit (mu-law or linear) model: the token stream, i.e. the mu-law codes, not the waveform they
  were made from.

How: a file's tokens are cut into chunks of ``chunk`` samples, each read from an empty memory
(a start token of silence first), so a batch of chunks decodes in parallel. Encoder and decoder run
the very same step (``model.step`` through :class:`~txl_audio.decoders.CachedDecoder`, one token at
a time, the same batch of chunks) so both compute bit-identical probabilities; these are turned into
a range code by ``constriction`` (Bamler 2022; its categorical model quantizes float probabilities
deterministically and gives every symbol a nonzero share). A 16-bit sample is coded as two symbols of
256 (its high byte, then its low byte given the high one: a table of 65,536 per sample would cost more
than the model); an 8- or 10-bit token as one symbol. All chunks of a batch share one range code, their
symbols interleaved step by step, which is the order the decoder meets them in.

A container (``.txla``): magic, version, a JSON header (the model's hash, config and tokenizer, sample
rate, samples, chunk layout, the torch version, device kind and thread count it was made with, the
SHA-256 of the decoded samples and a CRC-32 of the payload), then the range codes. ``decompress``
refuses another model, a truncated or corrupted file and a header it cannot read, and checks the
samples' hash after decoding. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch
from tqdm import tqdm

from txl_audio.audio import SAMPLE_RATE, AudioError, audio_info, find_audio_files, read_audio, require, sf
from txl_audio.checkpoint import load_model, resolve_checkpoint
from txl_audio.decoders import CachedDecoder
from txl_audio.devices import resolve_device, torch_threads
from txl_audio.errors import TxlAudioError
from txl_audio.evaluate import load_documents
from txl_audio.generate import start_token
from txl_audio.model import TransformerXL
from txl_audio.model.sampling import Predicted
from txl_audio.tokenizers import tokenizer_from_dict

MAGIC = b"TXLA"
VERSION = 2  # 2: the JSON header zlib-compressed, without the model's config (its hash identifies it)
SUFFIX = ".txla"
DEFAULT_CHUNK = 4096  # samples per chunk: 0.26 s at 16 kHz
DEFAULT_BATCH = 16


class CodecError(TxlAudioError, ValueError):
    """A file that cannot be compressed or decompressed; the message names it and says why."""


# ----------------------------------------------------------------------------------------------------
# what the coder needs from a model


def model_hash(model: TransformerXL) -> str:
    """SHA-256 of the model's config and weights (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256(json.dumps(asdict(model.config), sort_keys=True).encode())
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


def encode_group(model: TransformerXL, chunks: Sequence[np.ndarray], start: int,
                 cuda_graph: bool | None = None, on_step: Progress = None) -> tuple[np.ndarray, float]:
    """Range-code a batch of chunks (token arrays); returns the compressed words (uint32) and the
    model's own code length of the chunks in bits (-log2 of the unquantized probabilities), which the
    words approach from above."""
    enc = constriction.stream.queue.RangeEncoder()
    bits = 0.0

    def code(tables: Tables, t: int, rows: np.ndarray) -> np.ndarray:
        nonlocal bits
        tokens = np.array([chunks[r][t] for r in rows], dtype=np.int64)
        sym = tables.symbols(rows, tokens)
        hi = sym >> 8 if sixteen_bit(model) else sym
        p = tables.first(rows)
        enc.encode(hi.astype(np.int32), _FAMILY, p)
        bits -= _log2(p[np.arange(len(rows)), hi])
        second = tables.second(rows, hi)
        if second is not None:
            lo = sym & 255
            enc.encode(lo.astype(np.int32), _FAMILY, second)
            bits -= _log2(second[np.arange(len(rows)), lo])
        return tokens

    with torch.inference_mode():
        _group_steps(model, chunks, start, cuda_graph, on_step, code)
    return enc.get_compressed(), bits


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


def _pack(header: Header, payload: bytes) -> bytes:
    # compressed: on a 1-second clip every 100 header bytes cost 0.05 bits per sample
    meta = zlib.compress(json.dumps(asdict(header), sort_keys=True, separators=(",", ":")).encode(), 9)
    return MAGIC + struct.pack("<BI", VERSION, len(meta)) + meta + payload


def read_container(path: str | Path) -> tuple[Header, bytes]:
    """Header and payload of a ``.txla`` file; a CodecError naming the file for anything wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CodecError(f"{path}: no such file") from None
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


def _write_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder and rename it into place: a failure (a full
    disk, a kill) leaves no partial file under ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CodecError(f"{path.parent}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CodecError(f"{path}: could not be written ({e.strerror or e}); nothing was left under its name"
                         ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(tokens: np.ndarray, sixteen: bool) -> str:
    if sixteen:
        return hashlib.sha256((tokens.astype(np.int64) - 32_768).astype("<i2").tobytes()).hexdigest()
    return hashlib.sha256(tokens.astype("<u2").tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# files


@dataclass
class Result:
    path: Path
    samples: int
    bytes: int
    seconds: float
    model_bits: float | None = None  # the model's own code length (compress only)

    @property
    def bits_per_sample(self) -> float:
        return 8 * self.bytes / max(self.samples, 1)

    @property
    def model_bits_per_sample(self) -> float | None:
        return None if self.model_bits is None else self.model_bits / max(self.samples, 1)


def file_tokens(path: str | Path, tokenizer: Any, sixteen: bool, convert: bool = False) -> np.ndarray:
    """The tokens a file is compressed as. 16-bit: the exact samples of a 16-bit 16 kHz mono file (or,
    with ``convert``, the file resampled / mixed down / rounded); 8-bit: its codes."""
    path = Path(path)
    info = audio_info(path)
    if sixteen and not convert:
        wrong = []
        if info.sample_rate != SAMPLE_RATE:
            wrong.append(f"{info.sample_rate} Hz (not {SAMPLE_RATE})")
        if info.channels != 1:
            wrong.append(f"{info.channels} channels")
        if info.subtype != "PCM_16":
            wrong.append(f"{info.subtype} samples (not 16-bit PCM)")
        if wrong:
            raise CodecError(f"{path}: {', '.join(wrong)}: compressing it would change the samples, so its "
                             "original bytes could not come back; pass --convert to compress the converted "
                             "samples instead")
    wave, _ = read_audio(path, SAMPLE_RATE)
    return np.asarray(tokenizer.encode(wave)).astype(np.int64)


def compress_tokens(model: TransformerXL, tokenizer: Any, tokens: np.ndarray, out: str | Path, *,
                    chunk: int = DEFAULT_CHUNK, batch: int = DEFAULT_BATCH, source: str = "",
                    checkpoint: str = "", cuda_graph: bool | None = None,
                    on_step: Callable[[int], None] | None = None) -> Result:
    """Compress one file's tokens into ``out`` (a .txla container)."""
    tokens = np.asarray(tokens).astype(np.int64)
    if tokens.size == 0:
        raise CodecError(f"{source or out}: no samples to compress")
    if chunk < 1 or batch < 1:
        raise CodecError(f"chunk and batch must be positive, got {chunk} and {batch}")
    t0 = time.perf_counter()
    sixteen = sixteen_bit(model)
    start = start_token(tokenizer)
    device = next(model.parameters()).device
    graph = (device.type == "cuda") if cuda_graph is None else cuda_graph
    chunks = [tokens[i : i + chunk] for i in range(0, len(tokens), chunk)]
    payload, groups, model_bits = [], [], 0.0
    for g in range(0, len(chunks), batch):
        words, bits = encode_group(model, chunks[g : g + batch], start, graph, on_step)
        model_bits += bits
        b = words.astype("<u4").tobytes()
        payload.append(b)
        groups.append([len(b), len(chunks[g : g + batch])])
    data = b"".join(payload)
    header = Header(
        model_hash=model_hash(model), tokenizer=tokenizer.to_dict(),
        sample_rate=SAMPLE_RATE, samples=int(tokens.size), chunk=chunk, batch=batch, groups=groups,
        lossless="int16 samples" if sixteen else "tokens", sha256=_digest(tokens, sixteen),
        payload_crc32=zlib.crc32(data), torch=torch.__version__, device=device.type,
        threads=torch.get_num_threads(), cuda_graph=graph, source=str(source),
        extra={"checkpoint": checkpoint} if checkpoint else {},
    )
    blob = _pack(header, data)
    out = Path(out)
    _write_atomically(out, lambda f: f.write(blob))
    return Result(out, int(tokens.size), len(blob), time.perf_counter() - t0, model_bits)


def decompress_tokens(model: TransformerXL, path: str | Path, *, force: bool = False,
                      on_step: Callable[[int], None] | None = None) -> tuple[Header, np.ndarray]:
    """Decode a .txla file with ``model``; returns its header and the tokens (checked against the
    header's SHA-256)."""
    header, payload = read_container(path)
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
    tokens, pos = [], 0
    for size, n in header.groups:
        words = np.frombuffer(payload[pos : pos + size], dtype="<u4").astype(np.uint32)
        pos += size
        first = len(tokens)
        lengths = [min(header.chunk, header.samples - (first + i) * header.chunk) for i in range(n)]
        tokens += decode_group(model, words, lengths, start_tok, header.cuda_graph, on_step)
    out = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
    if len(out) != header.samples or _digest(out, sixteen_bit(model)) != header.sha256:
        raise CodecError(f"{path}: the decoded samples do not match the file's SHA-256: the file is corrupt, "
                         "or it was made on a machine whose arithmetic differs from this one")
    return header, out


def tokenizer_of(header: Header):
    return tokenizer_from_dict(header.tokenizer)


def write_decoded(path: str | Path, tokens: np.ndarray, tokenizer: Any) -> Path:
    """The decoded tokens as a 16 kHz mono 16-bit WAV, written atomically: 16-bit tokens as their exact
    int16 samples, 8-bit codes as the waveform they decode to."""
    path = Path(path)
    buf = io.BytesIO()
    soundfile = require(sf, "soundfile")
    if tokenizer.vocab_size == 65_536:
        samples = (np.asarray(tokens, dtype=np.int64) - 32_768).astype(np.int16)
    else:
        samples = np.clip(np.asarray(tokenizer.decode(tokens), dtype=np.float32), -1.0, 1.0)
    soundfile.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    _write_atomically(path, lambda f: f.write(buf.getvalue()))
    return path


# ----------------------------------------------------------------------------------------------------
# commands' library functions: many files, a progress bar, a report


@dataclass
class Report:
    action: str  # "compressed" or "decompressed"
    results: list[Result]
    out: Path
    device: str
    threads: int
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.results)

    def summary(self) -> str:
        n, size = self.samples, sum(r.bytes for r in self.results)
        rate = n / max(self.seconds, 1e-9)
        lines = [f"{self.action} {len(self.results)} file(s), {n:,} samples "
                 f"({n / SAMPLE_RATE:.1f} s of audio) into {self.out}",
                 f"{8 * size / max(n, 1):.4f} bits per sample in the .txla files (headers included), "
                 f"{size:,} bytes"]
        if self.results and all(r.model_bits is not None for r in self.results):
            ideal = sum(r.model_bits for r in self.results) / max(n, 1)
            lines.append(f"{ideal:.4f} bits per sample is the model's own code length of the same chunks "
                         f"(the files are {100 * (8 * size / max(n, 1) / ideal - 1):+.2f}%)")
        lines.append(f"{rate:,.0f} samples/s = {rate / SAMPLE_RATE:.3f}x real time on {self.device} "
                     f"({self.threads} thread(s))")
        return "\n".join(lines)


def _names(paths: Sequence[Path]) -> list[str]:
    """A unique file name per input: its path below the inputs' common folder, '/' as '__'."""
    if len(paths) == 1:
        return [paths[0].stem]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root).with_suffix("")).replace(os.sep, "__") for p in paths]


def _bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, unit="sample", unit_scale=True, desc=desc, disable=None if enabled else True)


def _setup(checkpoint: str | Path, device: str) -> tuple[Path, TransformerXL, Any]:
    path = resolve_checkpoint(checkpoint)
    model, tokenizer, _ = load_model(path, resolve_device(device))
    return path, model, tokenizer


def compress_files(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, *,
                   corpus: str | Path | None = None, split: str = "test", convert: bool = False,
                   chunk: int = DEFAULT_CHUNK, batch: int = DEFAULT_BATCH, device: str = "cpu",
                   threads: int | None = 1, progress: bool = True) -> Report:
    """Compress audio files / folders (or a prepared corpus split) into OUT/NAME.txla, one per file,
    and OUT/compress.csv (file, samples, bytes, bits per sample in the file, the model's own code length
    of the same chunks in bits per sample). ``threads``: torch's CPU threads while coding (recorded in
    each file; restored after)."""
    with torch_threads(threads):
        ckpt, model, tokenizer = _setup(checkpoint, device)
        return compress_with(model, tokenizer, ckpt, inputs, out, corpus=corpus, split=split, convert=convert,
                             chunk=chunk, batch=batch, progress=progress)


def compress_with(model: TransformerXL, tokenizer: Any, checkpoint: str | Path, inputs: Sequence[str | Path],
                  out: str | Path, *, corpus: str | Path | None = None, split: str = "test",
                  convert: bool = False, chunk: int = DEFAULT_CHUNK, batch: int = DEFAULT_BATCH,
                  progress: bool = True) -> Report:
    """:func:`compress_files` with a model already loaded from ``checkpoint`` (the path each file records
    for decompression), on its device, with torch's current thread count."""
    ckpt = Path(checkpoint)
    if tokenizer.unit != "sample":
        raise CodecError(f"{ckpt}: a text model; compress codes audio")
    sixteen = sixteen_bit(model)
    if corpus is not None:
        d = load_documents(tokenizer, corpus, split)
        sources = [Path(n) for n in d.names]
        jobs = list(zip(sources, d.docs))
    else:
        sources = []
        for p in map(Path, inputs):
            found = find_audio_files(p) if p.is_dir() else [p]
            if p.is_dir() and not found:
                raise CodecError(f"{p}: no audio files in this folder")
            sources += found
        jobs = [(p, None) for p in sources]
    out = Path(out)
    names = _names([p for p, _ in jobs])
    todo = [(p, n, doc if doc is not None else file_tokens(p, tokenizer, sixteen, convert))
            for (p, doc), n in zip(jobs, names)]  # read first: a refused file stops before any writing
    bar = _bar(sum(len(t) for _, _, t in todo), "compress", progress)
    results, t0 = [], time.perf_counter()
    with bar:
        for src, name, tokens in todo:
            r = compress_tokens(model, tokenizer, tokens, out / f"{name}{SUFFIX}", chunk=chunk, batch=batch,
                                source=str(src), checkpoint=str(ckpt), on_step=bar.update)
            results.append(r)
    device = next(model.parameters()).device.type
    report = Report("compressed", results, out, device, torch.get_num_threads(), time.perf_counter() - t0)
    rows = "".join(f"{r.path.name},{r.samples},{r.bytes},{r.bits_per_sample:.6f},"
                   f"{r.model_bits_per_sample:.6f}\n" for r in results)
    (out / "compress.csv").write_text("file,samples,bytes,bits_per_sample,model_bits_per_sample\n" + rows)
    return report


def decompress_files(files: Sequence[str | Path], out: str | Path, *, checkpoint: str | Path | None = None,
                     device: str = "cpu", threads: int | None = None, force: bool = False,
                     progress: bool = True, model: tuple[TransformerXL, Any] | None = None) -> Report:
    """Decode .txla files (or folders of them) into OUT/NAME.wav, checking each against its SHA-256.

    Each file is decoded with ``checkpoint`` (default: the path it records), or with ``model``, a
    ``(TransformerXL, tokenizer)`` already loaded (on its own device); another model's file is refused
    either way. ``threads``: torch's CPU threads (default: as each file records; restored after)."""
    paths: list[Path] = []
    for f in map(Path, files):
        paths += sorted(f.glob(f"*{SUFFIX}")) if f.is_dir() else [f]
    headers = [read_container(p)[0] for p in paths]  # every file readable before any decoding
    models: dict[str, tuple] = {}
    out = Path(out)
    if model is not None:
        device = next(model[0].parameters()).device.type
    bar = _bar(sum(h.samples for h in headers), "decompress", progress)
    results, t0 = [], time.perf_counter()
    with torch_threads(threads), bar:
        for p, h in zip(paths, headers):
            if model is not None:
                net, tokenizer = model
            else:
                ckpt = checkpoint or h.extra.get("checkpoint")
                if ckpt is None:
                    raise CodecError(f"{p}: which checkpoint made it is not recorded: pass --checkpoint")
                if str(ckpt) not in models:
                    models[str(ckpt)] = _setup(ckpt, device)
                _, net, tokenizer = models[str(ckpt)]
            if threads is None:
                torch.set_num_threads(h.threads)
            t1 = time.perf_counter()
            _, tokens = decompress_tokens(net, p, force=force, on_step=bar.update)
            wav = write_decoded(out / f"{p.stem}.wav", tokens, tokenizer)
            results.append(Result(wav, len(tokens), p.stat().st_size, time.perf_counter() - t1))
        n_threads = torch.get_num_threads()
    return Report("decompressed", results, out, device, n_threads, time.perf_counter() - t0)


__all__ = ["AudioError", "CodecError", "Header", "Report", "Result", "compress_files", "compress_tokens",
           "compress_with", "decompress_files", "decompress_tokens", "file_tokens", "model_hash",
           "read_container", "write_decoded"]
