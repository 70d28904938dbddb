#!/usr/bin/env bash
# 16-bit LibriSpeech against FLAC: train-clean-100 -> held-out test-clean (valid: dev-clean), whole
# utterances, the int16 samples exactly (prepare-audio --tokenizer pcm16). The stages are
# recipes/lossless16.sh's (prepare, train the 16-bit head, evaluate beside FLAC -8 / LPC / xz, generate)
# on the `librispeech` protocol of `txl-audio download` (train-clean-100 6.4 GB + dev-clean 338 MB +
# test-clean 347 MB, CC BY 4.0).
#   recipes/librispeech16.sh [MANIFEST] [--set section.key=value ...]
# Environment: as recipes/lossless16.sh (CONFIG: lossless16_gpu.toml where nvidia-smi sees a GPU, else
# lossless16_cpu.toml; OUT default runs/librispeech16), TXL_DATA and STOP_AFTER (recipes/common.sh).
# On 2 CPU cores the test split alone (5.4 h of audio, 311M samples) takes many hours to evaluate: a GPU
# recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/common.sh

if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; else DATA=$(fetch_data librispeech); fi
stage_done download
export OUT=${OUT:-runs/librispeech16} PREPARE=${PREPARE:---split-by manifest}
exec bash recipes/lossless16.sh "$DATA" "$@"
