"""Kit patients: create, find, link captures to them, merge (layer 2).

A row: {"id", "tag", "name", "birth_date", "sex", "triage", "triage_history", "merged_into",
"created", "updated", "aliases"}. `id` is the triage tag number when there is one, else a
generated "U-XXXXXX" (an unidentified patient). `aliases` are the (issuer, PatientID) pairs
probes used for this patient, so later captures from the same probe exam find it again.
A merged patient keeps its row with `merged_into` set; lookups follow that pointer.
"""

from __future__ import annotations

import secrets
import time

from tinydb import Query

from ..errors import BadInput, NotFound
from ..records import (KIND_INFER, KIND_SYNC, READY, T_INSTANCES, T_PATIENTS, TRIAGE_CATEGORIES, infer_priority,
                       sync_priority)

_P = Query()
MAX_MERGE_HOPS = 32


def new_patient_id() -> str:
    return "U-" + secrets.token_hex(3).upper()


def make_row(pid: str, *, tag: str | None = None, name: str = "", birth_date: str = "", sex: str = "",
             triage: str = "none", aliases: list | None = None, now: float | None = None) -> dict:
    if triage not in TRIAGE_CATEGORIES:
        raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}, got {triage!r}")
    now = now or time.time()
    return {"id": pid, "tag": tag, "name": name, "birth_date": birth_date, "sex": sex,
            "triage": triage, "triage_history": [], "merged_into": None,
            "created": now, "updated": now, "aliases": [list(a) for a in (aliases or [])]}


def _get(db, pid: str) -> dict | None:
    rows = db.table(T_PATIENTS).search(_P.id == pid)
    return dict(rows[0]) if rows else None


def resolve_row(db, pid: str) -> dict | None:
    """The live patient for `pid`, following merges."""
    row = _get(db, pid)
    hops = 0
    while row and row.get("merged_into") and hops < MAX_MERGE_HOPS:
        row = _get(db, row["merged_into"]) or row
        hops += 1
    return row


def get_patient(store, pid: str, follow_merges: bool = True) -> dict | None:
    return store.read(lambda db: resolve_row(db, pid) if follow_merges else _get(db, pid))


def list_patients(store, include_merged: bool = False) -> list[dict]:
    def fn(db):
        rows = db.table(T_PATIENTS).all()
        return [dict(r) for r in rows if include_merged or not r.get("merged_into")]
    return store.read(fn)


def find_patients(store, text: str) -> list[dict]:
    """Patients whose id, tag or name contains `text` (case-insensitive), merged ones left out."""
    needle = (text or "").strip().lower()
    return [p for p in list_patients(store)
            if needle in p["id"].lower() or needle in str(p.get("tag") or "").lower()
            or needle in (p.get("name") or "").lower()]


def create_patient(store, *, tag: str | None = None, name: str = "", birth_date: str = "",
                   sex: str = "", triage: str = "none") -> dict:
    """A new patient: id = the tag number when given (must be new), else U-XXXXXX."""
    tag = (tag or "").strip() or None
    if tag is not None and (len(tag) > 64 or "\\" in tag or not tag.isprintable()):
        raise BadInput(f"triage tag {tag[:70]!r} is not a usable patient ID (printable, at most 64 characters)")

    def fn(db):
        if tag is not None and (_get(db, tag) or db.table(T_PATIENTS).search(_P.tag == tag)):
            raise BadInput(f"a patient with tag {tag} already exists")
        pid = tag or _fresh_id(db)
        row = make_row(pid, tag=tag, name=name, birth_date=birth_date, sex=sex, triage=triage)
        db.table(T_PATIENTS).insert(row)
        return row

    row = store.write(fn)
    store.events.publish("patient.updated", patient_id=row["id"])
    return row


def _fresh_id(db) -> str:
    for _ in range(100):
        pid = new_patient_id()
        if not _get(db, pid):
            return pid
    raise RuntimeError("could not find a free patient id")


def link(db, *, patient_id: str, issuer: str, kit_issuer: str, is_generic: bool,
         study_instance_uid: str, study_patient_id: str | None = None) -> dict | None:
    """The existing kit patient a capture belongs to, or None (a new one is needed).

    1. PatientID names a kit patient (kit issuer or none): that patient;
    2. PatientID is a triage tag number: that patient;
    3. the study already has captures: their patient;
    4. the probe's own ID was seen before: that patient.
    """
    pats = db.table(T_PATIENTS)
    if patient_id and issuer in ("", kit_issuer):
        row = resolve_row(db, patient_id)
        if row:
            return row
    if patient_id:
        rows = pats.search(_P.tag == patient_id)
        if rows:
            return resolve_row(db, rows[0]["id"])
    if study_patient_id is None and study_instance_uid:  # callers with an index pass it in
        rows = db.table(T_INSTANCES).search(Query().study_instance_uid == study_instance_uid)
        study_patient_id = rows[0]["patient_id"] if rows else ""
    if study_patient_id:
        row = resolve_row(db, study_patient_id)
        if row:
            return row
    if patient_id and not is_generic:
        alias = [issuer, patient_id]
        rows = pats.search(_P.aliases.test(lambda a: alias in a))
        if rows:
            return resolve_row(db, rows[0]["id"])
    return None


def set_triage(store, pid: str, category: str, by: str = "") -> dict:
    """Record a triage category (history kept) and re-prioritise the patient's infer rows
    (its sync rows are re-prioritised by the sync planner)."""
    if category not in TRIAGE_CATEGORIES:
        raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}, got {category!r}")

    def fn(db):
        row = resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid}")
        now = time.time()
        history = list(row.get("triage_history") or []) + [{"triage": category, "at": now, "by": by}]
        db.table(T_PATIENTS).update({"triage": category, "triage_history": history, "updated": now},
                                    _P.id == row["id"])
        row.update(triage=category, triage_history=history, updated=now)
        return row

    row = store.write(fn)
    _reprioritise_inference(store, row["id"], category)
    store.events.publish("patient.updated", patient_id=row["id"])
    return row


def _reprioritise_inference(store, pid: str, category: str) -> None:
    """The patient's captures still waiting for analysis move to the new category's place
    (a patient tagged red after the scan is analysed before the others)."""
    from .instances import get_instance
    priority = infer_priority(category)
    for job in store.queue.rows(kind=KIND_INFER, state=READY):
        if job.payload.get("report") or job.priority == priority:
            continue  # a report job keeps its place after every finding job
        inst = get_instance(store, str(job.payload.get("sop_instance_uid", "")))
        if inst and inst.get("patient_id") == pid:
            store.queue.set_priority(job.id, priority)


def merge_patients(store, from_id: str, into_id: str) -> dict:
    """Fold `from_id` into `into_id` (e.g. an unidentified patient who was identified):
    its captures move to `into_id`; those the hospital has not confirmed yet go with the
    new identity. The change itself travels as two status documents (see
    fieldkit.sync.updates): one under the surviving ID naming the merged one, and a last
    one under the merged ID naming the survivor. Captures the hospital already confirmed
    are not re-sent (same UIDs, different content: a PACS keeps one or the other)."""
    def fn(db):
        src, dst = resolve_row(db, from_id), resolve_row(db, into_id)
        if not src:
            raise NotFound(f"no patient {from_id}")
        if not dst:
            raise NotFound(f"no patient {into_id}")
        if src["id"] == dst["id"]:
            raise BadInput(f"{from_id} and {into_id} are already the same patient")
        now = time.time()
        pats, insts = db.table(T_PATIENTS), db.table(T_INSTANCES)
        aliases = dst.get("aliases", []) + [a for a in src.get("aliases", []) if a not in dst.get("aliases", [])]
        fill = {k: src[k] for k in ("name", "birth_date", "sex") if not dst.get(k) and src.get(k)}
        pats.update({"aliases": aliases, "updated": now, **fill}, _P.id == dst["id"])
        pats.update({"merged_into": dst["id"], "updated": now}, _P.id == src["id"])
        src_rows = insts.search(Query().patient_id == src["id"])
        moved = [r["sop_instance_uid"] for r in src_rows]
        insts.update({"patient_id": dst["id"]}, Query().patient_id == src["id"])
        triage = dst.get("triage", "none")
        for r in src_rows:
            if r.get("sync_state") == "confirmed":
                continue
            is_sr = str(r.get("sop_class_uid") or "").startswith("1.2.840.10008.5.1.4.1.1.88.")
            store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": r["sop_instance_uid"]},
                                priority=sync_priority(triage, "finding" if is_sr else "image"),
                                key=r["sop_instance_uid"])
        # identity first: the hospital learns of the merge before any re-stamped image
        store.queue.enqueue(KIND_SYNC, {"patient_id": dst["id"], "what": "merge", "merged": src["id"]},
                            priority=sync_priority(triage, "triage"), key=f"merge:{src['id']}:{dst['id']}")
        store.queue.enqueue(KIND_SYNC, {"patient_id": src["id"], "what": "merged", "into": dst["id"]},
                            priority=sync_priority(triage, "triage"), key=f"merged:{src['id']}:{dst['id']}")
        dst.update(aliases=aliases, updated=now, **fill)
        return dst, moved

    dst, moved = store.write(fn)
    store.events.publish("patient.merged", patient_id=dst["id"], merged=from_id, instances=len(moved))
    store.events.publish("patient.updated", patient_id=dst["id"])
    return dst
