"""Offline tablet writes: the key a tablet encrypts its offline queue with, and the replay.

A tablet that cannot reach the kit keeps registrations, re-triages and notes in IndexedDB,
encrypted (AES-GCM, WebCrypto) under a key it got from here while signed in. The key is the
signed-in person's: derived from a secret of this kit (kept sealed by the data key) and the
person's name, so the same person gets it again after a kit restart or an expired session
and can still send what was kept. The tablet forgets it when the session ends (sign-out,
expiry, the kit locked): a tablet nobody is signed in to can neither read nor send its
queue. The kit never sees the queue encrypted: the tablet decrypts it and sends the changes,
in order, to /replay (store.offline applies each once, by its ID, with its original time).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Blueprint, jsonify

from ..errors import BadInput
from ..security import roles as R
from ..security.secrets import SECRETS_DIR
from ..store import offline as changes
from . import json_object as _body, kit_of
from .messages import translate
from .ui_api import after_triage_change

bp = Blueprint("offline", __name__, url_prefix="/api/v1/offline")

ROUTE_PERMISSIONS = {
    "offline.key": R.TRIAGE_WRITE,
    "offline.replay": R.TRIAGE_WRITE,
}

MAX_CHANGES = 200  # per request; a longer queue is sent in several
# what each kind of change needs, beyond triage.write (checked per change, at replay)
NEEDS = {"register": R.TRIAGE_WRITE, "triage": R.TRIAGE_WRITE, "note": R.CARE_WRITE}  # as online: notes are care (the triage role writes them)

SECRET_FILE = "offline-queue.key"  # under the data dir's secrets/, sealed by the data key

_create_lock = threading.Lock()  # two first requests at once must not make two secrets


def _kit_secret(kit) -> bytes:
    # opened from its sealed file each time: nothing of it stays in memory while the kit is locked
    path = Path(kit.data_dir) / SECRETS_DIR / SECRET_FILE
    with _create_lock:
        if not path.exists():
            kit.store.secrets.seal(path, os.urandom(32))
    return kit.store.secrets.open(path)


def _principal():
    from .sessions import current_principal
    return current_principal()


def queue_key(kit, person: str) -> tuple[str, bytes]:
    """(key id, 32-byte AES key) of one person's offline queue."""
    out = HKDF(algorithm=hashes.SHA256(), length=48, salt=None,
               info=b"fieldkit/offline-queue/" + person.encode()).derive(_kit_secret(kit))
    return out[32:].hex(), out[:32]


@bp.get("/key")
def key():
    kid, raw = queue_key(kit_of(), _principal().actor)
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
        moved = change["kind"] == "triage" or (change["kind"] == "register" and change["triage"] != "none")
        if result["status"] == changes.APPLIED and not result.get("duplicate") and moved:
            # as online: pending sync rows take the new priority, the hospital gets a status document
            after_triage_change(kit.store, result["patient_id"], result.get("triage") or "none")
        results.append(result)
    # the tablet shows each reason to the person who made the change
    return jsonify({"results": [r | {"reason": translate(r.get("reason") or "")} for r in results]})
