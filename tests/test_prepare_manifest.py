"""prepare-audio with an explicit split (a CSV manifest's split column, --split-by manifest), a speaker
column, and the per-file min-max scaling of the SC09 protocol (--normalize minmax)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from txl_audio.cli import main
from txl_audio.data import Corpus
from txl_audio.prepare import PrepareError, minmax_scale, prepare_audio
from txl_audio.tokenizers import MuLawTokenizer


def _clips(folder, n=6, seconds=0.05, gain=0.1):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"c{i}.wav"
        sf.write(p, (gain * rng.uniform(-1, 1, int(16_000 * seconds)) + 0.01).astype(np.float32), 16_000,
                 subtype="PCM_16")
        paths.append(p)
    return paths


def _csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_the_split_column_is_used_file_for_file(tmp_path):
    clips = _clips(tmp_path)
    splits = ["train", "train", "valid", "test", "train", "test"]
    man = _csv(tmp_path / "m.csv", ("path", "split", "speaker"),
               [(p.name, s, f"spk{i % 2}") for i, (p, s) in enumerate(zip(clips, splits))])  # relative paths
    report = prepare_audio(man, tmp_path / "corpus", split_by="manifest", workers=1, progress=False)
    corpus = Corpus(tmp_path / "corpus")
    for s in ("train", "valid", "test"):
        want = {str(p) for p, t in zip(clips, splits) if t == s}
        assert {f["path"] for f in corpus.files(s)} == want
        assert report.splits[s]["files"] == len(want)
    assert {f["speaker"] for f in corpus.files("train")} == {"spk0", "spk1"}  # the column, not the regex
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    assert meta["source"]["split_by"] == "manifest"


def test_a_split_column_needs_split_by_manifest_and_manifest_needs_the_column(tmp_path):
    clips = _clips(tmp_path, 3)
    with_split = _csv(tmp_path / "a.csv", ("path", "split"), [(p.name, "train") for p in clips])
    with pytest.raises(PrepareError, match="--split-by manifest"):
        prepare_audio(with_split, tmp_path / "c1", workers=1, progress=False)
    without = _csv(tmp_path / "b.csv", ("path",), [(p.name,) for p in clips])
    with pytest.raises(PrepareError, match="has no split"):
        prepare_audio(without, tmp_path / "c2", split_by="manifest", workers=1, progress=False)
    bad = _csv(tmp_path / "c.csv", ("path", "split"), [(clips[0].name, "validation")])
    with pytest.raises(PrepareError, match=r"line 2: split 'validation' is not one of train, valid, test"):
        prepare_audio(bad, tmp_path / "c3", split_by="manifest", workers=1, progress=False)
    assert not any((tmp_path / c).exists() for c in ("c1", "c2", "c3"))


def test_a_speaker_column_without_a_split_keeps_speakers_apart(tmp_path):
    clips = _clips(tmp_path, 6)
    man = _csv(tmp_path / "m.csv", ("path", "speaker"), [(p.name, f"s{i // 2}") for i, p in enumerate(clips)])
    prepare_audio(man, tmp_path / "corpus", valid=0.3, test=0.3, workers=1, progress=False)
    corpus = Corpus(tmp_path / "corpus")
    owners = {}
    for s in corpus.splits:
        for f in corpus.files(s):
            owners.setdefault(f["speaker"], set()).add(s)
    assert set(owners) == {"s0", "s1", "s2"} and all(len(v) == 1 for v in owners.values())


def test_minmax_scales_each_file_onto_the_full_range_before_mu_law(tmp_path):
    clips = _clips(tmp_path, 2, gain=0.05)  # quiet, with a DC offset
    prepare_audio(clips, tmp_path / "corpus", split_by="file", valid=0, test=0, normalize="minmax", workers=1,
                  progress=False)
    corpus = Corpus(tmp_path / "corpus")
    tok = MuLawTokenizer(8)
    tokens = corpus.tokens("train")
    for f in corpus.files("train"):
        codes = tokens[f["offset"]:f["offset"] + f["length"]]
        wave, _ = sf.read(f["path"], dtype="float32")
        want = tok.encode(minmax_scale(wave))
        assert np.array_equal(codes, want)
        assert codes.min() == 0 and codes.max() == 255  # the file's min and max are -1 and ~1
    w = np.array([0.1, 0.2, 0.3])
    assert np.allclose(minmax_scale(w), [-1.0, 0.0, 1.0], atol=1e-4)


def test_prepare_audio_command_takes_split_by_manifest_and_normalize(tmp_path, capsys):
    clips = _clips(tmp_path, 3)
    rows = [(p.name, s) for p, s in zip(clips, ("train", "valid", "test"))]
    man = _csv(tmp_path / "m.csv", ("path", "split"), rows)
    rc = main(["prepare-audio", str(man), "--out", str(tmp_path / "corpus"), "--split-by", "manifest",
               "--normalize", "minmax", "--workers", "1", "--quiet"])
    assert rc == 0 and "train 1 files" in capsys.readouterr().out
