"""The file seam: every durable write of the kit goes through these functions.

In production they are the plain `os` calls. A test can `install()` another
implementation with the same names (a recorder that simulates a power cut) and every caller
sees it at once, because callers look the functions up here at call time (`fsio.fsync(fd)`,
never `from fieldkit.fsio import fsync`). Reads stay direct.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NAMES = ("open", "close", "write", "pwrite", "ftruncate", "fsync", "fdatasync", "replace",
         "unlink", "mkdir", "fsync_dir")

# Production: the os calls, looked up when called, so that a test which patches `os` (an
# injected ENOSPC) still reaches them; a Python call costs ~0.1 us against a syscall's µs.
def open(path, flags, mode=0o777):
    return os.open(path, flags, mode)


def close(fd):
    return os.close(fd)


def write(fd, data):
    return os.write(fd, data)


def pwrite(fd, data, offset):
    return os.pwrite(fd, data, offset)


def ftruncate(fd, size):
    return os.ftruncate(fd, size)


def fsync(fd):
    return os.fsync(fd)


def fdatasync(fd):
    return os.fdatasync(fd)


def replace(src, dst):
    return os.replace(src, dst)


def unlink(path):
    return os.unlink(path)


def mkdir(path, mode=0o777):
    return os.mkdir(path, mode)


def fsync_dir(path) -> None:
    """Make a directory's entries (new, renamed, removed files) durable."""
    fd = open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        close(fd)


def install(impl) -> object:
    """Route every seam function to `impl` (an object with the NAMES); returns the one it
    replaces, so that `install(previous)` restores it."""
    previous = current()
    globals().update({name: getattr(impl, name) for name in NAMES})
    return previous


def current() -> SimpleNamespace:
    """The implementation in use, as an object with the NAMES."""
    return SimpleNamespace(**{name: globals()[name] for name in NAMES})


def write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[write(fd, view):]


def makedirs(path, mode: int = 0o777) -> None:
    """`os.makedirs(path, mode, exist_ok=True)` through the seam; a directory it creates is
    durable when it returns (its parent is fsynced), so files made in it later cannot
    vanish with it in a power cut."""
    path = os.fspath(path)
    parent = os.path.dirname(path.rstrip(os.sep)) or "."
    if parent != path and not os.path.isdir(parent):
        makedirs(parent, mode)
    try:
        mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    fsync_dir(parent)
