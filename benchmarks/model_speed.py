"""Model throughput: ours vs the straightforward einsum Transformer-XL, in the same run.

- training tokens/s: forward + backward + AdamW step, memory carried between segments;
- evaluation tokens/s: forward with memory, no gradients;
- cached decoding tokens/s (``init_cache``/``step``) vs decoding by feeding memories back (one token
  through ``forward`` with the hidden states of the same context as ``mems``), batch 1 and 16.

In evaluation ours carries the memory's keys and values from segment to segment (``keep_kv``, as
``txl-audio evaluate`` does); the einsum baseline re-projects the memory every segment, as the
authors' code does.

Defaults are the issue's configuration: n_layer 4, d_model 256, 4 heads, d_inner 1024, vocab 256,
tgt_len 512, mem_len 512, batch 4, float32, 2 threads; decoding uses mem_len 1024. Measurements
alternate between the two implementations and report the median of the repeats.

Rotary against relative attention (``--rotary``): the same trunk with ``attention="rotary"`` against
the paper's relative attention, training and evaluation tokens/s at mem_len 512, 2,048 and 8,192
(``--mem-lens``), steps alternating between the two; on CUDA also the peak memory of each step per
token (on CPU, ``benchmarks/memory_scaling.py --attention rotary`` measures it).

    python benchmarks/model_speed.py              # full run (a few minutes on 2 cores)
    python benchmarks/model_speed.py --quick      # tiny smoke run
    python benchmarks/model_speed.py --rotary [--device cuda] [--mem-lens 512,2048,8192]
    python benchmarks/model_speed.py --cmem [--device cuda] [--mem-lens 512,2048]

Compressive memory at equal attention cost (``--cmem``): for each mem_len M, the Transformer-XL with
memory M against memory M/2 plus M/2 compressed slots (mean pooling) at rate 4 and at rate 8, so every
query attends to as many positions; training and evaluation tokens/s (and peak memory on CUDA) of the
three, steps alternating. What compression costs beyond attention: the pooling and the slots' keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from einsum_reference import from_model  # noqa: E402

from txl_audio.config import ModelConfig  # noqa: E402
from txl_audio.decoders import make_decoder  # noqa: E402
from txl_audio.model import TransformerXL  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_speed.json"


def bench_config(quick: bool = False) -> ModelConfig:
    if quick:
        return ModelConfig(
            vocab_size=256, n_layer=2, d_model=64, n_head=2, d_head=32, d_inner=128,
            dropout=0.1, tgt_len=32, mem_len=32,
        )  # fmt: skip
    return ModelConfig(
        vocab_size=256, n_layer=4, d_model=256, n_head=4, d_head=64, d_inner=1024,
        dropout=0.1, tgt_len=512, mem_len=512,
    )  # fmt: skip


def _segments(cfg: ModelConfig, batch: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (batch, cfg.tgt_len + 1), generator=g) for _ in range(n)]


def make_train_step(model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """One training step per call (fwd + bwd + AdamW) on a (B, T+1) segment; memory carried."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state: dict = {"mems": None}

    def step(seg: torch.Tensor) -> None:
        out = model(seg[:, :-1], mems=state["mems"], targets=seg[:, 1:], return_logits=False)
        out.loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["mems"] = out.mems

    return step


def make_eval_step(model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """One evaluation forward per call (memory carried, no gradients)."""
    state: dict = {"mems": None}
    kw = {"keep_kv": True} if isinstance(model, TransformerXL) else {}

    @torch.no_grad()
    def step(seg: torch.Tensor) -> None:
        out = model(seg[:, :-1], mems=state["mems"], targets=seg[:, 1:], return_logits=False, **kw)
        state["mems"] = out.mems

    return step


def time_steps(
    step: Callable[[torch.Tensor], None], segs: list[torch.Tensor], warmup: int = 1
) -> list[float]:
    """Seconds taken by each call of ``step`` on ``segs`` after the first ``warmup`` (which are run
    untimed, and build the memory)."""
    for s in segs[:warmup]:
        step(s)
    times = []
    for s in segs[warmup:]:
        t0 = time.perf_counter()
        step(s)
        times.append(time.perf_counter() - t0)
    return times


def compare_throughput(cfg: ModelConfig, batch: int, steps: int, repeats: int, train: bool) -> dict:
    """Ours vs einsum with the same weights, steps alternating between the two (so load from other
    processes hits both alike), each carrying its own memory. Tokens/s from the fastest step ("best":
    least disturbed on a shared machine) and from the median step."""
    torch.manual_seed(0)
    ours = TransformerXL(cfg)
    ref = from_model(ours)
    res = _alternate({"ours": ours, "einsum": ref}, cfg, batch, steps, repeats, train)
    res["ratio"] = res["ours"] / res["einsum"]
    res["ratio_median"] = res["ours_median"] / res["einsum_median"]
    return res


def _alternate(models: dict, cfg: ModelConfig, batch: int, steps: int, repeats: int, train: bool,
               device: torch.device | None = None, bf16: bool = False, reach: int | None = None) -> dict:
    """Tokens/s of each model (best and median step), steps alternating between them; on CUDA also
    each one's peak memory of a step (bytes per token beyond what was allocated before it). ``bf16``:
    every step under bfloat16 autocast. Untimed warm-up segments first fill every model's memory
    (``reach`` positions back: mem_len by default)."""
    device = device or torch.device("cpu")
    plain = make_train_step if train else make_eval_step

    def make(m):
        step = plain(m)

        def run(seg):
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                step(seg)

        return run

    # untimed warm-up segments until the memory is full (mem_len / tgt_len of them), so the timed steps
    # attend to all mem_len positions
    warm = max(1, -(-(cfg.mem_len if reach is None else reach) // cfg.tgt_len))
    segs = [s.to(device) for s in _segments(cfg, batch, steps + warm)]
    tokens = batch * cfg.tgt_len
    runners = {}
    for name, m in models.items():
        m.train(train)
        runners[name] = make(m)
    cuda = device.type == "cuda"

    def timed(step, seg) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(seg)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    peaks: dict[str, int] = {}
    for name, step in runners.items():  # warm-up steps (untimed): fill the memory
        for seg in segs[:warm]:
            step(seg)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step(segs[0])
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for seg in segs[warm:]:
            for name, step in runners.items():
                times[name].append(timed(step, seg))
    res: dict = {}
    for name, ts in times.items():
        res[name] = tokens / min(ts)
        res[f"{name}_median"] = tokens / statistics.median(ts)
        res[f"{name}_step_seconds"] = ts
        if name in peaks:
            res[f"{name}_peak_bytes_per_token"] = peaks[name] / tokens
    return res


def compare_rotary(cfg: ModelConfig, batch: int, mem_lens: list[int], steps: int, repeats: int,
                   device: torch.device, bf16: bool = False) -> list[dict]:
    """Rotary against relative attention on the same trunk at each mem_len, training and evaluation."""
    rows = []
    for m in mem_lens:
        c = dataclasses.replace(cfg, mem_len=m)
        for train in (True, False):
            torch.manual_seed(0)
            rel = TransformerXL(c).to(device)
            torch.manual_seed(0)
            rot = TransformerXL(dataclasses.replace(c, attention="rotary")).to(device)
            r = _alternate({"rotary": rot, "relative": rel}, c, batch, steps, repeats, train, device, bf16)
            r.update(mem_len=m, mode="train" if train else "eval", ratio=r["rotary"] / r["relative"],
                     ratio_median=r["rotary_median"] / r["relative_median"])
            rows.append(r)
            peak = ""
            if "rotary_peak_bytes_per_token" in r:
                peak = (f"; peak bytes/token rotary {r['rotary_peak_bytes_per_token']:,.0f}, relative "
                        f"{r['relative_peak_bytes_per_token']:,.0f}")
            print(f"mem_len {m:>6} {r['mode']:<5}: rotary {r['rotary']:9.0f} tokens/s, relative "
                  f"{r['relative']:9.0f}: {r['ratio']:.2f}x (median {r['ratio_median']:.2f}x){peak}",
                  flush=True)
            del rel, rot
    return rows


@torch.no_grad()
def decode(
    model: TransformerXL, prompt: torch.Tensor, n_new: int, kind: str
) -> tuple[torch.Tensor, list[float]]:
    """Greedy decoding with a decoder of ``txl_audio.decoders``: "cached" (``model.step`` over the
    key/value ring buffer) or "reference" (feeding memories back: each token goes through forward()
    with the per-layer hidden states of its context as memory, re-projected every token, the way the
    authors' code decodes). Returns the new tokens (B, n_new) and the seconds each one-token step took
    (the prompt is not timed)."""
    dec = make_decoder(model, prompt.shape[0], kind, cuda_graph=False)
    tok = dec.prefill(prompt).logits.argmax(-1)  # (B,)
    out, times = [tok], []
    for _ in range(n_new - 1):
        t0 = time.perf_counter()
        tok = dec.step(tok).logits.argmax(-1)
        times.append(time.perf_counter() - t0)
        out.append(tok)
    return torch.stack(out, 1), times


def compare_decoding(cfg: ModelConfig, batch: int, prompt_len: int, n_new: int) -> dict:
    """Tokens/s (summed over the batch) of cached decoding and of feeding memories back, from the
    fastest step ("best") and the median step, and whether both chose the same greedy tokens."""
    torch.manual_seed(0)
    model = TransformerXL(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len))
    tok_c, t_c = decode(model, prompt, n_new, "cached")
    tok_f, t_f = decode(model, prompt, n_new, "reference")
    res: dict = {}
    for name, ts in (("cached", t_c), ("feeding_memories", t_f)):
        res[name] = batch / min(ts)
        res[f"{name}_median"] = batch / statistics.median(ts)
    res["ratio"] = res["cached"] / res["feeding_memories"]
    res["ratio_median"] = res["cached_median"] / res["feeding_memories_median"]
    res["same_tokens"] = bool((tok_c == tok_f).all())
    return res


def compare_cmem(cfg: ModelConfig, batch: int, mem_lens: list[int], steps: int, repeats: int,
                 device: torch.device, bf16: bool = False) -> list[dict]:
    """Memory M against M/2 + M/2 compressed slots at rates 4 and 8 (equal attended positions)."""
    rows = []
    for m in mem_lens:
        c = dataclasses.replace(cfg, mem_len=m)
        for train in (True, False):
            models = {}
            for name, kw in (("xl", {}), ("cmem4", dict(mem_len=m // 2, cmem_len=m // 2, cmem_ratio=4)),
                             ("cmem8", dict(mem_len=m // 2, cmem_len=m // 2, cmem_ratio=8))):
                torch.manual_seed(0)
                models[name] = TransformerXL(dataclasses.replace(c, **kw)).to(device)
            # warm-up until the rate-8 model's compressed memory is full too (M/2 + 8 x M/2 back)
            r = _alternate(models, c, batch, steps, repeats, train, device, bf16, reach=m // 2 * 9)
            r.update(mem_len=m, mode="train" if train else "eval",
                     **{f"ratio_{k}": r[k] / r["xl"] for k in ("cmem4", "cmem8")})
            rows.append(r)
            print(f"mem_len {m:>6} {r['mode']:<5}: xl {r['xl']:9.0f} tokens/s, mem {m // 2} + compressed "
                  f"{m // 2} x4 {r['cmem4']:9.0f} ({r['ratio_cmem4']:.2f}x), x8 {r['cmem8']:9.0f} "
                  f"({r['ratio_cmem8']:.2f}x)", flush=True)
            del models
    return rows


def run_rotary(quick: bool, out: Path | None, threads: int, device: str, mem_lens: list[int],
               dtype: str = "fp32", compare: Callable = compare_rotary) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = dataclasses.replace(bench_config(quick), dropout=0.0)
    batch = 2 if quick else 4
    steps, repeats = (1, 1) if quick else (2, 2)
    res: dict = {"config": dataclasses.asdict(cfg), "batch": batch, "threads": threads,
                 "torch": torch.__version__, "device": device, "dtype": dtype,
                 "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                 else platform.processor() or platform.machine(),
                 "date": time.strftime("%Y-%m-%d"),
                 "rows": compare(cfg, batch, mem_lens, steps, repeats, dev, dtype == "bf16")}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    return res


def run(quick: bool = False, out: Path | None = RESULTS, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    cfg = bench_config(quick)
    batch = 2 if quick else 4
    steps, repeats = (2, 1) if quick else (3, 3)
    res: dict = {
        "config": dataclasses.asdict(cfg),
        "batch": batch,
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    res["train"] = compare_throughput(cfg, batch, steps, repeats, train=True)
    res["eval"] = compare_throughput(cfg, batch, steps, repeats, train=False)
    dcfg = dataclasses.replace(cfg, mem_len=64 if quick else 1024, dropout=0.0)
    # the prompt fills the memory, so every timed token attends mem_len + 1 .. mem_len + tgt_len keys
    prompt_len = dcfg.mem_len + dcfg.tgt_len
    n_new = 8 if quick else 48
    res["decode_mem_len"] = dcfg.mem_len
    for b in (1, 16):
        res[f"decode_b{b}"] = compare_decoding(dcfg, b, prompt_len, n_new)
    print_table(res)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")
    return res


def print_table(res: dict) -> None:
    c = res["config"]
    print(
        f"n_layer {c['n_layer']}, d_model {c['d_model']}, heads {c['n_head']}, d_inner {c['d_inner']}, "
        f"vocab {c['vocab_size']}, tgt_len {c['tgt_len']}, mem_len {c['mem_len']}, batch {res['batch']}, "
        f"float32, {res['threads']} threads, torch {res['torch']}"
    )
    print("tokens/s: best step (median step in brackets); ratio = ours / baseline")
    print(f"{'measure':<36}{'ours':>18}{'baseline':>18}{'ratio':>15}   baseline")
    for key, name in (("train", "training (fwd+bwd+AdamW)"), ("eval", "evaluation (fwd with memory)")):
        r = res[key]
        print(
            f"{name:<36}{r['ours']:>9.0f} ({r['ours_median']:>6.0f})"
            f"{r['einsum']:>9.0f} ({r['einsum_median']:>6.0f})"
            f"{r['ratio']:>7.2f}x ({r['ratio_median']:.2f}x)   einsum"
        )
    for b in (1, 16):
        r = res[f"decode_b{b}"]
        name = f"decoding, batch {b}, mem_len {res['decode_mem_len']}"
        print(
            f"{name:<36}{r['cached']:>9.0f} ({r['cached_median']:>6.0f})"
            f"{r['feeding_memories']:>9.0f} ({r['feeding_memories_median']:>6.0f})"
            f"{r['ratio']:>7.2f}x ({r['ratio_median']:.2f}x)   feeding memories back"
            f" (same tokens: {r['same_tokens']})"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny configuration, a few seconds (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--rotary", action="store_true", help="rotary against relative attention instead")
    ap.add_argument("--cmem", action="store_true",
                    help="compressive memory against the same attention cost in plain memory instead")
    ap.add_argument("--mem-lens", default=None,
                    help="--rotary / --cmem: comma-separated (default 512,2048,8192 / 512,2048)")
    ap.add_argument("--device", default="cpu", help="--rotary / --cmem: cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="--rotary / --cmem: autocast")
    args = ap.parse_args(argv)
    if args.cmem:
        lens = args.mem_lens or ("32,64" if args.quick else "512,2048")
        out = RESULTS.with_name("cmem_speed.json") if args.out == RESULTS else args.out
        run_rotary(args.quick, out, args.threads, args.device, [int(m) for m in lens.split(",")], args.dtype,
                   compare=compare_cmem)
        return
    if args.rotary:
        lens = args.mem_lens or ("32,64" if args.quick else "512,2048,8192")
        mem_lens = [int(m) for m in lens.split(",")]
        out = RESULTS.with_name("rotary_speed.json") if args.out == RESULTS else args.out
        run_rotary(args.quick, out, args.threads, args.device, mem_lens, args.dtype)
        return
    run(args.quick, args.out, args.threads)


if __name__ == "__main__":
    main()
