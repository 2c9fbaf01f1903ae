"""Merging patients loses nothing and a tablet can undo it: the survivor keeps the most urgent
category, every tag and both histories; a red patient never leaves the Immediate count."""

from __future__ import annotations

import time

import pytest

from fieldkit.records import KIND_SYNC, sync_priority
from fieldkit.store import instances, patients
from test_ingest_identity import capture


def _immediate(store) -> list[str]:
    return sorted(p["id"] for p in patients.list_patients(store) if p["triage"] == "red")


def test_merging_a_red_tagged_patient_into_a_probe_patient_keeps_red_and_the_tag(store):
    red = patients.create_patient(store, tag="T-1005", triage="red")
    patients.set_triage(store, red["id"], "yellow", by="tri")
    patients.set_triage(store, red["id"], "red", by="tri")
    probe = instances.put_instance(store, capture("PLA"), "dimse")  # a probe-made "patient"
    mine = instances.put_instance(store, capture("T-1005"), "dimse")
    assert _immediate(store) == ["T-1005"]
    # the one tap of the drill: the red patient merged INTO the probe's patient
    survivor = patients.merge_patients(store, red["id"], probe["patient_id"], by="clin")
    assert survivor["id"] == probe["patient_id"] and survivor["triage"] == "red"
    assert _immediate(store) == [probe["patient_id"]]  # still one Immediate patient: never fewer
    assert "T-1005" in patients.all_tags(survivor)
    assert [p["id"] for p in patients.find_patients(store, "1005")] == [survivor["id"]]
    history = survivor["triage_history"]
    assert [h["triage"] for h in history] == ["yellow", "red", "red"]
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert history[-1]["merged"] == "T-1005" and history[-1]["by"] == "clin"
    assert {instances.get_instance(store, r["sop_instance_uid"])["patient_id"] for r in (probe, mine)} \
        == {survivor["id"]}
    # a later capture typed with the merged tag finds the survivor
    later = instances.put_instance(store, capture("T-1005"), "dimse")
    assert later["patient_id"] == survivor["id"]


def test_the_most_urgent_category_wins_and_not_triaged_says_nothing(store):
    for a, b, kept in (("green", "none", "green"), ("none", "yellow", "yellow"), ("yellow", "red", "red"),
                       ("black", "green", "green"), ("none", "none", "none")):
        x = patients.create_patient(store, triage=a)
        y = patients.create_patient(store, triage=b)
        assert patients.merge_patients(store, x["id"], y["id"])["triage"] == kept, (a, b)


def test_undo_splits_the_merge_back_and_nothing_of_it_was_sent(store):
    red = patients.create_patient(store, tag="T-2001", triage="red", name="")
    other = patients.create_patient(store, name="Doe^John", triage="green")
    cap = instances.put_instance(store, capture("T-2001"), "dimse")
    before = {p["id"]: p for p in patients.list_patients(store)}
    ready_before = {r.id for r in store.queue.rows(kind=KIND_SYNC, state="ready")}
    patients.merge_patients(store, red["id"], other["id"], by="clin", undo_seconds=30)
    queued = [r for r in store.queue.rows(kind=KIND_SYNC) if r.id not in ready_before]
    assert queued and all(r.next_at > time.time() + 20 for r in queued)  # held for the undo time
    assert store.queue.lease(KIND_SYNC) is not None  # (the capture's own first send may go)
    patients.unmerge(store, red["id"], by="clin")
    after = {p["id"]: p for p in patients.list_patients(store)}
    assert set(after) == set(before)
    for pid in before:
        assert (after[pid]["triage"], after[pid]["name"], after[pid]["tag"]) == \
            (before[pid]["triage"], before[pid]["name"], before[pid]["tag"])
    assert after[other["id"]]["triage_history"] == before[other["id"]]["triage_history"]
    assert instances.get_instance(store, cap["sop_instance_uid"])["patient_id"] == red["id"]
    assert all(store.queue.get(r.id).state == "done" for r in queued if r.payload.get("what") in ("merge", "merged"))
    assert [p["id"] for p in patients.find_patients(store, "2001")] == [red["id"]]


def test_undo_after_its_time_or_of_an_unmerged_patient_is_refused(store):
    a = patients.create_patient(store, triage="red")
    b = patients.create_patient(store, triage="red")
    with pytest.raises(Exception, match="not merged"):
        patients.unmerge(store, a["id"])
    patients.merge_patients(store, a["id"], b["id"], undo_seconds=0)
    with pytest.raises(Exception, match="no longer be undone"):
        patients.unmerge(store, a["id"])
    assert patients.get_patient(store, a["id"])["id"] == b["id"]  # still merged: nothing changed


def test_unmerge_through_the_tablet_api(kit, role_clients):
    from fieldkit.store import patients as P

    red = P.create_patient(kit.store, tag="T-3001", triage="red")
    probe = P.create_patient(kit.store)
    clin = role_clients["clinician"]
    r = clin.open("POST", f"/api/v1/ui/patients/{red['id']}/merge", json={"into": probe["id"]})
    assert r.status_code == 200 and r.json["patient"]["triage"] == "red"
    assert role_clients["triage"].open("POST", f"/api/v1/ui/patients/{red['id']}/unmerge").status_code == 403
    r = clin.open("POST", f"/api/v1/ui/patients/{red['id']}/unmerge")
    assert r.status_code == 200, r.text
    assert P.get_patient(kit.store, red["id"])["triage"] == "red"
    assert P.get_patient(kit.store, probe["id"])["triage"] == "none"
    r = clin.open("POST", f"/api/v1/ui/patients/{red['id']}/unmerge")
    assert r.status_code == 404 and "not merged" in r.text


def test_an_unlinked_capture_is_unassigned_then_assigned_and_undone(kit, role_clients):
    from fieldkit.store import accounts

    store = kit.store
    red = patients.create_patient(store, tag="T-1005", triage="red")
    yellow = patients.create_patient(store, tag="T-1006", triage="yellow")
    lost = instances.put_instance(store, capture("ANONYMOUS"), "dimse")  # nobody could link it
    holder = patients.get_patient(store, lost["patient_id"])
    assert patients.is_unassigned(holder) and not patients.is_unassigned(red)
    sop = lost["sop_instance_uid"]
    tri, clin = role_clients["triage"], role_clients["clinician"]
    r = tri.open("POST", f"/api/v1/ui/instances/{sop}/assign", json={"patient": "T-1005", "from": holder["id"]})
    assert r.status_code == 200, r.text
    row = instances.get_instance(store, sop)
    assert row["patient_id"] == red["id"] and row["linked_by"] == "assigned"
    assert _immediate(store) == [red["id"]]  # the patient stayed; only the capture moved
    assert patients.get_patient(store, holder["id"]) is not None
    sync = [q for q in store.queue.rows(kind=KIND_SYNC) if q.payload.get("sop_instance_uid") == sop]
    assert [q.priority for q in sync if q.state == "ready"] == [sync_priority("red", "image")]
    assert patients.get_patient(store, red["id"])["triage_history"][-1]["assigned"] == sop
    assert any(e["action"] == "capture.assign" for e in accounts.audit_events(store))
    # a second tablet that still saw it unassigned is refused, nothing changes
    r = clin.open("POST", f"/api/v1/ui/instances/{sop}/assign", json={"patient": "T-1006", "from": holder["id"]})
    assert r.status_code == 400 and "moved meanwhile" in r.text
    assert instances.get_instance(store, sop)["patient_id"] == red["id"]
    # undo: the same call back; re-assigning later is always possible
    r = tri.open("POST", f"/api/v1/ui/instances/{sop}/assign", json={"patient": holder["id"], "from": "T-1005"})
    assert r.status_code == 200 and instances.get_instance(store, sop)["patient_id"] == holder["id"]
    r = clin.open("POST", f"/api/v1/ui/instances/{sop}/assign", json={"patient": "T-1006"})
    assert r.status_code == 200 and instances.get_instance(store, sop)["patient_id"] == yellow["id"]
    assert len(instances.get_instance(store, sop)["assigned"]) == 3


def test_assign_bad_input_is_refused_and_changes_nothing(kit, role_clients):
    store = kit.store
    dead = patients.create_patient(store, tag="T-9", triage="black")
    cap = instances.put_instance(store, capture("ANONYMOUS"), "dimse")
    sop, tri = cap["sop_instance_uid"], role_clients["triage"]
    for body, status, words in (({"patient": "T-404"}, 404, "no patient"),
                                ({"patient": dead["id"]}, 400, "deceased"),
                                ({"patient": cap["patient_id"]}, 400, "already on"),
                                ({}, 400, "say which patient"),
                                ({"patient": 5}, 400, "say which patient")):
        r = tri.open("POST", f"/api/v1/ui/instances/{sop}/assign", json=body)
        assert r.status_code == status and words in r.text, (body, r.text)
    r = tri.open("POST", "/api/v1/ui/instances/1.2.3.404/assign", json={"patient": dead["id"]})
    assert r.status_code == 404
    assert instances.get_instance(store, sop)["patient_id"] == cap["patient_id"]
    assert role_clients["admin"].open("POST", f"/api/v1/ui/instances/{sop}/assign",
                                      json={"patient": "T-9"}).status_code == 403
