#!/usr/bin/env bash
# Long-range speech on one GPU (issue 19): the Transformer-XL with 1 s of memory per layer against the
# same model with a compressed memory reaching 4 s further back (recipes/configs/audio_long_cmem.toml),
# the same steps, batches and seed, on read speech (sentences of several seconds, held out by file);
# both evaluated on the held-out files, then their loss against context span on one plot (the
# compressive model's span counts its compressed reach).
#   recipes/long_range.sh [AUDIO_DIR]
# AUDIO_DIR defaults to ../shared/data/audio/ljspeech_sentences_read when present, else the bundled
# data/ljspeech_sentences_read.
# env: STEPS (the config's 20,000), OUT (runs/long_range), MEM_LENS (context analysis; 0,4096,16384),
#      SET / RESUME / NPROC / TXL as in recipes/common.sh. Hours on one H100/H200; NPROC=8 for a node.
set -euo pipefail
source "$(dirname "$0")/common.sh"

src="${1:-$ROOT/../shared/data/audio/ljspeech_sentences_read}"
[[ -d "$src" ]] || src="$ROOT/data/ljspeech_sentences_read"
need "$src" "an audio folder"
CONFIG="${CONFIG:-$ROOT/recipes/configs/audio_long_cmem.toml}"
OUT="${OUT:-runs/long_range}"
steps=()
[[ -n "${STEPS:-}" ]] && steps=(--set "train.max_steps=$STEPS")

if [[ "${RESUME:-0}" == 1 && -f "$OUT/corpus/meta.json" ]]; then
    echo "(resuming: keeping $OUT/corpus)"
else
    txl prepare-audio "$src" --out "$OUT/corpus" --quiet --split-by file --valid 0.1 --test 0.1
fi
train_run "$CONFIG" "$OUT/xl" "$OUT/corpus" ${steps[@]+"${steps[@]}"} --set model.cmem_len=0 "${@:2}"
train_run "$CONFIG" "$OUT/cmem" "$OUT/corpus" ${steps[@]+"${steps[@]}"} "${@:2}"
for v in xl cmem; do
    txl evaluate "$OUT/$v" --corpus "$OUT/corpus" --split test --dtype bf16
done
txl context "$OUT/xl" --compare "$OUT/cmem" --corpus "$OUT/corpus" --split test --dtype bf16 \
    --mem-lens "${MEM_LENS:-0,4096,16384}" --out "$OUT/context"
echo "plots: $OUT/context/nll_vs_context.png, $OUT/context/nll_vs_position.png"
