#!/usr/bin/env bash
# 16-bit speech, measured against FLAC: folder -> pcm16 corpus (the int16 samples exactly, speaker-disjoint
# splits) -> train a 16-bit head -> evaluate the held-out speakers in bits per 16-bit sample beside
# FLAC -8, the backward-adaptive LPC column and xz -> generate 16-bit WAVs.
#   recipes/lossless16.sh [DATA_DIR] [--set section.key=value ...]
# DATA_DIR defaults to ../shared/data/audio/speech_commands_v002_test when present, else the bundled
# data/speech_commands_v002_test. The flac command is installed (apt-get) when missing and allowed;
# without it the FLAC column comes from libFLAC through libsndfile (same encoder, level 8).
# Environment: as recipes/audio_recipe.sh (OUT, CONFIG, TXL_MAX_TIME, NPROC, RESUME, GEN_SECONDS, ...);
# CONFIG defaults to lossless16_gpu.toml where nvidia-smi sees a GPU, else lossless16_cpu.toml (30 min).
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

DATA=../shared/data/audio/speech_commands_v002_test
[ -d "$DATA" ] || DATA=data/speech_commands_v002_test
if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; fi
if [ -z "${CONFIG:-}" ]; then
    if nvidia-smi -L >/dev/null 2>&1; then CONFIG=recipes/configs/lossless16_gpu.toml
    else CONFIG=recipes/configs/lossless16_cpu.toml; fi
fi
export CONFIG GEN_SECONDS=${GEN_SECONDS:-2} GEN_NUM=${GEN_NUM:-2}
command -v flac >/dev/null 2>&1 || apt-get install -y -qq flac >/dev/null 2>&1 || \
    echo "(the flac command is not installed: the FLAC column uses libFLAC through libsndfile)"
audio_recipe lossless16 "$DATA" --tokenizer pcm16 --split-by speaker --quiet -- "$@"
