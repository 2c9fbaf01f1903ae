"""The access guard alone (fieldkit.web.guard: the permission table, `_guard`, `require`),
in process on the kit's app with a few routes of its own declared here, over a real store,
so a whole run takes a few seconds (`make mutate` runs it against every mutant of the
guard). The role x route matrix over every real route is tests/test_access_matrix.py."""

from __future__ import annotations

import io
import logging
import re

import pytest
from flask import Blueprint, Flask, request

from fieldkit.security import roles as R
from fieldkit.store import accounts
from fieldkit.web import create_app, sessions
from fieldkit.web.guard import require, requires, route_max_bytes, route_permissions

from fixtures.security import HTTPS

NOT_DECLARED = "this route is not declared in the kit's permission table"
SIGN_IN = "sign in first (or send a bearer token)"
CSRF = "missing or invalid CSRF token (reload the page)"
UPLOAD_LIMIT = 3 << 20

# Read by the guard from this module, as from any blueprint module
ROUTE_PERMISSIONS = {
    "guardprobe.read": R.PATIENTS_READ,
    "guardprobe.item": R.PATIENTS_READ,
    "guardprobe.split": {"GET": R.PATIENTS_READ, "PUT": R.PATIENTS_WRITE},  # POST is routed, not declared
    "guardprobe.signed_in": R.AUTHENTICATED,
    "guardprobe.public_form": R.PUBLIC,
    "guardprobe.csrf": R.PUBLIC,
    "guardprobe.typo": "patients.reed",  # a typo must not open the route
    "guardprobe.upload": R.INGEST_UPLOAD,
    "guardprobe.rename": R.PATIENTS_READ,  # the view checks patients.write itself
    "guardprobe.public_rename": R.PUBLIC,
    "twice.both": R.EXPORT,  # also declared at its view: an error
}
ROUTE_MAX_BYTES = {"guardprobe.upload": UPLOAD_LIMIT}

probe = Blueprint("guardprobe", __name__)


@probe.get("/probe/read")
def read():
    return "patient list"


@probe.get("/probe/item/<int:n>")
def item(n):
    return f"item {n}"


@probe.route("/probe/split", methods=["GET", "PUT", "POST"])
def split():
    return request.method


@probe.get("/probe/signed-in")
def signed_in():
    return "hello"


@probe.route("/probe/public", methods=["GET", "POST"])
def public_form():
    return "form"


@probe.get("/probe/csrf")
def csrf():
    return sessions.csrf_token()


@probe.get("/probe/undeclared")
def undeclared():
    return "patient list"


@probe.get("/probe/typo")
def typo():
    return "patient list"


@probe.get("/probe/decorated")
@requires(R.USERS_MANAGE)
def decorated():
    return "users"


@probe.post("/probe/upload")
def upload():
    if request.mimetype == "multipart/form-data":
        return str(len(request.form.get("f", "")))
    return str(len(request.get_data()))


@probe.post("/probe/rename")
def rename():
    require(R.PATIENTS_WRITE)
    return "renamed"


@probe.post("/probe/public-rename")
def public_rename():
    require(R.PATIENTS_WRITE)
    return "renamed"


twice = Blueprint("twice", __name__)


@twice.get("/twice")
@requires(R.EXPORT)
def both():
    return "export"


class Caller:
    """A test client as one person (a session), one machine (a bearer token) or nobody."""

    def __init__(self, app, kit, *, user: str = "", token: str = ""):
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.csrf = ""
        if user:
            with app.test_request_context("/", base_url=HTTPS):
                sid = sessions.new_session(kit, accounts.user_principal(kit.store, user))
            self.client.set_cookie(sessions.SESSION_COOKIE, sid, domain="localhost", secure=True)
            self.csrf = sessions.kit_state(kit).sessions[sessions._digest(sid)].csrf

    def open(self, method: str, path: str, *, csrf: str | None = None, html: bool = False, **kw):
        headers = dict(self.headers, Accept="text/html" if html else "application/json", **kw.pop("headers", {}))
        if csrf:
            headers[sessions.CSRF_HEADER] = csrf
        return self.client.open(path, method=method, base_url=HTTPS, headers=headers, **kw)


@pytest.fixture(scope="module")
def app(light_kit):
    app = create_app(light_kit, testing=True)
    app.register_blueprint(probe)
    for built in ("fieldkit.permission_table", "fieldkit.route_max_bytes"):
        app.extensions.pop(built)  # built by create_app before this blueprint was added
    route_permissions(app)
    route_max_bytes(app)
    return app


@pytest.fixture(scope="module")
def who(app, light_kit):
    """Callers: a session per person's role, a token per machine role, and nobody."""
    store = light_kit.store
    for role in R.HUMAN_ROLES:
        accounts.create_user(store, f"g-{role}", f"{role} secret 4711", role)
    out = {role: Caller(app, light_kit, user=f"g-{role}") for role in R.HUMAN_ROLES}
    out.update({role: Caller(app, light_kit, token=accounts.create_token(store, role, None, role))
                for role in R.MACHINE_ROLES})
    out[None] = Caller(app, light_kit)
    return out


def _error(r) -> tuple[int, str]:
    return r.status_code, (r.json or {}).get("error", "")


def _denials(kit, obj: str) -> list[dict]:
    return [e for e in accounts.audit_events(kit.store) if e["outcome"] == "denied" and e["object"] == obj]


# ----------------------------------------------------------------------------- the table

def test_the_table_merges_blueprint_tables_the_guards_own_and_declarations_at_the_view(app):
    table = route_permissions(app)
    assert table["static"] == R.PUBLIC  # the guard's own
    assert table["guardprobe.read"] == R.PATIENTS_READ and table["guardprobe.split"]["PUT"] == R.PATIENTS_WRITE
    assert table["guardprobe.decorated"] == R.USERS_MANAGE  # @requires at the view
    assert table["api.healthz"] == R.PUBLIC  # a real blueprint's
    with app.app_context():
        assert route_permissions() is table  # the current app's, built once
    assert route_permissions(app) is table


def test_a_view_declared_both_in_the_table_and_at_the_view_is_an_error():
    app = Flask(__name__)
    app.register_blueprint(twice)
    with pytest.raises(RuntimeError, match=r"^endpoint twice\.both declares its permission twice "
                                           r"\(in ROUTE_PERMISSIONS and with @requires\)$"):
        route_permissions(app)


# ----------------------------------------------------------------------------- refusals before anything else

def test_an_undeclared_route_method_or_permission_is_refused_to_everyone_and_logged(app, who, light_kit, caplog):
    caplog.set_level(logging.ERROR, logger="fieldkit.web.guard")
    for role, caller in who.items():
        for method, path in (("GET", "/probe/undeclared"), ("GET", "/probe/typo"), ("POST", "/probe/split")):
            r = caller.open(method, path, csrf=caller.csrf)
            assert _error(r) == (403, NOT_DECLARED), (role, method, path)
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "fieldkit.web.guard"]
    assert logged.count("refused GET /probe/typo: endpoint guardprobe.typo is not declared in a "
                        "ROUTE_PERMISSIONS table") == len(who)
    # a fault of the kit, not of the person asking: not on the audit trail
    assert not [e for e in accounts.audit_events(light_kit.store) if "/probe/undeclared" in (e["object"] or "")]


def test_no_such_path_or_method_is_answered_by_flask(who):
    for caller in (who[None], who[R.ADMIN]):
        assert _error(caller.open("GET", "/probe/nothing")) == (404, "not found")
        assert _error(caller.open("DELETE", "/probe/read")) == (405, "DELETE is not allowed here")


def test_the_body_limit_is_checked_on_the_declared_length_before_sign_in(app, who, light_kit):
    default = light_kit.config["security.max_body_kb"] * 1024
    anon = who[None]

    def declared(path, length):
        return _error(anon.open("PUT" if path == "/probe/split" else "POST", path, data=b"",
                                environ_overrides={"CONTENT_LENGTH": str(length)},
                                headers={"Content-Type": "application/octet-stream"}))

    assert declared("/probe/split", default) == (401, SIGN_IN)
    assert declared("/probe/split", default + 1) == (413, f"request body larger than {default} bytes")
    assert declared("/probe/upload", UPLOAD_LIMIT) == (401, SIGN_IN)  # the endpoint's own, larger limit
    assert declared("/probe/upload", UPLOAD_LIMIT + 1) == (413, f"request body larger than {UPLOAD_LIMIT} bytes")
    largest = app.config["MAX_CONTENT_LENGTH"]
    try:
        app.config["MAX_CONTENT_LENGTH"] = 2 << 20  # http.max_request_mb caps every endpoint
        assert declared("/probe/upload", (2 << 20) + 1) == (413, f"request body larger than {2 << 20} bytes")
        assert declared("/probe/split", default + 1)[0] == 413
        app.config["MAX_CONTENT_LENGTH"] = None  # no overall cap: the endpoint's own
        assert declared("/probe/upload", UPLOAD_LIMIT) == (401, SIGN_IN)
        assert declared("/probe/upload", UPLOAD_LIMIT + 1)[0] == 413
    finally:
        app.config["MAX_CONTENT_LENGTH"] = largest
    # refused before anyone is known: not on the audit trail (a scanner cannot flood it this way)
    assert not [e for e in accounts.audit_events(light_kit.store) if (e["detail"] or {}).get("status") == 413]


def test_the_default_body_limit_is_the_configured_one(who, light_kit):
    from fieldkit.config import Config

    configured = light_kit.config
    light_kit.config = Config({"security.max_body_kb": 64})
    try:
        r = who[None].open("PUT", "/probe/split", data=b"", environ_overrides={"CONTENT_LENGTH": str(64 * 1024 + 1)})
        assert _error(r) == (413, f"request body larger than {64 * 1024} bytes")
        r = who[None].open("PUT", "/probe/split", data=b"", environ_overrides={"CONTENT_LENGTH": str(64 * 1024)})
        assert _error(r) == (401, SIGN_IN)
    finally:
        light_kit.config = configured


def test_a_body_without_a_declared_length_is_cut_at_the_endpoints_limit(who):
    probe_app = who[R.PROBE]

    def streamed(size):
        r = probe_app.open("POST", "/probe/upload", input_stream=io.BytesIO(b"x" * size),
                           headers={"Content-Type": "application/octet-stream"},
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
        return r.status_code, r.text

    assert streamed(UPLOAD_LIMIT) == (200, str(UPLOAD_LIMIT))
    status, text = streamed(UPLOAD_LIMIT + 1)
    assert (status, text) == (200, str(UPLOAD_LIMIT))  # the view never reads past the limit


def test_a_form_field_is_held_in_memory_up_to_one_mib(who):
    probe_app = who[R.PROBE]

    def form(size):
        r = probe_app.open("POST", "/probe/upload", data={"f": "x" * size, "file": (io.BytesIO(b"x"), "a.bin")})
        return r.status_code, r.text

    assert form(900_000) == (200, "900000")  # over Flask's own 500 kB default
    assert form((1 << 20) + 10)[0] == 413  # under the endpoint's 3 MiB, over what a form field may hold


# ----------------------------------------------------------------------------- locked

def test_a_locked_kit_answers_only_sign_in_unlock_health_and_assets(app, who, light_kit):
    clin = who[R.CLINICIAN]
    store = light_kit.detach_store()
    try:
        r = clin.open("GET", "/probe/read", html=True)
        assert r.status_code == 303 and r.headers["Location"].endswith("/unlock")
        for method in ("GET", "PUT"):
            assert _error(clin.open(method, "/probe/split", csrf=clin.csrf)) == (
                423, "the kit is locked: unlock it with the kit passphrase")
        assert clin.open("PUT", "/probe/split", csrf=clin.csrf, html=True).status_code == 423  # only GET is sent on
        # a session cookie or a token is not looked at while the store is closed
        assert clin.open("GET", "/healthz").status_code == 200
        assert who[R.SYNC].open("GET", "/healthz").status_code == 200
        r = clin.open("GET", "/login")  # let through: its view sends a locked kit's visitor to unlock
        assert r.status_code == 303 and r.headers["Location"].endswith("/unlock")
        assert clin.open("GET", "/static/css/login.css").status_code == 200
        # a public form still needs its CSRF token, even with a token: nobody is signed in
        assert _error(who[R.SYNC].open("POST", "/login", data={})) == (403, CSRF)
    finally:
        light_kit.attach_store(store)
    assert clin.open("GET", "/probe/read").status_code == 200  # the same session once unlocked


# ----------------------------------------------------------------------------- who may

def test_nobody_signed_in_is_sent_to_sign_in_and_the_refusal_is_audited(who, light_kit):
    anon = who[None]
    r = anon.open("GET", "/probe/read")
    assert _error(r) == (401, SIGN_IN) and r.headers["WWW-Authenticate"] == 'Bearer realm="fieldkit"'
    assert _error(anon.open("GET", "/probe/signed-in")) == (401, SIGN_IN)
    r = anon.open("GET", "/probe/item/1", html=True)
    assert r.status_code == 303 and r.headers["Location"].endswith("/login?next=/probe/item/1")
    (event,) = _denials(light_kit, "GET /probe/item/1")
    assert event["actor"] == "?" and event["detail"]["reason"] == "not authenticated" and event["detail"]["status"] == 401


def test_each_role_gets_exactly_what_it_holds(who):
    expected = {  # role -> (GET /probe/read, GET /probe/decorated, GET /probe/signed-in)
        R.CLINICIAN: (200, 403, 200), R.TRIAGE: (200, 403, 200), R.ADMIN: (200, 200, 200),
        R.PROBE: (403, 403, 200), R.DICOMWEB_CLIENT: (403, 403, 200), R.SYNC: (403, 403, 200), None: (401, 401, 401),
    }
    got = {role: tuple(c.open("GET", p).status_code for p in ("/probe/read", "/probe/decorated", "/probe/signed-in"))
           for role, c in who.items()}
    assert got == expected
    assert who[R.CLINICIAN].open("GET", "/probe/read").text == "patient list"


def test_a_role_refused_is_told_why_and_which_roles_may(who, light_kit):
    r = who[R.PROBE].open("GET", "/probe/item/2")
    assert _error(r) == (403, "your role (probe) may not do this")
    (event,) = _denials(light_kit, "GET /probe/item/2")
    assert event["actor"].startswith("token:") and event["role"] == R.PROBE
    assert event["detail"]["reason"] == "needs patients.read"
    page = who[R.CLINICIAN].open("GET", "/probe/decorated", html=True)
    assert page.status_code == 403
    assert re.search(r'id="error-roles">[^<]*<strong>admin</strong>', page.text), page.text


def test_a_permitted_read_of_patients_is_audited_as_viewed(who, light_kit):
    assert who[R.TRIAGE].open("GET", "/probe/item/3").text == "item 3"
    views = [e for e in accounts.audit_events(light_kit.store) if e["object"] == "guardprobe.item /probe/item/3"]
    assert [(e["actor"], e["action"], e["outcome"]) for e in views] == [("g-triage", "view", "ok")]


# ----------------------------------------------------------------------------- CSRF

def test_a_session_must_send_its_csrf_token_to_change_anything(who, light_kit):
    clin = who[R.CLINICIAN]
    assert _error(clin.open("PUT", "/probe/split")) == (403, CSRF)
    assert _error(clin.open("PUT", "/probe/split", csrf=who[R.ADMIN].csrf)) == (403, CSRF)  # another session's
    assert clin.open("PUT", "/probe/split", csrf=clin.csrf).text == "PUT"
    assert clin.open("GET", "/probe/split").text == "GET"  # a read needs none
    assert _error(clin.open("POST", "/probe/upload", data=b"x")) == (403, CSRF)
    assert [e["detail"]["reason"] for e in _denials(light_kit, "PUT /probe/split")
            if e["actor"] == "g-clinician"] == ["csrf", "csrf"]


def test_a_token_needs_no_csrf_token(who):
    assert who[R.PROBE].open("POST", "/probe/upload", data=b"abc").text == "3"
    assert who[R.PROBE].open("POST", "/probe/public").text == "form"


def test_a_public_form_needs_the_token_of_its_page_or_of_the_session(who, light_kit):
    anon, clin = who[None], who[R.CLINICIAN]
    assert anon.open("GET", "/probe/public").text == "form"
    assert _error(anon.open("POST", "/probe/public")) == (403, CSRF)
    (event,) = _denials(light_kit, "POST /probe/public")
    assert (event["actor"], event["detail"]["reason"], event["detail"]["status"]) == ("?", "csrf", 403)
    fresh = who[None].client.application.test_client()
    page_token = fresh.get("/probe/csrf", base_url=HTTPS).text  # sets the pre-session cookie
    assert fresh.post("/probe/public", base_url=HTTPS, headers={sessions.CSRF_HEADER: page_token}).text == "form"
    assert fresh.post("/probe/public", base_url=HTTPS, headers={sessions.CSRF_HEADER: "0" * 64}).status_code == 403
    assert _error(clin.open("POST", "/probe/public")) == (403, CSRF)
    assert clin.open("POST", "/probe/public", csrf=clin.csrf).text == "form"


# ----------------------------------------------------------------------------- require, in a view

def test_a_view_can_ask_for_a_finer_permission(who):
    triage, clin = who[R.TRIAGE], who[R.CLINICIAN]
    assert _error(triage.open("POST", "/probe/rename", csrf=triage.csrf)) == (
        403, "this needs the 'patients.write' permission")
    page = triage.open("POST", "/probe/rename", csrf=triage.csrf, html=True)
    assert page.status_code == 403 and re.search(r'id="error-roles">[^<]*<strong>clinician</strong>', page.text)
    assert clin.open("POST", "/probe/rename", csrf=clin.csrf).text == "renamed"
    anon_form = who[None].client.application.test_client()
    token = anon_form.get("/probe/csrf", base_url=HTTPS).text
    r = anon_form.post("/probe/public-rename", base_url=HTTPS,
                       headers={sessions.CSRF_HEADER: token, "Accept": "application/json"})
    assert _error(r) == (403, "this needs the 'patients.write' permission")  # nobody signed in holds nothing
