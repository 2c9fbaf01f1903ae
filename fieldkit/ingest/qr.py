"""Query/Retrieve SCP on the kit's DICOM ports: C-FIND, C-MOVE and C-GET of stored objects
(Patient Root and Study Root, levels PATIENT/STUDY/SERIES/IMAGE), for a field hospital's
viewer or workstation.

Who may ask: a calling AE title in `dicom.qr_ae_titles` or one of `dicom.move_destinations`
acts as a DICOMweb client (it may read studies); a registered probe acts as the probe role,
which may read nothing, and anyone else is refused with 0x0124 and a reason.

Matching is QIDO's (fieldkit.dicom.matching): single values, `*`/`?` wildcards, date and
time ranges, UID lists; every key of the identifier is returned (empty when the kit holds
no value for it). A key with a value the kit cannot match on is returned but answers
0xFF01 ("optional keys not supported"), so the viewer knows the list is wider than asked.
A query the kit cannot read gets one failure status with an ErrorComment, never a crash.
Answers are encoded once per content and kept (a viewer repeats its study list query), and
sent as encoded: pynetdicom's per-answer pydicom encoding was most of a long answer's time.

Retrieves send the stored objects as they are (decrypted in memory, one at a time, never
written anywhere in clear), over the caller's association (C-GET) or a new one to a
configured destination (C-MOVE; pynetdicom counts the sub-operations and answers 0xA801
for a destination the kit does not know).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove, Verification)

from ..config import move_destination
from ..dicom.matching import matcher, study_hints, uid_list
from ..records import is_purged
from ..dicom.status import status as _status
from ..security import audit, roles
from ..store import instances as catalogue
from ..store import probes
from . import worklist
from .dimse_server import AssociationTally

log = logging.getLogger(__name__)

# statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C.5)
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_KEYS_NOT_SUPPORTED = 0xFF01
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
NOT_AUTHORISED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801  # sent by pynetdicom when the handler names no destination
REFUSED_OUT_OF_RESOURCES = 0xA700

PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
FIND_MODELS = {str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
               str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT}
MOVE_MODELS = {str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
               str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT}
GET_MODELS = {str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
              str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT}
SOP_CLASSES = {**FIND_MODELS, **MOVE_MODELS, **GET_MODELS}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}
CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}


def _p(name):
    return lambda v: v["patient"].get(name) or ""


def _r(name):
    return lambda v: v.get(name) or ""


def _count(name):
    return lambda v: v.get(name) if v.get(name) is not None else ""


# keyword -> (level it belongs to, its value in an answer's view, matched by fieldkit.dicom.matching)
KEYS: dict[str, tuple[str, object, bool]] = {
    "PatientName": ("PATIENT", _p("name"), True),
    "PatientID": ("PATIENT", _r("patient_id"), True),
    "IssuerOfPatientID": ("PATIENT", _r("issuer"), False),
    "PatientBirthDate": ("PATIENT", _p("birth_date"), True),
    "PatientSex": ("PATIENT", _p("sex"), True),
    "NumberOfPatientRelatedStudies": ("PATIENT", _count("studies"), False),
    "NumberOfPatientRelatedSeries": ("PATIENT", _count("series_count"), False),
    "NumberOfPatientRelatedInstances": ("PATIENT", _count("instances"), False),
    "StudyInstanceUID": ("STUDY", _r("study_instance_uid"), True),
    "StudyDate": ("STUDY", _r("study_date"), True),
    "StudyTime": ("STUDY", _r("study_time"), True),
    "AccessionNumber": ("STUDY", _r("accession_number"), True),
    "StudyID": ("STUDY", _r("study_id"), True),
    "StudyDescription": ("STUDY", _r("study_description"), True),
    "ReferringPhysicianName": ("STUDY", _r("referring_physician"), True),
    "ModalitiesInStudy": ("STUDY", _r("modalities"), True),
    "NumberOfStudyRelatedSeries": ("STUDY", _count("series_count"), False),
    "NumberOfStudyRelatedInstances": ("STUDY", _count("instances"), False),
    "SeriesInstanceUID": ("SERIES", _r("series_instance_uid"), True),
    "Modality": ("SERIES", _r("modality"), True),
    "SeriesNumber": ("SERIES", _r("series_number"), True),
    "SeriesDescription": ("SERIES", _r("series_description"), True),
    "NumberOfSeriesRelatedInstances": ("SERIES", _count("instances"), False),
    "SOPInstanceUID": ("IMAGE", _r("sop_instance_uid"), True),
    "SOPClassUID": ("IMAGE", _r("sop_class_uid"), True),
    "InstanceNumber": ("IMAGE", _r("instance_number"), True),
    "NumberOfFrames": ("IMAGE", _r("frames"), False),
    "Rows": ("IMAGE", _r("rows"), False),
    "Columns": ("IMAGE", _r("columns"), False),
}
_DATE = re.compile(r"[0-9]{8}|[0-9]{8}-|-[0-9]{8}|[0-9]{8}-[0-9]{8}")
_TIME = re.compile(r"[0-9][0-9.:]{0,15}(-[0-9.:]{0,16})?|-[0-9][0-9.:]{0,15}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class QueryError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Query:
    root: str
    level: str
    filters: dict[str, str] = field(default_factory=dict)
    returned: list[str] = field(default_factory=list)     # keywords to answer, in the identifier's order
    unsupported: list[str] = field(default_factory=list)  # keys with a value the kit cannot match on


def _text(elem) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def parse_query(identifier: Dataset, root: str, *, retrieve: bool = False) -> Query:
    """The identifier of a C-FIND (or C-MOVE/C-GET) as a Query; QueryError when it is not one
    the kit can answer (0xA900: wrong level or key, 0xC000: a value it cannot read)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = LEVELS if root == PATIENT_ROOT else LEVELS[1:]
    if level not in allowed:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level[:16]!r} is not one of "
                                                    f"{'/'.join(allowed)}")
    rank = LEVELS.index(level)
    q = Query(root, level)
    for elem in identifier:
        keyword = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if keyword in CONTROL_KEYS or elem.tag.group == 0x0002:
            continue
        if elem.VR == "SQ":
            value = "x" if elem.value else ""
        else:
            value = _text(elem)
        known = KEYS.get(keyword)
        if known is not None:
            key_level = "STUDY" if known[0] == "PATIENT" and root == STUDY_ROOT else known[0]
            if LEVELS.index(key_level) > rank:
                raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} is a {key_level} level key: not "
                                                            f"allowed at the {level} level")
        q.returned.append(keyword)
        if not value or value == "*":
            continue  # universal matching: a return key
        if known is None or not known[2]:
            q.unsupported.append(keyword)
            continue
        _check_value(keyword, elem.VR, value)
        q.filters[keyword] = value
    if retrieve:
        if UNIQUE_KEY[level] not in q.filters:
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"a {level} retrieve needs {UNIQUE_KEY[level]}")
        if q.unsupported:
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"key {q.unsupported[0]} cannot select a retrieve")
    return q


def _check_value(keyword: str, vr: str, value: str) -> None:
    ok = True
    if vr == "DA":
        ok = bool(_DATE.fullmatch(value))
    elif vr == "TM":
        ok = bool(_TIME.fullmatch(value))
    elif vr == "UI":
        ok = all(_UID.fullmatch(u) and len(u) <= 64 for u in uid_list(value))
    if not ok or len(value) > 4096:
        raise QueryError(UNABLE_TO_PROCESS, f"{keyword}: {value[:20]!r} is not a valid {vr} match value")


# -- who may ask ------------------------------------------------------------------------------

def destinations(config) -> dict[str, tuple[str, int]]:
    """The configured C-MOVE destinations: AE title -> (host, port)."""
    out = {}
    for entry in config["dicom.move_destinations"]:
        parsed = move_destination(str(entry))
        if parsed is not None:
            out[parsed[0]] = (parsed[1], parsed[2])
    return out


def qr_titles(config) -> list[str]:
    """Calling AE titles that may query and retrieve (the setting plus the destinations')."""
    return list(dict.fromkeys([str(t).strip() for t in config["dicom.qr_ae_titles"]] + list(destinations(config))))


def role_of(kit, calling_ae: str) -> str | None:
    """The role a calling AE acts as: a Q/R AE reads like a DICOMweb client; a probe is a probe."""
    if calling_ae in qr_titles(kit.config):
        return roles.DICOMWEB_CLIENT
    if calling_ae in probes.registered_titles(kit.store):
        return roles.PROBE
    return None


def refusal(kit, calling_ae: str) -> str:
    """Why this caller may not query or retrieve ('' when it may)."""
    role = role_of(kit, calling_ae)
    if role is None:
        return "AE not registered for query/retrieve (dicom.qr_ae_titles)"
    if not roles.has_permission(role, roles.DICOMWEB_READ):
        return "a probe may send images, not query or retrieve them"
    return ""


# -- finding ----------------------------------------------------------------------------------

def _held(row: dict) -> bool:
    """Rows whose object the kit still holds (retention may have purged it)."""
    return not is_purged(row)


def _search_args(q: Query, level: str) -> dict:
    """Index hints (UIDs, an exact PatientID) and the row test for the catalogue's searches."""
    f = dict(q.filters)
    args: dict = {}
    modalities = f.pop("ModalitiesInStudy", None)
    if modalities:
        args["modalities"] = set(uid_list(modalities))
    pid = f.get("PatientID")
    if pid and "*" not in pid and "?" not in pid and level in ("PATIENT", "STUDY", "IMAGE"):
        args["patient_id"] = pid
    for key, arg in (("StudyInstanceUID", "study_uids"), ("SeriesInstanceUID", "series_uids"),
                     ("SOPInstanceUID", "sop_uids")):
        if key in f:
            args[arg] = uid_list(f[key])
    match = matcher(f)
    args["match"] = lambda row, patient: _held(row) and match(row, patient)
    return args


def find(kit, q: Query) -> list[dict]:
    """The views (one dict per answer, with its "patient") that match the query."""
    store = kit.store
    args = _search_args(q, q.level)
    if q.level in ("PATIENT", "STUDY"):
        args.pop("series_uids", None)
        args.pop("sop_uids", None)
        studies = catalogue.study_summaries(store, **args, **study_hints(q.filters))
        for s in studies:
            s["series_count"] = s["series"]
        if q.level == "STUDY":
            return studies
        by_patient: dict[str, dict] = {}
        for s in studies:
            p = by_patient.setdefault(s["patient_id"], {"patient_id": s["patient_id"], "patient": s["patient"],
                                                        "studies": 0, "series_count": 0, "instances": 0})
            p["studies"] += 1
            p["series_count"] += s["series"]
            p["instances"] += s["instances"]
        return sorted(by_patient.values(), key=lambda p: p["patient_id"])
    if q.level == "SERIES":
        args.pop("sop_uids", None)
        args.pop("patient_id", None)  # checked by the row test
        found = catalogue.search_series(store, **args)
    else:
        modalities = args.pop("modalities", None)
        if modalities:
            match = args["match"]
            in_study = {s["study_instance_uid"] for s in catalogue.search_studies(
                store, study_uids=args.get("study_uids"), patient_id=args.get("patient_id"), modalities=modalities)}
            args["match"] = lambda row, patient: row["study_instance_uid"] in in_study and match(row, patient)
        found = catalogue.search_instances(store, **args)
    pats = catalogue.patient_map(store, {r["patient_id"] for r in found})
    for r in found:
        r["patient"] = pats.get(r["patient_id"], {})
    return found


def answer(view: dict, q: Query, kit, syntax: tuple[bool, bool] = (True, True)) -> Dataset:
    """The identifier of one C-FIND answer: every key asked, with what the kit holds,
    made of raw elements already in the association's encoding (`syntax`: implicit VR,
    little endian), which pydicom writes as they are."""
    return _dataset(_elements(view, q, kit, syntax), syntax)


def _dataset(elements, syntax: tuple[bool, bool]) -> Dataset:
    implicit, little = syntax
    ds = Dataset()
    for tag, vr, data in elements:
        ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, implicit, little, True, False)
    return ds


def _elements(view: dict, q: Query, kit, syntax: tuple[bool, bool]) -> tuple[tuple[int, str, bytes], ...]:
    """(tag, VR, value bytes) of every element of an answer (building and validating a
    pydicom element per key would cost more than the search)."""
    view.setdefault("issuer", kit.config.issuer_of_patient_id)
    little = syntax[1]
    values: list[tuple[int, str, bytes]] = []
    non_ascii = False
    for tag, vr, keyword in _plan(q):
        known = KEYS.get(keyword)
        value = known[1](view) if known is not None else ""
        if vr == "US":
            data = int(value).to_bytes(2, "little" if little else "big") if value not in ("", None) else b""
        else:
            text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
            data = text.encode("utf-8")
            non_ascii = non_ascii or not text.isascii()
            if len(data) % 2:
                data += b"\0" if vr == "UI" else b" "
        values.append((tag, vr, data))
    values += [(0x00080052, "CS", _even(q.level)), (0x00080054, "AE", _even(kit.config["dicom.ae_title"]))]
    if non_ascii:
        values.append((0x00080005, "CS", _even("ISO_IR 192")))
    return tuple(values)


class _Encoded:
    """Encoded answers by their content (elements, syntax): a viewer asks for the same
    study list again and again, and pydicom's encoding is most of an answer's cost.
    Keys are the content itself, so an answer whose study changed is a new key."""

    LIMIT = 50_000
    LIMIT_BYTES = 16 << 20  # of answers and their keys' values: a 50 000-answer cache held ~100 MB

    def __init__(self):
        self._lock = threading.Lock()
        self._data: OrderedDict = OrderedDict()
        self.bytes = 0  # encoded answers and their keys' element values held

    def get(self, elements, syntax: tuple[bool, bool], deflated: bool) -> bytes:
        key = (elements, syntax, deflated)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                return data
        data = encode(_dataset(elements, syntax), *syntax, deflated)
        with self._lock:
            if key not in self._data:
                self.bytes += _cost(key, data)
            self._data[key] = data
            while len(self._data) > self.LIMIT or (self.bytes > self.LIMIT_BYTES and len(self._data) > 1):
                self.bytes -= _cost(*self._data.popitem(last=False))
        return data


def _cost(key, data: bytes) -> int:
    return len(data) + sum(len(value) for _, _, value in key[0])


_ENCODED = _Encoded()


class _PendingSender:
    """The Pending responses of one C-FIND, each identifier already encoded. Yielded as
    datasets, pynetdicom would encode every answer and its command set again with pydicom,
    about a millisecond each: most of the time of a long answer. The command set is the
    same for every Pending response of a query (message ID, SOP class, status), so it is
    encoded once; each answer then goes out as P-DATA fragments (PS3.8 9.3.5.1: a command
    fragment, then data fragments, the last one flagged). pynetdicom sends the final one."""

    def __init__(self, event, status: int):
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = event.request.MessageID
        rsp.AffectedSOPClassUID = event.request.AffectedSOPClassUID
        rsp.Status = status
        rsp.Identifier = BytesIO(b"\0")  # says a data set follows
        message = C_FIND_RSP()
        message.primitive_to_message(rsp)
        self._command = encode(message.command_set, True, True)
        self._assoc, self._dul = event.assoc, event.assoc.dul
        self._context = event.context.context_id
        max_pdu = event.assoc.dimse.maximum_pdu_size
        self._room = max_pdu - 6 if max_pdu else 1 << 30  # PDV item header: length 4, id 1, flags 1

    BACKLOG = 64  # PDUs queued for the association's sender thread, at most

    def send(self, data: bytes) -> None:
        # pynetdicom's sender thread writes queued PDUs to the socket: keep its queue short,
        # so a long answer neither piles up in memory nor outruns a C-CANCEL
        queue = self._dul.to_provider_queue
        deadline = time.monotonic() + 60
        while queue.qsize() > self.BACKLOG and self._assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0005)
        command = P_DATA()
        command.presentation_data_value_list.append((self._context, b"\x03" + self._command))
        self._dul.send_pdu(command)
        for at in range(0, len(data), self._room):
            last = at + self._room >= len(data)
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((self._context, (b"\x02" if last else b"\x00")
                                                       + data[at:at + self._room]))
            self._dul.send_pdu(pdata)


def _even(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b" " if len(data) % 2 else data


def _plan(q: Query) -> list[tuple[int, str, str]]:
    """(tag, VR, keyword) of every key an answer carries (private and unknown tags: none)."""
    out = []
    for keyword in q.returned:
        tag = tag_for_keyword(keyword)
        if tag is None or tag in (0x00080052, 0x00080054, 0x00080005):
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        out.append((tag, vr, keyword))
    return out


# -- the handlers -----------------------------------------------------------------------------

def _drop_debug_dumps(event) -> None:
    for event_type, handler in worklist._DEBUG_DUMPS:
        try:
            event.assoc.unbind(event_type, handler)
        except Exception:  # not bound
            pass


def _caller(event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _identifier(event) -> Dataset:
    try:
        return event.identifier
    except Exception as exc:  # bytes pydicom cannot decode
        raise QueryError(UNABLE_TO_PROCESS, f"cannot read the identifier: {type(exc).__name__}") from None


def handle_find(event, kit, tally: "QRTally | None" = None):
    """EVT_C_FIND for the Q/R models; anything else (the worklist) goes to worklist.handle_find."""
    root = FIND_MODELS.get(str(event.request.AffectedSOPClassUID))
    if root is None:
        yield from worklist.handle_find(event, kit)
        return
    _drop_debug_dumps(event)
    why = refusal(kit, _caller(event))
    if why:
        _tally(tally, event, "refused")
        log.info("C-FIND from %s refused: %s", _caller(event), why)
        yield _status(NOT_AUTHORISED, why), None
        return
    try:
        q = parse_query(_identifier(event), root)
        views = find(kit, q)
        ts = event.context.transfer_syntax
        syntax = (False, True) if ts.is_deflated else (ts.is_implicit_VR, ts.is_little_endian)
        answers = [_ENCODED.get(_elements(v, q, kit, syntax), syntax, ts.is_deflated) for v in views]
    except QueryError as exc:
        yield _status(exc.status, exc.message), None
        return
    except Exception:
        log.exception("C-FIND from %s failed unexpectedly", _caller(event))
        yield _status(UNABLE_TO_PROCESS, "internal error while searching (see the kit log)"), None
        return
    _tally(tally, event, "queries", answers=len(answers))
    sender = _PendingSender(event, PENDING_KEYS_NOT_SUPPORTED if q.unsupported else PENDING)
    for data in answers:
        if event.is_cancelled:
            yield CANCEL, None
            return
        if not event.assoc.is_established:
            return
        sender.send(data)
    yield SUCCESS, None


def _rows_to_send(event, kit, models) -> list[dict]:
    q = parse_query(_identifier(event), models[str(event.request.AffectedSOPClassUID)], retrieve=True)
    args = _search_args(q, "IMAGE")
    modalities = args.pop("modalities", None)
    rows = catalogue.search_instances(kit.store, **args)
    if modalities:
        rows = [r for r in rows if r.get("modality") in modalities]
    return rows


def _for_caller(ds: Dataset, assoc) -> Dataset:
    """A C-GET goes back on the caller's association, in a syntax it accepted: the stored
    one when it did, else (a compressed object, only native syntaxes accepted for its
    class) the pixels decoded into Explicit VR Little Endian, as WADO-RS does."""
    syntax = ds.file_meta.TransferSyntaxUID
    accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                if cx.abstract_syntax == ds.SOPClassUID and cx.as_scu}
    if not syntax.is_compressed or str(syntax) in accepted or not accepted:
        return ds  # as stored (pynetdicom converts between native syntaxes itself)
    ds.decompress(generate_instance_uid=False)  # the same instance, in another syntax
    return ds


def _datasets(event, kit, rows, tally, *, same_association: bool = False):
    """(Pending, stored object) per row, read one at a time; Cancel when asked."""
    for row in rows:
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            ds = catalogue.read_dataset(kit.store, row["sop_instance_uid"])
            if same_association:
                ds = _for_caller(ds, event.assoc)
        except Exception as exc:  # damaged, purged meanwhile, cannot be decoded: a failed sub-operation
            log.warning("an instance could not be read for a retrieve: %s", type(exc).__name__)
            ds = "unreadable"  # pynetdicom counts a non-dataset as a failed sub-operation
        yield PENDING, ds
    _tally(tally, event, "retrieves", instances=len(rows))


def handle_move(event, kit, tally: "QRTally | None" = None):
    """EVT_C_MOVE: the destination (a configured one, else 0xA801), the count, the objects."""
    _drop_debug_dumps(event)
    why = refusal(kit, _caller(event))
    destination = str(event.move_destination or "").strip()
    known = destinations(kit.config).get(destination)
    if why or known is None:
        if why:
            _tally(tally, event, "refused")
            log.info("C-MOVE from %s refused: %s", _caller(event), why)
        else:
            log.info("C-MOVE from %s to unknown destination %r refused", _caller(event), destination[:16])
        yield None, None  # pynetdicom answers 0xA801 (move destination unknown)
        return
    try:
        rows = _rows_to_send(event, kit, MOVE_MODELS)
    except QueryError as exc:
        # pynetdicom reports a failure only after associating with the destination
        yield known[0], known[1], {"contexts": [build_context(Verification)]}
        yield 1
        yield _status(exc.status, exc.message), None
        return
    contexts = [build_context(sop_class, [syntax])
                for sop_class, syntax in sorted({(r["sop_class_uid"], r["transfer_syntax"]) for r in rows})][:128]
    yield known[0], known[1], {"contexts": contexts}
    yield len(rows)
    yield from _datasets(event, kit, rows, tally)


def handle_get(event, kit, tally: "QRTally | None" = None):
    """EVT_C_GET: the objects, as C-STORE sub-operations on the caller's association."""
    _drop_debug_dumps(event)
    why = refusal(kit, _caller(event))
    if why:
        _tally(tally, event, "refused")
        log.info("C-GET from %s refused: %s", _caller(event), why)
        yield 1
        yield _status(NOT_AUTHORISED, why), None
        return
    try:
        rows = _rows_to_send(event, kit, GET_MODELS)
    except QueryError as exc:
        yield 1
        yield _status(exc.status, exc.message), None
        return
    yield len(rows)
    yield from _datasets(event, kit, rows, tally, same_association=True)


def handle_find_locked(event):
    """Q/R and worklist queries while the kit is locked: nothing can be read."""
    from .dimse_server import LOCKED_COMMENT
    yield _status(REFUSED_OUT_OF_RESOURCES, LOCKED_COMMENT), None


def handle_get_locked(event):
    from .dimse_server import LOCKED_COMMENT
    yield 1
    yield _status(REFUSED_OUT_OF_RESOURCES, LOCKED_COMMENT), None


def handle_move_locked(event):
    yield None, None  # no destination can be reached while locked: 0xA801


# -- the audit trail --------------------------------------------------------------------------

def _tally(tally, event, what: str, **counts) -> None:
    if tally is not None:
        tally.add(event.assoc, what, **counts)


class QRTally(AssociationTally):
    """Queries and retrieves per association, audited as one `dicom.query_retrieve` event
    (counts only: the keys asked may name a patient, and the trail keeps no patient data)."""

    ACTION = "dicom.query_retrieve"
    COUNTS = {"queries": 0, "answers": 0, "retrieves": 0, "instances": 0, "refused": 0}

    def add(self, assoc, what: str, **counts) -> None:
        counts[what] = counts.get(what, 0) + 1
        self._add(assoc, **counts)

    def outcome(self, counts: dict) -> str:
        return audit.DENIED if counts["refused"] else audit.OK
