#!/usr/bin/env bash
# WikiText-103 (v1, tokenized), word level, as Transformer-XL did it: prepare -> train -> test perplexity.
#
#   recipes/wikitext103.sh [WT103_FOLDER]   folder with wiki.{train,valid,test}.tokens (default: downloaded,
#                                           `txl-audio download wikitext-103`, 190 MB, CC BY-SA)
#
# Protocol of Dai et al. 2019 (kimiyoung/transformer-xl, getdata.sh and pytorch/run_wt103_base.sh): the
# three files as they are (<unk> already in them), <eos> at each line end, the vocabulary of every word of
# the training file (267,735 with <eos>), adaptive input and softmax with cutoffs 20k / 40k / 200k; the
# base model recipes/configs/wt103_base.toml (16 layers x 410, 151M parameters in the paper: test
# perplexity 24.0) trained with tgt_len = mem_len = 150, evaluated on the test set as one stream with
# tgt_len 64, mem_len 640, clamp_len 400 and same_length (their eval settings). Needs GPUs (days on one).
# More knobs (OUT, SET, EVAL, RESUME, NPROC) in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data wikitext-103); fi
need "$src" "the WikiText-103 folder (wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/wt103_base.toml}"
OUT="${OUT:-runs/wikitext103}"
EVAL="${EVAL---tgt-len 64 --mem-len 640 --clamp-len 400 --same-length}"

txl prepare-text "$src" --out "$OUT/corpus" --format words
train_run "$CONFIG" "$OUT/run" "$OUT/corpus" "$@"
# shellcheck disable=SC2086
txl evaluate "$OUT/run" --corpus "$OUT/corpus" --split test --stream --no-baselines ${EVAL}
