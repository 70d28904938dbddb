"""Autoregressive sampling from a Transformer-XL, one token (audio sample, byte or word) at a time.

``sample()`` conditions on a prompt (or a start token) and draws new tokens with temperature, top-k
and top-p. The model is fed through a decoder (:mod:`txl_audio.decoders`), which owns the stream's
past:

- with the cache (``use_cache=True``, the default): every layer's keys and values in the model's
  ring-buffer cache, so one new token costs attention over the cache (O(context x d) per layer); on
  CUDA the step is replayed as a CUDA graph;
- without (``use_cache=False``): the reference path, decoding by *feeding memories back*: each token
  runs ``model(token, mems=context)`` with every layer's hidden states of the visible past, which
  re-projects the whole context every step (O(context x d^2) per layer). Slow and obviously right;
  tests and benchmarks compare the cached path against it.

Both see exactly the context the model had in training: segments of ``tgt_len`` tokens from token 0
of the stream (the prompt's first token, or the start token), each attending to its own earlier
tokens plus the ``mem_len`` positions before the segment. So the context slides in steps of
``tgt_len``, never grows past ``mem_len + tgt_len``, and generation runs for minutes at a constant
cost per token.

Without a prompt, decoding starts from one *start token* that is not part of the output: the
tokenizer's code for silence for audio (``tokenizer.encode(0.0)``), the end of a line for text
(``<eos>`` for words, ``\n`` for bytes); ``vocab_size // 2`` when no tokenizer is given, which is the
silence code of the symmetric mu-law and linear tokenizers.

Sampling draws ``argmax(p / E)`` with ``E ~ Exponential(1)`` i.i.d. (equivalent to Gumbel-max), which
picks token i with probability p_i, stays on the device (no host sync per step) and is reproducible
with a ``torch.Generator``.

Shape letters: B = batch (streams), P = prompt length, N = new tokens, V = vocabulary, D = d_model,
C = context positions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from txl_audio.audio import SAMPLE_RATE, load_audio, save_audio
from txl_audio.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from txl_audio.config import Lengths
from txl_audio.decoders import make_decoder
from txl_audio.devices import device_name, resolve_device, torch_threads
from txl_audio.model import TransformerXL
from txl_audio.model.sampling import check_sampling_args, draw, filter_logits  # noqa: F401 (public here too)
from txl_audio.quality import corpus_stats, quality_report
from txl_audio.spectrogram import plot_spectrogram
from txl_audio.tokenizers import start_token  # noqa: F401 (public here too)

ProgressFn = Callable[[int], None]


# ----------------------------------------------------------------------------------------------------
# decoding


@contextmanager
def open_loop_prior(model: TransformerXL, on: bool = True) -> Iterator[None]:
    """While sampling, a 16-bit head's prior (the predictor cascade or the fitted LPC) adapts nothing:
    with the training corpus's figures in the checkpoint it is the corpus's fixed
    long-term-spectrum predictor (``lp.long_term``, attached by ``load_model``), its level the running
    mean of what that leaves at 2^-8 pulled toward the corpus's median residual level at 2^-12 (an
    anchor: a level that only follows the model's own draws is a multiplicative random walk, which
    falls silent or grows to the rails), the unit a mixture head draws in and a dual softmax's draws
    are rescaled to (``DualSoftmaxHead.sample``); otherwise it predicts 0 and its unit is the running
    magnitude of the signal itself. Why: a prior
    that adapts to the samples it is fed refits itself on the model's own output, a closed loop that
    teacher-forced training never runs and that is unstable: its poles drift to the rails or its
    excitation dies out (issue 28, measured in docs/results.md). The network, which learned what the
    prior leaves, then draws the sample alone. No-op for models without a prior."""
    lp = getattr(model, "lp", None)
    if lp is None or not on:
        yield
        return
    before = lp.open_loop
    lp.open_loop = True
    try:
        yield
    finally:
        lp.open_loop = before


def _device(model: TransformerXL) -> torch.device:
    return next(model.parameters()).device


def _start_tokens(
    model: TransformerXL, prompt: torch.Tensor | None, batch_size: int | None, start_token: int | None
) -> torch.Tensor:
    """The tokens decoding conditions on: the prompt (B, P), or one start token per stream (B, 1)."""
    config = model.config
    device = _device(model)
    if prompt is not None:
        prompt = torch.as_tensor(prompt)
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt_tokens must be (B, P) with P >= 1, got shape {tuple(prompt.shape)}")
        if batch_size is not None and prompt.shape[0] != batch_size:
            if prompt.shape[0] != 1:
                raise ValueError(f"prompt has {prompt.shape[0]} rows but batch_size={batch_size}")
            prompt = prompt.expand(batch_size, -1)
        lo, hi = int(prompt.min()), int(prompt.max())
        if lo < 0 or hi >= config.vocab_size:
            raise ValueError(f"prompt tokens must be in [0, {config.vocab_size}), got range [{lo}, {hi}]")
        return prompt.to(device=device, dtype=torch.long)
    if start_token is None:
        start_token = config.vocab_size // 2
    if not 0 <= start_token < config.vocab_size:
        raise ValueError(f"start_token must be in [0, {config.vocab_size}), got {start_token}")
    return torch.full((batch_size or 1, 1), start_token, dtype=torch.long, device=device)


def _progress_every(batch_size: int) -> int:
    """Steps between progress callbacks: often enough for a live bar, rarely enough to cost nothing."""
    return 1024 if batch_size <= 16 else 256


@torch.inference_mode()
def sample(
    model: TransformerXL,
    prompt_tokens: torch.Tensor | None,
    n_new: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    *,
    batch_size: int | None = None,
    start_token: int | None = None,
    progress: ProgressFn | None = None,
    decoder: str | None = None,
    cuda_graph: bool | None = None,
    lengths: Lengths | None = None,
    prior_prediction: bool = False,
) -> torch.Tensor:
    """Continue ``prompt_tokens (B, P)`` (or start from ``start_token``, ``batch_size`` streams) by
    ``n_new`` tokens; returns the new tokens ``(B, n_new)`` int64 on the model's device.

    temperature 0 = greedy. ``generator`` (on the model's device) makes the draws reproducible.
    ``use_cache=False`` runs the slow reference path. ``progress(n)`` is called now and then with the
    number of tokens per stream generated so far. ``decoder`` picks the implementation
    (:mod:`txl_audio.decoders`): "cached" (the default with the cache: ``model.step`` over a ring
    buffer, a CUDA graph on CUDA unless ``cuda_graph=False``) or "reference" (the default without it).
    ``lengths``: the memory and segment lengths to decode with (default: the trained ones). Run the
    model in eval mode; for bf16, convert it (``model.to(torch.bfloat16)``).

    A 16-bit head's prior runs open while sampling (:func:`open_loop_prior`: the corpus's fixed
    predictor, or 0 for checkpoints without its figures), prompt included;
    ``prior_prediction=True`` centres the head on the prior's prediction as in training (its samples
    drift to full scale or silence: issue 28).
    """
    check_sampling_args(temperature, top_k, top_p)
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    tokens = _start_tokens(model, prompt_tokens, batch_size, start_token)
    B = tokens.shape[0]
    out = torch.empty(B, n_new, dtype=torch.long, device=tokens.device)
    if n_new == 0:
        return out
    kind = decoder or ("cached" if use_cache else "reference")
    if not use_cache and kind != "reference":
        raise ValueError(f"use_cache=False is the reference path; decoder={kind!r} contradicts it")
    with open_loop_prior(model, not prior_prediction):
        dec = make_decoder(model, B, kind, cuda_graph, lengths)
        predicted = dec.prefill(tokens)
        every = _progress_every(B)
        for i in range(n_new):
            tok = predicted.sample(temperature, top_k, top_p, generator)  # (B,)
            out[:, i] = tok
            if i + 1 < n_new:
                predicted = dec.step(tok)
            if progress is not None and i % every == 0:
                progress(i)
    if progress is not None:
        progress(n_new)
    return out


def now(device: torch.device) -> float:
    """Wall time after the device's queued work has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------------
# checkpoint -> audio files


def decoding_dtype(dtype: str | None, device: torch.device) -> str:
    """"bf16" or "fp32" for decoding on ``device``: ``"auto"`` (or None) is bf16 on CUDA, fp32 on CPU."""
    if dtype in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"--dtype must be bf16 or fp32, got {dtype!r}")
    return dtype


def audio_prompt(tokenizer: Any, wave: np.ndarray,
                 prompt_seconds: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A mono 16 kHz prompt as ``(codes (P,) int64, what the model heard (P,) float32)``: its first
    ``prompt_seconds`` (None or 0: all of it), tokenized, and the codes decoded back."""
    if prompt_seconds and prompt_seconds > 0:
        wave = wave[: max(1, round(prompt_seconds * SAMPLE_RATE))]
    codes = np.asarray(tokenizer.encode(wave)).astype(np.int64)
    return codes, np.asarray(tokenizer.decode(codes), dtype=np.float32)


TEXT_TOKENS = 200  # new tokens per sample of a text model unless told


def new_token_count(audio: bool, seconds: float, tokens: int | None = None) -> int:
    """New tokens per sample: ``tokens`` when given, else ``seconds`` of audio at 16 kHz (at least one),
    or TEXT_TOKENS for a text model."""
    return tokens or (max(1, round(seconds * SAMPLE_RATE)) if audio else TEXT_TOKENS)


@dataclass
class Generation:
    """What :func:`generate_tokens` made: the new tokens of every sample, and how long it took."""

    tokens: np.ndarray  # (num, n_new) int64
    seconds: float  # wall time of the sampling, device work included
    device_name: str  # the card, or the CPU and the threads it decoded with


def generate_tokens(
    model: TransformerXL,
    tokenizer: Any,
    n_new: int,
    num: int,
    batch_size: int = 8,
    prompt_tokens: np.ndarray | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    show_progress: bool | None = None,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    prior_prediction: bool = False,
) -> Generation:
    """``num`` samples of ``n_new`` new tokens each, ``batch_size`` streams at a time, continuing
    ``prompt_tokens`` (P,) (or the tokenizer's start token: silence, or a line end); returns them as a
    :class:`Generation`, tokens (num, n_new) int64.

    One ``torch.Generator`` seeded with ``seed`` draws every batch in turn, so the same seed and batch
    size give the same tokens. ``threads``: CPU threads while decoding (default 1: one token at a time is
    a chain of tiny ops; more threads rarely help and on a busy machine make it many times slower).
    ``on_batch(first, tokens (b, n_new))`` is called after each batch (``first``: its first sample's
    index). ``prior_prediction``: see :func:`sample` (default off: a 16-bit head's prior runs open
    while sampling). ``txl-audio generate`` (:func:`generate_files`) and ``txl_audio.load(...).generate``
    both call this.
    """
    dev = _device(model)
    audio = tokenizer.unit == "sample"
    prompt = None
    if prompt_tokens is not None:
        prompt = torch.from_numpy(np.asarray(prompt_tokens, dtype=np.int64)).unsqueeze(0)  # (1, P)
    generator = torch.Generator(device=dev).manual_seed(seed)
    start = start_token(tokenizer)
    per_unit = SAMPLE_RATE if audio else 1  # the bar counts seconds of audio, or tokens
    bar = tqdm(total=round(num * n_new / per_unit, 3), unit="s" if audio else "tok",
               desc="generated audio" if audio else "generated text",
               disable=None if show_progress is None else not show_progress,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} {unit} [{elapsed}<{remaining}{postfix}]")
    out = np.zeros((num, n_new), dtype=np.int64)
    done_tokens, gen_time = 0, 0.0
    with torch_threads((threads or 1) if dev.type == "cpu" else None), bar:
        name = device_name(dev)
        for first in range(0, num, batch_size):
            b = min(batch_size, num - first)
            t0 = now(dev)

            def progress(n: int, b=b, t0=t0, done=done_tokens, spent=gen_time) -> None:
                total = done + b * n
                bar.n = round(total / per_unit, 3)
                rate = total / max(spent + time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{rate / SAMPLE_RATE:.3f}x real time" if audio else f"{rate:,.0f} tok/s",
                                    refresh=False)
                bar.refresh()

            new = sample(model, prompt, n_new, temperature, top_k, top_p, generator,
                         batch_size=b, start_token=start, progress=progress,
                         prior_prediction=prior_prediction)
            out[first : first + b] = new.cpu().numpy()
            gen_time += now(dev) - t0
            done_tokens += b * n_new
            if on_batch is not None:
                on_batch(first, out[first : first + b])
    return Generation(out, gen_time, name)


def generate_files(
    checkpoint: str,
    out_dir: str,
    seconds: float = 4.0,
    num: int = 8,
    batch_size: int = 8,
    prompt: str | None = None,
    prompt_seconds: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    plots: bool = True,
    show_progress: bool | None = None,
    threads: int | None = None,
    tokens: int | None = None,
    prior_prediction: bool = False,
) -> dict[str, Any]:
    """Generate ``num`` samples from a checkpoint into ``out_dir`` and write generation.json (settings,
    speed, device); returns the JSON's contents.

    Audio models: sample_NNN.wav (16 kHz mono: the prompt, then ``seconds`` of continuation) and
    sample_NNN.png (its spectrogram). Text models (bytes or words): sample_NNN.txt (the prompt text, then
    ``tokens`` new tokens, 200 by default). ``tokens`` sets the new tokens for audio models too
    (samples, instead of ``seconds``).

    Speed is reported as tokens (samples) per second of generation, all streams together and per
    stream, and for audio as the real-time factor: samples per second / 16,000, above 1 = faster than
    real time. ``dtype="bf16"`` runs a bf16 copy of the weights and cache (no autocast: nothing to cast
    per step). ``threads``: CPU threads while decoding; default 1 (see :func:`generate_tokens`, which
    does the sampling). ``prior_prediction``: centre a 16-bit head on its prior's prediction while
    sampling, as in training (off by default: see :func:`open_loop_prior`).
    """
    check_sampling_args(temperature, top_k, top_p)
    for name, value in (("seconds", seconds), ("num", num), ("batch_size", batch_size)):
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if tokens is not None and tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    dev = resolve_device(device)
    dtype = decoding_dtype(dtype, dev)
    ckpt_path = resolve_checkpoint(checkpoint)
    model, tokenizer, run_config = load_model(ckpt_path, dev)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    audio = tokenizer.unit == "sample"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    prompt_tokens = None
    prompt_wave = np.zeros(0, dtype=np.float32)
    prompt_text = ""
    if prompt is not None:
        if audio:
            wave = load_audio(prompt, SAMPLE_RATE)  # resampled to 16 kHz, mono
            prompt_tokens, prompt_wave = audio_prompt(tokenizer, wave, prompt_seconds)  # wave: what it heard
        else:
            prompt_tokens = _text_prompt(prompt, tokenizer)
            prompt_text = tokenizer.decode(prompt_tokens)  # what the model read (unknown words as <unk>)
    boundary = prompt_wave.size / SAMPLE_RATE
    n_new = new_token_count(audio, seconds, tokens)
    start = start_token(tokenizer)
    files: list[dict[str, Any]] = []
    new_waves: list[tuple[str, np.ndarray]] = []

    def write(first: int, new: np.ndarray) -> None:
        for j in range(len(new)):
            stem = f"sample_{first + j:03d}"
            if audio:
                new_waves.append((f"{stem}.wav", np.asarray(tokenizer.decode(new[j]), dtype=np.float32)))
                files.append(_write_audio(out, stem, prompt_wave, tokenizer.decode(new[j]), plots,
                                          f"{ckpt_path.name}, T={temperature}",
                                          boundary if prompt is not None else None))
            else:
                path = out / f"{stem}.txt"
                path.write_text(prompt_text + tokenizer.decode(new[j]), encoding="utf-8")
                files.append({"txt": path.name, "tokens": int(n_new)})

    gen = generate_tokens(model, tokenizer, n_new, num, batch_size, prompt_tokens, temperature, top_k, top_p,
                          seed, threads, show_progress, on_batch=write, prior_prediction=prior_prediction)
    gen_time, name = gen.seconds, gen.device_name
    rate = num * n_new / gen_time
    streams = min(batch_size, num)
    report = {
        "checkpoint": str(ckpt_path),
        "model": run_config.to_dict()["model"],
        "tokenizer": tokenizer.to_dict(),
        "unit": tokenizer.unit,
        "sample_rate": SAMPLE_RATE if audio else None,
        "settings": {
            "seconds": seconds if audio and tokens is None else None, "tokens": tokens, "num": num,
            "batch_size": batch_size, "temperature": temperature,
            "prior_prediction": bool(prior_prediction) if getattr(model, "lp", None) is not None else None,
            "top_k": top_k, "top_p": top_p, "seed": seed, "device": str(dev), "dtype": dtype,
            "threads": (threads or 1) if dev.type == "cpu" else None,
            "prompt": None if prompt is None else str(prompt),
            "prompt_seconds": prompt_seconds if prompt is not None and audio else None,
            "start_token": None if prompt is not None else start,
        },
        "new_tokens_per_sample": n_new,
        "tokens_per_second": rate,
        "tokens_per_second_per_stream": rate / streams,
        "generation_seconds": gen_time,
        "device_name": name,
        "torch_version": torch.__version__,
        "files": files,
    }
    if audio:
        report.update({
            "prompt_boundary_seconds": boundary,
            "new_samples_per_clip": n_new,
            "samples_per_second": rate,
            "samples_per_second_per_stream": rate / streams,
            "realtime_factor": rate / SAMPLE_RATE,
            "realtime_factor_per_stream": rate / SAMPLE_RATE / streams,
        })
        report["quality"] = quality_report(new_waves, training_corpus_stats(ckpt_path, run_config))
    else:
        report["prompt_characters"] = len(prompt_text)
    (out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def training_corpus_stats(ckpt_path: str | Path, run_config: Any) -> dict[str, Any] | None:
    """The training audio's figures (:mod:`txl_audio.quality`): stored in the checkpoint by training,
    else (older checkpoints) computed from the corpus the run names when it is still there, else None."""
    try:
        stats = load_checkpoint(ckpt_path).get("corpus_stats")
    except Exception:  # noqa: BLE001 (the model loaded from it: this is only the figures)
        stats = None
    if stats is not None:
        return stats
    from txl_audio.data import Corpus

    try:
        return corpus_stats(Corpus(run_config.data.corpus), run_config.data.train_split)
    except (OSError, ValueError):
        return None


def _text_prompt(path: str, tokenizer: Any) -> np.ndarray:
    """A text file as the model's tokens (words: one <eos> per line, as in preparation)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompt file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the prompt of a text model must be UTF-8 text ({e})") from None
    return text_prompt(tokenizer, text, f"{path}: the prompt file")


def text_prompt(tokenizer: Any, text: str, name: str = "the prompt") -> np.ndarray:
    """A text prompt as the model's int64 tokens (words: one <eos> per line, as in preparation); an
    empty one is a ValueError naming ``name``."""
    codes = np.asarray(tokenizer.encode(text)).astype(np.int64)
    if codes.size == 0:
        raise ValueError(f"{name} is empty")
    return codes


def _write_audio(out: Path, stem: str, prompt_wave: np.ndarray, new_wave: Any, plots: bool, title: str,
                 boundary: float | None) -> dict[str, Any]:
    """stem.wav (the prompt, then the new samples) and, with ``plots``, stem.png (its spectrogram)."""
    wave = np.concatenate([prompt_wave, np.asarray(new_wave, dtype=np.float32)])
    wav_path = out / f"{stem}.wav"
    save_audio(wav_path, wave, SAMPLE_RATE)
    entry = {"wav": wav_path.name, "seconds": wave.size / SAMPLE_RATE}
    if plots:
        png = plot_spectrogram(wave, out / f"{stem}.png", SAMPLE_RATE, title=f"{wav_path.name} ({title})",
                               boundary_seconds=boundary)
        entry["png"] = png.name
    return entry
