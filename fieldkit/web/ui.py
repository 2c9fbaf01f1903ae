"""The tablet UI: page shells for the triage board, new patient (START assistant), patient
review (captures, cine, findings), sync and device; the web app manifest and the service
worker. What a page shows is fetched from fieldkit.web.ui_api and kept fresh by the live
stream (fieldkit.web.live); scripts are files under static/ (the CSP forbids inline script).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, render_template

from ..security import roles as R
from . import kit_of

bp = Blueprint("ui", __name__)

ROUTE_PERMISSIONS = {
    "ui.board": R.PATIENTS_READ,
    "ui.new_patient": R.TRIAGE_WRITE,
    "ui.patient": R.PATIENTS_READ,
    "ui.sync": R.QUEUE_READ,
    "ui.device": R.STATUS_READ,
    "ui.service_worker": R.PUBLIC,  # code only, no data
    "ui.manifest": R.PUBLIC,
}

STATIC = Path(__file__).parent / "static"


@bp.app_context_processor
def _permissions():
    """`can("triage.write")` in templates: show only what the signed-in role may use."""
    def can(permission: str) -> bool:
        from .sessions import current_principal
        p = current_principal()
        return R.has_permission(p.role if p else None, permission)
    return {"can": can}


@bp.get("/")
def board():
    return render_template("board.html", page="board")


@bp.get("/patients/new")
def new_patient():
    # the keypad the tablet brings up for the tag (it cannot be guessed before the first key)
    return render_template("new_patient.html", page="new", tag_format=kit_of().config["triage.tag_format"])


@bp.get("/patients/<pid>")
def patient(pid):
    return render_template("patient.html", page="patient", patient_id=pid)


@bp.get("/sync")
def sync():
    return render_template("sync.html", page="sync")


@bp.get("/device")
def device():
    return render_template("device.html", page="device")


@bp.get("/sw.js")
def service_worker():
    # served from the root so that its scope is the whole app
    return Response((STATIC / "js" / "sw.js").read_bytes(), mimetype="text/javascript",
                    headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})


@bp.get("/manifest.webmanifest")
def manifest():
    return Response((STATIC / "manifest.webmanifest").read_bytes(), mimetype="application/manifest+json",
                    headers={"Cache-Control": "no-cache"})
