"""Tokenizers: waveform -> integer codes (mu-law, linear PCM), text -> bytes or words.

Every tokenizer follows one small protocol: ``vocab_size``, ``unit`` ("sample", "byte", "word"),
``encode(x)``, ``decode(tokens)``, ``to_dict()``; :func:`tokenizer_from_dict` rebuilds any of them
(checkpoints and corpus meta.json store the dict).

Audio tokenizers are pure and vectorized. They take a float waveform of any shape as a numpy array
(-> codes of the smallest unsigned dtype holding the vocabulary) or a torch tensor on any device
(-> int64 codes on that device); decode returns float32 of the same kind. Values outside [-1, 1]
are clipped; NaN raises ValueError. The arithmetic is done in float64 on both paths so numpy and
torch (CPU or CUDA) agree code for code.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# torch is imported inside the torch paths only: `import torch` takes about 1.1 s (2-core CPU,
# python -X importtime), and numpy callers (prepare's worker processes, `txl-audio info`) never need it.


class Tokenizer(Protocol):
    vocab_size: int
    unit: str

    def encode(self, x: Any) -> Any: ...

    def decode(self, tokens: Any) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds codes 0 .. vocab_size - 1."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def _is_torch(x: Any) -> bool:
    # torch is only imported by whoever made the tensor; tokenizing numpy never loads it
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _work_dtype_torch(x):
    import torch

    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


def _prepare_wave_numpy(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating)):
        raise ValueError(
            f"audio tokenizers encode float waveforms in [-1, 1], got dtype {x.dtype}; "
            "scale integer PCM first (e.g. int16 / 32768)"
        )
    x = x.astype(np.float64)
    if np.isnan(x).any():
        raise ValueError(f"waveform contains {int(np.isnan(x).sum())} NaN value(s); cannot tokenize")
    return np.clip(x, -1.0, 1.0)


def _prepare_wave_torch(x):
    import torch

    if not torch.is_floating_point(x):
        raise ValueError(
            f"audio tokenizers encode float waveforms in [-1, 1], got dtype {x.dtype}; "
            "scale integer PCM first (e.g. int16 / 32768)"
        )
    x = x.detach().to(_work_dtype_torch(x))
    if torch.isnan(x).any():
        raise ValueError(f"waveform contains {int(torch.isnan(x).sum())} NaN value(s); cannot tokenize")
    return x.clamp(-1.0, 1.0)


class _TableDecoder:
    """Decoding through a float32 table of every code's value: exact, fast, identical on numpy and
    torch (the table is computed once in float64)."""

    vocab_size: int

    def _table(self) -> np.ndarray:
        raise NotImplementedError

    def _check_codes(self, lo: int, hi: int) -> None:
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"codes must lie in [0, {self.vocab_size - 1}], got values in [{lo}, {hi}]")

    def decode(self, tokens: Any) -> Any:
        """Codes (any integer dtype, any shape) -> float32 waveform of the same shape and kind."""
        if not hasattr(self, "_np_table"):
            self._np_table = self._table().astype(np.float32)
            self._torch_tables: dict = {}
        if _is_torch(tokens):
            import torch

            if torch.is_floating_point(tokens) or tokens.dtype == torch.bool:
                raise ValueError(f"codes must be integers, got {tokens.dtype}")
            if tokens.numel():
                self._check_codes(int(tokens.min()), int(tokens.max()))
            key = str(tokens.device)
            if key not in self._torch_tables:
                self._torch_tables[key] = torch.from_numpy(self._np_table).to(tokens.device)
            return self._torch_tables[key][tokens.long()]
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {tokens.dtype}")
        if tokens.size:
            self._check_codes(int(tokens.min()), int(tokens.max()))
        return self._np_table[tokens]


class MuLawTokenizer(_TableDecoder):
    """mu-law companding then uniform quantization to 2**bits codes, mu = 2**bits - 1 (ITU G.711 style
    continuous law, as in WaveNet; Oord et al. 2016, eq. 2).

    ``MuLawTokenizer(bits=8)``; ``encode(wave)`` takes a float waveform in [-1, 1] (numpy array or torch
    tensor, any shape) and returns its codes (numpy: the smallest unsigned dtype; torch: int64 on the
    same device); ``decode(codes)`` returns float32 samples of the same kind and shape.

    Codes follow torchaudio's ``mu_law_encoding``: ``y = sign(x) ln(1 + mu|x|) / ln(1 + mu)``, then
    ``code = floor((y + 1) / 2 * mu + 0.5)``; decode is torchaudio's ``mu_law_decoding``:
    ``y = code / mu * 2 - 1``, ``x = sign(y) ((1 + mu)**|y| - 1) / mu``. (librosa's
    ``mu_compress(quantize=True)`` bins the same y differently and disagrees by one code on about half
    the samples: do not mix the two.)

    Round-trip error bound (see :meth:`max_roundtrip_error`): y is rounded to a grid of step 2/mu, so
    ``|y - y'| <= 1/mu``; the expansion's slope ``ln(1+mu) (1+mu)**|y| / mu`` is largest at the larger
    ``|y|`` of the two, ``(1+mu)**|y| = 1 + mu|x|``, hence for x in [-1, 1]::

        |decode(encode(x)) - x| <= ln(1+mu) (1+mu)**(1/mu) (1 + mu|x|) / mu**2  (+ 1e-6 float32 rounding)

    i.e. about 8.7e-5 near 0 and 0.022 at full scale for 8 bits.
    """

    unit = "sample"

    def __init__(self, bits: int = 8) -> None:
        if not (isinstance(bits, int) and 2 <= bits <= 16):
            raise ValueError(f"mu-law bits must be an integer in [2, 16], got {bits!r}")
        self.bits = bits
        self.mu = 2**bits - 1
        self.vocab_size = 2**bits
        self.dtype = token_dtype(self.vocab_size)

    def __repr__(self) -> str:
        return f"MuLawTokenizer(bits={self.bits})"

    def compand(self, x: Any) -> Any:
        """The continuous mu-law curve, clipped input -> y in [-1, 1] (float64 numpy or torch)."""
        mu = self.mu
        if _is_torch(x):
            import torch

            x = _prepare_wave_torch(x)
            return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
        x = _prepare_wave_numpy(x)
        return np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)

    def encode(self, x: Any) -> Any:
        """Float waveform (any shape) -> codes in [0, 2**bits - 1]."""
        y = self.compand(x)
        scaled = (y + 1.0) / 2.0 * self.mu + 0.5
        if _is_torch(y):
            import torch

            return torch.floor(scaled).to(torch.int64)
        return np.floor(scaled).astype(self.dtype)

    def _table(self) -> np.ndarray:
        y = np.arange(self.vocab_size, dtype=np.float64) / self.mu * 2.0 - 1.0
        return np.sign(y) * np.expm1(np.abs(y) * math.log1p(self.mu)) / self.mu

    def max_roundtrip_error(self, x: Any) -> np.ndarray:
        """Upper bound on ``|decode(encode(x)) - clip(x, -1, 1)|`` for each value of x (numpy)."""
        mu = self.mu
        ax = np.abs(np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0))
        return math.log1p(mu) * (1.0 + mu) ** (1.0 / mu) * (1.0 + mu * ax) / mu**2 + 1e-6

    def to_dict(self) -> dict[str, Any]:
        return {"type": "mulaw", "bits": self.bits}


class LinearTokenizer(_TableDecoder):
    """Uniform (linear PCM) quantization to 2**bits codes, offset binary like unsigned 8-bit WAV
    (``LinearTokenizer(bits)``; ``encode`` / ``decode`` take and return what MuLawTokenizer's do):
    ``code = clip(floor(x * 2**(bits-1) + 0.5), -2**(bits-1), 2**(bits-1) - 1) + 2**(bits-1)``,
    decode ``x = (code - 2**(bits-1)) / 2**(bits-1)``. So 16-bit codes of a 16-bit PCM file are
    lossless (code = int16 value + 32768).

    Round-trip error bound (:meth:`max_roundtrip_error`): half a step, ``2**-bits``, except above the
    largest level ``1 - 2**(1-bits)`` where values are clipped to it:
    ``max(2**-bits, x - (1 - 2**(1-bits)))``.
    """

    unit = "sample"

    def __init__(self, bits: int = 8) -> None:
        if not (isinstance(bits, int) and 2 <= bits <= 16):
            raise ValueError(f"linear bits must be an integer in [2, 16], got {bits!r}")
        self.bits = bits
        self.half = 2 ** (bits - 1)
        self.vocab_size = 2**bits
        self.dtype = token_dtype(self.vocab_size)

    def __repr__(self) -> str:
        return f"LinearTokenizer(bits={self.bits})"

    def encode(self, x: Any) -> Any:
        """Float waveform (any shape) -> codes in [0, 2**bits - 1]."""
        h = self.half
        if _is_torch(x):
            import torch

            x = _prepare_wave_torch(x)
            return (torch.floor(x * h + 0.5).clamp(-h, h - 1) + h).to(torch.int64)
        x = _prepare_wave_numpy(x)
        return (np.clip(np.floor(x * h + 0.5), -h, h - 1) + h).astype(self.dtype)

    def _table(self) -> np.ndarray:
        return (np.arange(self.vocab_size, dtype=np.float64) - self.half) / self.half

    def max_roundtrip_error(self, x: Any) -> np.ndarray:
        """Upper bound on ``|decode(encode(x)) - clip(x, -1, 1)|`` for each value of x (numpy)."""
        xc = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        return np.maximum(2.0**-self.bits, xc - (1.0 - 1.0 / self.half)) + 1e-7

    def to_dict(self) -> dict[str, Any]:
        return {"type": "linear", "bits": self.bits}


class ByteTokenizer:
    """Text as its UTF-8 bytes (256 symbols): character-level corpora like enwik8. ``encode(text)``
    takes a str (or bytes) and returns uint8 codes; ``decode(codes)`` returns the str (invalid UTF-8
    replaced)."""

    unit = "byte"
    vocab_size = 256

    def __repr__(self) -> str:
        return "ByteTokenizer()"

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text if isinstance(text, (bytes, bytearray)) else text.encode("utf-8")
        return np.frombuffer(bytes(data), dtype=np.uint8).copy()

    def decode(self, tokens: Any) -> str:
        if _is_torch(tokens):
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > 255):
            raise ValueError(f"byte tokens must lie in [0, 255], got [{tokens.min()}, {tokens.max()}]")
        return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bytes"}


class WordTokenizer:
    """Whitespace-separated words with a vocabulary built from a corpus.

    Ids: 0 = ``<unk>`` (any word not in the vocabulary), 1 = ``<eos>`` (end of each line), then the
    words by decreasing count (ties alphabetical), which is the order adaptive softmax cutoffs assume.
    A literal ``<unk>`` in the corpus (PTB, WikiText) maps to id 0.

    ``WordTokenizer(itos)`` takes the vocabulary (``<unk>``, ``<eos>`` first); ``encode(text)`` returns
    the ids with an ``<eos>`` after every line, ``decode(ids)`` the words joined by spaces, ``<eos>`` as
    a line break.
    """

    unit = "word"
    UNK = "<unk>"
    EOS = "<eos>"
    SPECIALS = (UNK, EOS)

    def __init__(self, itos: list[str]) -> None:
        if list(itos[:2]) != list(self.SPECIALS):
            raise ValueError(f"a word vocabulary must start with {list(self.SPECIALS)}, got {itos[:2]}")
        if len(set(itos)) != len(itos):
            dup = [w for w, c in Counter(itos).items() if c > 1][:5]
            raise ValueError(f"word vocabulary has duplicate entries, e.g. {dup}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.unk_id = 0
        self.eos_id = 1

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"

    @classmethod
    def build(cls, lines: Iterable[str], min_count: int = 1, max_size: int | None = None) -> WordTokenizer:
        """Vocabulary of the words occurring at least ``min_count`` times, the most frequent first,
        at most ``max_size`` entries in total (``<unk>`` and ``<eos>`` included)."""
        if max_size is not None and max_size < len(cls.SPECIALS):
            raise ValueError(f"max_size must be at least 2 (room for <unk> and <eos>), got {max_size}")
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(line.split())
        for s in cls.SPECIALS:
            counts.pop(s, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(cls.SPECIALS)]
        return cls(list(cls.SPECIALS) + words)

    @staticmethod
    def _lines(line_or_lines: str | Iterable[str]) -> Iterable[str]:
        if isinstance(line_or_lines, str):
            text = line_or_lines
            parts = text.split("\n")
            return parts[:-1] if text.endswith("\n") else parts
        return line_or_lines

    def encode(self, line_or_lines: str | Iterable[str]) -> np.ndarray:
        """One line (a str; newlines inside split it) or an iterable of lines -> ids, with ``<eos>``
        after every line (an empty line gives just ``<eos>``)."""
        get, unk, eos = self.stoi.get, self.unk_id, self.eos_id
        ids: list[int] = []
        for line in self._lines(line_or_lines):
            ids.extend(get(w, unk) for w in line.split())
            ids.append(eos)
        return np.asarray(ids, dtype=token_dtype(self.vocab_size))

    def decode(self, tokens: Any) -> str:
        """Ids -> text: words joined by spaces, ``<eos>`` as a line break."""
        if _is_torch(tokens):
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens).ravel()
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"word ids must lie in [0, {self.vocab_size - 1}]")
        lines, cur = [], []
        for t in tokens.tolist():
            if t == self.eos_id:
                lines.append(" ".join(cur))
                cur = []
            else:
                cur.append(self.itos[t])
        text = "".join(line + "\n" for line in lines)
        return text + " ".join(cur)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "itos": list(self.itos)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: word vocabulary file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a JSON word vocabulary ({e})") from None
        if not isinstance(d, dict) or d.get("type") != "word" or not isinstance(d.get("itos"), list):
            raise ValueError(f'{path}: expected a JSON object {{"type": "word", "itos": [...]}}')
        return cls(d["itos"])


def code_counts(codes: Any, vocab_size: int) -> np.ndarray:
    """How often each code 0 .. vocab_size - 1 occurs (int64 array of length vocab_size)."""
    if _is_torch(codes):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes).ravel()
    return np.bincount(codes.astype(np.int64), minlength=vocab_size)[:vocab_size]


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in bits of the empirical code distribution given by ``counts`` (a code-length floor for
    a model that ignores context)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


# The names every command that takes an audio tokenizer offers (make_tokenizer also parses other bit
# depths, e.g. mulaw12, for library callers). pcm16 is linear16 under the name 16-bit users look for:
# the int16 samples exactly (token = sample + 32,768), for the 16-bit heads (model.head).
AUDIO_TOKENIZERS = ("mulaw8", "mulaw10", "mulaw16", "linear8", "linear16", "pcm16")
TOKENIZER_NAMES = (*AUDIO_TOKENIZERS, "bytes")

# How a loss per token is reported for each tokenizer unit (bytes of text are read as characters, as
# for enwik8 / text8)
_METRIC_NAMES = {"sample": "bits per sample", "byte": "bits per character", "word": "bits per word"}


def metric_name(unit: str, levels: int | None = None) -> str:
    """The label of a loss in bits per token for a tokenizer's ``unit``: "bits per sample" (audio),
    "bits per 16-bit sample" (audio of 65,536 ``levels``: not on the scale of 8-bit results),
    "bits per character" (bytes) or "bits per word"; ValueError for any other unit."""
    if unit == "sample" and levels == 65_536:
        return "bits per 16-bit sample"
    try:
        return _METRIC_NAMES[unit]
    except KeyError:
        raise ValueError(f"unknown tokenizer unit {unit!r}; expected one of {', '.join(_METRIC_NAMES)}"
                         ) from None


def make_tokenizer(name: str) -> MuLawTokenizer | LinearTokenizer | ByteTokenizer:
    """A tokenizer by name: mulawN, linearN (N = bits, e.g. mulaw8, linear16), pcm16 (= linear16) or
    bytes; returns a MuLawTokenizer, LinearTokenizer or ByteTokenizer (ValueError for another name)."""
    name = name.strip().lower()
    if name in ("bytes", "byte", "char"):
        return ByteTokenizer()
    if name == "pcm16":
        return LinearTokenizer(16)
    for prefix, cls in (("mulaw", MuLawTokenizer), ("linear", LinearTokenizer)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return cls(int(name[len(prefix):]))
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_dict()``."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "mulaw":
        return MuLawTokenizer(int(d["bits"]))
    if kind == "linear":
        return LinearTokenizer(int(d["bits"]))
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer(d["itos"])
    raise ValueError(f"unknown tokenizer description {d!r}; expected type mulaw, linear, bytes or word")


def start_token(tokenizer: Any = None, vocab_size: int | None = None) -> int:
    """Where unconditional generation starts: silence (the code of 0.0) for audio, the end of a line
    for text (``<eos>`` for words, ``\\n`` for bytes)."""
    if tokenizer is not None:
        if tokenizer.unit == "sample":
            return int(np.asarray(tokenizer.encode(np.zeros(1, dtype=np.float32))).reshape(-1)[0])
        return int(np.asarray(tokenizer.encode("\n")).reshape(-1)[0])  # words: <eos>; bytes: "\n"
    if vocab_size is None:
        raise ValueError("start_token needs a tokenizer or a vocab_size")
    return vocab_size // 2
