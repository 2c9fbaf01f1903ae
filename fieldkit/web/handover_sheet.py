"""The per-patient handover sheet: what the board knows of one patient (tag, category,
times and who, place, disposition, interventions, notes, findings, history) for the team
that takes them over, as a print view (`/patients/<pid>/handover`) and as a PDF
(`POST /api/v1/export/patients/<pid>/handover.pdf`) that is also stored as a DICOM
Encapsulated PDF in the patient's study, so the sync sends it to the hospital with the
patient's captures. Both need the `export` permission and are audited.

The PDF is made in memory (fpdf2) and goes to the store's encrypted blobs only: no file
in clear, ever.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from flask import Blueprint, Response, render_template

from ..dicom import worklist
from ..dicom.document import encapsulated_pdf
from ..dicom.uids import derived_uid
from ..errors import NotFound
from ..security import roles as R
from ..store import care
from ..store import instances as catalogue
from ..store import patients as pstore
from ..store.board import findings_of
from ..store.board import rows_for as board_rows
from . import kit_of
from .handover import SYNC_TEXT, TRIAGE_LABELS, audit_export, due_text, finding_texts, for_page, when

bp = Blueprint("handover_sheet", __name__)

ROUTE_PERMISSIONS = {
    "handover_sheet.print_view": R.EXPORT,
    "handover_sheet.pdf": R.EXPORT,
}

TITLE = "Handover sheet"
# A font that writes every script a name may come in; the PDF core font (Latin-1 only) when
# the system has none, with what it cannot write shown as "?".
UNICODE_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)


def sheet(store, pid: str, retriage_minutes: dict, page: bool = False) -> dict:
    """Everything the sheet shows of patient `pid` (following merges); for the `page`, the
    kit's own words in the page's language (the PDF, the hospital's record, keeps English)."""
    tr, stamp = for_page(page)
    p = pstore.get_patient(store, pid)
    card = board_rows(store).row(p["id"]) if p else None
    if p is None or card is None:
        raise NotFound(f"no patient {pid[:64]} on the board")
    facts = [("Tag", card.get("tag") or card["id"]), ("Kit ID", card["id"]),
             ("Category", TRIAGE_LABELS.get(card["triage"], card["triage"])),
             ("Triaged", stamp(when(card.get("triaged_at")))),
             ("Last re-triage", stamp(when(card.get("retriaged_at")))),
             ("Triaged by", card.get("triaged_by") or ""),
             ("Re-triage due", tr(due_text(card, retriage_minutes, time.time(), stamp))),
             ("Name", card.get("display_name") or "Unidentified"),
             ("Age", tr(f"{p['age']} y") if p.get("age") not in (None, "") else ""), ("Sex", p.get("sex") or ""),
             ("Zone", tr(card.get("zone") or "")), ("Disposition", tr(card.get("disposition_text") or "")),
             ("Captures", str(card.get("captures") or 0)), ("Sync", SYNC_TEXT.get(card["sync"], card["sync"]))]
    history = [f"{stamp(when(h.get('at')))} {tr(TRIAGE_LABELS.get(h.get('triage'), h.get('triage')))}"
               + (f" {tr('(undo)')}" if h.get("undo") else "") + (f" {tr('by ' + h['by'])}" if h.get("by") else "")
               for h in p.get("triage_history") or [] if "assigned" not in h]
    return {"id": card["id"], "triage": card["triage"], "facts": [(k, v) for k, v in facts if v],
            "interventions": [f"{stamp(when(i.get('at')))} {tr(i.get('what'))}" + (f" ({i['by']})" if i.get("by") else "")
                              for i in p.get("interventions") or []],
            "notes": [f"{stamp(when(n.get('at')))} {n.get('by') or ''}: {n.get('text')}" for n in p.get("notes") or []],
            "findings": [tr(t) for f in findings_of(store, card["id"]) for t in finding_texts(f)],
            "history": history, "printed": stamp(when(time.time()))}


def sheet_pdf(s: dict) -> bytes:
    """The sheet as a one-or-more page A4 PDF, in memory."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_title(f"{TITLE} {s['id']}")
    pdf.set_creator("fieldkit")
    font = next((f for f in UNICODE_FONTS if Path(f).is_file()), None)
    if font:
        pdf.add_font("kit", "", font)
        family, clean = "kit", (lambda t: t)
    else:
        family, clean = "Helvetica", (lambda t: t.encode("latin-1", "replace").decode("latin-1"))
    pdf.add_page()
    width = pdf.epw
    pdf.set_font(family, size=18)
    pdf.multi_cell(width, 9, clean(f"{TITLE}: {s['facts'][0][1]}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=10)
    pdf.multi_cell(width, 6, clean(f"Printed {s['printed']}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font(family, size=12)
    for key, value in s["facts"]:
        pdf.multi_cell(width, 7, clean(f"{key}: {value}"), new_x="LMARGIN", new_y="NEXT")
    for head, key in (("Interventions", "interventions"), ("Findings", "findings"), ("Notes", "notes"),
                      ("Triage history", "history")):
        pdf.ln(2)
        pdf.set_font(family, size=14)
        pdf.multi_cell(width, 8, head, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, size=11)
        for line in s[key] or ["none"]:
            pdf.multi_cell(width, 6, clean(line), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def patient_study(store, p: dict, issuer: str, uid_root: str) -> str:
    """The study the sheet goes in: the patient's latest capture's, else their worklist encounter's."""
    rows = catalogue.instance_rows(store, patient_id=p["id"])
    if rows:
        return max(rows, key=lambda r: r.get("received_at") or 0)["study_instance_uid"]
    return worklist.encounter(issuer, p["id"], uid_root)[1]


def store_as_dicom(store, pid: str, pdf: bytes) -> str:
    """Keep `pdf` as an Encapsulated PDF in the patient's study (sent on by the sync, like a
    capture); its SOP Instance UID."""
    p = pstore.get_patient(store, pid)
    issuer, uid_root = store.config.issuer_of_patient_id, store.config["kit.uid_root"]
    study = patient_study(store, p, issuer, uid_root)
    ds = encapsulated_pdf(pdf, patient_id=p["id"], issuer=issuer, patient_name=worklist.person_name(p),
                          sex=str(p.get("sex") or ""), birth_date=str(p.get("birth_date") or ""),
                          study_uid=study, series_uid=derived_uid(uid_root, "handover-series", issuer, study),
                          title=f"{TITLE} {p.get('tag') or p['id']}"[:64], uid_root=uid_root)
    result = catalogue.put_instance(store, ds, "kit")
    return result["sop_instance_uid"]


def _minutes() -> dict:
    return care.retriage_minutes(kit_of().config["triage.retriage_minutes"])


@bp.get("/patients/<pid>/handover")
def print_view(pid):
    s = sheet(kit_of().store, pid, _minutes(), page=True)
    audit_export(s["id"], "print-patient", 1)
    return render_template("handover_sheet.html", page="handover", s=s, title=TITLE)


@bp.post("/api/v1/export/patients/<pid>/handover.pdf")
def pdf(pid):
    """Make the sheet's PDF, keep it in the patient's study for the hospital, and return it."""
    store = kit_of().store
    s = sheet(store, pid, _minutes())
    data = sheet_pdf(s)
    uid = store_as_dicom(store, s["id"], data)
    audit_export(s["id"], "pdf", 1, stored=uid)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"handover-{s['id']}-{time.strftime('%Y%m%d-%H%M')}.pdf")
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
                             "X-Fieldkit-Stored-Instance": uid})
