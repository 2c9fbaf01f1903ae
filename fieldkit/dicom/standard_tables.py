"""highdicom's table of every module's attributes, held compactly.

highdicom answers "is this attribute in that IOD?" and "which attributes does this module
copy?" from one table of the whole standard (436 modules, 99 740 attributes), parsed from a
22 MB JSON file the first time a report is built and then kept for the life of the process:
68 MB of small Python objects, a quarter of the kit's resident memory, for the handful of
modules an SR and its evidence use. `install()` gives highdicom the same table as one
compressed JSON text per module, decoded when asked for and the most recent kept decoded:
about 2 MB in all, and the same answers (tests/test_standard_tables.py compares every module).
"""

from __future__ import annotations

import json
import pkgutil
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping

TABLE_FILE = "_standard/module_attribute_map.json"
KEEP_DECODED = 32  # modules held decoded: an SR and its evidence use about 20


class ModuleTable(Mapping):
    """module key -> list of {"keyword", "path", "type"}, as highdicom's own table."""

    def __init__(self, packed: dict[str, bytes]):
        self._packed = packed
        self._decoded: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()  # reports are built on the inference and sync threads

    @classmethod
    def from_json(cls, text: str) -> "ModuleTable":
        """Packed from the table's JSON text one module at a time, so that no more than one
        module is ever held parsed (parsing it whole would leave its 68 MB in the arenas the
        packed modules are allocated among)."""
        try:
            return cls(_pack(text))
        except IndexError:
            raise ValueError("highdicom's module table ends early") from None

    def __getitem__(self, key: str) -> list:
        with self._lock:
            attrs = self._decoded.get(key)
            if attrs is not None:
                self._decoded.move_to_end(key)
                return attrs
        attrs = json.loads(zlib.decompress(self._packed[key]))  # KeyError as highdicom's dict
        with self._lock:
            attrs = self._decoded.setdefault(key, attrs)
            while len(self._decoded) > KEEP_DECODED:
                self._decoded.popitem(last=False)
        return attrs

    def __contains__(self, key: object) -> bool:
        return key in self._packed

    def __iter__(self):
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def packed_bytes(self) -> int:
        return sum(len(v) for v in self._packed.values())


def _pack(text: str) -> dict[str, bytes]:
    decoder = json.JSONDecoder()
    packed: dict[str, bytes] = {}
    at = _skip(text, 0, "{")
    while text[at] != "}":
        key, at = decoder.raw_decode(text, at)
        start = _skip(text, at, ":")
        attrs, at = decoder.raw_decode(text, start)
        if not isinstance(key, str) or not isinstance(attrs, list):
            raise ValueError(f"highdicom's module table is not keyed lists at offset {start}")
        packed[key] = zlib.compress(text[start:at].encode(), 6)
        del attrs
        at = _skip(text, at, ",") if text[_skip(text, at)] == "," else _skip(text, at)
    return packed


def _skip(text: str, at: int, sep: str = "") -> int:
    """Position after the whitespace at `at`, and after `sep` and the whitespace after it."""
    while text[at].isspace():
        at += 1
    if sep:
        if text[at] != sep:
            raise ValueError(f"highdicom's module table: {sep!r} expected at offset {at}")
        at = _skip(text, at + 1)
    return at


_installed: ModuleTable | None = None


def install() -> ModuleTable:
    """Make highdicom use the compact table (once per process; later calls return it).
    Called at `serve` start, before any report is built, so the full table is parsed
    while nothing else allocates and its memory goes back whole."""
    global _installed
    if _installed is not None:
        return _installed
    import sys

    from highdicom import _standard_utils as standard

    original = standard.get_module_attribute_map
    table = ModuleTable.from_json(pkgutil.get_data("highdicom", TABLE_FILE).decode("utf-8"))

    def get_module_attribute_map() -> ModuleTable:
        return table

    # highdicom's modules that imported the function by name hold their own reference
    for name, module in list(sys.modules.items()):
        if (name == "highdicom" or name.startswith("highdicom.")) \
                and getattr(module, "get_module_attribute_map", None) is original:
            module.get_module_attribute_map = get_module_attribute_map
    if hasattr(original, "cache_clear"):
        original.cache_clear()  # a table parsed before this call is let go
    _installed = table
    return table
