"""Time, place and movement from the tablets, under /api/v1/ui/: interventions with their
times, the zone a patient is in, their disposition, and the kit-wide lists the tablets
choose from. The triage role may write these (care.write), as a clinician may; the rules
and the history are in store.care.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import BadInput
from ..security import roles as R
from ..store import care
from ..store.board import public_patient
from . import json_object as _body, kit_of
from .guard import requires

bp = Blueprint("care", __name__, url_prefix="/api/v1/ui")


def _actor() -> str:
    from .sessions import current_principal
    p = current_principal()
    return p.actor if p else ""


def _answer(row: dict):
    return jsonify({"patient": public_patient(row), **care.card_fields(row),
                    "movement_history": row.get("movement_history") or []})


def options_of(config) -> dict:
    return {"zones": list(config["triage.zones"]),
            "interventions": {k: v or "Other" for k, v in care.INTERVENTIONS.items()},
            "dispositions": care.DISPOSITIONS,
            "retriage_minutes": care.retriage_minutes(config["triage.retriage_minutes"])}


@bp.get("/care/options")
@requires(R.PATIENTS_READ)
def options():
    """The kit's zones, intervention kinds, dispositions and re-triage intervals."""
    return jsonify(options_of(kit_of().config))


@bp.post("/patients/<pid>/interventions")
@requires(R.CARE_WRITE)
def intervention(pid):
    data = _body()
    at = data.get("at")
    row = care.add_intervention(kit_of().store, pid, data.get("kind"), data.get("text") or "",
                                at=at, by=_actor())
    return _answer(row)


@bp.post("/patients/<pid>/place")
@requires(R.CARE_WRITE)
def place(pid):
    kit = kit_of()
    zone = _body().get("zone", "")
    if not isinstance(zone, str):
        raise BadInput("zone must be text")
    return _answer(care.set_zone(kit.store, pid, zone, list(kit.config["triage.zones"]), by=_actor()))


@bp.post("/patients/<pid>/disposition")
@requires(R.CARE_WRITE)
def disposition(pid):
    data = _body()
    row = care.set_disposition(kit_of().store, pid, data.get("state"), destination=data.get("destination"),
                               vehicle=data.get("vehicle"), by=_actor())
    return _answer(row)
