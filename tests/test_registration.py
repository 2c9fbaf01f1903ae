"""Fast registration, in process (Flask test client on a real store): a patient registered
with no tag gets an N- ID, unlike the U- record an unlinked capture makes (old U- IDs still
read); the tag field brings up the keypad the kit's tag format asks for; the page loads the
vendored barcode reader and the CSP lets its WebAssembly compile and nothing more. And the
AI in plain words: a model's abstention is acknowledged, never accepted or rejected."""

from __future__ import annotations

import re

import pytest

from fieldkit.records import T_FINDINGS, T_PATIENTS
from fieldkit.store import findings, patients
from fieldkit.web import create_app
from kitproc import run_cli, set_config
from test_ui_api import BASE, Tablet


def _app(data_dir, tmp_path, **settings):
    for name, role in (("tri", "triage"), ("clin", "clinician")):
        secret = tmp_path / f".{name}"
        secret.write_text(f"{name} password 123\n")
        run_cli("users", "add", name, "--data-dir", data_dir, "--role", role, "--password-file", secret)
    if settings:
        set_config(data_dir, **settings)
    from fieldkit.kit import open_kit
    kit = open_kit(data_dir)
    return kit, create_app(kit, testing=True)


@pytest.fixture
def kit_app(data_dir, tmp_path):
    kit, app = _app(data_dir, tmp_path)
    yield kit, app
    kit.close()


def test_tagless_patient_gets_an_n_id_and_a_capture_record_keeps_u(kit_app):
    kit, app = kit_app
    t = Tablet(app, "tri", "tri password 123")
    r = t.post("/api/v1/ui/patients", {"tag": "", "triage": "green"})
    assert r.status_code == 201, r.json
    pid = r.json["patient"]["id"]
    assert re.fullmatch(r"N-[0-9A-F]{6}", pid), pid
    assert r.json["patient"]["tag"] is None
    # a record made for a capture nobody linked (an upload with no patient) stays U-
    capture_row = patients.create_patient(kit.store)
    assert re.fullmatch(r"U-[0-9A-F]{6}", capture_row["id"])
    # an old U- record a person registered before N- existed still reads and re-triages
    old = patients.make_row("U-0A0B0C", triage="yellow")
    kit.store.write(lambda db: db.table(T_PATIENTS).insert(old))
    assert t.get("/api/v1/ui/patients/U-0A0B0C").json["triage"] == "yellow"
    assert t.post("/api/v1/ui/patients/U-0A0B0C/triage", {"triage": "red", "expected": "yellow"}).status_code == 200
    board = {p["id"]: p for p in t.get("/api/v1/ui/board").json["patients"]}
    assert board[pid]["triage"] == "green" and board["U-0A0B0C"]["triage"] == "red"


def test_a_tag_typed_as_text_is_kept_even_on_a_numeric_kit(kit_app):
    kit, app = kit_app
    t = Tablet(app, "tri", "tri password 123")
    assert t.post("/api/v1/ui/patients", {"tag": "A-77", "triage": "yellow"}).status_code == 201
    assert t.get("/api/v1/ui/patients/A-77").json["tag"] == "A-77"
    again = t.post("/api/v1/ui/patients", {"tag": "A-77", "triage": "red"})
    assert again.status_code == 400 and "already exists" in again.json["error"]


def _tag_input(app):
    t = Tablet(app, "tri", "tri password 123")
    page = t.c.get("/patients/new", base_url=BASE, headers={"Accept": "text/html"})
    assert page.status_code == 200
    return re.search(r'<input id="tag"[^>]*>', page.text).group(0), page


def test_numeric_tags_bring_up_the_number_keypad(kit_app):
    _, app = kit_app
    tag, page = _tag_input(app)
    assert 'inputmode="numeric"' in tag  # the default: the kit's tags carry numbers
    assert "create-next" in page.text and "Add and register next" in page.text


def test_text_tags_bring_up_the_full_keyboard(data_dir, tmp_path):
    kit, app = _app(data_dir, tmp_path, triage__tag_format="text")
    try:
        tag, _ = _tag_input(app)
        assert 'inputmode="text"' in tag
    finally:
        kit.close()


def test_bad_tag_format_setting_is_refused(data_dir):
    set_config(data_dir, triage__tag_format="letters")
    from fieldkit.config import Config
    from fieldkit.errors import ConfigError
    with pytest.raises(ConfigError, match="tag_format"):
        Config.load(data_dir / "fieldkit.toml")


def test_vendored_reader_is_served_and_the_csp_allows_only_its_wasm(kit_app):
    _, app = kit_app
    c = app.test_client()
    wasm = c.get("/static/vendor/barcode-detector/zxing_reader.wasm", base_url=BASE)
    assert wasm.status_code == 200 and wasm.data[:4] == b"\0asm" and wasm.mimetype == "application/wasm"
    js = c.get("/static/vendor/barcode-detector/ponyfill.js", base_url=BASE)
    assert js.status_code == 200 and b"BarcodeDetectionAPI" in js.data
    csp = wasm.headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", csp).group(1).split()
    assert script_src == ["'self'", "'wasm-unsafe-eval'"]
    assert "unsafe-inline" not in csp


def _finding(kit, fid: str, patient: str, assessable: bool) -> None:
    row = {"id": fid, "sop_instance_uid": "1.2.3." + fid[-1], "sr_sop_instance_uid": "", "study_instance_uid": "1.2.3",
           "patient_id": patient, "task": "lung", "model": "lung-test", "model_version": "1.0",
           "assessable": assessable, "confidence": 0.9 if assessable else None,
           "reason": "" if assessable else "view/quality gate per frame: uncertain 30/30; threshold p>=0.6",
           "result": {"pattern": "B-line pattern", "max_b_lines": 4} if assessable else {}}
    kit.store.write(lambda db: db.table(T_FINDINGS).insert(row))


def test_an_abstention_is_acknowledged_not_accepted(kit_app):
    kit, app = kit_app
    t = Tablet(app, "clin", "clin password 123")
    patients.create_patient(kit.store, tag="AI-1")
    _finding(kit, "f-abst1", "AI-1", assessable=False)
    _finding(kit, "f-blin2", "AI-1", assessable=True)
    for fid, decision, words in (("f-abst1", "accepted", "nothing to accept or reject"),
                                 ("f-abst1", "rejected", "nothing to accept or reject"),
                                 ("f-blin2", "acknowledged", "accepted or rejected")):
        r = t.post(f"/api/v1/ui/findings/{fid}/review", {"decision": decision})
        assert r.status_code == 400 and words in r.json["error"], r.json
    assert all(f.get("review") is None for f in findings.for_patient(kit.store, "AI-1"))  # nothing changed
    r = t.post("/api/v1/ui/findings/f-abst1/review", {"decision": "acknowledged", "note": "re-scan later"})
    assert r.status_code == 200, r.json
    assert findings.get(kit.store, "f-abst1")["review"]["decision"] == "acknowledged"
    assert t.post("/api/v1/ui/findings/f-blin2/review", {"decision": "accepted"}).status_code == 200
