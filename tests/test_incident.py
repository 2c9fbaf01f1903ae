"""The incident summary: counts per category over time follow each patient's triage
history (a re-triage moves them from one column to the other at its time); per zone and per
destination count the patients there now; the CSV is formula-safe; the page and the CSV
need `export` (triage is refused) and each is audited."""

from __future__ import annotations

import csv
import io

from fieldkit.store import accounts, care
from fieldkit.store import patients as pstore
from fieldkit.web.incident import category_at, summary
from fixtures.board import grow
from test_ui_api import Tablet, ui  # noqa: F401  (ui: a fixture)

T0 = 1_700_000_000.0


def _row(pid, history, zone="", disposition=None):
    return {"id": pid, "origin": "person", "tag": pid, "triage": history[-1][1] if history else "none",
            "triage_history": [{"triage": c, "at": T0 + m * 60, "by": "t"} for m, c in history],
            "zone": zone, "disposition": disposition}


def test_counts_over_time_follow_the_history_and_zones_and_destinations_count_now():
    rows = [_row("A", [(0, "red")], zone="Red area"),
            _row("B", [(10, "yellow"), (40, "red")], zone="Red area",
                 disposition={"state": "left", "destination": "St X", "vehicle": "Amb 3"}),
            _row("C", [(20, "green")], zone="Green area", disposition={"state": "discharged"}),
            {"id": "U-1", "origin": "capture", "triage": "none", "triage_history": []}]  # a capture's record
    s = summary(rows, now=T0 + 60 * 60)
    assert s["total"] == 3
    at = {round((t - T0) / 60): counts for t, counts in s["timeline"]}
    assert at[0]["red"] == 1 and at[0]["yellow"] == 0
    assert at[60] == {"red": 2, "yellow": 0, "green": 1, "grey": 0, "black": 0}
    assert s["timeline"][-1][0] == T0 + 3600 and len(s["timeline"]) <= 49
    assert [sum(c.values()) for _, c in s["timeline"]] == sorted(sum(c.values()) for _, c in s["timeline"])
    assert s["zones"] == {"Green area": {"red": 0, "yellow": 0, "green": 1, "grey": 0, "black": 0},
                          "Red area": {"red": 2, "yellow": 0, "green": 0, "grey": 0, "black": 0}}
    assert s["destinations"] == {"St X": {"red": 1, "yellow": 0, "green": 0, "grey": 0, "black": 0}}
    assert s["dispositions"] == {"left": 1, "discharged": 1}
    assert category_at(rows[1], T0 + 39 * 60) == "yellow" and category_at(rows[1], T0 + 41 * 60) == "red"


def test_page_and_csv_need_export_are_audited_and_formula_safe(ui):
    kit, app = ui
    grow(kit.store, ["I-1", "I-2"], 1)
    pstore.set_triage(kit.store, "I-1", "red", by="t")
    pstore.set_triage(kit.store, "I-2", "yellow", by="t")
    care.set_disposition(kit.store, "I-1", "left", destination="=HYPERLINK(1)", vehicle="Amb 1", by="t")
    care.set_zone(kit.store, "I-2", "Yellow area", ["Yellow area"], by="t")
    tri = Tablet(app, "tri", "tri password 123")
    assert tri.get("/incident").status_code == 403
    assert tri.get("/api/v1/export/incident.csv").status_code == 403
    clin = Tablet(app, "clin", "clin password 123")
    page = clin.get("/incident")
    assert page.status_code == 200 and b"Yellow area" in page.data and b"=HYPERLINK(1)" in page.data
    r = clin.get("/api/v1/export/incident.csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.data.decode("utf-8-sig"))))
    dest = [x for x in rows if x["section"] == "transported to"]
    assert [(x["what"], x["Immediate"], x["total"]) for x in dest] == [("'=HYPERLINK(1)", "1", "1")]
    zone = [x for x in rows if x["section"] == "zone"]
    assert [(x["what"], x["Delayed"]) for x in zone] == [("Yellow area", "1")]
    last = [x for x in rows if x["section"] == "time"][-1]
    assert (last["Immediate"], last["Delayed"], last["total"]) == ("1", "1", "2")
    events = [e for e in accounts.audit_events(kit.store) if e["object"] == "incident"]
    assert [(e["actor"], e["detail"]["format"]) for e in events] == [("clin", "incident-page"), ("clin", "incident-csv")]
