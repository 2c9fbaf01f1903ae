"""Time, place and movement of a patient on the triage board (layer 2): interventions with
their times, the zone or collection point the patient is in, and the disposition (in
treatment, awaiting transport, left with destination and vehicle, discharged, deceased).

Kept on the patient row (through `patients.resolve_row` / `update_fields`):
  "interventions": [{"kind", "what", "at", "by", "recorded_at"}]   (what: the words shown)
  "zone": "Red area"
  "disposition": {"state", "destination", "vehicle", "at", "by"}
  "movement_history": [{"zone"|"disposition": ..., "at", "by"}]    (every change, who and when)
Each write publishes PATIENT_UPDATED after it commits, so the board card and every open
tablet follow.
"""

from __future__ import annotations

import math
import time

from ..errors import BadInput, NotFound
from ..events import PATIENT_UPDATED
from . import patients as pstore

INTERVENTIONS = {"tourniquet": "Tourniquet", "airway": "Airway", "fluids": "Fluids", "analgesia": "Analgesia",
                 "other": ""}
DISPOSITIONS = {"in_treatment": "in treatment", "awaiting_transport": "awaiting transport", "left": "left",
                "discharged": "discharged", "deceased": "deceased"}
# A patient who has left the scene is not due for re-triage here any more
DONE_STATES = ("left", "discharged", "deceased")
MAX_TEXT = 200
PAST_LIMIT_S = 24 * 3600   # an intervention's time may be given up to a day back...
FUTURE_SLACK_S = 120       # ...and never ahead of the kit's clock (beyond a tablet's skew)


def _clean(value, what: str, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{what} must be text")
    value = value.strip()
    if len(value) > limit:
        raise BadInput(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise BadInput(f"{what} contains control characters")
    return value


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def _change(store, pid: str, make) -> dict:
    """Apply `make(row, now) -> fields` to the live row of `pid` in one write; publish after."""
    def fn(db):
        row = pstore.resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid[:64]}")
        now = time.time()
        fields = make(row, now) | {"updated": now}
        pstore.update_fields(db, row["id"], fields)
        row.update(fields)
        return row

    row = store.write(fn)
    store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return row


def add_intervention(store, pid: str, kind: str, text: str = "", *, at: float | None = None,
                     by: str = "") -> dict:
    """Record an intervention (tourniquet, airway, fluids, analgesia, or other with its words)
    done at `at` (default now); returns the row."""
    if not isinstance(kind, str) or kind not in INTERVENTIONS:
        raise BadInput(f"intervention must be one of {', '.join(INTERVENTIONS)}")
    text = _clean(text, "the intervention's text")
    if kind == "other" and not text:
        raise BadInput("say what was done (free text) for another intervention")
    what = ": ".join(t for t in (INTERVENTIONS[kind], text) if t)
    if at is not None and not _finite_number(at):
        raise BadInput("the intervention's time must be a timestamp in seconds")

    def make(row, now):
        when = float(at) if at is not None else now
        if not now - PAST_LIMIT_S <= when <= now + FUTURE_SLACK_S:
            raise BadInput("the intervention's time must be within the last 24 hours and not in the future")
        entry = {"kind": kind, "what": what, "at": when, "by": by, "recorded_at": now}
        items = sorted(list(row.get("interventions") or []) + [entry], key=lambda i: i.get("at") or 0)
        return {"interventions": items}
    return _change(store, pid, make)


def set_zone(store, pid: str, zone: str, zones: list[str], *, by: str = "") -> dict:
    """Place the patient in `zone`, one of the kit's `zones` ("" takes them out of every zone)."""
    if zone != "" and zone not in zones:
        raise BadInput(f"zone must be one of: {', '.join(zones)}")

    def make(row, now):
        history = list(row.get("movement_history") or []) + [{"zone": zone, "at": now, "by": by}]
        return {"zone": zone, "movement_history": history}
    return _change(store, pid, make)


def set_disposition(store, pid: str, state: str, *, destination: str = "", vehicle: str = "",
                    by: str = "") -> dict:
    """Where the patient is in their way off the scene; leaving needs a destination."""
    if not isinstance(state, str) or state not in DISPOSITIONS:
        raise BadInput(f"disposition must be one of {', '.join(DISPOSITIONS)}")
    destination, vehicle = _clean(destination, "the destination"), _clean(vehicle, "the vehicle")
    if state == "left" and not destination:
        raise BadInput("say where the patient went (destination) when they leave")
    if state != "left" and (destination or vehicle):
        destination, vehicle = "", ""  # only a departure has them

    def make(row, now):
        disp = {"state": state, "destination": destination, "vehicle": vehicle, "at": now, "by": by}
        history = list(row.get("movement_history") or []) + [{"disposition": disp}]
        return {"disposition": disp, "movement_history": history}
    return _change(store, pid, make)


def disposition_text(disp: dict | None) -> str:
    """'left by Ambulance 3 to St X' — the words the board, the handover and the PDF use."""
    if not disp or not disp.get("state"):
        return ""
    if disp["state"] == "left":
        return "left" + (f" by {disp['vehicle']}" if disp.get("vehicle") else "") + f" to {disp.get('destination')}"
    return DISPOSITIONS.get(disp["state"], disp["state"])


def card_fields(row: dict) -> dict:
    """What a board card shows of place and movement."""
    return {"zone": row.get("zone") or "", "disposition": row.get("disposition") or None,
            "disposition_text": disposition_text(row.get("disposition")),
            "interventions": [{k: i.get(k) for k in ("kind", "what", "at")} for i in row.get("interventions") or []]}


def retriage_minutes(values: list[str]) -> dict[str, float]:
    """The setting triage.retriage_minutes ("red=15", ...) as {category: minutes}."""
    out = {}
    for item in values:
        cat, _, minutes = item.partition("=")
        out[cat] = float(minutes)
    return out


def retriage_due_at(card: dict, minutes: dict[str, float]) -> float | None:
    """When the patient of this card (or row with triage times) is due to be re-triaged;
    None when their category is not timed or they have left the scene."""
    last = card.get("retriaged_at") or card.get("triaged_at")
    if not last or card.get("triage") not in minutes:
        return None
    if (card.get("disposition") or {}).get("state") in DONE_STATES:
        return None
    return float(last) + minutes[card["triage"]] * 60


def is_overdue(card: dict, minutes: dict[str, float], now: float | None = None) -> bool:
    due = retriage_due_at(card, minutes)
    return due is not None and (now if now is not None else time.time()) > due
