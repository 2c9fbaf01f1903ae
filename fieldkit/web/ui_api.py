"""JSON endpoints behind the tablet UI, under /api/v1/ui/.

Pages (fieldkit.web.ui) are shells; what they show comes from here, so the service worker
can keep the last board and a second tablet can refresh a view when the live stream
says something changed. Every write checks its input first and answers with the new
state. Text from DICOM and from people is returned as data; the pages put it in the DOM
with textContent only.

Views only: the START rule is in start_rule, the player's images in clip_images and their
cache in clip_cache, the board's rows in store.board, and every read and write goes
through the store's modules.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from ..dicom.names import format_person_name
from ..errors import BadInput, NotFound
from ..records import KIND_SYNC, TRIAGE_CATEGORIES, is_purged as _purged, sync_priority, view_probability
from ..security import roles as R
from ..store import care, clinician, findings, probes
from ..store import instances as catalogue
from ..store import patients as pstore
from ..store.board import NOT_CAPTURES, TRAY_MAX, findings_of, public_patient, sync_badge
from ..store.board import rows_for as board_rows
from . import json_object as _body, kit_of
from .api import shown_disk
from .clip_cache import CLIPS
from .clip_images import evidence_layer, m_mode_png
from .messages import translate
from .start_rule import START_QUESTIONS, parse_answers, start_category

__all__ = ["bp", "ROUTE_PERMISSIONS", "START_QUESTIONS", "start_category", "board_data"]

bp = Blueprint("ui_api", __name__, url_prefix="/api/v1/ui")

ROUTE_PERMISSIONS = {
    "ui_api.board": R.PATIENTS_READ,
    "ui_api.start": R.AUTHENTICATED,  # pure function of the answers, no patient data
    "ui_api.create_patient": R.TRIAGE_WRITE,
    "ui_api.patient": R.PATIENTS_READ,
    "ui_api.triage": R.TRIAGE_WRITE,
    "ui_api.details": R.CARE_WRITE,  # a name change also needs patients.write (checked inside)
    "ui_api.merge": R.PATIENTS_WRITE,
    "ui_api.confirm_name": R.PATIENTS_WRITE,
    "ui_api.thumbnail": R.PATIENTS_READ,
    "ui_api.cine": R.PATIENTS_READ,
    "ui_api.sprite": R.PATIENTS_READ,
    "ui_api.overlay": R.PATIENTS_READ,
    "ui_api.m_mode": R.PATIENTS_READ,
    "ui_api.review": R.FINDINGS_WRITE,
    "ui_api.zone": R.PATIENTS_WRITE,
    "ui_api.sync": R.QUEUE_READ,
    "ui_api.sync_retry": R.QUEUE_MANAGE,
    "ui_api.device": R.STATUS_READ,
}

SEXES = ("", "M", "F", "O")
MAX_TEXT = 2000
MAX_NAME = 200


# ----------------------------------------------------------------------------- helpers

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


def after_triage_change(store, pid: str, triage: str) -> None:
    """Carry a triage (or identity) change on: the patient's pending sync rows get the
    priority of the new category, and a status document is queued for the hospital."""
    from ..sync.planner import reprioritise_patient
    reprioritise_patient(store, pid, triage)
    n = len((pstore.get_patient(store, pid) or {}).get("triage_history") or [])
    store.queue.enqueue(KIND_SYNC, {"patient_id": pid, "what": "triage"},
                        priority=sync_priority(triage, "triage"), key=f"update:{pid}:{n}:{time.time():.3f}")


# ----------------------------------------------------------------------------- board

def _live_id(store) -> str:
    bus = store.events
    return f"{bus.epoch}.{bus.last_seq}"


def board_data(store) -> dict:
    """The whole board, with the live-stream position it reflects (`live_id`): a tablet
    opens its stream from there and patches the board with the rows the stream sends."""
    live_id = _live_id(store)  # taken first: what happens next is sent again, harmlessly
    return board_rows(store).board() | {"live_id": live_id}


BOARD_MAX_LIMIT = 1000  # most cards one page may ask for


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not low <= int(raw) <= high:
        raise BadInput(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


@bp.get("/board")
def board():
    """One page of the board in board order (`limit`, default ui.board_page_size; the next
    page `after` the `next` cursor of this one), of one category (`triage`) or matching a
    search (`q`: tag, ID or name), with the whole board's counts and the live position."""
    kit = kit_of()
    store = kit.store
    live_id = _live_id(store)  # taken first, as in board_data
    limit = _int_arg("limit", int(kit.config.get("ui.board_page_size", 100)), 1, BOARD_MAX_LIMIT)
    after = request.args.get("after") or None
    triage = request.args.get("triage") or None
    q = request.args.get("q", "")
    if len(q) > MAX_NAME:
        raise BadInput(f"q is longer than {MAX_NAME} characters")
    text = board_rows(store).page_json(limit, after=after, triage=triage, q=q, tray_max=TRAY_MAX, live_id=live_id)
    return Response(text, mimetype="application/json")


@bp.post("/start")
def start():
    data = _body()
    return jsonify({"proposed": start_category(parse_answers(data.get("answers")))})


@bp.post("/patients")
def create_patient():
    store = kit_of().store
    data = _body()
    tag = _text(data, "tag", 64) or None
    category = _category(data.get("triage", "none"))
    answers = parse_answers(data.get("answers"))
    proposed = start_category(answers) if answers else None
    row = pstore.create_patient(store, tag=tag, registered=True)
    if category != "none":
        row = pstore.set_triage(store, row["id"], category, by=_actor())
        if proposed is not None:
            pstore.note_proposal(store, row["id"], proposed, answers)
        after_triage_change(store, row["id"], category)
    return jsonify({"patient": public_patient(row), "proposed": proposed}), 201


@bp.get("/patients/<pid>")
def patient(pid):
    store = kit_of().store
    p = _patient_or_404(store, pid)
    rows = catalogue.instance_rows(store, patient_id=p["id"])
    fnds = findings_of(store, p["id"])
    by_uid: dict[str, list] = {}
    for f in fnds:
        by_uid.setdefault(f["sop_instance_uid"], []).append(_finding_json(f))
    captures = []
    for r in sorted(rows, key=lambda r: r.get("received_at") or 0):
        if str(r.get("modality") or "") in NOT_CAPTURES:
            continue  # the kit's own reports are shown as findings; documents are no captures
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
            "linked_by": r.get("linked_by") or "", "probe": r.get("calling_ae") or "",
            "findings": by_uid.get(r["sop_instance_uid"], []),
        })
    out = public_patient(p)
    out.update(triage_history=p.get("triage_history") or [], notes=p.get("notes") or [],
               captures=captures, display_name=format_person_name(p.get("name")),
               name_from_probe=pstore.name_from_probe(p), unassigned=pstore.is_unassigned(p),
               tags=pstore.all_tags(p), probe_sessions=probes.sessions_for(store, p["id"]),
               sync=sync_badge([c["sync"] for c in captures]),
               review=p.get("review") or [])  # offline changes that need a look (store.offline)
    out.update(care.card_fields(p), movement_history=p.get("movement_history") or [])
    return jsonify(out)


def _finding_json(f: dict) -> dict:
    return {k: f.get(k) for k in ("id", "task", "model", "model_version", "assessable",
                                  "result", "frames", "frames_analysed", "frames_total", "view", "quality",
                                  "created", "review", "review_history")} | {
        # the overlay shows evidence; a finding that abstained has none to show
        "has_overlay": bool(f.get("overlay")) and bool(f.get("assessable")),
        # the model's reason for no assessment, shown behind a tap in the page's language
        "reason": translate(f.get("reason")),
        # two different figures, kept apart: how sure the gate is of the view, and (when the
        # model gives one) the probability of the finding itself
        "view_probability": view_probability(f), "finding_probability": f.get("finding_probability")}


@bp.post("/patients/<pid>/triage")
def triage(pid):
    store = kit_of().store
    data = _body()
    category = _category(data.get("triage"))
    undo = data.get("undo", False)
    if not isinstance(undo, bool):
        raise BadInput("undo must be true or false")
    # the category the tablet saw: an undo never overwrites another tablet's change
    expected = _category(data["expected"]) if data.get("expected") is not None else None
    _patient_or_404(store, pid)
    row = pstore.set_triage(store, pid, category, by=_actor(), undo=undo, expected=expected)
    after_triage_change(store, row["id"], category)
    return jsonify({"patient": public_patient(row), "triage_history": row.get("triage_history")})


@bp.post("/patients/<pid>/details")
def details(pid):
    """Name, age, sex and a note: added later, when the patient can say or is identified."""
    store = kit_of().store
    data = _body()
    name, note = _text(data, "name", MAX_NAME), _text(data, "note", MAX_TEXT)
    if name is not None:  # identity is the clinician's: triage records notes, age and sex only
        from .auth import require
        require(R.PATIENTS_WRITE)
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
    row = pstore.update_details(store, pid, name=name, age=age, sex=sex, note=note or "", actor=_actor())
    if name is not None or sex is not None:  # identity travels to the hospital
        after_triage_change(store, row["id"], row.get("triage") or "none")
    return jsonify({"patient": public_patient(row), "notes": row.get("notes") or []})


@bp.post("/patients/<pid>/merge")
def merge(pid):
    """Fold this (unidentified) patient into an identified one."""
    store = kit_of().store
    data = _body()
    into = _text(data, "into", 64)
    if not into:
        raise BadInput("say which patient to merge into")
    undo_seconds = float(kit_of().config["patients.merge_undo_seconds"])
    merged = _patient_or_404(store, pid)["id"]  # the record itself, also when named by a merged tag
    dst = pstore.merge_patients(store, merged, into, by=_actor(), undo_seconds=undo_seconds)
    after_triage_change(store, dst["id"], dst.get("triage") or "none")
    # the tablet offers undo (POST .../<merged>/unmerge) for as long as the kit allows it
    return jsonify({"patient": public_patient(dst), "merged": merged, "undo_seconds": undo_seconds})


@bp.post("/patients/<pid>/confirm-name")
def confirm_name(pid):
    """A clinician confirms the name a probe supplied: shown from then on as the patient's name."""
    row = pstore.confirm_name(kit_of().store, pid, by=_actor())
    return jsonify({"patient": public_patient(row), "display_name": format_person_name(row.get("name")),
                    "name_from_probe": pstore.name_from_probe(row)})


# ----------------------------------------------------------------------------- images

class Gone(NotFound):
    http_status = 410


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


def _clip_or_404(store, row) -> dict:
    """The capture's decoded clip (the player's), or 404 with why it does not decode."""
    clip = CLIPS.get(store, row)
    if "error" in clip:
        raise NotFound(clip["error"])
    return clip


@bp.get("/instances/<uid>/sprite.jpg")
def sprite(uid):
    store = kit_of().store
    row = _held_or_410(store, uid)
    clip = _clip_or_404(store, row)
    return _image(clip["sprite"], "image/jpeg")


@bp.get("/findings/<fid>/overlay.png")
def overlay(fid):
    """The model's evidence as a transparent layer the player draws over every frame: the
    overlay image made by inference, minus the frame it was drawn on."""
    store = kit_of().store
    f = findings.get(store, fid)
    if f is None or not f.get("overlay"):
        raise NotFound("this finding has no overlay")
    row = _held_or_410(store, f["sop_instance_uid"])
    clip = _clip_or_404(store, row)
    return _image(evidence_layer(store.blobs.get_bytes(f["overlay"]), clip), "image/png")


@bp.get("/findings/<fid>/mmode.png")
def m_mode(fid):
    """A lung finding's M-mode strip through the pleura, made from the stored cine (the
    player's decoded clip), for the clinician to check the kit's lung sliding call:
    seashore when the lung slides, barcode when it does not."""
    store = kit_of().store
    f = findings.get(store, fid)
    if f is None:
        raise NotFound("no such finding")
    if f.get("task") != "lung":
        raise NotFound("an M-mode strip is made for lung findings only")
    sliding = (f.get("result") or {}).get("sliding")
    if not sliding:
        raise NotFound("this finding has no lung sliding result")
    row = _held_or_410(store, f["sop_instance_uid"])
    if int(row.get("frames") or 1) < 2 or sliding.get("reason_code") == "single_frame":
        raise NotFound("a single frame has no M-mode: it needs a cine")
    where = sliding.get("m_mode")
    if not where:
        raise NotFound("too few lung frames in the clip for an M-mode strip"
                       if sliding.get("reason_code") == "too_few_frames" else
                       "no pleural line was found to take an M-mode through")
    clip = _clip_or_404(store, row)
    return _image(m_mode_png(clip, where["columns"], where["pleura_row"]), "image/png")


LUNG_ZONES = ("R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4")


@bp.post("/instances/<uid>/zone")
def zone(uid):
    """Which lung zone a capture was taken in (for the zone diagram); "" clears it."""
    store = kit_of().store
    value = _body().get("zone", "")
    if value not in LUNG_ZONES + ("",):
        raise BadInput(f"zone must be one of {', '.join(LUNG_ZONES)} or empty")
    clinician.set_lung_zone(store, uid, value)
    return jsonify({"uid": uid, "zone": value})


# ----------------------------------------------------------------------------- findings

@bp.post("/findings/<fid>/review")
def review(fid):
    """Accept or reject a finding (acknowledge one where the model gave no assessment), with
    a note; kept on the finding with its history."""
    store = kit_of().store
    data = _body()
    decision = data.get("decision")
    if decision not in ("accepted", "rejected", "acknowledged", "pending"):
        raise BadInput("decision must be accepted, rejected, acknowledged or pending")
    found = findings.get(store, fid)
    if found is not None and decision != "pending" and (decision == "acknowledged") == bool(found.get("assessable")):
        raise BadInput("a finding is accepted or rejected; a 'no assessment' is acknowledged (there is nothing to accept)"
                       if found.get("assessable") else
                       "the model gave no assessment here: there is nothing to accept or reject, acknowledge it")
    note = _text(data, "note", MAX_TEXT) or ""
    entry = {"decision": decision, "note": note, "by": _actor(), "at": time.time()}
    from ..sync.updates import enqueue_review
    # queued for the hospital in the same journal record as the review itself
    f = clinician.review_finding(store, fid, entry, also=lambda f: enqueue_review(store, f, entry))
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
           "queues": kit.store.queue.counts(), "disk": kit.store.space.state()}
    out = shown_disk(out)
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
    if out["inference"].get("reason"):  # shown on the Device page
        out["inference"] = out["inference"] | {"reason": translate(out["inference"]["reason"])}
    from .live import max_streams, open_streams
    out["live"] = {"open": open_streams(), "max": max_streams(kit.config)}
    backup = kit.services.get("backup")
    if backup is not None:
        out["backup"] = backup.status()
    from ..store.scrub import damage
    scrub = kit.services.get("scrub")
    out["scrub"] = scrub.status() if scrub is not None else {"running": False, "reason": "not started"}
    if out["scrub"].get("reason"):
        out["scrub"] = out["scrub"] | {"reason": translate(out["scrub"]["reason"])}
    out["damage"] = damage(kit.store)
    out["clock"] = kit.clock_watch.state() if kit.clock_watch is not None else None
    from ..security.tls import server_expiry
    expires = server_expiry(kit.data_dir)  # what is on disk: a renewed one is served after a restart
    out["tls"] = {"server_expires": expires.timestamp() if expires else None}
    from ..store.accounts import audit_anchor
    out["audit"] = audit_anchor(kit.store)
    return jsonify(out)
