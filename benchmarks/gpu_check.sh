#!/usr/bin/env bash
# One script for a lent GPU machine (no network): card and torch version, the cuda-marked tests, GPU
# throughput (bf16) of audio_small and audio_base against the einsum version, generation samples/s
# for batch 1/16/64, peak memory against mem_len, and a 3-minute audio_small training run on the
# bundled data with its test bits per sample. Everything goes under $OUT (default
# benchmarks/results/gpu). Meant to finish in under 8 minutes on one H100/H200.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# The GPU image has torch, numpy, matplotlib, tqdm and pytest but may lack soundfile and librosa:
# carry them as wheels in gpu_wheels/ (made here with `make gpu-wheels`), installed with --no-index.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

if ! $PY -c "import soundfile, librosa" 2>/dev/null && [ -d gpu_wheels ]; then
    $PY -m pip install -q --no-index --find-links gpu_wheels soundfile librosa 2>&1 | tail -2
fi

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$OUT/summary.txt"

log "cuda tests"
timeout 150 $PY -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -15 | tee -a "$OUT/summary.txt"

log "training/evaluation throughput, bf16 (ours, compiled, einsum)"
timeout 120 $PY benchmarks/gpu_speed.py --configs recipes/configs/audio_small.toml --batch 16 --compile \
    --out "$OUT/gpu_speed_small.json" 2>&1 | tail -6 | tee -a "$OUT/summary.txt"
timeout 90 $PY benchmarks/gpu_speed.py --configs recipes/configs/audio_base.toml --batch 4 \
    --out "$OUT/gpu_speed_base.json" 2>&1 | tail -6 | tee -a "$OUT/summary.txt"

log "generation samples/s, bf16, batch 1/16/64"
timeout 90 $PY benchmarks/generate_speed.py --device cuda --dtype bf16 --batch 1 16 64 --models issue3 \
    --config recipes/configs/audio_small.toml --steps 300 --ref-steps 20 --min-seconds 1 \
    --json "$OUT/generate_speed.json" 2>&1 | tail -12 | tee -a "$OUT/summary.txt"

log "peak memory against mem_len (tgt_len 512)"
timeout 60 $PY benchmarks/memory_scaling.py --device cuda --mem-lens 0,1024,2048,4096,8192,16384 \
    --out "$OUT/memory_scaling.json" 2>&1 | tail -16 | tee -a "$OUT/summary.txt"

log "audio_small: ${TRAIN_SECONDS} s of training on the bundled data, then the test split"
RUN=$(mktemp -d)
$PY -m txl_audio prepare-audio data --out "$RUN/corpus" 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
timeout $((TRAIN_SECONDS + 120)) $PY -m txl_audio train --config recipes/configs/audio_small.toml \
    --set data.corpus="$RUN/corpus" --set train.max_time="$TRAIN_SECONDS" --set train.eval_every=250 \
    --set data.max_eval_tokens=262144 --out "$RUN/run" > "$OUT/train.log" 2>&1
tail -3 "$OUT/train.log" | tee -a "$OUT/summary.txt"
cp "$RUN/run/metrics.jsonl" "$RUN/run/curves.png" "$OUT/" 2>/dev/null
timeout 90 $PY -m txl_audio evaluate "$RUN/run" --corpus "$RUN/corpus" --split test --dtype bf16 \
    --out "$RUN/eval" 2>&1 | tail -8 | tee -a "$OUT/summary.txt"
cp "$RUN/eval/summary.json" "$OUT/eval_summary.json" 2>/dev/null
log "done"
