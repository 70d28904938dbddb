#!/usr/bin/env bash
# Read speech (one reader; LJ Speech by default): folder -> corpus (split by file: a single speaker) ->
# train -> evaluate (bits per sample vs xz) -> generate.
#   recipes/read_speech.sh [DATA_DIR] [--set section.key=value ...]
# Without DATA_DIR it downloads LJ Speech 1.1 (2.7 GB, public domain, 13,100 clips at 22.05 kHz, resampled
# to 16 kHz by prepare-audio; `txl-audio download ljspeech`). The bundled sample: recipes/read_speech.sh
# data/ljspeech_sentences_read. Environment: see recipes/audio_recipe.sh and recipes/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; else DATA=$(fetch_data ljspeech); fi
stage_done download
# one reader: hold out whole files (10 % valid, 10 % test)
audio_recipe read_speech "$DATA" --split-by file --valid 0.1 --test 0.1 -- "$@"
