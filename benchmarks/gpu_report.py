"""docs/gpu.md's results from what benchmarks/gpu_check.sh left in its work folder (packed into
$OUT/gpu_check.tar.gz): one markdown report with the card, torch version and date, the go/no-go's
attention kernels per path, the throughput, generation, memory and training tables, and the issue's
goals marked met or missed from the numbers (nothing is typed in by hand).

    python benchmarks/gpu_report.py DIR    # DIR: the unpacked archive; gpu_check.sh writes OUT/report.md

A file a step did not leave (it failed or ran out of time) is reported as missing, not guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the benchmark scripts and txl_audio
from txl_audio.audio import SAMPLE_RATE  # noqa: E402

GOALS = {
    "train_vs_einsum": 3.0,  # training at least 3x the einsum version (bf16)
    "aggregate_realtime": 1.0,  # audio_small generation faster than real time in aggregate
    "single_stream_realtime": 0.25,  # and at least 0.25x real time for one stream
    "head_cost": 1.25,  # a 16-bit head adds at most 25% to a cached issue-3 step (issue 16)
    "codec_single_realtime": 1.0,  # 16-bit GPU model decompresses faster than real time at batch 1
    "codec_aggregate_realtime": 50.0,  # and 50x real time in aggregate (issue 17)
    "rotary_eval_8192": 3.0,  # rotary evaluation at mem_len 8,192 at least 3x the relative model's (issue 18)
}


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rate(r: dict | None) -> str:
    if not r:
        return "-"
    if r.get("oom"):
        return "out of memory"
    return f"{r['tokens_per_s']:,.0f}"


def _peak(r: dict | None) -> str:
    return f"{r['peak_gib']:.2f}" if r and "peak_gib" in r else "-"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def speed_section(out: Path, goals: list[str]) -> list[str]:
    lines = ["| config | batch x tgt_len | mode | ours tokens/s | ours compiled | einsum | ours / einsum "
             "| compiled / einsum | peak GiB ours / einsum |",
             "|---|---|---|---|---|---|---|---|---|"]
    found = False
    for name in ("gpu_speed_small.json", "gpu_speed_base.json"):
        res = _load(out / name)
        if res is None:
            lines.append(f"| ({name} missing) | | | | | | | | |")
            continue
        for row in res["rows"]:
            found = True
            for mode in ("train", "eval"):
                ours, comp, ein = (row.get(f"{mode}_{v}") for v in ("ours", "ours_compiled", "einsum"))
                ratio = row.get(f"{mode}_ours_vs_einsum")
                cratio = row.get(f"{mode}_ours_compiled_vs_einsum")
                lines.append(
                    f"| {row['config']} ({row['dtype']}) | {row['batch']} x {row['tgt_len']} | {mode} "
                    f"| {_rate(ours)} | {_rate(comp)} | {_rate(ein)} "
                    f"| {f'{ratio:.2f}x' if ratio else '-'} | {f'{cratio:.2f}x' if cratio else '-'} "
                    f"| {_peak(ours)} / {_peak(ein)} |")
                if mode == "train" and (ratio or cratio):
                    best = max(x for x in (ratio, cratio) if x)
                    goals.append(f"- training at least {GOALS['train_vs_einsum']:g}x the einsum version "
                                 f"({row['config']}, {row['dtype']}): {best:.2f}x (best of plain and "
                                 f"compiled): {_met(best >= GOALS['train_vs_einsum'])}")
    if not found:
        goals.append("- training against einsum: not measured")
    return lines


def generation_section(out: Path, goals: list[str]) -> list[str]:
    res = _load(out / "generate_speed.json")
    if res is None:
        goals.append("- generation: not measured (generate_speed.json missing)")
        return ["(generate_speed.json missing)"]
    from generate_speed import table  # the benchmark's own table (CUDA graph and eager columns)

    lines = table(res).splitlines()
    lines.insert(1, "")
    small = [r for r in res["rows"] if r["model"] == "audio_small"]
    if small:
        best = max(small, key=lambda r: r["cached_samples_per_s"])
        single = [r for r in small if r["batch"] == 1]
        goals.append(f"- audio_small generation faster than real time in aggregate: "
                     f"{best['cached_realtime_factor']:.2f}x at batch {best['batch']}: "
                     f"{_met(best['cached_realtime_factor'] >= GOALS['aggregate_realtime'])}")
        if single:
            s = single[0]
            want = GOALS["single_stream_realtime"]
            goals.append(f"- audio_small single stream at least {want:g}x real time "
                         f"({want * SAMPLE_RATE:,.0f} samples/s): "
                         f"{s['cached_samples_per_s']:,.0f} samples/s = {s['cached_realtime_factor']:.3f}x: "
                         f"{_met(s['cached_realtime_factor'] >= GOALS['single_stream_realtime'])}")
    else:
        goals.append("- audio_small generation: not in generate_speed.json")
    for r in res["rows"]:
        if "head_cost" in r:
            goals.append(f"- {r['head']} at most {GOALS['head_cost']:g}x the 8-bit softmax's cached step "
                         f"(issue-3 trunk, batch {r['batch']}): {r['head_cost']:.2f}x: "
                         f"{_met(r['head_cost'] <= GOALS['head_cost'])}")
    return lines


def codec_section(out: Path, goals: list[str]) -> list[str]:
    res = _load(out / "codec_speed.json")
    if res is None:
        goals.append("- codec: not measured (codec_speed.json missing)")
        return ["(codec_speed.json missing)"]
    from codec_speed import table

    lines = table(res).splitlines()
    lines.insert(1, "")
    rows = [r for r in res["rows"] if r["model"] == "lossless16_gpu"]
    one = [r for r in rows if r["batch"] == 1]
    if one:
        x = one[0]["decompress_realtime"]
        goals.append(f"- 16-bit GPU model decompresses faster than real time at batch 1: {x:.2f}x: "
                     f"{_met(x >= GOALS['codec_single_realtime'])}")
    if rows:
        best = max(rows, key=lambda r: r["decompress_realtime"])
        x = best["decompress_realtime"]
        goals.append(f"- 16-bit GPU model decompresses at {GOALS['codec_aggregate_realtime']:g}x real time "
                     f"in aggregate: {x:.1f}x at batch {best['batch']}: "
                     f"{_met(x >= GOALS['codec_aggregate_realtime'])}")
    return lines


def rotary_section(out: Path, goals: list[str]) -> list[str]:
    res = _load(out / "rotary_speed.json")
    if res is None:
        goals.append("- rotary attention: not measured (rotary_speed.json missing)")
        return ["(rotary_speed.json missing)"]
    lines = [f"issue-3 trunk, tgt_len {res['config']['tgt_len']}, batch {res['batch']}, {res['dtype']}, "
             f"{res['machine']}", "",
             "| mode | mem_len | rotary tokens/s | relative tokens/s | rotary / relative "
             "| peak bytes/token rotary / relative |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        peak = (f"{r['rotary_peak_bytes_per_token']:,.0f} / {r['relative_peak_bytes_per_token']:,.0f}"
                if "rotary_peak_bytes_per_token" in r else "-")
        lines.append(f"| {r['mode']} | {r['mem_len']:,} | {r['rotary']:,.0f} | {r['relative']:,.0f} "
                     f"| {r['ratio']:.2f}x | {peak} |")
        if (r["mode"], r["mem_len"]) == ("eval", 8192):
            goals.append(f"- rotary evaluation at mem_len 8,192 at least {GOALS['rotary_eval_8192']:g}x the "
                         f"relative model's tokens/s: {r['ratio']:.2f}x: "
                         f"{_met(r['ratio'] >= GOALS['rotary_eval_8192'])}")
    return lines


def cmem_section(out: Path) -> list[str]:
    res = _load(out / "cmem_speed.json")
    if res is None:
        return ["(cmem_speed.json missing)"]
    lines = [f"issue-3 trunk, tgt_len {res['config']['tgt_len']}, batch {res['batch']}, {res['dtype']}, "
             f"{res['machine']}: Transformer-XL with memory M against memory M/2 + M/2 compressed slots "
             "(mean pooling) at rate 4 and 8, the same attended positions", "",
             "| mode | M | Transformer-XL tokens/s | rate 4 tokens/s | rate 8 tokens/s | rate 4 / XL "
             "| rate 8 / XL | peak bytes/token XL / rate 4 / rate 8 |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        peak = ("-" if "xl_peak_bytes_per_token" not in r else " / ".join(
            f"{r[f'{k}_peak_bytes_per_token']:,.0f}" for k in ("xl", "cmem4", "cmem8")))
        lines.append(f"| {r['mode']} | {r['mem_len']:,} | {r['xl']:,.0f} | {r['cmem4']:,.0f} "
                     f"| {r['cmem8']:,.0f} | {r['ratio_cmem4']:.2f}x | {r['ratio_cmem8']:.2f}x | {peak} |")
    return lines


def memory_section(out: Path) -> list[str]:
    res = _load(out / "memory_scaling.json")
    if res is None:
        return ["(memory_scaling.json missing)"]
    rows = res["rows"]
    mems = sorted({r["mem_len"] for r in rows})
    unit = "GiB" if any("peak_gib" in r for r in rows) else "MiB"

    def peak(r: dict) -> str:
        return f"{r['peak_gib']:.2f}" if unit == "GiB" else f"{r['peak_mib']:.0f}"

    lines = [f"{res['model']}, tgt_len {res['tgt_len']}, batch {res['batch']}, {res['device']}",
             "",
             f"| peak {unit} \\ mem_len | " + " | ".join(f"{m:,}" for m in mems) + " | growth exponent |",
             "|---|" + "---|" * (len(mems) + 1)]
    for mode in ("train", "eval"):
        by = {r["mem_len"]: r for r in rows if r["mode"] == mode}
        exp = res.get("exponent", {}).get(mode)
        cells = " | ".join(peak(by[m]) if m in by else "-" for m in mems)
        lines.append(f"| {mode} step | {cells} | {f'{exp:.2f}' if exp is not None else '-'} |")
    return lines


def training_section(out: Path) -> list[str]:
    from txl_audio.plots import read_metrics  # [] when missing; skips a line cut by a kill

    ev = _load(out / "eval_summary.json")
    train = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"]
    if not train or ev is None:
        return ["(the quickstart run left no metrics.jsonl or eval_summary.json: see quickstart.log)"]
    last = train[-1]
    try:
        from txl_audio.config import load_config

        m = load_config(out / "config.toml").model
        model = (f"{m.n_layer} layers, d_model {m.d_model}, tgt_len {m.tgt_len}, mem_len {m.mem_len}; ")
    except Exception:  # noqa: BLE001 - the report still has the numbers without the config
        model = ""
    mean_tps = last["tokens"] / last["time"] if last.get("time") else float("nan")
    lines = [f"{model}{last['step']:,} steps in {last['time']:.0f} s ({mean_tps:,.0f} tokens/s on average, "
             f"validation included); test split: {ev['files']} files, {ev['tokens']:,} predictions:",
             "",
             f"| model | {ev['metric']} |",
             "|---|---|",
             f"| this run | **{ev['bits_per_token']:.4f}** (95% CI over files "
             f"{ev['file_mean_ci95'][0]:.3f}-{ev['file_mean_ci95'][1]:.3f}) |"]
    if ev.get("xz_bits_per_token") is not None:
        lines.append(f"| xz -9e, same tokens | {ev['xz_bits_per_token']:.4f} |")
        lines.append(f"| bzip2 -9, same tokens | {ev['bzip2_bits_per_token']:.4f} |")
    return lines


def machine(out: Path) -> str:
    try:
        text = (out / "summary.txt").read_text().splitlines()
    except OSError:
        return "unknown machine"
    for i, line in enumerate(text):
        if line.startswith("== ") and line.endswith("machine"):
            body = []
            for x in text[i + 1:]:
                if x.startswith("== "):
                    break
                body.append(x.strip())
            return "; ".join(b for b in body if b)
    return "unknown machine"


def preflight_section(out: Path) -> list[str]:
    """The go/no-go's verdict and, per attention path and precision, the kernels that ran."""
    try:
        lines = (out / "preflight.log").read_text().splitlines()
    except OSError:
        return ["(preflight.log missing)"]
    keep = [x for x in lines if "attention kernels" in x or x.startswith(("GO", "NO-GO", "CUDA graph"))]
    return [f"    {x}" for x in keep] or ["(no kernels in preflight.log)"]


def report(out: Path) -> str:
    goals: list[str] = []
    speed = speed_section(out, goals)
    gen = generation_section(out, goals)
    date = (_load(out / "gpu_speed_small.json") or _load(out / "generate_speed.json") or {}).get("date", "?")
    parts = [f"GPU results, {date}: {machine(out)} (`OUT=... bash benchmarks/gpu_check.sh`)",
             "",
             "Go/no-go (benchmarks/gpu_preflight.py): the attention kernels each path ran:", "",
             *preflight_section(out), "",
             "Training and evaluation throughput, against the einsum version in the same run:",
             "", *speed, "",
             "Generation (cached decoding against the reference path, one run):", "", *gen, "",
             "Peak memory against mem_len:", "", *memory_section(out), "",
             "Lossless codec (benchmarks/codec_speed.py, random weights, round trip checked):", "",
             *codec_section(out, goals), "",
             "Rotary against relative attention (benchmarks/model_speed.py --rotary):", "",
             *rotary_section(out, goals), "",
             "Compressive memory at the same attention cost (benchmarks/model_speed.py --cmem):", "",
             *cmem_section(out), "",
             "The quickstart recipe with this config (bundled sample, held-out speakers):", "",
             *training_section(out), "",
             "Goals:", "", *goals]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(report(Path(sys.argv[1])), end="")
