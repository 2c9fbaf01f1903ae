"""Decoded cines for the player, kept in a small in-memory LRU (never on disk): a clip is
decoded once however many tablets open it at once."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .clip_images import build_clip


class ClipCache:
    """Clips by blob address, least recently used dropped first."""

    def __init__(self, size: int = 4):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.building: dict[str, threading.Lock] = {}

    def get(self, store, row: dict) -> dict:
        key = row["blob"]
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            build_lock = self.building.setdefault(key, threading.Lock())
        with build_lock:  # one decode per clip, however many tablets open it at once
            with self.lock:
                if key in self.items:
                    return self.items[key]
            clip = build_clip(store, row)
            with self.lock:
                self.items[key] = clip
                self.building.pop(key, None)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return clip


CLIPS = ClipCache()
