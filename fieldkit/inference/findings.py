"""Finding rows made from an analysis: one per (source instance, model).

They are kept by fieldkit.store.findings, which replaces a re-run's rows in one journal
record (a job killed half-way and run again leaves exactly one set).
"""

from __future__ import annotations

import hashlib
import time

from ..store.findings import all_findings, for_instance, replace  # noqa: F401  (where the worker looks)
from .runner import Analysis


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
            "view_probability": float(r.view_probability), "finding_probability": r.finding_probability,
            "result": r.result,
            "overlay": overlay, "sr_sop_instance_uid": sr_uid,
            "frames_analysed": analysis.frames_analysed, "frames_total": analysis.frames_total,
            "frames": list(r.frames),
            "subsampled": {"value": bool(analysis.subsampled), "why": list(analysis.subsample_reasons)},
            "gate": {"counts": analysis.gate.get("counts", {}), "model": analysis.gate.get("model", {})},
            "timing_ms": dict(analysis.timing_ms),
            "created": now,
        })
    return rows


