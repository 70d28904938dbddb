#!/usr/bin/env bash
# Transformer-XL against its two ablations, same data and same compute, one table:
#   transformer-xl   relative positions + segment recurrence memory (the config's mem_len)
#   no memory        relative positions, mem_len = 0: every segment is read on its own
#   absolute         the vanilla Transformer: absolute sinusoid positions, no memory
#   rotary           rotary positions (RoFormer) instead of relative ones, the same memory
# All four use the same config, seed, batches, segment length and number of steps (STEPS; the same
# tokens seen), so the table shows what recurrence and relative positions buy. Each is evaluated on
# EVAL_SPLIT as one continuous stream at its training lengths (the no-memory models therefore see on
# average tgt_len / 2 previous tokens: the context fragmentation the paper describes).
#
#   recipes/text_baselines.sh [INPUT]   default: tiny Shakespeare, downloaded (`txl-audio download tinyshakespeare`)
#
# env: CONFIG (recipes/configs/shakespeare_char_cpu.toml), FORMAT (bytes; words for PTB / WikiText
#      folders), SPLIT_FRACTIONS (0.9,0.1,0 for a single file, as nanoGPT), EVAL_SPLIT (valid),
#      STEPS (1000), OUT (runs/text_baselines), SET / RESUME / TXL as in recipes/text_common.sh.
# Word level, e.g.: CONFIG=recipes/configs/ptb_cpu.toml FORMAT=words recipes/text_baselines.sh "$(txl-audio download ptb)"
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data tinyshakespeare); fi
need "$src" "a text file or a PTB/WikiText-style folder"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/shakespeare_char_cpu.toml}"
FORMAT="${FORMAT:-bytes}"
EVAL_SPLIT="${EVAL_SPLIT:-valid}"
STEPS="${STEPS:-1000}"
OUT="${OUT:-runs/text_baselines}"

split_args=()
[[ -f "$src" && "$FORMAT" != enwik8 && "$FORMAT" != text8 ]] && split_args=(--split-fractions "${SPLIT_FRACTIONS:-0.9,0.1,0}")
txl prepare-text "$src" --out "$OUT/corpus" --format "$FORMAT" "${split_args[@]}"

train_ablations "$CONFIG" "$OUT" "$STEPS" "$@"
for v in xl no_memory absolute rotary; do
    txl evaluate "$OUT/$v" --corpus "$OUT/corpus" --split "$EVAL_SPLIT" --stream --no-baselines --no-progress
done

"$PYTHON" "$ROOT/recipes/ablation_table.py" "$OUT" "$EVAL_SPLIT"
