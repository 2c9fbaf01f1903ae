"""Turning uploaded bytes into stored instances: STOW-RS bodies, tablet uploads (DICOM
files, Part-10 zip bundles with or without DICOMDIR, PNG/JPEG pictures), and files found
by the folder/USB import.

Bytes stream into an encrypted spool (no plaintext temp file); each object is then read
from its spool and handed to `put_instance`. Every object gets an outcome - stored,
duplicate, conflict, refused (with the reason) or skipped - and one bad object never
stops the others.

Zip bundles are read through the spool without extracting anything to disk. Members are
refused when their names try path tricks (absolute, "..", drive letters), when they would
expand beyond the size cap or more than `ingest.max_zip_ratio` times their compressed
size (zip bombs), and bundles stop after `ingest.max_zip_members` members.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import time
import zipfile
from typing import Iterable

from ..dicom import parse, pictures
from ..dicom.parse import InvalidDicom
from ..dicom.prepare import Prepared, prepare
from ..errors import BadInput, FieldkitError, TooLarge
from ..store import instances, patients
from .multipart import MultipartError, content_type_params, iter_parts
from ..store.blobs import open_reader
from .spoolio import PartBuffer

log = logging.getLogger(__name__)

DICOM, ZIP, PNG, JPEG = "dicom", "zip", "png", "jpeg"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
REFUSED, SKIPPED = "refused", "skipped"


def sniff(head: bytes) -> str | None:
    """What a file is, from its first 132 bytes."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ZIP
    kind = pictures.sniff_picture(head[:8])
    return {"PNG": PNG, "JPEG": JPEG}.get(kind or "")


def outcome(name: str, status: str, reason: str = "", *, sop_instance_uid: str = "", sop_class_uid: str = "",
            patient_id: str = "", code: int = 0) -> dict:
    return {"name": name, "status": status, "reason": reason, "sop_instance_uid": sop_instance_uid,
            "sop_class_uid": sop_class_uid, "patient_id": patient_id, "code": code}


def refusal(name: str, exc: BaseException) -> dict:
    from .dimse import status_for  # one mapping of reasons to DICOM status codes

    code, reason = status_for(exc)
    uid = getattr(exc, "sop_instance_uid", "") or ""
    return outcome(name, REFUSED, reason, sop_instance_uid=uid, code=code)


def store_dicom_bytes(store, data, name: str, source: str, expect_study: str | None = None,
                      batch: "instances.Batch | None" = None) -> dict:
    """One Part-10 object (bytes, or a reader over a spool: then it is read once, straight
    into the dataset) -> outcome. Storage failures (disk full, locked) propagate. In a
    batch, a stored object's outcome carries its `batch_index` until the batch commits."""
    try:
        if expect_study is not None or not isinstance(data, (bytes, bytearray)):
            data = prepare(data)
            if expect_study is not None and data.facts["study_instance_uid"] != expect_study:
                raise InvalidDicom(f"instance belongs to study {data.facts['study_instance_uid']}, "
                                   f"not to {expect_study} named in the request",
                                   parse.DOES_NOT_MATCH_SOP_CLASS, data.sop_instance_uid)
        if batch is not None:
            return {**outcome(name, "pending"), "batch_index": batch.add(data)}
        result = instances.put_instance(store, data, source)
    except BadInput as exc:
        out = refusal(name, exc)
        out["sop_class_uid"] = _peek_class(data)
        return out
    except FieldkitError:
        raise
    except Exception as exc:  # a parser bug must cost one object, never the whole upload
        log.exception("unexpected error while storing %s", source)
        return refusal(name, exc)
    row = result["instance"]
    return outcome(name, result["status"], result["message"], sop_instance_uid=row["sop_instance_uid"],
                   sop_class_uid=row["sop_class_uid"], patient_id=row["patient_id"])


def _peek_class(data) -> str:
    try:
        import io

        import pydicom
        if isinstance(data, Prepared):
            return data.facts["sop_class_uid"]
        if isinstance(data, pydicom.Dataset):
            value = str(data.get("SOPClassUID", ""))
            return value if parse.valid_uid(value) else ""
        if not isinstance(data, (bytes, bytearray)):
            data.seek(0)
            data = data.read(1 << 16)
        ds = pydicom.dcmread(io.BytesIO(data[: 1 << 16]), stop_before_pixels=True,
                             specific_tags=["SOPClassUID"])
        value = str(ds.get("SOPClassUID", ""))
        return value if parse.valid_uid(value) else ""
    except Exception:
        return ""


def _read_bounded(chunks: Iterable[bytes], limit: int, what: str) -> Iterable[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{what} is larger than {limit >> 20} MiB")
        yield chunk


def store_multipart(store, chunks: Iterable[bytes], boundary: str, *, source: str, default_type: str,
                    max_bytes: int, expect_study: str | None = None,
                    picture_options: dict | None = None, timing: dict | None = None) -> list[dict]:
    """A multipart/related (STOW-RS) or form body -> one outcome per part, in part order.

    Each part is stored as soon as it has arrived, while the client is still sending the
    next. The DICOM parts of a STOW-RS request form one batch (instances.Batch): their
    blobs are fsynced in the background and their catalogue rows written in one journal
    record at the end, so the request costs one durable commit, not one per part.

    `timing`, when given, gets where the time went, in seconds: "parts" (storing the
    parts), "body" (reading and splitting the body, waiting for the client included) and
    "commit" (making the batch durable)."""
    started, busy = time.perf_counter(), 0.0
    cap = int(store.config["dicom.max_object_mb"]) * (1 << 20)
    batch = instances.Batch(store, source) if source == "stow" else None
    results: list[list[dict]] = []
    spool, part, part_size, n = None, None, 0, 0
    try:
        for event, value in iter_parts(_read_bounded(chunks, max_bytes, "request body"), boundary):
            if event == "part":
                n += 1
                part, part_size = value, 0
                spool = PartBuffer(store.blobs.open_spool)
            elif event == "data":
                part_size += len(value)
                if part_size <= cap:
                    spool.write(value)
            else:
                name = f"part {n}"
                disposition = part.headers.get("content-disposition", "")
                if disposition:
                    _, params = content_type_params("x/x; " + disposition.partition(";")[2])
                    if "filename" not in params:
                        spool.close()  # a plain form field, not a file
                        spool = None
                        continue
                    name = params["filename"][:200] or name
                if part_size > cap:
                    results.append([refusal(name, TooLarge(
                        f"object over the {store.config['dicom.max_object_mb']} MiB limit"))])
                else:
                    media = (part.content_type.split(";")[0].strip().lower() or default_type)
                    begun = time.perf_counter()
                    results.append(store_spool(store, spool, name, source, media_type=media,
                                               expect_study=expect_study, picture_options=picture_options,
                                               batch=batch))
                    busy += time.perf_counter() - begun
                spool.close()
                spool = None
    except MultipartError as exc:
        if part is not None and spool is not None:
            results.append([refusal(f"part {n}", InvalidDicom(f"incomplete: {exc.message}"))])
        elif not results:
            raise
    finally:
        if spool is not None:
            spool.close()
    body_done = time.perf_counter()
    if batch is not None:
        stored = batch.commit()
        results = [[_from_batch(r, stored) for r in group] for group in results]
    if timing is not None:
        timing.update(parts=busy, body=body_done - started - busy, commit=time.perf_counter() - body_done)
    return [r for group in results for r in group]


def _from_batch(out: dict, stored: list[dict]) -> dict:
    """A part's outcome once its batch is committed."""
    index = out.pop("batch_index", None)
    if index is None:
        return out
    row = stored[index]["instance"]
    return outcome(out["name"], stored[index]["status"], stored[index]["message"],
                   sop_instance_uid=row["sop_instance_uid"], sop_class_uid=row["sop_class_uid"],
                   patient_id=row["patient_id"])


def store_spool(store, spool, name: str, source: str, *, media_type: str = "",
                expect_study: str | None = None, picture_options: dict | None = None,
                batch: "instances.Batch | None" = None) -> list[dict]:
    """A spooled file of any supported kind -> outcomes (a zip gives one per member)."""
    head = b""
    for chunk in spool.chunks():
        head = chunk[:132]
        break
    kind = sniff(head)
    if media_type and media_type not in ("application/dicom", "application/octet-stream", "application/zip",
                                         "image/png", "image/jpeg", "application/x-zip-compressed"):
        return [refusal(name, InvalidDicom(f"media type {media_type[:60]} is not accepted here"))]
    if kind == DICOM:
        if spool.size > int(store.config["dicom.max_object_mb"]) * (1 << 20):
            return [refusal(name, TooLarge(f"object over the {store.config['dicom.max_object_mb']} MiB limit"))]
        # a part still in memory is read as it is; a spooled one through the decrypting reader
        data = spool.read_all() if getattr(spool, "in_memory", False) else open_reader(spool)
        return [store_dicom_bytes(store, data, name, source, expect_study, batch)]
    if kind == ZIP and source != "stow":
        return store_zip(store, spool, name, source)
    if kind in (PNG, JPEG) and source != "stow":
        return [store_picture(store, spool.read_all(), name, source, picture_options or {})]
    if media_type == "application/dicom" or source == "stow":
        return [refusal(name, InvalidDicom("not a DICOM Part-10 object (no 'DICM' prefix and file meta header)"))]
    return [refusal(name, InvalidDicom("not a DICOM file, zip bundle, PNG or JPEG picture"))]


def _unsafe_member(name: str) -> str:
    """Why a zip member name is a path trick, or '' when it is fine."""
    if "\x00" in name:
        return "contains a NUL character"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "is an absolute path"
    if ".." in norm.split("/"):
        return "climbs out of the bundle with '..'"
    if posixpath.normpath(norm).startswith("../"):
        return "climbs out of the bundle"
    return ""


def store_zip(store, spool, name: str, source: str) -> list[dict]:
    cap = int(store.config["dicom.max_object_mb"]) * (1 << 20)
    max_members = int(store.config["ingest.max_zip_members"])
    max_ratio = float(store.config["ingest.max_zip_ratio"])
    results: list[dict] = []
    try:
        zf = zipfile.ZipFile(open_reader(spool))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        return [refusal(name, InvalidDicom(f"zip bundle cannot be read: {str(exc)[:120]}"))]
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > max_members:
            results.append(refusal(name, BadInput(f"zip bundle holds {len(members)} files; only the first "
                                                  f"{max_members} are read (ingest.max_zip_members)")))
            members = members[:max_members]
        for m in members:
            label = f"{name}:{m.filename[:200]}"
            why = _unsafe_member(m.filename)
            if why:
                results.append(refusal(label, BadInput(f"zip member name {why}; refused")))
                continue
            if m.flag_bits & 0x1:
                results.append(refusal(label, BadInput("zip member is encrypted")))
                continue
            if m.file_size > cap:
                results.append(refusal(label, TooLarge(f"zip member expands to more than {cap >> 20} MiB")))
                continue
            if m.compress_size and m.file_size / max(1, m.compress_size) > max_ratio and m.file_size > (1 << 20):
                results.append(refusal(label, BadInput(f"zip member expands {m.file_size // max(1, m.compress_size)}"
                                                       f" times its compressed size: refused as a zip bomb")))
                continue
            member = PartBuffer(store.blobs.open_spool)
            try:
                try:
                    _read_member(zf, m, cap, member)
                except BadInput as exc:
                    results.append(refusal(label, exc))
                    continue
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                    results.append(refusal(label, BadInput(f"zip member cannot be read: {str(exc)[:120]}")))
                    continue
                head = next(iter(member.chunks()), b"")[:1024]
                kind = sniff(head[:132])
                if kind == DICOM:
                    if _is_dicomdir(head):
                        results.append(outcome(label, SKIPPED, "DICOMDIR index: the files it lists are read directly"))
                        continue
                    # a small member is read as it is; a large one through the decrypting reader
                    data = member.read_all() if member.in_memory else open_reader(member)
                    results.append(store_dicom_bytes(store, data, label, source))
                elif kind == ZIP:
                    results.append(refusal(label, BadInput("zip inside a zip is not opened")))
                else:
                    results.append(outcome(label, SKIPPED, "not a DICOM file"))
            finally:
                member.close()
    return results


def _read_member(zf: zipfile.ZipFile, m: zipfile.ZipInfo, cap: int, out: PartBuffer) -> None:
    """Copy a member into `out` (memory while small, the encrypted spool once large),
    stopping as soon as it outgrows its declared size or the cap (a forged header must not
    get past the checks above)."""
    limit = min(cap, m.file_size)
    with zf.open(m) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            if out.size > limit:
                raise BadInput("zip member is larger than its header says: refused as a zip bomb")


def _is_dicomdir(head: bytes) -> bool:
    return DICOMDIR_CLASS.encode() in head[:1024]


def store_picture(store, data: bytes, name: str, source: str, options: dict) -> dict:
    """A PNG/JPEG -> Secondary Capture (or US Image) for the given kit patient, or a new
    unidentified one when none is named."""
    try:
        pid = options.get("patient_id") or ""
        if pid:
            patient = patients.get_patient(store, pid)
            if patient is None:
                raise BadInput(f"no patient {pid[:64]} on this kit")
        else:
            patient = options.get("_new_patient")
            if patient is None:
                patient = patients.create_patient(store)
                options["_new_patient"] = patient  # all pictures of one upload: one patient
        acquired = options.get("acquired_at")
        if isinstance(acquired, str) and acquired:
            try:
                acquired = dt.datetime.fromisoformat(acquired)
                if acquired.tzinfo is None:
                    acquired = acquired.astimezone()
            except ValueError:
                raise BadInput(f"acquired_at {acquired[:40]!r} is not an ISO date-time") from None
        study = options.setdefault("_study", {})
        ds = pictures.picture_to_dataset(
            data, patient_id=patient["id"], issuer=store.config.issuer_of_patient_id,
            patient_name=patient.get("name") or "", birth_date=patient.get("birth_date") or "",
            sex=patient.get("sex") or "", acquired_at=acquired or None,
            uid_root=store.config["kit.uid_root"], study_instance_uid=study.get("study"),
            series_instance_uid=study.get("series"), as_ultrasound=bool(options.get("as_ultrasound")),
            filename=name)
        study.setdefault("study", str(ds.StudyInstanceUID))
        study.setdefault("series", str(ds.SeriesInstanceUID))
        result = instances.put_instance(store, ds, source, from_picture=True)
    except BadInput as exc:
        return refusal(name, exc)
    row = result["instance"]
    return outcome(name, result["status"], result["message"], sop_instance_uid=row["sop_instance_uid"],
                   sop_class_uid=row["sop_class_uid"], patient_id=row["patient_id"])


def store_stream(store, chunks: Iterable[bytes], name: str, source: str, max_bytes: int,
                 picture_options: dict | None = None) -> list[dict]:
    """A single uploaded file (raw body or one form field) -> outcomes."""
    with store.blobs.open_spool() as spool:
        for chunk in _read_bounded(chunks, max_bytes, name):
            spool.write(chunk)
        if spool.size == 0:
            return [refusal(name, BadInput("empty file"))]
        return store_spool(store, spool, name, source, picture_options=picture_options)


def summarize(results: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts

