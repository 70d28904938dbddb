#!/usr/bin/env bash
# Quickstart (`make demo`): the bundled speech sample -> token corpus -> a tiny Transformer-XL trained for
# about 3 minutes on the CPU -> bits per sample on the held-out (test) split next to xz on the same tokens
# -> 2 seconds of generated audio (WAV + spectrogram PNG). Everything lands in runs/demo/.
#
# Environment (all optional):
#   OUT=runs/demo            run directory (corpus/, config.toml, metrics.jsonl, curves.png, checkpoints,
#                            eval_test/, samples/)
#   DATA=data                audio folder to prepare
#   CONFIG=recipes/configs/tiny_cpu.toml
#   TXL_MAX_TIME=180         seconds of training
#   GEN_SECONDS=2            seconds of audio to generate
#   QUICK=1                  a seconds-long smoke run (a minute model, a few steps): checks the plumbing only
#   RESUME=1                 continue the run in OUT instead of starting it again
#   TXL_SET="k=v ..."        more config overrides for training (e.g. train.compile=false)
#   TXL="python -m txl_audio"  how to call the command (default: txl-audio on PATH, else .venv/bin/txl-audio)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/demo}
DATA=${DATA:-data}
CONFIG=${CONFIG:-recipes/configs/tiny_cpu.toml}
MAX_TIME=${TXL_MAX_TIME:-180}
GEN_SECONDS=${GEN_SECONDS:-2}
# TXL: txl-audio on PATH, else this checkout's .venv/bin/txl-audio, else a one-line hint (recipes/common.sh)
source recipes/common.sh
# OpenMP threads that sleep when idle instead of spinning (as recipes/common.sh): on a CPU shared with
# other work, spinning threads made steps several times slower
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
SETS=()
EVAL_ARGS=()
for kv in ${TXL_SET:-}; do SETS+=(--set "$kv"); done
if [ "${QUICK:-0}" = 1 ]; then
    EVAL_ARGS=(--threads 1)  # a minute model: a second thread only waits
    SETS+=(--set model.n_layer=1 --set model.d_model=32 --set model.n_head=2 --set model.d_head=16
          --set model.d_inner=64 --set model.tgt_len=32 --set model.mem_len=32 --set train.batch_size=2
          --set train.max_steps=3 --set train.eval_every=3 --set train.ckpt_every=3 --set train.log_every=2
          --set data.max_eval_tokens=1024)
    GEN_SECONDS=${QUICK_GEN_SECONDS:-0.05}
fi

echo "== 1/4 prepare $DATA -> $OUT/corpus"
# speakers: Speech Commands ids, and the LJ reader as one speaker. The sample has only 36 speakers, so
# the split fractions are hash thresholds that give the held-out test split 6 speakers (91 s of audio;
# the default 5% gives it one speaker, 9 s) and valid 2 speakers (22 s), leaving 28 for training
$TXL prepare-audio "$DATA" --out "$OUT/corpus" --quiet --valid 0.05 --test 0.2 \
    --speaker-regex '[0-9a-f]{8}(?=_nohash_)|LJ(?=\d{3}-)'

echo "== 2/4 train $CONFIG for at most ${MAX_TIME} s -> $OUT"
if [ "${RESUME:-0}" = 1 ]; then
    RESUME_FLAG=(--resume)
else
    RESUME_FLAG=()
    # a fresh demo: clear what an earlier demo run left (the corpus was just rebuilt identically)
    rm -rf "$OUT"/ckpt_*.pt "$OUT/best.pt" "$OUT/metrics.jsonl" "$OUT/curves.png" "$OUT/config.toml" \
           "$OUT/eval_test" "$OUT/samples" "$OUT/tensorboard"
fi
$TXL train --config "$CONFIG" --set data.corpus="$OUT/corpus" --set train.max_time="$MAX_TIME" \
    ${SETS[@]+"${SETS[@]}"} --out "$OUT" ${RESUME_FLAG[@]+"${RESUME_FLAG[@]}"}

echo "== 3/4 evaluate on the held-out test split (bits per sample; xz and bzip2 on the same tokens)"
$TXL evaluate "$OUT" --corpus "$OUT/corpus" --split test --out "$OUT/eval_test" --no-progress \
    ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"}

echo "== 4/4 generate ${GEN_SECONDS} s of audio -> $OUT/samples"
$TXL generate "$OUT" --out "$OUT/samples" --seconds "$GEN_SECONDS" --num 1 --batch-size 1 --seed 0

echo "done: $OUT (curves.png, eval_test/summary.json, samples/)"
