"""What clinicians add from the tablet to rows the kit made (layer 2): the lung zone a
capture was taken in, and the review of a finding. Each write checks the row exists,
changes it in one journal record and announces the change.
"""

from __future__ import annotations

from tinydb import Query

from ..errors import NotFound
from ..records import T_FINDINGS, T_INSTANCES

_F, _I = Query(), Query()


def get_finding(store, finding_id: str) -> dict | None:
    rows = store.read(lambda db: db.table(T_FINDINGS).search(_F.id == finding_id))
    return dict(rows[0]) if rows else None


def set_lung_zone(store, sop_instance_uid: str, zone: str) -> str:
    """Record the zone of a capture ("" clears it); returns its patient's id."""
    def fn(db):
        rows = db.table(T_INSTANCES).search(_I.sop_instance_uid == sop_instance_uid)
        if not rows:
            raise NotFound("no such capture on this kit")
        db.table(T_INSTANCES).update({"lung_zone": zone}, _I.sop_instance_uid == sop_instance_uid)
        return rows[0].get("patient_id", "")

    pid = store.write(fn)
    store.events.publish("patient.updated", patient_id=pid)
    return pid


def review_finding(store, finding_id: str, entry: dict, also=None) -> dict:
    """Keep a review (decision, note, who, when) on a finding with its history; `also(finding)`
    runs inside the same journal record (e.g. queueing the review for the hospital)."""
    def fn(db):
        table = db.table(T_FINDINGS)
        rows = table.search(_F.id == finding_id)
        if not rows:
            raise NotFound("no such finding")
        hist = list(rows[0].get("review_history") or []) + [entry]
        table.update({"review": entry, "review_history": hist}, _F.id == finding_id)
        f = dict(rows[0], review=entry, review_history=hist)
        if also is not None:
            also(f)
        return f

    f = store.write(fn)
    store.events.publish("finding.reviewed", finding_id=finding_id, sop_instance_uid=f["sop_instance_uid"],
                         patient_id=f.get("patient_id", ""))
    return f
