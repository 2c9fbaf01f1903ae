"""Live updates for tablets: one Server-Sent Events stream per open page.

Each stream reads the kit's event bus (fieldkit.events) and forwards events as
`id: <bus>.<n>` / `event: <topic>` / `data: <json>` lines. Events carry ids only (patient
id, SOP Instance UID, queue row id), never names. A board opens its stream with `board=1`
and also gets, before each event that changes a card, that patient's new card
(`board.row`: `{"id": ..., "row": {...} | null, "counts": ..., "total": n, "unassigned": n}`,
row null when the patient left the board, with the whole board's counts after the change;
the card is what the board itself shows, under the same permission), so it patches
itself instead of fetching the whole board again.

Resuming: a stream reconnected with `Last-Event-ID` (the browser sends it by itself) or
`?last=` starts after that event, replayed from the bus's short history; `hello` says
whether it did (`resumed`). When it cannot (too far behind, or the kit restarted), the
page hears `resumed: false` or a `refetch` event and fetches its view once.

Bounded on every side, because every open stream holds one of the HTTPS server's worker
threads:
- at most `ui.live_max_streams` streams at once (0: the server's thread count minus a
  reserve kept for page and API requests); one more is answered 429 with Retry-After and
  the page falls back to polling until a slot frees;
- a stream ends after `ui.live_max_seconds` (the browser reconnects and resumes);
- a comment line every `ui.live_heartbeat_seconds` keeps proxies and the tablet's Wi-Fi
  stack from dropping an idle stream and tells the server when the tablet has gone;
- a stream keeps no queue of its own: it reads the bus's shared, bounded history from its
  last position, and a tablet that fell further behind than that gets `refetch`;
- the stream ends within about a second when the server stops.
"""

from __future__ import annotations

import json
import threading
import time

from flask import Blueprint, Response, current_app, request

from ..events import BOARD_ROW, REFETCH
from ..security import roles as R
from ..store.board import concerned
from ..store.board import rows_for as board_rows
from . import kit_of

bp = Blueprint("live", __name__)

ROUTE_PERMISSIONS = {
    "live.stream": R.PATIENTS_READ,  # events name patients by id
}

# Threads kept free for ordinary requests when the stream cap is derived from http.threads
RESERVED_THREADS = 4
POLL_SECONDS = 1.0  # how quickly a stream notices a server stop
MAX_REPLAY = 256  # events a stream replays at once; further behind, the page refetches

_slots_lock = threading.Lock()
_open: dict[int, int] = {}  # id(app) -> open streams


def max_streams(config) -> int:
    explicit = int(config.get("ui.live_max_streams", 0) or 0)
    if explicit > 0:
        return explicit
    return max(1, int(config.get("http.threads", 16)) - RESERVED_THREADS)


def open_streams(app=None) -> int:
    app = app or current_app
    with _slots_lock:
        return _open.get(id(app), 0)


def _take_slot(app, limit: int) -> bool:
    with _slots_lock:
        n = _open.get(id(app), 0)
        if n >= limit:
            return False
        _open[id(app)] = n + 1
        return True


def _give_slot(app) -> None:
    with _slots_lock:
        _open[id(app)] = max(0, _open.get(id(app), 1) - 1)


def _server_running() -> bool:
    """False once the HTTPS server began to stop. cheroot runs a response in one of its
    worker threads, which knows its server; other servers (tests) count as running."""
    server = getattr(threading.current_thread(), "server", None)
    return bool(getattr(server, "ready", True))


def _resume_point(bus, last_id: str) -> int | None:
    """The bus position after `last_id` ("<bus>.<n>", as sent), when the history still
    holds everything since then; None otherwise (the page fetches its view)."""
    epoch, _, seq = str(last_id).strip().partition(".")
    if epoch != bus.epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        return None
    missed = bus.since(int(seq))
    if missed is None or len(missed) > MAX_REPLAY:
        return None
    return int(seq)


def format_event(topic: str, data: dict, event_id: int | str | None = None) -> str:
    """One SSE message. Topic and JSON never contain newlines, so no line can be forged."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("event: " + "".join(ch for ch in topic if ch.isprintable() and ch not in "\r\n")[:64])
    lines.append("data: " + json.dumps(data, default=str, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


@bp.get("/api/v1/live")
def stream():
    app = current_app._get_current_object()
    kit = kit_of()
    cfg = kit.config
    if not _take_slot(app, max_streams(cfg)):
        return Response(json.dumps({"error": "too many live streams open; polling instead", "status": 429}),
                        status=429, mimetype="application/json", headers={"Retry-After": "15"})
    heartbeat = max(1.0, float(cfg.get("ui.live_heartbeat_seconds", 15)))
    lifetime = max(5.0, float(cfg.get("ui.live_max_seconds", 300)))
    bus, store = kit.events, kit.store
    rows = board_rows(store) if request.args.get("board") == "1" else None
    cursor = _resume_point(bus, request.headers.get("Last-Event-ID") or request.args.get("last", ""))
    resumed = cursor is not None
    if cursor is None:
        cursor = bus.last_seq

    def ident(seq: int) -> str:
        return f"{bus.epoch}.{seq}"

    def generate():
        nonlocal cursor
        try:
            # retry: how long the browser waits before reconnecting after the stream ends
            yield "retry: 2000\n: open\n\n"
            yield format_event("hello", {"at": time.time(), "resumed": resumed}, ident(cursor))
            started = last = time.monotonic()
            while _server_running() and not kit.locked:
                if time.monotonic() - started > lifetime:
                    yield "event: bye\ndata: {}\n\n"
                    return
                events = bus.since(cursor, timeout=POLL_SECONDS)
                if events is None or len(events) > MAX_REPLAY:
                    cursor = bus.last_seq  # fell too far behind: one refetch instead of a flood
                    last = time.monotonic()
                    yield format_event(REFETCH, {}, ident(cursor))
                    continue
                if not events:
                    if time.monotonic() - last >= heartbeat:
                        last = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                last = time.monotonic()
                if rows is not None:
                    # the cards first, without an id: a stream cut after them replays the events
                    changed = dict.fromkeys(pid for e in events for pid in concerned(store, e))
                    for pid in changed:
                        row = rows.row(pid)
                        # the whole board's counts come along: a tablet shows only a page of it
                        yield format_event(BOARD_ROW, {"id": pid, "row": row, **rows.summary()})
                for e in events:
                    cursor = e.seq
                    yield format_event(e.topic, dict(e.data), ident(e.seq))
        finally:
            _give_slot(app)

    # the generator uses only what it captured above, so it needs no request context
    resp = Response(generate(), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
