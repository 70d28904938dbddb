"""``txl-audio generate CHECKPOINT --out DIR``: sample audio clips (or text, from a text model),
optionally continuing a prompt."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or a run directory (its best.pt, else newest ckpt)")
    p.add_argument("--out", required=True,
                   help="folder for sample_NNN.wav/.png (audio) or sample_NNN.txt (text) and generation.json")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="audio: seconds to generate per clip (default 4)")
    p.add_argument("--tokens", type=int, default=None,
                   help="new tokens per sample (text models: default 200; audio: samples, instead of "
                        "--seconds)")
    p.add_argument("--num", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="samples generated together (default 8)")
    p.add_argument("--prompt", default=None,
                   help="file to continue: audio (any format; resampled to 16 kHz) for an audio model, "
                        "UTF-8 text for a text model")
    p.add_argument("--prompt-seconds", type=float, default=1.0,
                   help="audio: use the prompt's first S seconds (default 1.0; 0 = all of it)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the K most probable tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass >= P")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed and batch size = same output)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while decoding (default 1: fastest for one token at a time)")
    p.add_argument("--no-plots", action="store_true", help="skip the spectrogram PNGs")
    p.add_argument("--prior-prediction", action="store_true",
                   help="16-bit heads with a prior: centre each draw on the prior's prediction, as in "
                        "training (by default the prior runs open while sampling, on the corpus's fixed "
                        "long-term predictor: refitted on the "
                        "model's own output it drives the samples to full scale; docs/results.md)")


def run(args: argparse.Namespace) -> int:
    from txl_audio.generate import generate_files  # torch: see commands/__init__.py

    report = generate_files(
        args.checkpoint, args.out, seconds=args.seconds, num=args.num, batch_size=args.batch_size,
        prompt=args.prompt, prompt_seconds=args.prompt_seconds, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device, dtype=args.dtype,
        plots=not args.no_plots, threads=args.threads, tokens=args.tokens,
        prior_prediction=args.prior_prediction,
    )
    streams = min(args.batch_size, args.num)
    if report["unit"] == "sample":
        speed = (f"{report['samples_per_second']:,.0f} samples/s = {report['realtime_factor']:.3f}x "
                 f"real time over {streams} streams")
    else:
        speed = f"{report['tokens_per_second']:,.0f} tokens/s over {streams} streams"
    quality = report.get("quality")
    if quality is not None:  # what the samples are, beside the training audio; a warning per degenerate one
        for line in quality["lines"]:
            print(f"quality: {line}")
        for line in quality["warnings"]:
            print(line)
    print(f"wrote {len(report['files'])} samples to {args.out} ({speed} on {report['device_name']}); "
          f"settings in {args.out}/generation.json")
    return 0
