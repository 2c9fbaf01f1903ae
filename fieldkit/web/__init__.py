"""The Flask app factory (layer 4): one blueprint per area, every asset local.

Blueprints are listed in BLUEPRINTS as "module:attribute"; each blueprint module declares
the permission of each of its endpoints in a module-level ROUTE_PERMISSIONS dict, or at
the view with `@guard.requires(...)`, which the access guard (fieldkit.web.guard) enforces. A route without a declaration is refused.
"""

from __future__ import annotations

import importlib

from flask import Flask, jsonify, request

from ..errors import BadInput, FieldkitError

# "module:attribute" of each blueprint, registered in this order. Add one line per area.
BLUEPRINTS: list[str] = [
    "fieldkit.web.api:bp",
    "fieldkit.web.dicomweb:bp",
    "fieldkit.web.wado_uri:bp",  # WADO-URI (/wado), legacy links to the same objects
    "fieldkit.web.upload:bp",
    "fieldkit.web.onboarding:bp",
    "fieldkit.web.ui:bp",  # tablet UI pages, manifest, service worker
    "fieldkit.web.ui_api:bp",  # JSON behind the tablet UI
    "fieldkit.web.live:bp",  # live updates (Server-Sent Events)
    "fieldkit.web.linking:bp",  # registered probes, probe sessions, undoing a merge
    "fieldkit.web.handover:bp",  # the board as a CSV and a printable list for the transport team
    "fieldkit.web.care:bp",  # interventions, zone, disposition from the tablets
    "fieldkit.web.handover_sheet:bp",  # per-patient handover sheet: print view, PDF kept in the patient's study
    "fieldkit.web.incident:bp",  # incident summary for incident command: per category over time, zone, destination
    "fieldkit.web.offline:bp",  # offline tablet writes: the queue key, the replay
    "fieldkit.web.i18n:bp",  # the UI's languages: the picker, Flask-Babel
    "fieldkit.web.auth:bp",  # sign-in/out, the session's JSON, lock and unlock
    "fieldkit.web.admin:bp",  # users, tokens, the audit trail
    "fieldkit.web.openapi:bp",  # the API's OpenAPI description
]


def _load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_app(kit, testing: bool = False) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=testing,
        MAX_CONTENT_LENGTH=kit.config["http.max_request_mb"] * (1 << 20),
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        JSON_SORT_KEYS=False,
    )
    app.extensions["fieldkit"] = kit
    for spec in BLUEPRINTS:
        app.register_blueprint(_load(spec))

    from . import compress, cors, guard
    guard.init_app(app)  # never optional: every request passes it (an import error stops the kit)
    cors.init_app(app)  # after the guard: a CORS preflight is answered before it
    compress.init_app(app)

    @app.errorhandler(FieldkitError)
    def fieldkit_error(exc: FieldkitError):
        return _error(exc.http_status, exc.message, needs=getattr(exc, "needs", None))

    @app.errorhandler(413)
    def too_large(exc):
        return _error(413, f"request body larger than {kit.config['http.max_request_mb']} MiB")

    @app.errorhandler(404)
    def not_found(exc):
        return _error(404, "not found")

    @app.errorhandler(405)
    def not_allowed(exc):
        return _error(405, f"{request.method} is not allowed here")

    @app.errorhandler(500)
    def internal(exc):
        return _error(500, "internal error (details are in the kit's log)")

    return app


def _error(status: int, message: str, needs: str | None = None):
    """The answer to a refused or failed request: JSON for API clients, else a page in the
    kit's style; a refusal for a missing permission (`needs`) names the roles that hold it.
    The message is in the request's language (the pages show it to the person)."""
    from .messages import translate
    message = translate(message)
    wants_json = request.path.startswith(("/api/", "/dicom-web/", "/wado", "/healthz")) or \
        request.accept_mimetypes.best == "application/json"
    if wants_json:
        return jsonify({"error": message, "status": status}), status
    from flask import render_template
    from jinja2 import TemplateError
    from markupsafe import escape

    from ..security import roles as R
    roles = [r for r in R.HUMAN_ROLES if needs in R.ROLE_PERMISSIONS[r]] if needs else []
    try:
        page = render_template("error.html", page="error", status=status, message=message, roles=roles)
    except (TemplateError, RuntimeError, KeyError):  # an error page must not fail: the bare one
        page = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"
    return page, status, {"Content-Type": "text/html; charset=utf-8"}


def json_object(*, form: bool = False) -> dict:
    """The request's JSON body, which must be an object (else a clear 400). `form`: a
    request that is not JSON gives its form fields instead (the admin forms post them)."""
    if form and not request.is_json:
        return request.form.to_dict()
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadInput("send a JSON object (Content-Type: application/json)")
    return data


def kit_of(app=None):
    """The Kit serving this request."""
    from flask import current_app
    return (app or current_app).extensions["fieldkit"]
