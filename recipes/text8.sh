#!/usr/bin/env bash
# text8 (enwik8 cleaned to lower-case letters and spaces, 
#   http://mattmahoney.net/dc/text8.zip),
# character level:
# first 90M characters train, next 5M validation, last 5M test. prepare -> train -> test bits per character.
#
#   recipes/text8.sh [FILE]   the text8 file or text8.zip (default: downloaded, `txl-audio download
#                          text8`, 31 MB). A smaller file is cut 90/5/5 %.
#
# Default config recipes/configs/text8_base.toml is the paper's base setting (12 layers, d_model 512,
# tgt_len 512, mem_len 512) and needs a GPU; evaluated like the paper with a longer memory
# (tgt_len 80, mem_len 2100, clamp_len 820, same_length as their enwik8 base script).
# Dai et al. 2019: 1.08 bits per character with the 24-layer model (277M); no base-model number is published.
# For a quick CPU check: CONFIG=recipes/configs/shakespeare_char_cpu.toml EVAL= recipes/text8.sh FILE
# More knobs in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data text8); fi
need "$src" "the text8 file (or text8.zip)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/text8_base.toml}"
OUT="${OUT:-runs/text8}"
EVAL="${EVAL---tgt-len 80 --mem-len 2100 --clamp-len 820 --same-length}"

hutter_recipe text8 "$src" "$@"
