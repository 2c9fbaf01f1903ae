"""The hospital link (sync/link.py): backoff between attempts, and a probe that says why."""

from __future__ import annotations

import random

from fieldkit.sync.link import Backoff, probe
from fixtures.orthanc import free_port


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [b.failure() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[4:]) > max(delays[:2])  # grows
    assert len(set(round(d, 3) for d in delays)) == len(delays)  # jittered
    assert b.failure(at_least=20.0) == 20.0  # Retry-After wins
    b.success()
    assert b.failures == 0 and b.remaining() == 0.0


def test_probe_says_why():
    up, why = probe(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=1)
    assert not up and "cannot reach 127.0.0.1" in why
    up, why = probe("ftp://pacs/x")
    assert not up and "http(s)" in why
