"""Corpus preparation speed: the whole Speech Commands v0.02 test split (4,890 one-second FLACs).

What is measured (one run, same machine): wall time of ``prepare_audio`` (decode FLAC, mu-law 8-bit
tokenize, write shards + meta.json) with 1 worker process and with ``--workers`` processes, files/s
and seconds of audio prepared per second of wall time; and a check that both outputs are byte-identical.
Each configuration is run ``--repeats`` times and the fastest run is kept (the machine is shared).

    python benchmarks/prepare_speed.py [--data ../shared/data/audio/speech_commands_v002_test]
                                       [--workers 2] [--repeats 2]

Prints a table and writes benchmarks/results/prepare_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from txl_audio.prepare import prepare_audio

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "prepare_speed.json"
DEFAULT_DATA = Path(os.environ.get("TXL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "audio" / \
    "speech_commands_v002_test"


def _same_output(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="audio folder to prepare")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest is kept")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} not found; pass --data (e.g. ../shared/data/audio/"
                         "speech_commands_v002_test)")

    rows = []
    with tempfile.TemporaryDirectory(prefix="txl_prepare_bench_") as tmp:
        outs = {}
        for workers in sorted({1, args.workers}):
            best = None
            for _ in range(args.repeats):
                out = Path(tmp) / f"w{workers}"
                t0 = time.perf_counter()
                rep = prepare_audio([args.data], out, workers=workers, progress=False)
                wall = time.perf_counter() - t0
                if best is None or wall < best[0]:
                    best = (wall, rep)
            wall, rep = best
            files = sum(v["files"] for v in rep.splits.values())
            audio_s = sum(v["seconds"] for v in rep.splits.values())
            rows.append({"workers": workers, "seconds": round(wall, 3), "files": files,
                         "skipped": len(rep.skipped), "audio_hours": round(audio_s / 3600, 4),
                         "files_per_s": round(files / wall, 1), "audio_x_realtime": round(audio_s / wall, 1)})
            outs[workers] = Path(tmp) / f"w{workers}"
        identical = _same_output(outs[1], outs[args.workers]) if len(outs) > 1 else True
        shutil.rmtree(tmp, ignore_errors=True)

    result = {"benchmark": "prepare_speed", "data": str(args.data), "tokenizer": "mulaw8",
              "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "outputs_identical": identical, "runs": rows,
              "speedup": round(rows[0]["seconds"] / rows[-1]["seconds"], 2)}
    print(f"prepare-audio on {args.data} ({rows[0]['files']} files, {rows[0]['audio_hours']:.2f} h audio)")
    print(f"{'workers':>7} {'seconds':>8} {'files/s':>8} {'x realtime':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['seconds']:>8.2f} {r['files_per_s']:>8.0f} "
              f"{r['audio_x_realtime']:>10.0f}")
    print(f"speedup {result['speedup']:.2f}x; outputs byte-identical: {identical}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
