"""The instance catalogue: storing a received DICOM object, and finding it again (layer 2).

`put_instance` (one object) and `Batch` (the parts of a STOW-RS request) are the one way
an object enters the kit, whatever the path (C-STORE, STOW-RS, upload, import, objects
the kit makes). In order:

1. prepare it (dicom.prepare: read and check it - refusals raise InvalidDicom with a
   reason code and a message -, decode the first frame, which proves the pixels decode
   and makes the thumbnail);
2. same SOP Instance UID already held with the same content: a duplicate, nothing written;
3. link it to a kit patient (fieldkit.store.patients.link) and stamp the kit PatientID and
   IssuerOfPatientID on the stored copy;
4. write the Part-10 file (elements copied as received, the identity re-encoded) and the
   thumbnail as encrypted blobs, then in ONE store.write (for the whole batch): the
   patient (if new), the catalogue row, an `infer` job and a `sync` job.

Same UID with the same content in another encoding (transfer syntax, byte order: equal
attributes and decoded pixels, dicom.compare) is a duplicate too. Same UID with different
content is kept as a conflict (row flagged, the other copy kept
under `conflicts`), never silently overwritten. Same UID with the same content while the
stored copy is missing or fails verification is a repair: the damaged file is set aside,
the re-sent copy written in its place and the damage record cleared ("stored"). Nothing
is acknowledged before the store.write returned, which is when it is durable.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from typing import Any, Callable, Iterable, Iterator

import pydicom
from pydicom.dataset import Dataset
from tinydb.table import Document

from ..dicom import encode
from ..dicom.compare import same_content
from ..dicom.identity import stamp
from ..dicom.prepare import Prepared, guarded, prepare
from ..dicom.frames import DecodeError
from ..dicom.thumbnails import thumbnail_of
from ..errors import NotFound, StoreCorrupt, TooLarge
from ..events import INSTANCE_CONFLICT, INSTANCE_REPAIRED, INSTANCE_STORED
from ..records import KIND_INFER, KIND_SYNC, T_INSTANCES, T_PATIENTS, infer_priority, is_purged, sync_priority
from . import findings, patients, probes
from .scrub import clear_damage, verify_blob

log = logging.getLogger(__name__)
SOURCES = ("dimse", "stow", "upload", "import", "kit")
STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"
REPAIRED = "repaired"  # answered as "stored"


class _Raced(Exception):
    """Another writer linked the same study/patient first: decide again."""


def _doc_for(db, sop_uid: str) -> Document | None:
    """The live row of `sop_uid` (through the store's SOP Instance UID index)."""
    keys = db.storage.keys(T_INSTANCES, "sop_instance_uid", sop_uid)
    return Document(db.storage.doc(T_INSTANCES, keys[0]), int(keys[0])) if keys else None


def _study_patient(db, study_uid: str) -> str:
    key = db.storage.last_key(T_INSTANCES, "study_instance_uid", study_uid)
    return db.storage.doc(T_INSTANCES, key)["patient_id"] if key else ""


def _update(db, sop_uid: str, fields: dict) -> None:
    keys = db.storage.keys(T_INSTANCES, "sop_instance_uid", sop_uid)
    if keys:
        db.table(T_INSTANCES).update(fields, doc_ids=[int(k) for k in keys])


SYNC_FIELDS = {"sync_state", "sync_reason", "sync_wire", "sync_wire_syntax", "sync_alone", "confirmed_at",
               "retrieve_url", "confirmed_patient_id", "correction"}


def set_sync_state(store, sop_uid: str, **fields) -> None:
    """Record how sending `sop_uid` to the hospital went (sync_state, sync_reason,
    confirmed_at, retrieve_url, ...). Joins the caller's store.write when inside one."""
    unknown = set(fields) - SYNC_FIELDS
    if unknown:
        raise ValueError(f"not a sync field: {', '.join(sorted(unknown))}")
    store.write(lambda db: _update(db, sop_uid, fields))


def set_lung_zone(store, sop_uid: str, zone: str) -> str:
    """Record which lung zone a capture was taken in ("" clears it); returns its patient.
    The caller checks `zone` against the zones it offers."""
    def fn(db):
        doc = _doc_for(db, sop_uid)
        if doc is None:
            raise NotFound("no such capture on this kit")
        _update(db, sop_uid, {"lung_zone": zone})
        return doc.get("patient_id", "")
    return store.write(fn)


def get_instance(store, sop_uid: str) -> dict | None:
    return store.read(lambda db: (lambda d: dict(d) if d else None)(_doc_for(db, sop_uid)))


def put_instance(store, data: bytes | Dataset | Prepared, source: str, *, transfer_syntax: str | None = None,
                 from_picture: bool = False, raw: dict | None = None, calling_ae: str = "") -> dict:
    """Store one object (`calling_ae`: the probe that sent it over DIMSE). `data` is a Part-10 file, or (with `transfer_syntax`) a bare
    dataset as received over DIMSE, or a pydicom Dataset (read from bytes - then `raw` is
    its element dict as read, before anything converted an element - or built by the kit),
    or an object already prepared (dicom.prepare.prepare).

    Returns {"status": "stored"|"duplicate"|"conflict", "sop_instance_uid", "patient_id",
    "instance": row, "message"}; raises parse.InvalidDicom (a BadInput) when refused.
    """
    batch = Batch(store, source, calling_ae=calling_ae)
    batch.add(data, transfer_syntax=transfer_syntax, from_picture=from_picture, raw=raw)
    return batch.commit()[0]


class _Item:
    """One object between its checks and its catalogue row."""

    def __init__(self, prepared: Prepared, from_picture: bool, calling_ae: str = ""):
        self.facts, self.src, self.digest = prepared.facts, prepared.source, prepared.encoded.digest
        self.calling_ae = calling_ae  # the probe that sent it (DIMSE), for probe sessions
        self.linked_by = ""
        self.encoded: encode.Encoded | None = prepared.encoded
        self.thumb, self.decode_error, self.meta = prepared.thumbnail, prepared.decode_error, prepared.descriptive
        self.from_picture = from_picture
        self.linked: dict | None = None
        self.new_patient: dict | None = None
        self.row: dict = {}
        self.outcome: tuple[str, dict] | None = None  # (status, row) once committed
        self.repairs: str | None = None  # address of the damaged copy this one replaces


class Batch:
    """Objects stored together (the parts of one STOW-RS request, or a single object).

    `add` reads, checks, links and writes each object as it comes (refusals raise there,
    one object at a time); its blobs are fsynced in the background meanwhile. `commit`
    waits for those fsyncs, then writes every catalogue row, queue job and new patient in
    ONE store.write, and returns one result per added object, in order. Nothing is
    acknowledged before `commit` returned, which is when all of it is durable.

    Objects of one batch that need the same new patient (same probe PatientID, or same
    study) get one: later objects reuse the patient an earlier one will create."""

    def __init__(self, store, source: str, calling_ae: str = ""):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        self.store, self.source, self.calling_ae = store, source, calling_ae
        self._blobs = store.blobs.batch()
        self._entries: list = []  # a final result (duplicate) or an _Item
        self._new_by_study: dict[str, dict] = {}
        self._new_by_alias: dict[tuple[str, str], dict] = {}
        self._cap = int(store.config["dicom.max_object_mb"]) * (1 << 20)

    def add(self, data: bytes | Dataset | Prepared, *, transfer_syntax: str | None = None,
            from_picture: bool = False, raw: dict | None = None) -> int:
        """Take one object (see put_instance for `data` and `raw`); returns its index in
        `commit()`'s results. Raises parse.InvalidDicom when it is refused."""
        if isinstance(data, Prepared):
            return self._accept(data, from_picture)
        if not isinstance(data, Dataset) and len(data) > self._cap:
            raise TooLarge(f"object of {len(data) >> 20} MiB is over the kit's "
                           f"{self.store.config['dicom.max_object_mb']} MiB limit (dicom.max_object_mb)")
        return self._accept(prepare(data, transfer_syntax=transfer_syntax, raw=raw), from_picture)

    def _accept(self, prepared: Prepared, from_picture: bool) -> int:
        """Link and write an object once prepared; its index in `commit()`'s results."""
        existing = get_instance(self.store, prepared.sop_instance_uid)
        repair = (existing is not None and prepared.encoded.digest == existing.get("digest")
                  and existing.get("blob") and verify_blob(self.store, existing["blob"]) is not None)
        if existing and prepared.encoded.digest in _digests(existing) and not repair:
            self._entries.append(_result(DUPLICATE, existing, "already stored with identical content"))
            return len(self._entries) - 1
        if existing and not repair and _same_content(self.store, existing, prepared):
            self._entries.append(_result(DUPLICATE, existing, "already stored with the same content "
                                                              "(in another encoding)"))
            return len(self._entries) - 1
        item = _Item(prepared, from_picture, self.calling_ae)
        if repair:  # the same capture again, and the stored copy is damaged: it takes its place
            self.store.blobs.set_aside(existing["blob"])
            item.repairs = existing["blob"]
            item.linked = {"id": existing["patient_id"]}
            item.linked_by = existing.get("linked_by", "")
        else:
            self._link(item, in_batch=True)
        self._write(item, self._blobs)
        # let go of the encoded copy: a batch of large cines must not sit in memory until
        # its commit (a rare retry reads the written copy back)
        item.encoded = item.thumb = None
        self._entries.append(item)
        return len(self._entries) - 1

    def _link(self, item: _Item, in_batch: bool) -> None:
        """Decide the kit patient (existing, or a new row inserted at commit)."""
        store, src, facts = self.store, item.src, item.facts
        issuer = store.config.issuer_of_patient_id
        item.linked, item.linked_by = store.read(lambda db: _link(db, store, item, issuer))
        item.new_patient = None
        if item.linked is not None:
            return
        study = facts["study_instance_uid"]
        alias = (src.issuer, src.patient_id) if src.patient_id and not src.is_generic else None
        if in_batch:
            earlier = self._new_by_study.get(study) or (self._new_by_alias.get(alias) if alias else None)
            if earlier is not None:
                item.linked = earlier  # created by an earlier object of this batch
                return
        item.new_patient = patients.make_row(
            store.read(patients.fresh_id), name=src.name, birth_date=src.birth_date,
            sex=src.sex if src.sex in ("M", "F", "O") else "", aliases=[list(alias)] if alias else [],
            origin=patients.ORIGIN_CAPTURE)
        if in_batch:
            self._new_by_study[study] = item.new_patient
            if alias:
                self._new_by_alias[alias] = item.new_patient

    def _write(self, item: _Item, blobs) -> None:
        """Stamp the kit identity on the copy and write it (and the preview) as blobs."""
        sop_uid = item.facts["sop_instance_uid"]
        if item.encoded is None:  # a retry: the copy written first differs only in its identity
            with self.store.blobs.open(item.row["blob"], item.row["size"]) as fh:
                item.encoded = prepare(fh, thumbnail=False).encoded
        encoded = item.encoded
        pid = (item.new_patient or item.linked)["id"]
        # stamped from the identity as received (item.src), also on a retry
        guarded(lambda: stamp(encoded.identity, pid, self.store.config.issuer_of_patient_id, item.src), sop_uid)
        thumb = blobs.put_cache(item.thumb).addr if item.thumb else item.row.get("thumbnail")
        with blobs.writer() as writer:  # streamed: the pixel data is not copied again
            guarded(lambda: encoded.write_part10(_chunked(writer.write)), sop_uid)
        facts = item.facts
        item.row = {**{k: facts[k] for k in ("sop_instance_uid", "sop_class_uid", "study_instance_uid",
                                               "series_instance_uid", "transfer_syntax", "frames", "rows",
                                               "columns", "frame_time_ms")},
                    "patient_id": pid, "modality": facts["modality"],
                    "study_date": facts["study_date"], "blob": writer.ref.addr, "size": writer.ref.size,
                    "thumbnail": thumb, "source": self.source,
                    "from_picture": bool(item.from_picture), "conflict": False, "received_at": time.time(),
                    "decode_error": item.decode_error, "digest": item.digest, "conflicts": [],
                    "linked_by": item.linked_by or "new patient",
                    "calling_ae": item.calling_ae,  # the probe that sent it, shown on unassigned captures
                    **item.meta}

    def commit(self) -> list[dict]:
        store = self.store
        self._blobs.wait()
        items = [e for e in self._entries if isinstance(e, _Item)]
        if items:
            def fn(db):
                for item in items:
                    try:
                        item.outcome = _commit(store, db, item)
                    except _Raced:
                        item.outcome = None
            store.write(fn)
            for item in items:
                if item.outcome is None:  # another writer linked this study/patient first
                    item.outcome = self._retry(item)
        return [entry if isinstance(entry, dict) else self._announce(*entry.outcome) for entry in self._entries]

    def _retry(self, item: _Item):
        store = self.store
        for _attempt in range(5):
            self._link(item, in_batch=False)
            blobs = store.blobs.batch()
            self._write(item, blobs)
            item.encoded = None
            blobs.wait()
            try:
                return store.write(lambda db: _commit(store, db, item))
            except _Raced:
                continue
        raise RuntimeError("could not link the instance to a patient after 5 attempts")

    def _announce(self, status: str, stored: dict) -> dict:
        store, sop_uid = self.store, stored["sop_instance_uid"]
        if status == STORED:
            store.events.publish(INSTANCE_STORED, sop_instance_uid=sop_uid, patient_id=stored["patient_id"],
                                 source=self.source)
            return _result(STORED, stored, "stored")
        if status == REPAIRED:
            log.warning("a damaged stored capture was repaired by a re-sent identical copy")
            store.events.publish(INSTANCE_REPAIRED, sop_instance_uid=sop_uid, patient_id=stored["patient_id"])
            return _result(STORED, stored, "the stored copy was damaged: replaced by this identical one")
        if status == CONFLICT:
            log.warning("instance stored as a conflict: same SOP Instance UID, different content")
            store.events.publish(INSTANCE_CONFLICT, sop_instance_uid=sop_uid, patient_id=stored["patient_id"])
            return _result(CONFLICT, stored, "SOP Instance UID already held with different content: "
                                             "kept as a conflict for review, the first copy is unchanged")
        return _result(DUPLICATE, stored, "already stored with identical content")


def _chunked(write, size: int = 1 << 20):
    """Hand a large piece to the blob writer in 1 MiB slices (views, not copies), so the
    writer never buffers a whole cine."""
    def out(piece) -> None:
        view = memoryview(piece)
        for start in range(0, len(view), size):
            write(view[start:start + size])
    return out


def _link(db, store, item: _Item, issuer: str) -> tuple[dict | None, str]:
    src, study = item.src, item.facts["study_instance_uid"]
    return patients.link_with_reason(
        db, patient_id=src.patient_id, issuer=src.issuer, kit_issuer=issuer, is_generic=src.is_generic,
        study_instance_uid=study, study_patient_id=_study_patient(db, study),
        accession=(item.meta or {}).get("accession_number", ""), uid_root=store.config["kit.uid_root"],
        session_patient_id=probes.session_patient(db, item.calling_ae))


def _commit(store, db, item: _Item):
    """Inside store.write: validation first (may raise _Raced), then every change."""
    row, linked, new_patient, facts = item.row, item.linked, item.new_patient, item.facts
    sop_uid = row["sop_instance_uid"]
    existing = _doc_for(db, sop_uid)
    if existing is not None:
        if item.repairs is not None and row["digest"] == existing.get("digest"):
            fix = {"blob": row["blob"], "size": row["size"], "thumbnail": row["thumbnail"] or existing.get("thumbnail")}
            db.table(T_INSTANCES).update(fix, doc_ids=[existing.doc_id])
            clear_damage(db, item.repairs)
            clear_damage(db, row["blob"])
            return REPAIRED, {**existing, **fix}
        if row["digest"] in _digests(existing):
            return DUPLICATE, dict(existing)
        copy = {k: row[k] for k in ("blob", "size", "digest", "source", "received_at", "patient_id")}
        conflicts = list(existing.get("conflicts") or []) + [copy]
        db.table(T_INSTANCES).update({"conflict": True, "conflicts": conflicts}, doc_ids=[existing.doc_id])
        return CONFLICT, {**existing, "conflict": True, "conflicts": conflicts}
    now_linked, _ = _link(db, store, item, store.config.issuer_of_patient_id)
    if (now_linked or {}).get("id") != (linked or {}).get("id"):
        raise _Raced()
    if new_patient is not None:
        if patients._get(db, new_patient["id"]):
            raise _Raced()
        db.table(T_PATIENTS).insert(new_patient)
        triage = new_patient["triage"]
    else:
        triage = linked.get("triage", "none")
    db.table(T_INSTANCES).insert(row)
    if facts["is_image"]:
        store.queue.enqueue(KIND_INFER, {"sop_instance_uid": sop_uid}, priority=infer_priority(triage), key=sop_uid)
    what = "image" if facts["is_image"] else "finding"
    store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": sop_uid}, priority=sync_priority(triage, what), key=sop_uid)
    return STORED, row


def _same_content(store, existing: dict, prepared: Prepared) -> bool:
    """The same object as the stored copy, in another encoding (transfer syntax, byte
    order, VR form): attributes and decoded pixels equal, identity as the kit stamped it.
    Both copies are read in memory only; rare (same UID, other bytes), so not indexed."""
    if is_purged(existing):
        return False
    try:
        with store.blobs.open(existing["blob"], existing["size"]) as fh:
            held = pydicom.dcmread(fh)
        new = pydicom.dcmread(io.BytesIO(prepared.encoded.part10()))
        src = prepared.source  # the identity as received, which the stored copy carries stamped
        others = {(str(o.get("PatientID", "")), str(o.get("IssuerOfPatientID", "")))
                  for o in held.get("OtherPatientIDsSequence", []) or []}
        if src.patient_id and src.patient_id != str(held.get("PatientID", "")) and \
                (src.patient_id, src.issuer) not in others:
            return False
        return same_content(held, new)
    except Exception as exc:  # a copy that does not read or compare is not shown to be the same
        log.warning("could not compare a re-sent instance with the stored copy: %s", type(exc).__name__)
        return False


def _digests(row: dict) -> set[str]:
    return {row.get("digest")} | {c.get("digest") for c in row.get("conflicts") or []}


def _result(status: str, row: dict, message: str) -> dict:
    return {"status": status, "sop_instance_uid": row["sop_instance_uid"], "patient_id": row["patient_id"],
            "instance": dict(row), "message": message}


# -- queries (QIDO-RS and the UI) --------------------------------------------------------
#
# Every query starts from the store's indexes (patient, study, series, SOP Instance UID),
# checks the live rows in place, applies offset/limit, and copies only what it returns.
# `match(row, patient)` is an extra test on the live row and its patient (read-only).

Match = Callable[[dict, dict], bool]


def _table(db) -> dict[str, dict]:
    return db.storage.read().get(T_INSTANCES, {})


def _candidates(db, patient_id, study_uids, series_uids, sop_uids) -> list[str] | None:
    """Keys of the rows that may match, from the most selective index asked; None: all."""
    storage = db.storage
    for field, values in (("sop_instance_uid", sop_uids), ("series_instance_uid", series_uids),
                          ("study_instance_uid", study_uids),
                          ("patient_id", None if patient_id is None else [patient_id])):
        if values is not None:
            keys = {k for v in values for k in storage.keys(T_INSTANCES, field, v)}
            return sorted(keys, key=int)
    return None


def _patient_of(db) -> Callable[[str], dict]:
    storage, cache = db.storage, {}

    def get(pid: str) -> dict:
        if pid not in cache:
            keys = storage.keys(T_PATIENTS, "id", pid)
            cache[pid] = storage.doc(T_PATIENTS, keys[0]) if keys else {}
        return cache[pid]
    return get


def _matching(db, patient_id=None, study_uids=None, series_uids=None, sop_uids=None,
              match: Match | None = None, keys: list[str] | None = None) -> Iterator[dict]:
    """The live rows meeting every condition given (not copies: never change them)."""
    table = _table(db)
    if keys is None:
        keys = _candidates(db, patient_id, study_uids, series_uids, sop_uids)
    docs = table.values() if keys is None else (table[k] for k in keys if k in table)
    patient = _patient_of(db) if match is not None else None
    for d in docs:
        if patient_id is not None and d["patient_id"] != patient_id:
            continue
        if study_uids is not None and d["study_instance_uid"] not in study_uids:
            continue
        if series_uids is not None and d["series_instance_uid"] not in series_uids:
            continue
        if sop_uids is not None and d["sop_instance_uid"] not in sop_uids:
            continue
        if match is not None and not match(d, patient(d["patient_id"])):
            continue
        yield d


def _window(items, offset: int, limit: int | None) -> list:
    items = list(items) if not isinstance(items, list) else items
    return items[offset:offset + limit] if limit else items[offset:]


def rows_as_held(store, patient_id: str) -> list[dict]:
    """A patient's catalogue rows as the store holds them, not copies, in the order they
    were stored: for a reader that only reads them (the board). A write replaces a row and
    never changes it in place, so they stay as read."""
    return store.read(lambda db: list(_matching(db, patient_id)))


def instance_rows(store, *, patient_id: str | None = None, study_uid: str | None = None,
                  series_uid: str | None = None, match: Match | None = None, offset: int = 0,
                  limit: int | None = None, sort: Callable[[dict], Any] | None = None) -> list[dict]:
    """Catalogue rows (copies), filtered through the indexes; `sort` orders them before
    offset/limit are applied. Without `sort`, in the order they were stored."""
    def fn(db):
        rows = _matching(db, patient_id, None if study_uid is None else (study_uid,),
                         None if series_uid is None else (series_uid,), match=match)
        if sort is not None:
            rows = sorted(rows, key=sort)
        elif limit:
            rows = itertools.islice(rows, offset, offset + limit)
            return [dict(r) for r in rows]
        return [dict(r) for r in _window(rows, offset, limit)]
    return store.read(fn)


def search_instances(store, *, patient_id=None, study_uids=None, series_uids=None, sop_uids=None,
                     match: Match | None = None, offset: int = 0, limit: int | None = None) -> list[dict]:
    """QIDO-RS instance search: study, series, instance number, time of receipt order."""
    def fn(db):
        rows = sorted(_matching(db, patient_id, study_uids, series_uids, sop_uids, match),
                      key=lambda r: (r["study_instance_uid"], r["series_instance_uid"],
                                     str(r.get("instance_number") or "").zfill(8), r["received_at"]))
        return [dict(r) for r in _window(rows, offset, limit)]
    return store.read(fn)


def patient_map(store, ids: Iterable[str] | None = None) -> dict[str, dict]:
    """Patients by id (copies): those named in `ids`, or every one."""
    if ids is None:
        return store.read(lambda db: {p["id"]: dict(p) for p in db.table(T_PATIENTS).all()})

    def fn(db):
        patient = _patient_of(db)
        return {pid: dict(patient(pid)) for pid in set(ids) if patient(pid)}
    return store.read(fn)


def _study_summary(rows: list[dict]) -> dict:
    first = rows[0]
    return {"study_instance_uid": first["study_instance_uid"], "patient_id": first["patient_id"],
            "study_date": first.get("study_date", ""), "study_time": first.get("study_time", ""),
            "accession_number": first.get("accession_number", ""),
            "study_description": first.get("study_description", ""), "study_id": first.get("study_id", ""),
            "referring_physician": first.get("referring_physician", ""),
            "modalities": sorted({r.get("modality") or "" for r in rows} - {""}),
            "series": len({r["series_instance_uid"] for r in rows}), "instances": len(rows),
            "received_at": max(r["received_at"] for r in rows)}


def _newest_studies(table: dict) -> Iterator[str]:
    """Every study, the one with the newest row first: rows sit in the table in the order
    they were stored, so walking it backwards finds them without sorting every study."""
    seen: set[str] = set()
    for row in reversed(table.values()):
        uid = row["study_instance_uid"]
        if uid not in seen:
            seen.add(uid)
            yield uid


def _studies_by_filter(storage, table, accession: str | None, study_dates: tuple[str, str] | None) -> list[str] | None:
    """Studies holding a row with this exact AccessionNumber, or else a StudyDate in
    [lo, hi] (either end may be ""), from their indexes: a superset of the studies the
    same filter matches row by row. None when neither filter is given."""
    if accession is not None:
        keys = storage.keys(T_INSTANCES, "accession_number", accession)
    elif study_dates is not None:
        lo, hi = study_dates
        keys = [k for v in storage.values(T_INSTANCES, "study_date")
                if isinstance(v, str) and v and (not lo or v >= lo) and (not hi or v <= hi)
                for k in storage.keys(T_INSTANCES, "study_date", v)]
    else:
        return None
    return list(dict.fromkeys(table[k]["study_instance_uid"] for k in keys))


def search_studies(store, *, patient_id: str | None = None, study_uids=None, match: Match | None = None,
                   modalities: set[str] | None = None, offset: int = 0, limit: int | None = None,
                   accession: str | None = None, study_dates: tuple[str, str] | None = None) -> list[dict]:
    """QIDO-RS study search, newest first. Studies are taken in the order of their latest
    row and tested one by one until the page is full: only the studies returned are summed
    up. A study matches when one of its rows matches `match`
    (and, with `modalities`, holds one of them); its figures count the matching rows.

    `accession` (an exact AccessionNumber) and `study_dates` (a StudyDate range) only pick
    the candidate studies through their indexes; `match` must still test them on the rows."""
    def fn(db):
        storage, table = db.storage, _table(db)
        by_filter = None
        if study_uids is None and patient_id is None:
            by_filter = _studies_by_filter(storage, table, accession, study_dates)
        if study_uids is not None or patient_id is not None or by_filter is not None:
            if study_uids is not None:
                uids = [u for u in dict.fromkeys(study_uids) if storage.count(T_INSTANCES, "study_instance_uid", u)]
            elif patient_id is not None:
                uids = list(dict.fromkeys(table[k]["study_instance_uid"]
                                          for k in storage.keys(T_INSTANCES, "patient_id", patient_id)))
            else:
                uids = by_filter
            latest = {u: table[storage.last_key(T_INSTANCES, "study_instance_uid", u)]["received_at"]
                      for u in uids}
            uids.sort(key=latest.__getitem__, reverse=True)
        else:
            uids = _newest_studies(table)
        out, skip = [], offset
        for uid in uids:
            keys = storage.keys(T_INSTANCES, "study_instance_uid", uid)
            rows = list(_matching(db, patient_id, (uid,), match=match, keys=keys))
            if not rows:
                continue
            if modalities and not modalities & {table[k].get("modality") or "" for k in keys}:
                continue
            if skip:
                skip -= 1
                continue
            out.append(_study_summary(rows))
            if limit and len(out) >= limit:
                break
        patient = _patient_of(db)
        for s in out:
            s["patient"] = dict(patient(s["patient_id"]))
        return out
    return store.read(fn)


def study_summaries(store, *, patient_id: str | None = None, study_uids=None, match: Match | None = None,
                    modalities: set[str] | None = None, accession: str | None = None,
                    study_dates: tuple[str, str] | None = None) -> list[dict]:
    """Every study with a row meeting the conditions, summed over those rows, newest first:
    one pass over the candidate rows, for a search that answers every match (C-FIND) where
    search_studies pages. With `modalities`, studies whose matching rows hold one of them.
    `accession` and `study_dates` pick the candidate studies through their indexes, as in
    search_studies; `match` still tests the rows."""
    def fn(db):
        uids = study_uids
        if uids is None and patient_id is None:
            uids = _studies_by_filter(db.storage, _table(db), accession, study_dates)
        groups: dict[str, list[dict]] = {}
        for d in _matching(db, patient_id, uids, None, None, match):
            groups.setdefault(d["study_instance_uid"], []).append(d)
        out = [_study_summary(rows) for rows in groups.values()]
        if modalities:
            out = [s for s in out if modalities & set(s["modalities"])]
        out.sort(key=lambda s: s["received_at"], reverse=True)
        patient = _patient_of(db)
        for s in out:
            s["patient"] = dict(patient(s["patient_id"]))
        return out
    return store.read(fn)


def _series_of(rows) -> list[dict]:
    """Group instance rows into series, in series number order."""
    by_series: dict[str, dict] = {}
    for r in rows:
        s = by_series.setdefault(r["series_instance_uid"], {
            "series_instance_uid": r["series_instance_uid"], "study_instance_uid": r["study_instance_uid"],
            "patient_id": r["patient_id"], "modality": r.get("modality", ""),
            "series_number": r.get("series_number", ""), "series_description": r.get("series_description", ""),
            "instances": 0, "received_at": r["received_at"]})
        s["instances"] += 1
    return sorted(by_series.values(), key=lambda s: (str(s["series_number"]).zfill(8), s["received_at"]))


def search_series(store, *, study_uids=None, series_uids=None, match: Match | None = None,
                  modalities: set[str] | None = None, offset: int = 0, limit: int | None = None) -> list[dict]:
    """QIDO-RS series search: summaries built from the live rows, then the page."""
    def fn(db):
        rows = _matching(db, None, study_uids, series_uids, None, match)
        if modalities:
            storage, table = db.storage, _table(db)
            held: dict[str, bool] = {}

            def in_study(r):
                uid = r["study_instance_uid"]
                if uid not in held:
                    held[uid] = bool(modalities & {table[k].get("modality") or ""
                                                   for k in storage.keys(T_INSTANCES, "study_instance_uid", uid)})
                return held[uid]
            rows = filter(in_study, rows)
        return _window(_series_of(rows), offset, limit)
    return store.read(fn)


# -- retention (fieldkit.sync.retention decides which, this keeps the books) ------------------

def _pixel_refs(row: dict) -> set[str]:
    """Blobs an instance row holds: the object, its preview, conflicting copies."""
    refs = {row.get("blob"), row.get("thumbnail")} | {c.get("blob") for c in row.get("conflicts") or []}
    return refs - {None, ""}


def purge_plan(store, expired: Callable[[dict], bool]) -> tuple[list[dict], list[str], set[str]]:
    """Rows still holding pixels for which `expired(row)` is true -> (those rows, ids of
    their findings with an overlay, blob addresses nothing that stays points at). Blobs are
    content-addressed: one is doomed only when no live instance, conflicting copy or
    finding of a live instance still uses it."""
    def pick(db):
        rows = _table(db).values()
        victims = [dict(r) for r in rows if not r.get("purged_at") and r.get("blob") and expired(r)]
        going = {v["sop_instance_uid"] for v in victims}
        keep: set[str] = set()
        doomed: set[str] = set()
        for r in rows:
            if not r.get("purged_at"):
                (doomed if r["sop_instance_uid"] in going else keep).update(_pixel_refs(r))
        overlays = findings.with_overlays(db)
        for f in overlays:
            (doomed if f["sop_instance_uid"] in going else keep).add(f["overlay"])
        return victims, [f["id"] for f in overlays if f["sop_instance_uid"] in going], doomed - keep
    return store.read(pick)


def mark_purged(store, victims: list[dict], finding_ids: list[str], now: float) -> None:
    """Leave a tombstone for each purged instance (UIDs, patient, confirmation, retrieve
    URL stay; `blob` and `thumbnail` become ""), and drop its findings' overlays."""
    def mark(db):
        for v in victims:
            conflicts = [{**c, "blob": ""} for c in v.get("conflicts") or []]
            _update(db, v["sop_instance_uid"], {"purged_at": now, "blob": "", "thumbnail": "",
                                                "purged_blob_size": v.get("size", 0), "conflicts": conflicts})
        findings.clear_overlays(db, finding_ids)
    store.write(mark)


def thumbnail_bytes(store, row: dict) -> bytes:
    """A capture's JPEG preview. Previews are written without fsync (BlobStore.put_cache):
    one that a power cut lost or damaged is made again from the capture and put back."""
    try:
        return store.blobs.get_bytes(row["thumbnail"])
    except (NotFound, StoreCorrupt):
        pass
    try:
        data = thumbnail_of(read_dataset(store, row["sop_instance_uid"]))
    except DecodeError:
        raise NotFound("the preview was lost and the capture cannot be decoded to make it again") from None
    ref = store.blobs.put_cache(data)
    if ref.addr != row["thumbnail"]:  # made by another version of the encoder
        sop_uid = row["sop_instance_uid"]
        store.write(lambda db: _update(db, sop_uid, {"thumbnail": ref.addr}))
    log.warning("a capture's preview was missing or damaged; it was made again")
    return data


def read_dataset(store, sop_uid: str, stop_before_pixels: bool = False) -> Dataset:
    """The stored Part-10 object, parsed (what WADO-RS, inference and sync read)."""
    import io

    import pydicom

    row = get_instance(store, sop_uid)
    if row is None:
        raise NotFound(f"no instance {sop_uid}")
    if stop_before_pixels:  # decrypt only the chunks the header needs, not a whole cine
        with store.blobs.open(row["blob"], row["size"]) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=True)
    return pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
