"""JSON API: health and status."""

from flask import Blueprint, jsonify

from . import kit_of

bp = Blueprint("api", __name__)

ROUTE_PERMISSIONS = {
    "api.healthz": "public",
    "api.status": "status.read",
}


@bp.get("/healthz")
def healthz():
    """Liveness for probes and load balancers: says nothing about patients."""
    kit = kit_of()
    return jsonify({"ok": True, "locked": kit.locked, "version": kit.version})


@bp.get("/api/v1/status")
def status():
    return jsonify(kit_of().status())
