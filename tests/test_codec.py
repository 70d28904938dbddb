"""The lossless codec: bit-exact round trips (16-bit samples, 8-bit codes) on real clips and edge
cases, files that decode on another CPU / thread count, a size within 1% of the float model's NLL
plus a container of a few dozen bytes, pipes, version-2 files, and every kind of bad file caught
before anything is written under its final name."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import textwrap
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


def checkpoint(path: Path, tokenizer: str, seed: int = 0, sharp: float = 0.0, **model) -> Path:
    """A small checkpoint; ``sharp`` > 0 gives its matrices that std (predictions that depend strongly
    on the context: a code whose probabilities differ between machines would fail to decode)."""
    kw = dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=32, mem_len=32, dropout=0.0)
    cfg = ModelConfig(**{**kw, **model})
    torch.manual_seed(seed)
    m = TransformerXL(cfg)
    if sharp:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() >= 2 and "proj" not in name and "coef" not in name:
                    p.normal_(0, sharp)
    save_checkpoint(path, {"model": m.state_dict(), "config": RunConfig(model=cfg).to_dict(),
                           "tokenizer": make_tokenizer(tokenizer).to_dict(), "step": 0})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "mixture": checkpoint(d / "mix.pt", "pcm16", vocab_size=65536, head="logistic_mixture",
                              mixture_components=3, lp_order=8),
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
    # chunks of 1024 of several files in one batch, groups of 4 chunks (a 1-second clip: 4 groups)
    assert main(["compress", *map(str, files), "--model", str(models[kind]), "--out", str(out), "--chunk",
                 "1024", "--batch-size", "16", "--no-progress"]) == 0
    txla = sorted(out.glob("*.txla"))
    assert len(txla) == len(files) and (out / "compress.csv").is_file()
    back = tmp_path / "d"
    # the checkpoint is the one recorded in the files
    assert main(["decompress", str(out), "--out", str(back), "--no-progress", "--batch-size", "5"]) == 0
    for f in files:
        name = next(p for p in txla if p.stem.endswith(f.stem)).stem
        original, _ = sf.read(f, dtype="int16")
        decoded, rate = sf.read(back / f"{name}.wav", dtype="int16")
        assert rate == 16_000 and np.array_equal(decoded, original), f


def test_groups_and_batches_do_not_change_the_code(models, tmp_path):
    """A file's code depends on its chunk and group sizes only, not on how many chunks (of it or of
    other files) were coded in one batch; a long file in several groups decodes in any batch size."""
    cm = codec.load_coding_model(models["mixture"])
    x = codec.file_tokens(REAL[0], cm.tokenizer, sixteen=True)[:5000]
    a = codec.compress_tokens(cm, x, tmp_path / "a.txla", chunk=700, group_chunks=3, batch=2)
    b = codec.compress_tokens(cm, x, tmp_path / "b.txla", chunk=700, group_chunks=3, batch=64)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert len(codec.parse_container(a.path.read_bytes(), "a").groups) == math.ceil(len(x) / 2100)
    for batch in (1, 4, 100):
        assert np.array_equal(codec.decompress_tokens(cm, a.path, batch=batch), x)


def test_8_bit_round_trip_gives_the_mu_law_codes(models, tmp_path):
    tok = make_tokenizer("mulaw8")
    f = write(tmp_path / "x.wav", (np.sin(np.arange(5000) / 9) * 0.4 * 32767).astype(np.int16))
    cm = codec.load_coding_model(models["mulaw"])
    tokens = codec.file_tokens(f, tok, sixteen=False)
    r = codec.compress_tokens(cm, tokens, tmp_path / "x.txla", chunk=1500, batch=2)
    back = codec.decompress_tokens(cm, r.path)
    assert np.array_equal(back, tokens)
    wav = codec.write_decoded(tmp_path / "x_back.wav", back, tok)
    again = np.asarray(tok.encode(sf.read(wav, dtype="float32")[0]))
    assert np.array_equal(again, tokens)  # the decoded waveform is the codes' waveform


def float_code_length(model, tokens: np.ndarray, chunk: int, start: int) -> float:
    """The float model's own NLL in bits of the codec's chunks: each chunk from an empty memory after
    the start token, every sample predicted (segments of tgt_len carrying the memory)."""
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
                bits += float(out.loss.double().sum()) / math.log(2)
    return bits


@pytest.mark.parametrize("kind", ["mixture", "dual", "mulaw"])
def test_size_is_the_float_models_code_length_plus_a_small_container(models, tmp_path, kind):
    cm = codec.load_coding_model(models[kind])
    x = (np.sin(np.arange(6000) / 11) * 8000 + np.random.default_rng(0).normal(0, 200, 6000)).astype(np.int16)
    tokens = codec.file_tokens(write(tmp_path / "x.wav", x), cm.tokenizer, sixteen=kind != "mulaw")
    r = codec.compress_tokens(cm, tokens, tmp_path / "x.txla", chunk=2000, batch=4)
    c = codec.parse_container(r.path.read_bytes(), "x")
    payload = 8 * sum(n for _, n, _ in c.groups)
    container = 8 * r.bytes - payload
    # the container: 36 bytes for one group, plus the recorded checkpoint path (not for a shipped model)
    assert container == 8 * (36 + 1 + len(str(models[kind]).encode()))
    nll = float_code_length(cm.model, tokens, 2000, cm.start)
    # the integer model approximates the float one: within 1% (plus the coder's last words)
    assert abs(payload - nll) <= 0.01 * nll + 64, (payload, nll)


def test_bad_files_are_refused_and_nothing_partial_is_left(models, tmp_path, monkeypatch, capsys):
    cm = codec.load_coding_model(models["mixture"])
    f = REAL[0]
    tokens = codec.file_tokens(f, cm.tokenizer, sixteen=True)[:4000]
    good = codec.compress_tokens(cm, tokens, tmp_path / "good.txla", chunk=1000, batch=4).path
    data = good.read_bytes()
    # another model: one line naming both ids
    other = codec.load_coding_model(checkpoint(tmp_path / "other.pt", "pcm16", seed=1, vocab_size=65536,
                                               head="logistic_mixture", mixture_components=3, lp_order=8))
    with pytest.raises(codec.CodecError,
                       match="made with model [0-9a-f]{16}, not with .*other.pt .[0-9a-f]{16}"):
        codec.decompress_tokens(other, good)
    # a flipped byte in the payload, a truncated file, a damaged header, not a txla file
    flipped = bytearray(data)
    flipped[-30] ^= 0x10
    (tmp_path / "flipped.txla").write_bytes(bytes(flipped))
    with pytest.raises(codec.CodecError, match="corrupt"):
        codec.decompress_tokens(cm, tmp_path / "flipped.txla")
    for cut in (len(data) - 3, len(data) - 100, 10):
        (tmp_path / "cut.txla").write_bytes(data[:cut])
        with pytest.raises(codec.CodecError, match="truncated"):
            codec.decompress_tokens(cm, tmp_path / "cut.txla")
    (tmp_path / "junk.txla").write_bytes(b"RIFF....")
    with pytest.raises(codec.CodecError, match="not a txl-audio compressed file"):
        codec.decompress_tokens(cm, tmp_path / "junk.txla")
    # a payload corrupted past its CRC (the CRC recomputed): the decoding fails on the samples' CRC, in
    # one line, exit code 1, nothing under the output name, no traceback
    c = codec.parse_container(data, "good")
    off, n, _ = c.groups[0]
    payload = bytearray(data[off : off + n])
    payload[n // 2] ^= 0x01
    body = (codec.header_bytes(c.model_id, c.chunk, c.group_chunks, c.checkpoint)
            + codec.group_bytes(np.frombuffer(bytes(payload), dtype="<u4")) + data[off + n :])
    (tmp_path / "bad.txla").write_bytes(body)
    assert main(["decompress", str(tmp_path / "bad.txla"), "--out", str(tmp_path / "w"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ("bad.txla" in err and "corrupt" in err and "Traceback" not in err
            and len(err.strip().splitlines()) == 1)
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())
    # a disk that fills up while writing: no file under the final name, no temporary left
    real = codec.os.fdopen

    class Full:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def write(self, b):
            self.f.write(b[:10])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(codec.os, "fdopen", Full)
    with pytest.raises(codec.CodecError, match="x.txla: could not be written .No space left"):
        codec.compress_tokens(cm, tokens, tmp_path / "full" / "x.txla", chunk=1000, batch=4)
    assert list((tmp_path / "full").iterdir()) == []
    monkeypatch.undo()
    # a folder that cannot be written
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if not _writable(tmp_path / "ro"):
            with pytest.raises(codec.CodecError, match="cannot write there"):
                codec.compress_tokens(cm, tokens, tmp_path / "ro" / "sub" / "x.txla", chunk=1000)
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
        assert main(["compress", str(f), "--model", str(models["mixture"]), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert why in err and "--convert" in err and str(f) in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.txla"))
    assert main(["compress", str(f44), "--model", str(models["mixture"]), "--out", str(tmp_path / "o"),
                 "--convert", "--no-progress"]) == 0
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert main(["compress", str(empty), "--model", str(models["mixture"]), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 1
    assert "empty" in capsys.readouterr().err
    # the form before --model (checkpoint first) still works
    assert main(["compress", str(models["mixture"]), str(REAL[0]), "--out", str(tmp_path / "old"),
                 "--no-progress"]) == 0


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def test_outputs_get_the_permissions_of_a_plain_write(models, tmp_path, umask, mode):
    """The .txla, the decoded WAV and a checkpoint are written through a temporary file (mkstemp: 0600)
    and renamed into place: they must end with what open() would give them under the user's umask,
    as flac's outputs do, not readable by their owner only."""
    old = os.umask(umask)
    try:
        assert main(["compress", str(REAL[0]), "--model", str(models["dual"]), "--out", str(tmp_path / "c"),
                     "--no-progress"]) == 0
        assert main(["decompress", str(tmp_path / "c"), "--out", str(tmp_path / "d"), "--no-progress"]) == 0
        save_checkpoint(tmp_path / "x.pt", {"a": 1})
    finally:
        os.umask(old)
    made = [*(tmp_path / "c").glob("*.txla"), *(tmp_path / "d").glob("*.wav"), tmp_path / "x.pt"]
    assert len(made) == 3
    for f in made:
        assert f.stat().st_mode & 0o777 == mode, (f.name, oct(f.stat().st_mode & 0o777))


def test_pipes_stdin_to_stdout_and_back(models, tmp_path):
    """`compress - --out -` reads a WAV on stdin and writes the .txla to stdout; `decompress - --out -`
    the reverse, as flac sits in a pipeline."""
    wav = REAL[0]
    data = io.BytesIO()
    x, _ = sf.read(wav, dtype="int16")
    sf.write(data, x, 16_000, format="WAV", subtype="PCM_16")
    cmd = [sys.executable, "-m", "txl_audio"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    packed = subprocess.run([*cmd, "compress", "-", "--model", str(models["dual"]), "--out", "-",
                             "--no-progress"],
                            input=data.getvalue(), capture_output=True, env=env, check=True).stdout
    assert packed[:4] == b"TXLA"
    wav_out = subprocess.run([*cmd, "decompress", "-", "--out", "-", "--no-progress"], input=packed,
                             capture_output=True, env=env, check=True).stdout
    back, rate = sf.read(io.BytesIO(wav_out), dtype="int16")
    assert rate == 16_000 and np.array_equal(back, x)


def test_version_2_files_still_decode(tmp_path, capsys):
    """A file made by txl-audio's version-2 codec (tests/data/v2_sample.txla, made with the tiny 8-bit
    checkpoint v2_model.pt beside it, on an AMD EPYC) passes every check of its header and
    decodes to its stored codes where the float kernels give the maker's bits. Version 2 coded with
    float probabilities, which differ between kinds of CPU (an Intel Xeon with AVX-512 gives other last
    bits under every ATEN_CPU_CAPABILITY): there the decoding must end in one line that names the file
    and says why and what to do, exit code 1, no WAV left behind, whether the range decoder rejects
    the payload (avx512, avx2 there) or the samples come out wrong and fail the SHA-256 (default)."""
    data_dir = ROOT / "tests" / "data"
    rc = main(["decompress", str(data_dir / "v2_sample.txla"), "--model", str(data_dir / "v2_model.pt"),
               "--out", str(tmp_path), "--no-progress"])
    if rc != 0:
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], err
        assert "v2_sample.txla" in err[0] and "decode on this machine" in err[0], err[0]
        assert "version-3 files decode on any machine" in err[0]
        assert not list(tmp_path.iterdir())
        return
    tok = make_tokenizer("mulaw8")
    codes = np.asarray(tok.encode(sf.read(tmp_path / "v2_sample.wav", dtype="float32")[0]))
    assert np.array_equal(codes, np.load(data_dir / "v2_tokens.npy").astype(np.int64))


CROSS = """
import sys, numpy as np, torch
from txl_audio import codec
mode, threads, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
rng = np.random.default_rng(0)
t = np.arange(2500)
for name in sys.argv[4:]:
    cm = codec.load_coding_model(f"{folder}/{name}.pt")
    if cm.sixteen:
        x = (32768 + 6000 * np.sin(t / 9) + rng.normal(0, 300, len(t))).astype(np.int64)
    else:
        x = np.clip(128 + 60 * np.sin(t / 9) + rng.normal(0, 4, len(t)), 0, 255).astype(np.int64)
    if mode == "compress":
        codec.compress_tokens(cm, x, f"{folder}/{name}.txla", chunk=900, group_chunks=2)
    else:
        y = codec.decompress_tokens(cm, f"{folder}/{name}.txla")
        assert np.array_equal(x, y), name
        print("decoded", name)
"""


@pytest.mark.slow  # 50 s: .ci/run runs it on every submission, outside the 10-minute default suite
def test_files_decode_on_another_cpu_and_thread_count(tmp_path):
    """Compressed under one ATEN_CPU_CAPABILITY and thread count, decompressed under the others
    (oneDNN and MKL capped too): 8-bit and 16-bit heads, relative and rotary attention, a compressive
    memory; models with large weights, whose float outputs differ between those settings."""
    kinds = {
        "mulaw_relative": dict(vocab_size=256),
        "mulaw_rotary_cmem": dict(vocab_size=256, attention="rotary", cmem_len=8, cmem_ratio=2, mem_len=16,
                                  tgt_len=16),
        "mixture_relative_cmem": dict(vocab_size=65536, head="logistic_mixture", mixture_components=4,
                                      cmem_len=8, cmem_ratio=4, cmem_fn="conv", mem_len=16, tgt_len=16),
        "dual_rotary": dict(vocab_size=65536, head="dual_softmax", attention="rotary", lp_order=4),
    }
    for name, kw in kinds.items():
        checkpoint(tmp_path / f"{name}.pt", "pcm16" if kw["vocab_size"] == 65536 else "mulaw8", sharp=0.3,
                   **kw)
    script = tmp_path / "cross.py"
    script.write_text(textwrap.dedent(CROSS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    native = "avx512" if avx512 else "avx2"
    settings = [({"ATEN_CPU_CAPABILITY": "default"}, 1),
                ({"ATEN_CPU_CAPABILITY": native}, 2),
                ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                  "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1)]
    names = list(kinds)
    def start(mode, s, folder):
        return subprocess.Popen([sys.executable, str(script), mode, str(settings[s][1]), str(folder), *names],
                                env={**env, **settings[s][0]}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # made under the first setting and under the second (side by side, in two folders); the first's
    # files decoded under the second, the second's under the third and the first
    made = {0: tmp_path / "made0", 1: tmp_path / "made1"}
    for folder in made.values():
        folder.mkdir()
        for name in names:
            (folder / f"{name}.pt").symlink_to(tmp_path / f"{name}.pt")
    for p in [start("compress", m, f) for m, f in made.items()]:
        out, err = p.communicate()
        assert p.returncode == 0, err
    for p in [start("decompress", s, made[m]) for m, s in ((0, 1), (1, 2), (1, 0))]:
        out, err = p.communicate()
        assert p.returncode == 0 and out.count("decoded") == len(names), err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_files_made_on_the_cpu_decode_on_the_gpu_and_back(tmp_path):
    """The portable model on a CUDA device computes the CPU's integers: a file compressed on the CPU
    decompresses on the GPU, and one compressed on the GPU decompresses on the CPU, bit for bit (8-bit
    and 16-bit heads, rotary attention and a compressive memory, large weights)."""
    kinds = {
        "mulaw": dict(vocab_size=256, attention="rotary", cmem_len=8, cmem_ratio=2, mem_len=16, tgt_len=16),
        "mixture": dict(vocab_size=65536, head="logistic_mixture", mixture_components=4, lp_order=8,
                        lp_coefficients="cascade"),
    }
    rng = np.random.default_rng(0)
    t = np.arange(6000)
    for name, kw in kinds.items():
        ckpt = checkpoint(tmp_path / f"{name}.pt", "pcm16" if kw["vocab_size"] == 65536 else "mulaw8",
                          sharp=0.3, **kw)
        cpu, gpu = codec.load_coding_model(ckpt, "cpu"), codec.load_coding_model(ckpt, "cuda")
        assert gpu.portable.device.type == "cuda"
        if cpu.sixteen:
            x = (32768 + 6000 * np.sin(t / 9) + rng.normal(0, 300, len(t))).astype(np.int64)
        else:
            x = np.clip(128 + 60 * np.sin(t / 9) + rng.normal(0, 4, len(t)), 0, 255).astype(np.int64)
        a = codec.compress_tokens(cpu, x, tmp_path / f"{name}_cpu.txla", chunk=1000, group_chunks=2)
        b = codec.compress_tokens(gpu, x, tmp_path / f"{name}_gpu.txla", chunk=1000, group_chunks=2)
        assert a.path.read_bytes() == b.path.read_bytes(), name  # the same code from either device
        assert np.array_equal(codec.decompress_tokens(gpu, a.path), x), name
        assert np.array_equal(codec.decompress_tokens(cpu, b.path), x), name


MEMORY = """
import resource, sys
from txl_audio import codec
mode, src, out, model = sys.argv[1:5]
# batches of 16 chunks per worker: both files fill every batch, so only the length can make a difference
if mode == "compress":
    codec.compress_files([src], out, model=model, progress=False, batch=32, workers=2)
else:
    codec.decompress_files([src], out, model=model, progress=False, batch=32, workers=2)
# KiB: this process's peak and its largest worker's (the codec forks one per core for 20 s or more)
usage = resource.getrusage
print(usage(resource.RUSAGE_SELF).ru_maxrss, usage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow  # ~2 minutes: 4.5 minutes of audio through a tiny model, twice
def test_long_files_are_coded_in_bounded_memory(tmp_path):
    """Peak memory of compress and decompress does not grow with the file: a 270-second file needs
    less than 16 MB more than a 30-second one (its samples alone are 69 MB as int64, 8.6 MB as int16),
    in the main process and in its workers, so an hour needs what a minute does (the shipped speech16:
    under 0.9 GB in all, docs/results.md)."""
    ckpt = checkpoint(tmp_path / "tiny.pt", "pcm16", vocab_size=65536, n_layer=1, d_model=16, n_head=2,
                      d_head=8, d_inner=32, head="logistic_mixture", mixture_components=2, lp_order=8,
                      lp_coefficients="cascade", tgt_len=64, mem_len=64)
    script = tmp_path / "mem.py"
    script.write_text(textwrap.dedent(MEMORY))
    rng = np.random.default_rng(0)
    peaks = {}
    for seconds in (30, 270):
        wav = tmp_path / f"long_{seconds}.wav"
        with sf.SoundFile(wav, "w", 16_000, 1, "PCM_16") as f:
            for _ in range(seconds):
                t = np.arange(16_000)
                f.write((3000 * np.sin(t / 7 + rng.uniform(0, 6))
                         + rng.normal(0, 200, 16_000)).astype(np.int16))
        peak = []
        for mode, src, out in (("compress", wav, tmp_path / f"c{seconds}"),
                               ("decompress", tmp_path / f"c{seconds}" / f"long_{seconds}.txla",
                                tmp_path / f"d{seconds}")):
            r = subprocess.run([sys.executable, str(script), mode, str(src), str(out), str(ckpt)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            peak += [int(v) for v in r.stdout.split()[-2:]]
        assert np.array_equal(sf.read(tmp_path / f"d{seconds}" / wav.name, dtype="int16")[0],
                              sf.read(wav, dtype="int16")[0])
        peaks[seconds] = peak
    # MB: compress (the process, its largest worker), then decompress (the same)
    growth = [(b - a) / 1024 for a, b in zip(peaks[30], peaks[270])]
    assert peaks[30][1] > 0 and peaks[30][3] > 0, peaks  # both ran in workers: their peaks are measured
    assert max(growth) < 16, (peaks, growth)
