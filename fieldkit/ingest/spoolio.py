"""Where a received part goes (memory while small, an encrypted spool once large). The
seekable reader over a spool is the store's (`fieldkit.store.blobs.open_reader`)."""

from __future__ import annotations


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

    @property
    def in_memory(self) -> bool:
        return self._spool is None

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
