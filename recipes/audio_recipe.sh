#!/usr/bin/env bash
# Shared stages of the audio recipes (sourced by speech_commands.sh, read_speech.sh, sc09.sh, lossless16.sh):
#   audio_recipe NAME DATA PREPARE_ARGS... -- TRAIN_SETS...
# prepare DATA (a folder or a manifest) -> runs/NAME/corpus, train CONFIG -> runs/NAME, evaluate the test
# split, generate. The recipes fetch DATA first (fetch_data in recipes/common.sh) unless given one.
#
# Environment (all optional):
#   OUT=runs/NAME   CONFIG (default audio_small.toml when nvidia-smi sees a GPU, else tiny_cpu.toml)
#   TXL_MAX_TIME    seconds of training (default: the config's train.max_time)
#   NPROC=N         train with torchrun on N processes (GPUs) of this node
#   RESUME=1        continue the run in OUT       GEN_SECONDS=4   GEN_NUM=4
#   TXL, TXL_DATA, STOP_AFTER: see recipes/common.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

audio_recipe() {
    local name=$1 data=$2
    shift 2
    local prepare=() sets=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do prepare+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    sets=("$@")

    if [ ! -e "$data" ]; then
        echo "error: data folder $data not found; pass the folder (or manifest) as the first argument" >&2
        exit 1
    fi
    local out=${OUT:-runs/$name}
    local config=${CONFIG:-}
    if [ -z "$config" ]; then
        if nvidia-smi -L >/dev/null 2>&1; then config=recipes/configs/audio_small.toml
        else config=recipes/configs/tiny_cpu.toml; fi
    fi
    local txl=$TXL  # recipes/common.sh: the venv's txl-audio when it is not on PATH
    local train_cmd=($txl train)
    if [ -n "${NPROC:-}" ]; then
        train_cmd=(torchrun --standalone --nproc_per_node "$NPROC" -m txl_audio train)
    fi
    if [ -n "${TXL_MAX_TIME:-}" ]; then sets+=(--set "train.max_time=$TXL_MAX_TIME"); fi
    local resume=()
    if [ "${RESUME:-0}" = 1 ]; then resume=(--resume); fi

    echo "== 1/4 prepare $data -> $out/corpus"
    if [ "${RESUME:-0}" = 1 ] && [ -f "$out/corpus/meta.json" ]; then
        echo "(resuming: keeping $out/corpus)"
    else
        $txl prepare-audio "$data" --out "$out/corpus" ${prepare[@]+"${prepare[@]}"}
    fi
    echo "== 2/4 train $config -> $out"
    "${train_cmd[@]}" --config "$config" --set data.corpus="$out/corpus" ${sets[@]+"${sets[@]}"} \
        --out "$out" ${resume[@]+"${resume[@]}"}
    echo "== 3/4 evaluate the test split"
    $txl evaluate "$out" --corpus "$out/corpus" --split test --out "$out/eval_test"
    echo "== 4/4 generate"
    $txl generate "$out" --out "$out/samples" --seconds "${GEN_SECONDS:-4}" --num "${GEN_NUM:-4}"
    echo "done: $out"
}
