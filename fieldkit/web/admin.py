"""The admin JSON API: users, machine tokens and the audit trail (its own blueprint)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..errors import BadInput
from ..security import roles as R
from ..security.passwords import secret_policy
from ..store import accounts
from . import json_object
from .sessions import current_kit, current_principal

bp = Blueprint("admin", __name__)

ROUTE_PERMISSIONS = {
    "admin.users": {"GET": R.USERS_MANAGE, "POST": R.USERS_MANAGE},
    "admin.user_disable": R.USERS_MANAGE,
    "admin.user_enable": R.USERS_MANAGE,
    "admin.user_reset": R.USERS_MANAGE,
    "admin.user_unlock": R.USERS_MANAGE,
    "admin.tokens": {"GET": R.USERS_MANAGE, "POST": R.USERS_MANAGE},
    "admin.token_revoke": R.USERS_MANAGE,
    "admin.audit_events": R.AUDIT_READ,
    "admin.audit_verify": R.AUDIT_READ,
}


def _actor():
    p = current_principal()
    return {"actor": p.actor, "actor_role": p.role}


@bp.route("/api/v1/users", methods=["GET", "POST"])
def users():
    store = current_kit().store
    if request.method == "GET":
        return jsonify({"users": accounts.list_users(store)})
    data = json_object(form=True)
    user = accounts.create_user(store, data.get("name", ""), data.get("secret", ""), data.get("role", ""),
                                **_actor(), **secret_policy(current_kit().config))
    return jsonify(user), 201


@bp.post("/api/v1/users/<name>/disable")
def user_disable(name):
    return jsonify(accounts.set_disabled(current_kit().store, name, True, **_actor()))


@bp.post("/api/v1/users/<name>/enable")
def user_enable(name):
    return jsonify(accounts.set_disabled(current_kit().store, name, False, **_actor()))


@bp.post("/api/v1/users/<name>/reset")
def user_reset(name):
    return jsonify(accounts.reset_secret(current_kit().store, name, json_object(form=True).get("secret", ""), **_actor(),
                                         **secret_policy(current_kit().config)))


@bp.post("/api/v1/users/<name>/unlock")
def user_unlock(name):
    return jsonify(accounts.clear_lockout(current_kit().store, name, **_actor()))


@bp.route("/api/v1/tokens", methods=["GET", "POST"])
def tokens():
    store = current_kit().store
    if request.method == "GET":
        return jsonify({"tokens": accounts.list_tokens(store)})
    data = json_object(form=True)
    days = data.get("days", current_kit().config.get("security.token_days", 365))
    if not isinstance(days, (int, float)) or isinstance(days, bool) or not (0 <= days <= 3650):
        raise BadInput("days must be a number from 0 (no expiry) to 3650")
    expires = accounts.CLOCK.wall() + days * 86400 if days else None
    p = current_principal()
    token, info = accounts.create_token_info(store, str(data.get("role", "")), expires,
                                             str(data.get("label", ""))[:200],
                                             owner=p.name if p.kind == "user" else "", **_actor())
    return jsonify(dict(info, token=token)), 201


@bp.post("/api/v1/tokens/<token_id>/revoke")
def token_revoke(token_id):
    return jsonify(accounts.revoke_token(current_kit().store, token_id, **_actor()))


@bp.get("/api/v1/audit")
def audit_events():
    try:
        since = int(request.args.get("since", "0"))
        limit = min(int(request.args.get("limit", "1000")), 10000)
    except ValueError:
        raise BadInput("since and limit must be integers") from None
    if since < 0 or limit < 1:
        raise BadInput("since must be >= 0 and limit >= 1")
    return jsonify({"events": accounts.audit_events(current_kit().store, since, limit)})


@bp.get("/api/v1/audit/verify")
def audit_verify():
    result = accounts.audit_verify(current_kit().store)
    return jsonify({"ok": result.ok, "count": result.count, "broken_seq": result.broken_seq,
                    "message": result.message()}), (200 if result.ok else 409)
