#!/usr/bin/env bash
# The named models shipped in the package (txl_audio/models/): speech16 (16-bit lossless speech, the
# default of `txl-audio compress`) and speech8 (8-bit mu-law). For each: prepare the speech folder
# (speaker-disjoint train / valid / test), train its config (recipes/configs/NAME.toml, 30 minutes on
# one CPU thread), evaluate the held-out speakers, and export the weights, config and tokenizer to
# txl_audio/models/NAME.pt (EXPORT=0: only to the run folder), printing the model id and its numbers.
#   recipes/speech_models.sh [DATA_DIR]
# Without DATA_DIR it downloads the Speech Commands v0.02 test set (113 MB, CC BY 4.0), the data the
# shipped models were trained on. MODELS="speech16" trains one; OUT (default runs/speech_models);
# TXL_MAX_TIME=SECONDS shortens each training; RESUME=1 continues runs. The two trainings are
# independent: run MODELS=speech16 and MODELS=speech8 side by side on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/common.sh

if [ $# -gt 0 ]; then DATA=$1; shift; else DATA=$(fetch_data speech-commands-test); fi
stage_done download
OUT=${OUT:-runs/speech_models}
for name in ${MODELS:-speech16 speech8}; do
    case $name in speech16) tok=pcm16 ;; speech8) tok=mulaw8 ;; *) echo "error: unknown model $name" >&2; exit 1 ;; esac
    dir=$OUT/$name
    if [ ! -f "$dir/corpus/meta.json" ]; then
        txl prepare-audio "$DATA" --out "$dir/corpus" --tokenizer "$tok" --split-by speaker --quiet
    fi
    stage_done prepare
    train_run "recipes/configs/$name.toml" "$dir/run" "$dir/corpus" \
        ${TXL_MAX_TIME:+--set "train.max_time=$TXL_MAX_TIME"} --no-progress
    txl evaluate "$dir/run" --corpus "$dir/corpus" --split test --out "$dir/eval" --no-progress
    dest=$dir/$name.pt
    [ "${EXPORT:-1}" = 1 ] && dest=txl_audio/models/$name.pt
    "$PYTHON" - "$dir" "$dest" "$name" <<'PY'
import json, sys
from pathlib import Path
from txl_audio.checkpoint import resolve_checkpoint
from txl_audio.models import export
run, dest, name = sys.argv[1:]
s = json.loads((Path(run) / "eval" / "summary.json").read_text())
meta = export(resolve_checkpoint(Path(run) / "run"), dest, name=name, recipe="recipes/speech_models.sh",
              test_metric=s["metric"], test_bits=round(s["bits_per_token"], 4), test_files=s["files"])
print(json.dumps(meta, indent=1))
PY
done
