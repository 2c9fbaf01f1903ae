"""Security costs: Argon2id sign-in, audit append (durable), chain verification, log
redaction, and the access guard's overhead per request. Prints ratio lines."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from kitproc import ADMIN_PASSWORD, ADMIN_USER, init_kit

    from fieldkit.kit import open_kit
    from fieldkit.security import audit as A
    from fieldkit.security import passwords as pw
    from fieldkit.security import redact
    from fieldkit.store import accounts
    from fieldkit.web import create_app

    h = pw.hash_secret("604817")
    t_verify = _median(lambda: pw.verify_secret(h, "604817"), 5)
    print(f"argon2id verify: {t_verify * 1000:.0f} ms per sign-in attempt")

    tmp = Path(tempfile.mkdtemp())
    data_dir = init_kit(tmp / "kit")
    kit = open_kit(data_dir)
    try:
        t_append = _median(lambda: accounts.audit_append(kit.store, actor="a", role="clinician", action="view",
                                                         object="patient:P1"), 200)
        print(f"audit append (durable): {t_append * 1000:.2f} ms per event")
        for _ in range(2000):
            accounts.audit_append(kit.store, actor="a", role="clinician", action="view", object="patient:P1")
        events = accounts.audit_events(kit.store)
        t0 = time.perf_counter()
        assert A.verify_chain(events, key=kit.store.audit_key).ok  # keyed: every HMAC checked
        per = (time.perf_counter() - t0) / len(events)
        print(f"audit verify: {per * 1e6:.1f} us per event ({len(events)} events)")

        line = "GET /api/v1/patients?q=Okafor HTTP/1.1 200 for user amina stored 3 instances in 0.21 s"
        n = 5000
        t0 = time.perf_counter()
        for _ in range(n):
            redact.redact(line)
        print(f"log redaction: {(time.perf_counter() - t0) / n * 1e6:.1f} us per line")

        app = create_app(kit, testing=True)
        c = app.test_client()
        token = accounts.create_token(kit.store, "sync", None, "bench")  # a machine token (status.read)
        hdr = {"Authorization": f"Bearer {token}"}
        open_ = _median(lambda: c.get("/healthz", base_url="https://localhost"), 200)
        guarded = _median(lambda: c.get("/api/v1/status", base_url="https://localhost", headers=hdr), 200)
        print(f"request: public {open_ * 1000:.2f} ms, token-authenticated {guarded * 1000:.2f} ms "
              f"(ratio guarded/public {guarded / open_:.2f})")
    finally:
        kit.close()


if __name__ == "__main__":
    main()
