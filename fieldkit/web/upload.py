"""Tablet upload: POST /api/v1/upload with DICOM files, Part-10 zip bundles (with or
without DICOMDIR) and PNG/JPEG pictures, as multipart/form-data (one or many files) or
as a raw body (the file itself; its name in the X-Filename header).

Pictures are wrapped into DICOM for the patient named by `patient_id` (query string), or
a new unidentified patient; `acquired_at` (ISO date-time) and `as_ultrasound=1` are
optional. The answer lists every file with its outcome: 200 when all were stored (or were
already there), 207 when some were refused, 422 when none was stored.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..errors import BadInput
from ..ingest.multipart import content_type_params
from ..ingest.upload import REFUSED, SKIPPED, store_multipart, store_stream, summarize
from . import kit_of

bp = Blueprint("upload", __name__)
ROUTE_PERMISSIONS = {"upload.upload": "ingest.upload"}
# bodies may be as large as http.max_request_mb; checked while streaming
ROUTE_MAX_BYTES = {"upload.upload": 1 << 40}


@bp.post("/api/v1/upload", endpoint="upload")
def upload():
    kit = kit_of()
    store = kit.store
    store.space.check_capture()  # 507 with the reason, before the body is read
    limit = int(kit.config["http.max_request_mb"]) * (1 << 20)
    options = {"patient_id": request.args.get("patient_id", "").strip(),
               "acquired_at": request.args.get("acquired_at", "").strip(),
               "as_ultrasound": request.args.get("as_ultrasound", "") in ("1", "true", "yes")}
    media, params = content_type_params(request.headers.get("Content-Type", ""))
    chunks = iter(lambda: request.stream.read(1 << 20), b"")
    if media.startswith("multipart/"):
        results = store_multipart(store, chunks, params.get("boundary", ""), source="upload",
                                  default_type="application/octet-stream", max_bytes=limit,
                                  picture_options=options)
    else:
        name = (request.headers.get("X-Filename") or "upload")[:200]
        results = store_stream(store, chunks, name, "upload", limit, picture_options=options)
    if not results:
        raise BadInput("the upload held no files")
    kept = [r for r in results if r["status"] not in (REFUSED, SKIPPED)]
    refused = [r for r in results if r["status"] == REFUSED]
    status = 200 if kept and not refused else (207 if kept else 422)
    public = [{k: r[k] for k in ("name", "status", "reason", "sop_instance_uid", "patient_id")} for r in results]
    return jsonify({"results": public, "counts": summarize(results)}), status
