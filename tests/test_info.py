"""`txl-audio info`: facts about a real FLAC from data/, and one clear line per bad file."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from txl_audio.cli import main
from txl_audio.tokenizers import MuLawTokenizer

BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data"



@pytest.fixture
def flac():
    files = sorted((BUNDLED_DATA / "ljspeech_sentences_read").glob("*.flac"))
    if not files:
        pytest.skip("bundled data/ sample missing")
    return files[0]


def test_info_on_bundled_flac(flac, capsys):
    assert main(["info", str(flac)]) == 0
    out = capsys.readouterr().out
    info = sf.info(str(flac))
    assert str(flac) in out
    facts = f"FLAC PCM_16, {info.samplerate} Hz, 1 channel, {info.duration:.3f} s ({info.frames} frames)"
    assert facts in out
    assert f"mulaw8     {info.frames} tokens at 16000 Hz" in out


def test_info_json_numbers_are_right(flac, capsys):
    assert main(["info", "--json", str(flac)]) == 0
    d = json.loads(capsys.readouterr().out)
    x, sr = sf.read(str(flac), dtype="float32")
    codes = MuLawTokenizer(8).encode(x)
    p = np.bincount(codes, minlength=256) / len(codes)
    entropy = -sum(q * math.log2(q) for q in p if q > 0)
    assert d["tokens"] == len(x) and d["sample_rate"] == sr and d["format"] == "FLAC"
    assert d["entropy_bits"] == pytest.approx(entropy, abs=1e-9)
    assert d["codes_used"] == np.count_nonzero(p)
    assert d["full_scale_share"] == pytest.approx(np.mean(np.abs(x) >= 0.999))
    assert d["tokenizer"] == {"type": "mulaw", "bits": 8}


def test_info_other_tokenizer_and_rate(tmp_path, capsys):
    path = tmp_path / "tone.wav"
    sf.write(path, 0.5 * np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100), 44100, subtype="PCM_24")
    assert main(["info", "--json", "--tokenizer", "linear16", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["sample_rate"] == 44100 and d["subtype"] == "PCM_24" and d["tokens"] == 16000
    assert d["tokenizer"] == {"type": "linear", "bits": 16}


def test_info_bad_files_one_line_each_and_continues(tmp_path, flac, capsys):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 50)
    good = flac.read_bytes()
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(good[: len(good) // 3])
    rc = main(["info", str(text), str(flac), str(corrupt)])
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err.strip().splitlines()
    assert len(err) == 2
    assert err[0] == (f"txl-audio info: error: {text}: not an audio file (libsndfile does not recognise its "
                      "format; WAV, FLAC, OGG, AIFF, MP3 and others are read)")
    # the detail in parentheses is libsndfile's own words (version-dependent)
    assert err[1].startswith(f"txl-audio info: error: {corrupt}: unreadable or corrupt audio file (")
    assert "Traceback" not in captured.err
    assert str(flac) in captured.out  # the good file in between was still described
    assert "1 failed" not in captured.out  # only one good file: no total line


def test_info_missing_file_and_text_tokenizer(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.flac")]) == 1
    assert capsys.readouterr().err.strip() == f"txl-audio info: error: {tmp_path / 'nope.flac'}: no such file"
    with pytest.raises(SystemExit) as e:  # argparse: only audio tokenizers are offered
        main(["info", "--tokenizer", "bytes", str(tmp_path / "nope.flac")])
    assert e.value.code == 2 and "invalid choice: 'bytes'" in capsys.readouterr().err


def test_info_folder(tmp_path, capsys):
    for i in range(2):
        sf.write(tmp_path / f"{i}.flac", np.full(800, 0.1 * (i + 1)), 16000)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "total: 2 files, 0.1 s, 1600 tokens" in out
