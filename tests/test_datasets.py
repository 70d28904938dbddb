"""The corpus table and `txl-audio download` end to end, without internet: a loopback server serves small
archives in each corpus's real layout (tests/_corpus_fixtures.py) and TXL_DATASETS_OVERRIDE points the
table at them. Each corpus is downloaded, verified, unpacked and prepared; a second run downloads
nothing; the protocols' manifests hold exactly the paper's split (SC09: the two list files, digits
only); every recipe's download stage runs on the fixtures, and sc09.sh runs end to end at a toy size."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _corpus_fixtures import SC_TESTING, SC_VALIDATION, SC_WORDS, serve
from _loopback import LoopbackServer

from txl_audio.cli import main
from txl_audio.data import Corpus
from txl_audio.datasets import DATASETS, PROTOCOLS, SC09_WORDS, dataset, download
from txl_audio.download import MARKER
from txl_audio.prepare import prepare_audio, prepare_text

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("speech-commands", "librispeech-dev-clean", "librispeech-test-clean",
            "librispeech-train-clean-100", "librispeech-train-clean-360", "ljspeech", "vctk", "ptb",
            "wikitext-2", "wikitext-103", "enwik8", "text8")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with LoopbackServer() as srv:
        yield srv, serve(srv, tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def env(served, tmp_path, monkeypatch):
    """The table pointed at the loopback server, the cache in tmp_path/cache."""
    srv, override = served
    monkeypatch.setenv("TXL_DATASETS_OVERRIDE", str(override))
    monkeypatch.setenv("TXL_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("TXL_DOWNLOAD_RETRY_PAUSE", "0")
    return srv


def test_the_table_names_every_corpus_with_url_checksum_size_licence_and_citation(monkeypatch):
    monkeypatch.delenv("TXL_DATASETS_OVERRIDE", raising=False)
    for name in REQUIRED:
        assert name in DATASETS, name
    for d in DATASETS.values():
        assert d.license and d.citation and d.homepage.startswith("http") and d.size, d.name
        for f in d.files:
            assert f.urls and all(u.startswith(("http://", "https://")) for u in f.urls), f.name
            assert f.size and f.size > 0, f.name
            assert (f.sha256 and re.fullmatch(r"[0-9a-f]{64}", f.sha256)) or \
                (f.md5 and re.fullmatch(r"[0-9a-f]{32}", f.md5)), f.name
        assert dataset(d.name) is d  # no override in effect
    for p in PROTOCOLS.values():
        assert all(n in DATASETS for n in p.needs)


def _prepare(name: str, path: Path, out: Path):
    if DATASETS[name].kind == "text":
        fmt = {"enwik8": "enwik8", "text8": "text8", "tinyshakespeare": "bytes"}.get(name, "words")
        frac = (0.9, 0.1, 0.0) if fmt == "bytes" else (0.9, 0.05, 0.05)
        return prepare_text(out, fmt, input=path, split_fractions=frac)
    kw = {"speaker_regex": r"^(\d+)/"} if name.startswith("librispeech") else \
        {"split_by": "file"} if name == "ljspeech" else \
        {"speaker_regex": r"(p\d+)_"} if name == "vctk" else {}
    return prepare_audio(path, out, valid=0.2, test=0.2, workers=1, progress=False, **kw)


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_corpus_downloads_verifies_unpacks_prepares_and_is_not_fetched_twice(env, tmp_path, name):
    info = DATASETS[name]
    before = len(env.requests)
    first = download(name, progress=False)
    assert sorted(first.downloaded) == sorted(f.name for f in info.files)
    assert len(env.requests) - before == len(info.files)
    dest = tmp_path / "cache" / name
    assert (dest / MARKER).is_file() and first.path == (dest / info.root if info.root else dest)
    for rel in info.expect:
        assert (dest / rel).exists(), rel
    report = _prepare(name, first.path, tmp_path / "corpus")
    assert report.splits["train"]["tokens"] > 0
    assert Corpus(tmp_path / "corpus").n_tokens("train") == report.splits["train"]["tokens"]
    again = download(name, progress=False)
    assert again.downloaded == [] and again.path == first.path
    assert len(env.requests) - before == len(info.files)  # nothing fetched the second time


def _manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sc09_is_exactly_the_two_lists_digits_only_the_rest_in_train(env, tmp_path):
    result = download("sc09", progress=False)
    rows = _manifest(result.path)
    root = tmp_path / "cache" / "speech-commands"
    rel = {r["path"]: Path(r["path"]).relative_to(root).as_posix() for r in rows}
    by_split = {s: {rel[r["path"]] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    digit = lambda p: p.split("/")[0] in SC09_WORDS  # noqa: E731
    assert by_split["test"] == {p for p in SC_TESTING if digit(p)}
    assert by_split["valid"] == {p for p in SC_VALIDATION if digit(p)}
    all_digit_clips = {p.relative_to(root).as_posix() for w in SC_WORDS if w in SC09_WORDS
                       for p in (root / w).glob("*.wav")}
    assert by_split["train"] == all_digit_clips - by_split["test"] - by_split["valid"]
    assert all(digit(p) for p in rel.values()) and len(rows) == len(all_digit_clips)
    assert all(r["speaker"] == Path(r["path"]).name.split("_nohash_")[0] for r in rows)
    # prepare-audio keeps the manifest's split, file for file
    prepare_audio(result.path, tmp_path / "corpus", split_by="manifest", normalize="minmax", workers=1,
                  progress=False)
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    got = {s: {Path(f["path"]).relative_to(root).as_posix() for f in Corpus(tmp_path / "corpus").files(s)}
           for s in ("train", "valid", "test")}
    assert got == by_split and meta["source"]["normalize"] == "minmax"


def test_librispeech_protocol_is_train_clean_100_dev_clean_test_clean(env, tmp_path):
    rows = _manifest(download("librispeech", progress=False).path)
    cache = tmp_path / "cache"
    for split, subset in (("train", "train-clean-100"), ("valid", "dev-clean"), ("test", "test-clean")):
        mine = [r for r in rows if r["split"] == split]
        assert mine and all(f"librispeech-{subset}/LibriSpeech/{subset}/" in r["path"] for r in mine)
        assert all(Path(r["path"]).name.startswith(r["speaker"] + "-") for r in mine)
    assert len(rows) == len(list(cache.glob("librispeech-*/LibriSpeech/*/*/*/*.flac")))


def test_vctk_mic1_protocol_keeps_one_microphone(env):
    rows = _manifest(download("vctk-mic1", progress=False).path)
    assert rows and all(r["path"].endswith("_mic1.flac") for r in rows)
    assert {r["speaker"] for r in rows} == {"p225", "p226", "p227"} and "split" not in rows[0]


def test_delete_archives_keeps_the_corpus_and_a_second_run_downloads_nothing(env, tmp_path):
    first = download("wikitext-2", progress=False, delete_archives=True)
    assert first.downloaded and not list((tmp_path / "cache" / "downloads").glob("wikitext-2*"))
    again = download("wikitext-2", progress=False)
    assert again.downloaded == [] and (again.path / "wiki.train.tokens").is_file()


def test_download_command_prints_the_path_and_errors_in_one_line(env, tmp_path, capsys):
    assert main(["download", "ptb", "--to", str(tmp_path / "elsewhere"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "elsewhere" / "ptb") and "downloaded ptb.train.txt" in err
    assert main(["download", "ptb", "--to", str(tmp_path / "elsewhere"), "--quiet"]) == 0
    assert "nothing to download" in capsys.readouterr().err
    assert main(["download", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown corpus 'nope'" in err and "sc09" in err
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in list(DATASETS) + list(PROTOCOLS)) and "CC BY 4.0" in listing


# ------------------------------------------------------------------------------------------------
# recipes: the download stage of each, on the fixtures; sc09.sh end to end


def _recipe_env(served, tmp_path: Path, **extra: str) -> dict[str, str]:
    _, override = served
    e = dict(os.environ)
    e.update({"TXL": f"{sys.executable} -m txl_audio", "TXL_DATA": str(tmp_path / "cache"),
              "TXL_DATASETS_OVERRIDE": str(override), "TXL_DOWNLOAD_RETRY_PAUSE": "0",
              "OMP_NUM_THREADS": "1", **extra})
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


RECIPE_DATA = {
    "speech_commands.sh": ["speech-commands-test"], "lossless16.sh": ["speech-commands-test"],
    "lossless16_heads.sh": ["speech-commands-test"], "read_speech.sh": ["ljspeech"],
    "sc09.sh": ["speech-commands", "manifests/sc09.csv"],
    "librispeech16.sh": ["librispeech-train-clean-100", "librispeech-dev-clean", "librispeech-test-clean",
                         "manifests/librispeech.csv"],
    "long_range.sh": ["librispeech-test-clean", "manifests/librispeech.csv"],
    "ptb.sh": ["ptb"], "wikitext2.sh": ["wikitext-2"], "wikitext103.sh": ["wikitext-103"],
    "enwik8.sh": ["enwik8"], "text8.sh": ["text8"], "shakespeare_char.sh": ["tinyshakespeare"],
    "text_baselines.sh": ["tinyshakespeare"],
}


@pytest.mark.parametrize("recipe", list(RECIPE_DATA))
def test_each_recipe_downloads_its_corpus_first(served, tmp_path, recipe):
    proc = subprocess.run(["bash", f"recipes/{recipe}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=_recipe_env(served, tmp_path, STOP_AFTER="download"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "STOP_AFTER=download" in proc.stderr
    for rel in RECIPE_DATA[recipe]:
        p = tmp_path / "cache" / rel
        assert (p / MARKER).is_file() if not rel.endswith(".csv") else p.is_file(), rel


def test_no_recipe_or_product_file_names_the_development_data():
    found = subprocess.run(["grep", "-rn", r"\.\./shared", "README.md", "recipes", "txl_audio"], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.stdout == "", found.stdout


def test_a_recipe_uses_the_checkout_venv_when_it_is_not_activated(served, tmp_path):
    venv_tool = ROOT / ".venv" / "bin" / "txl-audio"
    if not venv_tool.exists():
        pytest.skip(f"no {venv_tool} (installed elsewhere)")
    e = _recipe_env(served, tmp_path, STOP_AFTER="download")
    del e["TXL"]
    e["PATH"] = "/usr/bin:/bin"  # no venv on PATH
    proc = subprocess.run(["bash", "recipes/ptb.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=e)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "cache" / "ptb" / MARKER).is_file()


def test_without_an_install_a_recipe_says_in_one_line_what_to_do(tmp_path):
    probe = subprocess.run(["bash", "-c", "python3 -c 'import txl_audio, tqdm, torch'"], capture_output=True,
                           env={"PATH": "/usr/bin:/bin"})
    if probe.returncode == 0:
        pytest.skip("the system python3 has txl_audio installed")
    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / "common.sh", tmp_path / "recipes" / "common.sh")
    (tmp_path / "recipes" / "r.sh").write_text('set -euo pipefail\nsource "$(dirname "$0")/common.sh"\n'
                                               'echo reached\n')
    proc = subprocess.run(["bash", "recipes/r.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1 and "reached" not in proc.stdout
    assert proc.stderr.count("\n") == 1 and "make install" in proc.stderr and "activate" in proc.stderr


TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
        "--set", "model.d_head=16", "--set", "model.d_inner=64", "--set", "model.tgt_len=32",
        "--set", "model.mem_len=32", "--set", "train.batch_size=2", "--set", "train.max_steps=3",
        "--set", "train.eval_every=3", "--set", "train.ckpt_every=3", "--set", "data.max_eval_tokens=512"]


def test_sc09_recipe_end_to_end_reports_bits_beside_the_published_numbers(served, tmp_path):
    out = tmp_path / "sc09"
    proc = subprocess.run(["bash", "recipes/sc09.sh", *TINY], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=_recipe_env(served, tmp_path, OUT=str(out), GEN_SECONDS="0.01",
                                                       GEN_NUM="1", CONFIG="recipes/configs/sc09_cpu.toml"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "eval_test" / "summary.json").read_text())
    n_test = len([p for p in SC_TESTING if p.split("/")[0] in SC09_WORDS])
    assert summary["files"] == n_test and 0 < summary["bits_per_token"] < 9
    lines = proc.stdout.splitlines()
    start = lines.index("| model | parameters | SC09 test bits per sample | where the number comes from |")
    table = [ln for ln in lines[start:] if ln.startswith("| ")]
    ours = next(ln for ln in table if ln.startswith("| Transformer-XL, this run"))
    assert f"**{summary['bits_per_token']:.4f}**" in ours and "measured here" in ours
    for name, bits in (("WaveNet", "1.925"), ("SaShiMi", "1.873"), ("Mamba", "1.852")):
        assert any(ln.startswith(f"| {name} ") and bits in ln and "not measured here" in ln for ln in table)
    meta = json.loads((out / "corpus" / "meta.json").read_text())
    assert meta["source"]["split_by"] == "manifest" and meta["source"]["normalize"] == "minmax"
    assert list((out / "samples").glob("*.wav"))
