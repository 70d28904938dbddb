#!/usr/bin/env bash
# Transformer-XL against its two ablations on audio, same data and same compute, one table and one plot:
#   transformer-xl   relative positions + segment recurrence memory (the config's mem_len)
#   no memory        relative positions, mem_len = 0: every segment is read on its own
#   absolute         the vanilla Transformer: absolute sinusoid positions, no memory
#   rotary           rotary positions (RoFormer) instead of relative ones, the same memory
#   cmem4, cmem8     compressive memory (Rae et al. 2020) at the same attention cost: memory M/2 plus
#                    M/2 compressed slots of 4 (or 8) states each, mean pooling
# All use the same config, seed, batches, segment length and number of steps (STEPS), so the table
# shows what recurrence, relative positions and compression buy. Each is evaluated on the held-out test
# speakers, every clip from an empty memory (as `txl-audio evaluate` does by default), at its training
# lengths; then `txl-audio context` evaluates them at several memory lengths on the same clips (a
# compressive model keeps its compressed memory, so its span is memory + segment + compressed reach) and
# draws their loss against context span and against position in the clip (nll_vs_*.png).
#
#   recipes/audio_baselines.sh [AUDIO_DIR]     default: the bundled sample (data/), split as the quickstart
#
# env: CONFIG (audio_small.toml when nvidia-smi sees a GPU, else tiny_cpu.toml), STEPS (2000),
#      OUT (runs/audio_baselines),
#      MEM_LENS (the context analysis, up to 4x the training memory: 0,64,256; 0,256,1024,4096 with
#      audio_small on a GPU),
#      PREPARE (prepare-audio arguments; default the quickstart's speaker split),
#      SET / RESUME / TXL as in recipes/common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

src="${1:-$ROOT/data}"
need "$src" "an audio folder"
if [[ -z "${CONFIG:-}" ]]; then  # as the other audio recipes: audio_small where nvidia-smi sees a GPU
    if nvidia-smi -L >/dev/null 2>&1; then
        CONFIG="$ROOT/recipes/configs/audio_small.toml"
        MEM_LENS="${MEM_LENS:-0,256,1024,4096}"
    else
        CONFIG="$ROOT/recipes/configs/tiny_cpu.toml"
    fi
fi
STEPS="${STEPS:-2000}"
OUT="${OUT:-runs/audio_baselines}"
# the quickstart's split of the bundled sample: 6 held-out test speakers (91 s), the LJ reader as one speaker
if [[ -n "${PREPARE:-}" ]]; then
    read -r -a prepare <<< "$PREPARE"
else
    prepare=(--valid 0.05 --test 0.2 --speaker-regex '[0-9a-f]{8}(?=_nohash_)|LJ(?=\d{3}-)')
fi

if [[ "${RESUME:-0}" == 1 && -f "$OUT/corpus/meta.json" ]]; then
    echo "(resuming: keeping $OUT/corpus)"
else
    txl prepare-audio "$src" --out "$OUT/corpus" --quiet "${prepare[@]}"
fi

train_ablations "$CONFIG" "$OUT" "$STEPS" --no-progress "${@:2}"
train_compressive "$CONFIG" "$OUT" "$STEPS" --no-progress "${@:2}"
for v in xl no_memory absolute rotary cmem4 cmem8; do
    baselines=(--no-baselines)
    [[ "$v" == xl ]] && baselines=()  # xz and bzip2 once, on the same tokens
    txl evaluate "$OUT/$v" --corpus "$OUT/corpus" --split test --no-progress ${baselines[@]+"${baselines[@]}"}
done
txl context "$OUT/xl" --compare "$OUT/no_memory" "$OUT/absolute" "$OUT/rotary" "$OUT/cmem4" "$OUT/cmem8" \
    --corpus "$OUT/corpus" --split test \
    --mem-lens "${MEM_LENS:-0,64,256}" --no-progress --out "$OUT/context"

"$PYTHON" "$ROOT/recipes/ablation_table.py" "$OUT" test
echo "plots: $OUT/context/nll_vs_context.png, $OUT/context/nll_vs_position.png"
