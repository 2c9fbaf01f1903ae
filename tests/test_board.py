"""The triage board's rows, below the browser (a real store, the Flask app in process).

- A patient's row as the live stream sends it equals that patient's row on a board
  computed independently from every table, after each kind of change a card shows
  (triage, details, a capture, a finding, a merge that removes a patient).
- One change costs one patient: the rows computed and read after an event are the same
  with 20 or 200 patients on the board.
- The event bus replays what a reader missed, or says it cannot.
- The stream: a board stream sends the changed card before the event, resumes after
  Last-Event-ID without a refetch, says `resumed: false` for an id it cannot resume, and
  sends one `refetch` to a stream that fell too far behind.
"""

from __future__ import annotations

import json
import time

import pytest

from fieldkit.events import BOARD_ROW, REFETCH, Event, EventBus
from fieldkit.inference import findings as inference_findings
from fieldkit.records import TRIAGE_CATEGORIES
from fieldkit.kit import open_kit
from fieldkit.store import care, finding_words
from fieldkit.store import instances as catalogue
from fieldkit.store import patients as pstore
from fieldkit.dicom.names import format_person_name
from fieldkit.store.board import TRAY_MAX, concerned, rows_for
from fixtures.board import grow
from kitproc import init_kit
from test_ui_api import BASE, Tablet, ui  # noqa: F401  (ui: a fixture)


def reference_board(store) -> dict[str, dict]:
    """Every live patient's card, from whole-table reads (the way the board was once made)."""
    insts = catalogue.instance_rows(store)
    fnds = inference_findings.all_findings(store)
    cards = {}
    for p in pstore.list_patients(store):
        mine = [r for r in insts if r["patient_id"] == p["id"]]
        # a record only a capture made, untriaged, untagged: its captures wait in the tray
        unassigned = (p.get("origin") == "capture" and not p.get("tag") and not p.get("tags")
                      and (p.get("triage") or "none") == "none")
        states = [str(r.get("sync_state") or "queued") for r in mine]
        # category changes only (an assigned capture is in the history too)
        changes = [h for h in p.get("triage_history") or [] if h.get("triage") != "none" and "assigned" not in h]
        sync = ("none" if not states else "quarantined" if "quarantined" in states
                else "confirmed" if all(s == "confirmed" for s in states)
                else "sending" if "sending" in states else "queued")
        cards[p["id"]] = {
            "id": p["id"], "tag": p.get("tag"), "name": p.get("name"), "birth_date": p.get("birth_date"),
            "sex": p.get("sex"), "age": p.get("age"), "created": p.get("created"), "updated": p.get("updated"),
            "triage": p.get("triage") if p.get("triage") in TRIAGE_CATEGORIES else "none",
            "captures": len([r for r in mine if r.get("modality") not in ("SR", "DOC")]),
            "findings": len([f for f in fnds if f["patient_id"] == p["id"] and f.get("assessable")]),
            "sync": sync, "last_capture": max([float(r["received_at"]) for r in mine], default=0.0),
            "identified": bool(p.get("name")),
            "tags": [t for t in [p.get("tag")] + list(p.get("tags") or []) if t],
            "display_name": format_person_name(p.get("name")),
            "name_from_probe": bool(p.get("name")) and not p.get("name_confirmed")
            and (p.get("origin") == "capture" or p.get("name_from") == "probe"),
            "unassigned": unassigned,
            "triaged_at": changes[0]["at"] if changes else None,
            "retriaged_at": changes[-1]["at"] if len(changes) > 1 else None,
            "triaged_by": changes[-1].get("by") or "" if changes else "",
            "tray": [{"uid": r["sop_instance_uid"], "received_at": r["received_at"], "probe": r.get("calling_ae") or "",
                      "frames": r.get("frames") or 1, "has_thumbnail": bool(r.get("thumbnail")) and bool(r.get("blob"))}
                     for r in sorted(mine, key=lambda r: r["received_at"]) if r.get("modality") != "SR"][:TRAY_MAX]
            if unassigned else [],
            "tray_total": len([r for r in mine if r.get("modality") not in ("SR", "DOC")]) if unassigned else 0,
            "zone": p.get("zone") or "", "disposition": p.get("disposition") or None,
            "disposition_text": care.disposition_text(p.get("disposition")),
            "interventions": [{"kind": i["kind"], "what": i["what"], "at": i["at"]} for i in p.get("interventions") or []],
            **finding_words.card_fields(p.get("triage") if p.get("triage") in TRIAGE_CATEGORIES else "none", mine,
                                        [f for f in fnds if f["patient_id"] == p["id"]])}
    return cards


def add_finding(store, uid: str, pid: str, assessable: bool = True) -> None:
    """A model's finding on a capture, written and announced the way the inference worker does."""
    row = {"id": f"f-{uid[-12:]}", "sop_instance_uid": uid, "patient_id": pid, "model": "test-model",
           "model_sha256": "0" * 64, "model_version": "1", "task": "b-lines", "assessable": assessable,
           "reason": "", "confidence": 0.9, "result": {}, "overlay": None, "created": time.time()}
    inference_findings.replace(store, uid, [row])
    store.events.publish("finding.stored", sop_instance_uid=uid, patient_id=pid, task="b-lines")


def test_a_patients_row_equals_their_row_on_the_full_board_after_each_change(store):
    grow(store, ["A-1", "A-2", "A-3"], 2)
    rows = rows_for(store)
    assert {c["id"]: c for c in rows.board()["patients"]} == reference_board(store)

    uid = catalogue.instance_rows(store, patient_id="A-1")[0]["sop_instance_uid"]
    changes = [
        ("A-1", lambda: pstore.set_triage(store, "A-1", "red", by="t")),
        ("A-2", lambda: pstore.update_details(store, "A-2", name="Ada Example", age=40, sex="F", note="n", actor="t")),
        ("A-3", lambda: grow(store, ["A-3"], 1)),
        ("A-1", lambda: add_finding(store, uid, "A-1")),
        ("A-1", lambda: add_finding(store, uid, "A-1", assessable=False)),  # replaced: no longer counted
        ("A-1", lambda: care.add_intervention(store, "A-1", "tourniquet", "left thigh", by="t")),
        ("A-2", lambda: care.set_zone(store, "A-2", "Red area", ["Red area"], by="t")),
        ("A-2", lambda: care.set_disposition(store, "A-2", "left", destination="St X", vehicle="Amb 3", by="t")),
    ]
    for pid, change in changes:
        change()
        assert rows.row(pid) == reference_board(store)[pid], pid
    pstore.merge_patients(store, "A-3", "A-2")
    reference = reference_board(store)
    assert rows.row("A-3") is None and "A-3" not in reference  # merged away: off the board
    assert rows.row("A-2") == reference["A-2"] and reference["A-2"]["captures"] == 5
    board = rows.board()
    assert {c["id"]: c for c in board["patients"]} == reference
    assert board["counts"]["red"] == 1 and board["total"] == 2


def test_inside_a_category_the_longest_waiting_patient_comes_first(store):
    grow(store, ["W-1", "W-2", "W-3", "W-4"], 1)
    for pid in ("W-2", "W-1", "W-3"):  # W-2 waits longest, then W-1, then W-3
        pstore.set_triage(store, pid, "yellow", by="medic-a")
    pstore.set_triage(store, "W-4", "red", by="medic-b")
    # activity on W-3 and a re-triage of W-1 (yellow -> green -> yellow) do not move them up
    pstore.update_details(store, "W-3", note="new note", actor="medic-a")
    pstore.set_triage(store, "W-1", "green", by="medic-b")
    pstore.set_triage(store, "W-1", "yellow", by="medic-b", undo=True)
    order = [c["id"] for c in rows_for(store).board()["patients"]]
    assert order == ["W-4", "W-2", "W-1", "W-3"]
    w1 = rows_for(store).row("W-1")
    first, last = pstore.get_patient(store, "W-1")["triage_history"][0], pstore.get_patient(store, "W-1")["triage_history"][-1]
    assert w1["triaged_at"] == first["at"] and w1["retriaged_at"] == last["at"] > first["at"]
    assert w1["triaged_by"] == "medic-b" and last["undo"] is True
    assert rows_for(store).row("W-2")["retriaged_at"] is None


def test_an_event_names_the_patients_it_concerns(store):
    grow(store, ["C-1"], 1)
    uid = catalogue.instance_rows(store, patient_id="C-1")[0]["sop_instance_uid"]
    # a quarantine names only the capture: its patient is found through the catalogue
    assert concerned(store, Event("sync.quarantined", {"sop_instance_uid": uid, "row_id": "x"})) == ["C-1"]
    assert concerned(store, Event("patient.merged", {"patient_id": "C-2", "merged": "C-1"})) == ["C-2", "C-1"]
    assert concerned(store, Event("power.policy", {"patient_id": "C-1"})) == []


@pytest.mark.parametrize("n_patients", [20, 200])
def test_one_change_computes_and_reads_only_that_patient(tmp_path, n_patients):
    kit = open_kit(init_kit(tmp_path / "kit"))
    try:
        store = kit.store
        pids = [f"N-{i:04d}" for i in range(n_patients)]
        grow(store, pids, 1)
        rows = rows_for(store)
        assert rows.board()["total"] == n_patients
        computed, read = rows.stats.computed, rows.stats.rows_read
        pstore.set_triage(store, pids[7], "yellow")
        assert rows.row(pids[7])["triage"] == "yellow"
        assert rows.board()["counts"]["yellow"] == 1
        # one row computed, from the patient row and their one capture, whatever the board's size
        assert (rows.stats.computed - computed, rows.stats.rows_read - read) == (1, 2)
    finally:
        kit.close()


def test_bus_replays_what_a_reader_missed_or_says_it_cannot():
    bus = EventBus(history=4)
    assert bus.since(0) == [] and bus.since(1) is None  # nothing yet; a number it never gave
    for i in range(3):
        bus.publish("patient.updated", patient_id=f"P{i}")
    assert [e.data["patient_id"] for e in bus.since(1)] == ["P1", "P2"]
    for i in range(3, 6):
        bus.publish("patient.updated", patient_id=f"P{i}")
    assert bus.since(1) is None  # 2 left the history of 4
    assert [e.seq for e in bus.since(2)] == [3, 4, 5, 6]
    t0 = time.monotonic()
    assert bus.since(6, timeout=0.2) == [] and time.monotonic() - t0 >= 0.15


class SSE:
    """Reads an in-process SSE response message by message."""

    def __init__(self, response):
        self.response, self.chunks, self.buf = response, iter(response.response), ""

    def next(self) -> tuple[str | None, str, dict]:
        while True:
            while "\n\n" not in self.buf:
                chunk = next(self.chunks)
                self.buf += chunk.decode() if isinstance(chunk, bytes) else chunk
            msg, self.buf = self.buf.split("\n\n", 1)
            fields = dict(line.partition(": ")[::2] for line in msg.split("\n") if not line.startswith(":"))
            if "event" in fields:  # not the retry line or a comment
                return fields.get("id"), fields["event"], json.loads(fields.get("data") or "{}")

    def until(self, topic: str, **match) -> list[tuple[str | None, str, dict]]:
        seen = []
        for _ in range(500):
            seen.append(self.next())
            if seen[-1][1] == topic and all(seen[-1][2].get(k) == v for k, v in match.items()):
                return seen
        raise AssertionError(f"no {topic} in {seen}")

    def close(self):
        self.response.close()


def test_stream_sends_changed_cards_and_resumes_after_last_event_id(ui):  # noqa: F811
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    assert t.post("/api/v1/ui/patients", {"tag": "S-1", "triage": "green"}).status_code == 201
    board = t.get("/api/v1/ui/board").json
    epoch, seq = board["live_id"].split(".")
    assert epoch == kit.events.epoch and int(seq) == kit.events.last_seq

    stream = SSE(t.c.get("/api/v1/live?board=1&last=" + board["live_id"], base_url=BASE, buffered=False))
    _, topic, hello = stream.next()
    assert topic == "hello" and hello["resumed"] is True
    assert t.post("/api/v1/ui/patients/S-1/triage", {"triage": "red"}).status_code == 200
    seen = stream.until("patient.updated")
    cards = [(i, data) for i, (_, topic, data) in enumerate(seen) if topic == BOARD_ROW]
    assert cards and cards[-1][1]["id"] == "S-1" and cards[-1][1]["row"]["triage"] == "red"
    assert cards[-1][0] < len(seen) - 1  # the card comes before the event it follows from
    assert cards[-1][1]["row"] == t.get("/api/v1/ui/board").json["patients"][0]
    last_id = seen[-1][0]
    stream.close()

    # two changes while this tablet was away: replayed after Last-Event-ID, no refetch asked
    t.post("/api/v1/ui/patients/S-1/triage", {"triage": "yellow"})
    t.post("/api/v1/ui/patients/S-1/details", {"name": "Sam Example"})
    again = SSE(t.c.get("/api/v1/live?board=1", base_url=BASE, buffered=False, headers={"Last-Event-ID": last_id}))
    _, topic, hello = again.next()
    assert topic == "hello" and hello["resumed"] is True
    seen = again.until("patient.updated", patient_id="S-1")
    seen += again.until("patient.updated", patient_id="S-1")
    assert REFETCH not in [topic for _, topic, _ in seen]
    cards = [data["row"] for _, topic, data in seen if topic == BOARD_ROW]
    assert cards[-1]["name"] == "Sam Example" and cards[-1]["triage"] == "yellow"
    again.close()

    # an id from another run of the kit (or nonsense) cannot be resumed: the page refetches
    for bad in ("0123abcd.1", "x", kit.events.epoch + ".999999999"):
        s = SSE(t.c.get("/api/v1/live", base_url=BASE, buffered=False, headers={"Last-Event-ID": bad}))
        assert s.next()[1:] == ("hello", {"at": pytest.approx(time.time(), abs=60), "resumed": False})
        s.close()


def test_a_stream_far_behind_gets_one_refetch_not_a_flood(ui):  # noqa: F811
    from fieldkit.web.live import MAX_REPLAY
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    stream = SSE(t.c.get("/api/v1/live?board=1", base_url=BASE, buffered=False))
    assert stream.next()[1] == "hello"
    for i in range(MAX_REPLAY + 10):  # published while this tablet reads nothing
        kit.events.publish("patient.updated", patient_id=f"nobody-{i}")
    msg_id, topic, _ = stream.next()
    assert topic == REFETCH and msg_id == f"{kit.events.epoch}.{kit.events.last_seq}"
    kit.events.publish("patient.updated", patient_id="after")
    assert stream.until("patient.updated")[-1][2] == {"patient_id": "after"}
    stream.close()


def test_the_tablet_views_read_and_write_through_the_store_modules():
    from pathlib import Path
    web = Path(__file__).resolve().parent.parent / "fieldkit" / "web"
    for name in ("ui_api.py", "live.py", "start_rule.py", "clip_images.py", "clip_cache.py"):
        assert "db.table(" not in (web / name).read_text(), f"{name} reaches into the store's tables"


def test_any_last_event_id_is_resumed_or_refused_never_an_error():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fieldkit.web.live import _resume_point

    bus = EventBus(history=8)
    for i in range(12):
        bus.publish("patient.updated", patient_id=str(i))
    good = {f"{bus.epoch}.{n}": n for n in range(4, 13)}  # what the history still covers

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=40), st.sampled_from(sorted(good) + [f"{bus.epoch}.3", f"{bus.epoch}.13",
                                                                            f"{bus.epoch}.-1", f"{bus.epoch}.٣", f"{bus.epoch}.٤"])))
    def check(last_id):
        assert _resume_point(bus, last_id) == good.get(last_id.strip())

    check()
