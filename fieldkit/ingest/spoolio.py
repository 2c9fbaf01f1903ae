"""A seekable, read-only file over an encrypted spool, for readers that need to seek
(zipfile reads the central directory at the end first). The spool is decrypted chunk by
chunk on demand; nothing is written in clear and at most two chunks sit in memory."""

from __future__ import annotations

import io


class SpoolReader(io.RawIOBase):
    def __init__(self, spool):
        self._spool = spool
        self._size = spool.size
        self._pos = 0
        self._iter = None
        self._next_index = 0     # index of the chunk the iterator yields next
        self._cache: dict[int, bytes] = {}
        self._chunk_size: int | None = None

    @property
    def name(self) -> str:  # readers (pydicom) ask; there is no file name to give
        return "<encrypted spool>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if index in self._cache:
            return self._cache[index]
        if self._iter is None or index < self._next_index:
            self._iter = iter(self._spool.chunks())
            self._next_index = 0
        data = b""
        while self._next_index <= index:
            data = next(self._iter, b"")
            if self._chunk_size is None and data:
                self._chunk_size = len(data)
            self._next_index += 1
        if len(self._cache) >= 2:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = data
        return data

    def readinto(self, b) -> int:
        if self._pos >= self._size:
            return 0
        if self._chunk_size is None:
            self._chunk(0)
        size = self._chunk_size or self._size
        index, within = divmod(self._pos, size)
        data = self._chunk(index)[within: within + len(b)]
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_reader(spool) -> io.BufferedReader:
    """A buffered reader over the spool: read(n) returns n bytes unless the end came first
    (the raw reader may return less, at a chunk boundary)."""
    return io.BufferedReader(SpoolReader(spool), buffer_size=1 << 20)


class PartBuffer:
    """Where one received part goes: memory while it is small, an encrypted spool once it
    passes `threshold` bytes (a cine). Either way nothing is written to disk in clear.
    Offers what readers of a spool use: write, size, chunks, read_all, close."""

    def __init__(self, open_spool, threshold: int = 4 << 20):
        self._open_spool = open_spool
        self._threshold = threshold
        self._parts: list[bytes] = []
        self._spool = None
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        if self._spool is not None:
            return self._spool.write(data)
        self._parts.append(bytes(data))
        if self.size > self._threshold:
            self._spool = self._open_spool()
            for part in self._parts:
                self._spool.write(part)
            self._parts = []
        return len(data)

    def chunks(self):
        if self._spool is not None:
            return self._spool.chunks()
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return iter(self._parts[:1] or [b""])

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._parts = []
