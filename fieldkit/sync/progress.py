"""Sync progress for people: per-item state, bytes, link rate, ETA.

Per-instance state lives in the catalogue (`instances` rows): sync_state
(queued | sending | confirmed | quarantined), sync_reason, confirmed_at, retrieve_url.
Bytes in flight and the measured rate live in the running worker (they change many times
a second and are worthless after a restart).
"""

from __future__ import annotations

import threading
import time

from fieldkit.records import DONE, FAILED, KIND_SYNC, LEASED, READY
from fieldkit.store import meta
from fieldkit.store.instances import get_instance

QUEUED, SENDING, CONFIRMED, QUARANTINED = "queued", "sending", "confirmed", "quarantined"
STATS_DOC = "sync_stats"


class Meter:
    """Link rate from bytes actually written, smoothed (EWMA over ~10 s windows)."""

    def __init__(self, half_life: float = 10.0):
        self.half_life = half_life
        self.rate = 0.0
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._window_bytes += n
            now = time.monotonic()
            span = now - self._window_start
            if span >= 1.0:
                sample = self._window_bytes / span
                alpha = min(1.0, span / self.half_life)
                self.rate = sample if self.rate == 0 else (1 - alpha) * self.rate + alpha * sample
                self._window_start, self._window_bytes = now, 0


class Live:
    """What the running worker is doing right now (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sending: dict[str, dict] = {}   # uid -> {"done": n, "total": n, "lane": ...}
        self.link = "not started"
        self.link_up = False
        self.last_error = ""
        self.meter = Meter()

    def begin(self, uid: str, total: int, lane: str) -> None:
        with self.lock:
            self.sending[uid] = {"uid": uid, "done": 0, "total": total, "lane": lane}

    def progress(self, uid: str, done: int) -> None:
        with self.lock:
            entry = self.sending.get(uid)
            if entry is not None:
                delta = max(0, done - entry["done"])
                entry["done"] = done
            else:
                delta = 0
        if delta:
            self.meter.add(delta)

    def end(self, uid: str) -> None:
        with self.lock:
            self.sending.pop(uid, None)

    def snapshot(self) -> dict:
        with self.lock:
            return {"link": self.link, "link_up": self.link_up, "last_error": self.last_error,
                    "rate_bytes_per_s": round(self.meter.rate, 1),
                    "sending": [dict(v) for v in self.sending.values()]}


def stats(db) -> dict:
    base = {"name": STATS_DOC, "sent_bytes": 0, "confirmed_bytes": 0, "confirmed_wire_bytes": 0,
            "resent_instances": 0, "resent_bytes": 0, "confirmed": 0, "quarantined": 0,
            "found_by_qido": 0,
            "first_confirmed_at": 0.0}
    base.update(meta.get(db, STATS_DOC) or {})
    return base


def bump_stats(db, **deltas) -> None:
    cur = stats(db)
    for k, v in deltas.items():
        if k == "first_confirmed_at":
            cur[k] = cur[k] or v
        else:
            cur[k] = cur.get(k, 0) + v
    meta.put(db, STATS_DOC, cur)


def status(store, worker=None, limit: int = 50) -> dict:
    """Everything `fieldkit status` and GET /api/v1/status show about sync. Counts and
    bytes come from counters the queue keeps; only the rows listed are looked at."""
    q = store.queue
    live = worker.live.snapshot() if worker is not None else None
    in_flight = {s["uid"]: s for s in (live or {}).get("sending", [])}

    def fn(db):
        qc = q.counts()[KIND_SYNC]
        sending = q.rows_by_id([i for i in (q.live_id(KIND_SYNC, u) for u in in_flight) if i])
        sending = [r for r in sending if r.state in (READY, LEASED)]
        counts = {SENDING: len(sending), QUEUED: qc[READY] + qc[LEASED] - len(sending),
                  CONFIRMED: qc[DONE] - q.dismissed(KIND_SYNC), QUARANTINED: qc[FAILED]}
        sending_ids = {r.id for r in sending}
        queued = q.first(KIND_SYNC, READY, limit)
        if len(queued) < limit:
            queued += [r for r in q.first(KIND_SYNC, LEASED, limit + len(sending_ids))
                       if r.id not in sending_ids][:limit - len(queued)]
        listed = ([(SENDING, r) for r in sending] + [(QUARANTINED, r) for r in q.first(KIND_SYNC, FAILED, limit)]
                  + [(QUEUED, r) for r in queued]
                  + [(CONFIRMED, r) for r in q.first(KIND_SYNC, DONE, limit)])
        return counts, listed, stats(db), q.waiting_bytes(KIND_SYNC)
    counts, listed, st, queue_bytes = store.read(fn)
    queue_bytes -= sum(s.get("done", 0) for s in in_flight.values())
    items = []
    for state, row in listed:
        payload = row.payload or {}
        uid = payload.get("sop_instance_uid", "")
        inst = get_instance(store, uid) if uid else None
        size = int((inst or {}).get("size") or 0)
        entry = {"row_id": row.id, "state": state, "priority": row.priority,
                 "attempts": row.attempts, "size": size}
        if uid:
            entry["sop_instance_uid"] = uid
            entry["patient_id"] = (inst or {}).get("patient_id", "")
        else:
            entry.update({k: payload.get(k) for k in ("patient_id", "what")})
        if state == QUARANTINED:
            entry["reason"] = (inst or {}).get("sync_reason") or row.last_error
        elif row.last_error and state == QUEUED:
            entry["last_error"] = row.last_error
        if uid in in_flight:
            entry.update(bytes_done=in_flight[uid]["done"], bytes_total=in_flight[uid]["total"])
        if state == CONFIRMED and inst:
            entry["retrieve_url"] = inst.get("retrieve_url", "")
        items.append(entry)
    order = {SENDING: 0, QUARANTINED: 1, QUEUED: 2, CONFIRMED: 3}
    items.sort(key=lambda e: (order[e["state"]], e["priority"]))
    out = {"counts": counts, "queue_bytes": max(0, queue_bytes), "items": items[:limit],
           "resent_instances": st["resent_instances"], "resent_bytes": st["resent_bytes"],
           "sent_bytes": st["sent_bytes"], "confirmed_bytes": st["confirmed_bytes"],
           "confirmed_wire_bytes": st["confirmed_wire_bytes"], "found_by_qido": st["found_by_qido"]}
    if live is not None:
        out.update(link=live["link"], link_up=live["link_up"], last_error=live["last_error"],
                   rate_bytes_per_s=live["rate_bytes_per_s"])
        rate = live["rate_bytes_per_s"]
        # the wire carries fewer bytes than the originals when transcoding helps
        ratio = (st["confirmed_wire_bytes"] / st["confirmed_bytes"]) if st["confirmed_bytes"] else 1.0
        out["eta_seconds"] = round(queue_bytes * ratio / rate, 1) if rate > 0 and queue_bytes else (0.0 if not queue_bytes else None)
    return out


def kit_status(kit) -> dict:
    """The `sync` block of the kit's status (GET /api/v1/status, `fieldkit status`)."""
    worker = getattr(kit, "services", {}).get("sync")
    out = status(kit.store, worker if hasattr(worker, "pool") else None)
    if worker is not None and not hasattr(worker, "pool"):
        out["link"] = worker.live.link  # Idle: why sync is not running
        out["link_up"] = False
    return out


def format_lines(st: dict) -> list[str]:
    """Human lines for `fieldkit sync status`."""
    c = st["counts"]
    lines = [f"sync: {c['confirmed']} confirmed, {c['sending']} sending, {c['queued']} queued, "
             f"{c['quarantined']} quarantined; {st['queue_bytes'] / 1e6:.1f} MB to send"]
    if "link" in st:
        rate = st.get("rate_bytes_per_s") or 0
        eta = st.get("eta_seconds")
        lines.append(f"link: {st['link']}" + (f"; {rate * 8 / 1000:.0f} kbit/s" if rate else "")
                     + (f"; ETA {eta / 60:.1f} min" if eta else ""))
    if st.get("resent_instances"):
        lines.append(f"re-sent: {st['resent_instances']} instances, {st['resent_bytes'] / 1e6:.1f} MB")
    for item in st["items"]:
        if item["state"] in ("sending", "quarantined"):
            what = item.get("sop_instance_uid") or f"{item.get('what')} {item.get('patient_id')}"
            extra = (f"{item.get('bytes_done', 0)}/{item.get('bytes_total', 0)} bytes" if item["state"] == "sending"
                     else item.get("reason", ""))
            lines.append(f"  {item['state']:11} {what}  {extra}")
    return lines
