"""Audio I/O: every format and bit depth soundfile writes comes back as the same mono float32 signal;
resampling keeps the frequency; channels are averaged; every bad input names its path."""

import numpy as np
import pytest
import soundfile as sf

from txl_audio.audio import (
    AUDIO_EXTENSIONS,
    MAX_FLOAT_PEAK,
    SAMPLE_RATE,
    AudioError,
    audio_info,
    describe_audio,
    find_audio_files,
    load_audio,
    read_audio,
    resample,
    save_audio,
)
from txl_audio.tokenizers import LinearTokenizer


def sine(freq=440.0, sr=SAMPLE_RATE, seconds=0.5, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


# (extension, format, subtype, max abs error vs the float signal)
FORMATS = [
    ("wav", "WAV", "PCM_U8", 1 / 128),
    ("wav", "WAV", "PCM_16", 1 / 32768),
    ("wav", "WAV", "PCM_24", 1e-6),
    ("wav", "WAV", "PCM_32", 1e-6),
    ("wav", "WAV", "FLOAT", 1e-7),
    ("wav", "WAV", "DOUBLE", 1e-7),
    ("flac", "FLAC", "PCM_16", 1 / 32768),
    ("flac", "FLAC", "PCM_24", 1e-6),
    ("aiff", "AIFF", "PCM_16", 1 / 32768),
]


@pytest.mark.parametrize("ext,fmt,subtype,tol", FORMATS, ids=[f"{f[1]}-{f[2]}" for f in FORMATS])
def test_formats_and_bit_depths(tmp_path, ext, fmt, subtype, tol):
    x = sine()
    path = tmp_path / f"x.{ext}"
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    y, info = read_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    assert np.abs(y - x).max() <= tol
    assert (info.format, info.subtype, info.sample_rate, info.channels, info.frames) == (
        fmt, subtype, SAMPLE_RATE, 1, len(x))
    assert info.duration == pytest.approx(0.5) and info.path == str(path)


def test_ogg_vorbis_is_lossy_but_close(tmp_path):
    x = sine(seconds=1.0)
    path = tmp_path / "x.ogg"
    sf.write(path, x, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    y, info = read_audio(path)
    assert info.format == "OGG" and info.subtype == "VORBIS"
    assert abs(len(y) - len(x)) <= 1
    n = min(len(x), len(y))
    # lossy codec: compare energy and pitch rather than samples
    assert np.sqrt(np.mean(y[:n] ** 2)) == pytest.approx(np.sqrt(np.mean(x[:n] ** 2)), rel=0.05)
    assert peak_frequency(y, SAMPLE_RATE) == pytest.approx(440, abs=2)


def test_resample_44k1_sine_to_16k(tmp_path):
    sr = 44_100
    x = sine(freq=1000.0, sr=sr, seconds=1.0)
    path = tmp_path / "hi.wav"
    sf.write(path, x, sr, subtype="PCM_16")
    y, info = read_audio(path)
    assert info.sample_rate == sr and info.frames == sr  # info describes the file on disk
    assert len(y) == SAMPLE_RATE
    assert peak_frequency(y, SAMPLE_RATE) == pytest.approx(1000, abs=1.5)
    # a clean sine stays a clean sine: compare to the ideal one (away from the filter's edges)
    ideal = sine(freq=1000.0, sr=SAMPLE_RATE, seconds=1.0)
    assert np.abs(y[500:-500] - ideal[500:-500]).max() < 2e-3


def test_resample_function_and_other_rate():
    x = sine(freq=300.0, sr=8000, seconds=1.0)
    y = resample(x, 8000, SAMPLE_RATE)
    assert y.dtype == np.float32 and len(y) == 16000
    assert peak_frequency(y, SAMPLE_RATE) == pytest.approx(300, abs=1.5)
    assert resample(x, 8000, 8000) is not None and np.array_equal(resample(x, 8000, 8000), x)
    # requested output rate
    assert len(load_audio_at(x, 8000, 22050)) == 22050


def load_audio_at(x, sr, target):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.wav"
        sf.write(p, x, sr, subtype="FLOAT")
        return load_audio(p, sample_rate=target)


def test_multichannel_is_mean(tmp_path):
    left = sine(440, amp=0.4)
    right = sine(660, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    y, info = read_audio(path)
    assert info.channels == 2
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    quad = np.stack([left, -left, right, right], axis=1)
    sf.write(tmp_path / "quad.flac", quad, SAMPLE_RATE, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(tmp_path / "quad.flac"), right / 2, atol=1e-5)


def test_slight_float_overs_are_clipped(tmp_path):
    x = sine(amp=1.5)
    sf.write(tmp_path / "hot.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "hot.wav")
    assert y.max() == 1.0 and y.min() == -1.0
    np.testing.assert_array_equal(y, np.clip(x, -1, 1))


def test_save_roundtrip(tmp_path):
    x = sine()
    for ext, subtype in (("wav", "PCM_16"), ("flac", "PCM_16")):
        path = tmp_path / "sub" / f"out.{ext}"
        save_audio(path, x)
        assert sf.info(path).subtype == subtype and sf.info(path).samplerate == SAMPLE_RATE
        assert np.abs(load_audio(path) - x).max() <= 1 / 32768
    save_audio(tmp_path / "loud.wav", np.array([2.0, -3.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(load_audio(tmp_path / "loud.wav"), [32767 / 32768, -1.0, 0.5])
    with pytest.raises(AudioError, match=r"out\.mp3"):
        save_audio(tmp_path / "out.mp3", x)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "nan.wav", np.array([0.0, np.nan], dtype=np.float32))


def test_torch_tensor_can_be_saved(tmp_path):
    torch = pytest.importorskip("torch")
    x = sine()
    save_audio(tmp_path / "t.flac", torch.from_numpy(x))
    assert np.abs(load_audio(tmp_path / "t.flac") - x).max() <= 1 / 32768


# ---- bad input: each error names the path and says what is wrong ----

def _good_flac(tmp_path):
    path = tmp_path / "good.flac"
    sf.write(path, sine(seconds=1.0) * 0.9 + 0.05 * np.random.default_rng(0).standard_normal(16000),
             SAMPLE_RATE, subtype="PCM_16")
    return path


def bad_files(tmp_path):
    """name -> (path, regex the message must contain besides the path)."""
    good = _good_flac(tmp_path).read_bytes()
    cases = {}
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file, not audio\n" * 20)
    cases["text"] = (p, "not an audio file")
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    cases["empty"] = (p, "empty")
    p = tmp_path / "truncated.flac"
    p.write_bytes(good[: len(good) // 2])
    cases["truncated"] = (p, "corrupt")
    p = tmp_path / "garbled.flac"
    g = bytearray(good)
    g[400:3000] = bytes(range(256)) * 10 + bytes(40)
    p.write_bytes(bytes(g))
    cases["garbled"] = (p, "corrupt")
    p = tmp_path / "header_only.wav"
    p.write_bytes((tmp_path / "notes.wav").read_bytes()[:0] + b"RIFF\x24\x00\x00\x00WAVEfmt ")
    cases["bad_header"] = (p, "corrupt|not an audio file")
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, np.float32), SAMPLE_RATE)
    cases["zero_samples"] = (p, "zero samples")
    p = tmp_path / "nan.wav"
    x = sine()
    x[100] = np.nan
    sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
    cases["nan"] = (p, "NaN")
    p = tmp_path / "inf.wav"
    x = sine()
    x[5] = np.inf
    sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
    cases["inf"] = (p, "infinite")
    p = tmp_path / "int_as_float.wav"
    sf.write(p, sine() * 32767, SAMPLE_RATE, subtype="FLOAT")
    cases["mis_scaled"] = (p, r"reach 1\.638e\+04, 84\.3 dB above full scale")
    cases["missing"] = (tmp_path / "missing.wav", "no such file")
    d = tmp_path / "folder.wav"
    d.mkdir()
    cases["directory"] = (d, "directory")
    return cases


BAD = ["text", "empty", "truncated", "garbled", "bad_header", "zero_samples", "nan", "inf", "mis_scaled",
       "missing", "directory"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_path_and_problem(tmp_path, case):
    path, problem = bad_files(tmp_path)[case]
    with pytest.raises(AudioError, match=problem) as exc:
        load_audio(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg  # one line
    assert isinstance(exc.value, ValueError)
    # no soundfile traceback attached
    assert exc.value.__cause__ is None and (exc.value.__context__ is None or exc.value.__suppress_context__)


def test_float_peak_threshold(tmp_path):
    """Peaks up to MAX_FLOAT_PEAK are clipped; above it the file is rejected, saying by how much."""
    ok = tmp_path / "ok.wav"
    sf.write(ok, np.array([0.0, MAX_FLOAT_PEAK, -0.5], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert load_audio(ok).max() == 1.0
    bad = tmp_path / "bad.wav"
    sf.write(bad, np.array([0.0, 2.5, -0.5], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"bad\.wav: FLOAT samples reach 2\.5, 8\.0 dB above full scale"):
        load_audio(bad)


def test_audio_info_header_only(tmp_path):
    path = _good_flac(tmp_path)
    info = audio_info(path)
    assert (info.format, info.subtype, info.frames, info.channels) == ("FLAC", "PCM_16", 16000, 1)
    assert info.to_dict()["sample_rate"] == SAMPLE_RATE
    with pytest.raises(AudioError, match="notes.wav: not an audio file"):
        (tmp_path / "notes.wav").write_text("hello\n" * 10)
        audio_info(tmp_path / "notes.wav")


def test_find_audio_files(tmp_path):
    for rel in ["b/z.FLAC", "b/a.wav", "a/x.ogg", "a/notes.txt", "c.mp3", "a/deep/er/y.aiff", "README"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a/deep/er/y.aiff", "a/x.ogg", "b/a.wav", "b/z.FLAC", "c.mp3"]
    assert find_audio_files(tmp_path / "c.mp3") == [tmp_path / "c.mp3"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_audio_files(tmp_path / "nowhere")
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)


def test_describe_audio_levels_clipping_and_codes(tmp_path):
    # a half-scale square wave with 10% of its samples at full scale: every number is known exactly
    x = np.where(np.arange(1000) % 2 == 0, 0.5, -0.5).astype(np.float32)
    x[:100] = 1.0
    path = tmp_path / "square.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    d, counts = describe_audio(path, LinearTokenizer(8))
    assert (d["format"], d["subtype"], d["frames"], d["tokens"]) == ("WAV", "FLOAT", 1000, 1000)
    assert d["tokenizer"] == {"type": "linear", "bits": 8} and d["token_rate"] == SAMPLE_RATE
    assert d["full_scale_share"] == pytest.approx(0.1)
    assert d["peak_dbfs"] == pytest.approx(0.0, abs=1e-6)
    assert d["rms_dbfs"] == pytest.approx(10 * np.log10(0.1 * 1.0 + 0.9 * 0.25))
    # codes: 1.0 clips to the top level 255, +0.5 -> 192, -0.5 -> 64
    assert {int(i): counts[i] for i in np.flatnonzero(counts)} == {64: 450, 192: 450, 255: 100}
    assert d["codes_used"] == 3 and d["most_common_code"] == 64 and d["most_common_share"] == 0.45
    p = np.array([0.45, 0.45, 0.1])
    assert d["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(100, np.float32), SAMPLE_RATE)
    assert describe_audio(silent, LinearTokenizer(8))[0]["peak_dbfs"] == -np.inf
