"""The access matrix by enumeration: every rule of the app's url_map, every method,
anonymously and as each role. A route missing from the permission table fails here, so no
route can be added unprotected; a role that lacks the permission must be refused."""

from __future__ import annotations

import pytest

from fieldkit.security import roles as R
from fieldkit.web.guard import permission_for, route_permissions

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SAMPLE = {"int": "1", "float": "1.0", "uuid": "00000000-0000-0000-0000-000000000000",
          "path": "no-such-thing", "default": "no-such-thing", "any": None}


def _sample_url(rule) -> str:
    values = {}
    for arg in rule.arguments:
        conv = rule._converters[arg]
        name = type(conv).__name__.replace("Converter", "").lower() or "default"
        if name == "any":
            values[arg] = conv.items[0] if hasattr(conv, "items") else next(iter(getattr(conv, "regex", "x")))
        else:
            values[arg] = SAMPLE.get(name, "no-such-thing")
    _, url = rule.build(values, append_unknown=False)
    return url


def _cases(app):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        for method in sorted(rule.methods):
            yield rule, method


def test_every_route_and_method_is_declared(sec_app):
    table = route_permissions(sec_app)
    missing = [f"{m} {r.rule} ({r.endpoint})" for r, m in _cases(sec_app)
               if permission_for(table, r.endpoint, m) is None]
    assert not missing, "routes without a ROUTE_PERMISSIONS entry:\n" + "\n".join(missing)
    bad = {ep: v for ep, v in table.items()
           for p in ([v] if isinstance(v, str) else list(v.values())) if not R.is_known_permission(p)}
    assert not bad, f"unknown permissions in route tables (typos?): {bad}"


def test_access_matrix_by_enumeration(sec_app, kit, role_clients, passphrase):
    from fieldkit.kit.lock import unlock_kit

    table = route_permissions(sec_app)
    problems = []
    checked = 0
    cases = list(_cases(sec_app))
    # Lock last: it signs everybody out
    cases.sort(key=lambda c: c[0].endpoint == "auth.lock" or c[0].endpoint == "auth.logout")
    adapter = sec_app.url_map.bind("localhost", url_scheme="https")
    for rule, method in cases:
        url = _sample_url(rule)
        # Two rules may share a path (GET search, POST store): the request goes to whichever
        # the router picks for this method, so that endpoint's permission is the one expected.
        endpoint, _ = adapter.match(url, method=method)
        permission = permission_for(table, endpoint, method)
        for role, client in role_clients.items():
            if not client.session_alive():
                client.sign_in()
            body = {"json": {}} if method in STATE_CHANGING else {}
            r = client.open(method, url, **body)
            checked += 1
            allowed = R.has_permission(role, permission)
            where = f"{method} {url} ({endpoint}, needs {permission}) as {role or 'anonymous'}"
            if allowed:
                # (public forms answer 401 to empty credentials and 403 without their CSRF
                # token: test_security_web checks those)
                if r.status_code in (401, 403) and not (permission == R.PUBLIC and method in STATE_CHANGING):
                    problems.append(f"{where}: refused with {r.status_code}")
            else:
                expected = 401 if role is None else 403
                if r.status_code != expected:
                    problems.append(f"{where}: expected {expected}, got {r.status_code}")
            if r.status_code >= 500:
                problems.append(f"{where}: server error {r.status_code}")
            r.close()  # streaming endpoints (live updates) hold their generator until closed
            if kit.locked:
                unlock_kit(kit, passphrase)
    assert checked > 0
    assert not problems, f"{len(problems)} access-matrix violations:\n" + "\n".join(problems)


def test_a_route_added_without_a_declaration_is_refused(kit):
    from flask import Blueprint

    from fieldkit.web import create_app

    app = create_app(kit, testing=True)
    sneaky = Blueprint("sneaky", __name__)

    @sneaky.get("/sneaky")
    def sneaky_view():
        return "patient list"

    app.register_blueprint(sneaky)
    app.extensions.pop("fieldkit.permission_table", None)
    table = route_permissions(app)
    assert permission_for(table, "sneaky.sneaky_view", "GET") is None
    token = __import__("fieldkit.store.accounts", fromlist=["x"]).create_token(kit.store, R.SYNC, None, "t")
    r = app.test_client().get("/sneaky", base_url="https://localhost",
                              headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    assert r.status_code == 403 and b"patient list" not in r.data
