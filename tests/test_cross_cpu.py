"""Evaluation agrees across machines to the last reported digit: ``txl-audio evaluate`` and
``Model.score`` run under each CPU capability torch offers here (``ATEN_CPU_CAPABILITY`` default / avx2
/ avx512, with oneDNN and MKL capped to match) and at two thread counts give the same bits per sample to
the 4 decimals they print. The float32 model's outputs differ between those settings in their last bits
(other kernels, vector widths, FMA); the loss is summed in float64, so the mean moves by far less than
0.00005."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from txl_audio.checkpoint import save_checkpoint
from txl_audio.config import ModelConfig, RunConfig
from txl_audio.model import TransformerXL
from txl_audio.tokenizers import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted((ROOT / "data" / "speech_commands_v002_test").rglob("*.flac"))[:2]

SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from txl_audio import api
from txl_audio.cli import main
out = {}
for ckpt in sys.argv[4:]:
    run = f"{sys.argv[2]}/{ckpt.rsplit('/', 1)[-1]}"
    assert main(["evaluate", ckpt, "--audio", *sys.argv[3].split(","), "--no-baselines", "--no-progress",
                 "--threads", sys.argv[1], "--out", run]) == 0
    summary = json.load(open(f"{run}/summary.json"))
    model = api.load(ckpt, device="cpu")
    out[ckpt] = {"evaluate": summary["bits_per_token"],
                 "score": [model.score(f).mean_bits for f in sys.argv[3].split(",")]}
print(json.dumps(out))
"""


def sharp_checkpoint(path: Path, tokenizer: str, **model) -> Path:
    """Large random weights (std 0.3): outputs that depend strongly on the context and on every
    rounding."""
    cfg = ModelConfig(**{**dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=64,
                                mem_len=64, dropout=0.0), **model})
    torch.manual_seed(0)
    m = TransformerXL(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and "proj" not in name and "coef" not in name:
                p.normal_(0, 0.3)
    save_checkpoint(path, {"model": m.state_dict(), "config": RunConfig(model=cfg).to_dict(),
                           "tokenizer": make_tokenizer(tokenizer).to_dict(), "step": 0})
    return path


@pytest.mark.slow  # 26 s: .ci/run runs it on every submission, outside the 10-minute default suite
def test_evaluate_and_score_agree_across_cpus_to_4_decimals(tmp_path):
    assert len(CLIPS) == 2, "the bundled Speech Commands sample is missing (data/)"
    ckpts = [sharp_checkpoint(tmp_path / "mulaw.pt", "mulaw8", vocab_size=256),
             sharp_checkpoint(tmp_path / "mixture.pt", "pcm16", vocab_size=65536, head="logistic_mixture",
                              mixture_components=4, lp_order=8, lp_coefficients="cascade",
                              attention="rotary")]
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(SCRIPT))
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    caps = ["default", "avx2"] + (["avx512"] if "avx512f" in cpuinfo else [])
    procs = {}
    for i, cap in enumerate(caps):  # side by side: each process is mostly its imports
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ATEN_CPU_CAPABILITY": cap}
        if cap != "avx512":
            env.update(ONEDNN_MAX_CPU_ISA="AVX2" if cap == "avx2" else "SSE41",
                       MKL_ENABLE_INSTRUCTIONS="AVX2" if cap == "avx2" else "SSE4_2")
        threads = 1 + i % 2
        procs[cap] = subprocess.Popen([sys.executable, str(script), str(threads), str(tmp_path / cap),
                                       ",".join(map(str, CLIPS)), *map(str, ckpts)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for cap, p in procs.items():
        out, err = p.communicate()
        assert p.returncode == 0, err
        results[cap] = json.loads(out.strip().splitlines()[-1])
    ref = results[caps[0]]
    for cap in caps[1:]:
        for ckpt in ref:
            a, b = ref[ckpt], results[cap][ckpt]
            for x, y in zip([a["evaluate"], *a["score"]], [b["evaluate"], *b["score"]]):
                assert f"{x:.4f}" == f"{y:.4f}" and abs(x - y) < 5e-6, (cap, ckpt, x, y)


BF16_STEP = """
import os, torch
import txl_audio  # noqa: F401 (caps oneDNN's ISA to the imitated capability)
print(os.environ.get("ONEDNN_MAX_CPU_ISA"))
from txl_audio.model.attention import RelativeAttentionCPU  # noqa: F401
q = torch.randn(1, 2, 64, 16, dtype=torch.bfloat16, requires_grad=True)
o = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
o.float().sum().backward()
print("ok", bool(torch.isfinite(q.grad.float()).all()))
"""


@pytest.mark.parametrize("cap, preset, expect", [("default", None, "SSE41"), ("avx2", None, "AVX2"),
                                                 ("avx2", "AVX512_CORE", "AVX512_CORE")])
def test_imitating_a_cpu_caps_onednn_to_match(cap, preset, expect):
    """Under ATEN_CPU_CAPABILITY=default or avx2 (another CPU), importing txl_audio caps oneDNN's ISA
    the same way unless the user chose one: on a machine with AMX, bf16 attention otherwise asks the
    hardware whether to pack blocks and calls the imitated capability's packing, which raises "pack_vnni2
    is only supported when avx512 is supported" (torch 2.13); a bf16 attention step runs either way."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env["ATEN_CPU_CAPABILITY"] = cap
    if preset:
        env["ONEDNN_MAX_CPU_ISA"] = preset
    proc = subprocess.run([sys.executable, "-c", BF16_STEP], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [expect, "ok", "True"], proc.stdout
