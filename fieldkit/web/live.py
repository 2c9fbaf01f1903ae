"""Live updates for tablets: one Server-Sent Events stream per open page.

Each stream subscribes to the kit's event bus (fieldkit.events) and forwards events as
`event: <topic>` / `data: <json>` lines. Events carry ids only (patient id, SOP Instance
UID, queue row id), never names: a page that hears of a change fetches what it shows.

Bounded on every side, because every open stream holds one of the HTTPS server's worker
threads:
- at most `ui.live_max_streams` streams at once (0: the server's thread count minus a
  reserve kept for page and API requests); one more is answered 429 with Retry-After and
  the page falls back to polling until a slot frees;
- a stream ends after `ui.live_max_seconds` (the browser reconnects and the page
  refreshes its view, so nothing is missed for long);
- a comment line every `ui.live_heartbeat_seconds` keeps proxies and the tablet's Wi-Fi
  stack from dropping an idle stream and tells the server when the tablet has gone;
- the subscriber queue is bounded by the bus: a stalled tablet loses old events, not the
  kit's memory;
- the stream ends within about a second when the server stops.
"""

from __future__ import annotations

import json
import queue
import threading
import time

from flask import Blueprint, Response, current_app

from ..security import roles as R
from . import kit_of

bp = Blueprint("live", __name__)

ROUTE_PERMISSIONS = {
    "live.stream": R.PATIENTS_READ,  # events name patients by id
}

# Threads kept free for ordinary requests when the stream cap is derived from http.threads
RESERVED_THREADS = 4
POLL_SECONDS = 1.0  # how quickly a stream notices a server stop

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


def format_event(topic: str, data: dict, event_id: int | None = None) -> str:
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
    bus = kit.events
    q = bus.subscribe()

    def generate():
        seq = 0
        try:
            # retry: how long the browser waits before reconnecting after the stream ends
            yield f"retry: 2000\n: open\n\nevent: hello\ndata: {json.dumps({'at': time.time()})}\n\n"
            started = last = time.monotonic()
            while _server_running() and not kit.locked:
                now = time.monotonic()
                if now - started > lifetime:
                    yield "event: bye\ndata: {}\n\n"
                    return
                try:
                    event = q.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if time.monotonic() - last >= heartbeat:
                        last = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                seq += 1
                last = time.monotonic()
                yield format_event(event.topic, dict(event.data), seq)
        finally:
            bus.unsubscribe(q)
            _give_slot(app)

    # the generator uses only what it captured above, so it needs no request context
    resp = Response(generate(), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
