"""Sign-in and sign-out, the session's own JSON, and the kit's lock/unlock views.

Lock: `lock_kit(kit)` (fieldkit.kit.lock) stops the services, closes the store and forgets
the data key (the Python objects holding it are dropped; CPython cannot promise the bytes
are wiped). While locked, only the unlock page, the health check and static assets answer
(the guard, `guard.py`, refuses the rest with 423). `unlock_kit(kit, passphrase)` reopens
the store and restarts the services.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, g, jsonify, make_response, redirect, render_template, request, url_for
from flask_babel import gettext

from ..errors import FieldkitError, KeyUnavailable
from ..kit.lock import UnlockThrottled, lock_kit, unlock_kit
from ..security import roles as R
from ..security.signin import SigninPolicy
from ..store import accounts
from .guard import audit_quiet, require, wants_html  # noqa: F401  (ui_api imports require from here)
from .sessions import SESSION_COOKIE, csrf_token, current_kit, current_principal, end_session, new_session

bp = Blueprint("auth", __name__, template_folder="templates")

ROUTE_PERMISSIONS = {
    "auth.login": R.PUBLIC,
    "auth.logout": R.AUTHENTICATED,
    "auth.unlock": R.PUBLIC,
    "auth.lock": R.KIT_LOCK,
    "auth.session_info": R.AUTHENTICATED,
}


def safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _form_or_json() -> dict:
    if request.is_json:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}
    return request.form


@bp.route("/login", methods=["GET", "POST"])
def login():
    kit = current_kit()
    if kit.locked:
        return redirect(url_for("auth.unlock"), 303)
    nxt = safe_next(request.values.get("next"))
    if request.method in ("GET", "HEAD"):
        return render_template("login.html", error="", next=nxt, username="")
    data = _form_or_json()
    name, secret = data.get("username", ""), data.get("password", "")
    if not isinstance(name, str) or not isinstance(secret, str):
        name, secret = "", ""
    result = accounts.verify_login(kit.store, name, secret, remote=request.remote_addr or "",
                                   policy=SigninPolicy.from_config(kit.config))
    if not result.ok or not R.is_human(result.principal.role):
        if result.reason in ("locked out", "address blocked") or result.reason.startswith("too many"):
            message = gettext("Too many wrong attempts. Try again in %(n)s seconds.", n=int(result.retry_after) + 1)
            status = 429
        elif result.reason == "busy":
            message, status = gettext("The kit is busy with other sign-ins. Try again in a moment."), 503
        else:
            message, status = gettext("Wrong user name or PIN/password."), 401
        if request.is_json:
            resp = make_response(jsonify({"error": message, "status": status}), status)
        else:
            resp = make_response(render_template("login.html", error=message, next=nxt, username=name[:64]), status)
        if status in (429, 503):
            resp.headers["Retry-After"] = str(int(result.retry_after) + 1)
        return resp
    sid = new_session(kit, result.principal)
    resp = jsonify({"ok": True, "user": result.principal.name, "role": result.principal.role}) \
        if request.is_json else redirect(nxt, 303)
    resp.set_cookie(SESSION_COOKIE, sid, secure=True, httponly=True, samesite="Strict", path="/")
    return resp


@bp.post("/logout")
def logout():
    kit = current_kit()
    end_session(kit)
    p = current_principal()
    audit_quiet(kit, actor=p.actor, role=p.role, action="logout", obj=p.name)
    g.permission = None  # already audited
    resp = redirect(url_for("auth.login"), 303) if not request.is_json else jsonify({"ok": True})
    resp.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="Strict", path="/")
    return resp


@bp.get("/api/v1/session")
def session_info():
    p = current_principal()
    return jsonify({"user": p.name, "kind": p.kind, "role": p.role, "csrf_token": csrf_token(),
                    "permissions": sorted(R.ROLE_PERMISSIONS.get(p.role, ()))})


# ----------------------------------------------------------------------------- lock / unlock

def _unlock_needs_admin(kit) -> bool:
    """A kit that keeps no key on disk (key mode passphrase) is unlocked over the network
    only by an admin who also knows the passphrase."""
    try:
        return kit.keyring.mode == "passphrase"
    except FieldkitError:
        return True


@bp.route("/unlock", methods=["GET", "POST"])
def unlock():
    kit = current_kit()
    need_admin = _unlock_needs_admin(kit)

    def page(error: str, status: int = 200):
        return make_response(render_template("login.html", unlock=True, need_admin=need_admin, error=error,
                                             next="/", username=""), status)

    if request.method in ("GET", "HEAD"):
        if not kit.locked:
            return redirect(url_for("auth.login"), 303)
        return page("")
    data = _form_or_json()
    passphrase = data.get("passphrase", "")
    admin = None
    if need_admin:
        name, secret = data.get("username", ""), data.get("password", "")
        admin = (name, secret) if isinstance(name, str) and isinstance(secret, str) else ("", "")
    try:
        unlock_kit(kit, passphrase, remote=request.remote_addr or "", admin=admin)
    except UnlockThrottled as exc:
        resp = page(exc.message, 429)
        resp.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return resp
    except KeyUnavailable:
        wrong = gettext("Wrong admin sign-in or kit passphrase.") if need_admin else gettext("Wrong kit passphrase.")
        return page(wrong, 401)
    if request.is_json:
        return jsonify({"ok": True, "locked": False})
    return redirect(url_for("auth.login"), 303)


@bp.post("/admin/lock")
def lock():
    p = current_principal()
    g.permission = None  # audited by lock_kit itself (before the store closes)
    lock_kit(current_kit(), actor=p.actor, role=p.role)
    if request.is_json or not wants_html():
        resp = jsonify({"ok": True, "locked": True})
    else:
        resp = redirect(url_for("auth.unlock"), 303)
    resp.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="Strict", path="/")
    return resp
