#!/usr/bin/env bash
# enwik8 (the first 10^8 bytes of the English Wikipedia dump of 2006, 
#   http://mattmahoney.net/dc/enwik8.zip),
# character level:
# first 90M bytes train, next 5M validation, last 5M test. prepare -> train -> test bits per character.
#
#   recipes/enwik8.sh [FILE]   the enwik8 file or enwik8.zip (default: downloaded, `txl-audio download
#                          enwik8`, 36 MB). A smaller file is cut 90/5/5 %.
#
# Default config recipes/configs/enwik8_base.toml is the paper's base setting (12 layers, d_model 512,
# tgt_len 512, mem_len 512) and needs a GPU; evaluated like the paper with a longer memory
# (tgt_len 80, mem_len 2100, clamp_len 820, same_length as their enwik8 base script).
# Dai et al. 2019: 1.06 bits per character with the 12-layer base model (41M parameters).
# For a quick CPU check: CONFIG=recipes/configs/shakespeare_char_cpu.toml EVAL= recipes/enwik8.sh FILE
# More knobs in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data enwik8); fi
need "$src" "the enwik8 file (or enwik8.zip)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/enwik8_base.toml}"
OUT="${OUT:-runs/enwik8}"
EVAL="${EVAL---tgt-len 80 --mem-len 2100 --clamp-len 820 --same-length}"

hutter_recipe enwik8 "$src" "$@"
