"""Time, place and movement on the board, in process (Flask test client on a real store):

- the triage role records an intervention with its time, a zone and a disposition; each is
  on the patient row with who and when, on the board card and in the handover CSV;
- the triage role may write notes, age and sex but not a name; the admin may write none;
- bad input (unknown kind, zone or disposition, a departure without destination, a time
  in the future, text with control characters) is refused and changes nothing;
- a card is overdue for re-triage after its category's interval, not before, and not once
  the patient has left; a bad triage.retriage_minutes or triage.zones value is refused;
- fuzzed JSON bodies get a 200 or one clear 400, and a 400 changes nothing.
"""

from __future__ import annotations

import csv
import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldkit.config import Config
from fieldkit.errors import ConfigError
from fieldkit.store import care
from fieldkit.store import patients as pstore
from fieldkit.store.board import rows_for
from fixtures.board import grow
from kitproc import ADMIN_PASSWORD, ADMIN_USER
from test_ui_api import Tablet, ui  # noqa: F401  (ui: a fixture)

UI = "/api/v1/ui/patients"


def test_triage_records_interventions_zone_and_disposition_with_who_and_when(ui):
    kit, app = ui
    grow(kit.store, ["T-1"], 1)
    tri = Tablet(app, "tri", "tri password 123")
    zones = tri.get("/api/v1/ui/care/options").json["zones"]
    assert "Red area" in zones

    applied = time.time() - 600  # the tourniquet went on ten minutes before it was recorded
    r = tri.post(f"{UI}/T-1/interventions", {"kind": "tourniquet", "text": "left thigh", "at": applied})
    assert r.status_code == 200, r.json
    assert tri.post(f"{UI}/T-1/interventions", {"kind": "other", "text": "splint right arm"}).status_code == 200
    assert tri.post(f"{UI}/T-1/place", {"zone": "Red area"}).status_code == 200
    r = tri.post(f"{UI}/T-1/disposition", {"state": "left", "destination": "St X", "vehicle": "Ambulance 3"})
    assert r.status_code == 200 and r.json["disposition_text"] == "left by Ambulance 3 to St X"

    row = pstore.get_patient(kit.store, "T-1")
    assert [(i["what"], i["by"]) for i in row["interventions"]] == [
        ("Tourniquet: left thigh", "tri"), ("splint right arm", "tri")]
    assert row["interventions"][0]["at"] == pytest.approx(applied)
    assert row["interventions"][0]["recorded_at"] > applied + 500
    assert row["zone"] == "Red area" and row["disposition"]["by"] == "tri"
    assert [h.get("zone", (h.get("disposition") or {}).get("state")) for h in row["movement_history"]] == [
        "Red area", "left"]

    card = rows_for(kit.store).row("T-1")
    assert card["zone"] == "Red area" and card["disposition_text"] == "left by Ambulance 3 to St X"
    assert [i["kind"] for i in card["interventions"]] == ["tourniquet", "other"]
    page = tri.get(f"{UI}/T-1").json
    assert page["zone"] == "Red area" and len(page["movement_history"]) == 2

    clin = Tablet(app, "clin", "clin password 123")
    rows = list(csv.DictReader(io.StringIO(clin.get("/api/v1/export/patients.csv").data.decode("utf-8-sig"))))
    assert rows[0]["zone"] == "Red area" and rows[0]["disposition"] == "left by Ambulance 3 to St X"
    assert "Tourniquet: left thigh" in rows[0]["interventions"] and "splint right arm" in rows[0]["interventions"]


def test_triage_writes_notes_age_and_sex_but_not_a_name_and_admin_writes_none(ui):
    kit, app = ui
    grow(kit.store, ["N-1"], 1)
    tri = Tablet(app, "tri", "tri password 123")
    r = tri.post(f"{UI}/N-1/details", {"age": 34, "sex": "F", "note": "conscious, talking"})
    assert r.status_code == 200, r.json
    r = tri.post(f"{UI}/N-1/details", {"name": "Someone Else", "note": "should not land"})
    assert r.status_code == 403 and "patients.write" in r.json["error"]
    row = pstore.get_patient(kit.store, "N-1")
    assert (row["age"], row["sex"], [n["text"] for n in row["notes"]]) == (34, "F", ["conscious, talking"])
    assert not row.get("name")

    admin = Tablet(app, ADMIN_USER, ADMIN_PASSWORD)
    for path, body in ((f"{UI}/N-1/interventions", {"kind": "airway"}), (f"{UI}/N-1/place", {"zone": "Red area"}),
                       (f"{UI}/N-1/disposition", {"state": "discharged"}), (f"{UI}/N-1/details", {"note": "x"})):
        assert admin.post(path, body).status_code == 403, path
    assert pstore.get_patient(kit.store, "N-1") == row


def test_bad_input_is_refused_and_changes_nothing(ui):
    kit, app = ui
    grow(kit.store, ["B-1"], 1)
    before = pstore.get_patient(kit.store, "B-1")
    tri = Tablet(app, "tri", "tri password 123")
    cases = [
        ("interventions", {"kind": "surgery"}, 400, "intervention must be one of"),
        ("interventions", {"kind": "other"}, 400, "say what was done"),
        ("interventions", {"kind": "fluids", "at": time.time() + 3600}, 400, "not in the future"),
        ("interventions", {"kind": "fluids", "at": "14:32"}, 400, "timestamp"),
        ("interventions", {"kind": "fluids", "text": "a\x00b"}, 400, "control characters"),
        ("interventions", {"kind": "fluids", "text": "x" * 201}, 400, "longer than"),
        ("interventions", {"kind": ["tourniquet"]}, 400, "intervention must be one of"),
        ("interventions", {"kind": "fluids", "at": 10 ** 400}, 400, "timestamp"),
        ("interventions", {"kind": "fluids", "at": True}, 400, "timestamp"),
        ("disposition", {"state": {"left": 1}}, 400, "disposition must be one of"),
        ("disposition", {"state": "left", "destination": ["St X"]}, 400, "must be text"),
        ("place", {"zone": "Moon base"}, 400, "zone must be one of"),
        ("place", {"zone": 3}, 400, "zone must be text"),
        ("disposition", {"state": "flying"}, 400, "disposition must be one of"),
        ("disposition", {"state": "left", "vehicle": "Amb 1"}, 400, "destination"),
    ]
    for what, body, status, words in cases:
        r = tri.post(f"{UI}/B-1/{what}", body)
        assert r.status_code == status and words in r.json["error"], (what, body, r.status_code, r.json)
    assert tri.post(f"{UI}/NOPE/place", {"zone": "Red area"}).status_code == 404
    assert pstore.get_patient(kit.store, "B-1") == before


def test_overdue_after_the_category_interval_and_not_once_left():
    minutes = care.retriage_minutes(["red=15", "yellow=30"])
    t0 = 1_000_000.0
    card = {"triage": "red", "triaged_at": t0, "retriaged_at": None}
    assert not care.is_overdue(card, minutes, now=t0 + 14 * 60)
    assert care.is_overdue(card, minutes, now=t0 + 16 * 60)
    card["retriaged_at"] = t0 + 10 * 60  # seen again: the interval restarts
    assert not care.is_overdue(card, minutes, now=t0 + 16 * 60)
    assert care.retriage_due_at(dict(card, triage="green"), minutes) is None  # green not timed here
    assert not care.is_overdue(dict(card, disposition={"state": "left"}), minutes, now=t0 + 3600)


def test_bad_triage_settings_are_refused():
    for values in ({"triage.retriage_minutes": ["red=0"]}, {"triage.retriage_minutes": ["purple=5"]},
                   {"triage.retriage_minutes": ["red=2000"]}, {"triage.zones": [""]},
                   {"triage.zones": ["x" * 41]}):
        with pytest.raises(ConfigError):
            Config(values)
    assert Config({"triage.retriage_minutes": ["red=5"]})["triage.retriage_minutes"] == ["red=5"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)
_field = st.sampled_from(["kind", "text", "at", "zone", "state", "destination", "vehicle"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(what=st.sampled_from(["interventions", "place", "disposition"]),
       body=st.dictionaries(_field, _json | st.sampled_from(["tourniquet", "other", "Red area", "left", "discharged"]),
                            max_size=4))
def test_fuzzed_bodies_get_one_clear_answer_and_a_refusal_changes_nothing(ui, what, body):
    kit, app = ui
    if pstore.get_patient(kit.store, "Z-1") is None:
        grow(kit.store, ["Z-1"], 1)
    before = pstore.get_patient(kit.store, "Z-1")
    tri = getattr(kit, "_fuzz_tablet", None) or Tablet(app, "tri", "tri password 123")
    kit._fuzz_tablet = tri
    r = tri.post(f"{UI}/Z-1/{what}", body)
    assert r.status_code in (200, 400), (what, body, r.status_code, r.data[:200])
    if r.status_code == 400:
        assert r.json["error"] and pstore.get_patient(kit.store, "Z-1") == before


def test_a_merge_keeps_both_records_care_and_undo_gives_it_back(store):
    pstore.create_patient(store, tag="M-1")
    pstore.create_patient(store, tag="M-2")
    care.add_intervention(store, "M-1", "tourniquet", "left thigh", at=time.time() - 600, by="a")
    care.set_zone(store, "M-1", "Red area", ["Red area", "Green area"], by="a")
    pstore.update_details(store, "M-1", note="found under rubble", actor="a")
    care.add_intervention(store, "M-2", "analgesia", "morphine 5 mg", by="b")
    care.set_disposition(store, "M-2", "awaiting_transport", by="b")
    survivor_before = pstore.get_patient(store, "M-2")

    merged = pstore.merge_patients(store, "M-1", "M-2", by="c", undo_seconds=30)
    assert [i["what"] for i in merged["interventions"]] == ["Tourniquet: left thigh", "Analgesia: morphine 5 mg"]
    assert merged["zone"] == "Red area" and merged["disposition"]["state"] == "awaiting_transport"
    assert [n["text"] for n in merged["notes"]] == ["found under rubble"]
    assert [h.get("zone") or h["disposition"]["state"] for h in merged["movement_history"]] == [
        "Red area", "awaiting_transport"]

    pstore.unmerge(store, "M-1", by="c")
    after = pstore.get_patient(store, "M-2")
    for key in pstore.CARE_FIELDS:
        assert (after.get(key) or None) == (survivor_before.get(key) or None), key
    assert pstore.get_patient(store, "M-1")["zone"] == "Red area"
