"""Rebuild the bundled sample in data/ from the full corpora (deterministic; --source FOLDER).

    python data/make_sample.py --source FOLDER      # FOLDER/speech_commands_v002_test, .../ljspeech_sentences_read
    python data/make_sample.py --source DIR --out DIR

Selection (no randomness, so the same source always gives the same sample):
- Speech Commands v0.02 test split: the speakers (the id before ``_nohash_``) of the 11 spoken labels
  sorted, every ``--speaker-step``-th speaker kept with all of that speaker's clips, so the sample
  splits cleanly by speaker. ``_silence_`` (background noise, no speaker) is left out.
- LJ Speech sentences read aloud: every ``--lj-step``-th clip in name order, with its transcript line.
Files are copied byte for byte (16 kHz mono 16-bit FLAC), along with each corpus' LICENSE.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SC = "speech_commands_v002_test"
LJ = "ljspeech_sentences_read"
# the speaker id: 8 hex digits before _nohash_ (``_unknown_`` files are WORD_SPEAKER_nohash_N.wav.flac)
SPEAKER = re.compile(r"(?P<speaker>[0-9a-f]{8})_nohash_")


def select_speech_commands(src: Path, speaker_step: int) -> list[Path]:
    by_speaker: dict[str, list[Path]] = defaultdict(list)
    for label in sorted(p for p in src.iterdir() if p.is_dir() and p.name != "_silence_"):
        for f in sorted(label.glob("*.flac")):
            m = SPEAKER.search(f.name)
            if m:
                by_speaker[m["speaker"]].append(f)
    speakers = sorted(by_speaker)[::speaker_step]
    return sorted(f for s in speakers for f in by_speaker[s])


def select_lj(src: Path, step: int) -> list[Path]:
    return sorted(src.glob("*.flac"))[::step]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="the folder with the full corpora")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--speaker-step", type=int, default=7)
    ap.add_argument("--lj-step", type=int, default=14)
    args = ap.parse_args()

    sc_files = select_speech_commands(args.source / SC, args.speaker_step)
    lj_files = select_lj(args.source / LJ, args.lj_step)
    for corpus, files in ((SC, sc_files), (LJ, lj_files)):
        out = args.out / corpus
        if out.exists():
            shutil.rmtree(out)
        for f in files:
            dest = out / f.relative_to(args.source / corpus)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        shutil.copyfile(args.source / corpus / "LICENSE", out / "LICENSE")

    keep = {f.stem for f in lj_files}
    lines = (args.source / LJ / "transcript.csv").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.split("|", 1)[0] in keep]
    assert len(kept) == len(keep), "every selected LJ clip needs its transcript line"
    (args.out / LJ / "transcript.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")

    try:
        import soundfile as sf
    except ImportError:  # counts only
        sf = None
    for corpus, files in ((SC, sc_files), (LJ, lj_files)):
        size = sum(f.stat().st_size for f in files) / 1e6
        secs = sum(sf.info(str(f)).duration for f in files) if sf else float("nan")
        extra = ""
        if corpus == SC:
            speakers = {SPEAKER.search(f.name)["speaker"] for f in files}
            labels = {f.parent.name for f in files}
            extra = f", {len(speakers)} speakers, {len(labels)} labels"
        print(f"{corpus}: {len(files)} clips, {secs / 60:.2f} min, {size:.2f} MB{extra}")


if __name__ == "__main__":
    main()
