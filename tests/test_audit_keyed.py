"""The keyed audit chain: a rewrite made with the data key but without the chain's key
is caught by `fieldkit audit verify`; older unkeyed trails still verify up to the marker;
settings changes and the hospital anchor are recorded."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from fieldkit.security import audit as A
from fieldkit.store import accounts

from kitproc import PASSPHRASE, run_cli, set_config

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "format1-kit.tar.gz"


def _seed(data_dir, n=6) -> int:
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        for i in range(n):
            accounts.audit_append(kit.store, actor="amina", role="clinician", action="view", object=f"patient:P{i}")
        return len(accounts.audit_events(kit.store))
    finally:
        kit.close()


def _rechain(data_dir, from_seq: int, key: bytes | None, edit) -> None:
    """What a thief with the disk (so the data key) but not the chain's key can do: edit
    an event and rebuild every hash after it, with plain SHA-256 (key None) or a key of
    their own, head included."""
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        def tx(db):
            table = db.table(accounts.T_AUDIT)
            docs = sorted(table.all(), key=lambda d: d["seq"])
            prev = next((dict(d) for d in docs if d["seq"] == from_seq - 1), None)
            for doc in docs:
                if doc["seq"] < from_seq:
                    continue
                ev = {k: v for k, v in dict(doc).items() if k not in ("hash", "alg")}
                if doc["seq"] == from_seq:
                    edit(ev)
                if key:
                    ev["alg"] = A.KEYED
                ev["prev"] = prev["hash"] if prev else A.GENESIS
                ev["hash"] = A.event_hash(ev, key)
                table.remove(doc_ids=[doc.doc_id])
                table.insert(ev)
                prev = ev
            head = {"seq": prev["seq"], "hash": prev["hash"], "at": prev["at"], "keyed": bool(key),
                    "mac": A.head_mac(key, prev["seq"], prev["hash"]) if key else ""}
            db.table(accounts.T_AUDIT_HEAD).update(head, doc_ids=[1])

        kit.store.write(tx)
    finally:
        kit.close()


@pytest.mark.parametrize("rekey", ["sha256", "other key"])
def test_an_event_rewritten_without_the_kits_key_is_caught(data_dir, rekey):
    total = _seed(data_dir)
    ok = run_cli("audit", "verify", "--data-dir", data_dir)
    assert f"intact: {total} events" in ok.stdout and "keyed" in ok.stdout
    target = total - 3
    _rechain(data_dir, target, None if rekey == "sha256" else os.urandom(32),
             lambda ev: ev.update(actor="mallory"))
    bad = run_cli("audit", "verify", "--data-dir", data_dir, check=False)
    assert bad.returncode == 1 and f"BROKEN at event {target}" in bad.stdout, bad.stdout
    assert "without the kit's key" in bad.stdout


def test_a_whole_trail_rebuilt_without_the_key_is_caught(data_dir):
    _seed(data_dir)
    _rechain(data_dir, 1, None, lambda ev: ev.update(action="nothing to see"))  # no keyed event left
    bad = run_cli("audit", "verify", "--data-dir", data_dir, check=False)
    assert bad.returncode == 1 and "no event of the trail is keyed" in bad.stdout


def test_an_older_unkeyed_trail_verifies_up_to_the_marker_and_is_keyed_after(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    old = tmp_path / "kit"
    from fieldkit.kit import open_kit

    kit = open_kit(old, passphrase=PASSPHRASE)  # the first open by this version starts the keyed part
    try:
        events = accounts.audit_events(kit.store)
        marker = next(e for e in events if e["action"] == A.MARKER)
        before = [e for e in events if e["seq"] < marker["seq"]]
        assert before and all("alg" not in e for e in before)  # the old SHA-256 events, untouched
        assert all(e.get("alg") == A.KEYED for e in events if e["seq"] >= marker["seq"])
        result = accounts.audit_verify(kit.store)
        assert result.ok and result.keyed_from == marker["seq"]
        assert f"keyed from event {marker['seq']}" in result.message()
    finally:
        kit.close()
    # an old event rewritten and re-chained (SHA-256, as before) up to the marker is caught
    # at the marker, whose keyed hash covers its link to the past
    kit = open_kit(old, passphrase=PASSPHRASE)
    try:
        def tx(db):
            table = db.table(accounts.T_AUDIT)
            docs = sorted(table.all(), key=lambda d: d["seq"])
            prev = None
            for doc in docs:
                if doc.get("alg"):
                    break
                ev = {k: v for k, v in dict(doc).items() if k != "hash"}
                if doc["seq"] == 1:
                    ev["actor"] = "mallory"
                ev["prev"] = prev["hash"] if prev else A.GENESIS
                ev["hash"] = A.event_hash(ev)
                table.update({"actor": ev["actor"], "prev": ev["prev"], "hash": ev["hash"]}, doc_ids=[doc.doc_id])
                prev = ev

        kit.store.write(tx)
        result = accounts.audit_verify(kit.store)
        assert not result.ok and result.broken_seq == marker["seq"] and "does not follow" in result.reason
    finally:
        kit.close()


def test_a_settings_change_is_audited_at_the_next_open(data_dir):
    run_cli("audit", "verify", "--data-dir", data_dir)  # the baseline
    set_config(data_dir, security__token_days=30, http__session_idle_minutes=7)
    run_cli("audit", "verify", "--data-dir", data_dir)
    run_cli("audit", "verify", "--data-dir", data_dir)  # nothing changed since: no new event
    events = json.loads(run_cli("audit", "export", "--data-dir", data_dir).stdout)["events"]
    changes = [e for e in events if e["action"] == "config.change"]
    assert [e["action"] for e in events if e["action"].startswith("config.")] == ["config.baseline", "config.change"]
    assert changes[0]["detail"]["changed"] == "http.session_idle_minutes, security.token_days"
    assert changes[0]["detail"]["security.token_days"] == "365 -> 30"


def test_the_hospital_anchor_is_on_the_device_page(kit, role_clients):
    from fixtures.security import HTTPS

    admin = role_clients["admin"]
    shown = admin.open("GET", "/api/v1/ui/device").json["audit"]
    assert shown["seq"] == 0 and shown["head_seq"] >= 1
    head = accounts.audit_head(kit.store)
    accounts.audit_mark_synced(kit.store, head[0], head[1], "1.2.3")
    shown = admin.open("GET", "/api/v1/ui/device").json["audit"]
    assert shown["seq"] == head[0] and shown["hash"] == head[1] and shown["at"] > 0
    page = admin.client.get("/device", base_url=HTTPS)
    assert page.status_code == 200 and 'id="dv-audit"' in page.text
