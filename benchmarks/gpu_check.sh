#!/usr/bin/env bash
# One script for a lent GPU machine (no network): card and torch version, the cuda-marked tests, GPU
# throughput (bf16) of audio_small and audio_base against the einsum version, generation samples/s
# for batch 1/16/64, peak memory against mem_len, and a 3-minute audio_small training run on the
# bundled data (the quickstart recipe: test bits per sample, 2 s generated). Everything goes under $OUT (default
# benchmarks/results/gpu), each step's whole output in its own log as it runs, so a step cut short
# by its time limit still leaves what it printed. Meant to finish in under 8 minutes on one H100/H200;
# it never runs past BUDGET seconds (default 540): late steps are shortened or skipped, and said so.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   DEVICE=cpu QUICK=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh    # dry run of every step, tiny sizes
#
# The dry run is what tests/test_benchmarks.py runs, so the script cannot rot between the sessions
# that have a GPU. The GPU image has torch, numpy, matplotlib, tqdm and pytest but lacks soundfile and
# librosa: carry them as wheels in gpu_wheels/ (made with `make gpu-wheels`), installed with --no-index.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
# the whole script stays inside BUDGET seconds (the device tool stops a command at 600 s and returns
# only what is under $OUT): each step's limit is cut to what is left, less a reserve for the report
BUDGET=${BUDGET:-540}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START) - 15)); }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
# step NAME SECONDS CMD...: run CMD with a time limit, its whole output to $OUT/NAME.log, the end of it
# into summary.txt
step() {
    local name=$1 limit=$2
    shift 2
    if [ "$(left)" -lt "$limit" ]; then limit=$(left); fi
    if [ "$limit" -lt 5 ]; then log "$name: skipped (the ${BUDGET} s budget is spent)"; return; fi
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || log "$name: exit status $rc$([ $rc -eq 124 ] && echo " (time limit ${limit} s)")"
}

if [ "$QUICK" = 1 ]; then
    SPEED_ARGS=(--quick --dtype fp32)
    GEN_ARGS=(--models small --dtype fp32 --batch 1 4 --steps 5 --ref-steps 2 --min-seconds 0.05)
    MEM_ARGS=(--quick)
    TRAIN_CONFIG=recipes/configs/tiny_cpu.toml  # the quickstart's QUICK=1 shrinks it to seconds
else
    SPEED_ARGS=(--dtype bf16)
    GEN_ARGS=(--models issue3 --config recipes/configs/audio_small.toml --dtype bf16 --batch 1 16 64
              --steps 300 --ref-steps 20 --min-seconds 1)
    MEM_ARGS=(--mem-lens 0,1024,2048,4096,8192,16384)
    TRAIN_CONFIG=recipes/configs/audio_small.toml
fi

if ! $PY -c "import soundfile, librosa" 2>/dev/null && [ -d gpu_wheels ]; then
    # into a folder of its own on PYTHONPATH: the image's environment stays as it is
    SITE=$(mktemp -d)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" gpu_wheels/*.whl 2>&1 | tail -3
    export PYTHONPATH="$PYTHONPATH:$SITE"
    $PY -c "import soundfile, librosa" || echo "soundfile/librosa still missing: the audio steps will fail"
fi

log "machine"
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee -a "$OUT/summary.txt"

log "cuda tests"
# several workers where pytest-xdist is there (the GPU image has it): the compile tests spend their
# time on the CPU
XDIST=()
$PY -c "import xdist" 2>/dev/null && [ "$QUICK" != 1 ] && XDIST=(-n 4)
step cuda_tests 150 $PY -m pytest -q -m cuda -p no:cacheprovider "${XDIST[@]}" tests

log "training/evaluation throughput (ours, einsum, ours compiled)"
step speed_small 150 $PY benchmarks/gpu_speed.py --device "$DEVICE" --configs recipes/configs/audio_small.toml \
    --batch 16 --compile "${SPEED_ARGS[@]}" --out "$OUT/gpu_speed_small.json"
step speed_base 80 $PY benchmarks/gpu_speed.py --device "$DEVICE" --configs recipes/configs/audio_base.toml \
    --batch 4 "${SPEED_ARGS[@]}" --out "$OUT/gpu_speed_base.json"

log "generation samples/s (cached against the reference path)"
step generate_speed 90 $PY benchmarks/generate_speed.py --device "$DEVICE" "${GEN_ARGS[@]}" \
    --json "$OUT/generate_speed.json"

log "peak memory against mem_len (tgt_len 512)"
step memory_scaling 60 $PY benchmarks/memory_scaling.py --device "$DEVICE" "${MEM_ARGS[@]}" \
    --out "$OUT/memory_scaling.json"

# the quickstart needs ~100 s besides training (start-up, compilation, evaluation, generation):
# train shorter rather than be cut off before the evaluation
if [ "$QUICK" != 1 ] && [ $(($(left) - 110)) -lt "$TRAIN_SECONDS" ]; then
    TRAIN_SECONDS=$(($(left) - 110))
    [ "$TRAIN_SECONDS" -lt 30 ] && TRAIN_SECONDS=30
    log "training shortened to ${TRAIN_SECONDS} s to fit the budget"
fi
log "quickstart with $(basename "$TRAIN_CONFIG" .toml)$([ "$QUICK" = 1 ] && echo " (QUICK: a few steps)" || echo ": ${TRAIN_SECONDS} s of training") on the bundled data, the held-out test split, 2 s generated"
RUN=$(mktemp -d)
step quickstart $((TRAIN_SECONDS + 150)) env OUT="$RUN" CONFIG="$TRAIN_CONFIG" TXL_MAX_TIME="$TRAIN_SECONDS" \
    TXL="$PY -m txl_audio" QUICK="$QUICK" bash recipes/quickstart.sh
cp "$RUN/metrics.jsonl" "$RUN/curves.png" "$RUN/config.toml" "$OUT/" 2>/dev/null
cp "$RUN/eval_test/summary.json" "$OUT/eval_summary.json" 2>/dev/null
cp "$RUN"/samples/*.png "$RUN"/samples/*.json "$OUT/" 2>/dev/null
rm -rf "$RUN"

log "report (the README's GPU section, goals marked from the numbers): $OUT/report.md"
$PY benchmarks/gpu_report.py "$OUT" > "$OUT/report.md" 2> "$OUT/report.log"
cat "$OUT/report.md" "$OUT/report.log"
log "done"
