"""Small secret files sealed by the data key: hospital credentials, the kit CA's key.

A sealed file is a magic line then AES-256-GCM (crypto.Sealer, subkey "secrets") bound
to the file's name, so a stolen disk without the data key gives up nothing and a sealed
file cannot be passed off under another name. Values are opened in memory only; a key
that a library wants as a file path is handed over as an in-memory file (`memory_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import fsio
from ..errors import ConfigError
from .crypto import InvalidTag, Sealer, derive_subkey
from .files import write_atomic

MAGIC = b"fieldkit sealed secret 1\n"
SECRETS_DIR = "secrets"


def is_sealed(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except FileNotFoundError:
        return False


class SecretBox:
    """Seals and opens the secret files of one data dir with a subkey of its data key."""

    def __init__(self, data_key: bytes):
        self._sealer = Sealer(derive_subkey(data_key, "secrets"))

    def seal(self, path: Path, value: bytes) -> None:
        """Write `value` sealed to `path` (owner-only, atomic). A plaintext file it replaces
        is overwritten after the rename (through a descriptor opened before it), so a power
        cut leaves the old file or the sealed one, and the old bytes do not stay on disk."""
        path = Path(path)
        old = None
        if path.is_file() and not is_sealed(path):
            old = fsio.open(path, os.O_WRONLY)
        try:
            fsio.makedirs(path.parent, 0o700)
            write_atomic(path, MAGIC + self._sealer.seal(value, path.name.encode()), 0o600)
            if old is not None:
                _overwrite(old)
        finally:
            if old is not None:
                os.close(old)

    def open(self, path: Path) -> bytes:
        """The value of a sealed file. Raises ConfigError when it was changed or is not ours."""
        path = Path(path)
        blob = path.read_bytes()
        if not blob.startswith(MAGIC):
            raise ConfigError(f"{path} is not a sealed secret")
        try:
            return self._sealer.open(blob[len(MAGIC):], path.name.encode())
        except InvalidTag:
            raise ConfigError(f"{path} does not open with this kit's data key (damaged, renamed, "
                              "or from another kit): set the secret again") from None

    def read(self, path: Path) -> bytes:
        """A sealed file's value, or a plaintext file's bytes (one the kit has not sealed yet,
        or that the operator keeps outside the data dir)."""
        return self.open(path) if is_sealed(path) else Path(path).read_bytes()


def _overwrite(fd: int) -> None:
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    fsio.write_all(fd, os.urandom(max(size, 64)))
    fsio.fsync(fd)


def shred(path: Path) -> bool:
    """Overwrite a file with random bytes, sync, unlink. Returns False if it did not exist.
    (On flash storage old blocks may survive an overwrite: that is why secrets are sealed.)"""
    path = Path(path)
    try:
        fd = fsio.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        _overwrite(fd)
    finally:
        os.close(fd)
    fsio.unlink(path)
    return True


class MemoryFile:
    """An anonymous in-memory file (memfd: never on a disk) holding a secret, for libraries
    that load keys only from a path (ssl's load_cert_chain). `path` opens it from this
    process while the object lives; closed when it is garbage or on close()."""

    def __init__(self, data: bytes):
        self._fd = os.memfd_create("fieldkit-secret", os.MFD_CLOEXEC)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.path = f"/proc/self/fd/{self._fd}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


def within(data_dir: Path, path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(data_dir).resolve())
        return True
    except ValueError:
        return False
