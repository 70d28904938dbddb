#!/usr/bin/env bash
# tiny Shakespeare, character (byte) level, split as nanoGPT splits it: first 90% of the characters
# train, last 10% validation. prepare -> train -> validation nats and bits per character.
#
#   recipes/shakespeare_char.sh [FILE]   default: downloaded (`txl-audio download tinyshakespeare`, 1.1 MB)
#
# CPU default: recipes/configs/shakespeare_char_cpu.toml (200 s on 2 cores, target < 1.80 nats/char;
# nanoGPT's CPU config reaches 1.886 in 200 s here). GPU: CONFIG=recipes/configs/shakespeare_char_gpu.toml
# (nanoGPT: 1.47 on one A100 in about 3 minutes). More knobs in recipes/text_common.sh.
set -euo pipefail
source "$(dirname "$0")/text_common.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; else src=$(fetch_data tinyshakespeare); fi
need "$src" "the tiny Shakespeare text file (input.txt of char-rnn / nanoGPT)"
stage_done download
CONFIG="${CONFIG:-$ROOT/recipes/configs/shakespeare_char_cpu.toml}"
OUT="${OUT:-runs/shakespeare_char}"

txl prepare-text "$src" --out "$OUT/corpus" --format bytes --split-fractions 0.9,0.1,0
train_run "$CONFIG" "$OUT/run" "$OUT/corpus" "$@"
# shellcheck disable=SC2086
txl evaluate "$OUT/run" --corpus "$OUT/corpus" --split valid --stream --no-baselines ${EVAL:-}
"$PYTHON" - "$OUT/run/eval_valid/summary.json" <<'PY'
import json, math, sys
s = json.load(open(sys.argv[1]))
print(f"tiny Shakespeare valid: {s['nll_nats_per_token']:.4f} nats/char = {s['bits_per_token']:.4f} bits/char "
      f"({s['tokens']:,} characters, mem_len {s['mem_len']}, tgt_len {s['tgt_len']})")
PY
