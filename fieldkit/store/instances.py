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

Same UID with different content is kept as a conflict (row flagged, the other copy kept
under `conflicts`), never silently overwritten. Nothing is acknowledged before the
store.write returned, which is when it is durable.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from pydicom.dataset import Dataset
from tinydb import Query

from ..dicom import parse
from ..dicom.identity import stamp
from ..dicom.prepare import Prepared, guarded, prepare
from ..dicom.frames import DecodeError
from ..dicom.thumbnails import thumbnail_of
from ..errors import NotFound, StoreCorrupt, TooLarge
from ..records import KIND_INFER, KIND_SYNC, T_INSTANCES, T_PATIENTS, infer_priority, sync_priority
from . import patients

log = logging.getLogger(__name__)
_I = Query()
SOURCES = ("dimse", "stow", "upload", "import", "kit")
STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"


class _Raced(Exception):
    """Another writer linked the same study/patient first: decide again."""


# Per store: sop uid -> TinyDB doc id, and study uid -> doc id of one of its instances, so
# that linking and de-duplication cost the same with 10 or 100 000 instances. Every use is
# checked against the row it points to; a stale index is rebuilt.
_index_lock = threading.Lock()
_indexes: "weakref.WeakKeyDictionary[Any, tuple[dict[str, int], dict[str, int]]]" = weakref.WeakKeyDictionary()


def _index(db, store) -> tuple[dict[str, int], dict[str, int]]:
    table = db.table(T_INSTANCES)
    index = _indexes.get(store)
    if index is None or len(index[0]) != len(table):
        by_sop, by_study = {}, {}
        for doc in table.all():
            by_sop[doc["sop_instance_uid"]] = doc.doc_id
            by_study.setdefault(doc["study_instance_uid"], doc.doc_id)
        index = _indexes[store] = (by_sop, by_study)
    return index


def _lookup(db, store, which: int, key: str, field: str) -> dict | None:
    table = db.table(T_INSTANCES)
    with _index_lock:
        doc_id = _index(db, store)[which].get(key)
    if doc_id is None:
        return None
    doc = table.get(doc_id=doc_id)
    if doc is not None and doc.get(field) == key:
        return doc
    with _index_lock:
        _indexes.pop(store, None)
    rows = table.search(Query()[field] == key)
    return rows[0] if rows else None


def _doc_for(db, store, sop_uid: str) -> dict | None:
    return _lookup(db, store, 0, sop_uid, "sop_instance_uid")


def _study_patient(db, store, study_uid: str) -> str:
    doc = _lookup(db, store, 1, study_uid, "study_instance_uid")
    return doc["patient_id"] if doc else ""


def _remember(store, row: dict, doc_id: int) -> None:
    with _index_lock:
        index = _indexes.get(store)
        if index is not None:
            index[0][row["sop_instance_uid"]] = doc_id
            index[1].setdefault(row["study_instance_uid"], doc_id)


def get_instance(store, sop_uid: str) -> dict | None:
    return store.read(lambda db: (lambda d: dict(d) if d else None)(_doc_for(db, store, sop_uid)))


def put_instance(store, data: bytes | Dataset | Prepared, source: str, *, transfer_syntax: str | None = None,
                 from_picture: bool = False, raw: dict | None = None) -> dict:
    """Store one object. `data` is a Part-10 file, or (with `transfer_syntax`) a bare
    dataset as received over DIMSE, or a pydicom Dataset (read from bytes - then `raw` is
    its element dict as read, before anything converted an element - or built by the kit),
    or an object already prepared (dicom.prepare.prepare).

    Returns {"status": "stored"|"duplicate"|"conflict", "sop_instance_uid", "patient_id",
    "instance": row, "message"}; raises parse.InvalidDicom (a BadInput) when refused.
    """
    batch = Batch(store, source)
    batch.add(data, transfer_syntax=transfer_syntax, from_picture=from_picture, raw=raw)
    return batch.commit()[0]


class _Item:
    """One object between its checks and its catalogue row."""

    def __init__(self, prepared: Prepared, from_picture: bool):
        self.facts, self.src, self.digest = prepared.facts, prepared.source, prepared.encoded.digest
        self.encoded: parse.Encoded | None = prepared.encoded
        self.thumb, self.decode_error, self.meta = prepared.thumbnail, prepared.decode_error, prepared.descriptive
        self.from_picture = from_picture
        self.linked: dict | None = None
        self.new_patient: dict | None = None
        self.row: dict = {}
        self.outcome: tuple[str, dict] | None = None  # (status, row) once committed


class Batch:
    """Objects stored together (the parts of one STOW-RS request, or a single object).

    `add` reads, checks, links and writes each object as it comes (refusals raise there,
    one object at a time); its blobs are fsynced in the background meanwhile. `commit`
    waits for those fsyncs, then writes every catalogue row, queue job and new patient in
    ONE store.write, and returns one result per added object, in order. Nothing is
    acknowledged before `commit` returned, which is when all of it is durable.

    Objects of one batch that need the same new patient (same probe PatientID, or same
    study) get one: later objects reuse the patient an earlier one will create."""

    def __init__(self, store, source: str):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        self.store, self.source = store, source
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
        if existing and prepared.encoded.digest in _digests(existing):
            self._entries.append(_result(DUPLICATE, existing, "already stored with identical content"))
            return len(self._entries) - 1
        item = _Item(prepared, from_picture)
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
        item.linked = store.read(lambda db: _link(db, store, src, issuer, facts))
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
            store.read(patients._fresh_id), name=src.name, birth_date=src.birth_date,
            sex=src.sex if src.sex in ("M", "F", "O") else "", aliases=[list(alias)] if alias else [])
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
            store.events.publish("instance.stored", sop_instance_uid=sop_uid, patient_id=stored["patient_id"],
                                 source=self.source)
            return _result(STORED, stored, "stored")
        if status == CONFLICT:
            log.warning("instance stored as a conflict: same SOP Instance UID, different content")
            store.events.publish("instance.conflict", sop_instance_uid=sop_uid, patient_id=stored["patient_id"])
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


def _link(db, store, src, issuer: str, facts: dict) -> dict | None:
    return patients.link(db, patient_id=src.patient_id, issuer=src.issuer, kit_issuer=issuer,
                         is_generic=src.is_generic, study_instance_uid=facts["study_instance_uid"],
                         study_patient_id=_study_patient(db, store, facts["study_instance_uid"]))


def _commit(store, db, item: _Item):
    """Inside store.write: validation first (may raise _Raced), then every change."""
    row, linked, new_patient, facts = item.row, item.linked, item.new_patient, item.facts
    sop_uid = row["sop_instance_uid"]
    existing = _doc_for(db, store, sop_uid)
    if existing is not None:
        if row["digest"] in _digests(existing):
            return DUPLICATE, dict(existing)
        copy = {k: row[k] for k in ("blob", "size", "digest", "source", "received_at", "patient_id")}
        conflicts = list(existing.get("conflicts") or []) + [copy]
        db.table(T_INSTANCES).update({"conflict": True, "conflicts": conflicts}, doc_ids=[existing.doc_id])
        return CONFLICT, {**existing, "conflict": True, "conflicts": conflicts}
    now_linked = _link(db, store, item.src, store.config.issuer_of_patient_id, facts)
    if (now_linked or {}).get("id") != (linked or {}).get("id"):
        raise _Raced()
    if new_patient is not None:
        if patients._get(db, new_patient["id"]):
            raise _Raced()
        db.table(T_PATIENTS).insert(new_patient)
        triage = new_patient["triage"]
    else:
        triage = linked.get("triage", "none")
    doc_id = db.table(T_INSTANCES).insert(row)
    _remember(store, row, doc_id)
    if facts["is_image"]:
        store.queue.enqueue(KIND_INFER, {"sop_instance_uid": sop_uid}, priority=infer_priority(triage), key=sop_uid)
    what = "image" if facts["is_image"] else "finding"
    store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": sop_uid}, priority=sync_priority(triage, what), key=sop_uid)
    return STORED, row


def _digests(row: dict) -> set[str]:
    return {row.get("digest")} | {c.get("digest") for c in row.get("conflicts") or []}


def _result(status: str, row: dict, message: str) -> dict:
    return {"status": status, "sop_instance_uid": row["sop_instance_uid"], "patient_id": row["patient_id"],
            "instance": dict(row), "message": message}


# -- queries (QIDO-RS and the UI) --------------------------------------------------------

def instance_rows(store, *, patient_id: str | None = None, study_uid: str | None = None,
                  series_uid: str | None = None) -> list[dict]:
    def fn(db):
        rows = db.table(T_INSTANCES).all()
        out = []
        for r in rows:
            if patient_id is not None and r["patient_id"] != patient_id:
                continue
            if study_uid is not None and r["study_instance_uid"] != study_uid:
                continue
            if series_uid is not None and r["series_instance_uid"] != series_uid:
                continue
            out.append(dict(r))
        return out
    return store.read(fn)


def patient_map(store) -> dict[str, dict]:
    return store.read(lambda db: {p["id"]: dict(p) for p in db.table(T_PATIENTS).all()})


def studies(store, rows: list[dict] | None = None) -> list[dict]:
    """Group instance rows into studies: one dict per study, newest first."""
    rows = instance_rows(store) if rows is None else rows
    pats = patient_map(store)
    by_study: dict[str, dict] = {}
    for r in rows:
        s = by_study.setdefault(r["study_instance_uid"], {
            "study_instance_uid": r["study_instance_uid"], "patient_id": r["patient_id"],
            "study_date": r.get("study_date", ""), "study_time": r.get("study_time", ""),
            "accession_number": r.get("accession_number", ""), "study_description": r.get("study_description", ""),
            "study_id": r.get("study_id", ""), "referring_physician": r.get("referring_physician", ""),
            "modalities": set(), "series": set(), "instances": 0, "received_at": r["received_at"]})
        s["modalities"].add(r.get("modality") or "")
        s["series"].add(r["series_instance_uid"])
        s["instances"] += 1
        s["received_at"] = max(s["received_at"], r["received_at"])
    out = []
    for s in by_study.values():
        p = pats.get(s["patient_id"], {})
        s["patient"] = p
        s["modalities"] = sorted(m for m in s["modalities"] if m)
        s["series"] = len(s["series"])
        out.append(s)
    out.sort(key=lambda s: s["received_at"], reverse=True)
    return out


def series(store, rows: list[dict]) -> list[dict]:
    by_series: dict[str, dict] = {}
    for r in rows:
        s = by_series.setdefault(r["series_instance_uid"], {
            "series_instance_uid": r["series_instance_uid"], "study_instance_uid": r["study_instance_uid"],
            "patient_id": r["patient_id"], "modality": r.get("modality", ""),
            "series_number": r.get("series_number", ""), "series_description": r.get("series_description", ""),
            "instances": 0, "received_at": r["received_at"]})
        s["instances"] += 1
    return sorted(by_series.values(), key=lambda s: (str(s["series_number"]).zfill(8), s["received_at"]))


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
        store.write(lambda db: db.table(T_INSTANCES).update({"thumbnail": ref.addr},
                                                            Query().sop_instance_uid == sop_uid))
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
