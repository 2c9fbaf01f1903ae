"""Registered probes and probe sessions (layer 2).

A row: {"ae", "name", "host", "added", "session"}. A probe is registered by its calling AE
title, so the DICOM receiver lets it in without anyone editing the TOML. A probe session
binds a probe to one patient for a while ("scan this patient with probe …"): captures
from that AE title in the window go to that patient even when the probe cannot stamp
an identity. `session` is {"patient_id", "until", "by", "started"} or None.
"""

from __future__ import annotations

import time

from tinydb import Query

from ..errors import BadInput, NotFound
from ..records import T_PROBES
from . import patients

_R = Query()
MAX_AE = 16


def check_ae(ae: str) -> str:
    """An AE title as PS3.5 allows it: 1-16 characters, no backslash or control characters."""
    ae = (ae or "").strip()
    if not ae or len(ae) > MAX_AE or "\\" in ae or not ae.isprintable() or not ae.isascii():
        raise BadInput(f"AE title {ae[:20]!r} is not usable: 1-16 printable ASCII characters, no backslash")
    return ae


def add_probe(store, ae: str, *, name: str = "", host: str = "") -> dict:
    ae = check_ae(ae)
    row = {"ae": ae, "name": (name or "").strip()[:64], "host": (host or "").strip()[:255],
           "added": time.time(), "session": None}

    def fn(db):
        table = db.table(T_PROBES)
        if table.search(_R.ae == ae):
            raise BadInput(f"probe {ae} is already registered")
        table.insert(row)
        return row
    return store.write(fn)


def remove_probe(store, ae: str) -> None:
    def fn(db):
        if not db.table(T_PROBES).remove(_R.ae == ae):
            raise NotFound(f"no registered probe {ae}")
    store.write(fn)


def list_probes(store) -> list[dict]:
    return store.read(lambda db: sorted((dict(r) for r in db.table(T_PROBES).all()), key=lambda r: r["ae"]))


def registered_titles(store) -> list[str]:
    return [r["ae"] for r in list_probes(store)]


def start_session(store, ae: str, patient_id: str, *, minutes: float, by: str = "") -> dict:
    """Bind probe `ae` to a patient for `minutes` (replacing any earlier binding)."""
    if minutes <= 0:
        raise BadInput("a probe session needs a positive length in minutes")
    now = time.time()

    def fn(db):
        probe = db.table(T_PROBES).get(_R.ae == ae)
        if probe is None:
            raise BadInput(f"probe {ae!r} is not registered: register it first (fieldkit probes add {ae})")
        patient = patients.resolve_row(db, patient_id)
        if patient is None:
            raise NotFound(f"no patient {patient_id}")
        if patient.get("triage") == "black":
            raise BadInput(f"patient {patient['id']} is recorded as deceased: no probe session")
        session = {"patient_id": patient["id"], "until": now + minutes * 60, "by": by, "started": now}
        db.table(T_PROBES).update({"session": session}, _R.ae == ae)
        return {"probe": ae, **session}
    return store.write(fn)


def end_session(store, ae: str, patient_id: str | None = None) -> bool:
    """End probe `ae`'s session (only if it is bound to `patient_id`, when given)."""
    def fn(db):
        probe = db.table(T_PROBES).get(_R.ae == ae)
        if probe is None:
            raise NotFound(f"no registered probe {ae}")
        session = probe.get("session")
        if not session or (patient_id and session["patient_id"] != patient_id):
            return False
        db.table(T_PROBES).update({"session": None}, _R.ae == ae)
        return True
    return store.write(fn)


def session_patient(db, ae: str, now: float | None = None) -> str | None:
    """Inside a read: the patient probe `ae` is bound to right now, if any."""
    if not ae:
        return None
    probe = db.table(T_PROBES).get(_R.ae == ae)
    session = (probe or {}).get("session")
    if not session or session["until"] <= (now if now is not None else time.time()):
        return None
    return session["patient_id"]


def sessions_for(store, patient_id: str) -> list[dict]:
    now = time.time()

    def fn(db):
        return [{"probe": r["ae"], "name": r.get("name", ""), **r["session"]} for r in db.table(T_PROBES).all()
                if r.get("session") and r["session"]["patient_id"] == patient_id and r["session"]["until"] > now]
    return store.read(fn)
