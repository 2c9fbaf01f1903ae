"""The access guard, the security headers and the request audit.

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
endpoint is public). A view may instead carry its permission itself, `@requires(R.STATUS_READ)`
under its route decorator; an endpoint declared both ways is an error. The table is built once, when the app factory installs the guard,
from every registered blueprint's module plus this module's own. An optional
`ROUTE_MAX_BYTES = {endpoint: bytes}` raises the request body limit of an upload
endpoint; every other endpoint accepts at most `security.max_body_kb`.

While the kit is locked only LOCKED_ALLOWED answers; everything else is 423.
"""

from __future__ import annotations

import logging
import os
import sys

from flask import Response, current_app, g, make_response, redirect, request, url_for

from ..errors import FieldkitError, Forbidden
from ..security import audit as _audit
from ..security import roles as R
from ..store import accounts
from . import sessions
from .sessions import PRE_COOKIE, STATE_CHANGING, current_kit, current_principal, kit_state

log = logging.getLogger(__name__)

ROUTE_PERMISSIONS = {
    "static": R.PUBLIC,  # the UI's local assets (no patient data)
}

# What still answers while the kit is locked
LOCKED_ALLOWED = frozenset({"auth.unlock", "auth.login", "api.healthz", "static"})

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


# ----------------------------------------------------------------------------- permission table

def _merged(app, key: str, name: str, own: dict) -> dict:
    """The blueprint modules' `name` dicts merged (then `own`), kept in app.extensions[key]."""
    table = app.extensions.get(key)
    if table is None:
        table = {}
        for blueprint in app.blueprints.values():
            table.update(getattr(sys.modules.get(blueprint.import_name), name, {}) or {})
        table.update(own)
        app.extensions[key] = table
    return table


def requires(permission: str | dict):
    """Declare the permission of a view at the view (a value as in ROUTE_PERMISSIONS); the
    permission table takes it in when it is built."""
    def declare(view):
        view.required_permission = permission
        return view
    return declare


def route_permissions(app=None) -> dict:
    """The merged {endpoint: permission} table of an app (built once): the blueprint
    modules' ROUTE_PERMISSIONS, then what views declare with `@requires`."""
    app = app or current_app
    built = "fieldkit.permission_table" in app.extensions
    table = _merged(app, "fieldkit.permission_table", "ROUTE_PERMISSIONS", ROUTE_PERMISSIONS)
    if not built:
        for endpoint, view in app.view_functions.items():
            permission = getattr(view, "required_permission", None)
            if permission is None:
                continue
            if endpoint in table:
                raise RuntimeError(f"endpoint {endpoint} declares its permission twice "
                                   "(in ROUTE_PERMISSIONS and with @requires)")
            table[endpoint] = permission
    return table


def route_max_bytes(app=None) -> dict:
    """The merged {endpoint: largest request body in bytes} of the upload endpoints."""
    return _merged(app or current_app, "fieldkit.route_max_bytes", "ROUTE_MAX_BYTES", {})


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


def require(permission: str) -> None:
    """For a view's finer checks (an object-level rule): raises 403 when refused."""
    p = current_principal()
    if not R.has_permission(p.role if p else None, permission):
        refusal = Forbidden(f"this needs the {permission!r} permission")
        refusal.needs = permission  # the page names the roles that hold it
        raise refusal


# ----------------------------------------------------------------------------- who is asking

def authenticate(kit, st: sessions.KitState):
    """Sets g.principal (or None) and g.auth ("token", "session" or "") ; returns an
    error response when presented credentials are bad."""
    g.principal, g.auth, g.session_key = None, "", None
    token = sessions.bearer()
    if token is not None:
        principal = accounts.verify_token(kit.store, token, remote=request.remote_addr or "") if token else None
        if principal is None:
            if not token:
                audit_quiet(kit, actor="?", role="", action="token.use", obj=request.path,
                            outcome=_audit.FAILED, detail={"reason": "unsupported Authorization header"})
            return deny(401, "invalid, expired or revoked token", audit=False)
        g.principal, g.auth = principal, "token"
        return None
    found = sessions.session_lookup(kit, st)
    if found is None:
        return None
    key, sess = found
    principal = accounts.user_principal(kit.store, sess.user)
    if principal is None:  # disabled or removed since sign-in
        with st.lock:
            st.sessions.pop(key, None)
        return None
    with st.lock:
        sess.last = kit.lock_state.last_human = sessions.mono()
    g.principal, g.auth, g.session_key, g.session = principal, "session", key, sess
    return None


# ----------------------------------------------------------------------------- responses

def wants_html() -> bool:
    if request.path.startswith(("/api/", "/dicom-web/", "/dicomweb/", "/wado", "/healthz")):
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "text/html"


def deny(status: int, message: str, *, audit: bool = True, reason: str = "", needs: str | None = None):
    if audit:
        p = current_principal()
        audit_quiet(current_kit(), actor=p.actor if p else "?", role=p.role if p else "", action="access",
                    obj=f"{request.method} {request.path}", outcome=_audit.DENIED,
                    detail={"reason": reason or message, "status": status, "remote": request.remote_addr or ""},
                    anonymous=p is None)
    if status == 401 and request.method == "GET" and wants_html():
        nxt = request.full_path if request.query_string else request.path
        return redirect(url_for("auth.login", next=nxt), 303)
    from . import _error
    resp = make_response(_error(status, message, needs=needs))
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="fieldkit"'
    return resp


def audit_quiet(kit, *, actor, role, action, obj="", outcome=_audit.OK, detail=None, anonymous=False):
    """Append to the audit trail without ever failing the request. Anonymous denials are
    rate-limited (120 a minute, then one summary) so a scanner cannot flood the trail."""
    if kit.locked:
        log.info("audit (kit locked, not stored): %s %s %s", action, outcome, obj)
        return
    st = kit_state(kit)
    if anonymous:
        now = sessions.mono()
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
    kit = current_kit()
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
        return deny(403, "this route is not declared in the kit's permission table", audit=False)

    limit = route_max_bytes(app).get(endpoint, int(kit.config.get("security.max_body_kb", 1024)) * 1024)
    if app.config.get("MAX_CONTENT_LENGTH"):
        limit = min(limit, app.config["MAX_CONTENT_LENGTH"])  # http.max_request_mb caps every endpoint
    request.max_content_length = limit
    request.max_form_memory_size = min(limit, 1 << 20)
    if request.content_length is not None and request.content_length > limit:
        return deny(413, f"request body larger than {limit} bytes", audit=False)

    if kit.locked and endpoint not in LOCKED_ALLOWED:
        if request.method == "GET" and wants_html():
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
        if request.method in STATE_CHANGING and g.auth != "token" and not sessions.csrf_ok():
            return deny(403, "missing or invalid CSRF token (reload the page)", reason="csrf")
        return None
    if principal is None:
        return deny(401, "sign in first (or send a bearer token)", reason="not authenticated")
    if not R.has_permission(principal.role, permission):
        return deny(403, f"your role ({principal.role}) may not do this", reason=f"needs {permission}",
                    needs=permission)
    if request.method in STATE_CHANGING and g.auth == "session" and not sessions.csrf_ok():
        return deny(403, "missing or invalid CSRF token (reload the page)", reason="csrf")
    g.permission = permission
    return None


def _flush_signin_summaries(kit) -> None:
    """Sign-in failure windows that ended are written within ~10 s even when nobody signs
    in any more (a flood that stopped)."""
    st = kit_state(kit)
    now = sessions.mono()
    with st.lock:
        if now - st.signin_flushed < 10.0:
            return
        st.signin_flushed = now
    try:
        accounts.flush_signin_audit(kit.store)
    except FieldkitError as exc:
        log.warning("could not write sign-in failure summaries: %s", exc.message)


def _after(response: Response) -> Response:
    kit = current_kit()
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
        if not kit.locked and (request.method in STATE_CHANGING or permission in AUDITED_READS):
            status = response.status_code
            outcome = _audit.OK if status < 400 else (_audit.DENIED if status in (401, 403) else _audit.FAILED)
            action = "view" if request.method in ("GET", "HEAD") else request.method.lower()
            if action == "view" and _recently_viewed(kit, principal.actor, request.path):
                return response
            audit_quiet(kit, actor=principal.actor, role=principal.role, action=action,
                        obj=f"{request.endpoint} {request.path}", outcome=outcome, detail={"status": status})
    return response


def _recently_viewed(kit, actor: str, path: str, window: float = 60.0) -> bool:
    """One "view" event per person and object per minute: a board that loads forty
    thumbnails, or a cine that streams, is one look, not forty durable writes."""
    st = kit_state(kit)
    now = sessions.mono()
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
    return {"csrf_token": sessions.csrf_token, "current_user": p.name if p and p.kind == "user" else "",
            "current_role": p.role if p else ""}


def init_app(app) -> None:
    """Called by the app factory once every blueprint is registered: builds the permission
    table, installs the guard (first of all before-request functions) and the headers."""
    route_permissions(app)
    route_max_bytes(app)
    app.before_request_funcs.setdefault(None, []).insert(0, _guard)
    app.after_request(_after)
    app.context_processor(_template_globals)
    app.config.setdefault("SECRET_KEY", os.urandom(32))  # Flask's own session is unused; never a default
