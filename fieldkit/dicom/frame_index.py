"""Where each frame of an encapsulated instance lies in its stored file (PS3.5 A.4).

A viewer scrolling a long cine asks for one frame at a time. With the frames' places known,
a request reads only the bytes of the frames asked for; over the store's sealed 1 MiB
chunks that means decrypting one or two chunks instead of the whole instance. The index is
made on first use by reading the item headers (tag and length, 8 bytes each) and is kept in
memory only, never at rest.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from typing import BinaryIO, Callable

import pydicom

_PIXEL_DATA_HEAD = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"

Span = tuple[int, int]  # (offset in the file, length) of one fragment's bytes


def frame_spans(fh: BinaryIO, number_of_frames: int) -> list[list[Span]] | None:
    """For each frame, the fragments that hold it; None when the layout cannot be told from
    the item headers alone (several fragments per frame and no offset table): the caller
    then reads the pixel data as a whole, as before."""
    ds = pydicom.dcmread(fh, stop_before_pixels=True)
    if fh.read(len(_PIXEL_DATA_HEAD)) != _PIXEL_DATA_HEAD:
        return None  # native pixels, or not where the header said
    basic = _item(fh)
    if basic is None:
        return None
    bot_offset, bot_length = basic
    fh.seek(bot_offset)
    table = fh.read(bot_length)
    offsets = list(struct.unpack(f"<{bot_length // 4}L", table[: bot_length // 4 * 4])) if bot_length else []
    first = fh.tell()  # offsets in either table count from the first fragment's item tag
    fragments: list[tuple[int, Span]] = []
    while (item := _item(fh)) is not None:
        fragments.append((item[0] - 8 - first, item))
        fh.seek(item[0] + item[1])
    if not fragments:
        return None
    if "ExtendedOffsetTable" in ds:
        table = ds.ExtendedOffsetTable
        offsets = list(struct.unpack(f"<{len(table) // 8}Q", table))
    if number_of_frames <= 1:
        return [[span for _, span in fragments]]
    if len(fragments) == number_of_frames:
        return [[span] for _, span in fragments]
    if len(offsets) != number_of_frames or offsets != sorted(offsets):
        return None
    bounds = offsets + [float("inf")]
    return [[span for at, span in fragments if bounds[k] <= at < bounds[k + 1]] for k in range(number_of_frames)]


def _item(fh: BinaryIO) -> Span | None:
    """The next item's value (offset, length), None at the sequence end or the file's end."""
    head = fh.read(8)
    if len(head) < 8 or head[:4] == _SEQUENCE_END or head[:4] != _ITEM:
        return None
    (length,) = struct.unpack("<L", head[4:])
    if length == 0xFFFFFFFF:
        return None
    return fh.tell(), length


class FrameIndexCache:
    """The spans of the instances read lately, by blob address (content-addressed: an
    address always names the same bytes, so an entry never goes stale)."""

    def __init__(self, size: int = 256):
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list[list[Span]] | None] = OrderedDict()

    def get(self, addr: str, build: Callable[[], list[list[Span]] | None]) -> list[list[Span]] | None:
        with self._lock:
            if addr in self._entries:
                self._entries.move_to_end(addr)
                return self._entries[addr]
        spans = build()
        with self._lock:
            self._entries[addr] = spans
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return spans
