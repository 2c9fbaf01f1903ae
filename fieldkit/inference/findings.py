"""Findings in the store: one row per (source instance, model), replaced on a re-run.

A job that is killed half-way and run again must leave exactly one set of findings, so
the write is "delete the rows for this instance and these models, insert the new ones",
in one store.write (one journal record: all or nothing).
"""

from __future__ import annotations

import hashlib
import time

from tinydb import Query

from ..records import T_FINDINGS
from .runner import Analysis

_F = Query()
KEPT_ON_RERUN = ("review", "review_history")  # written by people, not by the models


def finding_id(sop_instance_uid: str, model_name: str) -> str:
    return hashlib.sha256(f"{sop_instance_uid}\x1f{model_name}".encode()).hexdigest()[:24]


def rows_for(analysis: Analysis, *, source: dict, overlay: str | None, sr_uid: str | None) -> list[dict]:
    now = time.time()
    rows = []
    for r in analysis.results:
        rows.append({
            "id": finding_id(source["sop_instance_uid"], r.model["name"]),
            "sop_instance_uid": source["sop_instance_uid"],
            "study_instance_uid": source.get("study_instance_uid", ""),
            "series_instance_uid": source.get("series_instance_uid", ""),
            "patient_id": source.get("patient_id", ""),
            "task": r.task,
            "model": r.model["name"], "model_version": r.model["version"], "model_sha256": r.model["sha256"],
            "view": r.view, "quality": r.quality,
            "assessable": bool(r.assessable), "reason": r.reason,
            "confidence": float(r.confidence), "result": r.result,
            "overlay": overlay, "sr_sop_instance_uid": sr_uid,
            "frames_analysed": analysis.frames_analysed, "frames_total": analysis.frames_total,
            "frames": list(r.frames),
            "subsampled": {"value": bool(analysis.subsampled), "why": list(analysis.subsample_reasons)},
            "gate": {"counts": analysis.gate.get("counts", {}), "model": analysis.gate.get("model", {})},
            "timing_ms": dict(analysis.timing_ms),
            "created": now,
        })
    return rows


def replace(store, sop_instance_uid: str, rows: list[dict]) -> None:
    """Drop this instance's earlier findings from the same models, then insert `rows`."""
    models = {r["model"] for r in rows}

    def fn(db):
        table = db.table(T_FINDINGS)
        match = (_F.sop_instance_uid == sop_instance_uid) & _F.model.one_of(sorted(models))
        old = {r["id"]: r for r in table.search(match)}
        new = []
        for r in rows:
            before = old.get(r["id"])
            if before and before.get("model_sha256") == r["model_sha256"]:
                # the same model re-run (after a crash): a clinician's review still applies
                r = {**r, **{k: before[k] for k in KEPT_ON_RERUN if k in before}}
            new.append(r)
        table.remove(match)
        table.insert_multiple(new)

    store.write(fn)


def for_instance(store, sop_instance_uid: str) -> list[dict]:
    return store.read(lambda db: [dict(r) for r in db.table(T_FINDINGS).search(_F.sop_instance_uid == sop_instance_uid)])


def all_findings(store) -> list[dict]:
    return store.read(lambda db: [dict(r) for r in db.table(T_FINDINGS).all()])
