"""Corpus preparation: audio folders / manifests and text corpora -> token shards + meta.json.

The folder layout is described in :mod:`txl_audio.data`. Both functions are deterministic (the same
input gives byte-identical output, whatever the number of workers) and write through a temporary
folder, so an existing corpus is replaced whole or not at all.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from txl_audio.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, find_audio_files, read_audio
from txl_audio.data import SPLITS, CorpusWriter, check_replaceable
from txl_audio.errors import TxlAudioError
from txl_audio.tokenizers import AUDIO_TOKENIZERS, ByteTokenizer, WordTokenizer, make_tokenizer

# Speech Commands names files SPEAKER_nohash_N.wav, SPEAKER being 8 hex digits
DEFAULT_SPEAKER_REGEX = r"([0-9a-f]{8})_nohash_"
TEXT_FORMATS = ("words", "bytes", "enwik8", "text8")
# per-file scaling before the tokenizer: "minmax" maps each file's [min, max] onto [-1, 1], as the
# SaShiMi code (state-spaces/s4, src/dataloaders/audio.py: minmax_scale before mu_law_encode) does for SC09
NORMALIZATIONS = ("none", "minmax")
SPLIT_BY = ("speaker", "file", "manifest")
# enwik8 / text8 convention (Mahoney's files, as in Al-Rfou et al. 2019 and Dai et al. 2019)
STANDARD_SPLIT = (90_000_000, 5_000_000, 5_000_000)


class PrepareError(TxlAudioError, ValueError):
    """Preparation cannot go on; the message says which input and what to do."""


@dataclass
class PrepareReport:
    out_dir: Path
    splits: dict[str, dict[str, Any]]  # split -> files, tokens (, seconds)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    conversions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0  # seconds (not written to meta.json: it would break determinism)

    def summary(self) -> str:
        parts = []
        for s, v in self.splits.items():
            size = f"{v['seconds'] / 3600:.2f} h" if "seconds" in v else f"{v['tokens']:,} tokens"
            parts.append(f"{s} {v['files']} files {size}")
        line = f"prepared {self.out_dir}: " + ", ".join(parts)
        if self.conversions:
            c = self.conversions
            line += (f"; converted: {c['resampled']} resampled, {c['downmixed']} downmixed to mono, "
                     f"{c['converted_bit_depth']} from another bit depth or encoding")
        if self.skipped:
            line += f"; skipped {len(self.skipped)} bad file(s), see {self.out_dir / 'skipped.tsv'}"
        elif self.conversions:
            line += "; skipped 0"
        return line + f" ({self.elapsed:.1f} s)"


# --------------------------------------------------------------------------------------------
# audio inputs


@dataclass(frozen=True)
class AudioSource:
    path: Path  # absolute
    name: str  # relative to its input folder / manifest, posix, with extension (speaker fallback)
    speaker: str | None = None  # a manifest's speaker column
    split: str | None = None  # a manifest's split column (train, valid or test)


def _read_manifest(manifest: Path) -> list[AudioSource]:
    """Sources of a .txt (one path per line) or .csv manifest (a ``path`` column; optional ``speaker``
    and ``split`` columns, the split one of train, valid, test)."""
    base = manifest.parent.resolve()
    rows: list[dict[str, str | None]]
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise PrepareError(f"manifest {manifest} is a CSV without a 'path' column "
                                   f"(columns: {reader.fieldnames}); add a header row with 'path'")
            rows = [{k: row.get(k) for k in ("path", "speaker", "split")} for row in reader]
        for i, row in enumerate(rows, start=2):
            if "split" in (reader.fieldnames or []) and row["split"] not in SPLITS:
                raise PrepareError(f"manifest {manifest} line {i}: split {row['split']!r} is not one of "
                                   f"{', '.join(SPLITS)}")
    else:
        lines = manifest.read_text(encoding="utf-8").splitlines()
        rows = [{"path": ln} for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]
    out = []
    for row in rows:
        e = (row.get("path") or "").strip()
        if not e:
            continue
        p = Path(e)
        full = p if p.is_absolute() else base / p
        name = p.as_posix()  # as written: what --speaker-regex is searched in
        out.append(AudioSource(full.absolute(), name, row.get("speaker") or None, row.get("split")))
    return out


def collect_audio_sources(inputs: Sequence[str | Path]) -> list[AudioSource]:
    """Audio files from folders (recursive), manifests (.txt: one path per line; .csv: a ``path``
    column; relative paths are relative to the manifest) and single audio files; duplicates removed,
    sorted by path."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise PrepareError("no input given: name audio folders, audio files or manifests")
    found: dict[Path, AudioSource] = {}
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist (expected an audio folder, file or manifest)")
        if p.is_dir():
            files = find_audio_files(p)
            if not files:
                raise PrepareError(f"no audio files found in folder {p} (looked for "
                                   f"{', '.join(AUDIO_EXTENSIONS)})")
            srcs = [AudioSource(f.absolute(), f.relative_to(p).as_posix()) for f in files]
        elif p.suffix.lower() in AUDIO_EXTENSIONS:
            srcs = [AudioSource(p.absolute(), p.name)]
        else:
            srcs = _read_manifest(p)
            if not srcs:
                raise PrepareError(f"manifest {p} lists no files")
        for s in srcs:
            found.setdefault(s.path, s)
    return sorted(found.values(), key=lambda s: s.path.as_posix())


def speaker_of(name: str, regex: re.Pattern[str]) -> str:
    """The regex's first group (or whole match) searched in ``name``; else ``name`` without its
    extension (each file its own speaker)."""
    m = regex.search(name)
    if m:
        return m.group(1) if m.groups() else m.group(0)
    return str(PurePosixPath(name).with_suffix(""))


def _hash01(key: str) -> float:
    # stable across runs, machines and Python versions (unlike hash())
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_splits(keys: Iterable[str], valid: float, test: float) -> tuple[dict[str, str], list[str]]:
    """Split each key (speaker or file) by a stable hash: u in [0, test) -> test, [test, test + valid)
    -> valid, else train. A requested split that comes out empty receives one key from the largest
    split (train first, then valid, then test, as far as there are keys), so with >= 3 keys all three
    requested splits are non-empty. Returns (key -> split, warnings)."""
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise PrepareError(f"--valid {valid} and --test {test} must be fractions in [0, 1) with sum < 1")
    keys = sorted(set(keys))
    u = {k: _hash01(k) for k in keys}
    split = {k: "test" if u[k] < test else "valid" if u[k] < test + valid else "train" for k in keys}
    warnings = []
    wanted = ["train"] + (["valid"] if valid > 0 else []) + (["test"] if test > 0 else [])
    for s in wanted[: len(keys)]:
        members = {t: [k for k in keys if split[k] == t] for t in SPLITS}
        if members[s]:
            continue
        donor = max((t for t in SPLITS if len(members[t]) > 1), key=lambda t: len(members[t]), default=None)
        if donor is None:
            break
        # the donor key nearest in hash to the empty split's interval
        k = min(members[donor], key=u.get) if s != "train" else max(members[donor], key=u.get)
        split[k] = s
        warnings.append(f"no speaker hashed into the {s} split; moved {k!r} there from {donor}")
    for s in wanted:
        if not any(v == s for v in split.values()):
            warnings.append(f"the {s} split is empty: only {len(keys)} speaker(s)/file(s) to split")
    return split, warnings


_worker_tokenizers: dict[str, Any] = {}


def minmax_scale(wave: np.ndarray) -> np.ndarray:
    """``wave`` with its [min, max] mapped onto [-1, 1] (SaShiMi's SC09 scaling, its 1e-6 included)."""
    w = wave.astype(np.float64)
    lo, hi = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    return -1.0 + 2.0 * (w - lo) / (hi - lo + 1e-6)


def _tokenize_file(job: tuple[str, str, str]) -> tuple:
    """Worker: (path, tokenizer name, normalization) -> ("ok", codes, rate, channels, subtype) or
    ("bad", reason)."""
    path, tok_name, normalize = job
    tok = _worker_tokenizers.get(tok_name)
    if tok is None:
        tok = _worker_tokenizers[tok_name] = make_tokenizer(tok_name)
    try:
        wave, info = read_audio(path)
        codes = tok.encode(minmax_scale(wave) if normalize == "minmax" else wave)
    except Exception as e:  # noqa: BLE001 - any failure is this file's problem, reported by path
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        if reason.startswith(f"{path}: "):
            reason = reason[len(path) + 2:]
        return ("bad", " ".join(reason.split()))  # one line, no tabs: it goes into a TSV
    return ("ok", codes, info.sample_rate, info.channels, info.subtype)


def _tokenize_chunk(jobs: list[tuple[str, str, str]]) -> list[tuple]:
    return [_tokenize_file(j) for j in jobs]


def _ordered_results(jobs: list[tuple[str, str, str]], workers: int, chunk: int = 16):
    """Yield _tokenize_file results in input order; with workers > 1 a process pool decodes ahead,
    at most a bounded number of chunks, so memory stays small for any corpus size."""
    if workers <= 1:
        for j in jobs:
            yield _tokenize_file(j)
        return
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    pending: deque[Future] = deque()
    try:
        it = iter(chunks)
        for c in it:
            pending.append(pool.submit(_tokenize_chunk, c))
            if len(pending) >= 4 * workers:
                break
        while pending:
            results = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_tokenize_chunk, nxt))
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prepare_audio(inputs: Sequence[str | Path] | str | Path, out_dir: str | Path, tokenizer: str = "mulaw8",
                  split_by: str = "speaker", valid: float = 0.05, test: float = 0.05,
                  speaker_regex: str | None = None, strict: bool = False, workers: int = 1,
                  progress: bool = True, normalize: str = "none") -> PrepareReport:
    """Decode every audio file of ``inputs`` (mono, 16 kHz), tokenize it, and write a corpus to
    ``out_dir`` split by a stable hash of the speaker (or file), or (``split_by="manifest"``) as the
    CSV manifests' ``split`` column says (``valid`` and ``test`` are then unused). A manifest's
    ``speaker`` column, where there is one, names the speaker instead of ``speaker_regex``.
    ``normalize="minmax"`` scales each file onto [-1, 1] before tokenizing (SaShiMi's SC09
    preprocessing). Bad files are skipped and listed in
    ``out_dir/skipped.tsv``; with ``strict`` the first one raises PrepareError and nothing is written.
    Returns a :class:`PrepareReport` (files, tokens and seconds per split, skipped files, conversions);
    ``Corpus(out_dir)`` reads the result."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if tokenizer not in AUDIO_TOKENIZERS:
        raise PrepareError(f"unknown audio tokenizer {tokenizer!r}; "
                           f"choose one of {', '.join(AUDIO_TOKENIZERS)}")
    if split_by not in SPLIT_BY:
        raise PrepareError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if normalize not in NORMALIZATIONS:
        raise PrepareError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    try:
        regex = re.compile(speaker_regex or DEFAULT_SPEAKER_REGEX)
    except re.error as e:
        raise PrepareError(f"--speaker-regex {speaker_regex!r} is not a valid regular expression: {e}"
                           ) from None
    check_replaceable(out_dir)  # fail before the long part
    sources = collect_audio_sources(inputs)
    speakers = [s.speaker or speaker_of(s.name, regex) for s in sources]
    with_split = [s for s in sources if s.split is not None]
    if split_by == "manifest":
        if len(with_split) < len(sources):
            first = next(s for s in sources if s.split is None)
            raise PrepareError(f"--split-by manifest: {first.path} has no split (every input must be a "
                               "CSV manifest with a split column of train, valid or test)")
        keys = [str(s.path) for s in sources]
        split_of_key, warnings = {k: s.split for k, s in zip(keys, sources)}, []
    else:
        if with_split:
            raise PrepareError(f"the manifest giving {with_split[0].path} has a split column: pass "
                               "--split-by manifest to use it (or drop the column to split by hash)")
        keys = speakers if split_by == "speaker" else [s.name for s in sources]
        split_of_key, warnings = assign_splits(keys, valid, test)
    tok = make_tokenizer(tokenizer)

    skipped: list[tuple[str, str]] = []
    conv = {"resampled": 0, "downmixed": 0, "converted_bit_depth": 0}
    seconds = 0.0
    jobs = [(str(s.path), tokenizer, normalize) for s in sources]
    bar = tqdm(total=len(jobs), unit="file", desc="prepare-audio", disable=None if progress else True)
    with bar, CorpusWriter(out_dir, tok, kind="audio", sample_rate=SAMPLE_RATE) as writer:
        for src, spk, key, res in zip(sources, speakers, keys, _ordered_results(jobs, workers)):
            bar.update(1)
            if res[0] == "bad":
                if strict:
                    raise PrepareError(f"--strict: {src.path}: {res[1]}; stopped, nothing was written")
                skipped.append((str(src.path), res[1]))
                continue
            _, codes, rate, channels, subtype = res
            conv["resampled"] += rate != SAMPLE_RATE
            conv["downmixed"] += channels > 1
            conv["converted_bit_depth"] += subtype != "PCM_16"
            writer.add(split_of_key[key], codes, path=str(src.path), speaker=spk)
            seconds += codes.size / SAMPLE_RATE
            bar.set_postfix_str(f"{seconds / 3600:.2f} h audio", refresh=False)
        if not writer.files:
            first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
            raise PrepareError(f"none of the {len(sources)} input file(s) could be used, so nothing was "
                               f"written (first problems: {first})")
        for s in ("train", "valid", "test"):
            asked = split_by == "manifest" or s == "train" or {"valid": valid, "test": test}[s] > 0
            if writer.split_files[s] == 0 and asked:
                msg = f"the {s} split has no usable files"
                if not any(msg in w or f"the {s} split is empty" in w for w in warnings):
                    warnings.append(msg)
        writer.write_text("skipped.tsv", "path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in skipped))
        writer.commit(
            source={"inputs": [str(Path(i).absolute()) for i in ([inputs] if isinstance(inputs, (str, Path))
                                                                   else inputs)],
                    "split_by": split_by, "valid": valid, "test": test,
                    "speaker_regex": regex.pattern, "normalize": normalize},
            conversions=conv, skipped=len(skipped))
        splits = {s: {"files": writer.split_files[s], "tokens": writer.split_tokens[s],
                      "seconds": writer.split_tokens[s] / SAMPLE_RATE} for s in SPLITS}
    return PrepareReport(out_dir, splits, skipped, conv, warnings, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# text


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"text file {path} not found") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text ({e}); use --format bytes for arbitrary bytes"
                           ) from None


def _lines(text: str) -> list[str]:
    # split on "\n" only (str.splitlines would also split on \x1c, \u2028, ... inside WikiText)
    parts = text.split("\n")
    return parts[:-1] if text.endswith("\n") else parts


def find_split_files(folder: Path) -> dict[str, Path]:
    """{split: file} for a folder holding ``[NAME.]train.txt``/``.tokens`` etc. (PTB, WikiText)."""
    found = {}
    for s in SPLITS:
        cands = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".txt", ".tokens", ".raw")
                       and (p.stem == s or p.stem.endswith("." + s)))
        if len(cands) > 1:
            raise PrepareError(f"several {s} files in {folder}: {[c.name for c in cands]}; "
                               "name them with --train/--valid/--test")
        if cands:
            found[s] = cands[0]
    if "train" not in found:
        raise PrepareError(f"no training file in {folder} (expected e.g. ptb.train.txt, wiki.train.tokens "
                           "or train.txt); or name the files with --train/--valid/--test")
    return found


def _fraction_bounds(n: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not abs(sum(fractions) - 1) < 1e-6:
        raise PrepareError(f"split fractions must be three non-negative numbers summing to 1, "
                           f"got {fractions}")
    # cut points as nanoGPT's data[:int(n * 0.9)]; a zero fraction gives an exactly empty split
    a = int(n * fractions[0])
    b = n if fractions[2] == 0 else a if fractions[1] == 0 else int(n * (fractions[0] + fractions[1]))
    return [(0, a), (a, max(a, b)), (max(a, b), n)]


def _standard_bounds(n: int, what: str, warnings: list[str]) -> list[tuple[int, int]]:
    tr, va, te = STANDARD_SPLIT
    if n >= tr + va + te:
        if n != tr + va + te:
            warnings.append(f"file has {n:,} {what}, not 100,000,000: the test split is everything after "
                            f"the first 95,000,000 ({n - tr - va:,} {what})")
        return [(0, tr), (tr, tr + va), (tr + va, n)]
    warnings.append(f"file has {n:,} {what} (< 100M): split proportionally 90% / 5% / 5%")
    return _fraction_bounds(n, (0.9, 0.05, 0.05))


def prepare_text(out_dir: str | Path, format: str = "words", input: str | Path | None = None,
                 train: str | Path | None = None, valid: str | Path | None = None,
                 test: str | Path | None = None, split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
                 min_count: int = 1, max_vocab: int | None = None) -> PrepareReport:
    """Tokenize a text corpus into the corpus layout of :mod:`txl_audio.data`.

    - ``words``: whitespace tokens, ``<eos>`` after every line, vocabulary from the train split only
      (``<unk>`` for other words). Input: a folder with ``NAME.{train,valid,test}.{txt,tokens}``, or
      ``train``/``valid``/``test`` files, or one file cut by ``split_fractions`` (by lines).
    - ``bytes``: UTF-8 bytes. Input: a folder or split files as above, or one file cut by
      ``split_fractions`` (by bytes; nanoGPT's tiny Shakespeare split is (0.9, 0.1, 0)).
    - ``enwik8``: one file, first 90M bytes train, next 5M valid, the rest (5M) test.
    - ``text8``: the same on characters. Smaller files are cut proportionally 90% / 5% / 5%.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if format not in TEXT_FORMATS:
        raise PrepareError(f"unknown text format {format!r}; choose one of {', '.join(TEXT_FORMATS)}")
    check_replaceable(out_dir)
    explicit = {s: Path(p) for s, p in zip(SPLITS, (train, valid, test)) if p is not None}
    if explicit and input is not None:
        raise PrepareError("give either an INPUT or --train/--valid/--test files, not both")
    if not explicit and input is None:
        raise PrepareError("no input: give a text file or folder, or --train/--valid/--test files")
    if explicit and "train" not in explicit:
        raise PrepareError("--valid/--test given without --train")
    if input is not None and not Path(input).exists():
        raise FileNotFoundError(f"input {input} does not exist")
    if format in ("enwik8", "text8") and (explicit or Path(input).is_dir()):
        raise PrepareError(f"--format {format} takes the single {format} file as INPUT")
    files = explicit or (find_split_files(Path(input)) if Path(input).is_dir() else None)
    warnings: list[str] = []

    # parts: (split, source path, start, end, payload); start/end index the source in split_unit
    parts: list[tuple[str, Path, int, int, Any]] = []
    if files is not None:
        unit = "file"
        for s, p in files.items():
            payload = _lines(_read_text(p)) if format == "words" else p.read_bytes()
            parts.append((s, p, 0, len(payload), payload))
    else:
        src = Path(input)
        if format == "words":
            unit, seq = "line", _lines(_read_text(src))
            bounds = _fraction_bounds(len(seq), split_fractions)
        elif format == "text8":
            unit, seq = "char", _read_text(src)
            bounds = _standard_bounds(len(seq), "characters", warnings)
        else:
            unit, seq = "byte", src.read_bytes()
            bounds = (_standard_bounds(len(seq), "bytes", warnings) if format == "enwik8"
                      else _fraction_bounds(len(seq), split_fractions))
        parts = [(s, src, a, b, seq[a:b]) for s, (a, b) in zip(SPLITS, bounds) if b > a]

    if format == "words":
        tok: Any = WordTokenizer.build(next(p for p in parts if p[0] == "train")[4], min_count, max_vocab)
    else:
        tok = ByteTokenizer()
    with CorpusWriter(out_dir, tok, kind="text") as writer:
        for s, path, a, b, payload in parts:
            codes = tok.encode(payload)
            if not codes.size:
                warnings.append(f"{path} gives no tokens for the {s} split")
            extra = {} if unit == "file" else {"start": a, "end": b}
            writer.add(s, codes, path=str(path.absolute()), speaker=None, **extra)
        writer.commit(source={"format": format, "split_unit": unit,
                              "inputs": sorted({str(p[1].absolute()) for p in parts})})
        splits = {s: {"files": writer.split_files[s], "tokens": writer.split_tokens[s]} for s in SPLITS}
    for i, s in enumerate(SPLITS):
        asked_empty = files is None and format in ("words", "bytes") and split_fractions[i] == 0
        if splits[s]["tokens"] == 0 and not asked_empty:
            warnings.append(f"the {s} split is empty")
    return PrepareReport(out_dir, splits, [], {}, warnings, time.perf_counter() - t0)
