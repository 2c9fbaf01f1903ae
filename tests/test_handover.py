"""The handover export, in process (Flask test client on a real store):

- the CSV holds what the board shows, one row per patient in the board's order (tag,
  category, times, who, name, notes, findings, sync state);
- a cell a spreadsheet would read as a formula (= + - @) is neutralised, and reads back
  as the text that was typed;
- a role without `export` (triage) gets 403 for both the CSV and the print view, and
  nothing of a patient;
- each export is an audit event naming who, the format and how many patients;
- the print view lists the same patients, escaped.
"""

from __future__ import annotations

import csv
import io
import time

from fieldkit.store import accounts
from fieldkit.store import patients as pstore
from fieldkit.web.handover import safe_cell
from test_board import add_finding
from fixtures.board import grow
from fieldkit.store import instances as catalogue
from test_ui_api import Tablet, ui  # noqa: F401  (ui: a fixture)

CSV = "/api/v1/export/patients.csv"


def _rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def test_csv_holds_the_board_in_its_order_with_formulas_neutralised(ui):
    kit, app = ui
    store = kit.store
    grow(store, ["H-1", "H-2", "=T-9"], 1)
    pstore.set_triage(store, "H-2", "yellow", by="medic-a")
    pstore.set_triage(store, "H-1", "red", by="medic-a")
    pstore.set_triage(store, "H-1", "yellow", by="medic-b")
    pstore.set_triage(store, "H-1", "red", by="medic-b", undo=True)
    pstore.update_details(store, "H-1", name="+Ada Example", note="+tourniquet left leg", actor="medic-a")
    pstore.update_details(store, "H-2", name="@SUM(A1)", note="-1 litre", actor="medic-a")
    uid = catalogue.instance_rows(store, patient_id="H-1")[0]["sop_instance_uid"]
    add_finding(store, uid, "H-1")
    clin = Tablet(app, "clin", "clin password 123")

    r = clin.get(CSV)
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"] and r.headers["Cache-Control"] == "no-store"
    rows = _rows(r.data)
    assert [row["tag"] for row in rows] == ["H-1", "H-2", "'=T-9"]  # Immediate first, untriaged last
    h1, h2, _ = rows
    assert (h1["category"], h1["triaged by"], h2["category"]) == ("Immediate", "medic-b", "Delayed")
    assert h1["triaged"] and h1["last re-triage"] and h2["last re-triage"] == ""
    assert h1["sync"] == "to send" and h1["findings"].startswith("b-lines")
    # formulas read back as text: a leading quote, never the bare formula
    assert h1["name"] == "'+Ada Example" and h2["name"] == "'@SUM(A1)"
    assert h1["notes"].endswith("+tourniquet left leg") and h2["notes"].endswith("-1 litre")  # after their time
    assert rows[-1]["tag"] == "'=T-9" and rows[-1]["category"] == "Not triaged"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value


def test_safe_cell_neutralises_every_formula_start():
    for text in ("=1+1", "+1", "-1", "@A1", "\t=1", "\r=1"):
        assert safe_cell(text) == "'" + text
    for text in ("T-1", "Ada", "", "1-2", "a=b"):
        assert safe_cell(text) == text
    assert safe_cell(None) == ""


def test_a_role_without_export_is_refused_and_each_export_is_audited(ui):
    kit, app = ui
    grow(kit.store, ["R-1"], 1)
    pstore.update_details(kit.store, "R-1", name="Secret Person", actor="t")
    tri = Tablet(app, "tri", "tri password 123")
    for path in (CSV, "/handover"):
        r = tri.get(path)
        assert r.status_code == 403, path
        assert b"Secret" not in r.data and b"R-1" not in r.data

    before = time.time()
    clin = Tablet(app, "clin", "clin password 123")
    assert clin.get(CSV).status_code == 200
    page = clin.get("/handover")
    assert page.status_code == 200 and b"R-1" in page.data and b"Secret Person" in page.data
    exports = [e for e in accounts.audit_events(kit.store) if e["action"] == "patients.export" and e["at"] >= before - 1]
    assert [(e["actor"], e["role"], e["detail"]["format"], e["detail"]["patients"]) for e in exports] == [
        ("clin", "clinician", "csv", 1), ("clin", "clinician", "print", 1)]
    refused = [e for e in accounts.audit_events(kit.store) if e["actor"] == "tri" and e.get("outcome") != "ok"]
    assert refused  # the refusals are in the trail too


def test_the_print_view_escapes_what_people_typed(ui):
    kit, app = ui
    grow(kit.store, ["E-1"], 1)
    pstore.update_details(kit.store, "E-1", name="<script>alert(1)</script>", actor="t")
    page = Tablet(app, "clin", "clin password 123").get("/handover")
    assert page.status_code == 200
    assert b"<script>alert(1)" not in page.data and b"&lt;script&gt;" in page.data


def test_lung_sliding_reaches_the_handover(ui):
    """Absent lung sliding (a possible pneumothorax) is handed over in words, after the lung
    finding it belongs to; a single frame's "not assessable" sliding adds nothing."""
    from fieldkit.inference import findings as inference_findings
    kit, app = ui
    store = kit.store
    grow(store, ["S-1", "S-2"], 1)
    for pid, sliding in (("S-1", {"status": "absent", "reason_code": ""}),
                         ("S-2", {"status": "not assessable", "reason_code": "single_frame"})):
        uid = catalogue.instance_rows(store, patient_id=pid)[0]["sop_instance_uid"]
        inference_findings.replace(store, uid, [{
            "id": f"f-{pid}", "sop_instance_uid": uid, "patient_id": pid, "model": "lung-test", "model_sha256": "0" * 64,
            "model_version": "1", "task": "lung", "assessable": True, "reason": "", "overlay": None,
            "result": {"pattern": "A-line pattern", "max_b_lines": 0, "sliding": sliding}, "created": time.time()}])
    rows = {row["tag"]: row for row in _rows(Tablet(app, "clin", "clin password 123").get(CSV).data)}
    assert rows["S-1"]["findings"] == ("lung: A-line pattern, up to 0 B-lines; "
                                       "lung sliding: absent (pneumothorax not excluded)")
    assert rows["S-2"]["findings"] == "lung: A-line pattern, up to 0 B-lines"
