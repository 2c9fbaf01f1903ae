"""Writing small files that must survive a power cut whole: keys, certificates, config."""

from __future__ import annotations

import os
from pathlib import Path

from .. import fsio


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` with `mode`: temp file, fsync, rename, fsync the directory.
    Readers see the old content or the new, never half of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = fsio.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[fsio.write(fd, view):]
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            fsio.fsync(fd)
        finally:
            os.close(fd)
        fsio.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full or failing disk keeps no half-written temp file
        raise
    fsio.fsync_dir(path.parent)
