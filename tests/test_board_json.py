"""The board as the tablets load it (`/api/v1/ui/board`) is joined from each card's JSON,
kept with the card until it changes: it says exactly what `board()` says after every
kind of change, re-encodes only the cards that changed, and drops patients who left."""

from __future__ import annotations

import json

from fieldkit.store import instances as catalogue
from fieldkit.store import patients as pstore
from fieldkit.store.board import rows_for
from fieldkit.web.ui_api import board_data
from fixtures.board import grow
from test_board import add_finding, reference_board
from test_ui_api import BASE, Tablet, ui  # noqa: F401  (ui: a fixture)


def _same(board_text: str, board: dict) -> dict:
    parsed = json.loads(board_text)
    assert abs(parsed.pop("at") - board.pop("at")) < 60
    assert parsed == board
    return parsed


def test_board_json_says_what_the_board_says_after_each_change(store):
    grow(store, ["B-1", "B-2", "B-3"], 2)
    rows = rows_for(store)
    _same(rows.board_json(), rows.board())
    first = dict(rows._encoded)

    pstore.set_triage(store, "B-1", "red", by="t")
    parsed = _same(rows.board_json(live_id="x.1"), rows.board() | {"live_id": "x.1"})
    assert {c["id"]: c for c in parsed["patients"]} == reference_board(store)
    assert [c["id"] for c in parsed["patients"]][0] == "B-1" and parsed["counts"]["red"] == 1
    # only the changed card was encoded again
    assert rows._encoded["B-2"][1] is first["B-2"][1] and rows._encoded["B-3"][1] is first["B-3"][1]
    assert rows._encoded["B-1"][1] is not first["B-1"][1]

    add_finding(store, catalogue.instance_rows(store, patient_id="B-2")[0]["sop_instance_uid"], "B-2")
    grow(store, ["B-3"], 1)
    parsed = _same(rows.board_json(), rows.board())
    assert {c["id"]: c for c in parsed["patients"]} == reference_board(store)

    pstore.merge_patients(store, "B-3", "B-2")
    parsed = _same(rows.board_json(), rows.board())
    assert [c["id"] for c in parsed["patients"]] == ["B-1", "B-2"] and "B-3" not in rows._encoded


def test_the_board_route_sends_the_joined_board_with_its_live_position(ui):  # noqa: F811
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    grow(kit.store, ["C-1", "C-2"], 1)
    r = t.get("/api/v1/ui/board")
    assert r.status_code == 200 and r.mimetype == "application/json"
    _same(r.get_data(as_text=True), board_data(kit.store))
    assert r.json["live_id"] == f"{kit.store.events.epoch}.{kit.store.events.last_seq}"
    assert [c["id"] for c in r.json["patients"]] == ["C-1", "C-2"]
