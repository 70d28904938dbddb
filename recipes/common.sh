# Sourced by the recipes that run several txl-audio commands (the text recipes through text_common.sh,
# audio_baselines.sh): how to call txl-audio, and the common environment knobs.
#
#   CONFIG  the TOML config (each recipe has a CPU default; *_base.toml / *_gpu.toml for a GPU)
#   OUT     run folder (default runs/<recipe>)
#   SET     extra overrides, "section.key=value ...", e.g. SET="train.max_steps=20 model.n_layer=2"
#   RESUME  1: continue runs from their newest checkpoints instead of starting afresh
#   NPROC   N: train on N GPUs of this node with torchrun
#   TXL     the command to run (default: txl-audio on PATH, else this checkout's .venv/bin/txl-audio,
#           else python3 -m txl_audio where that python has the package; else the recipe says in one
#           line to install and activate the venv)
#   TXL_DATA      where `txl-audio download` keeps corpora (default ~/.cache/txl_audio)
#   STOP_AFTER    download: stop once the recipe's corpus is on disk (the other stages are skipped)

# OpenMP threads that sleep when idle instead of spinning: on a CPU shared with other work, torch's
# default (spinning) made a 2-thread training step ~7x slower here (OMP_WAIT_POLICY=ACTIVE to compare).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "${TXL:-}" ]]; then
    if command -v txl-audio >/dev/null 2>&1; then TXL=txl-audio
    elif [[ -x "$ROOT/.venv/bin/txl-audio" ]]; then TXL="$ROOT/.venv/bin/txl-audio"
    elif python3 -c "import txl_audio, tqdm, torch" >/dev/null 2>&1; then TXL="python3 -m txl_audio"
    else
        echo "error: txl-audio is not installed for this shell: run 'make install' in $ROOT, then" \
             "'source $ROOT/.venv/bin/activate' (or set TXL=/path/to/txl-audio)" >&2
        exit 1
    fi
fi
PYTHON="${PYTHON:-$(dirname "$(command -v "${TXL%% *}")")/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

# SET="a.b=1 c.d=2" -> (--set a.b=1 --set c.d=2)
SETS=()
for kv in ${SET:-}; do SETS+=(--set "$kv"); done

need() {  # need PATH WHAT: stop with a message naming the path when an input is missing
    if [[ ! -e "$1" ]]; then
        echo "error: $1 not found: pass $2 as the first argument" >&2
        exit 1
    fi
}

txl() {
    echo "+ txl-audio $*" >&2
    # shellcheck disable=SC2086  # TXL may be "python3 -m txl_audio"
    $TXL "$@"
}

# fetch_data NAME: the path of standard corpus or protocol NAME (`txl-audio download --list`), fetched,
# verified and unpacked into the cache on first use (TXL_DATA; nothing is fetched when it is there):
#   src=$(fetch_data sc09)
fetch_data() {
    echo "== download $1" >&2
    txl download "$1"
}

# stage_done NAME: stop here (exit 0) when STOP_AFTER=NAME
stage_done() {
    if [[ "${STOP_AFTER:-}" == "$1" ]]; then
        echo "(STOP_AFTER=$1: stopping after the $1 stage)" >&2
        exit 0
    fi
}

# train_run CONFIG RUN_DIR CORPUS [more train args]: a fresh run, or RESUME=1 to continue one;
# NPROC=N trains with torchrun on N processes (GPUs) of this node (train.batch_size stays global)
train_run() {
    local config="$1" run="$2" corpus="$3"
    shift 3
    # the recipe's own arguments last: they win over SET (e.g. an ablation's model.mem_len=0)
    local args=(train --config "$config" --out "$run" --set "data.corpus=\"$corpus\"" ${SETS[@]+"${SETS[@]}"} "$@")
    [[ "${RESUME:-0}" == 1 ]] && args+=(--resume)
    if [[ -n "${NPROC:-}" ]]; then
        echo "+ torchrun --nproc_per_node $NPROC -m txl_audio ${args[*]}" >&2
        torchrun --standalone --nproc_per_node "$NPROC" -m txl_audio "${args[@]}"
    else
        txl "${args[@]}"
    fi
}

# train_ablations CONFIG OUT STEPS [train args]: the Transformer-XL, its two ablations and the rotary
# variant into OUT/xl, OUT/no_memory (mem_len 0), OUT/absolute (absolute positions, no memory) and
# OUT/rotary (rotary positions, the same memory), from the corpus in OUT/corpus with equal compute:
# the same STEPS (and so the same batches) for all, no time limit
train_ablations() {
    local config="$1" out="$2" steps="$3"
    shift 3
    local common=(--set "train.max_steps=$steps" --set "train.max_time=0"
                  --set "train.eval_every=$((steps * 10))" --set "train.ckpt_every=$((steps * 10))" "$@")
    train_run "$config" "$out/xl" "$out/corpus" "${common[@]}"
    train_run "$config" "$out/no_memory" "$out/corpus" "${common[@]}" --set model.mem_len=0
    train_run "$config" "$out/absolute" "$out/corpus" "${common[@]}" --set model.mem_len=0 \
        --set model.attention=absolute
    train_run "$config" "$out/rotary" "$out/corpus" "${common[@]}" --set model.attention=rotary
}

# train_compressive CONFIG OUT STEPS [train args]: the compressive-memory variants at the Transformer-XL's
# attention cost, into OUT/cmem4 and OUT/cmem8: the config's memory M halved, plus a compressed memory
# of M/2 slots at rate 4 (reach M/2 + 4 x M/2) and at rate 8 (reach M/2 + 8 x M/2), so every query
# attends to as many positions as OUT/xl's; mean pooling (no parameters of its own); the same STEPS,
# batches and seed as train_ablations
train_compressive() {
    local config="$1" out="$2" steps="$3" mem half a prev="" sets=()
    shift 3
    for a in ${SET:-}; do sets+=("$a"); done
    for a in "$@"; do [[ "$prev" == --set ]] && sets+=("$a"); prev="$a"; done  # the recipe's --set too
    mem=$("$PYTHON" -c "import sys; from txl_audio.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).model.mem_len)" "$config" ${sets[@]+"${sets[@]}"})
    half=$((mem / 2))
    local common=(--set "train.max_steps=$steps" --set "train.max_time=0"
                  --set "train.eval_every=$((steps * 10))" --set "train.ckpt_every=$((steps * 10))" "$@")
    for rate in 4 8; do
        train_run "$config" "$out/cmem$rate" "$out/corpus" "${common[@]}" --set "model.mem_len=$half" \
            --set "model.cmem_len=$half" --set "model.cmem_ratio=$rate"
    done
}
