"""Kit patients: create, find, link captures to them, merge (layer 2).

A row: {"id", "tag", "name", "birth_date", "sex", "triage", "triage_history", "merged_into",
"created", "updated", "aliases"}. `id` is the triage tag number when there is one, else a
generated ID: "N-XXXXXX" for a person registered without a tag, "U-XXXXXX" for a record an
unlinked capture made (both read alike; the prefix only tells them apart on sight).
`aliases` are the (issuer, PatientID) pairs probes used for this patient, so later
captures from the same probe exam find it again.
A merged patient keeps its row with `merged_into` set; lookups follow that pointer.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref

from tinydb import Query

from ..dicom import worklist
from ..errors import BadInput, Conflict, NotFound
from ..events import PATIENT_MERGED, PATIENT_UPDATED
from ..records import (KIND_INFER, KIND_SYNC, READY, T_INSTANCES, T_PATIENTS, TRIAGE_CATEGORIES, infer_priority,
                       sync_priority)

_P = Query()
MAX_MERGE_HOPS = 32


# Tagless IDs: a person registered with no tag ("N-") must not look like a record an
# unlinked capture made ("U-"), which waits in the tray for someone to assign it.
TAGLESS_PREFIX, CAPTURE_PREFIX = "N-", "U-"


def new_patient_id(prefix: str = CAPTURE_PREFIX) -> str:
    return prefix + secrets.token_hex(3).upper()


# Where a patient record came from: a person registered it, or a capture nobody could link
# made it (its captures wait in the board's "unassigned" tray until someone assigns them).
ORIGIN_PERSON, ORIGIN_CAPTURE = "person", "capture"


def make_row(pid: str, *, tag: str | None = None, name: str = "", birth_date: str = "", sex: str = "",
             triage: str = "none", aliases: list | None = None, now: float | None = None,
             origin: str = ORIGIN_PERSON) -> dict:
    if triage not in TRIAGE_CATEGORIES:
        raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}, got {triage!r}")
    now = now or time.time()
    return {"id": pid, "tag": tag, "name": name, "birth_date": birth_date, "sex": sex,
            "triage": triage, "triage_history": [], "merged_into": None,
            "created": now, "updated": now, "aliases": [list(a) for a in (aliases or [])], "origin": origin}


def _keys(db, field: str, value) -> list[str]:
    return db.storage.keys(T_PATIENTS, field, value)


def _get(db, pid: str) -> dict | None:
    keys = _keys(db, "id", pid)
    return dict(db.storage.doc(T_PATIENTS, keys[0])) if keys else None


def update_fields(db, pid: str, fields: dict) -> None:
    """Inside store.write: set `fields` on the row of `pid` (no merge followed)."""
    keys = _keys(db, "id", pid)
    if keys:
        db.table(T_PATIENTS).update(fields, doc_ids=[int(k) for k in keys])


def resolve_row(db, pid: str) -> dict | None:
    """The live patient for `pid`, following merges."""
    row = _get(db, pid)
    hops = 0
    while row and row.get("merged_into") and hops < MAX_MERGE_HOPS:
        row = _get(db, row["merged_into"]) or row
        hops += 1
    return row


def merged_ids(db, pid: str) -> list[str]:
    """Kit IDs that were merged (directly or through others) into patient `pid`."""
    found, todo = set(), [pid]
    while todo and len(found) < 10_000:
        for key in _keys(db, "merged_into", todo.pop()):
            other = db.storage.doc(T_PATIENTS, key)["id"]
            if other not in found and other != pid:
                found.add(other)
                todo.append(other)
    return sorted(found)


def get_patient(store, pid: str, follow_merges: bool = True) -> dict | None:
    return store.read(lambda db: resolve_row(db, pid) if follow_merges else _get(db, pid))


def list_patients(store, include_merged: bool = False) -> list[dict]:
    def fn(db):
        rows = db.table(T_PATIENTS).all()
        return [dict(r) for r in rows if include_merged or not r.get("merged_into")]
    return store.read(fn)


def find_patients(store, text: str) -> list[dict]:
    """Patients whose id, any tag (merged ones too) or name contains `text` (case-insensitive);
    merged-away records left out (their tags find the survivor)."""
    needle = (text or "").strip().lower()
    return [p for p in list_patients(store)
            if needle in p["id"].lower() or any(needle in t.lower() for t in all_tags(p))
            or needle in (p.get("name") or "").lower()]


def create_patient(store, *, tag: str | None = None, name: str = "", birth_date: str = "",
                   sex: str = "", triage: str = "none", registered: bool = False) -> dict:
    """A new patient: id = the tag number when given (must be new), else N-XXXXXX when a
    person registered them (`registered`), U-XXXXXX when a capture did."""
    tag = (tag or "").strip() or None
    if tag is not None and (len(tag) > 64 or "\\" in tag or not tag.isprintable()):
        raise BadInput(f"triage tag {tag[:70]!r} is not a usable patient ID (printable, at most 64 characters)")

    def fn(db):
        if tag is not None and (_get(db, tag) or _keys(db, "tag", tag)):
            raise BadInput(f"a patient with tag {tag} already exists")
        pid = tag or fresh_id(db, TAGLESS_PREFIX if registered else CAPTURE_PREFIX)
        row = make_row(pid, tag=tag, name=name, birth_date=birth_date, sex=sex, triage=triage)
        db.table(T_PATIENTS).insert(row)
        return row

    row = store.write(fn)
    store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return row


def fresh_id(db, prefix: str = CAPTURE_PREFIX) -> str:
    for _ in range(100):
        pid = new_patient_id(prefix)
        if not _get(db, pid):
            return pid
    raise RuntimeError("could not find a free patient id")


class _Lookup:
    """What names a patient without being an indexed field: the worklist AccessionNumber and
    StudyInstanceUID (derived from the kit's issuer and the patient id) and the (issuer,
    PatientID) aliases probes used. Neither changes on a row once it exists (a merge gives
    the survivor the merged row's aliases, and the merged row keeps them: resolve_row
    follows it), so each new row is read once: rows come in doc-id order and ids only grow."""

    def __init__(self, kit_issuer: str, uid_root: str):
        self.kit_issuer, self.uid_root = kit_issuer, uid_root
        self.by_value: dict = {}
        self.last_key = 0

    def catch_up(self, db) -> None:
        raw = db.storage.read().get(T_PATIENTS, {})
        new = []
        for key in reversed(raw):
            if int(key) <= self.last_key:
                break
            new.append(key)
        for key in reversed(new):
            row = raw[key]
            for value in worklist.encounter(self.kit_issuer, row["id"], self.uid_root):
                self.by_value.setdefault(value, row["id"])
            for alias in row.get("aliases") or []:
                self.by_value.setdefault(("alias", *alias), row["id"])
        if new:
            self.last_key = int(new[0])

    def find(self, db, values) -> dict | None:
        self.catch_up(db)
        pid = next((self.by_value[v] for v in values if v in self.by_value), None)
        return resolve_row(db, pid) if pid else None


_lookups: "weakref.WeakKeyDictionary[object, dict[tuple[str, str], _Lookup]]" = weakref.WeakKeyDictionary()
_lookups_lock = threading.Lock()


def _lookup(db, values, kit_issuer: str, uid_root: str) -> dict | None:
    with _lookups_lock:
        per_db = _lookups.setdefault(db, {})
        lookup = per_db.get((kit_issuer, uid_root)) or per_db.setdefault((kit_issuer, uid_root),
                                                                          _Lookup(kit_issuer, uid_root))
        return lookup.find(db, values)


def worklist_patient(db, *, accession: str, study_instance_uid: str, kit_issuer: str,
                     uid_root: str) -> dict | None:
    """The patient whose worklist item carried this AccessionNumber or StudyInstanceUID."""
    values = tuple(v for v in (accession, study_instance_uid) if v)
    return _lookup(db, values, kit_issuer, uid_root) if values else None


# Why a capture went to the patient it went to (kept on the catalogue row as `linked_by`).
BY_PATIENT_ID, BY_WORKLIST, BY_TAG, BY_PROBE_SESSION, BY_STUDY, BY_PROBE_ID = (
    "patient id", "worklist", "tag", "probe session", "study", "probe's patient id")


def link(db, **facts) -> dict | None:
    """The existing kit patient a capture belongs to, or None (see link_with_reason)."""
    return link_with_reason(db, **facts)[0]


def link_with_reason(db, *, patient_id: str, issuer: str, kit_issuer: str, is_generic: bool,
                     study_instance_uid: str, study_patient_id: str | None = None, accession: str = "",
                     uid_root: str = "2.25", session_patient_id: str | None = None) -> tuple[dict | None, str]:
    """(the existing kit patient a capture belongs to, why), or (None, "") for a new one.

    1. PatientID names a kit patient (kit issuer or none): that patient (by "worklist" when
       the AccessionNumber or StudyInstanceUID is that patient's worklist item too);
    2. AccessionNumber or StudyInstanceUID of a patient's worklist item: that patient
       (the probe picked them from the kit's worklist, whatever name it typed);
    3. PatientID is a triage tag number: that patient;
    4. the sending probe is in a probe session: its patient;
    5. the study already has captures: their patient;
    6. the probe's own ID was seen before: that patient.
    """
    if patient_id and issuer in ("", kit_issuer):
        row = resolve_row(db, patient_id)
        if row:  # stamped from the kit's worklist when its encounter names the same patient
            picked = worklist_patient(db, accession=accession, study_instance_uid=study_instance_uid,
                                      kit_issuer=kit_issuer, uid_root=uid_root)
            return row, BY_WORKLIST if picked and picked["id"] == row["id"] else BY_PATIENT_ID
    row = worklist_patient(db, accession=accession, study_instance_uid=study_instance_uid,
                           kit_issuer=kit_issuer, uid_root=uid_root)
    if row:
        return row, BY_WORKLIST
    if patient_id:
        keys = _keys(db, "tag", patient_id)
        if keys:
            return resolve_row(db, db.storage.doc(T_PATIENTS, keys[0])["id"]), BY_TAG
    if session_patient_id:
        row = resolve_row(db, session_patient_id)
        if row:
            return row, BY_PROBE_SESSION
    if study_patient_id is None and study_instance_uid:
        key = db.storage.last_key(T_INSTANCES, "study_instance_uid", study_instance_uid)
        study_patient_id = db.storage.doc(T_INSTANCES, key)["patient_id"] if key else ""
    if study_patient_id:
        row = resolve_row(db, study_patient_id)
        if row:
            return row, BY_STUDY
    if patient_id and not is_generic:
        row = _lookup(db, [("alias", issuer, patient_id)], kit_issuer, uid_root)
        if row:
            return row, BY_PROBE_ID
    return None, ""


def set_triage(store, pid: str, category: str, by: str = "", undo: bool = False,
               expected: str | None = None) -> dict:
    """Record a triage category (history kept) and re-prioritise the patient's infer rows
    (its sync rows are re-prioritised by the sync planner). `undo`: this puts back the
    category a mis-tap replaced, and the history says so; `expected`: the category the
    caller saw, refused (Conflict) when someone changed it meanwhile."""
    if category not in TRIAGE_CATEGORIES:
        raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}, got {category!r}")

    def fn(db):
        row = resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid}")
        if expected is not None and (row.get("triage") or "none") != expected:
            raise Conflict(f"{row['id']} was re-triaged meanwhile (now {row.get('triage')}); look again first")
        now = time.time()
        entry = {"triage": category, "at": now, "by": by} | ({"undo": True} if undo else {})
        history = list(row.get("triage_history") or []) + [entry]
        update_fields(db, row["id"], {"triage": category, "triage_history": history, "updated": now})
        row.update(triage=category, triage_history=history, updated=now)
        return row

    row = store.write(fn)
    _reprioritise_inference(store, row["id"], category)
    store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return row


def _reprioritise_inference(store, pid: str, category: str) -> None:
    """The patient's captures still waiting for analysis move to the new category's place
    (a patient tagged red after the scan is analysed before the others)."""
    priority = infer_priority(category)
    uids = store.read(lambda db: [db.storage.doc(T_INSTANCES, k)["sop_instance_uid"]
                                  for k in db.storage.keys(T_INSTANCES, "patient_id", pid)])
    for job in store.queue.live_rows(KIND_INFER, uids):
        if job.state != READY or job.payload.get("report") or job.priority == priority:
            continue  # a report job keeps its place after every finding job
        store.queue.set_priority(job.id, priority)


def update_details(store, pid: str, *, name: str | None = None, age: str | None = None, sex: str | None = None,
                   note: str = "", actor: str = "") -> dict:
    """Change what people know of a patient (name, age, sex) and/or add a note; returns
    the row. Who follows up (e.g. sending the new identity to the hospital) is the caller's."""
    def fn(db):
        row = resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid[:64]}")
        now = time.time()
        changes: dict = {"updated": now}
        for key, value in (("name", name), ("age", age), ("sex", sex)):
            if value is not None:
                changes[key] = value
        if name is not None:  # a name a person typed is theirs, not the probe's
            changes["name_confirmed"] = {"by": actor, "at": now} if name else None
        if note:
            changes["notes"] = list(row.get("notes") or []) + [{"text": note, "by": actor, "at": now}]
        update_fields(db, row["id"], changes)
        row.update(changes)
        return row

    row = store.write(fn)
    store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return row


def note_proposal(store, pid: str, proposed: str, answers: dict) -> None:
    """Keep what the START assistant proposed next to the triage the clinician chose last."""
    def fn(db):
        row = resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid}")
        hist = list(row.get("triage_history") or [])
        if hist:
            hist[-1] = dict(hist[-1], proposed=proposed, answers=answers)
            update_fields(db, row["id"], {"triage_history": hist})
    store.write(fn)


# Which category a merged patient keeps: the most urgent one; "none" (not triaged) says
# nothing, so any category recorded for either record beats it.
MERGE_URGENCY = ("red", "yellow", "green", "grey", "black", "none")


# What people recorded of a patient's care and movement (notes here, the rest in store.care):
# a merge keeps both records' entries, interleaved by time; the survivor's zone and
# disposition win, the merged record's fill in when the survivor has none.
CARE_FIELDS = ("notes", "interventions", "movement_history", "zone", "disposition")


def _entry_at(entry: dict) -> float:
    return float(entry.get("at") or (entry.get("disposition") or {}).get("at") or 0)


def merged_care(dst: dict, src: dict) -> dict:
    out = {}
    for key in ("notes", "interventions", "movement_history"):
        if dst.get(key) or src.get(key):
            out[key] = sorted(list(dst.get(key) or []) + list(src.get(key) or []), key=_entry_at)
    for key in ("zone", "disposition"):
        if not dst.get(key) and src.get(key):
            out[key] = src[key]
    return out


def merge_patients(store, from_id: str, into_id: str, *, by: str = "", undo_seconds: float = 0.0) -> dict:
    """Fold `from_id` into `into_id` (e.g. an unidentified patient who was identified),
    losing nothing: the survivor keeps the most urgent category, every tag (a merged tag
    still finds it), both triage histories interleaved by time, every capture and finding.
    Captures the hospital has not confirmed yet go with the new identity. The change
    travels as two status documents (see fieldkit.sync.updates): one under the surviving
    ID naming the merged one, and a last one under the merged ID naming the survivor.
    Nothing of the merge is sent during `undo_seconds`, in which `unmerge` splits the two
    back exactly as they were. Captures the hospital already confirmed are not re-sent
    (same UIDs, different content: a PACS keeps one or the other)."""
    def fn(db):
        src, dst = resolve_row(db, from_id), resolve_row(db, into_id)
        if not src:
            raise NotFound(f"no patient {from_id}")
        if not dst:
            raise NotFound(f"no patient {into_id}")
        if src["id"] == dst["id"]:
            raise BadInput(f"{from_id} and {into_id} are already the same patient")
        now = time.time()
        before = {k: dst.get(k) for k in ("aliases", "name", "birth_date", "sex", "triage", "triage_history", "tags",
                                          *CARE_FIELDS)}
        aliases = dst.get("aliases", []) + [a for a in src.get("aliases", []) if a not in dst.get("aliases", [])]
        fill = {k: src[k] for k in ("name", "birth_date", "sex") if not dst.get(k) and src.get(k)}
        if "name" in fill and name_from_probe(src):
            fill["name_from"] = "probe"  # still the probe's guess on the survivor, until confirmed
        triage = min(dst.get("triage") or "none", src.get("triage") or "none", key=MERGE_URGENCY.index)
        tags = [t for t in dict.fromkeys(all_tags(dst) + all_tags(src)) if t]
        history = sorted(list(dst.get("triage_history") or []) + list(src.get("triage_history") or []),
                         key=lambda h: h.get("at", 0))
        history.append({"triage": triage, "at": now, "by": by, "merged": src["id"]})
        changes = {"aliases": aliases, "updated": now, "triage": triage, "tags": tags,
                   "triage_history": history, **fill, **merged_care(dst, src)}
        update_fields(db, dst["id"], changes)
        keys = db.storage.keys(T_INSTANCES, "patient_id", src["id"])
        src_rows = [dict(db.storage.doc(T_INSTANCES, k)) for k in keys]
        moved = [r["sop_instance_uid"] for r in src_rows]
        if keys:
            db.table(T_INSTANCES).update({"patient_id": dst["id"]}, doc_ids=[int(k) for k in keys])
        delay = max(0.0, float(undo_seconds))
        queued = []
        # identity first: the hospital learns of the merge before any re-stamped image
        queued.append(store.queue.enqueue(KIND_SYNC, {"patient_id": dst["id"], "what": "merge", "merged": src["id"]},
                                          priority=sync_priority(triage, "triage"),
                                          key=f"merge:{src['id']}:{dst['id']}", delay=delay))
        queued.append(store.queue.enqueue(KIND_SYNC, {"patient_id": src["id"], "what": "merged", "into": dst["id"]},
                                          priority=sync_priority(triage, "triage"),
                                          key=f"merged:{src['id']}:{dst['id']}", delay=delay))
        for r in src_rows:
            if r.get("sync_state") == "confirmed":
                continue
            is_sr = str(r.get("sop_class_uid") or "").startswith("1.2.840.10008.5.1.4.1.1.88.")
            queued.append(store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": r["sop_instance_uid"]},
                                              priority=sync_priority(triage, "finding" if is_sr else "image"),
                                              key=r["sop_instance_uid"], delay=delay))
        undo = {"until": now + delay, "into": dst["id"], "moved": moved, "survivor_before": before,
                "queued": queued, "by": by}
        update_fields(db, src["id"], {"merged_into": dst["id"], "updated": now, "merge_undo": undo})
        dst.update(changes)
        return dst, moved

    dst, moved = store.write(fn)
    store.events.publish(PATIENT_MERGED, patient_id=dst["id"], merged=from_id, instances=len(moved))
    store.events.publish(PATIENT_UPDATED, patient_id=dst["id"])
    return dst


def unmerge(store, merged_id: str, *, by: str = "") -> dict:
    """Split a merge back while its undo window is open: both records as they were before
    it, the captures back where they came from, and nothing of the merge sent."""
    def fn(db):
        src = _get(db, merged_id)
        if not src or not src.get("merged_into"):
            raise NotFound(f"patient {merged_id} is not merged into another")
        undo = src.get("merge_undo") or {}
        now = time.time()
        if not undo or now > undo["until"]:
            raise BadInput(f"the merge of {merged_id} can no longer be undone (its undo time is over and the "
                           "hospital may have been told); fix the identity with an edit instead")
        dst = _get(db, undo["into"])
        if dst is None or dst.get("merged_into"):
            raise BadInput(f"{undo['into']} was merged again since; undo that merge first")
        for row_id in undo["queued"]:
            store.queue.cancel(row_id, f"merge of {merged_id} undone")
        restored = {k: v for k, v in undo["survivor_before"].items() if v is not None or k in ("tags", *CARE_FIELDS)}
        restored["triage_history"] = list(restored.get("triage_history") or [])
        update_fields(db, dst["id"], {**restored, "updated": now})
        keys = [k for uid in undo["moved"] for k in db.storage.keys(T_INSTANCES, "sop_instance_uid", uid)]
        if keys:
            db.table(T_INSTANCES).update({"patient_id": src["id"]}, doc_ids=[int(k) for k in keys])
        update_fields(db, src["id"], {"merged_into": None})  # (so the correction sees two patients)
        for uid in undo["moved"]:  # a capture's own first send may have gone under the survivor
            correct_hospital_copy(db, store, uid)
        src_history = list(src.get("triage_history") or []) + [{"triage": src.get("triage", "none"), "at": now,
                                                                "by": by, "unmerged_from": dst["id"]}]
        update_fields(db, src["id"], {"merged_into": None, "merge_undo": None, "updated": now,
                                      "triage_history": src_history})
        return dict(_get(db, src["id"])), dst["id"]

    src, dst_id = store.write(fn)
    store.events.publish(PATIENT_UPDATED, patient_id=src["id"])
    store.events.publish(PATIENT_UPDATED, patient_id=dst_id)
    return src


def triage_times(row: dict) -> dict:
    """When the patient was first triaged, when last re-triaged (None if never) and by whom
    the category they have now was set, from the triage history (a capture assigned to
    them is in the history too, but changes no category)."""
    changes = [h for h in row.get("triage_history") or [] if "assigned" not in h and h.get("triage") != "none"]
    if not changes:
        return {"triaged_at": None, "retriaged_at": None, "triaged_by": ""}
    last = changes[-1]
    return {"triaged_at": changes[0].get("at"), "retriaged_at": last.get("at") if len(changes) > 1 else None,
            "triaged_by": last.get("by") or ""}


def all_tags(row: dict) -> list[str]:
    """Every triage tag number a patient record carries (its own and merged ones)."""
    return [t for t in [row.get("tag")] + list(row.get("tags") or []) if t]


def name_from_probe(row: dict) -> bool:
    """The name came with a capture (a probe typed it) and no person has confirmed it yet."""
    return bool(row.get("name")) and not row.get("name_confirmed") and (
        row.get("origin") == ORIGIN_CAPTURE or row.get("name_from") == "probe")


def confirm_name(store, pid: str, *, by: str = "") -> dict:
    """A person confirms the name a probe supplied (it is then shown as the patient's name)."""
    def fn(db):
        row = resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid[:64]}")
        if not row.get("name"):
            raise BadInput(f"patient {row['id']} has no name to confirm")
        confirmed = {"by": by, "at": time.time()}
        update_fields(db, row["id"], {"name_confirmed": confirmed, "updated": confirmed["at"]})
        return dict(row, name_confirmed=confirmed, updated=confirmed["at"])

    row = store.write(fn)
    store.events.publish(PATIENT_UPDATED, patient_id=row["id"])
    return row


def is_unassigned(row: dict) -> bool:
    """A record a capture made that nobody has triaged, tagged or named: its captures are
    "unassigned" (shown in the tray, never as a patient below the triaged ones)."""
    return (row.get("origin") == ORIGIN_CAPTURE and not row.get("merged_into") and not all_tags(row)
            and (row.get("triage") or "none") == "none")


def assign_capture(store, sop_uid: str, to_pid: str, *, expected_from: str | None = None, by: str = "") -> dict:
    """Move one capture (never a patient) to another patient. `expected_from` is the patient
    the person saw it on: if it moved meanwhile (two tablets at once) nothing changes.
    The capture's pending sync row takes the new patient's priority; the move is kept on the
    capture and in the target's triage history. Returns {"capture", "from", "to"}."""
    def fn(db):
        keys = db.storage.keys(T_INSTANCES, "sop_instance_uid", sop_uid)
        if not keys:
            raise NotFound(f"no capture {sop_uid}")
        row = dict(db.storage.doc(T_INSTANCES, keys[0]))
        target = resolve_row(db, to_pid)
        if target is None:
            raise NotFound(f"no patient {to_pid}")
        if target.get("triage") == "black":
            raise BadInput(f"patient {target['id']} is recorded as deceased: captures are not assigned to them")
        current = row["patient_id"]
        if expected_from is not None and (resolve_row(db, expected_from) or {}).get("id") != \
                (resolve_row(db, current) or {}).get("id"):
            raise BadInput(f"the capture was moved meanwhile (it is now on {current}); look again before moving it")
        if (resolve_row(db, current) or {}).get("id") == target["id"]:
            raise BadInput(f"the capture is already on {target['id']}")
        now = time.time()
        moves = list(row.get("assigned") or []) + [{"from": current, "to": target["id"], "at": now, "by": by}]
        db.table(T_INSTANCES).update({"patient_id": target["id"], "assigned": moves, "linked_by": "assigned"},
                                     doc_ids=[int(keys[0])])
        history = list(target.get("triage_history") or []) + [
            {"triage": target.get("triage", "none"), "at": now, "by": by, "assigned": sop_uid, "from": current}]
        update_fields(db, target["id"], {"triage_history": history, "updated": now})
        if row.get("sync_state") != "confirmed":
            is_sr = str(row.get("sop_class_uid") or "").startswith("1.2.840.10008.5.1.4.1.1.88.")
            priority = sync_priority(target.get("triage", "none"), "finding" if is_sr else "image")
            row_id = store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": sop_uid}, priority=priority, key=sop_uid)
            if store.queue.get(row_id).state == "ready":
                store.queue.set_priority(row_id, priority)
        correct_hospital_copy(db, store, sop_uid, sent_as=current)
        return {"capture": sop_uid, "from": current, "to": target["id"]}

    moved = store.write(fn)
    for pid in (moved["from"], moved["to"]):
        store.events.publish(PATIENT_UPDATED, patient_id=pid)
    return moved


def correct_hospital_copy(db, store, sop_uid: str, *, sent_as: str = "") -> bool:
    """Inside store.write, after a capture moved to another patient (assign, unmerge): when
    the hospital confirmed it under a PatientID that is not (by merges) its patient now, send
    it again under the current one and, under the old ID, a status document saying which
    capture was filed there in error and where it belongs (fieldkit.sync.updates, "moved").
    The old copy stays where it is: the kit never deletes from the hospital. `sent_as` is the
    ID it was confirmed under when the row does not record it (confirmed before it did).
    Moving it back before anything went out withdraws the correction. True when queued."""
    keys = db.storage.keys(T_INSTANCES, "sop_instance_uid", sop_uid)
    if not keys:
        return False
    row = dict(db.storage.doc(T_INSTANCES, keys[0]))
    now_id = (resolve_row(db, row["patient_id"]) or {}).get("id", row["patient_id"])
    pending = row.get("correction") if row.get("sync_state") != "confirmed" else None
    if pending:
        if (resolve_row(db, pending["from"]) or {}).get("id") != now_id:
            return False  # the queued correction reads the current patient when it is sent
        cancelled = [store.queue.cancel(rid, "capture moved back before the correction was sent")
                     for rid in pending["rows"]]
        if all(cancelled):
            db.table(T_INSTANCES).update({"sync_state": "confirmed", "correction": None}, doc_ids=[int(keys[0])])
        return False
    if row.get("sync_state") != "confirmed":
        return False
    confirmed_as = row.get("confirmed_patient_id") or sent_as
    if not confirmed_as or (resolve_row(db, confirmed_as) or {}).get("id", confirmed_as) == now_id:
        return False
    target = resolve_row(db, now_id) or {}
    triage = target.get("triage") or "none"
    is_sr = str(row.get("sop_class_uid") or "").startswith("1.2.840.10008.5.1.4.1.1.88.")
    rows = [store.queue.enqueue(KIND_SYNC, {"patient_id": confirmed_as, "what": "moved", "capture": sop_uid},
                                priority=sync_priority(triage, "triage"), key=f"moved:{sop_uid}:{confirmed_as}"),
            store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": sop_uid},
                                priority=sync_priority(triage, "finding" if is_sr else "image"), key=sop_uid)]
    db.table(T_INSTANCES).update({"sync_state": "queued", "correction": {
        "from": confirmed_as, "to": now_id, "at": time.time(), "rows": rows}}, doc_ids=[int(keys[0])])
    return True
