"""Tokens are for machines, belong to someone and end: through the command line and the
web API of a real kit over HTTPS."""

from __future__ import annotations

import json

from kitproc import run_cli, wait_until


def _status(kit, token):
    return kit.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code


def test_tokens_have_machine_roles_owners_and_expiry(kit_server):
    d = kit_server.data_dir
    refused = run_cli("token", "create", "--data-dir", d, "--role", "admin", check=False)
    assert refused.returncode != 0 and "people sign in with their own account" in refused.stderr
    assert "Traceback" not in refused.stderr
    forever = run_cli("token", "create", "--data-dir", d, "--role", "probe", "--days", "0", "--label", "probe A")
    assert "warning:" in forever.stderr and "never expires" in forever.stderr
    assert "owner cli:" in forever.stderr

    admin = kit_server.auth("admin")  # signed in as the account test-admin
    r = kit_server.post("/api/v1/tokens", headers=admin, json={"role": "clinician"})
    assert r.status_code == 400 and "people sign in" in r.json()["error"]
    short = kit_server.post("/api/v1/tokens", headers=admin, json={"role": "sync", "days": 3 / 86400})
    assert short.status_code == 201 and short.json()["owner"] == "test-admin"
    year = kit_server.post("/api/v1/tokens", headers=admin, json={"role": "probe", "label": "tablet app"})
    assert year.status_code == 201 and year.json()["expires"] > short.json()["expires"]
    assert "warning" not in year.json()

    # expiry is enforced
    assert _status(kit_server, short.json()["token"]) == 200
    assert wait_until(lambda: _status(kit_server, short.json()["token"]) == 401, 20)

    # disabling the owner revokes what it made
    probe = year.json()["token"]
    upload = kit_server.post("/api/v1/upload", headers={"Authorization": f"Bearer {probe}", "X-Filename": "x.bin"},
                             data=b"not an image")
    assert upload.status_code not in (401, 403)
    run_cli("users", "disable", "test-admin", "--data-dir", d)
    upload = kit_server.post("/api/v1/upload", headers={"Authorization": f"Bearer {probe}", "X-Filename": "x.bin"},
                             data=b"not an image")
    assert upload.status_code == 401
    rows = {t["label"]: t for t in json.loads(run_cli("token", "list", "--data-dir", d, "--json").stdout)}
    assert rows["tablet app"]["state"] == "revoked" and rows["probe A"]["state"] == "active"

    events = json.loads(run_cli("audit", "export", "--data-dir", d).stdout)["events"]
    made = [e for e in events if e["action"] == "token.create"]
    assert [e["detail"]["owner"] for e in made][-2:] == ["test-admin", "test-admin"]
    assert any(e["action"] == "token.revoke" and e["detail"].get("reason") == "owner disabled" for e in events)
    assert "intact" in run_cli("audit", "verify", "--data-dir", d).stdout
