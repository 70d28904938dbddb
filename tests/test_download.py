"""txl_audio.download against a loopback HTTP server: resume after a dropped connection and after a
killed run, checksums refused before anything is unpacked, hand-placed files, a killed extraction,
and the one-line errors (no network, wrong checksum, disk full, a folder that is not writable)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from _loopback import LoopbackServer, closed_port_url

from txl_audio.download import (
    MARKER,
    ChecksumError,
    DiskFullError,
    DownloadError,
    NetworkError,
    NotWritableError,
    RemoteFile,
    cache_dir,
    fetch,
    unpack,
)

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # several read chunks


@pytest.fixture(autouse=True)
def _no_retry_pause(monkeypatch):
    monkeypatch.setenv("TXL_DOWNLOAD_RETRY_PAUSE", "0")


def _remote(url: str, data: bytes = PAYLOAD, name: str = "blob.bin", **kw) -> RemoteFile:
    return RemoteFile(name, (url,), len(data), kw.get("sha256", hashlib.sha256(data).hexdigest()),
                      kw.get("md5"))


def test_download_verifies_and_a_second_fetch_downloads_nothing(tmp_path):
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        f = _remote(srv.url("/blob.bin"))
        path, fetched = fetch(f, tmp_path, progress=False)
        assert fetched and path.read_bytes() == PAYLOAD and not (tmp_path / "blob.bin.part").exists()
        path2, fetched2 = fetch(f, tmp_path, progress=False)
        assert path2 == path and not fetched2
        assert len(srv.requests) == 1  # the second call used the verified file


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path):
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        srv.drops["/blob.bin"] = [1_000_000, 500_000]  # two breaks, then the rest
        path, _ = fetch(_remote(srv.url("/blob.bin")), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD
        assert [r for _, r in srv.requests] == [None, "bytes=1000000-", "bytes=1500000-"]


def test_a_partial_file_left_by_a_killed_run_is_continued(tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:2_000_000])
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        path, fetched = fetch(_remote(srv.url("/blob.bin")), tmp_path, progress=False)
        assert fetched and path.read_bytes() == PAYLOAD
        assert srv.requests == [("/blob.bin", "bytes=2000000-")]


def test_a_server_that_ignores_range_gets_the_file_from_the_start(tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # garbage that must not stay in front
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        srv.ranges = False
        path, _ = fetch(_remote(srv.url("/blob.bin")), tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD


def test_a_mirror_is_tried_when_the_first_url_fails(tmp_path):
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        f = RemoteFile("blob.bin", (srv.url("/missing"), srv.url("/blob.bin")), len(PAYLOAD),
                       hashlib.sha256(PAYLOAD).hexdigest())
        path, _ = fetch(f, tmp_path, progress=False)
        assert path.read_bytes() == PAYLOAD


def test_a_wrong_checksum_is_refused_kept_as_bad_and_nothing_unpacked(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("corpus/a.txt", "hello")
    data = buf.getvalue()
    wrong = "0" * 64
    with LoopbackServer() as srv:
        srv.files["/c.zip"] = data
        f = _remote(srv.url("/c.zip"), data, "c.zip", sha256=wrong)
        with pytest.raises(ChecksumError) as e:
            path, _ = fetch(f, tmp_path / "downloads", progress=False)
            unpack([path], tmp_path / "c", {}, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and wrong in msg and hashlib.sha256(data).hexdigest() in msg
    assert (tmp_path / "downloads" / "c.zip.bad").read_bytes() == data
    assert not (tmp_path / "downloads" / "c.zip").exists() and not (tmp_path / "c").exists()


def test_the_md5_is_checked_where_only_an_md5_is_published(tmp_path):
    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        good = RemoteFile("blob.bin", (srv.url("/blob.bin"),), None, None, hashlib.md5(PAYLOAD).hexdigest())
        assert fetch(good, tmp_path / "a", progress=False)[0].read_bytes() == PAYLOAD
        bad = RemoteFile("blob.bin", (srv.url("/blob.bin"),), None, None, "f" * 32)
        with pytest.raises(ChecksumError, match="MD5"):
            fetch(bad, tmp_path / "b", progress=False)


def test_a_file_placed_by_hand_is_verified_and_used_without_network(tmp_path):
    f = _remote(closed_port_url("/blob.bin"))
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    path, fetched = fetch(f, tmp_path, progress=False)
    assert not fetched and path.read_bytes() == PAYLOAD
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "blob.bin").write_bytes(PAYLOAD[:-1] + b"!")  # same size, wrong bytes
    with pytest.raises(ChecksumError, match="kept as"):
        fetch(f, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "blob.bin.bad").exists() and not (tmp_path / "other" / "blob.bin").exists()


def test_no_network_names_the_url_and_where_to_put_the_file(tmp_path):
    url = closed_port_url("/speech.tar.gz")
    with pytest.raises(NetworkError) as e:
        fetch(_remote(url, name="speech.tar.gz"), tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and str(tmp_path / "speech.tar.gz") in msg


def test_a_folder_that_is_not_writable_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotWritableError, match="not writable") as e:
        fetch(_remote(closed_port_url()), tmp_path / "file" / "sub", progress=False)
    assert "\n" not in str(e.value) and "--to" in str(e.value)


def test_disk_full_before_and_during_the_download(tmp_path, monkeypatch):
    import shutil

    import txl_audio.download as d

    with LoopbackServer() as srv:
        srv.files["/blob.bin"] = PAYLOAD
        f = _remote(srv.url("/blob.bin"))
        real = shutil.disk_usage
        monkeypatch.setattr(d.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
        with pytest.raises(DiskFullError, match="only"):
            fetch(f, tmp_path / "a", progress=False)
        assert srv.requests == []  # refused before connecting
        monkeypatch.setattr(d.shutil, "disk_usage", real)
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full to fill")
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "blob.bin.part").symlink_to("/dev/full")  # every write: ENOSPC
        with pytest.raises(DiskFullError, match="disk full while writing") as e:
            fetch(f, tmp_path / "b", progress=False)
        assert "\n" not in str(e.value)


def test_cache_folder_order(monkeypatch, tmp_path):
    monkeypatch.delenv("TXL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "txl_audio"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "txl_audio"
    monkeypatch.setenv("TXL_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "data" and cache_dir(tmp_path / "to") == tmp_path / "to"


def _tar_with_files(path: Path, n: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(n):
            data = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"top/f{i:03d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_killed_extraction_leaves_no_folder_and_the_next_run_cleans_up(tmp_path):
    archive = _tar_with_files(tmp_path / "a.tar.gz", 20)
    dest = tmp_path / "corpus"
    script = (
        "import os, signal, sys\nfrom pathlib import Path\nimport txl_audio.download as d\n"
        "count = [0]\norig = d._extract_member\n"
        "def killing(tar, member, dest):\n"
        "    count[0] += 1\n"
        "    if count[0] == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    orig(tar, member, dest)\n"
        "d._extract_member = killing\n"
        "d.unpack([Path(sys.argv[1])], Path(sys.argv[2]), {}, progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(archive), str(dest)], cwd=ROOT, timeout=120)
    assert proc.returncode == -9  # SIGKILL: no handler ran
    assert not dest.exists()
    assert len(list(tmp_path.glob(".corpus.tmp-*"))) == 1  # what the killed run left, under a hidden name
    unpack([archive], dest, {"name": "x"}, progress=False, expect=["top/f019.txt"])
    assert (dest / MARKER).is_file() and len(list((dest / "top").iterdir())) == 20
    assert not list(tmp_path.glob(".corpus.tmp-*"))


def test_an_interrupted_extraction_removes_its_temporary_folder(tmp_path, monkeypatch):
    import txl_audio.download as d

    archive = _tar_with_files(tmp_path / "a.tar.gz", 5)

    def boom(tar, member, dest):
        raise KeyboardInterrupt

    monkeypatch.setattr(d, "_extract_member", boom)
    with pytest.raises(KeyboardInterrupt):
        unpack([archive], tmp_path / "corpus", {}, progress=False)
    assert not (tmp_path / "corpus").exists() and not list(tmp_path.glob(".corpus.tmp-*"))


def test_unpack_refuses_a_foreign_folder_a_wrong_layout_and_escaping_members(tmp_path):
    archive = _tar_with_files(tmp_path / "a.tar.gz", 2)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DownloadError, match="was not unpacked by"):
        unpack([archive], tmp_path / "mine", {}, progress=False)
    with pytest.raises(DownloadError, match="not the layout expected"):
        unpack([archive], tmp_path / "c", {}, progress=False, expect=["validation_list.txt"])
    assert not (tmp_path / "c").exists()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match="outside the folder"):
        unpack([evil], tmp_path / "e", {}, progress=False)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "e").exists()
