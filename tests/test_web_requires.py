"""A view may carry its permission itself (`@requires`): the guard enforces it like a
ROUTE_PERMISSIONS entry, a view with neither stays refused, and both at once is an error."""

from __future__ import annotations

import pytest
from flask import Blueprint

from fieldkit.security import roles as R
from fieldkit.store import accounts
from fieldkit.web.guard import permission_for, requires, route_permissions

# the module of the "twice" blueprint below: its view also says @requires
ROUTE_PERMISSIONS = {"twice.view": R.STATUS_READ}


def _app_with(kit, blueprint):
    from fieldkit.web import create_app

    app = create_app(kit, testing=True)
    app.register_blueprint(blueprint)
    app.extensions.pop("fieldkit.permission_table", None)  # built at install: again, with it
    return app


def _get(app, path, token):
    return app.test_client().get(path, base_url="https://localhost",
                                 headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})


def test_the_converted_views_keep_their_permissions(kit):
    from fieldkit.web import create_app

    table = route_permissions(create_app(kit, testing=True))
    assert {ep: table[ep] for ep in ("api.healthz", "api.status", "care.options", "care.intervention",
                                     "care.place", "care.disposition")} == {
        "api.healthz": R.PUBLIC, "api.status": R.STATUS_READ, "care.options": R.PATIENTS_READ,
        "care.intervention": R.CARE_WRITE, "care.place": R.CARE_WRITE, "care.disposition": R.CARE_WRITE}


def test_a_view_declared_at_the_view_answers_its_role_only_and_an_undeclared_one_nobody(kit):
    bp = Blueprint("declared", __name__)

    @bp.get("/declared/counts")
    @requires(R.STATUS_READ)
    def counts():
        return {"counts": 3}

    @bp.get("/declared/forgotten")
    def forgotten():
        return "patient list"

    app = _app_with(kit, bp)
    assert permission_for(route_permissions(app), "declared.counts", "GET") == R.STATUS_READ
    sync = accounts.create_token(kit.store, R.SYNC, None, "sync")  # holds status.read
    probe = accounts.create_token(kit.store, R.PROBE, None, "probe")  # does not
    allowed = _get(app, "/declared/counts", sync)
    assert (allowed.status_code, allowed.get_json()) == (200, {"counts": 3})
    refused = _get(app, "/declared/counts", probe)
    assert refused.status_code == 403 and b"counts" not in refused.data
    hidden = _get(app, "/declared/forgotten", sync)
    assert hidden.status_code == 403 and b"patient list" not in hidden.data


def test_a_permission_declared_twice_is_refused_when_the_table_is_built(kit):
    bp = Blueprint("twice", __name__)

    @bp.get("/twice")
    @requires(R.PATIENTS_READ)
    def view():
        return "x"

    app = _app_with(kit, bp)
    with pytest.raises(RuntimeError, match="twice.view declares its permission twice"):
        route_permissions(app)
