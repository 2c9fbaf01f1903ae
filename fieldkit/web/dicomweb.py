"""DICOMweb on the kit (PS3.18), under /dicom-web/: STOW-RS, QIDO-RS, WADO-RS.

- STOW-RS takes multipart/related; type="application/dicom" bodies as they stream in and
  answers with ReferencedSOPSequence / FailedSOPSequence (FailureReason, plus the reason in
  words as ErrorComment): 200 all stored, 202 some failed, 409 none stored.
- QIDO-RS answers studies, series and instances with the usual matching keys (PatientID,
  PatientName, StudyDate and StudyTime ranges, ModalitiesInStudy, Modality, the UIDs,
  AccessionNumber, Study/SeriesDescription, ReferringPhysicianName, BodyPartExamined,
  InstitutionName), fuzzymatching for person names, includefield (read from stored headers
  beyond what the catalogue holds) and limit/offset, as application/dicom+json; a valid key
  it does not match is named in a `Warning: 299` header rather than silently ignored, an
  invalid value is a 400 (PS3.18 8.3.4).
- WADO-RS returns instances (as stored, or Explicit VR Little Endian on request), metadata,
  frames (the stored compressed frames untouched for transfer-syntax=*, the stored syntax
  or its media type; decoded pixels only when another syntax is asked for), rendered
  instances, frames, studies and series as PNG or JPEG, and thumbnails; every BulkDataURI in
  metadata (pixel data, palette LUT data, values over 4 KiB) is a resource of its own under
  .../bulkdata/<tag path>.
- Links (RetrieveURL, BulkDataURI) use a trusted proxy's Forwarded header, else
  onboarding.kit_url; DICOM JSON writes empty values of multi-valued attributes as null.
"""

from __future__ import annotations

import io
import logging
import itertools
import re
import uuid

import pydicom
from flask import Blueprint, Response, jsonify, request, stream_with_context
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.encaps import generate_fragments, generate_frames

from ..dicom.frame_index import FrameIndexCache, frame_spans
from ..dicom import stow_tags as T
from ..dicom import uids
from ..dicom.matching import matcher, study_hints, uid_list as _uid_list
from ..dicom.frames import DecodeError, decode_frames
from ..dicom.thumbnails import render
from ..errors import BadInput, NotFound
from ..ingest.multipart import content_type_params
from ..ingest.upload import REFUSED, SKIPPED, store_multipart
from ..records import is_purged as _purged
from ..store import instances as catalogue
from . import kit_of
from .compress import worth_compressing

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")
log = logging.getLogger(__name__)

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
    "dicomweb.study_thumbnail": READ, "dicomweb.series_thumbnail": READ,
    "dicomweb.study_rendered": READ, "dicomweb.series_rendered": READ,
}
# STOW bodies may be as large as http.max_request_mb; checked while streaming
ROUTE_MAX_BYTES = {"dicomweb.stow": 1 << 40, "dicomweb.stow_study": 1 << 40}

DICOM_JSON = "application/dicom+json"


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _forwarded() -> str | None:
    """scheme://host the last trusted proxy says the client asked for (RFC 7239
    `Forwarded`, else X-Forwarded-Proto/-Host), or None: only from an address in
    http.trusted_proxies, and only a well-formed host."""
    if request.remote_addr not in (kit_of().config["http.trusted_proxies"] or []):
        return None
    proto = host = None
    if "Forwarded" in request.headers:
        last = request.headers["Forwarded"].split(",")[-1]  # what the nearest proxy added
        pairs = dict(p.strip().split("=", 1) for p in last.split(";") if "=" in p)
        proto, host = (pairs.get(k, "").strip('"') or None for k in ("proto", "host"))
    else:
        proto = (request.headers.get("X-Forwarded-Proto") or "").split(",")[-1].strip() or None
        host = (request.headers.get("X-Forwarded-Host") or "").split(",")[-1].strip() or None
    if not host or not _HOST.fullmatch(host) or (proto or "https") not in ("http", "https"):
        return None
    return f"{proto or 'https'}://{host}"


def _public_root() -> str:
    """The kit's public address for links: a trusted proxy's Forwarded header, else
    onboarding.kit_url, else "" (the caller decides)."""
    return _forwarded() or (kit_of().config["onboarding.kit_url"] or "").rstrip("/")


def _base() -> str:
    """The DICOMweb root in RetrieveURLs: the public address, else the request's own."""
    return (_public_root() or request.url_root.rstrip("/")) + bp.url_prefix


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
        body[T.RETRIEVE_URL] = _v("UR", f"{_base()}/studies/{next(iter(studies))}")
    if failed:
        body[T.FAILED_SOP_SEQ] = {"vr": "SQ", "Value": [{
            T.REF_SOP_CLASS: _v("UI", r["sop_class_uid"]), T.REF_SOP_INSTANCE: _v("UI", r["sop_instance_uid"]),
            T.FAILURE_REASON: _v("US", r["code"]), T.ERROR_COMMENT: _v("LO", r["reason"][:64].replace("\\", "/")),
        } for r in failed]}
    if stored:
        items = []
        for r in stored:
            row = catalogue.get_instance(store, r["sop_instance_uid"])
            item = {T.REF_SOP_CLASS: _v("UI", r["sop_class_uid"]), T.REF_SOP_INSTANCE: _v("UI", r["sop_instance_uid"]),
                    T.RETRIEVE_URL: _v("UR", _instance_url(row))}
            if r["status"] == "conflict":
                item[T.WARNING_REASON] = _v("US", 0xB000)  # kept, but as a conflict for review
            items.append(item)
        body[T.REFERENCED_SOP_SEQ] = {"vr": "SQ", "Value": items}
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
_SERIES_KEYS = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
                "InstitutionName"}
_INSTANCE_KEYS = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# includefield=all at study and series level: these, read from a stored header, besides
# the attributes the catalogue answers with (an instance's own header is all instance-level)
_ALL_AT = {
    "studies": {"IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight",
                "EthnicGroup", "PatientComments", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
                "AdmittingDiagnosesDescription", "ProcedureCodeSequence", "ReferencedStudySequence",
                "RequestingPhysician", "IssuerOfAccessionNumberSequence", "TimezoneOffsetFromUTC"},
    "series": {"SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality", "ProtocolName", "OperatorsName",
               "PerformingPhysicianName", "InstitutionName", "InstitutionalDepartmentName", "StationName",
               "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
               "PerformedProcedureStepID", "PerformedProcedureStepDescription", "RequestAttributesSequence"},
}
# header reads (includefield beyond the catalogue) are bounded: at most this many results a page
_HEADER_PAGE = 200


def _keyword(key: str) -> str:
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def _filters() -> dict[str, str]:
    """The matching keys asked for (by keyword), each value checked: 400 for an invalid one."""
    out = {}
    for key, value in request.args.items():
        if key in _CONTROL:
            continue
        name = _keyword(key)
        if name in _STUDY_KEYS | _SERIES_KEYS | _INSTANCE_KEYS:
            problem = _invalid(name, value)
            if problem:
                raise BadInput(f"invalid value for {name}: {problem}")
            out[name] = value
        elif tag_for_keyword(name) is None and name == key:
            raise BadInput(f"unknown query parameter {key[:40]!r}")
    return out


def _fuzzy() -> bool:
    value = request.args.get("fuzzymatching", "false")
    if value not in ("true", "false"):
        raise BadInput("fuzzymatching must be true or false")
    return value == "true"


def _includefields() -> tuple[bool, list[str]]:
    """(includefield=all asked, the tags asked for as 8 hex digits); 400 for a name that is
    no DICOM attribute."""
    everything, tags = False, []
    for value in request.args.getlist("includefield"):
        for field in (f.strip() for f in value.split(",")):
            if not field:
                continue
            if field == "all":
                everything = True
                continue
            tag = int(field, 16) if re.fullmatch(r"[0-9A-Fa-f]{8}", field) else tag_for_keyword(field)
            if tag is None:
                raise BadInput(f"includefield {field[:40]!r} is not a DICOM attribute keyword or tag")
            tags.append(f"{tag:08X}")
    return everything, tags


def _qido_warnings() -> list[str]:
    """PS3.18 8.3.4/8.6: what the search did not do as asked, one Warning: 299 each, so a
    client never takes an unfiltered answer for a filtered one."""
    out = []
    ignored = sorted({_keyword(k) for k in request.args if k not in _CONTROL}
                     - _STUDY_KEYS - _SERIES_KEYS - _INSTANCE_KEYS)
    ignored = [re.sub(r"[^A-Za-z0-9]", "?", f[:64]) for f in ignored]  # client text inside a header
    if ignored:
        out.append(f"The following query keys are not supported and were ignored: {', '.join(ignored)[:300]}")
    return [f'299 fieldkit "{w}"' for w in out]


# -- matching (the QIDO keys against catalogue rows) ---------------------------------------

_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(:?[0-9]{2}(:?[0-9]{2}(\.[0-9]{1,6})?)?)?")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DATE_KEYS, _TIME_KEYS = {"StudyDate", "PatientBirthDate"}, {"StudyTime"}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
_NUMBER_KEYS = {"SeriesNumber", "InstanceNumber"}
_PN_KEYS = {"PatientName", "ReferringPhysicianName"}


def _invalid(name: str, value: str) -> str | None:
    """Why a matching key's value is invalid per its VR (PS3.18 8.3.4: a 400), or None."""
    def ranged(rx) -> bool:
        lo, dash, hi = value.partition("-")
        return bool(rx.fullmatch(value)) or (bool(dash) and (lo or hi) != "" and
                                              all(rx.fullmatch(v) for v in (lo, hi) if v))
    if name in _DATE_KEYS and not ranged(_DATE):
        return "a date is YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either side may be empty)"
    if name in _TIME_KEYS and not ranged(_TIME):
        return "a time is HHMMSS (minutes and seconds optional), or a range of two"
    if name in _UID_KEYS and not all(len(u) <= 64 and _UID.fullmatch(u) for u in _uid_list(value)):
        return "UIDs are digits and dots (at most 64), several separated by commas or backslashes"
    if name in _NUMBER_KEYS and not re.fullmatch(r"-?[0-9]{1,12}", value):
        return "a whole number"
    if len(value) > 256 or not value.isprintable():
        return "at most 256 printable characters"
    return None


def _query() -> dict:
    """The request's filters, split into what the store's indexes answer (UIDs, an exact
    PatientID) and a row test for the rest, plus offset/limit."""
    f = _filters()
    fuzzy = _fuzzy()
    _includefields()  # checked before anything is searched
    numbers = {}
    for name in ("offset", "limit"):
        value = request.args.get(name, "0")
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise BadInput(f"{name} must be a whole number, 0 or more")
        numbers[name] = int(value)
    q = {"offset": numbers["offset"], "limit": numbers["limit"] or None}
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
        q["match"] = matcher(f, fuzzy=fuzzy)
    return q


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


def _study_attrs(s: dict, pats: dict) -> dict:
    """Study-level attributes of a study summary or of any of its instance rows."""
    return {"00080020": _v("DA", s.get("study_date")), "00080030": _v("TM", s.get("study_time")),
            "00080050": _v("SH", s.get("accession_number")), "00080090": _v("PN", s.get("referring_physician")),
            "00081030": _v("LO", s.get("study_description")), **_patient_attrs(s["patient_id"], pats),
            "0020000D": _v("UI", s["study_instance_uid"]), "00200010": _v("SH", s.get("study_id"))}


def _study_json(s: dict, pats: dict) -> dict:
    return {**_study_attrs(s, pats), "00080061": _v("CS", s["modalities"]),
            "00201206": _v("IS", s["series"]), "00201208": _v("IS", s["instances"]),
            "00081190": _v("UR", f"{_base()}/studies/{s['study_instance_uid']}")}


def _series_attrs(s: dict) -> dict:
    """Series-level attributes of a series summary or of any of its instance rows."""
    return {"00080060": _v("CS", s.get("modality")), "0008103E": _v("LO", s.get("series_description")),
            "0020000E": _v("UI", s["series_instance_uid"]), "00200011": _v("IS", s.get("series_number"))}


def _series_json(s: dict) -> dict:
    return {**_series_attrs(s), "0020000D": _v("UI", s["study_instance_uid"]),
            "00201209": _v("IS", s["instances"]),
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


def _header_page(q: dict) -> bool:
    """Bound a search whose answers need stored headers read (includefield beyond the
    catalogue) to _HEADER_PAGE results: asks for one more, to know whether it cut."""
    everything, tags = _includefields()
    if not (everything or tags) or (q["limit"] and q["limit"] <= _HEADER_PAGE):
        return False
    q["limit"] = _HEADER_PAGE + 1
    return True


def _cut(found: list, bounded: bool, offset: int) -> tuple[list, list[str]]:
    """The page of a bounded search, and the PS3.18 warning when results were left out."""
    if not bounded or len(found) <= _HEADER_PAGE:
        return found, []
    return found[:_HEADER_PAGE], [
        f'299 fieldkit "includefield reads stored headers: only {_HEADER_PAGE} results were returned; '
        f'ask for more with offset={offset + _HEADER_PAGE}"']


def _included(level: str, item: dict, row: dict | None) -> dict:
    """`item` with the includefield attributes it lacks, read from the stored header of
    `row` (an instance of the study/series; none held: left out)."""
    everything, tags = _includefields()
    wanted = set(tags) - set(item)
    if everything:
        if level in _ALL_AT:
            wanted |= {f"{tag_for_keyword(k):08X}" for k in _ALL_AT[level]} - set(item)
    if not (wanted or (everything and level == "instances")) or row is None or _purged(row):
        return item
    store = kit_of().store
    with store.blobs.open(row["blob"], row["size"]) as fh:  # header only: no pixels decrypted
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    bulk = _bulk_root() + _instance_url(row, base="").lstrip("/") + "/bulkdata/"
    paths = _element_paths(ds)
    header = _to_json(ds, lambda elem: bulk + paths[id(elem)])
    if everything and level == "instances":
        wanted |= set(header) - set(item)
    return {**item, **{t: header[t] for t in sorted(wanted) if t in header}}


def _first_rows(store, key: str, uids: list[str]) -> dict[str, dict]:
    """One held instance row per study (key "study") or series ("series"), for header reads."""
    everything, tags = _includefields()
    if not (everything or tags):
        return {}
    out = {}
    for uid in uids:
        rows = catalogue.instance_rows(store, **{f"{key}_uid": uid}, match=lambda r, p: not _purged(r), limit=1)
        if rows:
            out[uid] = rows[0]
    return out


@bp.get("/studies", endpoint="search_studies")
def search_studies():
    store = kit_of().store
    q = _query()
    bounded = _header_page(q)
    q.pop("series_uids", None)  # checked row by row in `match`
    q.pop("sop_uids", None)
    found, warnings = _cut(catalogue.search_studies(store, **q, **study_hints(_filters())), bounded, q["offset"])
    first = _first_rows(store, "study", [s["study_instance_uid"] for s in found])
    return _dicom_json([_included("studies", _study_json(s, {s["patient_id"]: s["patient"]}),
                                  first.get(s["study_instance_uid"])) for s in found],
                       _qido_warnings() + warnings)


@bp.get("/series", endpoint="search_series")
@bp.get("/studies/<study>/series", endpoint="search_study_series")
def search_series(study: str | None = None):
    store = kit_of().store
    q = _scoped(_query(), study)
    bounded = _header_page(q)
    q.pop("patient_id", None)  # a row test in `match` still checks it
    q.pop("sop_uids", None)
    found, warnings = _cut(catalogue.search_series(store, **q), bounded, q["offset"])
    first = _first_rows(store, "series", [s["series_instance_uid"] for s in found])
    items = [_included("series", _series_json(s), first.get(s["series_instance_uid"])) for s in found]
    if study is None:  # PS3.18 10.6.3.3.2: not scoped to a study, the study's attributes too
        studies = {s["study_instance_uid"]: s for s in catalogue.search_studies(
            store, study_uids=list(dict.fromkeys(s["study_instance_uid"] for s in found)))}
        items = [{**_study_json(studies[s["study_instance_uid"]], {studies[s["study_instance_uid"]]["patient_id"]:
                                                                   studies[s["study_instance_uid"]]["patient"]}),
                  **item} if s["study_instance_uid"] in studies else item for s, item in zip(found, items)]
        for item in items:
            item["00081190"] = _v("UR", f"{_base()}/studies/{item['0020000D']['Value'][0]}/series/"
                                        f"{item['0020000E']['Value'][0]}")
    return _dicom_json(items, _qido_warnings() + warnings)


@bp.get("/instances", endpoint="search_instances")
@bp.get("/studies/<study>/instances", endpoint="search_study_instances")
@bp.get("/studies/<study>/series/<series>/instances", endpoint="search_series_instances")
def search_instances(study: str | None = None, series: str | None = None):
    store = kit_of().store
    q = _scoped(_query(), study, series)
    bounded = _header_page(q)
    if "modalities" in q:  # ModalitiesInStudy is a study key: kept for the study's rows
        wanted, match = q.pop("modalities"), q.get("match")
        in_study = {s["study_instance_uid"] for s in catalogue.search_studies(
            store, study_uids=q.get("study_uids"), patient_id=q.get("patient_id"), modalities=wanted)}
        q["match"] = lambda row, patient: (row["study_instance_uid"] in in_study
                                           and (match is None or match(row, patient)))
    rows, warnings = _cut(catalogue.search_instances(store, **q), bounded, q["offset"])
    pats = catalogue.patient_map(store, {r["patient_id"] for r in rows})
    items = []
    for r in rows:
        # PS3.18 10.6.3.3.3: the series' attributes unless scoped to a series, the study's
        # unless scoped to a study
        item = {**(_study_attrs(r, pats) if study is None else {}), **(_series_attrs(r) if series is None else {}),
                **_instance_json(r, pats)}
        items.append(_included("instances", item, r))
    return _dicom_json(items, _qido_warnings() + warnings)


# -- WADO-RS ------------------------------------------------------------------------------

class _Gone(NotFound):
    """Purged by retention after the hospital confirmed it: only a tombstone is left."""
    http_status = 410


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
            ds.decompress(generate_instance_uid=False)  # the same instance, in another syntax (pydicom 3 would make a new UID)
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


# syntaxes whose bytes gzip shrinks (deflated and encapsulated ones are compressed already)
PLAIN_SYNTAXES = (uids.IMPLICIT_LE, uids.EXPLICIT_LE, uids.EXPLICIT_BE)


def _retrieve(rows: list[dict]) -> Response:
    ts = _accepted_syntax()
    parts = ((f"application/dicom; transfer-syntax={syntax}", chunks) for syntax, chunks in _instance_parts(rows, ts))
    response = _multipart(parts, "application/dicom")
    if all((r["transfer_syntax"] if ts == "*" else ts) in PLAIN_SYNTAXES for r in rows):
        worth_compressing(response)
    return response


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
    """Where BulkDataURIs point: the public address (a trusted proxy's Forwarded header,
    else onboarding.kit_url), never the request's Host header; without one, URIs relative
    to the DICOMweb root."""
    root = _public_root()
    return f"{root}{bp.url_prefix}/" if root else ""


def _to_json(ds, bulk_uri) -> dict:
    """A dataset as DICOM JSON (PS3.18 F.2): values over _BULK_THRESHOLD become the
    BulkDataURI `bulk_uri(elem)` names; an empty value of a multi-valued attribute is
    `null` (F.2.5), where pydicom would write "" or fail (DS, IS, PN); an element whose
    value cannot be written keeps its VR alone rather than failing the whole answer."""
    out = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        try:
            if elem.VR == "SQ":
                items = [_to_json(item, bulk_uri) for item in elem.value]
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            elif isinstance(elem.value, MultiValue) and any(v in ("", None) for v in elem.value):
                out[key] = {"vr": elem.VR, "Value": [
                    None if v in ("", None) else
                    DataElement(elem.tag, elem.VR, v).to_json_dict(bulk_uri, _BULK_THRESHOLD)["Value"][0]
                    for v in elem.value]}
            else:
                out[key] = elem.to_json_dict(bulk_uri, _BULK_THRESHOLD)
        except (ValueError, TypeError, IndexError, KeyError):
            log.warning("an element of tag %s could not be written as DICOM JSON: left empty", key)
            out[key] = {"vr": elem.VR}
    return out


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
        item = _to_json(ds, lambda elem: bulk + paths[id(elem)])
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
    # the value's bytes as stored: their byte order is the stored syntax's (a deflated
    # object is inflated on reading, so Explicit VR Little Endian)
    labelled = f"{octet}; transfer-syntax={uids.EXPLICIT_LE if ts == uids.DEFLATED_LE else ts}"
    accept = request.headers.get("Accept", "")
    if "multipart/related" in accept:
        return worth_compressing(_multipart([(labelled, [value])], octet))
    if accept and not any(m in accept for m in (octet, "*/*", "application/*")):
        raise _NotAcceptable("bulk data is served as application/octet-stream or multipart/related")
    return worth_compressing(Response(value, content_type=labelled))


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
    accept = request.headers.get("Accept", "")
    stored_ts = row["transfer_syntax"]
    stored_media = _FRAME_MEDIA.get(stored_ts)
    as_stored = _frames_as_stored(accept, stored_ts)
    if as_stored and pydicom.uid.UID(stored_ts).is_encapsulated and not uids.is_video(stored_ts):
        found = _stored_frames(store, row, numbers)
        if found is not None:  # read through the frame index: only the chunks that hold them
            parts = ((f"{as_stored}; transfer-syntax={stored_ts}", [data]) for data in found)
            return worth_compressing(_multipart(parts, as_stored), if_it_pays=True)
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    if as_stored:  # the stored bytes, split into frames, never decoded
        wanted = itertools.islice(generate_frames(ds.PixelData, number_of_frames=row["frames"]), max(numbers))
        all_frames = list(wanted)
        parts = ((f"{as_stored}; transfer-syntax={stored_ts}", [all_frames[i - 1]]) for i in numbers)
        return worth_compressing(_multipart(parts, as_stored), if_it_pays=True)
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
    return worth_compressing(_multipart(parts, "application/octet-stream"))


_FRAME_INDEX = FrameIndexCache()


def _stored_frames(store, row: dict, numbers: list[int]) -> list[bytes] | None:
    """The stored bytes of frames `numbers` (1-based), or None when the index cannot say."""
    def build():
        with store.blobs.open(row["blob"], row["size"]) as fh:
            return frame_spans(fh, row["frames"] or 1)

    spans = _FRAME_INDEX.get(row["blob"], build)
    if spans is None or max(numbers) > len(spans):
        return None
    out = []
    with store.blobs.open(row["blob"], row["size"]) as fh:
        for i in numbers:
            pieces = []
            for offset, length in spans[i - 1]:
                fh.seek(offset)
                pieces.append(fh.read(length))
            out.append(b"".join(pieces))
    return out


def _rendered(row: dict, index: int) -> Response:
    accept = request.headers.get("Accept", "")
    png, jpeg = accept.find("image/png"), accept.find("image/jpeg")
    media = "image/png" if png >= 0 and (jpeg < 0 or png < jpeg) else "image/jpeg"
    return rendered_response(row, index, media)


def rendered_response(row: dict, index: int, media: str) -> Response:
    """Frame `index` (0-based) of a stored instance as `media` (image/png or image/jpeg);
    also WADO-URI's rendered answer."""
    store = kit_of().store
    ds = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    try:
        frame = decode_frames(ds, [index])[0]
    except DecodeError as exc:
        raise BadInput(f"cannot render: {exc}") from None
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


def _images(rows: list[dict]) -> list[dict]:
    """The image instances of a study or series, in QIDO's order (series, instance number)."""
    images = [r for r in rows if r["rows"]]
    if not images:
        raise NotFound("no image in this study/series to render")
    return sorted(images, key=lambda r: (str(r.get("series_number") or "").zfill(8), r["series_instance_uid"],
                                         str(r.get("instance_number") or "").zfill(8), r["received_at"]))


@bp.get("/studies/<study>/thumbnail", endpoint="study_thumbnail")
@bp.get("/studies/<study>/series/<series>/thumbnail", endpoint="series_thumbnail")
def group_thumbnail(study, series=None):
    """PS3.18 10.4: one representative image, the thumbnail of the first image instance."""
    row = next((r for r in _images(_rows_for(study, series)) if r.get("thumbnail")), None)
    if row is None:
        raise NotFound("no image with a thumbnail in this study/series")
    return Response(catalogue.thumbnail_bytes(kit_of().store, row), content_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/studies/<study>/rendered", endpoint="study_rendered")
@bp.get("/studies/<study>/series/<series>/rendered", endpoint="series_rendered")
def group_rendered(study, series=None):
    """PS3.18 10.4: every image instance of the study/series rendered (its first frame),
    one part each, as multipart/related of image/jpeg (or image/png when asked first)."""
    rows = _images(_rows_for(study, series))
    accept = request.headers.get("Accept", "")
    png, jpeg = accept.find("image/png"), accept.find("image/jpeg")
    media = "image/png" if png >= 0 and (jpeg < 0 or png < jpeg) else "image/jpeg"

    def parts():
        for row in rows:
            yield media, [rendered_response(row, 0, media).get_data()]
    # rendered one by one as the answer streams, each within the request's context
    return _multipart(stream_with_context(parts()), media)


def _problem(status: int, message: str):
    return jsonify({"error": message, "status": status}), status
