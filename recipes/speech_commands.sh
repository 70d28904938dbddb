#!/usr/bin/env bash
# Speech Commands (1 s keyword clips, many speakers): folder -> corpus (speaker-disjoint splits) -> train
# -> evaluate (bits per sample vs xz) -> generate.
#   recipes/speech_commands.sh [DATA_DIR] [--set section.key=value ...]
# Without DATA_DIR it downloads the official Speech Commands v0.02 test set (113 MB, 4,890 clips, CC BY
# 4.0; `txl-audio download speech-commands-test`) into the cache (TXL_DATA, default ~/.cache/txl_audio).
# The full set: recipes/speech_commands.sh "$(txl-audio download speech-commands)" (2.4 GB); the SC09
# protocol of the literature: recipes/sc09.sh. The bundled sample: recipes/speech_commands.sh
# data/speech_commands_v002_test. Environment: see recipes/audio_recipe.sh (OUT, CONFIG, TXL_MAX_TIME,
# NPROC, RESUME, ...) and recipes/common.sh (TXL_DATA, STOP_AFTER).
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; else DATA=$(fetch_data speech-commands-test); fi
stage_done download
# file names carry the speaker (SPEAKER_nohash_N): prepare-audio's default regex splits by it
audio_recipe speech_commands "$DATA" --split-by speaker -- "$@"
