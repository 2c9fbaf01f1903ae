"""The file seam: every durable write of the kit goes through these functions.

In production they are the plain `os` calls (bound directly: no wrapper, no cost). A test
can `install()` another implementation with the same names (a recorder that simulates a
power cut) and every caller sees it at once, because callers look the functions up here at
call time (`fsio.fsync(fd)`, never `from fieldkit.fsio import fsync`). Reads stay direct.
"""

from __future__ import annotations

import os

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


class OsFiles:
    """The production implementation, as an object (what `install()` puts back)."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    write = staticmethod(os.write)
    pwrite = staticmethod(os.pwrite)
    ftruncate = staticmethod(os.ftruncate)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    fsync_dir = staticmethod(fsync_dir)


def install(impl) -> object:
    """Route every seam function to `impl` (an object with the NAMES); returns the one it
    replaces, so that `install(previous)` restores it."""
    previous = current()
    globals().update({name: getattr(impl, name) for name in NAMES})
    return previous


def current():
    """The implementation in use, as an object with the NAMES."""
    impl = type("Files", (), {})()
    for name in NAMES:
        setattr(impl, name, globals()[name])
    return impl


def write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[write(fd, view):]


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


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
