"""Changes a tablet made while the kit was out of reach, replayed when it is back (layer 2).

A tablet keeps each change (registration, re-triage, note) with an ID it made itself and
the time it was made. `apply_change` applies one change at most once: the ID is kept in the
`offline_changes` table with what came of it, so a replay sent twice changes nothing the
second time and answers the same. The change keeps its original time (`at`); the time the
kit received it is kept next to it (`received_at`).

Two tablets that re-triaged one patient offline: both entries go into the history in time
order, the patient's category is the one of the later original time, and the patient is
flagged for review. The tablet says which category it saw (`expected`); a category changed
by someone else since is the sign of a conflict. A tag registered twice offline becomes one
patient, flagged. A change for a patient merged meanwhile goes to the survivor; one for a
patient that does not exist is refused with the reason, and remembered as refused.
"""

from __future__ import annotations

import math
import re
import time

from ..errors import BadInput
from ..events import PATIENT_UPDATED
from ..records import T_OFFLINE, T_PATIENTS, TRIAGE_CATEGORIES
from . import patients

KINDS = ("register", "triage", "note")
APPLIED, REFUSED = "applied", "refused"
MAX_AGE_SECONDS = 7 * 24 * 3600  # a tablet offline for longer than a week is not an incident tablet
MAX_AHEAD_SECONDS = 600  # tablet clocks run ahead a little; a change from the future is not believed
MAX_NOTE = 2000
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def check_change(raw, now: float) -> dict:
    """The change as the kit will apply it, or BadInput saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise BadInput("a change must be an object")
    cid = raw.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise BadInput("a change needs an id of 8 to 64 letters, digits, '-' or '_'")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}")
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or (isinstance(at, float) and not math.isfinite(at)):
        raise BadInput("at must be the time the change was made (seconds since 1970)")
    if at > now + MAX_AHEAD_SECONDS:
        raise BadInput("the change is dated in the future: check the tablet's clock")
    if at < now - MAX_AGE_SECONDS:
        raise BadInput("the change is more than a week old")
    out = {"id": cid, "kind": kind, "at": float(at)}
    for key in ("patient", "ref", "tag"):
        value = raw.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 64 or not value.isprintable() or "\\" in value:
            raise BadInput(f"{key} must be printable text of at most 64 characters")
        out[key] = value.strip()
    if kind in ("register", "triage"):
        out["triage"] = raw.get("triage", "none")
        if out["triage"] not in TRIAGE_CATEGORIES:
            raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}")
    if kind == "triage" and raw.get("expected") is not None:
        if raw["expected"] not in TRIAGE_CATEGORIES:
            raise BadInput(f"expected must be one of {', '.join(TRIAGE_CATEGORIES)}")
        out["expected"] = raw["expected"]
    if kind != "register" and not (out.get("patient") or out.get("ref")):
        raise BadInput("say which patient the change is for (patient, or ref: the id of its registration)")
    if kind == "note":
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadInput("a note needs text")
        if len(text) > MAX_NOTE:
            raise BadInput(f"a note is at most {MAX_NOTE} characters")
        if any(ord(c) < 32 and c not in "\n\t" for c in text):
            raise BadInput("the note contains control characters")
        out["text"] = text.strip()
    return out


def _done(db, cid: str) -> dict | None:
    keys = db.storage.keys(T_OFFLINE, "id", cid)
    return dict(db.storage.doc(T_OFFLINE, keys[0])) if keys else None


def applied(store, cid: str) -> dict | None:
    """What came of change `cid` (None when the kit never received it)."""
    return store.read(lambda db: _done(db, cid))


def _target(db, change: dict) -> tuple[dict | None, str]:
    """The live patient a change is for (following merges) and the ID the tablet named."""
    named = change.get("patient") or ""
    if change.get("ref"):  # a patient registered offline by this tablet: the kit gave it its ID
        reg = _done(db, change["ref"])
        if reg and reg.get("patient_id"):
            named = reg["patient_id"]
    return (patients.resolve_row(db, named) if named else None), named


def _latest_at(history: list) -> float:
    # only a person's triage decision counts: a merge or an assigned capture repeats a category
    return max((h.get("at", 0) for h in history if not {"assigned", "merged", "unmerged_from"} & h.keys()),
               default=-math.inf)


def _add_triage(db, row: dict, change: dict, entry: dict, conflict: str, now: float) -> dict:
    """Put a triage entry into the history in time order; the later time sets the category."""
    history = list(row.get("triage_history") or [])
    wins = change["at"] >= _latest_at(history)
    history.append(entry)
    history.sort(key=lambda h: h.get("at", 0))
    fields = {"triage_history": history, "updated": max(now, row.get("updated") or 0)}
    if wins:
        fields["triage"] = change["triage"]
    if conflict:
        fields["review"] = list(row.get("review") or []) + [{"reason": conflict, "at": now, "change": change["id"]}]
    patients.update_fields(db, row["id"], fields)
    return dict(row, **fields)


def apply_change(store, change: dict, *, by: str, now: float | None = None) -> dict:
    """Apply one checked change (check_change) once. Returns what came of it:
    {"id", "kind", "status": "applied"|"refused", "patient_id", "reason", "flagged",
    "duplicate": True when it had been received before (nothing changed this time)}."""
    now = time.time() if now is None else now

    def fn(db):
        before = _done(db, change["id"])
        if before is not None:
            return dict(before, duplicate=True), None
        entry = {"at": change["at"], "by": by, "received_at": now, "offline": change["id"]}
        result = {"id": change["id"], "kind": change["kind"], "status": APPLIED, "patient_id": "",
                  "reason": "", "flagged": "", "at": change["at"], "received_at": now, "by": by}
        row = None
        if change["kind"] == "register":
            tag = change.get("tag") or None
            existing = (patients.resolve_row(db, tag) or _by_tag(db, tag)) if tag else None
            if existing is not None:  # registered twice (two tablets, or online meanwhile): one patient
                result["flagged"] = f"tag {tag} was registered twice; check that it is one patient"
                row = _add_triage(db, existing, change, dict(entry, triage=change["triage"], conflict=True),
                                  result["flagged"], now)
            else:
                pid = tag or patients.fresh_id(db, patients.TAGLESS_PREFIX)  # registered by a person
                row = patients.make_row(pid, tag=tag, now=change["at"])
                row["updated"] = now
                if change["triage"] != "none":
                    row["triage"] = change["triage"]
                    row["triage_history"] = [dict(entry, triage=change["triage"])]
                db.table(T_PATIENTS).insert(row)
        else:
            row, named = _target(db, change)
            if row is None:
                result.update(status=REFUSED, reason=f"no patient {named or change.get('ref', '')} on the kit "
                                                      "(removed, or its registration was refused)")
            elif change["kind"] == "triage":
                seen = change.get("expected")
                if seen is not None and (row.get("triage") or "none") != seen:
                    result["flagged"] = (f"{row['id']} was re-triaged elsewhere meanwhile (now {row.get('triage')}); "
                                         "the later change counts")
                row = _add_triage(db, row, change, dict(entry, triage=change["triage"],
                                                        **({"conflict": True} if result["flagged"] else {})),
                                  result["flagged"], now)
            else:
                notes = sorted(list(row.get("notes") or []) + [dict(entry, text=change["text"])],
                               key=lambda n: n.get("at", 0))
                patients.update_fields(db, row["id"], {"notes": notes, "updated": max(now, row.get("updated") or 0)})
            if row is not None and named and row["id"] != named:
                result["reason"] = f"{named} was merged into {row['id']}: the change went to {row['id']}"
        if row is not None:
            result["patient_id"] = row["id"]
            result["triage"] = row.get("triage") or "none"
        db.table(T_OFFLINE).insert(result)
        return result, row

    result, row = store.write(fn)
    if row is not None and not result.get("duplicate"):
        store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return result


def _by_tag(db, tag: str) -> dict | None:
    keys = db.storage.keys(T_PATIENTS, "tag", tag)
    return patients.resolve_row(db, db.storage.doc(T_PATIENTS, keys[0])["id"]) if keys else None


__all__ = ["KINDS", "APPLIED", "REFUSED", "check_change", "apply_change", "applied"]
