"""A simulated power cut for the file seam (`fieldkit.fsio`), in the manner of SQLite's
crash-test VFS.

`Recorder(root)` is an implementation of the seam: it performs every operation on the real
files (so the kit runs as usual and reads see its writes, as they would see the page cache)
but never calls fsync; instead it logs, per file and per directory, what was written and
what was synced. The workload appends its acknowledgements to the same log. Afterwards
`crash_images()` walks the log once and, at chosen cut points, materialises what a disk
could hold after a power cut there:

- each file: its content as of its last fsync, plus a random subset of the writes made
  since, cut into 512-byte sectors (by file offset). "prefix" cuts keep the sectors in the
  order they were written up to a random point (in-order writeback, torn at a sector);
  "scatter" cuts keep any subset of them, applied in a shuffled order (writeback in any
  order within the sync interval);
- each directory: its entries as of its last fsync, plus a random subset of the entry
  changes (create, rename, unlink, mkdir) made since: a file whose directory was not
  fsynced may vanish, a rename may revert, an unlink may be undone.

Then the test opens the kit on the image and checks what was acknowledged before the cut.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fieldkit import fsio

SECTOR = 512


@dataclass
class _Node:
    is_dir: bool
    durable: object  # bytearray for a file, dict name -> node id for a directory
    pending: list = field(default_factory=list)


class Recorder:
    """The seam, recorded. `install()`/`uninstall()` route `fieldkit.fsio` to it."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.log: list[tuple] = []
        self.baseline: dict[int, _Node] = {}
        self._live: dict[tuple[int, int], int] = {}  # real (st_dev, st_ino) -> node id
        self._next = 0
        self._lock = threading.RLock()
        self.unknown_writes = 0  # writes to files under root created outside the seam
        self.root_id = self._scan(self.root)
        self._previous = None

    # -- setup ---------------------------------------------------------------------------
    def _new_id(self, st: os.stat_result) -> int:
        self._next += 1
        self._live[(st.st_dev, st.st_ino)] = self._next
        return self._next

    def _scan(self, path: Path) -> int:
        """What is on disk when recording starts counts as durable."""
        st = os.lstat(path)
        nid = self._new_id(st)
        if stat.S_ISDIR(st.st_mode):
            self.baseline[nid] = _Node(True, {e.name: self._scan(Path(e.path)) for e in os.scandir(path)})
        else:
            self.baseline[nid] = _Node(False, bytearray(path.read_bytes()))
        return nid

    def install(self) -> "Recorder":
        self._previous = fsio.install(self)
        return self

    def uninstall(self) -> None:
        fsio.install(self._previous)

    def __enter__(self) -> "Recorder":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # -- helpers -------------------------------------------------------------------------
    def _under_root(self, path) -> bool:
        p = os.path.abspath(os.fspath(path))
        return p == str(self.root) or p.startswith(str(self.root) + os.sep)

    def _id_of_path(self, path) -> int | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return self._live.get((st.st_dev, st.st_ino))

    def _id_of_fd(self, fd: int) -> int | None:
        st = os.fstat(fd)
        return self._live.get((st.st_dev, st.st_ino))

    def _parent(self, path) -> tuple[int, str]:
        path = os.path.abspath(os.fspath(path))
        parent = self._id_of_path(os.path.dirname(path))
        if parent is None:
            raise AssertionError(f"{path}: its directory was made outside the file seam")
        return parent, os.path.basename(path)

    def ack(self, key, value) -> None:
        """The workload got a success for `key` (its state is now `value`)."""
        with self._lock:
            self.log.append(("ack", key, value))

    def attempt(self, key, value) -> None:
        """The workload is about to write `key` = `value` (it may land without an ack)."""
        with self._lock:
            self.log.append(("try", key, value))

    # -- the seam ------------------------------------------------------------------------
    def open(self, path, flags, mode=0o777):
        with self._lock:
            if not self._under_root(path):
                return os.open(path, flags, mode)
            existed = os.path.exists(path)
            fd = os.open(path, flags, mode)
            if flags & os.O_CREAT and not existed:
                parent, name = self._parent(path)
                nid = self._new_id(os.fstat(fd))
                self.log.append(("create", parent, name, nid, False))
            elif flags & os.O_TRUNC:
                nid = self._id_of_fd(fd)
                if nid is not None:
                    self.log.append(("trunc", nid, 0))
            return fd

    def close(self, fd):
        os.close(fd)

    def write(self, fd, data):
        with self._lock:
            off = os.lseek(fd, 0, os.SEEK_CUR)
            n = os.write(fd, data)
            self._record_write(fd, off, data, n)
            return n

    def pwrite(self, fd, data, offset):
        with self._lock:
            n = os.pwrite(fd, data, offset)
            self._record_write(fd, offset, data, n)
            return n

    def _record_write(self, fd, off, data, n) -> None:
        nid = self._id_of_fd(fd)
        if nid is None:
            self.unknown_writes += 1
            return
        self.log.append(("write", nid, off, bytes(memoryview(data).cast("B")[:n])))

    def ftruncate(self, fd, size):
        with self._lock:
            os.ftruncate(fd, size)
            nid = self._id_of_fd(fd)
            if nid is not None:
                self.log.append(("trunc", nid, size))

    def fsync(self, fd):
        with self._lock:
            nid = self._id_of_fd(fd)
            if nid is not None:
                self.log.append(("sync", nid))

    fdatasync = fsync

    def fsync_dir(self, path):
        with self._lock:
            nid = self._id_of_path(path)
            if nid is not None:
                self.log.append(("sync", nid))

    def replace(self, src, dst):
        with self._lock:
            if not self._under_root(dst):
                return os.replace(src, dst)
            nid = self._id_of_path(src)
            sp, sname = self._parent(src)
            dp, dname = self._parent(dst)
            os.replace(src, dst)
            self.log.append(("rename", sp, sname, dp, dname, nid))

    def unlink(self, path):
        with self._lock:
            if not self._under_root(path):
                return os.unlink(path)
            parent, name = self._parent(path)
            st = os.lstat(path)
            os.unlink(path)
            self._live.pop((st.st_dev, st.st_ino), None)
            self.log.append(("unlink", parent, name))

    def mkdir(self, path, mode=0o777):
        with self._lock:
            if not self._under_root(path):
                return os.mkdir(path, mode)
            parent, name = self._parent(path)
            os.mkdir(path, mode)
            nid = self._new_id(os.stat(path))
            self.log.append(("create", parent, name, nid, True))

    # -- crash images --------------------------------------------------------------------
    def crash_images(self, cuts, dest: Path, rng: random.Random):
        """For each log position in `cuts` (ascending), materialise a crash image in `dest`
        and yield (position, ImageState). The image is replaced by the next one."""
        model = {nid: _Node(n.is_dir, dict(n.durable) if n.is_dir else bytearray(n.durable))
                 for nid, n in self.baseline.items()}
        acks = Acks()
        cuts = sorted(set(cuts))
        pos = 0
        for cut in cuts:
            while pos < cut:
                _apply(model, acks, self.log[pos])
                pos += 1
            mode = rng.choice(("prefix", "scatter"))
            if dest.exists():
                shutil.rmtree(dest)
            _materialise(model, self.root_id, dest, rng, mode)
            yield cut, ImageState(acks.expected(), mode, model, self.root_id)


class Acks:
    """Per key: the last acknowledged value and the values attempted since (any of which
    may have reached the disk without an acknowledgement)."""

    def __init__(self):
        self._acked: dict = {}
        self._since: dict = {}

    def apply(self, entry) -> None:
        kind, key, value = entry
        if kind == "try":
            self._since.setdefault(key, []).append(value)
        else:
            self._acked[key] = value
            self._since[key] = []

    def expected(self) -> dict:
        """key -> (acknowledged value, allowed newer values)."""
        return {k: (v, list(self._since.get(k, []))) for k, v in self._acked.items()}


@dataclass
class ImageState:
    expected: dict
    mode: str
    model: dict
    root_id: int

    def durable_bytes(self, *parts: str) -> bytes | None:
        """A file's content as of its last fsync (None when its name is not durable)."""
        nid = self.root_id
        for part in parts:
            node = self.model[nid]
            if not node.is_dir or part not in node.durable:
                return None
            nid = node.durable[part]
        return bytes(self.model[nid].durable)


def _apply(model: dict, acks: Acks, entry: tuple) -> None:
    op = entry[0]
    if op in ("ack", "try"):
        acks.apply(entry)
    elif op == "create":
        _, parent, name, nid, is_dir = entry
        model[nid] = _Node(is_dir, {} if is_dir else bytearray())
        model[parent].pending.append(("link", name, nid))
    elif op in ("write", "trunc"):
        model[entry[1]].pending.append(entry)
    elif op == "sync":
        node = model[entry[1]]
        for change in node.pending:
            _change(node, node.durable, change)
        node.pending = []
    elif op == "rename":
        _, sp, sname, dp, dname, nid = entry
        if sp == dp:
            model[sp].pending.append(("rename", sname, dname, nid))
        else:
            model[sp].pending.append(("unlink", sname))
            model[dp].pending.append(("link", dname, nid))
    elif op == "unlink":
        model[entry[1]].pending.append(("unlink", entry[2]))


def _change(node: _Node, target, change: tuple) -> None:
    """Apply one pending change to `target` (a file's bytearray or a directory's dict)."""
    op = change[0]
    if op == "write":
        _, _, off, data = change
        if len(target) < off:
            target.extend(bytes(off - len(target)))
        target[off:off + len(data)] = data
    elif op == "trunc":
        size = change[2]
        del target[size:]
        if len(target) < size:
            target.extend(bytes(size - len(target)))
    elif op == "link":
        target[change[1]] = change[2]
    elif op == "unlink":
        target.pop(change[1], None)
    elif op == "rename":
        _, old, new, nid = change
        if target.get(old) == nid:
            del target[old]
        target[new] = nid


def _sectors(change: tuple) -> list[tuple]:
    """A write cut at 512-byte boundaries of the file (what a disk writes atomically)."""
    if change[0] != "write":
        return [change]
    _, nid, off, data = change
    out, pos = [], 0
    while pos < len(data):
        end = min(len(data), (off + pos) // SECTOR * SECTOR + SECTOR - off)
        out.append(("write", nid, off + pos, data[pos:end]))
        pos = end
    return out


def _materialise(model: dict, nid: int, path: Path, rng: random.Random, mode: str) -> None:
    node = model[nid]
    if node.is_dir:
        entries = dict(node.durable)
        for change in node.pending:
            if rng.random() < 0.5:
                _change(node, entries, change)
        path.mkdir(mode=0o700)
        for name, child in entries.items():
            _materialise(model, child, path / name, rng, mode)
        return
    content = bytearray(node.durable)
    pieces = [p for change in node.pending for p in _sectors(change)]
    if mode == "prefix":
        pieces = pieces[: rng.randint(0, len(pieces))]
    else:
        pieces = [p for p in pieces if rng.random() < 0.5]
        rng.shuffle(pieces)
    for piece in pieces:
        _change(node, content, piece)
    path.write_bytes(content)
    path.chmod(0o600)


def scratch_root() -> Path:
    """Where crash images go: memory when the box has it (they are written by the hundred)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))
