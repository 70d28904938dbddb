#!/usr/bin/env bash
# WikiText-2 (v1, tokenized), word level: prepare -> train -> test perplexity.
#
#   recipes/wikitext2.sh [WT2_FOLDER]   folder with wiki.{train,valid,test}.tokens
#                                       (default: downloaded, `txl-audio download wikitext-2`, 4.5 MB)
#
# CPU default: recipes/configs/wt2_cpu.toml. On a GPU: CONFIG=recipes/configs/wt2_base.toml.
# Reference: AWD-LSTM (Merity et al. 2018) test perplexity 65.8 on WikiText-2 (with finetuning).
# More knobs (OUT, SET, EVAL, RESUME) in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data wikitext-2); fi
need "$src" "the WikiText-2 folder (wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/wt2_cpu.toml}"
OUT="${OUT:-runs/wikitext2}"

txl prepare-text "$src" --out "$OUT/corpus" --format words
train_run "$CONFIG" "$OUT/run" "$OUT/corpus" "$@"
# shellcheck disable=SC2086
txl evaluate "$OUT/run" --corpus "$OUT/corpus" --split test --stream --no-baselines ${EVAL:-}
