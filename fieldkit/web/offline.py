"""Offline tablet writes: the key a session encrypts its offline queue with, and the replay.

A tablet that cannot reach the kit keeps registrations, re-triages and notes in IndexedDB,
encrypted (AES-GCM, WebCrypto) under a key it got from here while signed in. The key is
derived from a secret this kit process holds and the session, so a page asks again and gets
the same key; the tablet forgets it at sign-out. The kit never sees the queue encrypted: the
tablet decrypts it and sends the changes, in order, to /replay (store.offline applies each
once, by its ID, with its original time).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import weakref

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Blueprint, g, jsonify

from ..errors import BadInput
from ..security import roles as R
from ..store import offline as changes
from . import json_object as _body, kit_of
from .ui_api import after_triage_change

bp = Blueprint("offline", __name__, url_prefix="/api/v1/offline")

ROUTE_PERMISSIONS = {
    "offline.key": R.TRIAGE_WRITE,
    "offline.replay": R.TRIAGE_WRITE,
}

MAX_CHANGES = 200  # per request; a longer queue is sent in several
# what each kind of change needs, beyond triage.write (checked per change, at replay)
NEEDS = {"register": R.TRIAGE_WRITE, "triage": R.TRIAGE_WRITE, "note": R.PATIENTS_WRITE}

_secrets: "weakref.WeakKeyDictionary[object, bytes]" = weakref.WeakKeyDictionary()
_secrets_lock = threading.Lock()


def _kit_secret(kit) -> bytes:
    # per running kit, never written anywhere: a restart gives new keys (a queue made under
    # the old one is still readable on the tablet, which keeps its key until sign-out)
    with _secrets_lock:
        return _secrets.setdefault(kit, os.urandom(32))


def _principal():
    from .auth import current_principal
    return current_principal()


def session_key(kit, session: str) -> tuple[str, bytes]:
    """(key id, 32-byte AES key) for one session (`session`: the kit's digest of its id)."""
    out = HKDF(algorithm=hashes.SHA256(), length=48, salt=None,
               info=b"fieldkit/offline-queue/" + session.encode()).derive(_kit_secret(kit))
    return out[32:].hex(), out[:32]


@bp.get("/key")
def key():
    p = _principal()
    session = getattr(g, "session_key", None) or hashlib.sha256(p.actor.encode()).hexdigest()
    kid, raw = session_key(kit_of(), session)
    return jsonify({"kid": kid, "key": base64.b64encode(raw).decode(), "alg": "AES-GCM"})


@bp.post("/replay")
def replay():
    """Apply a tablet's queued changes in the order sent; one result per change."""
    kit = kit_of()
    items = _body().get("changes")
    if not isinstance(items, list) or not items:
        raise BadInput("send {\"changes\": [...]}, the tablet's queued changes in the order they were made")
    if len(items) > MAX_CHANGES:
        raise BadInput(f"at most {MAX_CHANGES} changes per request; send the rest in another")
    p = _principal()
    results = []
    for raw in items:
        now = time.time()
        try:
            change = changes.check_change(raw, now)
            if not R.has_permission(p.role, NEEDS[change["kind"]]):
                raise BadInput(f"a {change['kind']} needs the {NEEDS[change['kind']]!r} permission")
        except BadInput as exc:
            cid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else ""
            results.append({"id": cid[:64], "status": changes.REFUSED, "reason": exc.message,
                            "patient_id": "", "flagged": ""})
            continue
        result = changes.apply_change(kit.store, change, by=p.actor, now=now)
        if result["status"] == changes.APPLIED and not result.get("duplicate") and change["kind"] != "note":
            after_triage_change(kit.store, result["patient_id"], result.get("triage") or "none")
        results.append(result)
    return jsonify({"results": results})
