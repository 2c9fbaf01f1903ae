"""The audit trail's hash chain: building events and verifying a sequence of them.

Each event says who (actor, role) did what (action) to which object, when, and with
which outcome, and carries the SHA-256 of the previous event, so that editing, deleting
or reordering any event breaks every link after it. `verify_chain` names the first broken
link. Where the events are kept (encrypted, in the store) is `fieldkit.store.accounts`'
business; this module is pure and knows nothing of storage.

The hospital keeps the head (seq, hash) of the last export it received; a later export
must continue from it (`verify_chain(events, start=(seq, hash))`), so that history already
sent cannot be rewritten on the kit without the hospital noticing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

GENESIS = "0" * 64

# Outcomes
OK = "ok"
DENIED = "denied"  # refused by policy (no permission, bad CSRF, locked out)
FAILED = "failed"  # attempted and failed (wrong PIN, bad token)
ERROR = "error"  # the kit failed

# Fields that enter the hash, in a fixed canonical encoding
FIELDS = ("seq", "at", "time", "actor", "role", "action", "object", "outcome", "detail", "clock", "prev")
MAX_FIELD = 512  # an event is small: long values (a hostile user name) are cut


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + "…"
    return value


def canonical(event: dict) -> bytes:
    body = {k: event.get(k) for k in FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(event: dict) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def make_event(prev: dict | None, *, at: float, actor: str, role: str, action: str,
               object: str = "", outcome: str = OK, detail: dict | str | None = None) -> dict:
    """The next event after `prev` (None for the first). `detail` is a small dict of
    non-secret facts (reason, remote address, count); never a secret, never pixel data."""
    seq = int(prev["seq"]) + 1 if prev else 1
    prev_hash = prev["hash"] if prev else GENESIS
    clock = ""
    if prev and at < float(prev["at"]):
        clock = "backwards"  # the device clock jumped back; the order is still the chain's
    if isinstance(detail, dict):
        detail = {str(k)[:64]: _clip(v) if isinstance(v, (str, int, float, bool)) or v is None else _clip(str(v))
                  for k, v in list(detail.items())[:16]}
    elif detail is not None:
        detail = _clip(str(detail))
    event = {
        "seq": seq,
        "at": float(at),
        "time": _dt.datetime.fromtimestamp(at, _dt.timezone.utc).isoformat(timespec="milliseconds"),
        "actor": _clip(str(actor or "")),
        "role": _clip(str(role or "")),
        "action": _clip(str(action)),
        "object": _clip(str(object or "")),
        "outcome": str(outcome),
        "detail": detail,
        "clock": clock,
        "prev": prev_hash,
    }
    event["hash"] = event_hash(event)
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int  # events checked
    broken_seq: int | None = None  # the first event whose link is broken
    reason: str = ""
    head: tuple[int, str] | None = None  # (seq, hash) of the last good event

    def message(self) -> str:
        if self.ok:
            h = f"; head {self.head[0]} {self.head[1][:16]}" if self.head else ""
            return f"audit trail intact: {self.count} events{h}"
        return f"audit trail BROKEN at event {self.broken_seq}: {self.reason}"


def verify_chain(events: Iterable[dict], *, start: tuple[int, str] | None = None,
                 expected_head: tuple[int, str] | None = None) -> VerifyResult:
    """Check every link, in stored order. `start` is (seq, hash) of the event before the
    first one given (default: the beginning). `expected_head` is the (seq, hash) the
    store recorded as the last event, which catches a truncated tail."""
    last_seq, last_hash = start if start else (0, GENESIS)
    count = 0
    for ev in events:
        count += 1
        seq = ev.get("seq")
        if not isinstance(seq, int):
            return VerifyResult(False, count, last_seq + 1, f"event after {last_seq} has no valid sequence number")
        if seq != last_seq + 1:
            if seq > last_seq + 1:
                missing = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}..{seq - 1}"
                return VerifyResult(False, count, last_seq + 1,
                                    f"event {missing} missing (sequence jumps from {last_seq} to {seq})")
            return VerifyResult(False, count, seq, f"event {seq} out of order or duplicated (after {last_seq})")
        if ev.get("prev") != last_hash:
            return VerifyResult(False, count, seq,
                                f"event {seq} does not follow event {last_seq} (previous-hash mismatch: "
                                f"event {last_seq} was altered, or {seq} was)")
        if event_hash(ev) != ev.get("hash"):
            return VerifyResult(False, count, seq, f"event {seq} was altered (its hash does not match its content)")
        last_seq, last_hash = seq, ev["hash"]
    if expected_head is not None:
        hseq, hhash = expected_head
        if last_seq < hseq:
            return VerifyResult(False, count, last_seq + 1,
                                f"events {last_seq + 1}..{hseq} missing (the trail was truncated)")
        if last_seq == hseq and last_hash != hhash:
            return VerifyResult(False, count, hseq, f"event {hseq} does not match the recorded head")
    return VerifyResult(True, count, None, "", (last_seq, last_hash) if count or start else None)
