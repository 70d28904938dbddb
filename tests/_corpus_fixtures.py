"""Small archives in the real layout of each corpus of txl_audio.datasets (a few short clips or lines
each), served by a loopback server and pointed at through TXL_DATASETS_OVERRIDE, so the download,
verify, unpack, prepare and recipe stages run without internet."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from txl_audio.datasets import DATASETS

# Speech Commands: (word, speaker, n) clips; the lists hold digit and non-digit clips
SC_WORDS = ("zero", "one", "two", "nine", "yes", "backward")
SC_TESTING = ("zero/00000002_nohash_0.wav", "nine/00000001_nohash_0.wav", "yes/00000000_nohash_0.wav")
SC_VALIDATION = ("one/00000000_nohash_1.wav", "backward/00000002_nohash_0.wav")
LIBRI_SPEAKERS = {"dev-clean": (84, 174), "test-clean": (61, 121), "train-clean-100": (19, 26, 27),
                  "train-clean-360": (100, 101)}


def _audio(seconds: float, rate: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 500) * t) + 0.02 * rng.standard_normal(n)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _tar(members: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def speech_commands_members() -> dict[str, bytes]:
    m: dict[str, bytes] = {}
    seed = 0
    for word in SC_WORDS:
        for spk in range(3):
            for i in range(2 if (word, spk) == ("one", 0) else 1):
                seed += 1
                seconds = 0.05 if seed % 3 == 0 else 0.1  # some clips shorter than the others
                m[f"{word}/{spk:08x}_nohash_{i}.wav"] = _audio(seconds, 16_000, "WAV", seed)
    m["_background_noise_/white_noise.wav"] = _audio(0.2, 16_000, "WAV", 99)
    m["testing_list.txt"] = ("\n".join(SC_TESTING) + "\n").encode()
    m["validation_list.txt"] = ("\n".join(SC_VALIDATION) + "\n").encode()
    m["LICENSE"] = b"CC BY 4.0\n"
    return m


def _librispeech(subset: str) -> dict[str, bytes]:
    m = {"LibriSpeech/README.TXT": b"LibriSpeech fixture\n", "LibriSpeech/SPEAKERS.TXT": b";\n"}
    for k, spk in enumerate(LIBRI_SPEAKERS[subset]):
        ch = 1000 + k
        lines = []
        for u in range(2):
            name = f"LibriSpeech/{subset}/{spk}/{ch}/{spk}-{ch}-{u:04d}.flac"
            m[name] = _audio(0.15, 16_000, "FLAC", spk + u)
            lines.append(f"{spk}-{ch}-{u:04d} SOME WORDS HERE")
        m[f"LibriSpeech/{subset}/{spk}/{ch}/{spk}-{ch}.trans.txt"] = ("\n".join(lines) + "\n").encode()
    return m


def _text(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    vocab = ["the", "a", "of", "<unk>", "N", "cat", "sat", "on", "mat", "and"]
    lines = [" " + " ".join(rng.choice(vocab, 8)) + " " for _ in range(words // 8)]
    return "\n".join(lines) + "\n"


def archives() -> dict[str, dict[str, bytes]]:
    """corpus name -> {file name as in the table: its bytes}."""
    ljs = {"LJSpeech-1.1/README": b"LJ fixture\n",
           "LJSpeech-1.1/metadata.csv": b"LJ001-0001|Printing.|Printing.\nLJ001-0002|In being.|In being.\n"}
    for i in (1, 2, 3):
        ljs[f"LJSpeech-1.1/wavs/LJ001-000{i}.wav"] = _audio(0.2, 22_050, "WAV", 200 + i)
    vctk = {"speaker-info.txt": b"ID AGE GENDER\n", "README.txt": b"VCTK fixture\n"}
    for k, spk in enumerate(("p225", "p226", "p227")):
        for u in (1, 2):
            vctk[f"txt/{spk}/{spk}_00{u}.txt"] = b"Please call Stella.\n"
            for mic in (1, 2):
                vctk[f"wav48_silence_trimmed/{spk}/{spk}_00{u}_mic{mic}.flac"] = _audio(
                    0.1, 48_000, "FLAC", 300 + 10 * k + u)
    wt = {s: _text(400, i).encode() for i, s in enumerate(("train", "valid", "test"))}
    enwik = ("<mediawiki><page><title>Anarchism</title><text>" + "Anarchism is a political philosophy. " * 60
             + "</text></page></mediawiki>\n").encode()
    return {
        "speech-commands": {"speech_commands_v0.02.tar.gz": _tar(speech_commands_members(), "w:gz")},
        "speech-commands-test": {"speech_commands_test_set_v0.02.tar.gz": _tar({
            "yes/0000000a_nohash_0.wav": _audio(0.1, 16_000, "WAV", 1),
            "no/0000000b_nohash_0.wav": _audio(0.1, 16_000, "WAV", 2),
            "no/0000000c_nohash_0.wav": _audio(0.1, 16_000, "WAV", 5),
            "_unknown_/bed_0000000c_nohash_0.wav": _audio(0.1, 16_000, "WAV", 3),
            "_silence_/noise_0.wav": _audio(0.1, 16_000, "WAV", 4)}, "w:gz")},
        **{f"librispeech-{s}": {f"{s}.tar.gz": _tar(_librispeech(s), "w:gz")} for s in LIBRI_SPEAKERS},
        "ljspeech": {"LJSpeech-1.1.tar.bz2": _tar(ljs, "w:bz2")},
        "vctk": {"VCTK-Corpus-0.92.zip": _zip(vctk)},
        "ptb": {f"ptb.{s}.txt": d for s, d in wt.items()},
        "wikitext-2": {"wikitext-2-v1.zip": _zip({f"wikitext-2/wiki.{s}.tokens": d for s, d in wt.items()})},
        "wikitext-103": {"wikitext-103-v1.zip": _zip({f"wikitext-103/wiki.{s}.tokens": d
                                                      for s, d in wt.items()})},
        "enwik8": {"enwik8.zip": _zip({"enwik8": enwik})},
        "text8": {"text8.zip": _zip({"text8": b" anarchism originated as a term of abuse" * 50})},
        "tinyshakespeare": {"tinyshakespeare.txt": b"First Citizen:\nBefore we proceed any further.\n" * 40},
    }


def serve(server, folder: Path) -> Path:
    """Put every fixture archive on ``server`` and write the override file that points the table at it
    (same file names, the fixtures' own sizes and SHA-256s). Returns the override file's path."""
    override = {}
    for name, files in archives().items():
        assert set(files) == {f.name for f in DATASETS[name].files}, name
        entries = []
        for fname, data in files.items():
            path = f"/{name}/{fname}"
            server.files[path] = data
            entries.append({"name": fname, "urls": [server.url(path)], "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        override[name] = {"files": entries}
    out = folder / "override.json"
    out.write_text(json.dumps(override, indent=1))
    return out
