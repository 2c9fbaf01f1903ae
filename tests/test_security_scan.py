"""A bounded dynamic scan of the running HTTPS kit with schemathesis, against the OpenAPI
description the kit serves: no 5xx anywhere, and nothing but the health check answers
without credentials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kitproc import run_cli

SCAN_SECONDS = int(os.environ.get("FIELDKIT_SCAN_SECONDS", "40"))


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    if exe.exists():
        return [str(exe)]
    if shutil.which("schemathesis"):
        return [shutil.which("schemathesis")]
    message = "schemathesis is not installed: pip install -e '.[test]'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _scan(kit_server, schema: Path, tmp_path: Path, *extra: str, name: str,
          checks: str = "not_a_server_error,ignored_auth") -> subprocess.Popen:
    """Starts one scan (the caller waits for it)."""
    report = tmp_path / f"{name}-report"
    cmd = _schemathesis() + [
        "run", str(schema), "--url", kit_server.url, "--tls-verify", kit_server.ca,
        # one worker: CPython 3.11's ast module can fail spuriously when threads parse source
        # at once, as hypothesis does in each of schemathesis's worker threads
        "--max-time", str(SCAN_SECONDS), "--workers", "1", "--request-timeout", "20",
        # (the coverage phase is left out: with this hypothesis it intermittently fails inside
        # schemathesis itself, which says nothing about the kit)
        "--max-examples", "25", "--phases", "examples,fuzzing",
        "--checks", checks, "--no-color", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=dict(os.environ, SCHEMATHESIS_HOOKS=""))


def test_scan_running_kit_finds_no_server_error_and_no_open_route(kit_server, tmp_path):
    admin = kit_server.auth("admin")  # a signed-in admin session: cookie and CSRF token
    r = kit_server.get("/api/v1/openapi.json", headers=admin)
    assert r.status_code == 200
    spec = r.json()
    assert kit_server.get("/api/v1/openapi.json").status_code == 401
    operations = [(p, m) for p, ops in spec["paths"].items() for m in ops]
    assert len(operations) >= 10
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(spec))
    # as the admin: every operation, fuzzed; ignored_auth also replays each without credentials
    # Each part of the API as a role that may use it; ignored_auth also replays every
    # operation without credentials and with a wrong token, and must be refused.
    # (revoking tokens and disabling or resetting accounts are left out: the scan would
    # find and end its own credentials)
    # The admin is a signed-in session (a cookie, which ignored_auth, replaying without the
    # declared bearer scheme, would keep): its run checks for server errors; the replay
    # without credentials runs with machine tokens, one for the API and one for DICOMweb.
    admin_args = ["--exclude-path-regex", "^/(dicom-web|wado)", "--exclude-operation-id", "revokeToken",
                  "--exclude-operation-id", "disableUser", "--exclude-operation-id", "resetUser"]
    # the admin's scan in two processes, the tablet's pages and the rest (each scan has one
    # worker: see _scan), so that both halves are fuzzed in the time
    ui = ["--include-path-regex", "^/api/v1/ui/"]
    rest = ["--exclude-path-regex", "^/(dicom-web|wado|api/v1/ui/)"]
    runs = [("admin-ui", admin, admin_args + ui, "not_a_server_error"),
            ("admin-rest", admin, admin_args + rest, "not_a_server_error"),
            ("sync", kit_server.auth("sync"), admin_args, "not_a_server_error,ignored_auth"),
            ("dicomweb", kit_server.auth("dicomweb-client"), ["--include-path-regex", "^/(dicom-web|wado)"],
             "not_a_server_error,ignored_auth")]
    # the scans run at once (each is bounded by time, not by work)
    scans = []
    for name, headers, extra, checks in runs:
        header_args = [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]
        scans.append(_scan(kit_server, schema, tmp_path, *header_args, *extra, name=name, checks=checks))
    try:
        outs = [scan.communicate(timeout=SCAN_SECONDS * 3 + 120)[0] for scan in scans]
    finally:
        for scan in scans:
            if scan.poll() is None:
                scan.kill()
                scan.wait()
    for scan, out in zip(scans, outs):
        assert scan.returncode == 0, out[-6000:]
        assert "Server error" not in out and "Authentication declared but not enforced" not in out
        assert "Tested: " in out
    assert run_cli("token", "list", "--data-dir", kit_server.data_dir).stdout.count(" active ") >= 1
    # nothing broke the kit, and its audit trail still verifies
    verified = run_cli("audit", "verify", "--data-dir", kit_server.data_dir)
    assert "intact" in verified.stdout
    assert kit_server.get("/healthz").json()["ok"]
    print(outs[-1][-3000:])
    assert "Exception on " not in kit_server.log()  # Flask's line for an unhandled error in a view


def test_running_kit_refuses_oversized_headers_plain_http_and_bad_tokens(kit_server):
    import requests

    try:
        r = kit_server.get("/healthz", headers={"X-Padding": "a" * 200_000})
        assert r.status_code in (413, 431, 400)
    except requests.exceptions.ConnectionError:
        # the kit answers 413 and closes while the client may still be sending the rest of
        # its head; the client then sees the connection cut instead of the answer
        pass
    assert kit_server.get("/healthz").status_code == 200
    # plain HTTP to the HTTPS port gets no answer from the application
    try:
        plain = requests.get(f"http://127.0.0.1:{kit_server.http_port}/api/v1/status", timeout=10)
        assert plain.status_code == 400 and "queue" not in plain.text
    except requests.exceptions.ConnectionError:
        pass
    forged = "fkt_" + "A" * 43
    assert kit_server.get("/api/v1/status", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert kit_server.get("/api/v1/status", headers={"Authorization": "Bearer " + "x" * 5000}).status_code == 401
    events = json.loads(run_cli("audit", "export", "--data-dir", kit_server.data_dir).stdout)["events"]
    reasons = [(e.get("detail") or {}).get("reason") for e in events if e["action"] == "token.use"]
    assert "unknown token" in reasons and "malformed token" in reasons
