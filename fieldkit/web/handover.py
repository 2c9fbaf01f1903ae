"""Handover: the board as a list for the transport team or incident command, as a CSV
(`/api/v1/export/patients.csv`) and as a printable page (`/handover`). Both need the
`export` permission and each one is an audited export event.

One row per patient on the board, most urgent first and, inside a category, longest
waiting first (the board's own order). The CSV is built in memory (patients' data never
goes to a file in clear) and every cell a spreadsheet could read as a formula is
neutralised.
"""

from __future__ import annotations

import csv
import io
import time

from flask import Blueprint, Response, render_template

from ..security import roles as R
from ..store import accounts, care
from ..store import patients as pstore
from ..store.board import findings_of
from ..store.board import rows_for as board_rows
from . import kit_of
from .messages import translate

bp = Blueprint("handover", __name__)

ROUTE_PERMISSIONS = {
    "handover.export_csv": R.EXPORT,
    "handover.print_view": R.EXPORT,
}

COLUMNS = ("tag", "category", "triaged", "last re-triage", "triaged by", "re-triage due", "name", "zone",
           "disposition", "interventions", "notes", "findings", "sync")
# The board's words (static/js/common.js TRIAGE_LABEL)
TRIAGE_LABELS = {"red": "Immediate", "yellow": "Delayed", "green": "Minor", "black": "Deceased",
                 "grey": "Expectant", "none": "Not triaged"}
SYNC_TEXT = {"none": "no captures", "queued": "to send", "sending": "sending", "confirmed": "at hospital",
             "quarantined": "refused"}
# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def when(at) -> str:
    """A kit timestamp as local time with its offset (what a reader on the kit's site expects)."""
    return time.strftime("%Y-%m-%d %H:%M %z", time.localtime(float(at))) if at else ""


def finding_text(f: dict) -> str:
    r = f.get("result") or {}
    if not f.get("assessable"):
        return f"{f.get('task')}: not assessable"
    if f.get("task") == "lung":
        confluent = ", confluent" if r.get("confluent") else ""
        return f"lung: {r.get('pattern') or 'assessed'}, up to {r.get('max_b_lines')} B-lines{confluent}"
    if f.get("task") == "fast":
        return "FAST: free fluid" if r.get("fluid_present") else "FAST: no free fluid"
    return str(f.get("task"))


SLIDING_TEXT = {"present": "lung sliding: present", "absent": "lung sliding: absent (pneumothorax not excluded)",
                "partial": "lung sliding: in part of the view only (pneumothorax not excluded)"}


def finding_texts(f: dict) -> list[str]:
    """finding_text, and for a lung clip whose sliding was judged (or seen in part of the
    view only) a second line saying so: absent sliding must reach the next team."""
    s = ((f.get("result") or {}).get("sliding") or {}) if f.get("assessable") and f.get("task") == "lung" else {}
    said = SLIDING_TEXT.get("partial" if s.get("reason_code") == "partial" else s.get("status"))
    return [finding_text(f)] + ([said] if said else [])


def ltr(text: str) -> str:
    """`text` (a time) kept left to right inside a line of a right-to-left page: Unicode
    isolates, so "2026-12-05 07:10 +0000" is not reordered around the Arabic words."""
    return f"\u2066{text}\u2069" if text else text


def for_page(page: bool):
    """(words, times) for a page: the kit's own words in the page's language and times kept
    left to right; for a file (CSV, the hospital's PDF): English words and plain times."""
    return (translate, ltr) if page else (str, str)


def _timed(items, key: str, tr=str, stamp=str) -> str:
    return "; ".join(f"{stamp(when(i.get('at')))} {tr(i.get(key) or '')}".strip()
                     for i in items or [] if isinstance(i, dict))


def due_text(card: dict, minutes: dict, now: float, stamp=str) -> str:
    """When the patient is due to be re-triaged, and whether that time has passed."""
    due = care.retriage_due_at(card, minutes)
    if due is None:
        return ""
    return ("OVERDUE since " if now > due else "") + stamp(when(due))


def handover_rows(store, retriage_minutes: dict | None = None, page: bool = False) -> list[dict]:
    """What the handover shows of every patient on the board, in the board's order; for the
    `page`, the kit's own words (zone, disposition, interventions, findings) in the page's
    language (the CSV keeps them in English: see README "Handover")."""
    tr, stamp = for_page(page)
    out = []
    now = time.time()
    for card in board_rows(store).board()["patients"]:
        if card["unassigned"]:
            continue  # captures waiting for their patient, no patient to hand over
        p = pstore.get_patient(store, card["id"]) or {}
        out.append({
            "tag": card.get("tag") or card["id"], "category": TRIAGE_LABELS.get(card["triage"], card["triage"]),
            "triage": card["triage"], "triaged": stamp(when(card.get("triaged_at"))),
            "last re-triage": stamp(when(card.get("retriaged_at"))), "triaged by": card.get("triaged_by") or "",
            "name": card.get("display_name") or "",
            "re-triage due": tr(due_text(card, retriage_minutes or {}, now, stamp)),
            "zone": tr(card.get("zone") or ""), "disposition": tr(card.get("disposition_text") or ""),
            "interventions": _timed(p.get("interventions"), "what", tr, stamp),
            "notes": _timed(p.get("notes"), "text", stamp=stamp),
            "findings": "; ".join(tr(t) for f in findings_of(store, card["id"]) for t in finding_texts(f)),
            "sync": SYNC_TEXT.get(card["sync"], card["sync"]),
        })
    return out


def patients_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for row in rows:
        w.writerow([safe_cell(row[c]) for c in COLUMNS])
    return buf.getvalue().encode("utf-8-sig")  # the BOM makes spreadsheets read it as UTF-8


def _minutes() -> dict:
    return care.retriage_minutes(kit_of().config["triage.retriage_minutes"])


def audit_export(what: str, fmt: str, n: int, **detail) -> None:
    """One `patients.export` audit event per export (board, incident summary, one patient's sheet)."""
    from .sessions import current_principal
    p = current_principal()
    accounts.audit_append(kit_of().store, actor=p.actor if p else "", role=p.role if p else "",
                          action="patients.export", object=what, detail={"format": fmt, "patients": n, **detail})


@bp.get("/api/v1/export/patients.csv")
def export_csv():
    rows = handover_rows(kit_of().store, _minutes())
    audit_export("board", "csv", len(rows))
    name = time.strftime("handover-%Y%m%d-%H%M.csv")
    return Response(patients_csv(rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/handover")
def print_view():
    rows = handover_rows(kit_of().store, _minutes(), page=True)
    audit_export("board", "print", len(rows))
    return render_template("handover.html", page="handover", rows=rows, columns=COLUMNS,
                           printed_at=time.time())
