"""Fetching a file over HTTP and unpacking it, safely: the machinery behind :mod:`txl_audio.datasets`.

- :func:`fetch` downloads into ``NAME.part`` and resumes it with an HTTP Range request after an
  interruption (within one call, a dropped connection is retried from where it stopped; across calls,
  the ``.part`` file is continued), shows a tqdm bar, and checks the size and checksum before the file
  gets its real name. A file already at that name (downloaded earlier, or put there by hand on a
  machine without internet) is verified and used; a file whose checksum does not match is renamed
  ``NAME.bad`` and never used.
- :func:`unpack` extracts a .tar.gz/.tar.bz2/.zip (or copies a plain file) into a hidden temporary
  folder beside the destination and renames it at the end, with a marker file inside, so a killed
  extraction never leaves a half-made folder under the real name (its leftovers are removed next time).

Every failure is one line naming the URL or path and what to do: :class:`NetworkError` (no network:
which URL, where to put the file by hand), :class:`ChecksumError` (expected and got),
:class:`DiskFullError`, :class:`NotWritableError`; all are :class:`DownloadError`, a
:class:`~txl_audio.errors.TxlAudioError`. Standard library plus tqdm only.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from txl_audio import __version__
from txl_audio.errors import TxlAudioError

CHUNK = 1 << 20  # bytes per read and per hash update
MARKER = ".txl_audio_complete.json"  # inside an unpacked folder: it was unpacked whole, from what
_TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
_ATTEMPTS = 5  # connections per URL (each resuming the last) before trying the next URL


class DownloadError(TxlAudioError, RuntimeError):
    """A file could not be fetched, verified or unpacked; the message says which and what to do."""


class NetworkError(DownloadError):
    """No URL of a file could be reached (no network, server down, HTTP error)."""


class ChecksumError(DownloadError, ValueError):
    """A downloaded (or hand-placed) file does not have the published checksum or size."""


class DiskFullError(DownloadError, OSError):
    """Not enough free space to download or unpack."""


class NotWritableError(DownloadError, PermissionError):
    """The download folder cannot be created or written."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its name on disk, where it can be found (tried in order), its size in bytes
    and its checksum (SHA-256, or MD5 where that is all that is published; both when both are)."""

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"{self.name}: no URL")
        if not (self.sha256 or self.md5):
            raise ValueError(f"{self.name}: a file needs a SHA-256 or MD5 checksum")


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Where downloads go: ``explicit`` (``--to``), else ``$TXL_DATA``, else
    ``$XDG_CACHE_HOME/txl_audio``, else ``~/.cache/txl_audio``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("TXL_DATA"):
        return Path(os.environ["TXL_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "txl_audio"


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and check a file can be written there (NotWritableError if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".txl_audio_write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left in {folder}; free some or choose another folder "
                                "(--to DIR or TXL_DATA=DIR)") from None
        raise NotWritableError(f"{folder} is not writable ({e.strerror or e}); choose another folder "
                               "with --to DIR or TXL_DATA=DIR") from None
    return folder


# --------------------------------------------------------------------------------------------
# checksums


def file_digests(path: Path, algorithms: Sequence[str], progress: bool = False) -> dict[str, str]:
    """Hex digests of ``path`` for each hashlib algorithm name, in one streamed pass."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    size = path.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"verify {path.name}",
               disable=None if (progress and size > 256 * CHUNK) else True, leave=False)
    with bar, open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hashes.values():
                h.update(block)
            bar.update(len(block))
    return {a: h.hexdigest() for a, h in hashes.items()}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_matches(path: Path, expected: dict[str, str]) -> bool:
    # a file verified before and unchanged since (same size and mtime) is not hashed again: a 23 GB
    # archive takes minutes to hash
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns
            and all(stamp.get(a) == d for a, d in expected.items()))


def verify(path: Path, file: RemoteFile, progress: bool = True) -> None:
    """Check ``path`` against ``file``'s size and checksums; on a mismatch rename it ``NAME.bad``
    (replacing an older one) and raise ChecksumError with the expected and actual values."""
    expected = {a: d.lower() for a, d in (("sha256", file.sha256), ("md5", file.md5)) if d}
    if _stamp_matches(path, expected):
        return
    size = path.stat().st_size
    problem = None
    if file.size is not None and size != file.size:
        problem = f"has {size:,} bytes, expected {file.size:,}"
    else:
        got = file_digests(path, list(expected), progress)
        for a, d in expected.items():
            if got[a] != d:
                problem = f"{a.upper().replace('SHA', 'SHA-')} is {got[a]}, expected {d}"
                break
    if problem is None:
        st = path.stat()
        _stamp_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, **expected}))
        return
    bad = path.with_name(file.name + ".bad")
    os.replace(path, bad)
    raise ChecksumError(f"{file.name} {problem} (source {file.urls[0]}); kept as {bad} and not used: "
                        f"delete it and download again, or get the file from another mirror")


# --------------------------------------------------------------------------------------------
# HTTP with resume


class _Dropped(Exception):
    """The connection ended before the whole file came (retry with a Range request)."""


def _open(url: str, offset: int):
    headers = {"User-Agent": f"txl_audio/{__version__} (+urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT)


def _write_chunk(out, block: bytes, part: Path, total: int | None) -> None:
    try:
        out.write(block)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while writing {part} ({part.stat().st_size:,} of "
                                f"{total:,} bytes); free space in {part.parent} or choose another folder "
                                "(--to DIR or TXL_DATA=DIR); the download resumes from there"
                                if total else f"disk full while writing {part}; free space in "
                                f"{part.parent} or choose another folder (--to DIR or TXL_DATA=DIR)"
                                ) from None
        raise


def _transfer(url: str, part: Path, size: int | None, bar: tqdm) -> None:
    """One connection: append to ``part`` from its current length (Range request); raise _Dropped when
    the connection ends early, NetworkError-worthy exceptions as they come."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return
    if size is not None and offset > size:  # a stale .part longer than the file: start again
        part.unlink()
        offset = 0
    try:
        resp = _open(url, offset)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range not satisfiable: the .part is complete or stale
            e.close()
            if size is None:
                return
            part.unlink()
            raise _Dropped("stale partial file") from None
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if offset and status != 206:  # the server ignored the Range header: start from zero
            offset = 0
            bar.reset(total=bar.total)
        length = resp.headers.get("Content-Length")
        expected_end = offset + int(length) if length is not None else size
        if bar.total is None and expected_end is not None:
            bar.total = expected_end
        bar.n = offset
        bar.refresh()
        with open(part, "ab" if offset else "wb") as out:  # offset is the .part's length
            received = offset
            while True:
                try:
                    block = resp.read(CHUNK)
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
                    raise _Dropped(str(e) or type(e).__name__) from None
                if not block:
                    break
                _write_chunk(out, block, part, size)
                received += len(block)
                bar.update(len(block))
    if expected_end is not None and received < expected_end:
        raise _Dropped(f"connection closed after {received:,} of {expected_end:,} bytes")


def _download(file: RemoteFile, part: Path, target: Path, progress: bool) -> str:
    """Fetch ``file`` into ``part`` from its first URL that works; returns the URL used."""
    errors = []
    bar = tqdm(total=file.size, unit="B", unit_scale=True, unit_divisor=1024, desc=file.name,
               disable=None if progress else True)
    with bar:
        for url in file.urls:
            attempt = 0
            while True:
                attempt += 1
                try:
                    _transfer(url, part, file.size, bar)
                    return url
                except _Dropped as e:
                    if attempt >= _ATTEMPTS:
                        errors.append(f"{url}: {e} ({attempt} attempts)")
                        break
                    time.sleep(min(2.0 ** (attempt - 1), 10.0) * _retry_pause_scale())
                except DownloadError:
                    raise
                except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                    reason = getattr(e, "reason", None) or e
                    if isinstance(e, urllib.error.HTTPError):
                        reason = f"HTTP {e.code} {e.reason}"
                    errors.append(f"{url}: {reason}")
                    break
    have = f" ({part.stat().st_size:,} bytes kept in {part}, resumed next time)" if part.exists() and \
        part.stat().st_size else ""
    raise NetworkError(f"cannot download {file.name}: {errors[0]}"
                       + (f" (and {len(errors) - 1} mirror(s) more)" if len(errors) > 1 else "")
                       + f"{have}; without internet, fetch {file.urls[0]} elsewhere and put it at {target}")


def _retry_pause_scale() -> float:
    # tests set TXL_DOWNLOAD_RETRY_PAUSE=0 to retry at once
    try:
        return float(os.environ.get("TXL_DOWNLOAD_RETRY_PAUSE", "1"))
    except ValueError:
        return 1.0


def fetch(file: RemoteFile, folder: Path, progress: bool = True) -> tuple[Path, bool]:
    """``folder/file.name``, verified: a file already there is checked and used, else it is downloaded
    (resuming a ``.part`` left by an earlier try). Returns (path, whether anything was downloaded)."""
    ensure_writable(folder)
    target = folder / file.name
    if target.is_file():
        verify(target, file, progress)
        return target, False
    part = folder / (file.name + ".part")
    if file.size is not None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(folder).free
        if file.size - have > free:
            raise DiskFullError(f"{file.name} needs {_gb(file.size - have)} more in {folder}, only "
                                f"{_gb(free)} free; free space or choose another folder "
                                "(--to DIR or TXL_DATA=DIR)")
    _download(file, part, target, progress)
    verify(part, file, progress)  # a bad one becomes NAME.bad
    os.replace(part, target)  # keeps size and mtime, so the stamp stays valid
    os.replace(_stamp_path(part), _stamp_path(target))
    return target, True


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------------------------
# unpacking


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        bar = tqdm(total=len(members), unit="file", desc=f"unpack {archive.name}",
                   disable=None if progress else True)
        with bar:
            for m in members:
                if not _safe_member(m.name) or (m.islnk() or m.issym()) and not _safe_member(
                        str(PurePosixPath(m.name).parent / m.linkname)):
                    raise DownloadError(f"{archive}: member {m.name!r} would land outside the folder; "
                                        "refusing to unpack it")
                _extract_member(tar, m, dest)
                bar.update(1)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extract(member, dest, filter="data")
    else:  # pragma: no cover - Python < 3.10.12 / 3.11.4: members were checked by _safe_member
        tar.extract(member, dest)


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        bar = tqdm(total=sum(i.file_size for i in infos), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"unpack {archive.name}", disable=None if progress else True)
        with bar:
            for info in infos:
                if not _safe_member(info.filename):
                    raise DownloadError(f"{archive}: member {info.filename!r} would land outside the "
                                        "folder; refusing to unpack it")
                zf.extract(info, dest)
                bar.update(info.file_size)


def archive_kind(name: str) -> str:
    """"tar", "zip" or "file" (copied as it is) from a file name."""
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return "file"


def is_unpacked(dest: Path) -> bool:
    """Whether ``dest`` is a folder that :func:`unpack` finished."""
    return (dest / MARKER).is_file()


def remove_stale(dest: Path) -> None:
    """Remove what killed unpacks of ``dest`` left (``.NAME.tmp-*`` beside it)."""
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def unpack(archives: Sequence[Path], dest: Path, info: dict, progress: bool = True,
           expect: Sequence[str] = ()) -> Path:
    """Extract ``archives`` (tar / zip; other files are copied) into ``dest`` through a temporary
    folder renamed at the end, with a marker holding ``info``; every relative path in ``expect`` must
    be there (the corpus's layout) or nothing is kept. Skipped when ``dest`` is already a finished
    unpack; an existing ``dest`` that is not one is an error (nothing is overwritten)."""
    if is_unpacked(dest):
        return dest
    if dest.exists():
        raise DownloadError(f"{dest} exists but was not unpacked by txl-audio download (no {MARKER} "
                            "inside); move it away or delete it, or pass that folder to the recipe directly")
    ensure_writable(dest.parent)
    remove_stale(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        for archive in archives:
            kind = archive_kind(archive.name)
            if kind == "tar":
                _extract_tar(archive, tmp, progress)
            elif kind == "zip":
                _extract_zip(archive, tmp, progress)
            else:
                shutil.copyfile(archive, tmp / archive.name)
        missing = [e for e in expect if not (tmp / e).exists()]
        if missing:
            raise DownloadError(f"{', '.join(a.name for a in archives)} unpacked without {missing[0]}: "
                                f"not the layout expected for {dest.name}; nothing was kept")
        (tmp / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while unpacking into {dest.parent}; free space or choose "
                                "another folder (--to DIR or TXL_DATA=DIR)") from None
        if isinstance(e, (tarfile.TarError, zipfile.BadZipFile, EOFError)):
            raise DownloadError(f"{archive} cannot be unpacked ({e}); delete it and download again") from None
        if isinstance(e, OSError) and not isinstance(e, DownloadError):
            raise DownloadError(f"cannot unpack into {dest}: {e}") from None
        raise
    return dest
