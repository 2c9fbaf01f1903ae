"""The audit chain: unit checks of verify_chain, and `fieldkit audit verify` naming the
first broken link after an event is edited or deleted in the (encrypted) store."""

from __future__ import annotations

import json

import pytest

from fieldkit.security import audit as A
from fieldkit.store import accounts

from kitproc import run_cli


def _chain(n):
    events, prev = [], None
    for i in range(n):
        prev = A.make_event(prev, at=1000.0 + i, actor="amina", role="clinician", action="view",
                            object=f"patient:P{i}")
        events.append(prev)
    return events


def test_intact_chain_verifies():
    r = A.verify_chain(_chain(5), expected_head=(5, _chain(5)[-1]["hash"]))
    assert r.ok and r.count == 5 and r.head[0] == 5


@pytest.mark.parametrize("field,value", [("actor", "mallory"), ("outcome", "denied"), ("at", 1.0), ("object", "")])
def test_an_edited_event_is_named(field, value):
    events = _chain(6)
    events[2] = dict(events[2], **{field: value})
    r = A.verify_chain(events)
    assert not r.ok and r.broken_seq == 3 and "altered" in r.reason


def test_an_edited_event_with_a_recomputed_hash_breaks_the_next_link():
    events = _chain(6)
    forged = dict(events[2], actor="mallory")
    forged["hash"] = A.event_hash(forged)
    events[2] = forged
    r = A.verify_chain(events)
    assert not r.ok and r.broken_seq == 4 and "does not follow event 3" in r.reason


def test_deleted_reordered_and_truncated_events_are_named():
    events = _chain(6)
    r = A.verify_chain(events[:3] + events[4:])
    assert not r.ok and r.broken_seq == 4 and "missing" in r.reason
    r = A.verify_chain([events[0], events[2], events[1]] + events[3:])
    assert not r.ok and r.broken_seq == 2
    r = A.verify_chain(events[:4], expected_head=(6, events[5]["hash"]))
    assert not r.ok and r.broken_seq == 5 and "truncated" in r.reason


def test_an_export_continues_from_the_previous_head():
    events = _chain(8)
    head = (4, events[3]["hash"])
    assert A.verify_chain(events[4:], start=head).ok
    rewritten = _chain(8)
    rewritten[2] = dict(rewritten[2], actor="mallory")  # history rewritten on the kit
    rebuilt, prev = [], None
    for e in rewritten:
        prev = A.make_event(prev, at=e["at"], actor=e["actor"], role=e["role"], action=e["action"], object=e["object"])
        rebuilt.append(prev)
    r = A.verify_chain(rebuilt[4:], start=head)
    assert not r.ok and r.broken_seq == 5


def test_a_clock_that_went_backwards_is_recorded_in_the_event():
    e1 = A.make_event(None, at=2000.0, actor="a", role="admin", action="x")
    e2 = A.make_event(e1, at=1000.0, actor="a", role="admin", action="y")
    assert e2["clock"] == "backwards" and A.verify_chain([e1, e2]).ok


def _tamper(data_dir, fn):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        kit.store.write(lambda db: fn(db.table(accounts.T_AUDIT)))
    finally:
        kit.close()


def _seed(data_dir, n=6):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        for i in range(n):
            accounts.audit_append(kit.store, actor="amina", role="clinician", action="view", object=f"patient:P{i}")
        return len(accounts.audit_events(kit.store))
    finally:
        kit.close()


def test_cli_verify_passes_then_names_an_edited_event(data_dir):
    total = _seed(data_dir)
    ok = run_cli("audit", "verify", "--data-dir", data_dir)
    assert f"intact: {total} events" in ok.stdout
    target = total - 2

    def edit(table):
        doc = table.get(lambda e: e["seq"] == target)
        table.update({"actor": "mallory"}, doc_ids=[doc.doc_id])

    _tamper(data_dir, edit)
    bad = run_cli("audit", "verify", "--data-dir", data_dir, check=False)
    assert bad.returncode == 1
    assert f"BROKEN at event {target}" in bad.stdout and "altered" in bad.stdout


def test_cli_verify_names_a_deleted_event(data_dir):
    total = _seed(data_dir)
    target = total - 3

    def delete(table):
        table.remove(lambda e: e["seq"] == target)

    _tamper(data_dir, delete)
    bad = run_cli("audit", "verify", "--data-dir", data_dir, check=False)
    assert bad.returncode == 1 and f"BROKEN at event {target}" in bad.stdout and "missing" in bad.stdout


def test_cli_export_is_a_verifiable_json_document(data_dir, tmp_path):
    total = _seed(data_dir, 3)
    out = tmp_path / "audit.json"
    run_cli("audit", "export", "--data-dir", data_dir, "--out", out)
    doc = json.loads(out.read_text())
    assert doc["format"] == "fieldkit-audit/1" and len(doc["events"]) == total
    assert (out.stat().st_mode & 0o077) == 0
    assert A.verify_chain(doc["events"], expected_head=tuple(doc["head"])).ok
    part = json.loads(run_cli("audit", "export", "--data-dir", data_dir, "--since", total - 1).stdout)
    assert len(part["events"]) == 1 and A.verify_chain(part["events"], start=tuple(part["start"])).ok


def test_audit_trail_is_not_readable_on_disk(data_dir):
    _seed(data_dir, 2)
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert b"patient:P1" not in path.read_bytes(), path
