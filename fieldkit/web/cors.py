"""CORS for DICOMweb and WADO-URI, so a viewer served from another origin can read from the kit.

Off unless `http.cors_origins` lists origins. Only the DICOMweb root and `/wado` answer
cross-origin; the tablet UI and its API never do. An origin on the list gets its own name
back (with `Vary: Origin`) and may send cookies; `"*"` lets any origin read with a bearer
token, never with cookies (the Fetch standard forbids credentials with `*`).

A preflight (OPTIONS with Access-Control-Request-Method) carries no credentials, so it is
answered here, before the access guard, and only for a listed origin; the real request
then passes the guard like any other.
"""

from __future__ import annotations

from flask import Response, request

from . import kit_of

PATHS = ("/dicom-web/", "/wado")
METHODS = "GET, HEAD, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Accept, Accept-Encoding, Content-Type"
EXPOSED_HEADERS = "Warning, Content-Location, Content-Encoding, Server-Timing"
MAX_AGE = "600"  # seconds a browser may cache a preflight


def _allowed_origin() -> str | None:
    """What Access-Control-Allow-Origin says for this request, or None (no CORS)."""
    origin = request.headers.get("Origin")
    if not origin or not request.path.startswith(PATHS):
        return None
    allowed = kit_of().config["http.cors_origins"] or []
    if origin in allowed:
        return origin
    return "*" if "*" in allowed else None


def _headers(response: Response, allow: str) -> Response:
    response.headers["Access-Control-Allow-Origin"] = allow
    if allow != "*":
        response.headers["Access-Control-Allow-Credentials"] = "true"
    response.vary.add("Origin")
    return response


def _preflight():
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    allow = _allowed_origin()
    if allow is None:
        return None  # not ours to answer: the guard refuses it like any anonymous request
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = MAX_AGE
    return _headers(response, allow)


def _after(response: Response) -> Response:
    allow = _allowed_origin()
    if allow is not None and "Access-Control-Allow-Origin" not in response.headers:
        _headers(response, allow)
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response


def init_app(app) -> None:
    """Called by the app factory after the access guard is installed: the preflight goes first."""
    app.before_request_funcs.setdefault(None, []).insert(0, _preflight)
    app.after_request(_after)
