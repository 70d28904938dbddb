#!/usr/bin/env bash
# Speech Commands (1 s keyword clips, many speakers): folder -> corpus (speaker-disjoint splits) -> train
# -> evaluate (bits per sample vs xz) -> generate.
#   recipes/speech_commands.sh [DATA_DIR] [--set section.key=value ...]
# DATA_DIR defaults to ../shared/data/audio/speech_commands_v002_test when present, else the bundled
# data/speech_commands_v002_test. Environment: see recipes/audio_recipe.sh (OUT, CONFIG, TXL_MAX_TIME,
# NPROC, RESUME, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

DATA=../shared/data/audio/speech_commands_v002_test
[ -d "$DATA" ] || DATA=data/speech_commands_v002_test
if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; fi
# file names carry the speaker (SPEAKER_nohash_N): prepare-audio's default regex splits by it
audio_recipe speech_commands "$DATA" --split-by speaker -- "$@"
