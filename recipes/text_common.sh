# Sourced by the text recipes (ptb.sh, wikitext2.sh, wikitext103.sh, shakespeare_char.sh, enwik8.sh,
# text8.sh, text_baselines.sh): how to call txl-audio, and the common environment knobs. Each recipe
# takes its corpus as the first argument or, without one, downloads it (`txl-audio download NAME`, into
# TXL_DATA, default ~/.cache/txl_audio; nothing is fetched when it is already there).
#
#   OUT     run folder (corpus/ and run/ inside; default runs/<recipe>)
#   EVAL    extra `txl-audio evaluate` arguments, e.g. EVAL="--mem-len 1600 --clamp-len 1000"
#   CONFIG, SET, RESUME, NPROC, TXL, TXL_DATA, STOP_AFTER: see recipes/common.sh
# Arguments after a recipe's input go to `txl-audio train`, e.g. recipes/ptb.sh DIR --set train.lr=1e-3

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# hutter_recipe FORMAT SRC [train args]: enwik8 or text8 (the file, or the distributed .zip that holds
# one file named FORMAT) -> corpus with the standard 90M/5M/5M split -> train ($CONFIG into $OUT/run)
# -> test bits per character as one stream, with $EVAL's evaluation lengths
hutter_recipe() {
    local format="$1" src="$2"
    shift 2
    if [[ "$src" == *.zip ]]; then
        mkdir -p "$OUT"
        "$PYTHON" -m zipfile -e "$src" "$OUT/"
        src="$OUT/$format"
    fi
    txl prepare-text "$src" --out "$OUT/corpus" --format "$format"
    train_run "$CONFIG" "$OUT/run" "$OUT/corpus" "$@"
    # shellcheck disable=SC2086
    txl evaluate "$OUT/run" --corpus "$OUT/corpus" --split test --stream --no-baselines ${EVAL}
}
