#!/usr/bin/env bash
# SC09, the speech benchmark of the autoregressive waveform models (WaveNet, SampleRNN, SaShiMi, Mamba):
# download -> prepare -> train -> bits per sample on the test split -> the table beside the published
# numbers -> generate.
#   recipes/sc09.sh [MANIFEST] [--set section.key=value ...]
#
# Protocol (SaShiMi's, Goel et al. 2022, "It's Raw! Audio Generation with State-Space Models", which the
# Mamba paper, Gu & Dao 2023, follows; code: state-spaces/s4 src/dataloaders/audio.py SpeechCommands09):
# - data: the ten digit words (zero ... nine) of Speech Commands v0.02 (`txl-audio download sc09`:
#   the 2.4 GB archive, CC BY 4.0), 16 kHz; test = the clips listed in testing_list.txt, valid = those
#   in validation_list.txt, train = all other digit clips;
# - each clip min-max scaled onto [-1, 1], then 8-bit mu-law (prepare-audio --normalize minmax);
# - clips shorter than 1 s: SaShiMi pads them in the batch and masks the padding out of the loss, so
#   only each clip's own samples are scored. Here every clip is its own document at its own length
#   (nothing padded, nothing scored that is not audio) and is evaluated from an empty memory: the same
#   samples are scored. Differences left: their first sample is predicted from a start token (ours is
#   not predicted: 1 sample in 16,000), and their quantizer bins mu-law values into 256 equal bins
#   where ours rounds to 256 levels (torchaudio's convention): codes differ by at most one.
# Metric: bits per sample (NLL in bits averaged over the test split's predicted samples).
#
# Configs: recipes/configs/sc09_gpu.toml where nvidia-smi sees a GPU (5.2M parameters, like the published
# models' 4-6M), else sc09_cpu.toml (the tiny 2-core model, 30 minutes). CONFIG, OUT (runs/sc09),
# TXL_MAX_TIME, NPROC, RESUME, GEN_SECONDS (1), GEN_NUM (4): see recipes/audio_recipe.sh; TXL_DATA,
# STOP_AFTER: recipes/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/audio_recipe.sh

if [ $# -gt 0 ] && [ "$1" != "--set" ]; then DATA=$1; shift; else DATA=$(fetch_data sc09); fi
stage_done download
if [ -z "${CONFIG:-}" ]; then
    if nvidia-smi -L >/dev/null 2>&1; then CONFIG=recipes/configs/sc09_gpu.toml
    else CONFIG=recipes/configs/sc09_cpu.toml; fi
fi
export CONFIG GEN_SECONDS=${GEN_SECONDS:-1} OUT=${OUT:-runs/sc09}
audio_recipe sc09 "$DATA" --split-by manifest --normalize minmax -- "$@"
"$PYTHON" recipes/sc09_table.py "$OUT"
