"""Offline tablet writes, on the kit's side (Flask test client on a real store): a replay is
applied once by its client-made IDs and keeps the original times; two tablets that
re-triaged one patient offline resolve to the later time, both in the history, flagged; a
tag registered twice becomes one patient, flagged; a change for a merged patient goes to the
survivor; bad changes are refused one by one with a reason and change nothing; the queue key
is the person's (the same after a restart), kept sealed, refused to roles that may not write."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from fieldkit.web import create_app
from kitproc import ADMIN_PASSWORD, ADMIN_USER, init_kit, run_cli
from test_ui_api import BASE, Tablet


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """One kit for the module (each test uses its own tags), with a clinician and a triage user."""
    root = tmp_path_factory.mktemp("offline-replay")
    data_dir = init_kit(root / "kit")
    for name, role in (("clin", "clinician"), ("tri", "triage")):
        secret = root / f".{name}"
        secret.write_text(f"{name} password 123\n")
        run_cli("users", "add", name, "--data-dir", data_dir, "--role", role, "--password-file", secret)
    from fieldkit.kit import open_kit
    kit = open_kit(data_dir)
    yield kit, create_app(kit, testing=True)
    kit.close()


def change(kind, at, **fields):
    return {"id": uuid.uuid4().hex, "kind": kind, "at": at, **fields}


def replay(t, changes, status=200):
    r = t.post("/api/v1/offline/replay", {"changes": changes})
    assert r.status_code == status, r.json
    return r.json


def test_replay_applies_each_change_once_in_order_with_its_original_time(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    t0 = time.time() - 600
    total = t.get("/api/v1/ui/board").json["total"]
    queue = [change("register", t0 + i, tag=f"OFF-{i}", triage="green") for i in range(3)]
    queue.append(change("register", t0 + 3, triage="yellow"))  # no tag: the kit gives the ID
    queue.append(change("triage", t0 + 4, patient="OFF-1", triage="red", expected="green"))
    queue.append(change("triage", t0 + 5, ref=queue[3]["id"], triage="red", expected="yellow"))
    queue.append(change("note", t0 + 6, patient="OFF-2", text="tourniquet left thigh"))
    first = replay(t, queue)["results"]
    assert [r["status"] for r in first] == ["applied"] * 7 and not any(r.get("duplicate") for r in first)
    assert not any(r["flagged"] for r in first)
    tagless = first[3]["patient_id"]
    assert tagless.startswith("N-") and first[5]["patient_id"] == tagless
    again = replay(t, queue)["results"]  # the same queue sent twice (the answer was lost)
    assert all(r["duplicate"] for r in again) and [r["patient_id"] for r in again] == [r["patient_id"] for r in first]
    board = t.get("/api/v1/ui/board").json
    assert board["total"] == total + 4
    p1 = t.get("/api/v1/ui/patients/OFF-1").json
    assert p1["triage"] == "red"
    assert [(h["triage"], h["at"]) for h in p1["triage_history"]] == [("green", t0 + 1), ("red", t0 + 4)]
    assert all(h["received_at"] >= time.time() - 60 and h["by"] == "clin" for h in p1["triage_history"])
    assert p1["created"] == t0 + 1  # registered when the tablet did, not when the kit heard of it
    p2 = t.get("/api/v1/ui/patients/OFF-2").json
    assert [(n["text"], n["at"]) for n in p2["notes"]] == [("tourniquet left thigh", t0 + 6)]
    assert t.get(f"/api/v1/ui/patients/{tagless}").json["triage"] == "red"


@pytest.mark.parametrize("arrival", ["earlier first", "later first"])
def test_two_tablets_retriaging_offline_resolve_to_the_later_time_flagged(ui, arrival):
    kit, app = ui
    a, b = Tablet(app, "clin", "clin password 123"), Tablet(app, "tri", "tri password 123")
    pid = "C-" + arrival.split()[0]
    assert a.post("/api/v1/ui/patients", {"tag": pid, "triage": "green"}).status_code == 201
    now = time.time()
    from_a = change("triage", now + 1, patient=pid, triage="yellow", expected="green")
    from_b = change("triage", now + 2, patient=pid, triage="red", expected="green")  # the later one
    order = [(a, from_a), (b, from_b)] if arrival == "earlier first" else [(b, from_b), (a, from_a)]
    results = [replay(t, [c])["results"][0] for t, c in order]
    assert all(r["status"] == "applied" for r in results)
    assert not results[0]["flagged"] and "re-triaged elsewhere" in results[1]["flagged"]
    p = a.get(f"/api/v1/ui/patients/{pid}").json
    assert p["triage"] == "red"  # the later original time wins, whichever arrived first
    assert [h["triage"] for h in p["triage_history"]] == ["green", "yellow", "red"]
    assert [h["by"] for h in p["triage_history"][1:]] == ["clin", "tri"]
    assert p["review"] and "re-triaged elsewhere" in p["review"][0]["reason"]


def test_a_tag_registered_twice_offline_becomes_one_flagged_patient(ui):
    kit, app = ui
    a, b = Tablet(app, "clin", "clin password 123"), Tablet(app, "tri", "tri password 123")
    now = time.time()
    ra = replay(a, [change("register", now - 30, tag="TWICE", triage="yellow")])["results"][0]
    rb = replay(b, [change("register", now - 20, tag="TWICE", triage="red")])["results"][0]
    assert ra["patient_id"] == rb["patient_id"] == "TWICE"
    assert "registered twice" in rb["flagged"]
    board = a.get("/api/v1/ui/board").json
    assert [p["id"] for p in board["patients"] if p.get("tag") == "TWICE"] == ["TWICE"]
    p = a.get("/api/v1/ui/patients/TWICE").json
    assert p["triage"] == "red" and [h["triage"] for h in p["triage_history"]] == ["yellow", "red"]
    assert "registered twice" in p["review"][0]["reason"]


def test_a_change_for_a_merged_patient_goes_to_the_survivor(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    for tag in ("M-1", "M-2"):
        assert t.post("/api/v1/ui/patients", {"tag": tag, "triage": "green"}).status_code == 201
    assert t.post("/api/v1/ui/patients/M-1/merge", {"into": "M-2"}).status_code == 200
    r = replay(t, [change("triage", time.time(), patient="M-1", triage="red", expected="green")])["results"][0]
    assert r["status"] == "applied" and r["patient_id"] == "M-2" and "merged into M-2" in r["reason"]
    assert t.get("/api/v1/ui/patients/M-2").json["triage"] == "red"


def test_bad_changes_are_refused_one_by_one_and_change_nothing(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    tri = Tablet(app, "tri", "tri password 123")
    now = time.time()
    total = t.get("/api/v1/ui/board").json["total"]
    ok = change("register", now - 1, tag="GOOD", triage="green")
    cases = [
        ({"id": "short", "kind": "register", "at": now}, "an id of 8 to 64"),
        (change("delete", now), "kind must be one of"),
        (change("register", now + 3600, tag="FUTURE"), "in the future"),
        (change("register", now - 30 * 86400, tag="OLD"), "more than a week old"),
        (change("register", "yesterday", tag="X"), "at must be the time"),
        (change("register", now, tag="X", triage="purple"), "triage must be one of"),
        (change("triage", now, triage="red"), "say which patient"),
        (change("triage", now, patient="NOBODY", triage="red"), "no patient NOBODY"),
        (change("note", now, patient="GOOD", text="a\x00b"), "control characters"),
        (change("note", now, patient="GOOD", text="n" * 2001), "at most 2000"),
        (change("register", now, tag="x" * 65), "at most 64 characters"),
        ("not an object", "must be an object"),
    ]
    results = replay(t, [ok] + [c for c, _ in cases])["results"]
    assert results[0]["status"] == "applied"
    for (sent, words), r in zip(cases, results[1:]):
        assert r["status"] == "refused" and words in r["reason"], (sent, r)
    assert t.get("/api/v1/ui/board").json["total"] == total + 1
    # the triage role writes notes offline as it does online (care.write)
    r = replay(tri, [change("note", now, patient="GOOD", text="hello")])["results"][0]
    assert r["status"] == "applied", r
    assert [n["text"] for n in t.get("/api/v1/ui/patients/GOOD").json["notes"]] == ["hello"]
    for body in ({"changes": []}, {"changes": "x"}, {"changes": [ok] * 201}):
        assert t.post("/api/v1/offline/replay", body).status_code == 400
    assert t.post("/api/v1/offline/replay", {"changes": [ok]}, csrf=False).status_code == 403


def test_queue_key_is_the_persons_and_only_for_those_who_may_write(ui):
    kit, app = ui
    t1, t2 = Tablet(app, "clin", "clin password 123"), Tablet(app, "clin", "clin password 123")
    k1, k1b, k2 = (t.get("/api/v1/offline/key").json for t in (t1, t1, t2))
    assert k1 == k1b == k2 and len(base64.b64decode(k1["key"])) == 32  # the same person on two tablets
    other = Tablet(app, "tri", "tri password 123").get("/api/v1/offline/key").json
    assert other["key"] != k1["key"] and other["kid"] != k1["kid"]
    sealed = kit.data_dir / "secrets" / "offline-queue.key"
    assert sealed.exists() and base64.b64decode(k1["key"]) not in sealed.read_bytes()  # sealed, never in clear
    admin = Tablet(app, ADMIN_USER, ADMIN_PASSWORD)
    assert admin.get("/api/v1/offline/key").status_code == 403
    assert admin.post("/api/v1/offline/replay", {"changes": []}).status_code == 403
    assert app.test_client().get("/api/v1/offline/key", base_url=BASE).status_code == 401
    assert t1.post("/logout", {}).status_code in (200, 303)
    assert t1.get("/api/v1/offline/key").status_code == 401


def test_the_queue_key_survives_a_restart_of_the_kit(data_dir, tmp_path):
    from fieldkit.kit import open_kit
    from fieldkit.web.offline import queue_key
    keys = []
    for _ in range(2):
        kit = open_kit(data_dir)
        try:
            keys.append(queue_key(kit, "someone"))
        finally:
            kit.close()
    assert keys[0] == keys[1]


def test_fuzzed_changes_get_a_clear_refusal_or_are_applied_never_a_crash():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fieldkit.errors import BadInput
    from fieldkit.store.offline import check_change

    now = 1_700_000_000.0
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=80))
    value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                         max_leaves=6)
    fields = st.fixed_dictionaries({}, optional={
        "id": st.one_of(value, st.text("abcdef0123456789-_", min_size=6, max_size=70)),
        "kind": st.one_of(value, st.sampled_from(["register", "triage", "note"])),
        "at": st.one_of(value, st.floats(now - 8 * 86400, now + 900), st.integers(-10 ** 400, 10 ** 400)),
        "tag": value, "patient": value, "ref": value, "text": value,
        "triage": st.one_of(value, st.sampled_from(["red", "green", "none"])),
        "expected": st.one_of(value, st.sampled_from(["red", "yellow"]))})

    @settings(max_examples=1500, deadline=None)
    @given(st.one_of(value, fields))
    def check(raw):
        try:
            out = check_change(raw, now)
        except BadInput as exc:
            assert exc.message
            return
        assert out["kind"] in ("register", "triage", "note") and now - 7 * 86400 <= out["at"] <= now + 600
    check()
