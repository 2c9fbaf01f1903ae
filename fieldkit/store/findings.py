"""Findings in the store: one row per (source instance, model) (layer 2).

The models' rows are made by fieldkit.inference.findings; this module keeps them. Lookups
go through the store's indexes on `id`, `patient_id` and `sop_instance_uid`.
"""

from __future__ import annotations

from ..errors import NotFound
from ..records import T_FINDINGS, FindingRow

KEPT_ON_RERUN = ("review", "review_history")  # written by people, not by the models


def _docs(db, field: str, value) -> list[tuple[int, dict]]:
    storage = db.storage
    return [(int(k), storage.doc(T_FINDINGS, k)) for k in storage.keys(T_FINDINGS, field, value)]


def replace(store, sop_instance_uid: str, rows: list[FindingRow]) -> None:
    """Drop this instance's earlier findings from the same models, then insert `rows`, in
    one store.write (a job killed half-way and run again leaves exactly one set). A
    clinician's review of a finding survives a re-run of the same model."""
    models = {r["model"] for r in rows}

    def fn(db):
        old = {d["id"]: (doc_id, d) for doc_id, d in _docs(db, "sop_instance_uid", sop_instance_uid)
               if d.get("model") in models}
        new = []
        for r in rows:
            before = old.get(r["id"], (None, None))[1]
            if before and before.get("model_sha256") == r["model_sha256"]:
                r = {**r, **{k: before[k] for k in KEPT_ON_RERUN if k in before}}
            new.append(r)
        table = db.table(T_FINDINGS)
        if old:
            table.remove(doc_ids=[doc_id for doc_id, _ in old.values()])
        table.insert_multiple(new)

    store.write(fn)


def for_instance(store, sop_instance_uid: str) -> list[FindingRow]:
    return store.read(lambda db: [dict(d) for _, d in _docs(db, "sop_instance_uid", sop_instance_uid)])


def for_patient(store, patient_id: str) -> list[FindingRow]:
    return store.read(lambda db: [dict(d) for _, d in _docs(db, "patient_id", patient_id)])


def get(store, finding_id: str) -> FindingRow | None:
    return store.read(lambda db: next((dict(d) for _, d in _docs(db, "id", finding_id)), None))


def update(store, finding_id: str, fields: dict) -> FindingRow:
    """Set `fields` on a finding (a review, say); joins the caller's store.write."""
    def fn(db):
        docs = _docs(db, "id", finding_id)
        if not docs:
            raise NotFound(f"no finding {finding_id}")
        db.table(T_FINDINGS).update(fields, doc_ids=[doc_id for doc_id, _ in docs])
        return {**docs[0][1], **fields}
    return store.write(fn)


def all_findings(store) -> list[FindingRow]:
    return store.read(lambda db: [dict(r) for r in db.table(T_FINDINGS).all()])


def with_overlays(db) -> list[dict]:
    """Inside store.read: the findings that carry an overlay image (id, instance, overlay)."""
    return [{"id": f["id"], "sop_instance_uid": f.get("sop_instance_uid"), "overlay": f["overlay"]}
            for f in db.table(T_FINDINGS).all() if f.get("overlay")]


def clear_overlays(db, finding_ids) -> None:
    """Inside store.write: the findings keep their words and numbers, not their overlay."""
    storage = db.storage
    doc_ids = [int(k) for fid in finding_ids for k in storage.keys(T_FINDINGS, "id", fid)]
    if doc_ids:
        db.table(T_FINDINGS).update({"overlay": ""}, doc_ids=doc_ids)
