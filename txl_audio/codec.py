"""Lossless compression with a Transformer-XL: range coding with the model's predictive distribution
stores a recording in about its negative log-likelihood, and decodes on any machine.

What comes back bit for bit:

- a 16-bit model (a pcm16 corpus, model.head dual_softmax / logistic_mixture, or a 65,536-way
  softmax): the exact int16 samples of a 16 kHz mono 16-bit file (a file that would need resampling,
  mixing down or another bit depth is refused unless ``convert=True``, and then the converted samples
  come back, not the original bytes);
- an 8-bit (mu-law or linear) model: the token stream, i.e. the mu-law codes, not the waveform they
  were made from.

The probabilities come from :class:`~txl_audio.model.portable.PortableModel`, the model in integer
arithmetic (:mod:`txl_audio.numerics`), so a file made on one CPU decodes on any other, at any thread
count, and on a GPU. A file's samples are cut into chunks of ``chunk`` samples, each read from an
empty memory after a start token (silence), so chunks decode in parallel; ``GROUP_CHUNKS`` consecutive
chunks share one range code (a group), and the coder batches the chunks of many groups (of one long
file or of many short ones) in one pass. The encoder scores a segment of every chunk at a time (the
integer model's segment pass equals its one-token step exactly); the decoder steps one sample at a
time (:mod:`txl_audio.coding`).

The container (``.txla``, version 3), 30-40 bytes beyond the range codes::

    b"TXLA" | version (1) | flags (1) | model id (8: SHA-256 of the weights and config) |
    chunk (varint) | chunks per group (varint) | [flags & 1: the checkpoint's path (varint length, UTF-8)]
    per group: payload bytes (varint, > 0) | CRC-32 of the payload (4) | payload (uint32 words, LE)
    0 (varint) | samples (8, LE) | CRC-32 of the samples (4: int16 LE for 16-bit, uint8/uint16 codes)

It streams: groups are written as they are coded (so ``--out -`` writes to a pipe) and the footer
comes last. ``decompress`` refuses another model (naming both ids), a truncated file, a flipped byte
(a group's CRC), and checks the samples' CRC before anything is written under the output name. Older
version-2 files decode through :mod:`txl_audio.codec_v2` on the kind of machine that made them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from txl_audio.atomic import temp_beside
from txl_audio.audio import SAMPLE_RATE, AudioError, audio_info, find_audio_files, read_audio, require, sf
from txl_audio.codec_workers import ROWS_PER_WORKER, choose_workers
from txl_audio.errors import TxlAudioError
from txl_audio.tokenizers import start_token

MAGIC = b"TXLA"
VERSION = 3  # 3: the portable (integer) model, streamed groups, a 30-40 byte container
SUFFIX = ".txla"
DEFAULT_CHUNK = 4096  # samples per chunk: 0.26 s at 16 kHz
DEFAULT_BATCH = 256  # chunks coded in one pass (rows of the model's batch) by one process


def default_batch(workers: int) -> int:
    """Chunks coded together: DEFAULT_BATCH in one process (a GPU's, or a small job's), else
    ROWS_PER_WORKER per worker process."""
    return DEFAULT_BATCH if workers <= 1 else ROWS_PER_WORKER * workers

GROUP_CHUNKS = 32  # chunks per range code (a group): 8.2 s at the default chunk, so that a long file's
# groups spread over the worker processes (each group ends its code: ~9 bytes, 0.01%)
FLAG_PATH = 1
ID_BYTES = 8


class CodecError(TxlAudioError, ValueError):
    """A file that cannot be compressed or decompressed; the message names it and says why."""


# ----------------------------------------------------------------------------------------------------
# the model that codes


# Fields the model config gained after files were first made, with the value that means "absent": left
# out of the hash while they hold it, so a model's id (and every file made with it) survives the config
# growing a new option.
LATER_FIELDS = {"cascade": ""}


def config_json(config) -> str:
    """The config as the model id hashes it: sorted JSON, without later fields at their absent value."""
    d = {k: v for k, v in asdict(config).items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return json.dumps(d, sort_keys=True)


def model_hash(model) -> str:
    """SHA-256 of a float model's config and weights (names, dtypes, shapes and bytes, in name order):
    the portable model is a deterministic function of them, so this identifies the probabilities."""
    h = hashlib.sha256(config_json(model.config).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sixteen_bit(model) -> bool:
    return model.config.vocab_size == 65_536


@dataclass
class CodingModel:
    """What compress and decompress need: the float model (its id), the tokenizer, the portable model
    that computes the probabilities, and where it came from (a named model or a checkpoint path)."""

    model: Any
    tokenizer: Any
    portable: Any
    id: bytes
    source: str  # the name of a shipped model, or the checkpoint's path
    named: bool

    @property
    def sixteen(self) -> bool:
        return sixteen_bit(self.model)

    @property
    def start(self) -> int:
        return start_token(self.tokenizer)


def load_coding_model(name_or_checkpoint: str | Path, device: str | torch.device = "cpu") -> CodingModel:
    """A named model (``speech16``, ``speech8``) or a checkpoint / run folder, ready to code."""
    from txl_audio.checkpoint import load_model, resolve_checkpoint
    from txl_audio.devices import resolve_device
    from txl_audio.models import named_path

    named = named_path(str(name_or_checkpoint)) is not None and not Path(name_or_checkpoint).exists()
    path = resolve_checkpoint(name_or_checkpoint)
    model, tokenizer, _ = load_model(path, resolve_device(device) if isinstance(device, str) else device)
    return coding_model(model, tokenizer, str(name_or_checkpoint) if named else str(path), named)


def coding_model(model, tokenizer, source: str = "", named: bool = False) -> CodingModel:
    """:class:`CodingModel` of a loaded float model (on its device)."""
    from txl_audio.model.portable import NotExact, PortableModel

    if tokenizer.unit != "sample":
        raise CodecError(f"{source or 'this model'}: a text model; compress codes audio")
    try:
        portable = PortableModel(model)
    except NotExact as e:
        raise CodecError(f"{source or 'this model'}: cannot be used by the codec: {e}") from None
    return CodingModel(model, tokenizer, portable, bytes.fromhex(model_hash(model))[:ID_BYTES], source, named)


# ----------------------------------------------------------------------------------------------------
# the container


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    """Reads a container's bytes; every shortfall is a CodecError saying the file is truncated."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CodecError(f"{self.name}: truncated ({len(self.data)} bytes; the file ends inside its "
                             f"{'header' if self.pos < 16 else 'payload'})")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
            if shift > 63:
                raise CodecError(f"{self.name}: the header is damaged; the file is corrupt")


@dataclass
class Container:
    """A parsed version-3 file: its header fields, the groups' (offset, length, CRC) in ``data``, the
    footer."""

    model_id: bytes
    chunk: int
    group_chunks: int
    checkpoint: str
    groups: list[tuple[int, int, int]]
    samples: int
    samples_crc: int
    data: bytes = field(repr=False)

    def lengths(self) -> list[list[int]]:
        """Per group, its chunks' lengths."""
        out, left = [], self.samples
        for _ in self.groups:
            g = []
            while left > 0 and len(g) < self.group_chunks:
                g.append(min(self.chunk, left))
                left -= g[-1]
            out.append(g)
        return out

    def words(self, g: int) -> np.ndarray:
        off, n, _ = self.groups[g]
        return np.frombuffer(self.data[off : off + n], dtype="<u4").astype(np.uint32)


def header_bytes(model_id: bytes, chunk: int, group_chunks: int, checkpoint: str = "") -> bytes:
    flags = FLAG_PATH if checkpoint else 0
    out = MAGIC + bytes([VERSION, flags]) + model_id + _varint(chunk) + _varint(group_chunks)
    if checkpoint:
        p = checkpoint.encode()
        out += _varint(len(p)) + p
    return out


def group_bytes(words: np.ndarray) -> bytes:
    payload = np.asarray(words, dtype="<u4").tobytes() or b"\0\0\0\0"  # an empty code: one zero word
    return _varint(len(payload)) + struct.pack("<I", zlib.crc32(payload)) + payload


def footer_bytes(samples: int, crc: int) -> bytes:
    return _varint(0) + struct.pack("<QI", samples, crc)


def parse_container(data: bytes, name: str) -> Container:
    """A version-3 file's bytes -> :class:`Container`; a CodecError naming the file for anything wrong
    (not a .txla file, another version, truncated, a damaged group: its CRC)."""
    r = _Reader(data, name)
    if data[:4] != MAGIC:
        raise CodecError(f"{name}: not a txl-audio compressed file (no {MAGIC.decode()} magic)")
    r.take(4)
    version, flags = r.take(2)
    if version != VERSION:
        raise CodecError(f"{name}: container version {version}; this txl-audio reads versions 2 and "
                         f"{VERSION}")
    model_id = r.take(ID_BYTES)
    chunk, group_chunks = r.varint(), r.varint()
    if chunk < 1 or group_chunks < 1:
        raise CodecError(f"{name}: the header is damaged; the file is corrupt")
    checkpoint = ""
    if flags & FLAG_PATH:
        try:
            checkpoint = r.take(r.varint()).decode()
        except UnicodeDecodeError:
            raise CodecError(f"{name}: the header is damaged; the file is corrupt") from None
    groups = []
    while True:
        n = r.varint()
        if n == 0:
            break
        crc = struct.unpack("<I", r.take(4))[0]
        off = r.pos
        payload = r.take(n)
        if zlib.crc32(payload) != crc or n % 4:
            raise CodecError(f"{name}: the payload is corrupt (group {len(groups)}: CRC-32 mismatch)")
        groups.append((off, n, crc))
    samples, samples_crc = struct.unpack("<QI", r.take(12))
    if r.pos != len(data):
        raise CodecError(f"{name}: {len(data) - r.pos} bytes after the end of the container; the file is "
                         "corrupt")
    if samples > len(groups) * group_chunks * chunk or samples <= (len(groups) - 1) * group_chunks * chunk:
        raise CodecError(f"{name}: the header is damaged ({samples} samples in {len(groups)} groups); the "
                         "file is corrupt")
    return Container(model_id, chunk, group_chunks, checkpoint, groups, samples, samples_crc, data)


def samples_crc(tokens: np.ndarray, sixteen: bool, crc: int = 0) -> int:
    """CRC-32 of decoded samples (16-bit: int16 LE; codes: uint8, or uint16 LE above 256 levels),
    continued from ``crc``."""
    t = np.asarray(tokens, dtype=np.int64)
    if sixteen:
        b = (t - 32_768).astype("<i2").tobytes()
    else:
        b = t.astype(np.uint8 if t.size == 0 or t.max() < 256 else "<u2").tobytes()
    return zlib.crc32(b, crc)


# ----------------------------------------------------------------------------------------------------
# sources and sinks


def file_tokens(path: str | Path, tokenizer: Any, sixteen: bool, convert: bool = False) -> np.ndarray:
    """The tokens a file is compressed as. 16-bit: the exact samples of a 16-bit 16 kHz mono file (or,
    with ``convert``, the file resampled / mixed down / rounded); 8-bit: its codes."""
    return np.concatenate(list(token_blocks(path, tokenizer, sixteen, convert)) or [np.zeros(0, np.int64)])


def token_blocks(path: str | Path, tokenizer: Any, sixteen: bool, convert: bool = False,
                 block: int = 1 << 17, data: bytes | None = None) -> Iterator[np.ndarray]:
    """The tokens of a file in blocks of ``block`` samples (a 16-bit file is read block by block, so a
    long one never sits in memory whole). ``data``: the file's bytes instead of reading ``path`` (stdin)."""
    path = Path(path)
    soundfile = require(sf, "soundfile")
    src: Any = io.BytesIO(data) if data is not None else str(path)
    try:
        info = soundfile.info(src)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        if data is None:
            audio_info(path)  # the library's own message for a missing / unreadable file
        raise CodecError(f"{path}: not an audio file soundfile can read ({e})") from None
    if data is not None:
        src.seek(0)
    native = info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
    if sixteen and not native and not convert:
        wrong = []
        if info.samplerate != SAMPLE_RATE:
            wrong.append(f"{info.samplerate} Hz (not {SAMPLE_RATE})")
        if info.channels != 1:
            wrong.append(f"{info.channels} channels")
        if info.subtype != "PCM_16":
            wrong.append(f"{info.subtype} samples (not 16-bit PCM)")
        raise CodecError(f"{path}: {', '.join(wrong)}: compressing it would change the samples, so its "
                         "original bytes could not come back; pass --convert to compress the converted "
                         "samples instead")
    if sixteen and native:
        try:
            with soundfile.SoundFile(src) as f:
                while True:
                    x = f.read(block, dtype="int16")
                    if len(x) == 0:
                        return
                    yield x.astype(np.int64) + 32_768
        except (soundfile.SoundFileError, RuntimeError) as e:
            raise CodecError(f"{path}: cannot be read ({e})") from None
    # resampling, mixing down or mu-law: the library's reader (whole file), then blocks
    if data is not None:
        fd, tmp = tempfile.mkstemp(suffix="." + info.format.lower())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            wave, _ = read_audio(tmp, SAMPLE_RATE)
        finally:
            os.unlink(tmp)
    else:
        wave, _ = read_audio(path, SAMPLE_RATE)
    tokens = np.asarray(tokenizer.encode(wave)).astype(np.int64)
    for i in range(0, len(tokens), block):
        yield tokens[i : i + block]


class _Sink:
    """Where a file's bytes go: a temporary file renamed into place at the end (a failure or a kill
    leaves nothing under the name), or stdout."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.tmp = path, None
        if path is None:
            self.f: BinaryIO = sys.stdout.buffer
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = temp_beside(path)
        except OSError as e:
            raise CodecError(f"{path.parent}: cannot write there ({e.strerror or e})") from None
        self.f = os.fdopen(fd, "wb")

    def write(self, b: bytes) -> None:
        try:
            self.f.write(b)
        except OSError as e:
            self.abort()
            raise CodecError(f"{self.path or 'stdout'}: could not be written ({e.strerror or e}); nothing "
                             "was left under its name") from None

    def close(self) -> None:
        if self.path is None:
            self.f.flush()
            return
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise CodecError(f"{self.path}: could not be written ({e.strerror or e}); nothing was left under "
                             "its name") from None

    def abort(self) -> None:
        if self.tmp is not None:
            try:
                self.f.close()
            except OSError:
                pass
            Path(self.tmp).unlink(missing_ok=True)
            self.tmp = None


def wav_header(samples: int) -> bytes:
    """A 16 kHz mono 16-bit PCM WAV header for ``samples`` samples."""
    n = 2 * samples
    return (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE,
            2 * SAMPLE_RATE, 2, 16) + b"data" + struct.pack("<I", n))


def wav_samples(tokens: np.ndarray, tokenizer: Any) -> bytes:
    """Decoded tokens as 16-bit PCM bytes: 16-bit tokens as their exact int16 samples, 8-bit codes as
    the waveform they decode to."""
    if tokenizer.vocab_size == 65_536:
        return (np.asarray(tokens, dtype=np.int64) - 32_768).astype("<i2").tobytes()
    wave = np.clip(np.asarray(tokenizer.decode(tokens), dtype=np.float64), -1.0, 1.0)
    return np.round(wave * 32_767).astype("<i2").tobytes()


def write_decoded(path: str | Path, tokens: np.ndarray, tokenizer: Any) -> Path:
    """The decoded tokens as a 16 kHz mono 16-bit WAV, written atomically."""
    path = Path(path)
    sink = _Sink(path)
    sink.write(wav_header(len(tokens)) + wav_samples(tokens, tokenizer))
    sink.close()
    return path


# ----------------------------------------------------------------------------------------------------
# jobs: files cut into groups, batched across files


@dataclass
class Result:
    path: Path | str
    samples: int
    bytes: int
    seconds: float
    source: str = ""

    @property
    def bits_per_sample(self) -> float:
        return 8 * self.bytes / max(self.samples, 1)


class _CompressJob:
    """One input file being compressed: its token blocks, cut into groups of chunks on demand, and its
    sink, which gets the header, each group's code in order, then the footer."""

    def __init__(self, cm: CodingModel, src: Path | str, blocks: Iterator[np.ndarray], out: Path | None,
                 chunk: int, group_chunks: int) -> None:
        self.cm, self.src, self.blocks, self.out = cm, src, blocks, out
        self.chunk, self.group_chunks = chunk, group_chunks
        self.buf = np.zeros(0, dtype=np.int64)
        self.exhausted = False
        self.samples, self.crc, self.bytes = 0, 0, 0
        self.sink: _Sink | None = None
        self.produced = self.written = 0
        self.t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        """Every group read and written."""
        return self.exhausted and len(self.buf) == 0 and self.written == self.produced

    def next_group(self) -> list[np.ndarray] | None:
        want = self.chunk * self.group_chunks
        while len(self.buf) < want and not self.exhausted:
            try:
                b = next(self.blocks)
            except StopIteration:
                self.exhausted = True
                break
            self.buf = np.concatenate([self.buf, b])
        if len(self.buf) == 0:
            return None
        # copies, not views: a view would keep the whole read block alive while its group is in flight
        take, self.buf = self.buf[:want].copy(), self.buf[want:].copy()
        self.samples += len(take)
        self.crc = samples_crc(take, self.cm.sixteen, self.crc)
        self.produced += 1
        return [take[i : i + self.chunk] for i in range(0, len(take), self.chunk)]

    def write_group(self, words: np.ndarray) -> None:
        if self.sink is None:
            self.sink = _Sink(self.out)
            ckpt = "" if self.cm.named else self.cm.source
            self._write(header_bytes(self.cm.id, self.chunk, self.group_chunks, ckpt))
        self._write(group_bytes(words))
        self.written += 1

    def _write(self, b: bytes) -> None:
        self.sink.write(b)
        self.bytes += len(b)

    def finish(self) -> Result:
        if self.samples == 0:
            raise CodecError(f"{self.src}: no samples to compress")
        self._write(footer_bytes(self.samples, self.crc))
        self.sink.close()
        return Result(self.out or "-", self.samples, self.bytes, time.perf_counter() - self.t0, str(self.src))

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()


def _batches(jobs: list, next_groups: Callable, batch: int) -> Iterator[list[tuple[Any, int, Any]]]:
    """Fill batches of at most ``batch`` chunks with groups taken from the jobs in order (a long file's
    groups, or many files' groups together); yields lists of (job, group index, group)."""
    pending: list[tuple[Any, int, Any]] = []
    rows = 0
    for job in jobs:
        g = 0
        for group in next_groups(job):
            n = len(group[1]) if isinstance(group, tuple) else len(group)
            if pending and rows + n > batch:
                yield pending
                pending, rows = [], 0
            pending.append((job, g, group))
            rows += n
            g += 1
    if pending:
        yield pending


def _iter_groups(job: _CompressJob) -> Iterator[list[np.ndarray]]:
    while True:
        g = job.next_group()
        if g is None:
            return
        yield g


def compress_jobs(cm: CodingModel, jobs: list[_CompressJob], batch: int, on_step=None, workers: int = 1
                  ) -> list[Result]:
    """Code the jobs' groups in batches (split between ``workers`` processes); each job's file is
    written group by group, in order, and finished when its last group is out."""
    from txl_audio.codec_workers import BatchError, Coder

    results: dict[int, Result] = {}
    batches = ((items, [g for _, _, g in items], [len(g) for _, _, g in items])
               for items in _batches(jobs, _iter_groups, batch))
    try:
        with Coder(cm, workers, on_step) as coder:
            try:
                for items, words in coder.run("encode", batches):
                    for (job, _, _), w in zip(items, words):
                        job.write_group(w)
                    for job in {id(j): j for j, _, _ in items}.values():  # files whose last group is out
                        if job.done and id(job) not in results:
                            results[id(job)] = job.finish()
            except BatchError as e:
                raise e.error from None
        for job in jobs:
            if id(job) not in results:
                if job.sink is None:
                    raise CodecError(f"{job.src}: no samples to compress")
                results[id(job)] = job.finish()
    except BaseException:
        for job in jobs:
            job.abort()
        raise
    return [results[id(j)] for j in jobs]


# ----------------------------------------------------------------------------------------------------
# decoding


def read_file(path: str | Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CodecError(f"{path}: no such file") from None
    except OSError as e:
        raise CodecError(f"{path}: cannot be read ({e.strerror or e})") from None


def check_model(container: Container, cm: CodingModel, name: str) -> None:
    if container.model_id != cm.id:
        raise CodecError(f"{name}: made with model {container.model_id.hex()}, not with "
                         f"{cm.source or 'this model'} ({cm.id.hex()}): decompress it with the model that "
                         "compressed it (--model NAME or CHECKPOINT)")


def decode_containers(cm: CodingModel, items: list[tuple[str, Container]], batch: int, on_step=None,
                      on_group: Callable[[int, np.ndarray, bool], None] | None = None,
                      workers: int = 1) -> None:
    """Decode the containers' groups in batches (groups of several files together, each file's in
    order; split between ``workers`` processes); ``on_group(i, tokens, last)`` gets file i's groups in
    order, ``last`` with its final one, after which its CRC-32 has been checked (a mismatch raises
    first)."""
    from txl_audio.codec_workers import BatchError, Coder

    for name, c in items:
        check_model(c, cm, name)
    jobs = [(i, list(enumerate(c.lengths()))) for i, (_, c) in enumerate(items)]
    crc = [0] * len(items)
    got = [0] * len(items)

    def groups_of(job):
        yield from job[1]

    batches = ((b, [(items[job[0]][1].words(g), lens) for job, _, (g, lens) in b],
                [len(lens) for _, _, (_, lens) in b])
               for b in _batches(jobs, groups_of, batch))
    with Coder(cm, workers, on_step) as coder:
        try:
            for batch_items, decoded in coder.run("decode", batches):
                for (job, _, (g, _)), chunks in zip(batch_items, decoded):
                    i = job[0]
                    name, c = items[i]
                    tokens = np.concatenate(chunks)
                    crc[i] = samples_crc(tokens, cm.sixteen, crc[i])
                    got[i] += len(tokens)
                    last = g == len(c.groups) - 1
                    if last and (got[i] != c.samples or crc[i] != c.samples_crc):
                        raise CodecError(f"{name}: the decoded samples do not match the file's CRC-32: the "
                                         "file is corrupt")
                    if on_group is not None:
                        on_group(i, tokens, last)
        except BatchError as e:  # constriction's assertion (or a value error) on a code that does not decode
            if not isinstance(e.error, (AssertionError, ValueError, RuntimeError)):
                raise e.error from None
            names = sorted({items[job[0]][0] for job, _, _ in e.tag})
            raise CodecError(f"{', '.join(names)}: the range code does not decode ({type(e.error).__name__})"
                             ": the file is corrupt") from None


# ----------------------------------------------------------------------------------------------------
# the library functions of the commands: many files, a progress bar, a report


@dataclass
class Report:
    action: str  # "compressed" or "decompressed"
    results: list[Result]
    out: Path | str
    device: str
    threads: int
    seconds: float = 0.0
    model: str = ""
    workers: int = 1  # processes that coded (each on one thread when more than one)

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.results)

    def summary(self) -> str:
        n, size = self.samples, sum(r.bytes for r in self.results)
        rate = n / max(self.seconds, 1e-9)
        what = ".txla files" if self.action == "compressed" else ".txla files read"
        lines = [f"{self.action} {len(self.results)} file(s), {n:,} samples "
                 f"({n / SAMPLE_RATE:.1f} s of audio) "
                 f"{'into' if self.action == 'compressed' else 'to'} {self.out} with {self.model}",
                 f"{8 * size / max(n, 1):.4f} bits per sample in the {what} (headers included), "
                 f"{size:,} bytes",
                 f"{rate:,.0f} samples/s = {rate / SAMPLE_RATE:.2f}x real time on {self.device} "
                 + (f"({self.workers} processes, 1 thread each)" if self.workers > 1
                    else f"({self.threads} thread(s))")]
        return "\n".join(lines)


def _names(paths: Sequence[Path]) -> list[str]:
    """A unique file name per input: its path below the inputs' common folder, '/' as '__'."""
    if len(paths) == 1:
        return [paths[0].stem]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root).with_suffix("")).replace(os.sep, "__") for p in paths]


def _bar(total: int | None, desc: str, enabled: bool):
    return tqdm(total=total, unit="sample", unit_scale=True, desc=desc, disable=None if enabled else True,
                file=sys.stderr)


def _model(model: str | Path | CodingModel | None, device: str) -> CodingModel:
    from txl_audio.models import DEFAULT_CODEC_MODEL

    if isinstance(model, CodingModel):
        return model
    return load_coding_model(DEFAULT_CODEC_MODEL if model is None else model, device)


def compress_files(inputs: Sequence[str | Path], out: str | Path, *,
                   model: str | Path | CodingModel | None = None,
                   corpus: str | Path | None = None, split: str = "test", convert: bool = False,
                   chunk: int = DEFAULT_CHUNK, batch: int | None = None, group_chunks: int = GROUP_CHUNKS,
                   device: str = "cpu", threads: int | None = None, workers: int | None = None,
                   progress: bool = True) -> Report:
    """Compress audio files / folders (``-``: stdin), or a prepared corpus split, into OUT/NAME.txla
    (``out`` = ``-``: one input to stdout) and OUT/compress.csv. ``model``: a named model (default
    speech16) or a checkpoint. ``workers``: processes coding in parallel on the CPU (default: one per
    core for 20 s of audio or more; see codec_workers); ``batch``: chunks coded together (default
    128 per worker, DEFAULT_BATCH in one process). The files are the same bytes whatever the two."""
    from txl_audio.devices import torch_threads

    if chunk < 1 or (batch is not None and batch < 1) or group_chunks < 1:
        raise CodecError(f"chunk, batch and group size must be positive, got "
                         f"{chunk}, {batch}, {group_chunks}")
    with torch_threads(threads):
        cm = _model(model, device)
        to_stdout = str(out) == "-"
        jobs: list[_CompressJob] = []
        sources: list[tuple[Path | str, Iterator[np.ndarray] | None]] = []
        if corpus is not None:
            from txl_audio.evaluate import load_documents

            d = load_documents(cm.tokenizer, corpus, split)
            sources = [(Path(n), iter([np.asarray(doc, dtype=np.int64)])) for n, doc in zip(d.names, d.docs)]
        else:
            for p in inputs:
                if str(p) == "-":
                    sources.append(("-", None))
                    continue
                p = Path(p)
                found = find_audio_files(p) if p.is_dir() else [p]
                if p.is_dir() and not found:
                    raise CodecError(f"{p}: no audio files in this folder")
                sources += [(f, None) for f in found]
        if not sources:
            raise CodecError("nothing to compress: give audio files or folders, - for stdin, or a corpus")
        if to_stdout and len(sources) != 1:
            raise CodecError(f"--out -: one input goes to stdout, got {len(sources)}")
        names = _names([Path("stdin") if s == "-" else Path(s) for s, _ in sources])
        total = sum(len(doc) for doc in d.docs) if corpus is not None else 0
        for (src, blocks), name in zip(sources, names):
            if blocks is None:
                data = read_file("-") if src == "-" else None
                blocks = token_blocks(src if src != "-" else "stdin", cm.tokenizer, cm.sixteen, convert,
                                      data=data)
                if src != "-":
                    info = audio_info(src)
                    total += info.frames if info.sample_rate == SAMPLE_RATE else 0
                # read the first block now: a refused file stops before anything is written
                first = next(blocks, None)
                if first is None or len(first) == 0:
                    raise CodecError(f"{src}: no samples to compress")
                blocks = _chain(first, blocks)
            dest = None if to_stdout else Path(out) / f"{name}{SUFFIX}"
            jobs.append(_CompressJob(cm, src, blocks, dest, chunk, group_chunks))
        known = None if any(str(s) == "-" for s, _ in sources) else total
        n_workers = choose_workers(workers, cm.portable.device.type, known)
        t0 = time.perf_counter()
        with _bar(total or None, "compress", progress) as bar:
            results = compress_jobs(cm, jobs, batch or default_batch(n_workers), bar.update, n_workers)
        seconds = time.perf_counter() - t0
        report = Report("compressed", results, out, cm.portable.device.type, torch.get_num_threads(), seconds,
                        cm.source, n_workers)
    if not to_stdout:
        rows = "".join(f"{Path(r.path).name},{r.samples},{r.bytes},{r.bits_per_sample:.6f}\n"
                       for r in results)
        (Path(out) / "compress.csv").write_text("file,samples,bytes,bits_per_sample\n" + rows)
    return report


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def decompress_files(files: Sequence[str | Path], out: str | Path, *,
                     model: str | Path | CodingModel | None = None,
                     device: str = "cpu", threads: int | None = None, batch: int | None = None,
                     workers: int | None = None, progress: bool = True, force: bool = False) -> Report:
    """Decode .txla files (or folders of them; ``-``: stdin) into OUT/NAME.wav (``out`` = ``-``: one
    file to stdout as WAV), each checked against its CRC-32 before it is written. ``model``: the named
    model or checkpoint that made them (default: the model each file names, a shipped model or its
    recorded checkpoint). ``workers``, ``batch``: as compress_files. ``force``: version-2 files only (see
    codec_v2)."""
    from txl_audio.devices import torch_threads

    paths: list[str | Path] = []
    for f in files:
        if str(f) == "-":
            paths.append("-")
            continue
        f = Path(f)
        paths += sorted(f.glob(f"*{SUFFIX}")) if f.is_dir() else [f]
    if not paths:
        raise CodecError("nothing to decompress")
    to_stdout = str(out) == "-"
    if to_stdout and len(paths) != 1:
        raise CodecError(f"--out -: one file goes to stdout, got {len(paths)}")
    blobs = [(str(p), read_file(p)) for p in paths]
    v2 = [(n, b) for n, b in blobs if b[:4] == MAGIC and len(b) > 4 and b[4] == 2]
    v3 = [(n, parse_container(b, n)) for n, b in blobs if not (b[:4] == MAGIC and len(b) > 4 and b[4] == 2)]
    t0 = time.perf_counter()
    results: list[Result] = []
    used_workers = 1
    with torch_threads(threads):
        models: dict[bytes, CodingModel] = {}
        for name, c in v3:  # which model each file needs, all resolved before decoding
            if c.model_id not in models:
                models[c.model_id] = _model_for(c, name, model, device)
        with _bar(sum(c.samples for _, c in v3) or None, "decompress", progress) as bar:
            for mid, cm in models.items():
                mine = [(n, c) for n, c in v3 if c.model_id == mid]

                sinks: dict[int, _Sink] = {}

                def write(i: int, tokens: np.ndarray, last: bool, mine=mine, cm=cm, sinks=sinks) -> None:
                    name, c = mine[i]
                    if i not in sinks:
                        stem = "stdin" if name == "-" else Path(name).stem
                        sinks[i] = _Sink(None if to_stdout else Path(out) / f"{stem}.wav")
                        sinks[i].write(wav_header(c.samples))
                    sinks[i].write(wav_samples(tokens, cm.tokenizer))
                    if last:
                        sinks[i].close()
                        results.append(Result(sinks[i].path or "-", c.samples, len(c.data), 0.0, name))

                n_workers = choose_workers(workers, cm.portable.device.type, sum(c.samples for _, c in mine))
                used_workers = max(used_workers, n_workers)
                try:
                    decode_containers(cm, mine, batch or default_batch(n_workers), bar.update, write,
                                      n_workers)
                except BaseException:
                    for s in sinks.values():
                        s.abort()
                    raise
        for name, data in v2:
            results.append(_decompress_v2(name, data, out, model, device, force))
        n_threads = torch.get_num_threads()
    dev = next(iter(models.values())).portable.device.type if models else device
    return Report("decompressed", results, out, dev, n_threads, time.perf_counter() - t0,
                  ", ".join(sorted({cm.source for cm in models.values()})) or str(model), used_workers)


def _model_for(c: Container, name: str, model, device: str) -> CodingModel:
    """The model a file names: ``model`` if given (checked against the file's id), else the shipped
    model with that id, else the checkpoint path it records."""
    from txl_audio.models import NAMED

    if model is not None:
        cm = _model(model, device)
        check_model(c, cm, name)
        return cm
    for key in NAMED:
        try:
            cm = _model(key, device)
        except TxlAudioError:
            continue
        if cm.id == c.model_id:
            return cm
    if c.checkpoint:
        try:
            cm = _model(c.checkpoint, device)
        except TxlAudioError as e:
            raise CodecError(f"{name}: made with the checkpoint {c.checkpoint}, which cannot be loaded here "
                             f"({e}); pass --model CHECKPOINT") from None
        check_model(c, cm, name)
        return cm
    raise CodecError(f"{name}: made with model {c.model_id.hex()}, which is not a model shipped with this "
                     "txl-audio: pass --model CHECKPOINT")


def _decompress_v2(name: str, data: bytes, out, model, device: str, force: bool) -> Result:
    from txl_audio import codec_v2
    from txl_audio.checkpoint import load_model

    header, _ = codec_v2.read_container(name, data)
    ckpt = model or header.extra.get("checkpoint")
    if ckpt is None:
        raise CodecError(f"{name}: which checkpoint made it is not recorded: pass --model CHECKPOINT")
    if isinstance(ckpt, CodingModel):
        net, tokenizer = ckpt.model, ckpt.tokenizer
    else:
        p = Path(ckpt)
        if not p.is_absolute() and not p.exists() and name != "-":
            p = Path(name).parent / p  # recorded relative to the file
        net, tokenizer, _ = load_model(p, device)
    torch.set_num_threads(header.threads)
    _, tokens = codec_v2.decompress_tokens(net, name, data, force=force)
    dest = None if str(out) == "-" else Path(out) / f"{Path(name).stem}.wav"
    sink = _Sink(dest)
    sink.write(wav_header(len(tokens)) + wav_samples(tokens, tokenizer))
    sink.close()
    return Result(dest or "-", len(tokens), len(data), 0.0, name)


# ----------------------------------------------------------------------------------------------------
# in memory: one file's tokens (tests, the API, benchmarks)


def compress_tokens(cm: CodingModel, tokens: np.ndarray, out: str | Path, *, chunk: int = DEFAULT_CHUNK,
                    batch: int = DEFAULT_BATCH, group_chunks: int = GROUP_CHUNKS, source: str = "",
                    workers: int = 1) -> Result:
    """Compress one file's tokens into ``out`` (a .txla container), in ``workers`` processes."""
    tokens = np.asarray(tokens).astype(np.int64)
    if tokens.size == 0:
        raise CodecError(f"{source or out}: no samples to compress")
    job = _CompressJob(cm, source or str(out), iter([tokens]), Path(out), chunk, group_chunks)
    return compress_jobs(cm, [job], batch, workers=choose_workers(workers, cm.portable.device.type, None))[0]


def decompress_tokens(cm: CodingModel, path: str | Path, batch: int = DEFAULT_BATCH, workers: int = 1
                      ) -> np.ndarray:
    """Decode one .txla file with ``cm`` (in ``workers`` processes); its tokens, checked against the
    file's CRC-32."""
    got: list[np.ndarray] = []
    decode_containers(cm, [(str(path), parse_container(read_file(path), str(path)))], batch,
                      on_group=lambda i, t, last: got.append(t),
                      workers=choose_workers(workers, cm.portable.device.type, None))
    return np.concatenate(got)


__all__ = ["AudioError", "CodecError", "CodingModel", "Container", "Report", "Result", "coding_model",
           "compress_files", "compress_tokens", "decompress_files", "decompress_tokens", "file_tokens",
           "load_coding_model", "model_hash", "parse_container", "token_blocks", "write_decoded"]
