"""The Python API: ``txl_audio.load(path)`` gives a :class:`Model` that scores, generates, measures
context and compresses, with the same numbers and samples as the ``txl-audio`` commands.

Each method calls the library function its command calls; nothing is computed twice:

=========================  ==============================================  ================================
method                     library function                                command
=========================  ==============================================  ================================
``Model.score``            :func:`txl_audio.evaluate.evaluate_tokens`      ``evaluate CKPT --audio FILE``
``Model.generate``         :func:`txl_audio.generate.generate_tokens`      ``generate CKPT``
``Model.context_curve``    :func:`txl_audio.context.analyse_context`       ``context CKPT --audio ...``
``Model.compress``         :func:`txl_audio.codec.compress_with`           ``compress CKPT INPUT...``
``Model.decompress``       :func:`txl_audio.codec.decompress_files`        ``decompress FILE...``
=========================  ==============================================  ================================

Audio comes in as the commands read it: a file (any format libsndfile reads) or an array is mixed down
to mono and resampled to 16 kHz with soxr (:func:`txl_audio.audio.read_audio`,
:func:`txl_audio.audio.mono_waveform`), then tokenized with the checkpoint's tokenizer.

Mistakes raise subclasses of :class:`txl_audio.TxlAudioError` naming the thing (a missing checkpoint:
CheckpointError; an argument of the wrong type: ArgumentTypeError; an unreadable audio file:
AudioError); see :mod:`txl_audio.errors`.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from txl_audio import audio as audio_io
from txl_audio.checkpoint import load_model, resolve_checkpoint
from txl_audio.config import RunConfig
from txl_audio.devices import resolve_device
from txl_audio.errors import type_error, value_error
from txl_audio.evaluate import evaluate_tokens, file_documents, tokenize_file, tokenize_text
from txl_audio.generate import (
    _text_prompt,
    audio_prompt,
    decoding_dtype,
    generate_tokens,
    new_token_count,
    text_prompt,
    training_corpus_stats,
)
from txl_audio.model import TransformerXL
from txl_audio.model.sampling import check_sampling_args
from txl_audio.quality import quality_report

if TYPE_CHECKING:  # the codec needs constriction, the context plots matplotlib: imported when used
    from txl_audio.codec import Report
    from txl_audio.context import ContextCurve

PathLike = str | os.PathLike
# what the audio arguments take: a file, or samples (numpy array or torch tensor, (N,) or 2-D)
AudioSource = str | os.PathLike | np.ndarray | torch.Tensor

_DTYPES = {"fp32": "fp32", "float32": "fp32", torch.float32: "fp32",
           "bf16": "bf16", "bfloat16": "bf16", torch.bfloat16: "bf16"}
_CONTEXT_MEM_LENS = (0, 256, 1024, 4096)  # txl-audio context's default --mem-lens


def load(path: PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
         ) -> Model:
    """A shipped model's name (``"speech16"``, ``"speech8"``), a checkpoint file, or a run folder (its
    ``best.pt``, else its newest ``ckpt_STEP.pt``), as a :class:`Model` on ``device``.

    ``device``: None or "auto" (CUDA when torch sees a GPU, else CPU), "cpu", "cuda", "cuda:N" or a
    torch.device. ``dtype``: None (each method as its command defaults: fp32 for scoring, bf16 for
    generating on CUDA), "fp32" or "bf16" (scoring under bf16 autocast, generating with a bf16 copy of
    the weights). A missing or unreadable checkpoint is a CheckpointError naming the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise type_error("path", path, "a model name, checkpoint file or run folder (str or os.PathLike)")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise type_error("device", device, "None, a device name ('auto', 'cpu', 'cuda:0') or a torch.device")
    if dtype is not None and (not isinstance(dtype, (str, torch.dtype)) or dtype not in _DTYPES):
        raise value_error("dtype", dtype, "None, 'fp32' or 'bf16'")
    dev = resolve_device(device, option="device")
    ckpt = resolve_checkpoint(path)
    model, tokenizer, config = load_model(ckpt, dev)
    from txl_audio.models import named_path

    name = str(path) if named_path(str(path)) is not None and not Path(path).exists() else str(ckpt)
    return Model(model, tokenizer, config, ckpt, None if dtype is None else _DTYPES[dtype], name=name)


@dataclass
class Score:
    """The loss of a model on one file (or array, or text), prediction by prediction.

    ``bits[i]`` is the NLL in bits of token ``i + 1`` given the tokens before it (token 0 has nothing
    before it and is not predicted), so ``len(bits) == predictions``; ``total_bits`` is their sum and
    ``mean_bits`` their mean: bits per sample for audio (``metric`` says which unit). The numbers are
    ``txl-audio evaluate CKPT --audio FILE``'s (its ``summary.json`` ``bits_per_token`` is
    ``mean_bits``), with the settings below.
    """

    bits: np.ndarray  # (predictions,) float64
    total_bits: float
    mean_bits: float
    predictions: int
    unit: str  # "sample" (audio), "byte" or "word"
    metric: str  # "bits per sample", "bits per byte", ...
    sample_rate: int | None  # tokens per second of audio; None for text
    source: str  # the file, or "array" / "text"
    checkpoint: str
    mem_len: int
    tgt_len: int
    clamp_len: int
    same_length: bool
    cmem_len: int  # compressed memory slots (0: none)
    device: str
    dtype: str  # "fp32", or "bf16" autocast
    seconds: float  # wall time of the model's pass

    @property
    def times(self) -> np.ndarray:
        """Where each prediction is: seconds into the audio (the predicted sample's time), or the
        token's index for text; the x axis for plotting ``bits``."""
        index = np.arange(1, self.predictions + 1, dtype=np.float64)
        return index / self.sample_rate if self.sample_rate else index

    @property
    def perplexity(self) -> float:
        """2 ** mean_bits (the usual figure for word models)."""
        return float(2.0 ** self.mean_bits)

    def __repr__(self) -> str:
        return (f"Score({self.mean_bits:.4f} {self.metric} over {self.predictions:,} predictions of "
                f"{self.source}; mem_len {self.mem_len}, tgt_len {self.tgt_len}, {self.device}, "
                f"{self.dtype})")


class Model:
    """A checkpoint loaded for use from Python (made by :func:`load`).

    Attributes: ``model`` (the :class:`~txl_audio.model.TransformerXL`, eval mode), ``tokenizer``,
    ``config`` (the run's :class:`~txl_audio.config.RunConfig`), ``path`` (the checkpoint file),
    ``device`` and ``dtype`` (None: each method's default).
    """

    def __init__(self, model: TransformerXL, tokenizer: Any, config: RunConfig, path: Path,
                 dtype: str | None = None, name: str | None = None) -> None:
        self.model = model
        self.name = name or str(path)  # a shipped model's name ("speech16"), else the checkpoint's path
        self._coder = None  # the codec's portable model, made when first used
        self.tokenizer = tokenizer
        self.config = config
        self.path = Path(path)
        self.dtype = dtype
        self._bf16: TransformerXL | None = None  # the bf16 copy generation uses, made once

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_audio(self) -> bool:
        return self.tokenizer.unit == "sample"

    @property
    def sample_rate(self) -> int | None:
        """16,000 for an audio model (the rate of everything it reads and makes), None for text."""
        return audio_io.SAMPLE_RATE if self.is_audio else None

    def __repr__(self) -> str:
        c = self.config.model
        return (f"txl_audio.Model({self.path}: {c.n_layer} layers, d_model {c.d_model}, {c.attention} "
                f"attention, tgt_len {c.tgt_len}, mem_len {c.mem_len}, {self.tokenizer!r}, {self.device})")

    # ---- inputs ------------------------------------------------------------------------------------

    def _tokens(self, source: Any, sample_rate: int | None, name: str) -> tuple[np.ndarray, str]:
        """One source as int64 tokens and a name: a file as the commands read it, or samples."""
        if isinstance(source, (str, os.PathLike)):
            _no_rate_for_files(name, sample_rate)
            if not self.is_audio and not Path(source).is_file():  # audio files are checked as they are read
                raise value_error(name, str(source), "a text file (no such file)")
            return tokenize_file(self.tokenizer, source), str(source)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            if not self.is_audio:
                raise type_error(name, source, "a text file's path (str or Path) for a text model")
            wave = audio_io.mono_waveform(source, _rate(sample_rate), audio_io.SAMPLE_RATE, name=name)
            return np.asarray(self.tokenizer.encode(wave)).astype(np.int64), "array"
        expected = ("a path, a numpy array or a torch tensor" if self.is_audio
                    else "a text file's path (str or Path); give text itself as text=")
        raise type_error(name, source, expected)

    # ---- likelihood --------------------------------------------------------------------------------

    def score(self, audio: AudioSource | None = None, mem_len: int | None = None, tgt_len: int | None = None,
              sample_rate: int | None = None, *, clamp_len: int | None = None,
              same_length: bool | None = None, cmem_len: int | None = None, text: str | None = None
              ) -> Score:
        """The model's loss on one recording, sample by sample, from an empty memory: the numbers of
        ``txl-audio evaluate CKPT --audio FILE``.

        ``audio``: a file's path (any format libsndfile reads), or samples as a numpy array or torch
        tensor, (N,) mono or 2-D multi-channel (N, C) or (C, N), floats in [-1, 1] or integer PCM, at
        ``sample_rate`` (default 16 kHz): mixed down to mono and resampled to 16 kHz with soxr as a file
        is. A text model takes a text file's path here, or the text itself as ``text=``.
        ``mem_len``, ``tgt_len``, ``clamp_len``, ``same_length``, ``cmem_len`` (a compressive model's
        compressed slots): as the command's options (default: the checkpoint's). Returns a
        :class:`Score`.
        """
        for key, value, lowest in (("mem_len", mem_len, 0), ("tgt_len", tgt_len, 1),
                                   ("clamp_len", clamp_len, -1), ("cmem_len", cmem_len, 0)):
            _check_int(key, value, lowest)
        if text is not None:
            if self.is_audio:
                raise type_error("text", text, "None for an audio model (give the audio first)")
            if not isinstance(text, str):
                raise type_error("text", text, "a str")
            if audio is not None:
                raise value_error("audio", audio, "None when text= is given")
            tokens, source = tokenize_text(self.tokenizer, text), "text"
        elif audio is None:
            raise type_error("audio", audio, "a path, a numpy array or a torch tensor"
                             if self.is_audio else "a text file's path, or text= the text")
        else:
            tokens, source = self._tokens(audio, sample_rate, "audio")
        if tokens.size < 2:
            raise value_error("audio" if text is None else "text", source,
                              f"at least 2 tokens (the first is not predicted); it has {tokens.size}")
        dtype = self.dtype or "fp32"  # txl-audio evaluate's default
        res = evaluate_tokens(self.model, [tokens], [source], unit=self.tokenizer.unit, split="files",
                              mem_len=mem_len, tgt_len=tgt_len, clamp_len=clamp_len, same_length=same_length,
                              cmem_len=cmem_len, dtype=dtype, baselines=False, sample_rate=self.sample_rate,
                              progress=False, token_nll=True)
        f, L = res.files[0], res.lengths
        bits = f.token_nll / math.log(2)
        return Score(bits=bits, total_bits=f.nll_nats / math.log(2), mean_bits=f.bits_per_token,
                     predictions=f.tokens, unit=res.unit, metric=res.metric, sample_rate=self.sample_rate,
                     source=source, checkpoint=str(self.path), mem_len=L.mem_len, tgt_len=L.tgt_len,
                     clamp_len=L.clamp_len, same_length=L.same_length, cmem_len=L.cmem_len,
                     device=res.device, dtype=dtype, seconds=res.seconds)

    def context_curve(self, audio: AudioSource | Sequence[AudioSource],
                      mem_lens: Sequence[int] = _CONTEXT_MEM_LENS, tgt_len: int | None = None,
                      clamp_len: int | None = None, sample_rate: int | None = None,
                      batch_size: int = 8, cmem_len: int | None = None) -> ContextCurve:
        """The loss against memory length: each file evaluated from an empty memory at every
        ``mem_lens`` value, what ``txl-audio context CKPT --audio ... --mem-lens ...`` writes to
        ``context_span.csv`` and plots.

        ``audio``: a file, a folder of them, an array (at ``sample_rate``, default 16 kHz) or a list of
        these. Returns a :class:`~txl_audio.context.ContextCurve`: ``curve.mem_lens`` and ``curve.bits``
        (bits per sample over all files at each), ``curve.points`` (each with the loss by position in
        the file over the buckets ``curve.edges``), ``curve.effective_context()`` and ``curve.notes``
        (memory lengths past the longest file are not evaluated: they change nothing).
        """
        from txl_audio.context import analyse_context

        sources = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not sources:
            raise value_error("audio", audio, "at least one file or array")
        if isinstance(mem_lens, (str, bytes)) or not isinstance(mem_lens, Sequence) or not mem_lens:
            raise type_error("mem_lens", mem_lens, "a non-empty list of memory lengths, e.g. [0, 256, 1024]")
        for m in mem_lens:
            _check_int("mem_lens", m, lowest=0)
        _check_int("tgt_len", tgt_len, lowest=1)
        _check_int("clamp_len", clamp_len, lowest=-1)
        _check_int("batch_size", batch_size, lowest=1)
        _check_int("cmem_len", cmem_len, lowest=0)
        docs, names = [], []
        for i, s in enumerate(sources):
            if isinstance(s, (str, os.PathLike)):
                _no_rate_for_files("audio", sample_rate)
                d, n = file_documents(self.tokenizer, [s])  # a folder: its files, as the command reads it
            else:
                tokens, _ = self._tokens(s, sample_rate, "audio")
                d, n = [tokens], [f"array {i}"]
            docs += d
            names += n
        return analyse_context(self.model, docs, names, name=str(self.path), mem_lens=mem_lens,
                               tgt_len=tgt_len, clamp_len=clamp_len, sample_rate=self.sample_rate,
                               unit=self.tokenizer.unit, batch_size=batch_size, dtype=self.dtype or "fp32",
                               progress=False, cmem_len=cmem_len)

    # ---- sampling ----------------------------------------------------------------------------------

    def generate(self, seconds: float | None = None, num: int = 1, prompt: AudioSource | None = None,
                 prompt_seconds: float | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, *, tokens: int | None = None,
                 prompt_text: str | None = None, sample_rate: int | None = None, batch_size: int = 8,
                 include_prompt: bool = True, progress: bool = False, return_report: bool = False,
                 prior_prediction: bool = False
                 ) -> np.ndarray | list[str] | tuple[np.ndarray, dict[str, Any]]:
        """``num`` samples, the same as ``txl-audio generate CKPT --seed SEED`` writes with the same
        settings (and the same ``batch_size``, 8 by default as there).

        Audio model: returns float32 samples at 16 kHz, shape (num, P + N): the prompt as the model
        heard it (P samples: its tokens decoded; none without a prompt), then ``seconds`` of new audio
        (N = seconds x 16,000; default 4 s, or ``tokens`` new samples), as each ``sample_NNN.wav`` holds
        them before its 16-bit rounding; ``include_prompt=False`` leaves the prompt out. ``prompt``: a
        file's path or an array (at ``sample_rate``, default 16 kHz), of which the first
        ``prompt_seconds`` are used (default: all of it; the command's default is 1 s).

        Text model: returns ``num`` strings, the prompt text as the model read it then ``tokens`` new
        tokens (default 200), as each ``sample_NNN.txt``; ``prompt`` is a UTF-8 file's path, or give
        ``prompt_text=`` the text.

        ``return_report=True`` (audio): returns ``(samples, report)``, the report the command writes into
        generation.json under "quality" (each new sample's RMS over time, clipped share, zero crossings,
        spectral flatness and degenerations, beside the training corpus's figures; ``report["warnings"]``:
        one line per degenerate sample), measured on the new audio (the prompt left out).

        ``temperature`` (0 = greedy), ``top_k``, ``top_p``: as the command's options; so is
        ``prior_prediction`` (``--prior-prediction``: a 16-bit head centred on its prior's prediction
        while sampling, as in training; by default the prior runs open, on the corpus's fixed predictor: see
        :func:`txl_audio.generate.open_loop_prior`). ``seed``: the
        same seed and batch size give the same samples (None: a fresh random seed). The model decodes in
        bf16 on CUDA unless ``load(..., dtype="fp32")``, in fp32 on the CPU, as the command does.
        """
        audio = self.is_audio
        _check_int("num", num, lowest=1)
        _check_int("batch_size", batch_size, lowest=1)
        _check_int("tokens", tokens, lowest=1)
        _check_int("top_k", top_k, lowest=1)
        if seed is not None and not _is_int(seed):
            raise type_error("seed", seed, "an int or None")
        for key, value in (("temperature", temperature), ("top_p", top_p), ("seconds", seconds),
                           ("prompt_seconds", prompt_seconds)):
            _check_number(key, value)
        check_sampling_args(temperature, top_k, top_p)
        if seconds is not None:
            if not audio:
                raise value_error("seconds", seconds, "None for a text model (give tokens= instead)")
            if not seconds > 0:
                raise value_error("seconds", seconds, "positive")
        if prompt_seconds is not None and prompt_seconds < 0:
            raise value_error("prompt_seconds", prompt_seconds, "None (all of the prompt) or >= 0")
        n_new = new_token_count(audio, 4.0 if seconds is None else seconds, tokens)

        prompt_tokens, prompt_wave, prompt_str = None, np.zeros(0, np.float32), ""
        if prompt_text is not None:
            if audio:
                raise type_error("prompt_text", prompt_text, "None for an audio model (give prompt=)")
            if not isinstance(prompt_text, str):
                raise type_error("prompt_text", prompt_text, "a str")
            if prompt is not None:
                raise value_error("prompt", prompt, "None when prompt_text= is given")
            prompt_tokens = text_prompt(self.tokenizer, prompt_text, "prompt_text")
        elif prompt is not None:
            if audio:
                if isinstance(prompt, (str, os.PathLike)):
                    _no_rate_for_files("prompt", sample_rate)
                    wave = audio_io.load_audio(prompt, audio_io.SAMPLE_RATE)  # as the command reads it
                elif isinstance(prompt, (np.ndarray, torch.Tensor)):
                    wave = audio_io.mono_waveform(prompt, _rate(sample_rate), audio_io.SAMPLE_RATE, "prompt")
                else:
                    raise type_error("prompt", prompt, "a path, a numpy array or a torch tensor")
                prompt_tokens, prompt_wave = audio_prompt(self.tokenizer, wave, prompt_seconds)
            else:
                if not isinstance(prompt, (str, os.PathLike)):
                    raise type_error("prompt", prompt, "a text file's path (or give prompt_text= the text)")
                prompt_tokens = _text_prompt(str(prompt), self.tokenizer)
        if prompt_tokens is not None and not audio:
            prompt_str = self.tokenizer.decode(prompt_tokens)  # what the model read (unknown words <unk>)

        if seed is None:
            seed = secrets.randbits(63)
        gen = generate_tokens(self._decoding_model(), self.tokenizer, n_new, num, batch_size, prompt_tokens,
                              temperature, top_k, top_p, int(seed), show_progress=progress,
                              prior_prediction=prior_prediction)
        if not audio:
            return [(prompt_str if include_prompt else "") + self.tokenizer.decode(row) for row in gen.tokens]
        head = prompt_wave if include_prompt else prompt_wave[:0]
        new = [np.asarray(self.tokenizer.decode(row), dtype=np.float32) for row in gen.tokens]
        samples = np.stack([np.concatenate([head, w]) for w in new])
        if not return_report:
            return samples
        report = quality_report([(f"sample_{i:03d}", w) for i, w in enumerate(new)],
                                training_corpus_stats(self.path, self.config))
        return samples, report

    def _decoding_model(self) -> TransformerXL:
        """The model generation runs: a bf16 copy (made once) where the command would decode in bf16."""
        if decoding_dtype(self.dtype, self.device) == "fp32":
            return self.model
        if self._bf16 is None:
            self._bf16 = copy.deepcopy(self.model).to(torch.bfloat16)
        return self._bf16

    # ---- lossless coding ---------------------------------------------------------------------------

    def compress(self, inputs: PathLike | Sequence[PathLike], out_dir: PathLike, *, convert: bool = False,
                 chunk: int = 4096, batch: int = 256, threads: int | None = None, progress: bool = False
                 ) -> Report:
        """Compress audio files or folders losslessly into ``out_dir/NAME.txla`` (and
        ``out_dir/compress.csv``), as ``txl-audio compress INPUT... --model CKPT --out DIR`` does;
        returns the codec's :class:`~txl_audio.codec.Report` (``report.results``: per file its samples,
        bytes and bits per sample; ``report.summary()``). A 16-bit model gives back the exact int16
        samples of a 16 kHz mono 16-bit file (others are refused unless ``convert=True``); an 8-bit
        model gives back the tokens. The files decode on any machine (the probabilities come from the
        model in integer arithmetic); ``threads``: torch's CPU threads while coding.
        """
        from txl_audio.codec import compress_files

        paths = _paths("inputs", inputs)
        _check_int("chunk", chunk, lowest=1)
        _check_int("batch", batch, lowest=1)
        return compress_files(paths, _path("out_dir", out_dir), model=self._coding_model(), convert=convert,
                              chunk=chunk, batch=batch, threads=threads, progress=progress)

    def decompress(self, files: PathLike | Sequence[PathLike], out_dir: PathLike, *,
                   threads: int | None = None, force: bool = False, progress: bool = False) -> Report:
        """Decode ``.txla`` files (or folders of them) made with this model into ``out_dir/NAME.wav``,
        each checked against its CRC-32, as ``txl-audio decompress`` does; returns the codec's
        :class:`~txl_audio.codec.Report`. A file made with another model, a corrupt or truncated one is a
        CodecError naming it."""
        from txl_audio.codec import decompress_files

        return decompress_files(_paths("files", files), _path("out_dir", out_dir), threads=threads,
                                force=force, progress=progress, model=self._coding_model())

    def _coding_model(self):
        """The codec's view of this model (the portable model is made once)."""
        if self._coder is None:
            from txl_audio.codec import coding_model
            from txl_audio.models import named_path

            named = named_path(str(self.name)) is not None
            self._coder = coding_model(self.model, self.tokenizer, str(self.name if named else self.path),
                                       named)
        return self._coder


# ---- argument checks: a wrong type is an ArgumentTypeError, a wrong value an ArgumentValueError --------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, lowest: int) -> None:
    """None, or an int >= lowest."""
    if value is None:
        return
    if not _is_int(value):
        raise type_error(name, value, "an int")
    if value < lowest:
        raise value_error(name, value, f">= {lowest}")


def _check_number(name: str, value: Any) -> None:
    """None, or a real number."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
        raise type_error(name, value, "a number")


def _rate(sample_rate: Any) -> int:
    if sample_rate is None:
        return audio_io.SAMPLE_RATE
    if not _is_int(sample_rate):
        raise type_error("sample_rate", sample_rate, "an int (Hz) or None (16 kHz)")
    return int(sample_rate)


def _no_rate_for_files(name: str, sample_rate: Any) -> None:
    if sample_rate is not None:
        raise value_error("sample_rate", sample_rate,
                          f"None when {name} is a file (sample_rate is the rate of an array; a file's own "
                          "rate is read from it)")


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise type_error(name, value, "a path (str or os.PathLike)")
    return Path(value)


def _paths(name: str, value: Any) -> list[Path]:
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    if not isinstance(value, (list, tuple)) or not value:
        raise type_error(name, value, "a path or a non-empty list of paths")
    return [_path(name, v) for v in value]


__all__ = ["Model", "Score", "load"]
