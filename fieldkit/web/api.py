"""JSON API: health and status."""

from flask import Blueprint, jsonify

from ..security import roles as R
from . import kit_of
from .guard import requires
from .messages import translate

bp = Blueprint("api", __name__)


@bp.get("/healthz")
@requires(R.PUBLIC)
def healthz():
    """Liveness for probes and load balancers: says nothing about patients."""
    kit = kit_of()
    return jsonify({"ok": True, "locked": kit.locked, "version": kit.version})


@bp.get("/api/v1/status")
@requires(R.STATUS_READ)
def status():
    return jsonify(shown_disk(kit_of().status()))


def shown_disk(out: dict) -> dict:
    """`out` with its disk message in the request's language (the board's banner shows it)."""
    disk = out.get("disk")
    if isinstance(disk, dict) and disk.get("message"):
        out = out | {"disk": disk | {"message": translate(disk["message"])}}
    return out
