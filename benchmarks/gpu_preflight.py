"""Go/no-go for a GPU run, in about 20 seconds, before the minutes of measurement are spent.

    python benchmarks/gpu_preflight.py [--device cuda] [--quick]

Checks, stopping at the first that fails (exit status 1, the reason on the last line):

1. deep imports: every txl_audio module, the benchmarks, soundfile reading back a file it wrote, and
   librosa doing real work (``librosa.filters.mel``: ``import librosa`` alone proves nothing, it loads
   lazily) plus one soxr resample;
2. the model's three attention paths at realistic sizes (audio_small's width, tgt_len = mem_len =
   1,024) with the relative position bias, in bf16 (weights converted), bf16 autocast and fp32:
   evaluation (no gradients, memory with keys/values), training (forward + backward) and decoding
   (``model.step``: a prompt chunk, then one token); each must be finite and, in bf16, close to fp32.
   The kernels each path ran are read from the profiler and printed (which SDPA backend ran);
3. CUDA only: one CUDA-graph capture of a tiny decoder, whose greedy tokens must equal eager decoding;
4. one bf16 training step through ``txl_audio.train.train_step`` (fused AdamW) with finite loss and
   gradient norm.

``--quick`` shrinks the sizes (the CPU dry run of gpu_check.sh). Prints GO at the end.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from txl_audio.config import ModelConfig, RunConfig  # noqa: E402
from txl_audio.data import CorpusWriter  # noqa: E402
from txl_audio.distributed import Processes  # noqa: E402
from txl_audio.generate import sample  # noqa: E402
from txl_audio.model import TransformerXL  # noqa: E402
from txl_audio.tokenizers import MuLawTokenizer  # noqa: E402
from txl_audio.train import set_up, train_step  # noqa: E402

PACKAGE = ("audio", "tokenizers", "prepare", "data", "model", "train", "evaluate", "context", "generate",
           "codec", "decoders", "checkpoint", "plots", "spectrogram", "cli")
MODULES = [*(f"txl_audio.{m}" for m in PACKAGE),
           "gpu_speed", "generate_speed", "memory_scaling", "gpu_report", "einsum_reference"]
# substrings of attention kernel names: CUDA (flash, memory-efficient/cutlass "fmha", cuDNN) and CPU
ATTENTION_KERNELS = ("flash", "fmha", "efficient", "cudnn", "sdpa", "attention")


class NoGo(RuntimeError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise NoGo(what)


def deep_imports() -> None:
    for name in MODULES:
        importlib.import_module(name)
    import librosa
    import soundfile

    mel = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80)
    check(mel.shape == (80, 513) and np.isfinite(mel).all(), f"librosa.filters.mel gave {mel.shape}")
    up = librosa.resample(np.sin(np.arange(800) / 5).astype(np.float32), orig_sr=8000, target_sr=16000,
                          res_type="soxr_hq")
    check(up.shape == (1600,), f"librosa.resample (soxr) gave {up.shape}")
    with tempfile.TemporaryDirectory() as d:
        soundfile.write(f"{d}/x.flac", np.zeros(160, np.float32), 16000)
        check(soundfile.info(f"{d}/x.flac").frames == 160, "soundfile could not read back a FLAC it wrote")
    print(f"imports: {len(MODULES)} modules; soundfile {soundfile.__version__}, librosa "
          f"{librosa.__version__} (mel filters, soxr resample): ok", flush=True)


def attention_kernels(prof) -> str:
    names = {e.key for e in prof.key_averages()}
    hits = sorted(n for n in names if any(k in n.lower() for k in ATTENTION_KERNELS)
                  and not n.startswith("autograd::"))
    return "; ".join(h[:90] for h in hits) or "(none named like attention)"


def profiled(device: torch.device, fn):
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return out, attention_kernels(prof)


def attention_paths(device: torch.device, quick: bool) -> None:
    width = dict(n_layer=2, d_model=64, n_head=2, d_head=32, d_inner=128, tgt_len=32, mem_len=32) if quick \
        else dict(n_layer=2, d_model=384, n_head=6, d_head=64, d_inner=1536, tgt_len=1024, mem_len=1024)
    cfg = ModelConfig(vocab_size=256, dropout=0.0, pre_norm=True, **width)
    B = 2 if quick else 4
    torch.manual_seed(0)
    ref = TransformerXL(cfg).to(device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (B, 2 * cfg.tgt_len + 1), generator=g).to(device)
    segs = [x[:, : cfg.tgt_len], x[:, cfg.tgt_len : 2 * cfg.tgt_len]]

    def evaluate(model, ctx):
        with torch.no_grad(), ctx:
            mems = None
            for s in segs:
                out = model(s, mems, keep_kv=True)
                mems = out.mems
            return out.logits.float()

    def train(model, ctx):
        model.train()
        with ctx:
            out = model(segs[0], targets=x[:, 1 : cfg.tgt_len + 1])
            loss = out.loss.float().mean()
        loss.backward()
        model.eval()
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))
        model.zero_grad(set_to_none=True)
        return loss.detach(), norm

    def decode(model, ctx):
        with torch.no_grad(), ctx:
            cache = model.init_cache(B)
            model.step(segs[0], cache)  # a prompt chunk
            return model.step(segs[1][:, :1], cache).logits.float()  # one token

    fp32 = {"evaluation": evaluate(ref, nullcontext()), "decoding": decode(ref, nullcontext())}
    variants = {"fp32": (ref, nullcontext)}
    if device.type == "cuda":
        variants["bf16 weights"] = (TransformerXL(cfg).to(device).eval(), nullcontext)
        variants["bf16 weights"][0].load_state_dict(ref.state_dict())
        variants["bf16 weights"][0].to(torch.bfloat16)
        variants["bf16 autocast"] = (ref, lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    for label, (model, ctx) in variants.items():
        for path, fn in (("evaluation", evaluate), ("decoding", decode)):
            t0 = time.perf_counter()
            got, kernels = profiled(device, lambda fn=fn, model=model, ctx=ctx: fn(model, ctx()))
            check(bool(torch.isfinite(got).all()), f"{path} ({label}): non-finite logits")
            err = float((got - fp32[path]).abs().max() / fp32[path].abs().max())
            check(err < 0.1, f"{path} ({label}): {err:.3f} of the fp32 logits' scale off fp32")
            print(f"{path:<10} {label:<13} {time.perf_counter() - t0:6.2f} s, max error vs fp32 {err:.1e}; "
                  f"attention kernels: {kernels}", flush=True)
        t0 = time.perf_counter()
        (loss, norm), kernels = profiled(device, lambda model=model, ctx=ctx: train(model, ctx()))
        check(bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)),
              f"training ({label}): loss {float(loss)}, gradient norm {float(norm)}")
        print(f"{'training':<10} {label:<13} {time.perf_counter() - t0:6.2f} s, loss {float(loss):.3f}; "
              f"attention kernels: {kernels}", flush=True)


def cuda_graph(device: torch.device) -> None:
    cfg = ModelConfig(vocab_size=32, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0,
                      tgt_len=4, mem_len=6)
    torch.manual_seed(0)
    model = TransformerXL(cfg).to(device).eval()
    prompt = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(0)).to(device)
    graph = sample(model, prompt, 40, 0.0, cuda_graph=True)
    eager = sample(model, prompt, 40, 0.0, cuda_graph=False)
    check(torch.equal(graph, eager), "CUDA-graph decoding chose other tokens than eager decoding")
    print("CUDA graph: captured and replayed; greedy tokens equal eager decoding: ok", flush=True)


def training_step(device: torch.device, quick: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus"
        rng = np.random.default_rng(0)
        with CorpusWriter(corpus, MuLawTokenizer(8), kind="audio", sample_rate=16_000) as w:
            for split, n in (("train", 4), ("valid", 1), ("test", 1)):
                for i in range(n):
                    codes = rng.integers(0, 256, 4000).astype(np.uint8)
                    w.add(split, codes, f"{split}{i}.wav", speaker=str(i))
            w.commit()
        cfg = RunConfig.from_dict({
            "model": {"n_layer": 2, "d_model": 64, "n_head": 2, "d_head": 32, "d_inner": 128,
                      "tgt_len": 64 if quick else 512, "mem_len": 64 if quick else 512},
            "data": {"corpus": str(corpus)},
            "train": {"batch_size": 2, "device": device.type, "dtype": "bf16", "threads": 1},
        })
        run = set_up(cfg, Path(d) / "run", Processes(), device, log=lambda m: None)
        s = train_step(run, lr=1e-4)
        check(s.ok, f"bf16 training step: loss {s.loss}, gradient norm {s.grad_norm}")
        print(f"training step (bf16 autocast, {'fused' if device.type == 'cuda' else 'plain'} AdamW): "
              f"loss {s.loss:.3f}, gradient norm {s.grad_norm:.3f}: ok", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU dry run)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("NO-GO: torch sees no CUDA device")
            return 1
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
              flush=True)
    t0 = time.perf_counter()
    try:
        deep_imports()
        attention_paths(device, args.quick)
        if device.type == "cuda":
            cuda_graph(device)
        training_step(device, args.quick)
    except Exception as e:  # the go/no-go reason, then the traceback for the log
        traceback.print_exc()
        print(f"NO-GO after {time.perf_counter() - t0:.0f} s: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"GO ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
