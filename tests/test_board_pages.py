"""The board as the tablets load it (`/api/v1/ui/board`): a page at a time, in board order.

- Walking the pages by their `next` cursor gives exactly the board computed from every
  table, in order, with the whole board's counts, on a randomised store after triage
  changes, merges and their undo, and after the store is opened again; a category filter
  and a search by tag, ID or name page the same way as a plain scan of the board.
- A page re-encodes only the cards that changed.
- A cursor, limit or category that is not one the kit gave gets one clear 400.
"""

from __future__ import annotations

import base64
import json
import random

import pytest

from fieldkit.errors import BadInput
from fieldkit.records import TRIAGE_CATEGORIES
from fieldkit.kit import open_kit
from fieldkit.store import instances as catalogue
from fieldkit.store import patients as pstore
from fieldkit.store.board import decode_cursor, encode_cursor, rows_for, sort_key
from fixtures.board import grow, tiny_capture
from kitproc import init_kit
from test_board import SSE, add_finding, reference_board
from test_ui_api import BASE, Tablet, ui  # noqa: F401  (ui: a fixture)


def in_order(cards: dict[str, dict]) -> list[dict]:
    """The board's cards (not the tray's holders) in board order, from a plain sort."""
    return sorted((c for c in cards.values() if not c["unassigned"]), key=lambda c: (sort_key(c), c["id"]))


def walk(rows, limit: int, **kw) -> list[dict]:
    """Every page from the first by its `next` cursor; checks each page's `more`."""
    out, after = [], None
    for _ in range(1000):
        page = json.loads(rows.page_json(limit, after=after, **kw))
        cards = [c for c in page["patients"] if not c["unassigned"]]
        assert len(cards) <= limit
        out += cards
        if page["next"] is None:
            assert page["more"] == 0
            return out
        assert page["more"] > 0 and len(cards) == limit
        after = page["next"]
    raise AssertionError("the pages never ended")


def check(store, rows, rng: random.Random) -> None:
    reference = reference_board(store)
    expected = in_order(reference)
    limit = rng.choice([1, 3, 7, 50])
    assert [c["id"] for c in walk(rows, limit)] == [c["id"] for c in expected]
    assert walk(rows, limit) == expected
    first = json.loads(rows.page_json(limit))
    counts = {cat: sum(1 for c in expected if c["triage"] == cat) for cat in TRIAGE_CATEGORIES}
    assert first["counts"] == counts and first["total"] == len(reference)
    assert first["unassigned"] == sum(len(c["tray"]) for c in reference.values())
    for cat in TRIAGE_CATEGORIES:
        assert walk(rows, limit, triage=cat) == [c for c in expected if c["triage"] == cat]
    for q in ("r-1", "R-00", "ada", "nobody"):
        hits = [c for c in expected if any(q.lower() in str(v).lower() for v in
                                           (c["id"], c["tag"], c["name"], c["display_name"], *c["tags"]) if v)]
        assert walk(rows, limit, q=q) == hits, q


def test_pages_equal_a_plain_scan_after_changes_merges_undo_and_reopen(tmp_path):
    rng = random.Random(17)
    data_dir = init_kit(tmp_path / "kit")
    kit = open_kit(data_dir)
    try:
        store = kit.store
        pids = [f"R-{i:03d}" for i in range(40)]
        grow(store, pids, 1)
        rows = rows_for(store)
        check(store, rows, rng)  # built once, all untriaged
        for i, pid in enumerate(rng.sample(pids, 30)):
            pstore.set_triage(store, pid, rng.choice(TRIAGE_CATEGORIES[:5]), by="t")
        pstore.update_details(store, pids[3], name="Ada Example", actor="t")
        add_finding(store, catalogue.instance_rows(store, patient_id=pids[5])[0]["sop_instance_uid"], pids[5])
        # a capture no patient claims: its record waits in the tray, not on the board
        b = catalogue.Batch(store, "stow")
        b.add(tiny_capture("PROBE-ONLY-1", "2.25.991"))
        b.commit()
        check(store, rows, rng)
        pstore.merge_patients(store, pids[10], pids[11], by="t")
        pstore.merge_patients(store, pids[12], pids[13], by="t", undo_seconds=300)
        check(store, rows, rng)
        pstore.unmerge(store, pids[12], by="t")
        pstore.set_triage(store, pids[0], "red", by="t")
        pstore.set_triage(store, pids[0], "green", by="t", undo=True)
        check(store, rows, rng)
        assert sum(1 for c in reference_board(store).values() if c["unassigned"]) == 1
    finally:
        kit.close()
    kit = open_kit(data_dir)  # opened again: the board is built from the journal
    try:
        check(kit.store, rows_for(kit.store), rng)
    finally:
        kit.close()


def test_a_page_encodes_again_only_the_cards_that_changed(store):
    grow(store, ["B-1", "B-2", "B-3"], 1)
    rows = rows_for(store)
    rows.page_json(10)
    first = dict(rows._json)
    pstore.set_triage(store, "B-1", "red", by="t")
    page = json.loads(rows.page_json(10))
    assert [c["id"] for c in page["patients"]][0] == "B-1" and page["counts"]["red"] == 1
    assert rows._json["B-2"] is first["B-2"] and rows._json["B-3"] is first["B-3"]
    assert rows._json["B-1"] is not first["B-1"]
    pstore.merge_patients(store, "B-3", "B-2")
    page = json.loads(rows.page_json(10))
    assert [c["id"] for c in page["patients"]] == ["B-1", "B-2"] and "B-3" not in rows._json


def _cursor(raw) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()


@pytest.mark.parametrize("text", ["", "x", "!!!!", _cursor(["purple", 1.0, "P"]), _cursor(["red", "1", "P"]),
                                  _cursor(["red", 1.0]), _cursor(["red", True, "P"]), _cursor(["red", 1.0, 5]),
                                  _cursor({"a": 1}), "A" * 401, base64.urlsafe_b64encode(b"\xff\xfe").decode()])
def test_a_cursor_the_kit_did_not_give_is_refused(text):
    with pytest.raises(BadInput):
        decode_cursor(text)


def test_random_cursors_are_refused_or_read_never_crash():
    rng = random.Random(5)
    for _ in range(2000):
        text = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
                       for _ in range(rng.randint(0, 60)))
        try:
            category, place = decode_cursor(text)
        except BadInput:
            continue
        assert category in TRIAGE_CATEGORIES and isinstance(place[1], str)


def test_the_route_pages_filters_and_searches_and_refuses_bad_arguments(ui):  # noqa: F811
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    for i in range(5):
        assert t.post("/api/v1/ui/patients", {"tag": f"P-{i}", "triage": "red" if i % 2 else "green"}).status_code == 201
    r = t.get("/api/v1/ui/board?limit=2")
    assert r.status_code == 200 and r.mimetype == "application/json"
    page = r.json
    assert [c["id"] for c in page["patients"]] == ["P-1", "P-3"] and page["more"] == 3
    assert page["counts"]["red"] == 2 and page["counts"]["green"] == 3 and page["total"] == 5
    assert page["live_id"] == f"{kit.store.events.epoch}.{kit.store.events.last_seq}"
    nxt = t.get("/api/v1/ui/board?limit=2&after=" + page["next"]).json
    assert [c["id"] for c in nxt["patients"]] == ["P-0", "P-2"] and nxt["more"] == 1
    assert [c["id"] for c in t.get("/api/v1/ui/board?triage=green").json["patients"]] == ["P-0", "P-2", "P-4"]
    found = t.get("/api/v1/ui/board?q=p-4").json
    assert [c["id"] for c in found["patients"]] == ["P-4"] and found["counts"]["green"] == 3
    for bad in ("limit=0", "limit=1001", "limit=x", "triage=purple", "after=nonsense", "q=" + "x" * 201):
        r = t.get("/api/v1/ui/board?" + bad)
        assert r.status_code == 400 and r.json["error"], bad
        assert t.get("/api/v1/ui/board").json["total"] == 5  # nothing changed


def test_each_live_card_comes_with_the_whole_boards_counts(ui):  # noqa: F811
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    assert t.post("/api/v1/ui/patients", {"tag": "L-1", "triage": "green"}).status_code == 201
    board = t.get("/api/v1/ui/board").json
    stream = SSE(t.c.get("/api/v1/live?board=1&last=" + board["live_id"], base_url=BASE, buffered=False))
    try:
        assert stream.next()[1] == "hello"
        assert t.post("/api/v1/ui/patients/L-1/triage", {"triage": "red"}).status_code == 200
        seen = stream.until("board.row", id="L-1")
        card = seen[-1][2]
        assert card["row"]["triage"] == "red"
        assert card["counts"]["red"] == 1 and card["counts"]["green"] == 0 and card["total"] == 1
    finally:
        stream.close()


def test_the_first_page_carries_the_oldest_tray_captures_only(store):
    grow(store, ["T-1"], 1)
    for seed in range(3):  # three captures no patient claims, one record holds them
        b = catalogue.Batch(store, "stow")
        b.add(tiny_capture("PROBE-ONLY-2", "2.25.992", seed=seed))
        b.commit()
    rows = rows_for(store)
    holder = next(c for c in reference_board(store).values() if c["unassigned"])
    oldest = [i["uid"] for i in holder["tray"]][:2]
    page = json.loads(rows.page_json(10, tray_max=2))
    held = [c for c in page["patients"] if c["unassigned"]]
    assert [c["id"] for c in held] == [holder["id"]] and [i["uid"] for i in held[0]["tray"]] == oldest
    assert page["unassigned"] == 3 and [c["id"] for c in page["patients"] if not c["unassigned"]] == ["T-1"]
    nxt = json.loads(rows.page_json(10, after=encode_cursor(rows.row("T-1"))))
    assert nxt["patients"] == []  # later pages carry no tray


def test_a_holder_card_carries_its_oldest_tray_captures_and_counts_the_rest(store, monkeypatch):
    """A probe sending under one unknown ID all day: the record's card (sent to every tablet on
    every event about it) carries the oldest TRAY_MAX captures, not all of them; the counts
    stay whole."""
    from fieldkit.store import board
    monkeypatch.setattr(board, "TRAY_MAX", 3)
    grow(store, ["T-1"], 1)
    b = catalogue.Batch(store, "stow")
    for seed in range(5):
        b.add(tiny_capture("PROBE-ALL-DAY", "2.25.993", seed=seed))
    b.commit()
    rows = rows_for(store)
    holder = next(c for c in reference_board(store).values() if c["unassigned"])
    card = rows.row(holder["id"])
    everything = sorted(catalogue.rows_as_held(store, holder["id"]), key=lambda r: r["received_at"])
    assert [i["uid"] for i in card["tray"]] == [r["sop_instance_uid"] for r in everything[:3]]
    assert card["tray_total"] == 5 and card["captures"] == 5
    assert rows.summary()["unassigned"] == 5
    page = json.loads(rows.page_json(10, tray_max=100))
    assert page["unassigned"] == 5
    assert [len(c["tray"]) for c in page["patients"] if c["unassigned"]] == [3]


def test_the_board_is_built_once_when_serve_starts(tmp_path):
    from fieldkit.kit import SERVICES
    from fieldkit.store import board
    assert ("board", "fieldkit.store.board:start") in SERVICES
    kit = open_kit(init_kit(tmp_path / "kit"))
    try:
        grow(kit.store, ["S-1", "S-2"], 1)
        warming = board.start(kit)
        warming.thread.join(60)
        rows = rows_for(kit.store)
        assert not warming.thread.is_alive() and (rows.stats.cleared, rows.stats.computed) == (1, 2)
        assert [c["id"] for c in json.loads(rows.page_json(10))["patients"]] == ["S-1", "S-2"]
        assert (rows.stats.cleared, rows.stats.computed) == (1, 2)  # the page computed nothing again
        warming.stop()
    finally:
        kit.close()
