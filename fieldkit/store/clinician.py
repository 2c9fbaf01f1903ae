"""What clinicians add from the tablet to rows the kit made (layer 2): the lung zone a
capture was taken in, and the review of a finding. Each write checks the row exists,
changes it in one journal record (through the indexed catalogue and findings modules) and
announces the change.
"""

from __future__ import annotations

from ..errors import NotFound
from ..events import FINDING_REVIEWED, PATIENT_UPDATED
from . import findings, instances


def set_lung_zone(store, sop_instance_uid: str, zone: str) -> str:
    """Record the zone of a capture ("" clears it); returns its patient's id."""
    pid = instances.set_lung_zone(store, sop_instance_uid, zone)
    store.events.publish(PATIENT_UPDATED, patient_id=pid)
    return pid


def review_finding(store, finding_id: str, entry: dict, also=None) -> dict:
    """Keep a review (decision, note, who, when) on a finding with its history; `also(finding)`
    runs inside the same journal record (e.g. queueing the review for the hospital)."""
    def fn(db):
        current = findings.get(store, finding_id)
        if current is None:
            raise NotFound("no such finding")
        hist = list(current.get("review_history") or []) + [entry]
        f = findings.update(store, finding_id, {"review": entry, "review_history": hist})
        if also is not None:
            also(f)
        return f

    f = store.write(fn)
    store.events.publish(FINDING_REVIEWED, finding_id=finding_id, sop_instance_uid=f["sop_instance_uid"],
                         patient_id=f.get("patient_id", ""))
    return f
