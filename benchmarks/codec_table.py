"""The codec's table: `txl-audio compress` with a named model (or a checkpoint) beside FLAC -8, WavPack
-hh -x6, Sac (when given) and xz on the same whole files as the user has them, with speeds.

Each set is a folder of audio files, or ``CORPUS:SPLIT`` (the source files of a prepared corpus's
split, e.g. the held-out speakers). For every file of a set (up to ``--seconds`` of audio, files in
name order): the .txla size (``compress_files``: one batch over all the set's files; headers in), and
on the very same int16 samples FLAC -8 (the ``flac`` command without padding or seek table, else
libFLAC), WavPack -hh -x6 (where installed), Sac --normal and --high (``--sac PATH`` or $TXL_SAC; --high
only with ``--sac-high``: it runs at about 0.5x real time), xz -9e on the raw bytes. Every .txla is
decompressed and must give back the file's samples exactly (else the script stops). Speeds: samples/s
and x real time of compress and decompress for the whole set on this machine (``--threads``), and
FLAC's / WavPack's / Sac's encoding time over the same files (one process per file, as a user runs
them). ``--long N`` adds a row for one N-second file made by joining the set's files (the codec's
chunks of one long file in one batch).

Also the float model's own code length on the same files and chunks (the codec's chunks from an empty
memory after the start token; what the portable integer model costs is the .txla payload beside it).

    python benchmarks/codec_table.py --set sc_heldout=runs/speech_models/speech16/corpus:test \\
        --set read=/path/to/read_speech --sac /path/to/sac --out benchmarks/results/codec
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from txl_audio import codec  # noqa: E402
from txl_audio.audio import AUDIO_EXTENSIONS, SAMPLE_RATE  # noqa: E402
from txl_audio.baselines import (  # noqa: E402
    flac_bytes,
    flac_encoder,
    sac_binary,
    sac_bytes,
    wavpack_bytes,
    wavpack_encoder,
)
from txl_audio.data import IGNORE_INDEX  # noqa: E402
from txl_audio.devices import device_name  # noqa: E402


def set_files(source: str) -> list[Path]:
    """A folder's audio files (recursive, name order), or CORPUS:SPLIT's source files."""
    if ":" in source and not Path(source).exists():
        corpus, split = source.rsplit(":", 1)
        meta = json.loads((Path(corpus) / "meta.json").read_text())
        return [Path(f["path"]) for f in meta["files"] if f.get("split") == split]
    return sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def classical(x: np.ndarray, sac: str | None, sac_high: bool) -> dict[str, tuple[int, float]]:
    """Bytes and encoding seconds of each classical coder on one file's int16 samples (the coders of
    txl_audio.baselines, the same ones evaluate's 16-bit report uses)."""
    coders = {"flac": lambda: flac_bytes(x), "wavpack": lambda: wavpack_bytes(x)}
    if sac:
        coders["sac_normal"] = lambda: sac_bytes(x, sac, "normal")
        if sac_high:
            coders["sac_high"] = lambda: sac_bytes(x, sac, "high")
    coders["xz"] = lambda: len(
        lzma.compress(x.astype("<i2").tobytes(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    )
    out: dict[str, tuple[int, float]] = {}
    for name, code in coders.items():
        t0 = time.perf_counter()
        size = code()
        if size is not None:  # None: wavpack is not installed
            out[name] = (size, time.perf_counter() - t0)
    return out


def float_bits(cm: codec.CodingModel, tokens: np.ndarray, chunk: int) -> float:
    """The float model's NLL in bits of the codec's chunks (each from an empty memory after the start
    token, every sample predicted), 64 chunks at a time."""
    model, T = cm.model, cm.model.config.tgt_len
    seqs = [np.concatenate([[cm.start], tokens[c : c + chunk]]) for c in range(0, len(tokens), chunk)]
    bits = 0.0
    with torch.no_grad():
        for b in range(0, len(seqs), 64):
            group = seqs[b : b + 64]
            n = max(len(s) for s in group)
            x = torch.tensor(np.stack([np.pad(s, (0, n - len(s))) for s in group]))
            y = torch.tensor(
                np.stack([np.pad(s[1:], (0, n - len(s)), constant_values=IGNORE_INDEX) for s in group])
            )
            mems = None
            for s in range(0, n - 1, T):
                e = min(s + T, n - 1)
                o = model(x[:, s:e], mems, targets=y[:, s:e], return_logits=False)
                mems = o.mems
                bits += float(o.loss.double().sum()) / math.log(2)
    return bits


def run_set(name: str, files: list[Path], cm: codec.CodingModel, args, work: Path) -> dict:
    samples = []
    for f in files:
        x, rate = sf.read(f, dtype="int16", always_2d=True)
        if rate != SAMPLE_RATE or x.shape[1] != 1:
            raise SystemExit(f"{f}: {rate} Hz, {x.shape[1]} channel(s): the table takes 16 kHz mono files")
        samples.append(x[:, 0])
    n = sum(len(x) for x in samples)
    wav_dir = work / name / "wav"
    wav_dir.mkdir(parents=True)
    wavs = []
    for i, x in enumerate(samples):
        wavs.append(wav_dir / f"{i:05d}.wav")
        sf.write(wavs[-1], x, SAMPLE_RATE, subtype="PCM_16")
    row: dict = {"set": name, "files": len(files), "samples": n, "seconds_of_audio": n / SAMPLE_RATE}
    txla, back = work / name / "txla", work / name / "back"
    rep = codec.compress_files(wavs, txla, model=cm, chunk=args.chunk, batch=args.batch, progress=False,
                               threads=args.threads, workers=args.workers)
    row["txla_bytes"] = sum(r.bytes for r in rep.results)
    row["compress_seconds"] = rep.seconds
    rep2 = codec.decompress_files(
        sorted(txla.glob("*.txla")), back, model=cm, batch=args.batch, progress=False, threads=args.threads,
        workers=args.workers,
    )
    row["decompress_seconds"] = rep2.seconds
    for w, x in zip(wavs, samples):
        if cm.sixteen:  # the samples themselves
            same = np.array_equal(x, sf.read(back / w.name, dtype="int16")[0])
        else:  # an 8-bit model gives back the codes (mu-law is lossy): the decoded file's codes
            same = np.array_equal(
                codec.file_tokens(w, cm.tokenizer, False),
                codec.file_tokens(back / w.name, cm.tokenizer, False),
            )
        if not same:
            raise SystemExit(f"{name}: {w.name} did not round-trip exactly")
    toks = [np.asarray(codec.file_tokens(w, cm.tokenizer, cm.sixteen)) for w in wavs]
    row["float_model_bits"] = sum(float_bits(cm, t, args.chunk) for t in toks)
    row["payload_bytes"] = sum(
        sum(g[1] for g in codec.parse_container(p.read_bytes(), p.name).groups) for p in txla.glob("*.txla")
    )
    sizes: dict[str, int] = {}
    times: dict[str, float] = {}
    exe = sac_binary(args.sac)
    for x in samples:
        for k, (b, t) in classical(x, exe, args.sac_high).items():
            sizes[k] = sizes.get(k, 0) + b
            times[k] = times.get(k, 0.0) + t
    row["bytes"] = sizes
    row["encode_seconds"] = times
    return row


def long_file(name: str, files: list[Path], seconds: float, cm, args, work: Path) -> dict:
    parts, n = [], 0
    for f in files:
        x = sf.read(f, dtype="int16")[0]
        parts.append(x)
        n += len(x)
        if n >= seconds * SAMPLE_RATE:
            break
    x = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
    wav = work / f"{name}_long.wav"
    sf.write(wav, x, SAMPLE_RATE, subtype="PCM_16")
    rep = codec.compress_files(
        [wav], work / "long_txla", model=cm, chunk=args.chunk, batch=args.batch, progress=False,
        threads=args.threads, workers=args.workers,
    )
    rep2 = codec.decompress_files(
        [rep.results[0].path], work / "long_back", model=cm, batch=args.batch, progress=False,
        threads=args.threads, workers=args.workers,
    )
    back = work / "long_back" / wav.name
    if cm.sixteen:
        assert np.array_equal(sf.read(back, dtype="int16")[0], x)
    else:
        assert np.array_equal(
            codec.file_tokens(wav, cm.tokenizer, False), codec.file_tokens(back, cm.tokenizer, False)
        )
    cl = classical(x, sac_binary(args.sac), args.sac_high)
    return {
        "set": f"{name}: one {len(x) / SAMPLE_RATE:.0f} s file",
        "files": 1,
        "samples": len(x),
        "seconds_of_audio": len(x) / SAMPLE_RATE,
        "txla_bytes": rep.results[0].bytes,
        "compress_seconds": rep.seconds,
        "decompress_seconds": rep2.seconds,
        "bytes": {k: b for k, (b, _) in cl.items()},
        "encode_seconds": {k: t for k, (_, t) in cl.items()},
    }


COLUMNS = [
    ("flac", "FLAC -8"),
    ("wavpack", "WavPack -hh -x6"),
    ("sac_normal", "Sac --normal"),
    ("sac_high", "Sac --high"),
    ("xz", "xz -9e"),
]


def table(info: dict) -> str:
    rows = info["rows"]
    present = [(k, t) for k, t in COLUMNS if any(k in r["bytes"] for r in rows)]
    lines = [
        f"`txl-audio compress --model {info['model']}` ({info['model_id']}) on {info['device']}, "
        f"{info['threads']} thread(s), torch {info['torch']}, {info['date']}; bits per sample of whole "
        "files (headers in)",
        "",
        "| set | files | audio | .txla | "
        + " | ".join(t for _, t in present)
        + " | vs FLAC | vs best other | compress x real time | decompress x real time |",
        "|---|---|---|---|" + "---|" * len(present) + "---|---|---|---|",
    ]
    for r in rows:
        n = r["samples"]
        bps = {k: 8 * v / n for k, v in r["bytes"].items()}
        ours = 8 * r["txla_bytes"] / n
        others = [bps[k] for k, _ in present if k in bps and k != "xz"]
        best = min(others) if others else math.nan
        cells = [f"{bps[k]:.4f}" if k in bps else "" for k, _ in present]
        lines.append(
            f"| {r['set']} | {r['files']} | {r['seconds_of_audio']:.0f} s | **{ours:.4f}** | "
            + " | ".join(cells)
            + f" | {100 * (ours / bps['flac'] - 1):+.1f}% | {100 * (ours / best - 1):+.1f}% | "
            f"{r['seconds_of_audio'] / r['compress_seconds']:.2f}x | "
            f"{r['seconds_of_audio'] / r['decompress_seconds']:.2f}x |"
        )
    lines += [
        "",
        "Encoding speed of the classical coders on the same files (x real time, one process per file):",
        "",
    ]
    for r in rows:
        rt = {k: r["seconds_of_audio"] / v for k, v in r.get("encode_seconds", {}).items()}
        sp = ", ".join(
            f"{t} {rt[k]:.1f}x" if rt[k] < 10 else f"{t} {rt[k]:.0f}x" for k, t in present if k in rt
        )
        lines.append(f"- {r['set']}: {sp}")
    cost = [r for r in rows if "float_model_bits" in r]
    if cost:
        lines += [
            "",
            "The portable integer model's cost: .txla payload beside the float model's NLL on the same "
            "chunks:",
            "",
        ]
        for r in cost:
            fb, pb = r["float_model_bits"] / r["samples"], 8 * r["payload_bytes"] / r["samples"]
            lines.append(
                f"- {r['set']}: float {fb:.4f}, payload {pb:.4f} bits per sample "
                f"({100 * (pb / fb - 1):+.2f}%)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="speech16", help="a named model or a checkpoint (default speech16)")
    ap.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="a folder of audio files, or CORPUS:SPLIT",
    )
    ap.add_argument("--seconds", type=float, default=300.0, help="audio per set (default 300 s)")
    ap.add_argument("--long", type=float, default=0.0, help="also one file of this many seconds (first set)")
    ap.add_argument("--sac", help="Sac binary (else $TXL_SAC; no Sac column without)")
    ap.add_argument("--sac-high", action="store_true", help="also Sac --high (about 0.5x real time)")
    ap.add_argument("--threads", type=int, default=2, help="CPU cores the codec may use (default 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="codec worker processes (default: as txl-audio compress, one per core for 20 s "
                         "or more)")
    ap.add_argument("--chunk", type=int, default=codec.DEFAULT_CHUNK)
    ap.add_argument("--batch", type=int, default=None, help="chunks coded together (default: the codec's)")
    ap.add_argument("--out", default=str(HERE / "results" / "codec"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cm = codec.load_coding_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "model": args.model,
        "model_id": cm.id.hex(),
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "flac": flac_encoder(),
        "wavpack": wavpack_encoder(),
        "command": " ".join(["python", *sys.argv]),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as d:
        for i, spec in enumerate(args.set):
            name, source = spec.split("=", 1)
            files, total = [], 0
            for f in set_files(source):
                if total >= args.seconds * SAMPLE_RATE:
                    break
                files.append(f)
                total += sf.info(f).frames
            print(f"== {name}: {len(files)} files, {total / SAMPLE_RATE:.0f} s", flush=True)
            info["rows"].append(run_set(name, files, cm, args, Path(d)))
            if i == 0 and args.long:
                print(f"== {name}: one {args.long:.0f} s file", flush=True)
                info["rows"].append(long_file(name, set_files(source), args.long, cm, args, Path(d)))
            (out / "codec_table.json").write_text(json.dumps(info, indent=1) + "\n")
    text = table(info)
    (out / "codec_table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
