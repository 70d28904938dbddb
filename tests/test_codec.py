"""The lossless codec: bit-exact round trips (16-bit samples, 8-bit codes) on real clips and edge
cases, a size within 1% of the model's own code length plus a fixed header, and every kind of bad
file caught before anything is written under its final name."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from txl_audio import codec
from txl_audio.checkpoint import save_checkpoint
from txl_audio.cli import main
from txl_audio.config import ModelConfig, RunConfig
from txl_audio.model import TransformerXL
from txl_audio.tokenizers import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
REAL = sorted((ROOT / "data" / "speech_commands_v002_test").rglob("*.flac"))[:2]


def checkpoint(path: Path, tokenizer: str, seed: int = 0, **model) -> Path:
    kw = dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=32, mem_len=32, dropout=0.0)
    cfg = ModelConfig(**{**kw, **model})
    torch.manual_seed(seed)
    m = TransformerXL(cfg)
    save_checkpoint(path, {"model": m.state_dict(), "config": RunConfig(model=cfg).to_dict(),
                           "tokenizer": make_tokenizer(tokenizer).to_dict(), "step": 0})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "mixture": checkpoint(d / "mix.pt", "pcm16", vocab_size=65536, head="logistic_mixture",
                              mixture_components=3, lp_order=8, lp_coefficients="fitted"),
        "dual": checkpoint(d / "dual.pt", "pcm16", vocab_size=65536, head="dual_softmax", lp_order=8),
        "mulaw": checkpoint(d / "mulaw.pt", "mulaw8", vocab_size=256),
    }


def write(path: Path, samples: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def edge_cases(folder: Path) -> list[Path]:
    t = np.arange(3000)
    return [
        write(folder / "silence.wav", np.zeros(2500, np.int16)),
        write(folder / "square.wav", np.where((t // 40) % 2 == 0, 32767, -32768).astype(np.int16)),
        write(folder / "short.wav", (3000 * np.sin(t[:300] / 5)).astype(np.int16)),  # shorter than a chunk
        write(folder / "one.wav", np.array([1234], np.int16)),  # a single sample
    ]


@pytest.mark.parametrize("kind", ["mixture", "dual"])
def test_16_bit_round_trip_is_bit_exact(models, tmp_path, kind):
    files = [*REAL, *edge_cases(tmp_path)]
    out = tmp_path / "c"
    # chunks of 1024, all of a file's in one batch (one 1-second clip: 16 chunks decoded together)
    assert main(["compress", str(models[kind]), *map(str, files), "--out", str(out), "--chunk", "1024",
                 "--batch-size", "16", "--no-progress"]) == 0
    txla = sorted(out.glob("*.txla"))
    assert len(txla) == len(files) and (out / "compress.csv").is_file()
    back = tmp_path / "d"
    # the checkpoint is the one recorded in the files
    assert main(["decompress", str(out), "--out", str(back), "--no-progress"]) == 0
    for f in files:
        name = next(p for p in txla if p.stem.endswith(f.stem)).stem
        original, _ = sf.read(f, dtype="int16")
        decoded, rate = sf.read(back / f"{name}.wav", dtype="int16")
        assert rate == 16_000 and np.array_equal(decoded, original), f


def test_8_bit_round_trip_gives_the_mu_law_codes(models, tmp_path):
    tok = make_tokenizer("mulaw8")
    f = write(tmp_path / "x.wav", (np.sin(np.arange(5000) / 9) * 0.4 * 32767).astype(np.int16))
    from txl_audio.checkpoint import load_model

    model, _, _ = load_model(models["mulaw"])
    tokens = codec.file_tokens(f, tok, sixteen=False)
    r = codec.compress_tokens(model, tok, tokens, tmp_path / "x.txla", chunk=1500, batch=2)
    header, back = codec.decompress_tokens(model, r.path)
    assert header.lossless == "tokens" and np.array_equal(back, tokens)
    wav = codec.write_decoded(tmp_path / "x_back.wav", back, tok)
    again = np.asarray(tok.encode(sf.read(wav, dtype="float32")[0]))
    assert np.array_equal(again, tokens)  # the decoded waveform is the codes' waveform


def model_code_length(model, tokens: np.ndarray, chunk: int, start: int) -> float:
    """The model's own NLL in bits of the codec's chunks: each chunk from an empty memory after the
    start token, every sample predicted (segments of tgt_len carrying the memory)."""
    bits = 0.0
    T = model.config.tgt_len
    with torch.no_grad():
        for c in range(0, len(tokens), chunk):
            seq = torch.as_tensor(np.concatenate([[start], tokens[c : c + chunk]]))[None]
            mems = None
            for s in range(0, seq.shape[1] - 1, T):
                inp = seq[:, s : min(s + T, seq.shape[1] - 1)]
                out = model(inp, mems, targets=seq[:, s + 1 : s + 1 + inp.shape[1]], return_logits=False)
                mems = out.mems
                bits += float(out.loss.sum()) / math.log(2)
    return bits


@pytest.mark.parametrize("kind", ["mixture", "dual", "mulaw"])
def test_size_is_the_models_code_length_plus_a_header(models, tmp_path, kind):
    from txl_audio.checkpoint import load_model
    from txl_audio.generate import start_token

    model, tok, _ = load_model(models[kind])
    x = (np.sin(np.arange(6000) / 11) * 8000 + np.random.default_rng(0).normal(0, 200, 6000)).astype(np.int16)
    tokens = codec.file_tokens(write(tmp_path / "x.wav", x), tok, sixteen=kind != "mulaw")
    r = codec.compress_tokens(model, tok, tokens, tmp_path / "x.txla", chunk=2000, batch=4)
    header_bits = 8 * (r.bytes - sum(g[0] for g in codec.read_container(r.path)[0].groups))
    nll = model_code_length(model, tokens, 2000, start_token(tok))
    payload = 8 * r.bytes - header_bits
    # within 1% (the step path's floats differ from the segment path's in the last bits: a code a hair
    # shorter than the forward pass's NLL is possible) plus the range coder's final words per batch
    assert abs(payload - nll) <= 0.01 * nll + 64 * 2, (payload, nll)
    assert header_bits < 8 * 4096
    # the code length the codec reports (compress.csv) is that NLL, from the step path's probabilities
    assert r.model_bits == pytest.approx(nll, rel=1e-4)


def test_bad_files_are_refused_and_nothing_partial_is_left(models, tmp_path, monkeypatch):
    from txl_audio.checkpoint import load_model

    model, tok, _ = load_model(models["mixture"])
    f = REAL[0]
    tokens = codec.file_tokens(f, tok, sixteen=True)[:4000]
    good = codec.compress_tokens(model, tok, tokens, tmp_path / "good.txla", chunk=1000, batch=4).path
    data = good.read_bytes()
    # another model: one line naming both hashes
    other, _, _ = load_model(checkpoint(tmp_path / "other.pt", "pcm16", seed=1, vocab_size=65536,
                                        head="logistic_mixture", mixture_components=3, lp_order=8,
                                        lp_coefficients="fitted"))
    both = "made with model [0-9a-f]{16}, not with this checkpoint's [0-9a-f]{16}"
    with pytest.raises(codec.CodecError, match=both):
        codec.decompress_tokens(other, good)
    # a flipped byte in the payload, a truncated file, a damaged header, not a txla file
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    (tmp_path / "flipped.txla").write_bytes(bytes(flipped))
    with pytest.raises(codec.CodecError, match="corrupt"):
        codec.decompress_tokens(model, tmp_path / "flipped.txla")
    (tmp_path / "cut.txla").write_bytes(data[:-100])
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decompress_tokens(model, tmp_path / "cut.txla")
    n = struct.unpack("<I", data[5:9])[0]
    (tmp_path / "header.txla").write_bytes(data[:20] + b"\xff" + data[21:])
    with pytest.raises(codec.CodecError, match="header is damaged|corrupt"):
        codec.decompress_tokens(model, tmp_path / "header.txla")
    assert n > 20
    (tmp_path / "junk.txla").write_bytes(b"RIFF....")
    with pytest.raises(codec.CodecError, match="not a txl-audio compressed file"):
        codec.decompress_tokens(model, tmp_path / "junk.txla")
    # another torch or device kind: refused unless forced
    header = json.loads(zlib.decompress(data[9 : 9 + n]))  # the header: compressed JSON
    header["torch"] = "0.0"
    meta = zlib.compress(json.dumps(header, sort_keys=True).encode())
    (tmp_path / "old.txla").write_bytes(data[:4] + struct.pack("<BI", codec.VERSION, len(meta)) + meta
                                        + data[9 + n :])
    with pytest.raises(codec.CodecError, match="torch 0.0"):
        codec.decompress_tokens(model, tmp_path / "old.txla")
    assert np.array_equal(codec.decompress_tokens(model, tmp_path / "old.txla", force=True)[1], tokens)
    # a disk that fills up while writing: no file under the final name, no temporary left
    real_write = codec._write_atomically.__globals__["os"].fdopen

    class Full:
        def __init__(self, *a, **k):
            self.f = real_write(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, b):
            self.f.write(b[:10])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(codec.os, "fdopen", Full)
    with pytest.raises(codec.CodecError, match="x.txla: could not be written .No space left"):
        codec.compress_tokens(model, tok, tokens, tmp_path / "full" / "x.txla", chunk=1000, batch=4)
    assert list((tmp_path / "full").iterdir()) == []
    monkeypatch.undo()
    # a folder that cannot be written
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if not (tmp_path / "ro").stat().st_mode & 0o200 and not _writable(tmp_path / "ro"):
            with pytest.raises(codec.CodecError, match="cannot write there"):
                codec.compress_tokens(model, tok, tokens, tmp_path / "ro" / "sub" / "x.txla", chunk=1000,
                                      batch=4)
    finally:
        (tmp_path / "ro").chmod(0o700)


def _writable(folder: Path) -> bool:
    """root writes anywhere: the permission check is then skipped"""
    try:
        (folder / ".probe").write_bytes(b"")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_16_bit_refuses_files_it_would_change_unless_converted(models, tmp_path, capsys):
    f44 = write(tmp_path / "cd.wav", (np.sin(np.arange(4410) / 7) * 9000).astype(np.int16), rate=44_100)
    stereo = write(tmp_path / "st.wav", np.zeros((1000, 2), np.int16))
    f24 = write(tmp_path / "deep.wav", np.zeros(1000, np.int32), subtype="PCM_24")
    for f, why in ((f44, "44100 Hz"), (stereo, "2 channels"), (f24, "PCM_24")):
        assert main(["compress", str(models["mixture"]), str(f), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert why in err and "--convert" in err and str(f) in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.txla"))
    assert main(["compress", str(models["mixture"]), str(f44), "--out", str(tmp_path / "o"), "--convert",
                 "--no-progress"]) == 0
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert main(["compress", str(models["mixture"]), str(empty), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 1
    assert "empty" in capsys.readouterr().err


def test_codec_table_script_round_trips_and_reports_every_column(models, tmp_path, capsys):
    """benchmarks/codec_table.py on a small 8-bit corpus: every file round-trips (else it stops), the
    files' size includes their headers, and each column of the table is there."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _training import make_corpus
    from codec_table import main

    corpus = make_corpus(tmp_path / "corpus", n_train=1, n_valid=2, length=700)
    out = tmp_path / "table.json"
    assert main([str(models["mulaw"]), "--corpus", str(corpus), "--threads", "1", "--chunk", "256",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["files"] == res["files_in_split"] == 2 and res["samples"] > 0
    assert res["txla_bits_per_sample"] > res["payload_bits_per_sample"] > 0
    assert res["payload_bits_per_sample"] <= 1.01 * res["model_bits_per_sample"] + 64 / res["samples"]
    assert set(res["baselines_bits_per_sample"]) >= {"xz -9e", "bzip2 -9", "FLAC -8 (codes as 8-bit PCM)"}
    assert "round trips bit-exact" in capsys.readouterr().out
