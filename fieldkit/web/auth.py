"""Sign-in, sessions, bearer tokens, CSRF, security headers and the access guard.

The guard
---------
Every request passes one `before_request` guard. It looks up the endpoint in the
permission table and REFUSES any endpoint that is not declared there, so a route added
without a declaration cannot be reached (and tests/test_access_matrix.py fails).

Each blueprint module declares its endpoints in a module-level dict:

    ROUTE_PERMISSIONS = {
        "patients.list": "patients.read",                        # every method
        "patients.detail": {"GET": "patients.read", "PUT": "patients.write"},
        "patients.upload": "ingest.upload",
    }

Values are a permission from `fieldkit.security.roles` (or "public", "authenticated"), or a
dict per HTTP method (HEAD follows GET; OPTIONS needs "authenticated" unless the whole
endpoint is public). The table is built from every registered blueprint's module, plus
this module's own. An optional `ROUTE_MAX_BYTES = {endpoint: bytes}` raises the request
body limit of an upload endpoint; every other endpoint accepts at most
`security.max_body_kb`.

Who is asking
-------------
- A bearer token (`Authorization: Bearer fkt_…`, or HTTP Basic with user name "token" and
  the token as password, for DICOMweb clients that only speak Basic). No CSRF check: a
  token is never sent by a browser on its own.
- Else a session cookie `__Host-fk_session` (Secure, HttpOnly, SameSite=Strict), issued
  at sign-in (a fresh id every time: no fixation), expired after
  `http.session_idle_minutes` idle and `security.session_max_hours` in all, dropped at
  sign-out and when the kit locks. Sessions live in memory only: a restart signs
  everybody out.

CSRF
----
Every POST/PUT/PATCH/DELETE made with a session must carry the session's CSRF token, as
the form field `csrf_token` or the header `X-CSRF-Token` (for fetch). Templates get it
from `csrf_token()`; scripts from `<meta name="csrf-token">` or GET /api/v1/session.
Public forms (sign-in, unlock) carry a token bound to a pre-session cookie.

Lock
----
`lock_kit(kit)` stops the services, closes the store and forgets the data key (the Python
objects holding it are dropped; CPython cannot promise the bytes are wiped). While locked,
only the unlock page, the health check and static assets answer; everything else is 423.
`unlock_kit(kit, passphrase)` reopens the store and restarts the services.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import (Blueprint, Response, current_app, g, jsonify, make_response, redirect, render_template,
                   request, url_for)
from flask_babel import gettext

from ..errors import BadInput, FieldkitError, KeyUnavailable
from ..kit.lock import UnlockThrottled, lock_kit, unlock_kit
from ..security import audit as _audit
from ..security import roles as R
from ..security import tokens as _tokens
from ..security.signin import SigninPolicy
from ..store import accounts
from .openapi import describe

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, template_folder="templates")

SESSION_COOKIE = "__Host-fk_session"
PRE_COOKIE = "__Host-fk_pre"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_SESSIONS = 1000

ROUTE_PERMISSIONS = {
    "static": R.PUBLIC,  # the UI's local assets (no patient data)
    "auth.login": R.PUBLIC,
    "auth.login_css": R.PUBLIC,
    "auth.logout": R.AUTHENTICATED,
    "auth.unlock": R.PUBLIC,
    "auth.lock": R.KIT_LOCK,
    "auth.session_info": R.AUTHENTICATED,
    "auth.users": {"GET": R.USERS_MANAGE, "POST": R.USERS_MANAGE},
    "auth.user_disable": R.USERS_MANAGE,
    "auth.user_enable": R.USERS_MANAGE,
    "auth.user_reset": R.USERS_MANAGE,
    "auth.user_unlock": R.USERS_MANAGE,
    "auth.tokens": {"GET": R.USERS_MANAGE, "POST": R.USERS_MANAGE},
    "auth.token_revoke": R.USERS_MANAGE,
    "auth.audit_events": R.AUDIT_READ,
    "auth.audit_verify": R.AUDIT_READ,
    "auth.openapi": R.AUTHENTICATED,
}

# What still answers while the kit is locked
LOCKED_ALLOWED = frozenset({"auth.unlock", "auth.login", "auth.login_css", "api.healthz", "static"})

# Reads that are audited as "viewed" (everything state-changing is audited anyway)
AUDITED_READS = frozenset({R.PATIENTS_READ, R.DICOMWEB_READ, R.EXPORT, R.AUDIT_READ, R.USERS_MANAGE})

# 'wasm-unsafe-eval' lets the vendored barcode reader compile its WebAssembly (no eval of JS)
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; font-src 'self'; worker-src 'self'; "
       "manifest-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), microphone=(), camera=(self), payment=(), usb=()",
}


# ----------------------------------------------------------------------------- per-kit state

@dataclass
class Session:
    user: str
    role: str
    csrf: str
    created: float  # monotonic
    last: float  # monotonic
    generation: int


@dataclass
class KitState:
    """In-memory web state of one running kit: sessions, the CSRF secret, denial counts.
    Its lock is the kit's lock state's (fieldkit.kit.lock): locking the kit signs everybody out."""

    lock: threading.RLock
    sessions: dict = field(default_factory=dict)  # sha256(session id) -> Session
    recent_views: dict = field(default_factory=dict)  # (actor, path) -> monotonic time of the last "view" event
    pre_secret: bytes = field(default_factory=lambda: os.urandom(32))
    denials: list = field(default_factory=lambda: [0.0, 0, 0])  # window start, count, suppressed
    signin_flushed: float = 0.0  # monotonic time sign-in failure summaries were last written


_states: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def kit_state(kit) -> KitState:
    with _states_lock:
        st = _states.get(kit)
        if st is None:
            st = KitState(lock=kit.lock_state.lock)
            kit.lock_state.on_lock.append(st.sessions.clear)
            _states[kit] = st
        return st


def secret_policy(cfg) -> dict:
    return {"min_pin": int(cfg.get("security.pin_min_length", 6)),
            "min_password": int(cfg.get("security.password_min_length", 10))}


def _kit():
    return current_app.extensions["fieldkit"]


def _mono() -> float:
    return accounts.CLOCK.mono()


# ----------------------------------------------------------------------------- permission table

def route_permissions(app=None) -> dict:
    """The merged {endpoint: permission} table of an app (built once, at first use)."""
    import sys

    app = app or current_app
    table = app.extensions.get("fieldkit.permission_table")
    if table is not None:
        return table
    table = dict(app.extensions.get("fieldkit.route_permissions", {}))
    for blueprint in app.blueprints.values():
        module = sys.modules.get(blueprint.import_name)
        table.update(getattr(module, "ROUTE_PERMISSIONS", {}) or {})
    table.update(ROUTE_PERMISSIONS)
    app.extensions["fieldkit.permission_table"] = table
    return table


def route_max_bytes(app=None) -> dict:
    import sys

    app = app or current_app
    sizes = app.extensions.get("fieldkit.route_max_bytes")
    if sizes is None:
        sizes = {}
        for blueprint in app.blueprints.values():
            module = sys.modules.get(blueprint.import_name)
            sizes.update(getattr(module, "ROUTE_MAX_BYTES", {}) or {})
        app.extensions["fieldkit.route_max_bytes"] = sizes
    return sizes


def permission_for(table: dict, endpoint: str | None, method: str) -> str | None:
    """The permission a request needs, or None when the endpoint/method is undeclared."""
    if endpoint is None or endpoint not in table:
        return None
    entry = table[endpoint]
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        return None
    if method in entry:
        return entry[method]
    if method == "HEAD" and "GET" in entry:
        return entry["GET"]
    if method == "OPTIONS":
        return R.PUBLIC if entry and all(v == R.PUBLIC for v in entry.values()) else R.AUTHENTICATED
    return None


# ----------------------------------------------------------------------------- who is asking

def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            user, _, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        return secret if user == "token" else ""
    return ""  # an Authorization header we do not accept is a failed authentication


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


def _session_lookup(kit, st: KitState) -> tuple[str, Session] | None:
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid or len(sid) > 128:
        return None
    key = _digest(sid)
    cfg = kit.config
    idle = float(cfg["http.session_idle_minutes"]) * 60
    max_age = float(cfg.get("security.session_max_hours", 12)) * 3600
    with st.lock:
        # read under the lock: a parallel request of the same session may have moved `last`
        # on after our read, and `now < last` would then look like a clock gone backwards
        now = _mono()
        sess = st.sessions.get(key)
        if sess is None:
            return None
        if sess.generation != kit.lock_state.generation or now - sess.last > idle or now - sess.created > max_age \
                or now < sess.last:
            del st.sessions[key]
            return None
        return key, sess


def authenticate(kit, st: KitState):
    """Sets g.principal (or None) and g.auth ("token", "session" or "") ; returns an
    error response when presented credentials are bad."""
    g.principal, g.auth, g.session_key = None, "", None
    token = _bearer()
    if token is not None:
        principal = accounts.verify_token(kit.store, token, remote=request.remote_addr or "") if token else None
        if principal is None:
            if not token:
                _audit_quiet(kit, actor="?", role="", action="token.use", obj=request.path,
                             outcome=_audit.FAILED, detail={"reason": "unsupported Authorization header"})
            return _deny(401, "invalid, expired or revoked token", audit=False)
        g.principal, g.auth = principal, "token"
        return None
    found = _session_lookup(kit, st)
    if found is None:
        return None
    key, sess = found
    principal = accounts.user_principal(kit.store, sess.user)
    if principal is None:  # disabled or removed since sign-in
        with st.lock:
            st.sessions.pop(key, None)
        return None
    with st.lock:
        sess.last = kit.lock_state.last_human = _mono()
    g.principal, g.auth, g.session_key, g.session = principal, "session", key, sess
    return None


def current_principal() -> accounts.Principal | None:
    """The person or token behind this request (None when anonymous)."""
    return getattr(g, "principal", None)


def require(permission: str) -> None:
    """For a view's finer checks (an object-level rule): raises 403 when refused."""
    p = current_principal()
    if not R.has_permission(p.role if p else None, permission):
        from ..errors import Forbidden
        refusal = Forbidden(f"this needs the {permission!r} permission")
        refusal.needs = permission  # the page names the roles that hold it
        raise refusal


# ----------------------------------------------------------------------------- CSRF

def csrf_token() -> str:
    """The token a form or fetch must send back (session token, or the pre-session one)."""
    sess = getattr(g, "session", None)
    if sess is not None:
        return sess.csrf
    return _pre_token()


def _pre_token() -> str:
    pre = getattr(g, "pre_cookie", None) or request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) > 128:
        pre = _tokens.new_secret()
    g.pre_cookie = pre
    st = kit_state(_kit())
    return hmac.new(st.pre_secret, pre.encode(), hashlib.sha256).hexdigest()


def _sent_csrf() -> str:
    value = request.headers.get(CSRF_HEADER)
    if value is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = request.form.get(CSRF_FIELD)
    return value or ""


def _csrf_ok() -> bool:
    sent = _sent_csrf()
    if not sent:
        return False
    sess = getattr(g, "session", None)
    if sess is not None:
        return _tokens.same(sent, sess.csrf)
    pre = request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) > 128:
        return False
    st = kit_state(_kit())
    return _tokens.same(sent, hmac.new(st.pre_secret, pre.encode(), hashlib.sha256).hexdigest())


# ----------------------------------------------------------------------------- responses

def _wants_html() -> bool:
    if request.path.startswith(("/api/", "/dicom-web/", "/dicomweb/", "/wado", "/healthz")):
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "text/html"


def _deny(status: int, message: str, *, audit: bool = True, reason: str = "", needs: str | None = None):
    if audit:
        p = current_principal()
        _audit_quiet(_kit(), actor=p.actor if p else "?", role=p.role if p else "", action="access",
                     obj=f"{request.method} {request.path}", outcome=_audit.DENIED,
                     detail={"reason": reason or message, "status": status, "remote": request.remote_addr or ""},
                     anonymous=p is None)
    if status == 401 and request.method == "GET" and _wants_html():
        nxt = request.full_path if request.query_string else request.path
        return redirect(url_for("auth.login", next=nxt), 303)
    from . import _error
    resp = make_response(_error(status, message, needs=needs))
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="fieldkit"'
    return resp


def _audit_quiet(kit, *, actor, role, action, obj="", outcome=_audit.OK, detail=None, anonymous=False):
    """Append to the audit trail without ever failing the request. Anonymous denials are
    rate-limited (120 a minute, then one summary) so a scanner cannot flood the trail."""
    if kit.locked:
        log.info("audit (kit locked, not stored): %s %s %s", action, outcome, obj)
        return
    st = kit_state(kit)
    if anonymous:
        now = _mono()
        with st.lock:
            window, count, suppressed = st.denials
            if now - window > 60:
                if suppressed:
                    detail = dict(detail or {}, suppressed_in_last_minute=suppressed)
                st.denials[:] = [now, 1, 0]
            elif count >= 120:
                st.denials[2] += 1
                return
            else:
                st.denials[1] += 1
    try:
        accounts.audit_append(kit.store, actor=actor, role=role, action=action, object=obj,
                              outcome=outcome, detail=detail)
    except FieldkitError as exc:
        log.warning("could not write an audit event: %s", exc.message)


# ----------------------------------------------------------------------------- the guard

def _guard():
    app = current_app
    kit = _kit()
    st = kit_state(kit)
    g.principal, g.auth, g.session_key = None, "", None
    if request.url_rule is None:
        return None  # no such route or method: Flask answers 404/405
    endpoint = request.endpoint
    permission = permission_for(route_permissions(app), endpoint, request.method)
    if permission is None or (permission not in (R.PUBLIC, R.AUTHENTICATED)
                              and not R.is_known_permission(permission)):
        log.error("refused %s %s: endpoint %s is not declared in a ROUTE_PERMISSIONS table",
                  request.method, request.path, endpoint)
        return _deny(403, "this route is not declared in the kit's permission table", audit=False)

    limit = route_max_bytes(app).get(endpoint, int(kit.config.get("security.max_body_kb", 1024)) * 1024)
    if app.config.get("MAX_CONTENT_LENGTH"):
        limit = min(limit, app.config["MAX_CONTENT_LENGTH"])  # http.max_request_mb caps every endpoint
    request.max_content_length = limit
    request.max_form_memory_size = min(limit, 1 << 20)
    if request.content_length is not None and request.content_length > limit:
        return _deny(413, f"request body larger than {limit} bytes", audit=False)

    if kit.locked and endpoint not in LOCKED_ALLOWED:
        if request.method == "GET" and _wants_html():
            return redirect(url_for("auth.unlock"), 303)
        from . import _error
        return _error(423, "the kit is locked: unlock it with the kit passphrase")

    if kit.locked:
        g.principal = None
    else:
        err = authenticate(kit, st)
        if err is not None:
            return err
    principal = current_principal()

    if permission == R.PUBLIC:
        if request.method in STATE_CHANGING and g.auth != "token" and not _csrf_ok():
            return _deny(403, "missing or invalid CSRF token (reload the page)", reason="csrf")
        return None
    if principal is None:
        return _deny(401, "sign in first (or send a bearer token)", reason="not authenticated")
    if not R.has_permission(principal.role, permission):
        return _deny(403, f"your role ({principal.role}) may not do this", reason=f"needs {permission}",
                     needs=permission)
    if request.method in STATE_CHANGING and g.auth == "session" and not _csrf_ok():
        return _deny(403, "missing or invalid CSRF token (reload the page)", reason="csrf")
    g.permission = permission
    return None


def _flush_signin_summaries(kit) -> None:
    """Sign-in failure windows that ended are written within ~10 s even when nobody signs
    in any more (a flood that stopped)."""
    st = kit_state(kit)
    now = _mono()
    with st.lock:
        if now - st.signin_flushed < 10.0:
            return
        st.signin_flushed = now
    try:
        accounts.flush_signin_audit(kit.store)
    except FieldkitError as exc:
        log.warning("could not write sign-in failure summaries: %s", exc.message)


def _after(response: Response) -> Response:
    kit = _kit()
    if not kit.locked:
        _flush_signin_summaries(kit)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    if getattr(g, "pre_cookie", None) and request.cookies.get(PRE_COOKIE) != g.pre_cookie:
        response.set_cookie(PRE_COOKIE, g.pre_cookie, secure=True, httponly=True, samesite="Strict", path="/")
    principal = current_principal()
    permission = getattr(g, "permission", None)
    if principal is not None and permission is not None:
        kit = _kit()
        if not kit.locked and (request.method in STATE_CHANGING or permission in AUDITED_READS):
            status = response.status_code
            outcome = _audit.OK if status < 400 else (_audit.DENIED if status in (401, 403) else _audit.FAILED)
            action = "view" if request.method in ("GET", "HEAD") else request.method.lower()
            if action == "view" and _recently_viewed(kit, principal.actor, request.path):
                return response
            _audit_quiet(kit, actor=principal.actor, role=principal.role, action=action,
                         obj=f"{request.endpoint} {request.path}", outcome=outcome, detail={"status": status})
    return response


def _recently_viewed(kit, actor: str, path: str, window: float = 60.0) -> bool:
    """One "view" event per person and object per minute: a board that loads forty
    thumbnails, or a cine that streams, is one look, not forty durable writes."""
    st = kit_state(kit)
    now = _mono()
    key = (actor, path)
    with st.lock:
        last = st.recent_views.get(key)
        if last is not None and 0 <= now - last < window:
            return True
        st.recent_views[key] = now
        if len(st.recent_views) > 5000:
            for k in [k for k, t in st.recent_views.items() if now - t >= window]:
                del st.recent_views[k]
    return False


def _template_globals():
    p = current_principal()
    return {"csrf_token": csrf_token, "current_user": p.name if p and p.kind == "user" else "",
            "current_role": p.role if p else ""}


def init_app(app) -> None:
    """Called by the app factory: registers this blueprint, the guard and the headers."""
    app.register_blueprint(bp)
    app.before_request_funcs.setdefault(None, []).insert(0, _guard)
    app.after_request(_after)
    app.context_processor(_template_globals)
    app.config.setdefault("SECRET_KEY", os.urandom(32))  # Flask's own session is unused; never a default


# ----------------------------------------------------------------------------- sessions

def _new_session(kit, principal) -> str:
    st = kit_state(kit)
    sid = _tokens.new_secret()
    now = _mono()
    with st.lock:
        old = getattr(g, "session_key", None) or (_digest(request.cookies[SESSION_COOKIE])
                                                   if request.cookies.get(SESSION_COOKIE) else None)
        if old:
            st.sessions.pop(old, None)  # rotate: the pre-sign-in id never becomes a session
        if len(st.sessions) >= MAX_SESSIONS:
            oldest = min(st.sessions, key=lambda k: st.sessions[k].last)
            del st.sessions[oldest]
        st.sessions[_digest(sid)] = Session(principal.name, principal.role, _tokens.new_secret(), now, now,
                                            kit.lock_state.generation)
        kit.lock_state.last_human = now
    return sid


def _safe_next(value: str | None) -> str:
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


@bp.get("/auth/login.css")
def login_css():
    return Response(_LOGIN_CSS, mimetype="text/css", headers={"Cache-Control": "max-age=3600"})


@bp.route("/login", methods=["GET", "POST"])
def login():
    kit = _kit()
    if kit.locked:
        return redirect(url_for("auth.unlock"), 303)
    nxt = _safe_next(request.values.get("next"))
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
    sid = _new_session(kit, result.principal)
    resp = jsonify({"ok": True, "user": result.principal.name, "role": result.principal.role}) \
        if request.is_json else redirect(nxt, 303)
    resp.set_cookie(SESSION_COOKIE, sid, secure=True, httponly=True, samesite="Strict", path="/")
    return resp


@bp.post("/logout")
def logout():
    kit = _kit()
    st = kit_state(kit)
    key = getattr(g, "session_key", None)
    if key:
        with st.lock:
            st.sessions.pop(key, None)
    p = current_principal()
    _audit_quiet(kit, actor=p.actor, role=p.role, action="logout", obj=p.name)
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
    kit = _kit()
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
    lock_kit(_kit(), actor=p.actor, role=p.role)
    if request.is_json or not _wants_html():
        resp = jsonify({"ok": True, "locked": True})
    else:
        resp = redirect(url_for("auth.unlock"), 303)
    resp.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="Strict", path="/")
    return resp


# ----------------------------------------------------------------------------- admin JSON API

def _actor():
    p = current_principal()
    return {"actor": p.actor, "actor_role": p.role}


def _body() -> dict:
    data = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(data, dict):
        raise BadInput("send a JSON object")
    return data


@bp.route("/api/v1/users", methods=["GET", "POST"])
def users():
    store = _kit().store
    if request.method == "GET":
        return jsonify({"users": accounts.list_users(store)})
    data = _body()
    user = accounts.create_user(store, data.get("name", ""), data.get("secret", ""), data.get("role", ""),
                                **_actor(), **secret_policy(_kit().config))
    return jsonify(user), 201


@bp.post("/api/v1/users/<name>/disable")
def user_disable(name):
    return jsonify(accounts.set_disabled(_kit().store, name, True, **_actor()))


@bp.post("/api/v1/users/<name>/enable")
def user_enable(name):
    return jsonify(accounts.set_disabled(_kit().store, name, False, **_actor()))


@bp.post("/api/v1/users/<name>/reset")
def user_reset(name):
    return jsonify(accounts.reset_secret(_kit().store, name, _body().get("secret", ""), **_actor(),
                                         **secret_policy(_kit().config)))


@bp.post("/api/v1/users/<name>/unlock")
def user_unlock(name):
    return jsonify(accounts.clear_lockout(_kit().store, name, **_actor()))


@bp.route("/api/v1/tokens", methods=["GET", "POST"])
def tokens():
    store = _kit().store
    if request.method == "GET":
        return jsonify({"tokens": accounts.list_tokens(store)})
    data = _body()
    days = data.get("days", _kit().config.get("security.token_days", 365))
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
    return jsonify(accounts.revoke_token(_kit().store, token_id, **_actor()))


@bp.get("/api/v1/audit")
def audit_events():
    try:
        since = int(request.args.get("since", "0"))
        limit = min(int(request.args.get("limit", "1000")), 10000)
    except ValueError:
        raise BadInput("since and limit must be integers") from None
    if since < 0 or limit < 1:
        raise BadInput("since must be >= 0 and limit >= 1")
    return jsonify({"events": accounts.audit_events(_kit().store, since, limit)})


@bp.get("/api/v1/audit/verify")
def audit_verify():
    result = accounts.audit_verify(_kit().store)
    return jsonify({"ok": result.ok, "count": result.count, "broken_seq": result.broken_seq,
                    "message": result.message()}), (200 if result.ok else 409)


@bp.get("/api/v1/openapi.json")
def openapi():
    table = route_permissions(current_app)
    return jsonify(describe(current_app, lambda endpoint, method: permission_for(table, endpoint, method)))


_LOGIN_CSS = """
body{font-family:system-ui,sans-serif;background:#f4f4f2;color:#111;margin:0;display:flex;min-height:100vh;
align-items:center;justify-content:center}
main{background:#fff;border:2px solid #222;border-radius:12px;padding:1.5rem;width:min(26rem,92vw)}
h1{font-size:1.6rem;margin:0 0 1rem}
label{display:block;font-size:1.2rem;margin:.8rem 0 .3rem}
input{font-size:1.4rem;width:100%;box-sizing:border-box;padding:.7rem;border:2px solid #222;border-radius:8px}
button{font-size:1.4rem;width:100%;min-height:3.5rem;margin-top:1.2rem;border:0;border-radius:8px;
background:#0b4f8a;color:#fff}
select{font-size:1.2rem;width:100%;min-height:3rem}
#lang-form{margin-top:1.5rem;border-top:1px solid #999}
#lang-form button{background:#444}
.error{background:#fde2e1;border:2px solid #a40000;color:#600;padding:.7rem;border-radius:8px}
"""
