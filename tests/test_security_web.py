"""Sessions, CSRF, headers, brute force, tokens, lock/unlock and size limits through the
real Flask app over a real store (test client; the running-kit tests use HTTPS)."""

from __future__ import annotations

import base64
import re
import time

import pytest

from fieldkit.security import roles as R
from fieldkit.security.passwords import Clock
from fieldkit.store import accounts
from fieldkit.web.guard import SECURITY_HEADERS, permission_for, route_permissions
from fieldkit.web.sessions import PRE_COOKIE, SESSION_COOKIE

from fixtures.security import HTTPS, ROLE_SECRETS, csrf_from

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _set_cookie_headers(resp, name):
    return [h for h in resp.headers.getlist("Set-Cookie") if h.startswith(name + "=")]


def _sign_in(client, name, secret, **extra):
    page = client.get("/login", base_url=HTTPS)
    return client.post("/login", base_url=HTTPS, data={"username": name, "password": secret,
                                                       "csrf_token": csrf_from(page.text), **extra})


def test_security_headers_on_every_kind_of_response(sec_app):
    c = sec_app.test_client()
    responses = [c.get(p, base_url=HTTPS) for p in ("/login", "/healthz", "/api/v1/status", "/no/such/page",
                                                    "/static/css/login.css")]
    responses.append(c.post("/login", base_url=HTTPS, data={}))  # refused: no CSRF
    for r in responses:
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (r.request.path, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert "max-age=" in SECURITY_HEADERS["Strict-Transport-Security"]


def test_login_page_has_no_inline_script_or_style(sec_app):
    html = sec_app.test_client().get("/login", base_url=HTTPS).text
    assert "style=" not in html.lower() and "<style" not in html.lower()
    # scripts only from the kit's own files (the day/night mode), none written in the page
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.I | re.S)
    assert scripts and all(re.search(r'\bsrc="/static/', attrs) and not body.strip() for attrs, body in scripts)
    assert html.lower().count("<script") == len(scripts)
    assert 'name="csrf_token"' in html


def test_session_cookie_flags_and_rotation_at_sign_in(sec_app, kit):
    accounts.create_user(kit.store, "amina", "604817", R.CLINICIAN)
    c = sec_app.test_client()
    r1 = _sign_in(c, "amina", "604817")
    assert r1.status_code == 303
    (cookie,) = _set_cookie_headers(r1, SESSION_COOKIE)
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert not any(f.startswith("domain=") for f in flags)
    first = cookie.split(";")[0].split("=", 1)[1]
    r2 = _sign_in(c, "amina", "604817")  # signing in again, with the old cookie sent
    second = _set_cookie_headers(r2, SESSION_COOKIE)[0].split(";")[0].split("=", 1)[1]
    assert first != second
    old = sec_app.test_client()
    old.set_cookie(SESSION_COOKIE, first, domain="localhost")
    assert old.get("/api/v1/session", base_url=HTTPS, headers={"Accept": "application/json"}).status_code == 401


def test_forged_replayed_and_idle_sessions_are_refused(fake_clock, sec_app, kit):
    accounts.create_user(kit.store, "amina", "604817", R.CLINICIAN)
    forged = sec_app.test_client()
    forged.set_cookie(SESSION_COOKIE, "A" * 43, domain="localhost")
    assert forged.get("/api/v1/session", base_url=HTTPS, headers={"Accept": "application/json"}).status_code == 401
    c = sec_app.test_client()
    _sign_in(c, "amina", "604817")
    sid = c.get_cookie(SESSION_COOKIE, domain="localhost").value
    info = c.get("/api/v1/session", base_url=HTTPS).json
    assert info["user"] == "amina" and info["role"] == "clinician"
    # idle a little less than the limit: still signed in (and the use resets the idle timer)
    idle = kit.config["http.session_idle_minutes"] * 60
    fake_clock.advance(idle - 5)
    assert c.get("/api/v1/session", base_url=HTTPS).status_code == 200
    fake_clock.advance(idle + 1)
    assert c.get("/api/v1/session", base_url=HTTPS, headers={"Accept": "application/json"}).status_code == 401
    # sign out, then replay the old cookie
    c2 = sec_app.test_client()
    _sign_in(c2, "amina", "604817")
    sid2 = c2.get_cookie(SESSION_COOKIE, domain="localhost").value
    csrf = c2.get("/api/v1/session", base_url=HTTPS).json["csrf_token"]
    assert c2.post("/logout", base_url=HTTPS, headers={"X-CSRF-Token": csrf}).status_code == 303
    replay = sec_app.test_client()
    replay.set_cookie(SESSION_COOKIE, sid2, domain="localhost")
    assert replay.get("/api/v1/session", base_url=HTTPS, headers={"Accept": "application/json"}).status_code == 401
    assert sid != sid2


def test_anonymous_html_request_is_sent_to_sign_in_with_a_safe_next(sec_app):
    c = sec_app.test_client()
    r = c.get("/api/v1/status", base_url=HTTPS, headers={"Accept": "text/html"})
    assert r.status_code == 401  # API paths answer JSON
    r = c.get("/login?next=//evil.example/x", base_url=HTTPS)
    assert 'value="/"' in r.text and "evil.example" not in r.text


def test_every_state_changing_route_refuses_missing_or_wrong_csrf(sec_app, kit, role_clients):
    table = route_permissions(sec_app)
    checked = []
    for rule in sec_app.url_map.iter_rules():
        for method in sorted(rule.methods & STATE_CHANGING):
            permission = permission_for(table, rule.endpoint, method)
            url = rule.build({a: "no-such-thing" for a in rule.arguments}, append_unknown=False)[1]
            if permission == R.PUBLIC:
                c = role_clients[None]
                r = c.open(method, url, data={"username": "u-admin", "password": ROLE_SECRETS["admin"]})
                assert r.status_code == 403, (method, url)
                r = c.open(method, url, data={"username": "u-admin", "password": ROLE_SECRETS["admin"],
                                              "csrf_token": "0" * 64})
                assert r.status_code == 403, (method, url)
                checked.append(url)
                continue
            holders = [r for r in R.HUMAN_ROLES if R.has_permission(r, permission)]
            if not holders:
                continue  # only tokens may call it: no cookie, so no CSRF to forge
            client = role_clients[holders[0]]
            if not client.session_alive():
                client.sign_in()
            for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
                r = client.open(method, url, csrf=False, headers=headers, json={})
                assert r.status_code == 403 and b"CSRF" in r.data, (method, url, headers, r.status_code)
            r = client.open(method, url, csrf=False, data={"csrf_token": "wrong"})
            assert r.status_code == 403, (method, url)
            assert not kit.locked, f"{url} acted without a CSRF token"
            checked.append(url)
    assert "/login" in checked and "/admin/lock" in checked and "/api/v1/users" in checked
    denials = [e for e in accounts.audit_events(kit.store) if e["outcome"] == "denied"
               and (e["detail"] or {}).get("reason") == "csrf"]
    assert denials


def test_csrf_token_from_another_session_is_refused(sec_app, kit, role_clients):
    admin, other = role_clients["admin"], role_clients["clinician"]
    r = admin.open("POST", "/api/v1/tokens", csrf=False, headers={"X-CSRF-Token": other.csrf},
                   json={"role": "probe"})
    assert r.status_code == 403
    r = admin.open("POST", "/api/v1/tokens", json={"role": "probe", "label": "ok"})
    assert r.status_code == 201 and r.json["token"].startswith("fkt_")


def test_brute_force_is_slowed_and_audited(fake_clock, sec_app, kit):
    accounts.create_user(kit.store, "amina", "604817", R.CLINICIAN)
    free = kit.config["security.login_free_failures"]
    c = sec_app.test_client()
    for i in range(free):
        assert _sign_in(c, "amina", f"99999{i}").status_code == 401
    r = _sign_in(c, "amina", "604817")  # the right PIN, during the backoff
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert c.get_cookie(SESSION_COOKIE, domain="localhost") is None
    fake_clock.advance(kit.config["security.login_backoff_seconds"] + 1)
    assert _sign_in(c, "amina", "604817").status_code == 303
    accounts.flush_signin_audit(kit.store, flush_all=True)
    events = [e for e in accounts.audit_events(kit.store) if e["action"].startswith("login")]
    # the first failure at once, the rest of the address's window as one summary with a count
    assert [(e["action"], e["outcome"]) for e in events] == [("login", "failed"), ("login", "ok"),
                                                               ("login.failures", "failed")]
    summary = events[-1]["detail"]
    assert summary["count"] == free and "locked out: 1" in summary["reasons"] and summary["accounts"] == "amina"


def test_typed_markup_is_rendered_inert(sec_app):
    c = sec_app.test_client()
    payload = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    r = _sign_in(c, payload, "604817")
    assert r.status_code == 401
    assert "<script>alert(1)" not in r.text and "<img src=x onerror" not in r.text
    assert "&lt;script&gt;" in r.text or "&#34;&gt;&lt;script" in r.text


def test_tokens_bearer_basic_revoked_expired(fake_clock, sec_app, kit):
    c = sec_app.test_client()
    token, info = accounts.create_token_info(kit.store, R.SYNC, fake_clock.wall() + 60, "hospital")
    ok = c.get("/api/v1/status", base_url=HTTPS, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "queue" in ok.json
    basic = base64.b64encode(f"token:{token}".encode()).decode()
    assert c.get("/api/v1/status", base_url=HTTPS, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"admin:admin").decode()
    assert c.get("/api/v1/status", base_url=HTTPS, headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    # scoped: the sync role may not manage users
    assert c.get("/api/v1/users", base_url=HTTPS, headers={"Authorization": f"Bearer {token}"}).status_code == 403
    fake_clock.advance(61)
    assert c.get("/api/v1/status", base_url=HTTPS, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    t2 = accounts.create_token(kit.store, R.SYNC, None, "second")
    accounts.revoke_token(kit.store, [t for t in accounts.list_tokens(kit.store) if t["label"] == "second"][0]["id"])
    assert c.get("/api/v1/status", base_url=HTTPS, headers={"Authorization": f"Bearer {t2}"}).status_code == 401
    # a token never needs (or is helped by) a CSRF token, and a cookie cannot stand in for it
    t3 = accounts.create_token(kit.store, R.PROBE, None, "automation")
    r = c.post("/api/v1/upload", base_url=HTTPS, headers={"Authorization": f"Bearer {t3}", "X-Filename": "x.bin"},
               data=b"not an image")
    assert r.status_code not in (401, 403) and "CSRF" not in r.text, (r.status_code, r.text)


def test_disabled_user_loses_the_session_at_once(sec_app, kit, role_clients):
    clin = role_clients["clinician"]
    assert clin.open("GET", "/api/v1/session").status_code == 200
    accounts.set_disabled(kit.store, "u-clinician", True)
    assert clin.open("GET", "/api/v1/session").status_code == 401


def test_bodies_over_the_endpoint_limit_are_refused(sec_app, kit, role_clients):
    admin = role_clients["admin"]
    big = b"x" * (kit.config["security.max_body_kb"] * 1024 + 1)
    r = admin.open("POST", "/api/v1/users", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert accounts.get_user(kit.store, "x") is None


def test_lock_refuses_everything_but_unlock_and_drops_sessions(sec_app, kit, role_clients, passphrase):
    admin, clin = role_clients["admin"], role_clients["clinician"]
    assert clin.open("POST", "/admin/lock").status_code == 403  # only admins hold the button
    r = admin.open("POST", "/admin/lock")
    assert r.status_code == 200 and kit.locked
    table = route_permissions(sec_app)
    for rule in sec_app.url_map.iter_rules():
        if rule.endpoint in ("auth.unlock", "auth.login", "api.healthz", "static"):
            continue
        url = rule.build({a: "x" for a in rule.arguments}, append_unknown=False)[1]
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"}):
            r = admin.open(method, url, json={} if method in STATE_CHANGING else None)
            assert r.status_code == 423, (method, url, r.status_code)
    assert role_clients[None].client.get("/healthz", base_url=HTTPS).json["locked"] is True
    anon = sec_app.test_client()
    page = anon.get("/unlock", base_url=HTTPS)
    assert page.status_code == 200 and "passphrase" in page.text
    bad = anon.post("/unlock", base_url=HTTPS, data={"passphrase": "not it at all", "csrf_token": csrf_from(page.text)})
    assert bad.status_code == 401 and kit.locked
    good = anon.post("/unlock", base_url=HTTPS, data={"passphrase": passphrase, "csrf_token": csrf_from(page.text)})
    assert good.status_code == 303 and not kit.locked
    # every session from before the lock is gone
    assert admin.open("GET", "/api/v1/session").status_code == 401
    events = accounts.audit_events(kit.store)
    actions = [e["action"] for e in events]
    unlock_event = events[actions.index("kit.unlock")]
    assert actions.index("kit.lock") < actions.index("kit.unlock")
    assert unlock_event["detail"]["failed_attempts_while_locked"] == 1
    assert accounts.audit_verify(kit.store).ok


def test_unlock_attempts_are_throttled(fake_clock, sec_app, kit):
    from fieldkit.kit.lock import UnlockThrottled, lock_kit, unlock_kit
    from fieldkit.errors import KeyUnavailable

    lock_kit(kit)
    for _ in range(5):
        with pytest.raises(KeyUnavailable):
            unlock_kit(kit, "wrong passphrase!!")
    with pytest.raises(UnlockThrottled):
        unlock_kit(kit, "test passphrase for the kit")
    fake_clock.advance(31)
    assert unlock_kit(kit, "test passphrase for the kit") and not kit.locked


def test_auto_lock_after_no_signed_in_person_for_the_configured_time(fake_clock, kit, passphrase):
    import time

    from fieldkit.kit.lock import AutoLock

    kit.config = kit.config.with_overrides(security__auto_lock_minutes=2)
    kit.lock_state.last_human = fake_clock.mono()
    service = AutoLock(kit, interval=0.02)
    try:
        fake_clock.advance(100)  # under two minutes: stays unlocked
        time.sleep(0.2)
        assert not kit.locked
        fake_clock.advance(30)
        deadline = time.monotonic() + 10
        while not kit.locked and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kit.locked
        assert kit.unlock(passphrase) and not kit.locked
        assert [e for e in accounts.audit_events(kit.store) if e["action"] == "kit.lock"][-1]["actor"] == "auto-lock"
    finally:
        service.stop()


class _YieldingClock(Clock):
    """The system clock, but the thread that read it gives way at once: the gap a loaded
    box opens between reading the time and acting on it."""

    def mono(self) -> float:
        now = super().mono()
        time.sleep(0.0002)
        return now


def test_parallel_requests_of_one_session_keep_it_signed_in(monkeypatch, sec_app, kit):
    """A board page sends several requests at once with one session cookie: none may find
    the session 'used in the future' by another and drop it (a tablet sent back to sign-in
    right after signing in)."""
    import threading

    accounts.create_user(kit.store, "amina", "604817", R.CLINICIAN)
    c = sec_app.test_client()
    _sign_in(c, "amina", "604817")
    sid = c.get_cookie(SESSION_COOKIE, domain="localhost").value
    monkeypatch.setattr(accounts, "CLOCK", _YieldingClock())
    codes: list[int] = []

    def tablet_requests():
        client = sec_app.test_client()
        client.set_cookie(SESSION_COOKIE, sid, domain="localhost")
        for _ in range(50):
            codes.append(client.get("/api/v1/session", base_url=HTTPS,
                                    headers={"Accept": "application/json"}).status_code)

    threads = [threading.Thread(target=tablet_requests) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 300 and codes.count(401) == 0, f"{codes.count(401)} of {len(codes)} signed out"


def test_the_permission_a_request_needs_is_read_from_a_hand_written_table():
    """The table's rules, with the expected answer written out (not the live table's own)."""
    table = {
        "one": R.PATIENTS_READ,  # every method
        "split": {"GET": R.PATIENTS_READ, "PUT": R.PATIENTS_WRITE},
        "public_only": {"GET": R.PUBLIC, "POST": R.PUBLIC},
        "post_only": {"POST": R.PATIENTS_WRITE},
        "empty": {},
        "broken": 42,  # neither a permission nor a dict: refused
    }
    expected = [
        ("one", "DELETE", R.PATIENTS_READ),
        ("split", "GET", R.PATIENTS_READ), ("split", "PUT", R.PATIENTS_WRITE),
        ("split", "HEAD", R.PATIENTS_READ),  # HEAD follows GET
        ("split", "POST", None),  # undeclared method
        ("split", "OPTIONS", R.AUTHENTICATED),  # OPTIONS: signed in, unless all is public
        ("public_only", "OPTIONS", R.PUBLIC), ("public_only", "HEAD", R.PUBLIC),
        ("post_only", "HEAD", None),  # no GET to follow
        ("post_only", "OPTIONS", R.AUTHENTICATED),
        ("empty", "OPTIONS", R.AUTHENTICATED), ("empty", "GET", None),
        ("broken", "GET", None),
        ("missing", "GET", None), (None, "GET", None),
    ]
    got = [(endpoint, method, permission_for(table, endpoint, method)) for endpoint, method, _ in expected]
    assert got == expected


def _refusals(kit, reason: str) -> list[dict]:
    return [e for e in accounts.audit_events(kit.store)
            if e["outcome"] == "denied" and (e["detail"] or {}).get("reason") == reason]


def test_each_refusal_says_why_and_the_trail_records_it(sec_app, kit, role_clients):
    """What a client reads (status, message) and what the audit trail keeps, per refusal."""
    anon, clin = role_clients[None], role_clients["clinician"]
    r = anon.open("GET", "/api/v1/session")
    assert (r.status_code, r.json["error"]) == (401, "sign in first (or send a bearer token)")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="fieldkit"'
    assert _refusals(kit, "not authenticated")
    r = clin.open("GET", "/api/v1/users")
    assert (r.status_code, r.json["error"]) == (403, "your role (clinician) may not do this")
    assert _refusals(kit, f"needs {R.USERS_MANAGE}")
    page = clin.client.get("/api/v1/users", base_url=HTTPS, headers={"Accept": "text/html"})
    assert page.status_code == 403
    r = role_clients["admin"].open("POST", "/api/v1/users", csrf=False, json={})
    assert (r.status_code, r.json["error"]) == (403, "missing or invalid CSRF token (reload the page)")
    r = anon.open("POST", "/login", data={"username": "u-admin", "password": ROLE_SECRETS["admin"]})
    assert (r.status_code, r.json["error"]) == (403, "missing or invalid CSRF token (reload the page)")
    assert len(_refusals(kit, "csrf")) == 2


def test_a_token_needs_no_csrf_token_even_on_a_public_form(sec_app, kit):
    token = accounts.create_token(kit.store, R.SYNC, None, "t")
    r = sec_app.test_client().post("/login", base_url=HTTPS, data={"username": "nobody", "password": "x" * 12},
                                   headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    assert r.status_code != 403 and not _refusals(kit, "csrf")


def test_the_body_limit_is_the_endpoints_own_capped_by_the_largest_request(sec_app, kit):
    """security.max_body_kb by default; an endpoint's own ROUTE_MAX_BYTES (smaller for the
    language form, larger for uploads); http.max_request_mb over all. Exactly the limit is
    accepted. The guard refuses on the declared length, before reading or signing in."""
    c = sec_app.test_client()
    default = kit.config["security.max_body_kb"] * 1024
    largest = kit.config["http.max_request_mb"] * (1 << 20)

    def status(path, length):  # the declared length only: the guard must not need the body
        r = c.post(path, base_url=HTTPS, data=b"", environ_overrides={"CONTENT_LENGTH": str(length)},
                   headers={"Accept": "application/json", "Content-Type": "application/octet-stream"})
        return r.status_code, (r.json or {}).get("error")

    assert status("/api/v1/users", default) == (401, "sign in first (or send a bearer token)")
    assert status("/api/v1/users", default + 1) == (413, f"request body larger than {default} bytes")
    assert status("/language", 4096)[0] != 413 and status("/language", 4097) == (413, "request body larger than 4096 bytes")
    assert status("/api/v1/upload", default + 1)[0] == 401
    assert status("/api/v1/upload", largest + 1) == (413, f"request body larger than {largest} bytes")


def test_a_locked_kit_sends_a_browser_to_unlock_and_tells_a_client_why(sec_app, kit):
    from fieldkit.kit.lock import lock_kit
    lock_kit(kit)
    c = sec_app.test_client()
    r = c.get("/", base_url=HTTPS, headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/unlock")
    r = c.get("/api/v1/session", base_url=HTTPS)
    assert (r.status_code, r.json["error"]) == (423, "the kit is locked: unlock it with the kit passphrase")


def test_no_such_page_or_method_is_answered_by_flask_not_the_guard(sec_app):
    c = sec_app.test_client()
    assert c.get("/no/such/page", base_url=HTTPS, headers={"Accept": "application/json"}).status_code == 404
    assert c.delete("/healthz", base_url=HTTPS).status_code == 405


def test_a_route_declared_with_an_unknown_permission_is_refused_to_everyone(kit, caplog):
    """A typo in a ROUTE_PERMISSIONS table refuses the route (403 to all, signed in or not),
    and the log names the request and the endpoint to fix."""
    from flask import Blueprint

    from fieldkit.web import create_app
    from fixtures.security import RoleClient

    app = create_app(kit, testing=True)
    typo = Blueprint("typo", __name__)

    @typo.get("/typo")
    def typo_view():
        return "patient list"

    app.register_blueprint(typo)
    app.extensions.pop("fieldkit.permission_table", None)
    route_permissions(app)["typo.typo_view"] = "patients.reed"
    accounts.create_user(kit.store, "u-admin", ROLE_SECRETS["admin"], R.ADMIN)
    for client in (RoleClient(app, kit, None), RoleClient(app, kit, R.ADMIN)):
        r = client.open("GET", "/typo")
        assert (r.status_code, r.json["error"]) == (403, "this route is not declared in the kit's permission table")
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "fieldkit.web.guard"]
    assert logged.count("refused GET /typo: endpoint typo.typo_view is not declared in a ROUTE_PERMISSIONS table") == 2
    # a fault of the kit, not of the person asking: logged, not put on the audit trail
    assert not [e for e in accounts.audit_events(kit.store) if "/typo" in (e.get("object") or "")]


def test_a_name_change_needs_patients_write_checked_inside_the_view(sec_app, kit, role_clients):
    """Triage may add notes but not a name: the view's own check refuses it and says which
    permission is missing."""
    triage, clin = role_clients["triage"], role_clients["clinician"]
    url = "/api/v1/ui/patients/no-such-patient/details"
    r = triage.open("POST", url, json={"name": "Amina"})
    assert (r.status_code, r.json["error"]) == (403, "this needs the 'patients.write' permission")
    assert triage.open("POST", url, json={"note": "pain 7/10"}).status_code == 404  # no name: allowed, no patient
    assert clin.open("POST", url, json={"name": "Amina"}).status_code == 404
