"""prepare-audio / prepare-text: splits, determinism, the skip report, --strict, text conventions."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from txl_audio.audio import load_audio
from txl_audio.cli import main
from txl_audio.data import Corpus
from txl_audio.prepare import PrepareError, assign_splits, prepare_audio, prepare_text
from txl_audio.tokenizers import MuLawTokenizer, WordTokenizer


def tone(n, sr=16_000, f=440.0, amp=0.5, seed=0):
    t = np.arange(n) / sr
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return (amp * np.sin(2 * np.pi * f * t) + noise).astype(np.float32)


def speaker_folder(root: Path, n_speakers=30, per_speaker=3, n=200) -> Path:
    for s in range(n_speakers):
        spk = f"{s * 7919:08x}"
        for i in range(per_speaker):
            sub = root / ("yes" if i % 2 else "no")
            sub.mkdir(parents=True, exist_ok=True)
            sf.write(sub / f"{spk}_nohash_{i}.wav", tone(n + s, seed=s * 10 + i), 16_000, subtype="PCM_16")
    return root


@pytest.fixture
def messy(tmp_path) -> Path:
    """Good files (one plain, an 8-bit WAV, a 44.1 kHz stereo float WAV) and bad ones."""
    d = tmp_path / "messy"
    d.mkdir()
    sf.write(d / "aaaaaaaa_nohash_0.flac", tone(3000), 16_000, subtype="PCM_16")
    sf.write(d / "bbbbbbbb_nohash_0.wav", tone(1600, f=300), 16_000, subtype="PCM_U8")
    st = np.stack([tone(44_100, 44_100, 220), tone(44_100, 44_100, 330, seed=1)], axis=1) * 0.8
    sf.write(d / "cccccccc_nohash_0.wav", st, 44_100, subtype="FLOAT")
    sf.write(d / "corrupt.flac", tone(8000), 16_000, subtype="PCM_16")
    raw = (d / "corrupt.flac").read_bytes()
    (d / "corrupt.flac").write_bytes(raw[:60] + bytes(b ^ 0x5A for b in raw[60:]))
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("this is not audio\n" * 20)
    bad = tone(800)
    bad[100] = np.nan
    sf.write(d / "nan.wav", bad, 16_000, subtype="FLOAT")
    return d


GOOD = ["aaaaaaaa_nohash_0.flac", "bbbbbbbb_nohash_0.wav", "cccccccc_nohash_0.wav"]
BAD = ["corrupt.flac", "empty.wav", "nan.wav", "notes.wav"]


def test_messy_folder_good_files_prepared_bad_files_reported(messy, tmp_path):
    out = tmp_path / "corpus"
    rep = prepare_audio([messy], out, valid=0.0, test=0.0, workers=1, progress=False)
    corpus = Corpus(out)
    tok = MuLawTokenizer(8)
    entries = {Path(f["path"]).name: f for s in corpus.splits for f in corpus.files(s)}
    assert sorted(entries) == GOOD
    for name in GOOD:
        e = entries[name]
        want = tok.encode(load_audio(messy / name))
        got = np.asarray(corpus.tokens(e["split"])[e["offset"]:e["offset"] + e["length"]])
        assert np.array_equal(got, want), name
    assert entries["cccccccc_nohash_0.wav"]["length"] == 16_000  # 1 s at 44.1 kHz -> 16,000 tokens
    assert entries["bbbbbbbb_nohash_0.wav"]["speaker"] == "bbbbbbbb"
    assert rep.conversions == {"resampled": 1, "downmixed": 1, "converted_bit_depth": 2}
    rows = (out / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "path\treason"
    reasons = {Path(r.split("\t")[0]).name: r.split("\t")[1] for r in rows[1:]}
    assert sorted(reasons) == BAD
    assert "empty" in reasons["empty.wav"]
    assert "not an audio file" in reasons["notes.wav"]
    assert "NaN" in reasons["nan.wav"]
    assert "corrupt" in reasons["corrupt.flac"] or "unreadable" in reasons["corrupt.flac"]
    assert "skipped 4" in rep.summary() and "1 resampled" in rep.summary()
    assert corpus.meta["conversions"] == rep.conversions and corpus.meta["skipped"] == 4


def test_strict_stops_at_first_bad_file_and_writes_nothing(messy, tmp_path, capsys):
    out = tmp_path / "corpus"
    code = main(["prepare-audio", str(messy), "--out", str(out), "--strict", "--workers", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "--strict" in err and "corrupt.flac" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy"]  # no DIR, no temporary folder


def test_no_usable_file_is_an_error(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.wav").write_bytes(b"")
    (d / "b.wav").write_text("text")
    assert main(["prepare-audio", str(d), "--out", str(tmp_path / "c"), "--quiet", "--workers", "1"]) == 1
    assert "none of the 2 input file(s) could be used" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_splits_are_speaker_disjoint_and_deterministic(tmp_path):
    src = speaker_folder(tmp_path / "src")
    a = prepare_audio([src], tmp_path / "a", valid=0.1, test=0.1, workers=1, progress=False)
    b = prepare_audio([src], tmp_path / "b", valid=0.1, test=0.1, workers=2, progress=False)
    assert a.splits == b.splits
    for name in ("meta.json", "train.bin", "valid.bin", "test.bin", "skipped.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    corpus = Corpus(tmp_path / "a")
    split_of: dict[str, set] = {}
    for s in corpus.splits:
        for f in corpus.files(s):
            split_of.setdefault(f["speaker"], set()).add(s)
    assert len(split_of) == 30
    assert all(len(v) == 1 for v in split_of.values())
    assert all(corpus.meta["splits"][s]["files"] > 0 for s in ("train", "valid", "test"))
    # file-level splitting puts one speaker's files in several splits
    prepare_audio([src], tmp_path / "f", split_by="file", valid=0.3, test=0.3, workers=1, progress=False)
    by_file = Corpus(tmp_path / "f")
    spread = {}
    for s in by_file.splits:
        for f in by_file.files(s):
            spread.setdefault(f["speaker"], set()).add(s)
    assert any(len(v) > 1 for v in spread.values())


def test_assign_splits_few_speakers():
    for n in range(1, 8):
        keys = [f"spk{i}" for i in range(n)]
        split, _ = assign_splits(keys, 0.05, 0.05)
        got = set(split.values())
        assert "train" in got
        if n >= 3:
            assert got == {"train", "valid", "test"}
        assert split == assign_splits(list(reversed(keys)), 0.05, 0.05)[0]  # order does not matter
    split, warnings = assign_splits(["only"], 0.05, 0.05)
    assert split == {"only": "train"} and any("valid split is empty" in w for w in warnings)
    with pytest.raises(PrepareError):
        assign_splits(["a"], 0.6, 0.5)


def test_manifests_and_replacing_an_existing_corpus(tmp_path):
    src = speaker_folder(tmp_path / "src", n_speakers=4, per_speaker=2)
    files = sorted(src.rglob("*.wav"))
    listed = "\n".join(str(f.relative_to(tmp_path)) for f in files[:3])  # relative to the manifest
    (tmp_path / "list.txt").write_text("# my files\n" + listed)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([[str(p), "x"] for p in files[3:5]])
    out = tmp_path / "c"
    prepare_audio([src], out, workers=1, progress=False)
    assert sum(Corpus(out).meta["splits"][s]["files"] for s in ("train", "valid", "test")) == 8
    rep = prepare_audio([tmp_path / "list.txt", tmp_path / "list.csv"], out, workers=1, progress=False)
    c = Corpus(out)
    got = sorted(f["path"] for s in c.splits for f in c.files(s))
    assert got == sorted(str(p.absolute()) for p in files[:5])
    assert sum(v["files"] for v in rep.splits.values()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "list.csv", "list.txt", "src"]


def test_speech_commands_sample_is_speaker_disjoint(shared_data, tmp_path):
    folder = shared_data / "audio" / "speech_commands_v002_test"
    files = sorted(folder.rglob("*.flac"))[::40]  # ~120 files over all words
    (tmp_path / "m.txt").write_text("\n".join(str(f) for f in files))
    prepare_audio([tmp_path / "m.txt"], tmp_path / "c", valid=0.2, test=0.2, workers=1, progress=False)
    c = Corpus(tmp_path / "c")
    seen: dict[str, str] = {}
    for s in c.splits:
        for f in c.files(s):
            assert seen.setdefault(f["speaker"], s) == s
    named = [spk for spk in seen if re.fullmatch(r"[0-9a-f]{8}", spk)]  # ids taken from SPK_nohash_N
    silence = [str(f.with_suffix("")) for f in files if f.parent.name == "_silence_"]
    assert len(named) > 50 and set(seen) == set(named) | set(silence)  # no-speaker files stand alone


# ------------------------------------------------------------------------------------- text


def test_words_vocabulary_from_train_only(tmp_path):
    (tmp_path / "t.train.txt").write_text("the cat sat\nthe dog\n")
    (tmp_path / "t.valid.txt").write_text("the bird sat\n")
    (tmp_path / "t.test.txt").write_text("\ncat\n")
    rep = prepare_text(tmp_path / "c", format="words", input=tmp_path)
    c = Corpus(tmp_path / "c")
    tok = c.tokenizer
    assert isinstance(tok, WordTokenizer)
    assert tok.itos == ["<unk>", "<eos>", "the", "cat", "dog", "sat"]
    assert np.asarray(c.tokens("valid")).tolist() == [2, 0, 5, 1]  # bird -> <unk>
    assert np.asarray(c.tokens("test")).tolist() == [1, 3, 1]  # an empty line is just <eos>
    assert rep.splits["train"]["tokens"] == 7


def test_ptb_matches_the_standard_counts(shared_data, tmp_path):
    prepare_text(tmp_path / "ptb", format="words", input=shared_data / "text" / "ptb")
    c = Corpus(tmp_path / "ptb")
    assert c.tokenizer.vocab_size == 10_000
    assert [c.n_tokens(s) for s in ("train", "valid", "test")] == [929_589, 73_760, 82_430]
    first = (shared_data / "text" / "ptb" / "ptb.valid.txt").read_text().split("\n")[0]
    n = len(first.split()) + 1
    assert c.tokenizer.decode(np.asarray(c.tokens("valid")[:n])).split() == first.split()


def test_bytes_fraction_split_like_nanogpt(shared_data, tmp_path):
    src = shared_data / "text" / "tinyshakespeare.txt"
    code = main(["prepare-text", str(src), "--format", "bytes", "--split-fractions", "0.9,0.1,0",
                 "--out", str(tmp_path / "c")])
    assert code == 0
    c = Corpus(tmp_path / "c")
    data = src.read_bytes()
    n = int(len(data) * 0.9)
    assert [c.n_tokens(s) for s in ("train", "valid", "test")] == [1_003_854, 111_540, 0]
    assert bytes(c.tokens("train")) == data[:n] and bytes(c.tokens("valid")) == data[n:]


@pytest.mark.parametrize("fmt", ["enwik8", "text8"])
def test_enwik8_text8_small_file_proportional(tmp_path, fmt):
    text = "".join(f"line {i} caf\u00e9 \u00fcber\n" for i in range(2000))
    (tmp_path / "f").write_text(text, encoding="utf-8")
    rep = prepare_text(tmp_path / "c", format=fmt, input=tmp_path / "f")
    assert any("proportionally" in w for w in rep.warnings)
    c = Corpus(tmp_path / "c")
    parts = [bytes(c.tokens(s)) for s in ("train", "valid", "test")]
    assert b"".join(parts) == text.encode("utf-8")  # nothing lost, nothing repeated, in order
    units = len(text) if fmt == "text8" else len(text.encode("utf-8"))
    if fmt == "text8":  # cut on characters: every part is whole UTF-8
        lengths = [len(p.decode("utf-8")) for p in parts]
    else:
        lengths = [len(p) for p in parts]
    assert lengths == [int(units * 0.9), int(units * 0.95) - int(units * 0.9), units - int(units * 0.95)]


def test_prepare_audio_cli_accepts_mulaw16(tmp_path, capsys):
    # every audio tokenizer tokenizers.py offers is accepted by the command (mulaw16 was refused)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        wave = tone(400 + 50 * i, f=200.0 + 100 * i, seed=i)
        sf.write(src / f"clip{i}.wav", wave, 16_000, subtype="PCM_16")
    out = tmp_path / "corpus"
    assert main(["prepare-audio", str(src), "--out", str(out), "--tokenizer", "mulaw16", "--split-by", "file",
                 "--valid", "0", "--test", "0", "--workers", "1", "--quiet"]) == 0
    assert "prepared" in capsys.readouterr().out
    corpus = Corpus(out)
    assert corpus.meta["tokenizer"] == {"type": "mulaw", "bits": 16}
    tok = MuLawTokenizer(16)
    for f in corpus.files("train"):
        got = np.asarray(corpus.tokens("train")[f["offset"]:f["offset"] + f["length"]])
        assert np.array_equal(got, tok.encode(load_audio(f["path"])))
