#!/usr/bin/env bash
# Penn Treebank (Mikolov's split), word level: prepare -> train -> test perplexity.
#
#   recipes/ptb.sh [PTB_FOLDER]     folder with ptb.{train,valid,test}.txt (default: downloaded,
#                                   `txl-audio download ptb`, 6 MB)
# Protocol as Dai et al. 2019 (and Mikolov, Zaremba et al.): the three files as they are (10k words,
# <unk> already in them), <eos> at each line end, test perplexity with the memory carried through the
# test set as one stream.
#
# CPU default: recipes/configs/ptb_cpu.toml (minutes on 2 cores). The paper's setting on a GPU:
#   CONFIG=recipes/configs/ptb_base.toml recipes/ptb.sh
# Dai et al. 2019 report test perplexity 54.52 with 24M parameters (no finetuning). More knobs
# (OUT, SET, EVAL, RESUME) in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data ptb); fi
need "$src" "the PTB folder (ptb.train.txt, ptb.valid.txt, ptb.test.txt)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/ptb_cpu.toml}"
OUT="${OUT:-runs/ptb}"

txl prepare-text "$src" --out "$OUT/corpus" --format words
train_run "$CONFIG" "$OUT/run" "$OUT/corpus" "$@"
# shellcheck disable=SC2086
txl evaluate "$OUT/run" --corpus "$OUT/corpus" --split test --stream --no-baselines ${EVAL:-}
