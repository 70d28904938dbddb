#!/usr/bin/env bash
# One script for a lent GPU machine (no network). In order: card and torch version; a 20-second go/no-go
# (benchmarks/gpu_preflight.py: deep imports, the attention paths with the relative bias in bf16 and
# fp32 and the kernels they run, a CUDA-graph capture, a bf16 training step) that stops the run with its
# reason when anything fails; the cuda-marked tests; the quickstart with audio_small on the bundled data
# (the end-to-end result: held-out bits per sample, 2 s generated); then the throughput steps: bf16
# training/evaluation of audio_small and audio_base against the einsum version, generation samples/s
# for batch 1/16/64 (CUDA graph and eager) with the 16-bit heads' step cost against the 8-bit softmax,
# peak memory against mem_len, the lossless codec's compress/decompress samples/s, rotary against
# relative attention (tokens/s and peak memory per token at mem_len 512 / 2,048 / 8,192); the report.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   ONLY=generate_speed,codec_speed OUT=/tmp/gpu bash benchmarks/gpu_check.sh   # the go/no-go + these
#   DEVICE=cpu QUICK=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh    # dry run of every step, tiny sizes
#
# What comes back from the device machine is at most 8 files under $OUT, so everything is written to a
# work folder and packed into $OUT/gpu_check.tar.gz after every step (a kill still leaves the latest);
# $OUT/summary.txt (each step's tail) and $OUT/report.md (gpu_report.py: the tables and goals) lie
# beside it. Unpack with `tar -xzf gpu_check.tar.gz`; `python benchmarks/gpu_report.py DIR` rebuilds
# the report from the unpacked folder.
#
# It never runs past BUDGET seconds (default 540; the device stops a command at 600 s): each step's
# limit is cut to what is left, late steps are skipped, and said so. The dry run is what
# tests/test_benchmarks.py runs, so the script cannot rot between the sessions that have a GPU. The GPU
# image lacks soundfile and librosa (and their own needs): carry them as wheels in gpu_wheels/ (made
# with `make gpu-wheels`); they are installed with --no-index --no-deps into a folder on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
BUDGET=${BUDGET:-540}
START=$(date +%s)
: > "$OUT/summary.txt"
left() { echo $((BUDGET - ($(date +%s) - START) - 15)); }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
pack() { cp "$OUT/summary.txt" "$WORK/" && tar -czf "$OUT/gpu_check.tar.gz.tmp" -C "$WORK" . \
             && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"; }
# step NAME SECONDS CMD...: run CMD with a time limit, its whole output to NAME.log in the work folder,
# the end of it into summary.txt; then pack. Returns CMD's exit status.
step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [ "$name" != preflight ] && [[ ",$ONLY," != *",$name,"* ]]; then
        log "$name: not in ONLY=$ONLY"; return 0
    fi
    if [ "$(left)" -lt "$limit" ]; then limit=$(left); fi
    if [ "$limit" -lt 5 ]; then log "$name: skipped (the ${BUDGET} s budget is spent)"; return 124; fi
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$WORK/$name.log" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || log "$name: exit status $rc$([ $rc -eq 124 ] && echo " (time limit ${limit} s)")"
    pack
    return $rc
}
report() {
    log "report (docs/gpu.md's tables, goals marked from the numbers): $OUT/report.md"
    $PY benchmarks/gpu_report.py "$WORK" > "$OUT/report.md" 2> "$WORK/report.log"
    cp "$OUT/report.md" "$WORK/"
    cat "$OUT/report.md" "$WORK/report.log"
}

if [ "$QUICK" = 1 ]; then
    SPEED_ARGS=(--quick --dtype fp32)
    GEN_ARGS=(--models small --dtype fp32 --batch 1 4 --steps 5 --ref-steps 2 --min-seconds 0.05)
    MEM_ARGS=(--quick)
    CODEC_ARGS=(--quick --models tiny_cpu)
    ROTARY_ARGS=(--quick)
    CMEM_ARGS=(--quick)
    PREFLIGHT_ARGS=(--quick)
    TRAIN_CONFIG=recipes/configs/tiny_cpu.toml  # the quickstart's QUICK=1 shrinks it to seconds
else
    SPEED_ARGS=(--dtype bf16)
    GEN_ARGS=(--models issue3 issue3_dual issue3_mixture issue3_dual_open --config recipes/configs/audio_small.toml --dtype bf16
              --batch 1 16 64 --steps 300 --ref-steps 20 --min-seconds 1)
    MEM_ARGS=(--mem-lens 0,1024,2048,4096,8192,16384)
    CODEC_ARGS=(--models tiny_cpu speech16 --batch 1 64 256 --chunk 1024)
    ROTARY_ARGS=(--dtype bf16 --mem-lens 512,2048,8192)
    CMEM_ARGS=(--dtype bf16 --mem-lens 2048,8192)
    PREFLIGHT_ARGS=()
    TRAIN_CONFIG=recipes/configs/audio_small.toml
fi

if [ -d gpu_wheels ] && ! $PY -c "import soundfile, librosa; librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80)" \
        2>/dev/null; then
    # into a folder of its own on PYTHONPATH: the image's environment stays as it is
    SITE=$(mktemp -d)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" gpu_wheels/*.whl 2>&1 \
        | tail -3 | tee -a "$OUT/summary.txt"
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi

log "machine"
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee -a "$OUT/summary.txt"

log "go/no-go: imports, attention paths and their kernels, CUDA graph, a bf16 training step"
if ! step preflight 90 $PY benchmarks/gpu_preflight.py --device "$DEVICE" "${PREFLIGHT_ARGS[@]}"; then
    log "NO-GO: stopped before the measurements (preflight.log in gpu_check.tar.gz says why)"
    report
    pack
    exit 1
fi

log "cuda tests"
# several workers where pytest-xdist is there (the GPU image has it): the compile tests spend their
# time on the CPU; a test module that cannot be imported (a missing package) must not stop the rest
XDIST=()
$PY -c "import xdist" 2>/dev/null && [ "$QUICK" != 1 ] && XDIST=(-n 4)
step cuda_tests 150 $PY -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors \
    "${XDIST[@]}" tests

# the end-to-end result first: the throughput steps after it can be cut by the budget. The quickstart
# needs ~100 s besides training (start-up, evaluation, generation); it trains uncompiled, so its
# minutes go to training rather than compilation
if [ "$QUICK" != 1 ] && [ $(($(left) - 110)) -lt "$TRAIN_SECONDS" ]; then
    TRAIN_SECONDS=$(($(left) - 110))
    [ "$TRAIN_SECONDS" -lt 30 ] && TRAIN_SECONDS=30
    log "training shortened to ${TRAIN_SECONDS} s to fit the budget"
fi
log "quickstart with $(basename "$TRAIN_CONFIG" .toml)$([ "$QUICK" = 1 ] && echo " (QUICK: a few steps)" || echo ": ${TRAIN_SECONDS} s of training") on the bundled data, the held-out test split, 2 s generated"
RUN=$(mktemp -d)
step quickstart $((TRAIN_SECONDS + 150)) env OUT="$RUN" CONFIG="$TRAIN_CONFIG" TXL_MAX_TIME="$TRAIN_SECONDS" \
    TXL_SET="train.compile=false" TXL="$PY -m txl_audio" QUICK="$QUICK" bash recipes/quickstart.sh
cp "$RUN/metrics.jsonl" "$RUN/curves.png" "$RUN/config.toml" "$WORK/" 2>/dev/null
cp "$RUN/eval_test/summary.json" "$WORK/eval_summary.json" 2>/dev/null
cp "$RUN"/samples/*.png "$RUN"/samples/*.json "$WORK/" 2>/dev/null
rm -rf "$RUN"
pack

log "training/evaluation throughput (ours, einsum, ours compiled)"
step speed_small 150 $PY benchmarks/gpu_speed.py --device "$DEVICE" --configs recipes/configs/audio_small.toml \
    --batch 16 --compile "${SPEED_ARGS[@]}" --out "$WORK/gpu_speed_small.json"
step speed_base 80 $PY benchmarks/gpu_speed.py --device "$DEVICE" --configs recipes/configs/audio_base.toml \
    --batch 4 "${SPEED_ARGS[@]}" --out "$WORK/gpu_speed_base.json"

log "generation samples/s (cached, CUDA graph and eager, against the reference path; 16-bit heads' cost)"
step generate_speed 110 $PY benchmarks/generate_speed.py --device "$DEVICE" "${GEN_ARGS[@]}" \
    --json "$WORK/generate_speed.json"

log "peak memory against mem_len (tgt_len 512)"
step memory_scaling 60 $PY benchmarks/memory_scaling.py --device "$DEVICE" "${MEM_ARGS[@]}" \
    --out "$WORK/memory_scaling.json"

log "lossless codec samples/s (compress and decompress, bit-exact round trip checked; CPU-made and GPU-made files identical and each decoded on the other device)"
step codec_speed 60 $PY benchmarks/codec_speed.py --device "$DEVICE" "${CODEC_ARGS[@]}" \
    --out "$WORK/codec_speed.json"

log "rotary against relative attention (issue-3 trunk, bf16): tokens/s and peak memory per token"
step rotary_speed 90 $PY benchmarks/model_speed.py --rotary --device "$DEVICE" "${ROTARY_ARGS[@]}" \
    --out "$WORK/rotary_speed.json"

log "compressive memory at the same attention cost: tokens/s and peak memory per token"
step cmem_speed 90 $PY benchmarks/model_speed.py --cmem --device "$DEVICE" "${CMEM_ARGS[@]}" \
    --out "$WORK/cmem_speed.json"

report
log "done"
pack
