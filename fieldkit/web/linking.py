"""How captures and records get to the right patient, for tablets: registered probes and the
callers the DICOM receiver refused (device page, "allow" for admins), probe sessions ("scan
this patient with probe …") and undoing a merge while its undo time is open."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import BadInput
from ..events import PATIENT_UPDATED
from ..security import roles as R
from ..ingest import dimse
from ..store import accounts, patients, probes
from . import json_object as _body, kit_of

bp = Blueprint("linking", __name__)

ROUTE_PERMISSIONS = {
    "linking.list_probes": R.PATIENTS_READ,
    "linking.add_probe": R.SETTINGS_MANAGE,
    "linking.remove_probe": R.SETTINGS_MANAGE,
    "linking.start_session": R.TRIAGE_WRITE,
    "linking.end_session": R.TRIAGE_WRITE,
    "linking.unmerge": R.PATIENTS_WRITE,
    "linking.assign": R.TRIAGE_WRITE,
}


def _probe_field(data: dict) -> str:
    value = data.get("probe", data.get("ae"))
    if not isinstance(value, str):
        raise BadInput("name the probe by its AE title: {\"probe\": \"LUMIFY1\"}")
    return probes.check_ae(value)


def _principal():
    from .sessions import current_principal
    p = current_principal()
    return (p.actor, p.role) if p else ("", "")


@bp.get("/api/v1/probes")
def list_probes():
    kit = kit_of()
    refused = []
    for name in ("dicom", "dicom-tls"):
        tracker = getattr(kit.services.get(name), "refused", None)
        refused += tracker.list() if tracker is not None else []
    return jsonify({"probes": probes.list_probes(kit.store), "refused": refused})


@bp.post("/api/v1/probes")
def add_probe():
    kit, data = kit_of(), _body()
    ae = _probe_field(data)
    name, host = data.get("name", ""), data.get("host", "")
    if not isinstance(name, str) or not isinstance(host, str):
        raise BadInput("name and host must be text")
    actor, role = _principal()
    return jsonify(dimse.register_probe(kit, ae, name=name, host=host, actor=actor, role=role)), 201


@bp.delete("/api/v1/probes/<ae>")
def remove_probe(ae):
    kit = kit_of()
    actor, role = _principal()
    dimse.unregister_probe(kit, probes.check_ae(ae), actor=actor, role=role)
    return jsonify({"removed": ae})


@bp.post("/api/v1/ui/patients/<pid>/probe-session")
def start_session(pid):
    kit, data = kit_of(), _body()
    actor, _ = _principal()
    session = probes.start_session(kit.store, _probe_field(data), pid,
                                   minutes=float(kit.config["worklist.session_minutes"]), by=actor)
    kit.events.publish(PATIENT_UPDATED, patient_id=session["patient_id"])
    return jsonify(session), 201


@bp.delete("/api/v1/ui/patients/<pid>/probe-session")
def end_session(pid):
    kit, data = kit_of(), _body()
    ended = probes.end_session(kit.store, _probe_field(data), pid)
    kit.events.publish(PATIENT_UPDATED, patient_id=pid)
    return jsonify({"ended": ended})


@bp.post("/api/v1/ui/patients/<pid>/unmerge")
def unmerge(pid):
    """Split a merged record back out of the patient it was merged into (undo)."""
    from .ui_api import after_triage_change

    store = kit_of().store
    actor, _ = _principal()
    survivor = (patients.get_patient(store, pid, follow_merges=True) or {}).get("id")
    row = patients.unmerge(store, pid, by=actor)
    for p in (row, patients.get_patient(store, survivor) if survivor else None):
        if p:  # sync rows at each record's own priority again, and the hospital told
            after_triage_change(store, p["id"], p.get("triage") or "none")
    return jsonify({"patient": {k: row.get(k) for k in ("id", "tag", "name", "triage")}})


@bp.post("/api/v1/ui/instances/<uid>/assign")
def assign(uid):
    """Move one capture to a patient (never the patient): {"patient": id, "from": id seen}.
    Undo is the same call back to "from"."""
    kit, data = kit_of(), _body()
    target, seen = data.get("patient"), data.get("from")
    if not isinstance(target, str) or not target.strip():
        raise BadInput("say which patient the capture goes to: {\"patient\": \"T-1005\"}")
    if seen is not None and not isinstance(seen, str):
        raise BadInput("from must be the patient id the capture was seen on")
    actor, role = _principal()
    moved = patients.assign_capture(kit.store, uid, target.strip(), expected_from=seen, by=actor)
    accounts.audit_append(kit.store, actor=actor, role=role, action="capture.assign", object=uid,
                          detail={"from": moved["from"], "to": moved["to"]})
    return jsonify(moved)
