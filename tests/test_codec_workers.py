"""The codec in several worker processes: the same bytes as one process, every file back bit for bit,
a corrupt file or a dying worker ending in one error with nothing left under the output names."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st
from test_codec import REAL, checkpoint

from txl_audio import codec, codec_workers
from txl_audio.cli import main

pytestmark = pytest.mark.skipif(not codec_workers.can_fork(), reason="worker processes need fork (Linux)")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers")
    return checkpoint(d / "mix.pt", "pcm16", vocab_size=65536, head="logistic_mixture", mixture_components=3,
                      lp_order=8)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 9))
def test_split_rows_covers_the_items_in_order_in_balanced_parts(sizes, parts):
    ranges = codec_workers.split_rows(sizes, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert len(ranges) == min(parts, len(sizes))
    rows = [sum(sizes[a:b]) for a, b in ranges]
    # no part is larger than an equal share plus one item
    assert max(rows) <= sum(sizes) / len(ranges) + max(sizes)


def test_workers_make_the_same_bytes_and_decode_them(mixture, tmp_path):
    cm = codec.load_coding_model(mixture)
    x = codec.file_tokens(REAL[0], cm.tokenizer, sixteen=True)[:9000]
    # 18 chunks in 9 groups, batches of 8 chunks: several batches, each split between the workers
    one = codec.compress_tokens(cm, x, tmp_path / "one.txla", chunk=500, group_chunks=2, batch=8)
    two = codec.compress_tokens(cm, x, tmp_path / "two.txla", chunk=500, group_chunks=2, batch=8, workers=2)
    three = codec.compress_tokens(cm, x, tmp_path / "three.txla", chunk=500, group_chunks=2, batch=6,
                                  workers=3)
    assert one.path.read_bytes() == two.path.read_bytes() == three.path.read_bytes()
    for workers, batch in ((2, 8), (2, 3), (3, 100)):
        assert np.array_equal(codec.decompress_tokens(cm, one.path, batch=batch, workers=workers), x)


def test_the_commands_with_workers_round_trip_many_files(mixture, tmp_path, capsys):
    files = []
    for i in range(5):
        files.append(tmp_path / f"f{i}.wav")
        sig = (np.sin(np.arange(1500 + 300 * i) / (5 + i)) * 4000).astype(np.int16)
        sf.write(files[-1], sig, 16_000, subtype="PCM_16")
    files += REAL
    base = ["--model", str(mixture), "--chunk", "600", "--no-progress"]
    assert main(["compress", *map(str, files), "--out", str(tmp_path / "a"), *base, "--workers", "1"]) == 0
    assert main(["compress", *map(str, files), "--out", str(tmp_path / "b"), *base, "--workers", "2",
                 "--batch-size", "6"]) == 0
    assert "2 processes" in capsys.readouterr().out
    for f in (tmp_path / "a").glob("*.txla"):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert main(["decompress", str(tmp_path / "b"), "--out", str(tmp_path / "w"), "--workers", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    for f in files:
        name = next((tmp_path / "w").glob(f"*{f.stem}.wav"))
        assert np.array_equal(sf.read(name, dtype="int16")[0], sf.read(f, dtype="int16")[0]), f


def test_a_corrupt_file_in_a_worker_is_one_error_naming_it(mixture, tmp_path, capsys):
    cm = codec.load_coding_model(mixture)
    x = codec.file_tokens(REAL[0], cm.tokenizer, sixteen=True)[:4000]
    data = codec.compress_tokens(cm, x, tmp_path / "good.txla", chunk=1000, group_chunks=1).path.read_bytes()
    c = codec.parse_container(data, "good")
    body = codec.header_bytes(c.model_id, c.chunk, c.group_chunks, c.checkpoint)
    for _g, (off, n, _) in enumerate(c.groups):  # every group's payload damaged past its CRC
        payload = bytearray(data[off : off + n])
        payload[n // 2] ^= 0x01
        body += codec.group_bytes(np.frombuffer(bytes(payload), dtype="<u4"))
    off, n, _ = c.groups[-1]
    (tmp_path / "bad.txla").write_bytes(body + data[off + n :])
    assert main(["decompress", str(tmp_path / "bad.txla"), "--out", str(tmp_path / "w"), "--workers", "2",
                 "--batch-size", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ("bad.txla" in err and "corrupt" in err and "Traceback" not in err
            and len(err.strip().splitlines()) == 1)
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


def test_a_worker_that_dies_stops_the_command_and_leaves_nothing(mixture, tmp_path, monkeypatch, capsys):
    def die(*args):  # what the OOM killer does to a worker
        os._exit(9)

    # the forked workers inherit it; this process never calls it
    monkeypatch.setattr(codec_workers, "_run", die)
    assert main(["compress", str(REAL[0]), "--model", str(mixture), "--out", str(tmp_path / "c"), "--chunk",
                 "1000", "--workers", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "worker process died" in err and "--workers 1" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.txla"))


def test_how_many_workers():
    assert codec_workers.choose_workers(None, "cuda", 10**9) == 1
    assert codec_workers.choose_workers(4, "cuda", None) == 1
    assert codec_workers.choose_workers(None, "cpu", 16_000) == 1  # a second of audio: not worth a fork
    assert codec_workers.choose_workers(None, "cpu", 10**8) == codec_workers.usable_cores()
    assert codec_workers.choose_workers(3, "cpu", 100) == 3
    with pytest.raises(ValueError, match="at least 1"):
        codec_workers.choose_workers(0, "cpu", None)
