#!/usr/bin/env bash
# 16-bit speech, measured against FLAC: folder -> pcm16 corpus (the int16 samples exactly, speaker-disjoint
# splits) -> train a 16-bit head -> evaluate the held-out speakers in bits per 16-bit sample beside
# FLAC -8, the backward-adaptive LPC column and xz -> generate 16-bit WAVs.
#   recipes/lossless16.sh [DATA_DIR] [--set section.key=value ...]
# Without DATA_DIR it downloads the Speech Commands v0.02 test set (113 MB, CC BY 4.0; the clips the
# published 16-bit numbers were measured on); the bundled sample: recipes/lossless16.sh
# data/speech_commands_v002_test; LibriSpeech: recipes/librispeech16.sh. PREPARE: the prepare-audio
# split options (default --split-by speaker; --split-by manifest for a manifest with a split). The flac
# command is installed (apt-get) when missing and allowed; without it the FLAC column comes from libFLAC
# through libsndfile (same encoder, level 8).
# Environment: as recipes/audio_recipe.sh (OUT, CONFIG, TXL_MAX_TIME, NPROC, RESUME, GEN_SECONDS, ...);
# CONFIG defaults to lossless16_gpu.toml where nvidia-smi sees a GPU, else lossless16_cpu.toml (30 min).
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; else DATA=$(fetch_data speech-commands-test); fi
stage_done download
read -r -a PREPARE_ARGS <<< "${PREPARE:---split-by speaker}"
if [ -z "${CONFIG:-}" ]; then
    if nvidia-smi -L >/dev/null 2>&1; then CONFIG=recipes/configs/lossless16_gpu.toml
    else CONFIG=recipes/configs/lossless16_cpu.toml; fi
fi
export CONFIG GEN_SECONDS=${GEN_SECONDS:-2} GEN_NUM=${GEN_NUM:-2}
command -v flac >/dev/null 2>&1 || apt-get install -y -qq flac >/dev/null 2>&1 || \
    echo "(the flac command is not installed: the FLAC column uses libFLAC through libsndfile)"
audio_recipe lossless16 "$DATA" --tokenizer pcm16 "${PREPARE_ARGS[@]}" --quiet -- "$@"
