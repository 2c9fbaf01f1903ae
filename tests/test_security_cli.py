"""`fieldkit users|token` with and without a running kit (same command either way)."""

from __future__ import annotations

import json

from kitproc import ADMIN_USER, init_kit, run_cli


def test_init_without_admin_has_no_account_and_no_default_password(tmp_path):
    d = init_kit(tmp_path / "bare", admin=False)
    assert json.loads(run_cli("users", "list", "--data-dir", d, "--json").stdout) == []
    weak = tmp_path / "weak"
    weak.write_text("1234\n")
    (tmp_path / "pp").write_text("a long enough passphrase\n")
    r = run_cli("init", "--data-dir", tmp_path / "k2", "--passphrase-file", tmp_path / "pp",
                "--admin-user", "root", "--admin-password-file", weak, check=False)
    assert r.returncode != 0 and "PIN" in r.stderr + r.stdout
    assert not (tmp_path / "k2").exists()


def test_users_and_tokens_without_a_running_kit(data_dir, tmp_path):
    secret = tmp_path / "s"
    secret.write_text("604817\n")
    run_cli("users", "add", "amina", "--role", "clinician", "--data-dir", data_dir, "--password-file", secret)
    dup = run_cli("users", "add", "AMINA", "--role", "triage", "--data-dir", data_dir, "--password-file", secret,
                  check=False)
    assert dup.returncode == 4 and "already exists" in dup.stderr
    rows = json.loads(run_cli("users", "list", "--data-dir", data_dir, "--json").stdout)
    assert {(u["name"], u["role"]) for u in rows} == {(ADMIN_USER, "admin"), ("amina", "clinician")}
    assert "hash" not in json.dumps(rows) and "604817" not in json.dumps(rows)
    run_cli("users", "disable", "amina", "--data-dir", data_dir)
    last = run_cli("users", "disable", ADMIN_USER, "--data-dir", data_dir, check=False)
    assert last.returncode != 0 and "last enabled admin" in last.stderr
    secret.write_text("771935\n")
    run_cli("users", "reset", "amina", "--data-dir", data_dir, "--password-file", secret)
    run_cli("users", "disable", "amina", "--enable", "--data-dir", data_dir)
    out = run_cli("token", "create", "--data-dir", data_dir, "--role", "probe", "--label", "probe A", "--days", "7")
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("fkt_") and token not in out.stderr
    listed = run_cli("token", "list", "--data-dir", data_dir).stdout
    assert "probe A" in listed and token not in listed
    tid = json.loads(run_cli("token", "list", "--data-dir", data_dir, "--json").stdout)[0]["id"]
    run_cli("token", "revoke", tid, "--data-dir", data_dir)
    assert json.loads(run_cli("token", "list", "--data-dir", data_dir, "--json").stdout)[0]["state"] == "revoked"
    bad = run_cli("token", "create", "--data-dir", data_dir, "--role", "root", check=False)
    assert bad.returncode != 0
    # nothing on disk shows a token or a PIN
    for p in data_dir.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert token.encode() not in data and b"771935" not in data
    assert "intact" in run_cli("audit", "verify", "--data-dir", data_dir).stdout


def test_users_and_tokens_through_the_running_kit(kit_server, tmp_path):
    d = kit_server.data_dir
    secret = tmp_path / "s"
    secret.write_text("triage officer pw\n")
    run_cli("users", "add", "tomas", "--role", "triage", "--data-dir", d, "--password-file", secret)
    token = kit_server.token("sync")
    assert kit_server.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    tid = [t for t in json.loads(run_cli("token", "list", "--data-dir", d, "--json").stdout) if t["role"] == "sync"][0]["id"]
    run_cli("token", "revoke", tid, "--data-dir", d)
    assert kit_server.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    names = [u["name"] for u in json.loads(run_cli("users", "list", "--data-dir", d, "--json").stdout)]
    assert "tomas" in names
    events = json.loads(run_cli("audit", "export", "--data-dir", d).stdout)["events"]
    assert any(e["action"] == "user.create" and e["object"] == "tomas" and e["actor"].startswith("cli:")
               for e in events)
    assert any(e["action"] == "token.revoke" for e in events)
