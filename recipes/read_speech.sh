#!/usr/bin/env bash
# Read speech (a folder of read sentences, e.g. one speaker reading LJ Speech texts): folder -> corpus
# (split by file: a single speaker) -> train -> evaluate (bits per sample vs xz) -> generate.
#   recipes/read_speech.sh [DATA_DIR] [--set section.key=value ...]
# DATA_DIR defaults to ../shared/data/audio/ljspeech_sentences_read when present, else the bundled
# data/ljspeech_sentences_read. Environment: see recipes/audio_recipe.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

DATA=../shared/data/audio/ljspeech_sentences_read
[ -d "$DATA" ] || DATA=data/ljspeech_sentences_read
if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; fi
# one reader: hold out whole files (10 % valid, 10 % test: the clips are long, so few files)
audio_recipe read_speech "$DATA" --split-by file --valid 0.1 --test 0.1 -- "$@"
