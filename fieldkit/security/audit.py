"""The audit trail's hash chain: building events and verifying a sequence of them.

Each event says who (actor, role) did what (action) to which object, when, and with
which outcome, and carries the hash of the previous event, so that editing, deleting
or reordering any event breaks every link after it. `verify_chain` names the first broken
link. Where the events are kept (encrypted, in the store) is `fieldkit.store.accounts`'
business; this module is pure and knows nothing of storage.

The chain is keyed: an event's hash is HMAC-SHA256 under the kit's audit key (derived
from the data key), marked `"alg": "hmac-sha256"`, so an event rewritten and re-chained
without that key no longer verifies. Trails from older kits start with plain SHA-256
events; the first keyed event is the marker `audit.keyed`, and from there on every event
must be keyed (a trail that falls back to plain SHA-256 was re-chained by someone else).

The hospital keeps the head (seq, hash) of the last export it received; a later export
must continue from it (`verify_chain(events, start=(seq, hash))`), so that history already
sent cannot be rewritten on the kit without the hospital noticing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Iterable

GENESIS = "0" * 64
KEYED = "hmac-sha256"  # the "alg" of a keyed event (unkeyed events of older trails have none)
MARKER = "audit.keyed"  # the action of the first keyed event

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
    if event.get("alg"):  # older unkeyed events have no "alg": their encoding stays as it was
        body["alg"] = event["alg"]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(event: dict, key: bytes | None = None) -> str:
    """The event's hash: HMAC-SHA256 under `key` for a keyed event, else SHA-256."""
    if event.get("alg") == KEYED:
        if not key:
            raise ValueError("a keyed audit event needs the audit key")
        return hmac.new(key, canonical(event), hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical(event)).hexdigest()


def head_mac(key: bytes, seq: int, hash_: str) -> str:
    """A tag over the recorded head, so the head cannot be moved back without the key."""
    return hmac.new(key, f"head:{int(seq)}:{hash_}".encode(), hashlib.sha256).hexdigest()


def make_event(prev: dict | None, *, at: float, actor: str, role: str, action: str,
               object: str = "", outcome: str = OK, detail: dict | str | None = None,
               key: bytes | None = None) -> dict:
    """The next event after `prev` (None for the first), keyed when `key` is given.
    `detail` is a small dict of non-secret facts (reason, remote address, count); never a
    secret, never pixel data."""
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
    if key:
        event["alg"] = KEYED
    event["hash"] = event_hash(event, key)
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int  # events checked
    broken_seq: int | None = None  # the first event whose link is broken
    reason: str = ""
    head: tuple[int, str] | None = None  # (seq, hash) of the last good event
    keyed_from: int | None = None  # seq of the first keyed event

    def message(self) -> str:
        if self.ok:
            h = f"; head {self.head[0]} {self.head[1][:16]}" if self.head else ""
            k = ""
            if self.keyed_from is not None:
                k = "; keyed" if self.keyed_from <= 1 else f"; keyed from event {self.keyed_from}"
            return f"audit trail intact: {self.count} events{h}{k}"
        return f"audit trail BROKEN at event {self.broken_seq}: {self.reason}"


def verify_chain(events: Iterable[dict], *, start: tuple[int, str] | None = None,
                 expected_head: tuple[int, str] | None = None, key: bytes | None = None,
                 require_keyed: bool = False) -> VerifyResult:
    """Check every link, in stored order. `start` is (seq, hash) of the event before the
    first one given (default: the beginning). `expected_head` is the (seq, hash) the
    store recorded as the last event, which catches a truncated tail.

    With `key` (the kit itself) a keyed event's content is checked against its HMAC;
    without it (the hospital) only its links are. Once one event is keyed, every later
    one must be. `require_keyed`: a non-empty trail must reach its keyed part."""
    last_seq, last_hash = start if start else (0, GENESIS)
    count = 0
    keyed_from = None
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
        alg = ev.get("alg")
        if alg not in (None, KEYED):
            return VerifyResult(False, count, seq, f"event {seq} names an unknown hash ({str(alg)[:32]})")
        if alg is None and keyed_from is not None:
            return VerifyResult(False, count, seq,
                                f"event {seq} is not keyed although the trail is keyed from event {keyed_from} "
                                "(re-chained without the kit's key)")
        if alg == KEYED and keyed_from is None:
            keyed_from = seq
            if start is None and ev.get("action") != MARKER:
                return VerifyResult(False, count, seq, f"the keyed part starts at event {seq} without the marker "
                                    "(the trail before it was re-chained without the kit's key)")
        if alg is None or key:
            if not hmac.compare_digest(event_hash(ev, key), str(ev.get("hash"))):
                why = "its keyed hash does not match its content: altered, or re-chained without the kit's key" \
                    if alg else "its hash does not match its content"
                return VerifyResult(False, count, seq, f"event {seq} was altered ({why})")
        last_seq, last_hash = seq, ev["hash"]
    if require_keyed and count and keyed_from is None:
        return VerifyResult(False, count, last_seq,
                            "no event of the trail is keyed (re-chained without the kit's key)")
    if expected_head is not None:
        hseq, hhash = expected_head
        if last_seq < hseq:
            return VerifyResult(False, count, last_seq + 1,
                                f"events {last_seq + 1}..{hseq} missing (the trail was truncated)")
        if last_seq == hseq and last_hash != hhash:
            return VerifyResult(False, count, hseq, f"event {hseq} does not match the recorded head")
    return VerifyResult(True, count, None, "", (last_seq, last_hash) if count or start else None, keyed_from)
