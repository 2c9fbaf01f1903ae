"""JSON endpoints behind the tablet UI, under /api/v1/ui/.

Pages (fieldkit.web.ui) are shells; what they show comes from here, so the service worker
can keep the last board and a second tablet can refresh a view when the live stream
says something changed. Every write checks its input first and answers with the new
state. Text from DICOM and from people is returned as data; the pages put it in the DOM
with textContent only.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict

from flask import Blueprint, Response, jsonify, request
from tinydb import Query

from ..errors import BadInput, NotFound
from ..records import KIND_SYNC, T_FINDINGS, T_INSTANCES, T_PATIENTS, TRIAGE_CATEGORIES, sync_priority
from ..security import roles as R
from ..store import instances as catalogue
from ..store import patients as pstore
from . import kit_of

bp = Blueprint("ui_api", __name__, url_prefix="/api/v1/ui")

ROUTE_PERMISSIONS = {
    "ui_api.board": R.PATIENTS_READ,
    "ui_api.start": R.AUTHENTICATED,  # pure function of the answers, no patient data
    "ui_api.create_patient": R.TRIAGE_WRITE,
    "ui_api.patient": R.PATIENTS_READ,
    "ui_api.triage": R.TRIAGE_WRITE,
    "ui_api.details": R.PATIENTS_WRITE,
    "ui_api.merge": R.PATIENTS_WRITE,
    "ui_api.thumbnail": R.PATIENTS_READ,
    "ui_api.cine": R.PATIENTS_READ,
    "ui_api.sprite": R.PATIENTS_READ,
    "ui_api.overlay": R.PATIENTS_READ,
    "ui_api.review": R.FINDINGS_WRITE,
    "ui_api.zone": R.PATIENTS_WRITE,
    "ui_api.sync": R.QUEUE_READ,
    "ui_api.sync_retry": R.QUEUE_MANAGE,
    "ui_api.device": R.STATUS_READ,
}

SEXES = ("", "M", "F", "O")
MAX_TEXT = 2000
MAX_NAME = 200
_F, _P, _I = Query(), Query(), Query()


# ----------------------------------------------------------------------------- START

START_QUESTIONS = ("walking", "breathing", "breathing_after_airway", "rr_over_30", "perfusion_poor", "obeys")


def start_category(answers: dict) -> str:
    """The START category proposed by the answers (the clinician confirms or overrides).

    walking -> green; not breathing even after the airway is opened -> black; breathing only
    after the airway is opened -> red; respiratory rate > 30 -> red; radial pulse absent or
    capillary refill > 2 s -> red; does not obey simple commands -> red; else yellow.
    Unanswered questions that the path needs give "none" (no proposal yet)."""
    def yes(k):
        return answers.get(k) is True

    def no(k):
        return answers.get(k) is False

    if yes("walking"):
        return "green"
    if not no("walking"):
        return "none"
    if no("breathing"):
        if no("breathing_after_airway"):
            return "black"
        if yes("breathing_after_airway"):
            return "red"
        return "none"
    if not yes("breathing"):
        return "none"
    if yes("rr_over_30"):
        return "red"
    if not no("rr_over_30"):
        return "none"
    if yes("perfusion_poor"):
        return "red"
    if not no("perfusion_poor"):
        return "none"
    if no("obeys"):
        return "red"
    if yes("obeys"):
        return "yellow"
    return "none"


def _answers(raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput("answers must be an object of yes/no values")
    out = {}
    for k, v in raw.items():
        if k not in START_QUESTIONS:
            raise BadInput(f"unknown START question {str(k)[:40]!r}")
        if v is not None and not isinstance(v, bool):
            raise BadInput(f"answer to {k} must be true, false or null")
        out[k] = v
    return out


# ----------------------------------------------------------------------------- helpers

def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadInput("send a JSON object (Content-Type: application/json)")
    return data


def _text(data: dict, key: str, limit: int) -> str | None:
    if key not in data or data[key] is None:
        return None
    value = data[key]
    if not isinstance(value, str):
        raise BadInput(f"{key} must be text")
    value = value.strip()
    if len(value) > limit:
        raise BadInput(f"{key} is longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise BadInput(f"{key} contains control characters")
    return value


def _actor() -> str:
    from .auth import current_principal
    p = current_principal()
    return p.actor if p else ""


def _category(value) -> str:
    if value not in TRIAGE_CATEGORIES:
        raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}")
    return value


def _patient_or_404(store, pid: str) -> dict:
    row = pstore.get_patient(store, pid)
    if row is None:
        raise NotFound(f"no patient {pid[:64]}")
    return row


def _sync_badge(states: list[str]) -> str:
    if not states:
        return "none"
    if "quarantined" in states:
        return "quarantined"
    if all(s == "confirmed" for s in states):
        return "confirmed"
    if "sending" in states:
        return "sending"
    return "queued"


def _public_patient(p: dict) -> dict:
    return {k: p.get(k) for k in ("id", "tag", "name", "birth_date", "sex", "age", "triage", "created", "updated")}


def after_triage_change(store, pid: str, triage: str) -> None:
    """Carry a triage (or identity) change on: the patient's pending sync rows get the
    priority of the new category, and a status document is queued for the hospital."""
    from ..sync.planner import reprioritise_patient
    reprioritise_patient(store, pid, triage)
    n = len((pstore.get_patient(store, pid) or {}).get("triage_history") or [])
    store.queue.enqueue(KIND_SYNC, {"patient_id": pid, "what": "triage"},
                        priority=sync_priority(triage, "triage"), key=f"update:{pid}:{n}:{time.time():.3f}")


# ----------------------------------------------------------------------------- board

def board_data(store) -> dict:
    def fn(db):
        pats = [dict(p) for p in db.table(T_PATIENTS).all() if not p.get("merged_into")]
        insts = db.table(T_INSTANCES).all()
        fnds = db.table(T_FINDINGS).all()
        return pats, insts, fnds
    pats, insts, fnds = store.read(fn)
    captures: dict[str, int] = {}
    states: dict[str, list[str]] = {}
    last: dict[str, float] = {}
    for r in insts:
        pid = r.get("patient_id")
        if str(r.get("modality") or "") != "SR":
            captures[pid] = captures.get(pid, 0) + 1
        states.setdefault(pid, []).append(str(r.get("sync_state") or "queued"))
        last[pid] = max(last.get(pid, 0.0), float(r.get("received_at") or 0))
    findings: dict[str, int] = {}
    for f in fnds:
        if f.get("assessable"):
            findings[f.get("patient_id")] = findings.get(f.get("patient_id"), 0) + 1
    counts = {c: 0 for c in TRIAGE_CATEGORIES}
    cards = []
    for p in pats:
        tri = p.get("triage") if p.get("triage") in TRIAGE_CATEGORIES else "none"
        counts[tri] += 1
        card = _public_patient(p)
        card.update(triage=tri, captures=captures.get(p["id"], 0), findings=findings.get(p["id"], 0),
                    sync=_sync_badge(states.get(p["id"], [])), last_capture=last.get(p["id"], 0.0),
                    identified=bool(p.get("name")))
        cards.append(card)
    cards.sort(key=lambda c: (TRIAGE_CATEGORIES.index(c["triage"]) if c["triage"] != "none" else 4.5,
                              -(c.get("updated") or 0)))
    return {"patients": cards, "counts": counts, "total": len(cards), "at": time.time()}


@bp.get("/board")
def board():
    return jsonify(board_data(kit_of().store))


@bp.post("/start")
def start():
    data = _body()
    return jsonify({"proposed": start_category(_answers(data.get("answers")))})


@bp.post("/patients")
def create_patient():
    store = kit_of().store
    data = _body()
    tag = _text(data, "tag", 64) or None
    category = _category(data.get("triage", "none"))
    answers = _answers(data.get("answers"))
    proposed = start_category(answers) if answers else None
    row = pstore.create_patient(store, tag=tag)
    if category != "none":
        row = pstore.set_triage(store, row["id"], category, by=_actor())
        if proposed is not None:
            _note_proposal(store, row["id"], proposed, answers)
        after_triage_change(store, row["id"], category)
    return jsonify({"patient": _public_patient(row), "proposed": proposed}), 201


def _note_proposal(store, pid: str, proposed: str, answers: dict) -> None:
    """Keep what the START assistant proposed next to what the clinician chose."""
    def fn(db):
        row = pstore.resolve_row(db, pid)
        hist = list(row.get("triage_history") or [])
        if hist:
            hist[-1] = dict(hist[-1], proposed=proposed, answers=answers)
            db.table(T_PATIENTS).update({"triage_history": hist}, _P.id == row["id"])
    store.write(fn)


@bp.get("/patients/<pid>")
def patient(pid):
    store = kit_of().store
    p = _patient_or_404(store, pid)
    rows = catalogue.instance_rows(store, patient_id=p["id"])
    fnds = store.read(lambda db: [dict(f) for f in db.table(T_FINDINGS).search(_F.patient_id == p["id"])])
    by_uid: dict[str, list] = {}
    for f in fnds:
        by_uid.setdefault(f["sop_instance_uid"], []).append(_finding_json(f))
    captures = []
    for r in sorted(rows, key=lambda r: r.get("received_at") or 0):
        if str(r.get("modality") or "") == "SR":
            continue  # the kit's own reports are shown as findings
        captures.append({
            "uid": r["sop_instance_uid"], "received_at": r.get("received_at"), "frames": r.get("frames") or 1,
            "frame_time_ms": r.get("frame_time_ms"), "modality": r.get("modality", ""),
            "description": r.get("series_description") or r.get("study_description") or "",
            "has_thumbnail": bool(r.get("thumbnail")) and not _purged(r),
            # a purged capture shows the same placeholder as one that did not decode, saying why
            "decode_error": _purged_text(r) if _purged(r) else (r.get("decode_error") or ""),
            "purged": _purged(r), "retrieve_url": r.get("retrieve_url") or "",
            "sync": str(r.get("sync_state") or "queued"), "sync_reason": r.get("sync_reason") or "",
            "zone": r.get("lung_zone") or "",
            "findings": by_uid.get(r["sop_instance_uid"], []),
        })
    others = [{"id": o["id"], "name": o.get("name") or "", "tag": o.get("tag") or ""}
              for o in pstore.list_patients(store) if o["id"] != p["id"] and o.get("name")]
    out = _public_patient(p)
    out.update(triage_history=p.get("triage_history") or [], notes=p.get("notes") or [],
               captures=captures, merge_targets=others if not p.get("name") else [],
               sync=_sync_badge([c["sync"] for c in captures]))
    return jsonify(out)


def _finding_json(f: dict) -> dict:
    return {k: f.get(k) for k in ("id", "task", "model", "model_version", "assessable", "reason", "confidence",
                                  "result", "frames", "frames_analysed", "frames_total", "view", "quality",
                                  "created", "review", "review_history")} | {
        # the overlay shows evidence; a finding that abstained has none to show
        "has_overlay": bool(f.get("overlay")) and bool(f.get("assessable"))}


@bp.post("/patients/<pid>/triage")
def triage(pid):
    store = kit_of().store
    data = _body()
    category = _category(data.get("triage"))
    _patient_or_404(store, pid)
    row = pstore.set_triage(store, pid, category, by=_actor())
    after_triage_change(store, row["id"], category)
    return jsonify({"patient": _public_patient(row), "triage_history": row.get("triage_history")})


@bp.post("/patients/<pid>/details")
def details(pid):
    """Name, age, sex and a note: added later, when the patient can say or is identified."""
    store = kit_of().store
    data = _body()
    name, note = _text(data, "name", MAX_NAME), _text(data, "note", MAX_TEXT)
    age_raw, sex = data.get("age"), data.get("sex")
    age = None
    if age_raw not in (None, ""):
        try:
            age = int(age_raw)
        except (TypeError, ValueError):
            raise BadInput("age must be a whole number of years") from None
        if not 0 <= age <= 130:
            raise BadInput("age must be between 0 and 130")
    if sex is not None and sex not in SEXES:
        raise BadInput("sex must be M, F, O or empty")
    actor = _actor()

    def fn(db):
        row = pstore.resolve_row(db, pid)
        if not row:
            raise NotFound(f"no patient {pid[:64]}")
        changes = {"updated": time.time()}
        if name is not None:
            changes["name"] = name
        if age is not None:
            changes["age"] = age
        if sex is not None:
            changes["sex"] = sex
        if note:
            changes["notes"] = list(row.get("notes") or []) + [{"text": note, "by": actor, "at": time.time()}]
        db.table(T_PATIENTS).update(changes, _P.id == row["id"])
        row.update(changes)
        return row

    row = store.write(fn)
    store.events.publish("patient.updated", patient_id=row["id"])
    if name is not None or sex is not None:  # identity travels to the hospital
        after_triage_change(store, row["id"], row.get("triage") or "none")
    return jsonify({"patient": _public_patient(row), "notes": row.get("notes") or []})


@bp.post("/patients/<pid>/merge")
def merge(pid):
    """Fold this (unidentified) patient into an identified one."""
    store = kit_of().store
    data = _body()
    into = _text(data, "into", 64)
    if not into:
        raise BadInput("say which patient to merge into")
    dst = pstore.merge_patients(store, pid, into)
    after_triage_change(store, dst["id"], dst.get("triage") or "none")
    return jsonify({"patient": _public_patient(dst)})


# ----------------------------------------------------------------------------- images

class Gone(NotFound):
    http_status = 410


def _purged(row: dict) -> bool:
    """Retention kept only a tombstone: the hospital has the object, the kit does not."""
    return bool(row.get("purged_at")) or not row.get("blob")


def _purged_text(row: dict) -> str:
    url = row.get("retrieve_url") or ""
    return "sent to the hospital and purged from this kit" + (f"; retrieve it at {url}" if url else "")


def _instance_or_404(store, uid: str) -> dict:
    row = catalogue.get_instance(store, uid)
    if row is None:
        raise NotFound("no such capture on this kit")
    return row


def _held_or_410(store, uid: str) -> dict:
    row = _instance_or_404(store, uid)
    if _purged(row):
        raise Gone(_purged_text(row))
    return row


def _image(data: bytes, mimetype: str) -> Response:
    # patient images: kept in the page's memory, never in the browser's disk cache
    return Response(data, mimetype=mimetype, headers={"Cache-Control": "no-store"})


@bp.get("/instances/<uid>/thumbnail.jpg")
def thumbnail(uid):
    store = kit_of().store
    row = _held_or_410(store, uid)
    if not row.get("thumbnail"):
        raise NotFound(row.get("decode_error") or "this capture has no thumbnail")
    return _image(catalogue.thumbnail_bytes(store, row), "image/jpeg")


class _Clips:
    """Decoded cines, downscaled, for the player: a small in-memory LRU (never on disk)."""

    def __init__(self, size: int = 4):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.building: dict[str, threading.Lock] = {}

    def get(self, store, row: dict) -> dict:
        key = row["blob"]
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            build_lock = self.building.setdefault(key, threading.Lock())
        with build_lock:  # one decode per clip, however many tablets open it at once
            with self.lock:
                if key in self.items:
                    return self.items[key]
            clip = _build_clip(store, row)
            with self.lock:
                self.items[key] = clip
                self.building.pop(key, None)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return clip


CLIPS = _Clips()
TILE_MAX_W = 480
MAX_PLAYER_FRAMES = 240


def _build_clip(store, row: dict) -> dict:
    import numpy as np
    from PIL import Image

    from ..dicom.frames import DecodeError, decode_frames

    ds = catalogue.read_dataset(store, row["sop_instance_uid"])
    n = int(row.get("frames") or 1)
    idx = list(range(n)) if n <= MAX_PLAYER_FRAMES else \
        [int(i) for i in np.linspace(0, n - 1, MAX_PLAYER_FRAMES).round()]
    try:
        frames = decode_frames(ds, idx)
    except DecodeError as exc:
        return {"error": str(exc)}
    h, w = frames.shape[1:3]
    scale = min(1.0, TILE_MAX_W / w)
    tw, th = max(1, int(w * scale)), max(1, int(h * scale))
    cols = max(1, int(np.ceil(np.sqrt(len(frames)))))
    rows_ = int(np.ceil(len(frames) / cols))
    sheet = Image.new("RGB", (cols * tw, rows_ * th))
    small = []
    for i, f in enumerate(frames):
        img = Image.fromarray(np.ascontiguousarray(f), "RGB")
        if scale < 1.0:
            img = img.resize((tw, th), Image.Resampling.BILINEAR)
        small.append(np.asarray(img))
        sheet.paste(img, ((i % cols) * tw, (i // cols) * th))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=82)
    ft = row.get("frame_time_ms")
    try:
        ft = float(ft) if ft else None
    except (TypeError, ValueError):
        ft = None
    if not ft or not (5 <= ft <= 2000):
        ft = 1000.0 / 30
    ft *= (n / len(frames))  # a subsampled long clip keeps its real duration
    return {"sprite": buf.getvalue(), "small": np.stack(small), "meta": {
        "frames": len(frames), "source_frames": n, "frame_time_ms": round(ft, 3), "tile_w": tw, "tile_h": th,
        "cols": cols, "width": int(w), "height": int(h)}}


@bp.get("/instances/<uid>/cine")
def cine(uid):
    store = kit_of().store
    row = _instance_or_404(store, uid)
    if _purged(row):
        return jsonify({"error": _purged_text(row), "purged": True,
                        "retrieve_url": row.get("retrieve_url") or ""}), 410
    if row.get("decode_error"):
        return jsonify({"error": row["decode_error"]}), 422
    clip = CLIPS.get(store, row)
    if "error" in clip:
        return jsonify({"error": clip["error"]}), 422
    return jsonify(clip["meta"])


@bp.get("/instances/<uid>/sprite.jpg")
def sprite(uid):
    store = kit_of().store
    row = _held_or_410(store, uid)
    clip = CLIPS.get(store, row)
    if "error" in clip:
        raise NotFound(clip["error"])
    return _image(clip["sprite"], "image/jpeg")


@bp.get("/findings/<fid>/overlay.png")
def overlay(fid):
    """The model's evidence as a transparent layer the player draws over every frame: the
    overlay image made by inference, minus the frame it was drawn on."""
    import numpy as np
    from PIL import Image

    store = kit_of().store
    f = store.read(lambda db: (lambda r: dict(r[0]) if r else None)(db.table(T_FINDINGS).search(_F.id == fid)))
    if f is None or not f.get("overlay"):
        raise NotFound("this finding has no overlay")
    row = _held_or_410(store, f["sop_instance_uid"])
    clip = CLIPS.get(store, row)
    if "error" in clip:
        raise NotFound(clip["error"])
    meta = clip["meta"]
    drawn = Image.open(io.BytesIO(store.blobs.get_bytes(f["overlay"]))).convert("RGB")
    drawn = np.asarray(drawn.resize((meta["tile_w"], meta["tile_h"]), Image.Resampling.BILINEAR)).astype(np.int16)
    small = clip["small"].astype(np.int16)
    diffs = np.abs(small - drawn[None]).reshape(len(small), -1).mean(axis=1)
    base = small[int(np.argmin(diffs))]
    changed = np.abs(drawn - base).max(axis=2) > 24
    rgba = np.zeros(drawn.shape[:2] + (4,), np.uint8)
    rgba[..., :3] = np.clip(drawn, 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(changed, 235, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return _image(buf.getvalue(), "image/png")


LUNG_ZONES = ("R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4")


@bp.post("/instances/<uid>/zone")
def zone(uid):
    """Which lung zone a capture was taken in (for the zone diagram); "" clears it."""
    store = kit_of().store
    value = _body().get("zone", "")
    if value not in LUNG_ZONES + ("",):
        raise BadInput(f"zone must be one of {', '.join(LUNG_ZONES)} or empty")

    def fn(db):
        rows = db.table(T_INSTANCES).search(_I.sop_instance_uid == uid)
        if not rows:
            raise NotFound("no such capture on this kit")
        db.table(T_INSTANCES).update({"lung_zone": value}, _I.sop_instance_uid == uid)
        return rows[0].get("patient_id", "")

    pid = store.write(fn)
    store.events.publish("patient.updated", patient_id=pid)
    return jsonify({"uid": uid, "zone": value})


# ----------------------------------------------------------------------------- findings

@bp.post("/findings/<fid>/review")
def review(fid):
    """Accept or reject a finding, with a note; kept on the finding with its history."""
    store = kit_of().store
    data = _body()
    decision = data.get("decision")
    if decision not in ("accepted", "rejected", "pending"):
        raise BadInput("decision must be accepted, rejected or pending")
    note = _text(data, "note", MAX_TEXT) or ""
    entry = {"decision": decision, "note": note, "by": _actor(), "at": time.time()}

    def fn(db):
        table = db.table(T_FINDINGS)
        rows = table.search(_F.id == fid)
        if not rows:
            raise NotFound("no such finding")
        hist = list(rows[0].get("review_history") or []) + [entry]
        table.update({"review": entry, "review_history": hist}, _F.id == fid)
        f = dict(rows[0], review=entry, review_history=hist)
        enqueue_review(store, f, entry)  # to the hospital with the next sync, in this same record
        return f

    from ..sync.updates import enqueue_review
    f = store.write(fn)
    store.events.publish("finding.reviewed", finding_id=fid, sop_instance_uid=f["sop_instance_uid"],
                         patient_id=f.get("patient_id", ""))
    return jsonify(_finding_json(f))


# ----------------------------------------------------------------------------- sync, device

@bp.get("/sync")
def sync():
    from ..sync.progress import kit_status
    kit = kit_of()
    st = kit_status(kit)
    total = sum(st["counts"].values())
    st["total"] = total
    st["done_fraction"] = (st["counts"]["confirmed"] / total) if total else 1.0
    return jsonify(st)


@bp.post("/sync/<row_id>/retry")
def sync_retry(row_id):
    store = kit_of().store
    store.queue.retry(row_id)
    store.events.publish("sync.retry", row_id=row_id)
    return jsonify({"ok": True, "row_id": row_id})


@bp.get("/device")
def device():
    kit = kit_of()
    out = {"kit_id": kit.config["kit.id"], "version": kit.version, "uptime_s": round(time.time() - kit.started_at),
           "queues": kit.store.queue.counts()}
    try:
        from ..hardware.policy import monitor_for
        monitor = kit.hardware or monitor_for(kit.config, kit.data_dir)
        out["power"] = monitor.state()
    except Exception as exc:  # a missing sensor is shown, not fatal
        out["power"] = {"error": str(exc)[:200]}
    inference = kit.services.get("inference")
    try:
        out["inference"] = inference.status() if inference is not None else {"running": False,
                                                                              "reason": "not started"}
    except Exception as exc:
        out["inference"] = {"running": False, "reason": str(exc)[:200]}
    from .live import max_streams, open_streams
    out["live"] = {"open": open_streams(), "max": max_streams(kit.config)}
    out["clock"] = kit.clock_watch.state() if kit.clock_watch is not None else None
    return jsonify(out)
