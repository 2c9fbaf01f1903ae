"""DICOMweb on the kit (PS3.18), under /dicom-web/: STOW-RS, QIDO-RS, WADO-RS.

- STOW-RS takes multipart/related; type="application/dicom" bodies as they stream in and
  answers with ReferencedSOPSequence / FailedSOPSequence (FailureReason, plus the reason in
  words as ErrorComment): 200 all stored, 202 some failed, 409 none stored.
- QIDO-RS answers studies, series and instances with the usual matching keys (PatientID,
  PatientName, StudyDate and StudyTime ranges, ModalitiesInStudy, Modality, the UIDs,
  AccessionNumber, Study/SeriesDescription, ReferringPhysicianName) and limit/offset, as
  application/dicom+json; a key, fuzzymatching or includefield it does not honour is named
  in a `Warning: 299` header rather than silently ignored.
- WADO-RS returns instances (as stored, or Explicit VR Little Endian on request), metadata,
  frames (the stored compressed frames untouched for transfer-syntax=*, the stored syntax
  or its media type; decoded pixels only when another syntax is asked for)
  and rendered frames as PNG or JPEG; every BulkDataURI in metadata (pixel data, palette
  LUT data, values over 4 KiB) is a resource of its own under .../bulkdata/<tag path>.
"""

from __future__ import annotations

import fnmatch
import io
import itertools
import re
import uuid

import pydicom
from flask import Blueprint, Response, jsonify, request
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.encaps import generate_fragments, generate_frames

from ..dicom import uids
from ..dicom.frames import DecodeError, decode_frames
from ..dicom.thumbnails import render
from ..errors import BadInput, NotFound
from ..ingest.multipart import content_type_params
from ..ingest.upload import REFUSED, SKIPPED, store_multipart
from ..store import instances as catalogue
from . import kit_of

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

READ, WRITE = "dicomweb.read", "dicomweb.write"
ROUTE_PERMISSIONS = {
    "dicomweb.stow": WRITE, "dicomweb.stow_study": WRITE,
    "dicomweb.search_studies": READ, "dicomweb.search_series": READ, "dicomweb.search_study_series": READ,
    "dicomweb.search_instances": READ, "dicomweb.search_study_instances": READ,
    "dicomweb.search_series_instances": READ,
    "dicomweb.retrieve_study": READ, "dicomweb.retrieve_series": READ, "dicomweb.retrieve_instance": READ,
    "dicomweb.study_metadata": READ, "dicomweb.series_metadata": READ, "dicomweb.instance_metadata": READ,
    "dicomweb.frames": READ, "dicomweb.rendered_instance": READ, "dicomweb.rendered_frames": READ,
    "dicomweb.thumbnail": READ, "dicomweb.bulkdata": READ,
}
# STOW bodies may be as large as http.max_request_mb; checked while streaming
ROUTE_MAX_BYTES = {"dicomweb.stow": 1 << 40, "dicomweb.stow_study": 1 << 40}

DICOM_JSON = "application/dicom+json"


def _base() -> str:
    return request.url_root.rstrip("/") + bp.url_prefix


# -- STOW-RS ------------------------------------------------------------------------------

@bp.post("/studies", endpoint="stow")
@bp.post("/studies/<study>", endpoint="stow_study")
def stow(study: str | None = None):
    kit = kit_of()
    store = kit.store
    media, params = content_type_params(request.headers.get("Content-Type", ""))
    if media != "multipart/related":
        return _problem(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    part_type = (params.get("type") or "application/dicom").lower()
    if part_type != "application/dicom":
        return _problem(415, f"part type {part_type[:60]} is not accepted: send application/dicom parts")
    store.space.check_capture()  # 507 with the reason, before the body is read
    limit = int(kit.config["http.max_request_mb"]) * (1 << 20)
    chunks = iter(lambda: request.stream.read(1 << 20), b"")
    timing: dict = {}
    try:
        results = store_multipart(store, chunks, params.get("boundary", ""), source="stow",
                                  default_type="application/dicom", max_bytes=limit, expect_study=study,
                                  timing=timing)
    except BadInput as exc:
        return _problem(exc.http_status, exc.message)
    stored = [r for r in results if r["status"] not in (REFUSED, SKIPPED)]
    failed = [r for r in results if r["status"] == REFUSED]
    body: dict = {}
    studies = {catalogue.get_instance(store, r["sop_instance_uid"])["study_instance_uid"] for r in stored}
    if len(studies) == 1:
        body["00081190"] = _v("UR", f"{_base()}/studies/{next(iter(studies))}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [{
            "00081150": _v("UI", r["sop_class_uid"]), "00081155": _v("UI", r["sop_instance_uid"]),
            "00081197": _v("US", r["code"]), "00000902": _v("LO", r["reason"][:64].replace("\\", "/")),
        } for r in failed]}
    if stored:
        items = []
        for r in stored:
            row = catalogue.get_instance(store, r["sop_instance_uid"])
            item = {"00081150": _v("UI", r["sop_class_uid"]), "00081155": _v("UI", r["sop_instance_uid"]),
                    "00081190": _v("UR", _instance_url(row))}
            if r["status"] == "conflict":
                item["00081196"] = _v("US", 0xB000)  # kept, but as a conflict for review
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    status = 200 if stored and not failed else (202 if stored else 409)
    if not results:
        status, body = 400, {"error": "the body held no parts", "status": 400}
    response = Response(_json(body), status=status, content_type=DICOM_JSON)
    # where the request's time went (W3C Server-Timing), for hospital IT and the benchmark
    response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items())
    return response


# -- QIDO-RS ------------------------------------------------------------------------------

_STUDY_KEYS = {"PatientID", "PatientName", "StudyDate", "StudyTime", "StudyInstanceUID", "ModalitiesInStudy",
               "AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex", "StudyDescription",
               "ReferringPhysicianName"}
_SERIES_KEYS = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"}
_INSTANCE_KEYS = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# what each level answers (the tags of _study_json, _series_json, _instance_json), for includefield
_PATIENT_TAGS = {"00100010", "00100020", "00100021", "00100030", "00100040"}
_RETURNED = {
    "studies": _PATIENT_TAGS | {"00080020", "00080030", "00080050", "00080061", "00080090", "00081030",
                                "0020000D", "00200010", "00201206", "00201208", "00081190"},
    "series": {"00080060", "0008103E", "0020000D", "0020000E", "00200011", "00201209", "00081190"},
    "instances": _PATIENT_TAGS | {"00080016", "00080018", "00080020", "00080060", "0020000D", "0020000E",
                                  "00200013", "00280008", "00280010", "00280011", "00020010", "00081190"},
}


def _keyword(key: str) -> str:
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def _filters() -> dict[str, str]:
    out = {}
    for key, value in request.args.items():
        if key in _CONTROL:
            continue
        name = _keyword(key)
        if name in _STUDY_KEYS | _SERIES_KEYS | _INSTANCE_KEYS:
            out[name] = value
        elif tag_for_keyword(name) is None and name == key:
            raise BadInput(f"unknown query parameter {key[:40]!r}")
    return out


def _qido_warnings(level: str) -> list[str]:
    """PS3.18 8.3.4/8.6: what the search did not do as asked, one Warning: 299 each, so a
    client never takes an unfiltered answer for a filtered one."""
    out = []
    ignored = sorted({_keyword(k) for k in request.args if k not in _CONTROL}
                     - _STUDY_KEYS - _SERIES_KEYS - _INSTANCE_KEYS)
    if ignored:
        out.append(f"The following query keys are not supported and were ignored: {', '.join(ignored)[:300]}")
    if request.args.get("fuzzymatching", "").lower() == "true":
        out.append("The fuzzymatching parameter is not supported. Only literal matching has been performed.")
    fields = [_keyword(f.strip()) for v in request.args.getlist("includefield") for f in v.split(",") if f.strip()]
    if "all" in fields:
        out.append("includefield=all is not supported: only the attributes the catalogue holds are returned")
    missing = sorted({f for f in fields if f != "all"} - {keyword_for_tag(int(t, 16)) for t in _RETURNED[level]})
    missing = [re.sub(r"[^A-Za-z0-9]", "?", f[:64]) for f in missing]  # client text inside a header
    if missing:
        out.append(f"The following includefield attributes are not returned: {', '.join(missing)[:300]}")
    return [f'299 fieldkit "{w}"' for w in out]


def _match_text(value: str, pattern: str, fold: bool = False) -> bool:
    if pattern in ("", "*"):
        return True
    if fold:
        value, pattern = value.lower(), pattern.lower()
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


def _match_date(value: str, pattern: str) -> bool:
    if "-" not in pattern:
        return value == pattern
    lo, _, hi = pattern.partition("-")
    if not value:
        return False
    return (not lo or value >= lo) and (not hi or value <= hi)


def _match_uids(value: str, pattern: str) -> bool:
    return value in [p.strip() for p in pattern.replace("\\", ",").split(",")]


def _row_matches(row: dict, patient: dict, f: dict) -> bool:
    checks = {
        "PatientID": lambda p: _match_text(row["patient_id"], p),
        "PatientName": lambda p: _match_text(patient.get("name") or "", p, fold=True),
        "PatientBirthDate": lambda p: _match_date(patient.get("birth_date") or "", p),
        "PatientSex": lambda p: _match_text(patient.get("sex") or "", p),
        "StudyDate": lambda p: _match_date(row.get("study_date") or "", p),
        "StudyTime": lambda p: _match_date((row.get("study_time") or "").replace(":", ""), p.replace(":", "")),
        "StudyDescription": lambda p: _match_text(row.get("study_description") or "", p, fold=True),
        "ReferringPhysicianName": lambda p: _match_text(row.get("referring_physician") or "", p, fold=True),
        "SeriesDescription": lambda p: _match_text(row.get("series_description") or "", p, fold=True),
        "StudyInstanceUID": lambda p: _match_uids(row["study_instance_uid"], p),
        "AccessionNumber": lambda p: _match_text(row.get("accession_number") or "", p),
        "StudyID": lambda p: _match_text(row.get("study_id") or "", p),
        "SeriesInstanceUID": lambda p: _match_uids(row["series_instance_uid"], p),
        "Modality": lambda p: _match_text(row.get("modality") or "", p),
        "SeriesNumber": lambda p: str(row.get("series_number") or "") == p,
        "SOPInstanceUID": lambda p: _match_uids(row["sop_instance_uid"], p),
        "SOPClassUID": lambda p: _match_uids(row["sop_class_uid"], p),
        "InstanceNumber": lambda p: str(row.get("instance_number") or "") == p,
    }
    return all(checks[k](v) for k, v in f.items() if k in checks)


def _uid_list(pattern: str) -> list[str]:
    return [p.strip() for p in pattern.replace("\\", ",").split(",")]


def _query() -> dict:
    """The request's filters, split into what the store's indexes answer (UIDs, an exact
    PatientID) and a row test for the rest, plus offset/limit."""
    f = _filters()
    try:
        offset = max(0, int(request.args.get("offset", 0)))
        limit = max(0, int(request.args.get("limit", 0)))
    except ValueError:
        raise BadInput("limit and offset must be whole numbers") from None
    q = {"offset": offset, "limit": limit or None}
    modalities = f.pop("ModalitiesInStudy", None)
    if modalities:
        q["modalities"] = set(_uid_list(modalities))
    pid = f.get("PatientID")
    if pid and "*" not in pid and "?" not in pid:
        q["patient_id"] = pid
    for key, arg in (("StudyInstanceUID", "study_uids"), ("SeriesInstanceUID", "series_uids"),
                     ("SOPInstanceUID", "sop_uids")):
        if key in f:
            q[arg] = _uid_list(f[key])
    if f:
        q["match"] = lambda row, patient: _row_matches(row, patient, f)
    return q


def _study_hints(f: dict) -> dict:
    """The study filters the catalogue's indexes narrow down (an exact AccessionNumber, a
    StudyDate or range); `match` still tests every row against them."""
    hints = {}
    accession = f.get("AccessionNumber")
    if accession and "*" not in accession and "?" not in accession:
        hints["accession"] = accession
    date = f.get("StudyDate")
    if date:
        lo, dash, hi = date.partition("-")
        hints["study_dates"] = (lo, hi) if dash else (date, date)
    return hints


def _scoped(q: dict, study: str | None, series: str | None = None) -> dict:
    """Narrow the query to the study/series of the URL path."""
    for uid, arg in ((study, "study_uids"), (series, "series_uids")):
        if uid is not None:
            q[arg] = [uid] if uid in q.get(arg, [uid]) else []
    return q


def _v(vr: str, value) -> dict:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if vr in ("IS", "US", "UL", "SS"):
        try:
            return {"vr": vr, "Value": [int(value)]}
        except (TypeError, ValueError):
            return {"vr": vr}
    return {"vr": vr, "Value": list(value) if isinstance(value, (list, tuple)) else [str(value)]}


def _patient_attrs(pid: str, pats: dict) -> dict:
    p = pats.get(pid, {})
    return {"00100010": _v("PN", p.get("name")), "00100020": _v("LO", pid),
            "00100021": _v("LO", kit_of().config.issuer_of_patient_id),
            "00100030": _v("DA", p.get("birth_date")), "00100040": _v("CS", p.get("sex"))}


def _study_json(s: dict, pats: dict) -> dict:
    return {"00080020": _v("DA", s["study_date"]), "00080030": _v("TM", s["study_time"]),
            "00080050": _v("SH", s["accession_number"]), "00080061": _v("CS", s["modalities"]),
            "00080090": _v("PN", s["referring_physician"]), "00081030": _v("LO", s["study_description"]),
            **_patient_attrs(s["patient_id"], pats),
            "0020000D": _v("UI", s["study_instance_uid"]), "00200010": _v("SH", s["study_id"]),
            "00201206": _v("IS", s["series"]), "00201208": _v("IS", s["instances"]),
            "00081190": _v("UR", f"{_base()}/studies/{s['study_instance_uid']}")}


def _series_json(s: dict) -> dict:
    return {"00080060": _v("CS", s["modality"]), "0008103E": _v("LO", s["series_description"]),
            "0020000D": _v("UI", s["study_instance_uid"]), "0020000E": _v("UI", s["series_instance_uid"]),
            "00200011": _v("IS", s["series_number"]), "00201209": _v("IS", s["instances"]),
            "00081190": _v("UR", f"{_base()}/studies/{s['study_instance_uid']}/series/{s['series_instance_uid']}")}


def _instance_json(r: dict, pats: dict) -> dict:
    return {"00080016": _v("UI", r["sop_class_uid"]), "00080018": _v("UI", r["sop_instance_uid"]),
            "00080020": _v("DA", r.get("study_date")), "00080060": _v("CS", r.get("modality")),
            **_patient_attrs(r["patient_id"], pats),
            "0020000D": _v("UI", r["study_instance_uid"]), "0020000E": _v("UI", r["series_instance_uid"]),
            "00200013": _v("IS", r.get("instance_number")), "00280008": _v("IS", r["frames"] or None),
            "00280010": _v("US", r["rows"] or None), "00280011": _v("US", r["columns"] or None),
            "00020010": _v("UI", r["transfer_syntax"]), "00081190": _v("UR", _instance_url(r))}


def _instance_url(r: dict, base: str | None = None) -> str:
    return (f"{_base() if base is None else base}/studies/{r['study_instance_uid']}/series/{r['series_instance_uid']}"
            f"/instances/{r['sop_instance_uid']}")


def _json(obj) -> str:
    import json
    return json.dumps(obj, separators=(",", ":"))


def _dicom_json(items: list, warnings: list[str] = ()) -> Response:
    response = Response(_json(items), status=200, content_type=DICOM_JSON)
    for warning in warnings:
        response.headers.add("Warning", warning)
    return response


@bp.get("/studies", endpoint="search_studies")
def search_studies():
    store = kit_of().store
    q = _query()
    q.pop("series_uids", None)  # checked row by row in `match`
    q.pop("sop_uids", None)
    found = catalogue.search_studies(store, **q, **_study_hints(_filters()))
    return _dicom_json([_study_json(s, {s["patient_id"]: s["patient"]}) for s in found], _qido_warnings("studies"))


@bp.get("/series", endpoint="search_series")
@bp.get("/studies/<study>/series", endpoint="search_study_series")
def search_series(study: str | None = None):
    q = _scoped(_query(), study)
    q.pop("patient_id", None)  # a row test in `match` still checks it
    q.pop("sop_uids", None)
    found = catalogue.search_series(kit_of().store, **q)
    return _dicom_json([_series_json(s) for s in found], _qido_warnings("series"))


@bp.get("/instances", endpoint="search_instances")
@bp.get("/studies/<study>/instances", endpoint="search_study_instances")
@bp.get("/studies/<study>/series/<series>/instances", endpoint="search_series_instances")
def search_instances(study: str | None = None, series: str | None = None):
    store = kit_of().store
    q = _scoped(_query(), study, series)
    if "modalities" in q:  # ModalitiesInStudy is a study key: kept for the study's rows
        wanted, match = q.pop("modalities"), q.get("match")
        in_study = {s["study_instance_uid"] for s in catalogue.search_studies(
            store, study_uids=q.get("study_uids"), patient_id=q.get("patient_id"), modalities=wanted)}
        q["match"] = lambda row, patient: (row["study_instance_uid"] in in_study
                                           and (match is None or match(row, patient)))
    rows = catalogue.search_instances(store, **q)
    pats = catalogue.patient_map(store, {r["patient_id"] for r in rows})
    return _dicom_json([_instance_json(r, pats) for r in rows], _qido_warnings("instances"))


# -- WADO-RS ------------------------------------------------------------------------------

class _Gone(NotFound):
    """Purged by retention after the hospital confirmed it: only a tombstone is left."""
    http_status = 410


def _purged(row: dict) -> bool:
    return bool(row.get("purged_at")) or not row.get("blob")


def _gone(rows: list[dict]) -> _Gone:
    urls = sorted({r.get("retrieve_url") or "" for r in rows} - {""})
    where = f"retrieve it from the hospital: {' '.join(urls[:20])}" if urls else "retrieve it from the hospital"
    what = "this instance was" if len(rows) == 1 else f"these {len(rows)} instances were"
    return _Gone(f"{what} sent to the hospital and purged from the kit; {where}")


def _rows_for(study: str, series: str | None = None, instance: str | None = None) -> list[dict]:
    """Catalogue rows whose objects the kit still holds. Instances purged by retention are
    left out of a study or series; asked for alone (or all purged), they answer 410 Gone
    naming the hospital's retrieve URL."""
    store = kit_of().store
    if instance:
        row = catalogue.get_instance(store, instance)
        if row is None or row["study_instance_uid"] != study or (series and row["series_instance_uid"] != series):
            raise NotFound(f"no instance {instance[:64]} in that study/series")
        if _purged(row):
            raise _gone([row])
        return [row]
    rows = catalogue.instance_rows(store, study_uid=study, series_uid=series)
    if not rows:
        raise NotFound(f"no {'series' if series else 'study'} {(series or study)[:64]} on this kit")
    held = [r for r in rows if not _purged(r)]
    if not held:
        raise _gone(rows)
    return held


def _accepted_syntax() -> str | None:
    """The transfer syntax asked for in Accept: None/"*" means as stored."""
    accept = request.headers.get("Accept", "")
    for item in accept.split(","):
        media, params = content_type_params(item.strip())
        if media in ("multipart/related", "*/*", "application/dicom") or not media:
            ts = params.get("transfer-syntax")
            part_type = params.get("type", "application/dicom").lower()
            if part_type not in ("application/dicom", "*/*", "application/*"):
                continue
            return ts or "*"
    if accept and "*/*" not in accept and "application/dicom" not in accept:
        raise _NotAcceptable("instances are served as multipart/related; type=\"application/dicom\"")
    return "*"


class _NotAcceptable(BadInput):
    http_status = 406


def _instance_parts(rows: list[dict], ts: str):
    store = kit_of().store
    for row in rows:
        if ts in ("*", row["transfer_syntax"]):
            yield row["transfer_syntax"], store.blobs.iter_chunks(row["blob"])
        elif ts == uids.EXPLICIT_LE:
            yield ts, [_as_explicit_le(store, row)]
        else:
            raise _NotAcceptable(f"transfer syntax {ts[:64]} is not offered: ask for '*' (as stored) "
                                 f"or {uids.EXPLICIT_LE}")


def _as_explicit_le(store, row: dict) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    if uids.is_video(row["transfer_syntax"]):
        raise _NotAcceptable("video (MPEG) objects are only served as stored: ask for transfer-syntax=*")
    if "PixelData" in ds and row["transfer_syntax"] not in (uids.EXPLICIT_LE, uids.IMPLICIT_LE):
        arr = ds.pixel_array if row["transfer_syntax"] == uids.EXPLICIT_BE else None
        if arr is not None:
            ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            ds["PixelData"].VR = "OW" if arr.dtype.itemsize > 1 else "OB"
        else:
            ds.decompress()
    ds.file_meta.TransferSyntaxUID = uids.EXPLICIT_LE
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(parts, part_type: str) -> Response:
    """parts: iterable of (content-type header value, iterable of bytes)."""
    boundary = uuid.uuid4().hex

    def body():
        for ctype, chunks in parts:
            yield f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()
            yield from chunks
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    # materialise the first part so that errors (406, 404) still become proper responses
    gen = body()
    first = []
    try:
        first.append(next(gen))
        first.append(next(gen))
    except StopIteration:
        pass

    def stream():
        yield from first
        yield from gen

    return Response(stream(), status=200,
                    content_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


def _retrieve(rows: list[dict]) -> Response:
    ts = _accepted_syntax()
    parts = ((f"application/dicom; transfer-syntax={syntax}", chunks) for syntax, chunks in _instance_parts(rows, ts))
    return _multipart(parts, "application/dicom")


@bp.get("/studies/<study>", endpoint="retrieve_study")
def retrieve_study(study):
    return _retrieve(_rows_for(study))


@bp.get("/studies/<study>/series/<series>", endpoint="retrieve_series")
def retrieve_series(study, series):
    return _retrieve(_rows_for(study, series))


@bp.get("/studies/<study>/series/<series>/instances/<instance>", endpoint="retrieve_instance")
def retrieve_instance(study, series, instance):
    return _retrieve(_rows_for(study, series, instance))


# palette colour LUT data: always its own bulk data resource, whatever its size, so a
# viewer that loads from metadata fetches the table, not the instance
_LUT_DATA = {0x00281201, 0x00281202, 0x00281203, 0x00281221, 0x00281222, 0x00281223}
_BULK_THRESHOLD = 4096  # bytes: larger values get a BulkDataURI in /metadata


def _bulk_root() -> str:
    """Where BulkDataURIs point: the configured public address (onboarding.kit_url), never
    the request's Host header; without it, URIs relative to the DICOMweb root."""
    kit_url = (kit_of().config["onboarding.kit_url"] or "").rstrip("/")
    return f"{kit_url}{bp.url_prefix}/" if kit_url else ""


def _element_paths(ds, prefix: str = "") -> dict[int, str]:
    """id(element) -> its bulk data path ("00281201", "00540016/0/00181072")."""
    out = {}
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        out[id(elem)] = path
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(_element_paths(item, f"{path}/{i}/"))
    return out


def _metadata(rows: list[dict]) -> Response:
    store = kit_of().store
    root = _bulk_root()
    out = []
    for row in rows:
        with store.blobs.open(row["blob"], row["size"]) as fh:  # header only: no pixels decrypted
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        bulk = root + _instance_url(row, base="").lstrip("/") + "/bulkdata/"
        paths = _element_paths(ds)
        item = ds.to_json_dict(bulk_data_threshold=_BULK_THRESHOLD,
                               bulk_data_element_handler=lambda elem: bulk + paths[id(elem)])
        for tag in _LUT_DATA:
            key = f"{tag:08X}"
            if key in item and "InlineBinary" in item[key]:
                item[key] = {"vr": item[key]["vr"], "BulkDataURI": bulk + key}
        if row["rows"]:
            item["7FE00010"] = {"vr": "OB" if row["transfer_syntax"] not in uids.NATIVE_SYNTAXES else "OW",
                                "BulkDataURI": bulk + "7FE00010"}
        item["00020010"] = _v("UI", row["transfer_syntax"])
        out.append(item)
    return _dicom_json(out)


def _element_at(ds, tag_path: str):
    """The data element at a bulk data path, or NotFound naming the path."""
    steps = tag_path.strip("/").split("/")
    node, elem = ds, None
    try:
        for i, step in enumerate(steps):
            if i % 2 == 0:
                if len(step) != 8:
                    raise ValueError
                elem = node[int(step, 16)]
            else:
                node = elem.value[int(step)]
        if len(steps) % 2 == 0 or elem.VR == "SQ":
            raise ValueError
    except (ValueError, KeyError, IndexError, TypeError):
        raise NotFound(f"no bulk data at {tag_path[:80]!r} in this instance") from None
    return elem


@bp.get("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path:tag_path>", endpoint="bulkdata")
def bulkdata(study, series, instance, tag_path):
    """An element's value as application/octet-stream (multipart/related when the Accept
    header asks for it). Encapsulated pixel data: one part per frame, as stored."""
    row = _rows_for(study, series, instance)[0]
    store = kit_of().store
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    elem = _element_at(ds, tag_path)
    ts = row["transfer_syntax"]
    octet = "application/octet-stream"
    if elem.tag == 0x7FE00010 and ts not in uids.NATIVE_SYNTAXES and tag_path.strip("/") == "7FE00010":
        if uids.is_video(ts):  # a video stream is one item: sent whole
            values = [b"".join(generate_fragments(elem.value))]
        else:
            values = list(generate_frames(elem.value, number_of_frames=row["frames"] or 1))
        return _multipart(((f"{octet}; transfer-syntax={ts}", [v]) for v in values), octet)
    value = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode()
    accept = request.headers.get("Accept", "")
    if "multipart/related" in accept:
        return _multipart([(octet, [value])], octet)
    if accept and not any(m in accept for m in (octet, "*/*", "application/*")):
        raise _NotAcceptable("bulk data is served as application/octet-stream or multipart/related")
    return Response(value, content_type=octet)


@bp.get("/studies/<study>/metadata", endpoint="study_metadata")
def study_metadata(study):
    return _metadata(_rows_for(study))


@bp.get("/studies/<study>/series/<series>/metadata", endpoint="series_metadata")
def series_metadata(study, series):
    return _metadata(_rows_for(study, series))


@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata", endpoint="instance_metadata")
def instance_metadata(study, series, instance):
    return _metadata(_rows_for(study, series, instance))


_FRAME_MEDIA = {
    uids.JPEG_BASELINE: "image/jpeg", uids.JPEG_EXTENDED: "image/jpeg", uids.JPEG_LOSSLESS_P14: "image/jpeg",
    uids.JPEG_LOSSLESS_SV1: "image/jpeg", uids.JPEG_LS_LOSSLESS: "image/jls", uids.JPEG_LS_NEAR: "image/jls",
    uids.JPEG2000_LOSSLESS: "image/jp2", uids.JPEG2000: "image/jp2", uids.RLE: "image/dicom-rle",
}


def _frame_numbers(frame_list: str, n: int) -> list[int]:
    try:
        numbers = [int(x) for x in frame_list.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"frame list {frame_list[:40]!r} is not comma-separated numbers") from None
    bad = [x for x in numbers if not 1 <= x <= n]
    if not numbers or bad:
        raise NotFound(f"frame {bad[0] if bad else frame_list[:20]} is not in this instance ({n} frame(s))")
    return numbers


def _frames_as_stored(accept: str, stored_ts: str) -> str | None:
    """The part media type to send the stored frames under, untouched, when the Accept
    header allows them: `transfer-syntax=*` (OHIF's default), the stored syntax named, or
    the stored syntax's own media type. None: the client wants decoded pixels."""
    stored_media = _FRAME_MEDIA.get(stored_ts)
    if not stored_media:  # native or video data: nothing to gain from sending it as stored
        return None
    for item in accept.split(","):
        media, params = content_type_params(item.strip())
        if media == "multipart/related":
            media = (params.get("type") or "").lower()
        ts = params.get("transfer-syntax")
        if media == "application/octet-stream" and ts in ("*", stored_ts):
            return media
        if media == stored_media and ts in (None, "*", stored_ts):
            return media
    return None


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frame_list>", endpoint="frames")
def frames(study, series, instance, frame_list):
    row = _rows_for(study, series, instance)[0]
    store = kit_of().store
    numbers = _frame_numbers(frame_list, row["frames"] or 0)
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    accept = request.headers.get("Accept", "")
    stored_ts = row["transfer_syntax"]
    stored_media = _FRAME_MEDIA.get(stored_ts)
    as_stored = _frames_as_stored(accept, stored_ts)
    if as_stored:  # the stored bytes, split into frames, never decoded
        wanted = itertools.islice(generate_frames(ds.PixelData, number_of_frames=row["frames"]), max(numbers))
        all_frames = list(wanted)
        parts = ((f"{as_stored}; transfer-syntax={stored_ts}", [all_frames[i - 1]]) for i in numbers)
        return _multipart(parts, as_stored)
    if accept and not any(m in accept for m in ("application/octet-stream", "*/*", "multipart/related; type=\"*")) \
            and "application/octet-stream" not in accept:
        raise _NotAcceptable("frames are served as application/octet-stream (uncompressed) "
                             f"or {stored_media or 'as stored'}")
    from pydicom.pixels import pixel_array

    def frame_bytes(i: int) -> bytes:
        if uids.is_video(stored_ts):
            return decode_frames(ds, [i - 1])[0].tobytes()
        arr = pixel_array(ds, index=i - 1) if row["frames"] > 1 else pixel_array(ds)
        return arr.astype(arr.dtype.newbyteorder("<")).tobytes()

    parts = ((f"application/octet-stream; transfer-syntax={uids.EXPLICIT_LE}", [frame_bytes(i)]) for i in numbers)
    return _multipart(parts, "application/octet-stream")


def _rendered(row: dict, index: int) -> Response:
    store = kit_of().store
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    try:
        frame = decode_frames(ds, [index])[0]
    except DecodeError as exc:
        raise BadInput(f"cannot render: {exc}") from None
    accept = request.headers.get("Accept", "")
    png, jpeg = accept.find("image/png"), accept.find("image/jpeg")
    media = "image/png" if png >= 0 and (jpeg < 0 or png < jpeg) else "image/jpeg"
    return Response(render(frame, media), content_type=media)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/rendered", endpoint="rendered_instance")
def rendered_instance(study, series, instance):
    row = _rows_for(study, series, instance)[0]
    if not row["rows"]:
        raise BadInput("this instance has no image to render")
    return _rendered(row, 0)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frame_list>/rendered",
        endpoint="rendered_frames")
def rendered_frames(study, series, instance, frame_list):
    row = _rows_for(study, series, instance)[0]
    numbers = _frame_numbers(frame_list, row["frames"] or 0)
    return _rendered(row, numbers[0] - 1)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/thumbnail", endpoint="thumbnail")
def thumbnail(study, series, instance):
    row = _rows_for(study, series, instance)[0]
    if not row.get("thumbnail"):
        raise NotFound("this instance has no thumbnail")
    return Response(catalogue.thumbnail_bytes(kit_of().store, row), content_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


def _problem(status: int, message: str):
    return jsonify({"error": message, "status": status}), status
