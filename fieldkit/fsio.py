"""The file seam: every durable write of the kit goes through these functions.

In production they are the plain `os` calls (bound directly: no wrapper, no cost). A test
can `install()` another implementation with the same names (a recorder that simulates a
power cut) and every caller sees it at once, because callers look the functions up here at
call time (`fsio.fsync(fd)`, never `from fieldkit.fsio import fsync`). Reads stay direct.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NAMES = ("open", "close", "write", "pwrite", "ftruncate", "fsync", "fdatasync", "replace",
         "unlink", "mkdir", "fsync_dir")

open = os.open
close = os.close
write = os.write
pwrite = os.pwrite
ftruncate = os.ftruncate
fsync = os.fsync
fdatasync = os.fdatasync
replace = os.replace
unlink = os.unlink
mkdir = os.mkdir


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
