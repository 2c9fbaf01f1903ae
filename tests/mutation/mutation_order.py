"""pytest plugin for `make mutate` (tests/mutation/run.py loads it): runs a shard's tests in
the order tests/mutation/modules.toml lists them, fastest first, so a mutant is caught by
the quickest test that can catch it (pytest stops at the first failure)."""

from __future__ import annotations

import os


def pytest_collection_modifyitems(items) -> None:
    order = [t for t in os.environ.get("MUTATE_TEST_ORDER", "").split("\n") if t]

    def rank(item) -> int:
        for i, selection in enumerate(order):
            if item.nodeid == selection or item.nodeid.startswith((selection + "::", selection + "[")):
                return i
        return len(order)

    items.sort(key=rank)  # stable: within one entry, the file's own order
