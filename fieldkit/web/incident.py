"""The incident summary for incident command: patients per category over time, per zone,
and who left for which destination — a page (`/incident`) and a CSV
(`/api/v1/export/incident.csv`), both behind `export` and audited.

Made from the patient rows (their triage history, zone and disposition) on each request;
an incident has hundreds of patients, not millions. Counts are formula-safe in the CSV
like the handover's (zone and destination names are typed by people).
"""

from __future__ import annotations

import csv
import io
import math
import time

from flask import Blueprint, Response, render_template

from ..security import roles as R
from ..store import patients as pstore
from . import kit_of
from .handover import TRIAGE_LABELS, audit_export, safe_cell, when
from .messages import translate

bp = Blueprint("incident", __name__)

ROUTE_PERMISSIONS = {
    "incident.page": R.EXPORT,
    "incident.export_csv": R.EXPORT,
}

CATEGORIES = ("red", "yellow", "green", "grey", "black")  # the board's order of urgency
MAX_STEPS = 48       # at most this many rows of the timeline...
STEP_ROUND_S = 300   # ...each a whole number of 5 minutes


def category_at(row: dict, t: float) -> str:
    """The category a patient had at time `t` ("none": not triaged yet, or not yet seen)."""
    category = "none"
    for h in row.get("triage_history") or []:
        if "assigned" in h or (h.get("at") or 0) > t:
            continue
        category = h.get("triage") or "none"
    return category


def summary(patients: list[dict], now: float | None = None) -> dict:
    """{"timeline": [(t, {cat: n})], "zones": {zone: {cat: n}}, "destinations": {dest: {cat: n}},
    "dispositions": {state: n}, "total": n} over the live patients a person registered or triaged."""
    now = now if now is not None else time.time()
    rows = [p for p in patients if not p.get("merged_into") and not pstore.is_unassigned(p)]
    starts = [h["at"] for p in rows for h in p.get("triage_history") or [] if h.get("at") and "assigned" not in h]
    timeline = []
    if starts:
        first = min(starts)
        step = max(STEP_ROUND_S, math.ceil((now - first) / MAX_STEPS / STEP_ROUND_S) * STEP_ROUND_S)
        t = first
        while True:
            counts = {c: 0 for c in CATEGORIES}
            for p in rows:
                cat = category_at(p, t)
                if cat in counts:
                    counts[cat] += 1
            timeline.append((t, counts))
            if t >= now:
                break
            t = min(t + step, now)
    zones: dict[str, dict] = {}
    destinations: dict[str, dict] = {}
    dispositions: dict[str, int] = {}
    for p in rows:
        cat = p.get("triage") if p.get("triage") in CATEGORIES else None
        disp = p.get("disposition") or {}
        if p.get("zone") and cat:
            zones.setdefault(p["zone"], {c: 0 for c in CATEGORIES})[cat] += 1
        if disp.get("state"):
            dispositions[disp["state"]] = dispositions.get(disp["state"], 0) + 1
        if disp.get("state") == "left" and cat:
            destinations.setdefault(disp.get("destination") or "?", {c: 0 for c in CATEGORIES})[cat] += 1
    return {"timeline": timeline, "zones": dict(sorted(zones.items())),
            "destinations": dict(sorted(destinations.items())), "dispositions": dispositions,
            "total": len(rows), "at": now}


def summary_csv(s: dict) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "what"] + [TRIAGE_LABELS[c] for c in CATEGORIES] + ["total"])
    for section, items in (("time", [(when(t), c) for t, c in s["timeline"]]), ("zone", s["zones"].items()),
                           ("transported to", s["destinations"].items())):
        for key, counts in items:
            w.writerow([section, safe_cell(key)] + [counts[c] for c in CATEGORIES] + [sum(counts.values())])
    return buf.getvalue().encode("utf-8-sig")


def _summary() -> dict:
    return summary(pstore.list_patients(kit_of().store))


@bp.get("/incident")
def page():
    s = _summary()
    audit_export("incident", "incident-page", s["total"])
    return render_template("incident.html", page="incident", s=s, categories=CATEGORIES, labels=TRIAGE_LABELS,
                           when=when, kit_words=translate)  # built-in zone names in the page's language


@bp.get("/api/v1/export/incident.csv")
def export_csv():
    s = _summary()
    audit_export("incident", "incident-csv", s["total"])
    name = time.strftime("incident-%Y%m%d-%H%M.csv")
    return Response(summary_csv(s), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})
