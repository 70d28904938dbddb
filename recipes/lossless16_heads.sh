#!/usr/bin/env bash
# Which 16-bit output distribution to use: each head, with and without the linear-prediction prior,
# trained for the same time on the same pcm16 corpus, then evaluated on the held-out speakers beside
# FLAC -8, the backward-adaptive LPC column and xz, with each head's difference from FLAC and its 95%
# bootstrap interval over the paired files (recipes/heads_table.py).
#   recipes/lossless16_heads.sh [DATA_DIR]     default: the Speech Commands v0.02 test set, downloaded
#                                              (113 MB; the clips of the published table)
# env: SECONDS_EACH (900: training time per variant), PARALLEL (2: variants trained at once, one CPU
#      thread each, so every variant gets the same share of the machine), VARIANTS (all below),
#      OUT (runs/lossless16_heads), CONFIG (lossless16_cpu.toml), SET / TXL as in recipes/common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [[ $# -gt 0 ]]; then src="$1"; else src=$(fetch_data speech-commands-test); fi
need "$src" "an audio folder"
stage_done download
OUT="${OUT:-runs/lossless16_heads}"
CONFIG="${CONFIG:-$ROOT/recipes/configs/lossless16_cpu.toml}"
SECONDS_EACH="${SECONDS_EACH:-900}"
PARALLEL="${PARALLEL:-2}"
declare -A HEADS=(
    [dual]="model.head=dual_softmax model.lp_order=0"
    [dual_lp]="model.head=dual_softmax model.lp_order=32 model.lp_coefficients=network"
    [dual_lp_fitted]="model.head=dual_softmax model.lp_order=32 model.lp_coefficients=fitted"
    [mixture]="model.head=logistic_mixture model.lp_order=0"
    [mixture_lp]="model.head=logistic_mixture model.lp_order=32 model.lp_coefficients=network"
    [mixture_lp_fitted]="model.head=logistic_mixture model.lp_order=32 model.lp_coefficients=fitted"
    [softmax]="model.head=softmax model.lp_order=0 model.tie_weights=true"
)
VARIANTS="${VARIANTS:-dual dual_lp dual_lp_fitted mixture mixture_lp mixture_lp_fitted softmax}"
command -v flac >/dev/null 2>&1 || apt-get install -y -qq flac >/dev/null 2>&1 || true

if [[ ! -f "$OUT/corpus/meta.json" ]]; then
    txl prepare-audio "$src" --out "$OUT/corpus" --tokenizer pcm16 --split-by speaker --quiet
fi
run_one() {  # train one variant for SECONDS_EACH on one thread, then evaluate it
    local v="$1" sets=()
    for kv in ${HEADS[$v]}; do sets+=(--set "$kv"); done
    train_run "$CONFIG" "$OUT/$v" "$OUT/corpus" --no-progress --set "train.max_time=$SECONDS_EACH" \
        --set train.threads=1 "${sets[@]}" > "$OUT/$v.train.log" 2>&1
    txl evaluate "$OUT/$v" --corpus "$OUT/corpus" --split test --no-progress --threads 1 > "$OUT/$v.eval.log" 2>&1
}
mkdir -p "$OUT"
running=0
for v in $VARIANTS; do
    if [[ -f "$OUT/$v/eval_test/summary.json" ]]; then echo "(have $v)"; continue; fi
    echo "== $v: ${HEADS[$v]} (${SECONDS_EACH} s)"
    run_one "$v" &
    running=$((running + 1))
    if (( running >= PARALLEL )); then wait -n; running=$((running - 1)); fi
done
wait
"$PYTHON" "$ROOT/recipes/heads_table.py" "$OUT" $VARIANTS
