"""The JSON behind the tablet UI, in process (Flask test client on a real store):
bad input is refused with a clear message and changes nothing; roles are enforced; a
re-triage keeps history and re-prioritises pending sync rows; the sync view shows a
quarantined item with its reason and the retry puts it back in the queue; a lung finding's
M-mode strip is a PNG of the stored cine or a 404 that says why there is none."""

from __future__ import annotations

import re

import pytest

from fieldkit.records import KIND_SYNC, sync_priority
from fieldkit.web import create_app
from kitproc import ADMIN_PASSWORD, ADMIN_USER, run_cli

BASE = "https://localhost"


def _client(app, user, password):
    c = app.test_client()
    page = c.get("/login", base_url=BASE, headers={"Accept": "text/html"})
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    r = c.post("/login", data={"username": user, "password": password, "csrf_token": token}, base_url=BASE)
    assert r.status_code == 303, r.data
    csrf = c.get("/api/v1/session", base_url=BASE).json["csrf_token"]
    return c, csrf


class Tablet:
    def __init__(self, app, user, password):
        self.c, self.csrf = _client(app, user, password)

    def get(self, path):
        return self.c.get(path, base_url=BASE)

    def post(self, path, body, csrf=True):
        return self.c.post(path, json=body, base_url=BASE, headers={"X-CSRF-Token": self.csrf} if csrf else {})


@pytest.fixture
def ui(data_dir, tmp_path):
    for name, role in (("clin", "clinician"), ("tri", "triage")):
        secret = tmp_path / f".{name}"
        secret.write_text(f"{name} password 123\n")
        run_cli("users", "add", name, "--data-dir", data_dir, "--role", role, "--password-file", secret)
    from fieldkit.kit import open_kit
    kit = open_kit(data_dir)
    app = create_app(kit, testing=True)
    yield kit, app
    kit.close()


def test_bad_input_is_refused_and_changes_nothing(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    assert t.post("/api/v1/ui/patients", {"tag": "A-1", "triage": "red"}).status_code == 201
    cases = [
        ("/api/v1/ui/patients", {"tag": "A-1", "triage": "red"}, 400, "already exists"),
        ("/api/v1/ui/patients", {"tag": "A-2", "triage": "purple"}, 400, "triage must be one of"),
        ("/api/v1/ui/patients", {"tag": "A-3", "triage": "red", "answers": {"walking": "yes"}}, 400, "true, false"),
        ("/api/v1/ui/patients", {"tag": "A-4", "triage": "red", "answers": {"bleeding": True}}, 400, "unknown START"),
        ("/api/v1/ui/patients", {"tag": "x" * 65, "triage": "red"}, 400, "longer than"),
        ("/api/v1/ui/patients/A-1/triage", {"triage": "blue"}, 400, "triage must be one of"),
        ("/api/v1/ui/patients/NOPE/triage", {"triage": "red"}, 404, "no patient"),
        ("/api/v1/ui/patients/A-1/details", {"age": "old"}, 400, "whole number"),
        ("/api/v1/ui/patients/A-1/details", {"age": 200}, 400, "between 0 and 130"),
        ("/api/v1/ui/patients/A-1/details", {"sex": "X"}, 400, "sex must be"),
        ("/api/v1/ui/patients/A-1/details", {"name": "a\x00b"}, 400, "control characters"),
        ("/api/v1/ui/patients/A-1/details", {"note": "n" * 2001}, 400, "longer than"),
        ("/api/v1/ui/patients/A-1/merge", {"into": "A-1"}, 400, "already the same patient"),
        ("/api/v1/ui/findings/nope/review", {"decision": "maybe"}, 400, "decision must be"),
        ("/api/v1/ui/findings/nope/review", {"decision": "accepted"}, 404, "no such finding"),
        ("/api/v1/ui/instances/nope/zone", {"zone": "Z9"}, 400, "zone must be one of"),
    ]
    for path, body, status, words in cases:
        r = t.post(path, body)
        assert r.status_code == status and words in r.json["error"], (path, body, r.status_code, r.json)
    r = t.c.post("/api/v1/ui/patients/A-1/details", data="not json", base_url=BASE,
                 headers={"X-CSRF-Token": t.csrf, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json["error"]
    p = t.get("/api/v1/ui/patients/A-1").json
    assert p["triage"] == "red" and p["age"] is None and p["name"] == "" and p["notes"] == []
    assert [h["triage"] for h in p["triage_history"]] == ["red"]
    assert t.get("/api/v1/ui/board").json["total"] == 1


def test_roles_and_csrf(ui):
    kit, app = ui
    clin = Tablet(app, "clin", "clin password 123")
    tri = Tablet(app, "tri", "tri password 123")
    admin = Tablet(app, ADMIN_USER, ADMIN_PASSWORD)
    assert tri.post("/api/v1/ui/patients", {"tag": "R-1", "triage": "yellow"}).status_code == 201  # triage may tag
    assert tri.post("/api/v1/ui/patients/R-1/details", {"name": "X"}).status_code == 403  # not identity
    assert admin.post("/api/v1/ui/patients/R-1/triage", {"triage": "red"}).status_code == 403
    assert clin.post("/api/v1/ui/patients/R-1/triage", {"triage": "red"}, csrf=False).status_code == 403
    assert clin.get("/api/v1/ui/patients/R-1").json["triage"] == "yellow"
    assert clin.post("/api/v1/ui/patients/R-1/triage", {"triage": "red"}).status_code == 200
    assert admin.get("/api/v1/ui/board").status_code == 200
    assert tri.get("/api/v1/ui/device").status_code == 200
    anon = app.test_client()
    assert anon.get("/api/v1/ui/board", base_url=BASE).status_code == 401
    r = anon.get("/patients/R-1", base_url=BASE, headers={"Accept": "text/html"})
    assert r.status_code == 303 and "/login?next=/patients/R-1" in r.headers["Location"]
    for path in ("/sw.js", "/manifest.webmanifest"):  # code, no data: public
        assert anon.get(path, base_url=BASE).status_code == 200


def test_retriage_keeps_history_and_moves_pending_sync_rows(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    assert t.post("/api/v1/ui/patients", {"tag": "S-1", "triage": "green"}).status_code == 201
    from fieldkit.store.instances import put_instance
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    ds = dcmread(get_testdata_file("examples_ybr_color.dcm"))
    ds.PatientID = "S-1"
    out = put_instance(kit.store, ds, "kit")
    uid = out["sop_instance_uid"]
    row = [r for r in kit.store.queue.rows(KIND_SYNC) if r.payload.get("sop_instance_uid") == uid][0]
    assert row.priority == sync_priority("green", "image")
    r = t.post("/api/v1/ui/patients/S-1/triage", {"triage": "red"})
    assert r.status_code == 200
    assert [h["triage"] for h in r.json["triage_history"]] == ["green", "red"]
    assert kit.store.queue.get(row.id).priority == sync_priority("red", "image")
    updates = [r for r in kit.store.queue.rows(KIND_SYNC) if r.payload.get("what") == "triage"
               and r.payload.get("patient_id") == "S-1"]
    assert updates and min(u.priority for u in updates) == sync_priority("red", "triage")
    board = t.get("/api/v1/ui/board").json
    card = [c for c in board["patients"] if c["id"] == "S-1"][0]
    assert card["triage"] == "red" and card["captures"] == 1 and card["sync"] == "queued"
    assert board["counts"]["red"] == 1 and board["counts"]["green"] == 0
    # the cine and thumbnail endpoints answer for this capture
    assert t.get(f"/api/v1/ui/instances/{uid}/thumbnail.jpg").mimetype == "image/jpeg"
    meta = t.get(f"/api/v1/ui/instances/{uid}/cine").json
    assert meta["frames"] == 30 and abs(meta["frame_time_ms"] - 33.333) < 0.01
    sprite = t.get(f"/api/v1/ui/instances/{uid}/sprite.jpg")
    assert sprite.status_code == 200 and sprite.headers["Cache-Control"] == "no-store"


def test_m_mode_strip_of_a_lung_finding_or_the_reason_there_is_none(ui):
    """On a stored 30-frame cine (its pixels are no lung: the rows say what the models found):
    a strip 4 pixels a frame wide with the pleural row ticked in its margins; a 404 with the
    reason for a finding without a sliding result (made before it existed), one whose judge
    found no pleural line or too few lung frames, and one that is not lung."""
    import io
    import time

    import numpy as np
    from PIL import Image

    from fieldkit.inference import findings as inference_findings
    from fieldkit.store.instances import put_instance
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    ds = dcmread(get_testdata_file("examples_ybr_color.dcm"))
    ds.PatientID = "M-1"
    uid = put_instance(kit.store, ds, "kit")["sop_instance_uid"]
    found = {"status": "present", "reason_code": "", "columns": [60], "pleura_row": 40,
             "m_mode": {"columns": [300], "pleura_row": 150}}
    rows = {"strip": ("lung", found), "before": ("lung", None),
            "no-line": ("lung", dict(found, status="not assessable", reason_code="no_pleura", columns=[], m_mode=None)),
            "few": ("lung", dict(found, status="not assessable", reason_code="too_few_frames", columns=[],
                                 pleura_row=None, m_mode=None)),
            "fast": ("fast", None)}
    inference_findings.replace(kit.store, uid, [{
        "id": f"f-{name}", "sop_instance_uid": uid, "patient_id": "M-1", "model": "m", "model_sha256": "0" * 64,
        "model_version": "1", "task": task, "assessable": True, "reason": "", "overlay": None, "created": time.time(),
        "result": {"sliding": sliding} if sliding else {}} for name, (task, sliding) in rows.items()])
    r = t.get("/api/v1/ui/findings/f-strip/mmode.png")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.headers["Cache-Control"] == "no-store"
    meta = t.get(f"/api/v1/ui/instances/{uid}/cine").json
    img = np.asarray(Image.open(io.BytesIO(r.data)))
    assert img.shape == (meta["tile_h"], 30 * 4 + 2 * 8), (img.shape, meta)  # 30 frames, a margin each side
    tick = round(150 * meta["tile_h"] / meta["height"])
    for margin in (img[:, :8], img[:, -8:]):
        assert set(np.flatnonzero(margin.max(1))) == {tick - 1, tick}, np.flatnonzero(margin.max(1))
    for fid, words in (("before", "this finding has no lung sliding result"),
                       ("no-line", "no pleural line was found to take an M-mode through"),
                       ("few", "too few lung frames in the clip for an M-mode strip"),
                       ("fast", "an M-mode strip is made for lung findings only")):
        r = t.get(f"/api/v1/ui/findings/f-{fid}/mmode.png")
        assert r.status_code == 404 and r.json["error"] == words, (fid, r.status_code, r.json)


def test_an_undo_is_recorded_and_never_overwrites_another_tablets_change(ui):
    kit, app = ui
    first, second = Tablet(app, "clin", "clin password 123"), Tablet(app, "tri", "tri password 123")
    assert first.post("/api/v1/ui/patients", {"tag": "U-1", "triage": "red"}).status_code == 201
    assert first.post("/api/v1/ui/patients/U-1/triage", {"triage": "black", "expected": "red"}).status_code == 200
    r = first.post("/api/v1/ui/patients/U-1/triage", {"triage": "red", "expected": "black", "undo": True})
    assert r.status_code == 200
    assert [(h["triage"], h["by"], bool(h.get("undo"))) for h in r.json["triage_history"]] == [
        ("red", "clin", False), ("black", "clin", False), ("red", "clin", True)]
    # a mis-tap undone too late: another tablet re-triaged meanwhile, the undo is refused
    assert first.post("/api/v1/ui/patients/U-1/triage", {"triage": "green", "expected": "red"}).status_code == 200
    assert second.post("/api/v1/ui/patients/U-1/triage", {"triage": "yellow"}).status_code == 200
    r = first.post("/api/v1/ui/patients/U-1/triage", {"triage": "red", "expected": "green", "undo": True})
    assert r.status_code == 409 and "re-triaged meanwhile" in r.json["error"]
    assert first.get("/api/v1/ui/patients/U-1").json["triage"] == "yellow"
    for bad in ({"triage": "red", "undo": "yes"}, {"triage": "red", "expected": "purple"}):
        r = first.post("/api/v1/ui/patients/U-1/triage", bad)
        assert r.status_code == 400, bad
    assert len(first.get("/api/v1/ui/patients/U-1").json["triage_history"]) == 5  # nothing recorded


def test_sync_view_shows_quarantined_reason_and_retry(ui):
    kit, app = ui
    t = Tablet(app, "clin", "clin password 123")
    admin = Tablet(app, ADMIN_USER, ADMIN_PASSWORD)
    row_id = kit.store.queue.enqueue(KIND_SYNC, {"patient_id": "Q-1", "what": "triage"}, priority=5, key="q1")
    leased = kit.store.queue.lease(KIND_SYNC)
    assert leased.id == row_id
    kit.store.queue.fail(row_id, "hospital refused: 0xA700 out of resources", permanent=True)
    st = t.get("/api/v1/ui/sync").json
    item = [i for i in st["items"] if i["row_id"] == row_id][0]
    assert item["state"] == "quarantined" and "0xA700" in item["reason"]
    assert st["counts"]["quarantined"] == 1
    assert t.post(f"/api/v1/ui/sync/{row_id}/retry", {}).status_code == 403  # clinician: no queue.manage
    assert admin.post(f"/api/v1/ui/sync/{row_id}/retry", {}).status_code == 200
    item = [i for i in admin.get("/api/v1/ui/sync").json["items"] if i["row_id"] == row_id][0]
    assert item["state"] == "queued"
