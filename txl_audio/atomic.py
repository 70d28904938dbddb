"""Files written through a temporary name beside their final one, renamed into place when complete
(a kill or a failure leaves nothing partial under the name)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (renamed onto it when complete) with the permissions a plain
    ``open`` would give it (0666 less the umask), not mkstemp's 0600: a compressed file, a WAV or a
    checkpoint must be readable by whoever could read the folder, as flac's outputs are."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.fchmod(fd, 0o666 & ~mask)
    except OSError:  # a file system without modes (some network mounts): keep mkstemp's
        pass
    return fd, tmp
