#!/usr/bin/env bash
# Long-range speech on one GPU (issue 19): the Transformer-XL with 1 s of memory per layer against the
# same model with a compressed memory reaching 4 s further back (recipes/configs/audio_long_cmem.toml),
# the same steps, batches and seed, on read speech: by default LibriSpeech (the `librispeech` protocol
# of `txl-audio download`: train-clean-100 -> test-clean, valid dev-clean, whole utterances of 1-35 s,
# 7.1 GB, CC BY 4.0); both evaluated on the test utterances (each from an empty memory), then their
# loss against context span, up to 65,536 samples (4.1 s) of memory, and against position in the
# utterance, on one plot (the compressive model's span counts its compressed reach).
#   recipes/long_range.sh [AUDIO_DIR | MANIFEST]
# A folder is split by file (10 % valid, 10 % test; e.g. the bundled data/ljspeech_sentences_read for a
# plumbing check); a manifest with a split column keeps its split.
# env: STEPS (the config's 20,000), OUT (runs/long_range), MEM_LENS (context analysis;
#      0,4096,16384,65536), PREPARE (prepare-audio split options), SET / RESUME / NPROC / TXL / TXL_DATA /
#      STOP_AFTER as in recipes/common.sh. Hours on one H100/H200; NPROC=8 for a node.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data librispeech); fi
need "$src" "an audio folder or manifest"
stage_done download
if [[ -n "${PREPARE:-}" ]]; then read -r -a prepare <<< "$PREPARE"
elif [[ -f "$src" ]] && head -1 "$src" | grep -q '\bsplit\b'; then prepare=(--split-by manifest)
else prepare=(--split-by file --valid 0.1 --test 0.1); fi
CONFIG="${CONFIG:-$ROOT/recipes/configs/audio_long_cmem.toml}"
OUT="${OUT:-runs/long_range}"
steps=()
[[ -n "${STEPS:-}" ]] && steps=(--set "train.max_steps=$STEPS")

if [[ "${RESUME:-0}" == 1 && -f "$OUT/corpus/meta.json" ]]; then
    echo "(resuming: keeping $OUT/corpus)"
else
    txl prepare-audio "$src" --out "$OUT/corpus" --quiet "${prepare[@]}"
fi
train_run "$CONFIG" "$OUT/xl" "$OUT/corpus" ${steps[@]+"${steps[@]}"} --set model.cmem_len=0 "$@"
train_run "$CONFIG" "$OUT/cmem" "$OUT/corpus" ${steps[@]+"${steps[@]}"} "$@"
for v in xl cmem; do
    txl evaluate "$OUT/$v" --corpus "$OUT/corpus" --split test --dtype bf16
done
txl context "$OUT/xl" --compare "$OUT/cmem" --corpus "$OUT/corpus" --split test --dtype bf16 \
    --mem-lens "${MEM_LENS:-0,4096,16384,65536}" --out "$OUT/context"
echo "plots: $OUT/context/nll_vs_context.png, $OUT/context/nll_vs_position.png"
