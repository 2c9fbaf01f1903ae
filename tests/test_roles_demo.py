"""Roles and the demo:

- `fieldkit demo` makes an admin, a clinician and a triage account and prints all three
  with their passwords and what each role does; each of them can sign in;
- a person refused for their role gets a page in the kit's style that names the role(s)
  that may (HTML), while an API client still gets JSON; a check inside a view (triage
  changing a name) names its role too;
- the logging `serve` sets up keeps highdicom's "copy attributes of module" INFO lines and
  pynetdicom's "not a transfer syntax" warnings off the console, and the kit's own lines on.
"""

from __future__ import annotations

import logging

import pytest

from fieldkit import kit as running_kit
from fieldkit.cli.demo import DEMO_ACCOUNTS
from fieldkit.web import create_app
from fixtures.board import grow
from kitproc import run_cli
from test_ui_api import BASE, Tablet, ui  # noqa: F401  (ui: a fixture)


def test_demo_makes_and_prints_an_account_per_role_and_each_signs_in(tmp_path):
    data_dir = tmp_path / "demo-data"
    out = run_cli("demo", "--data-dir", data_dir, "--no-serve", timeout=300).stdout
    for name, role, password in DEMO_ACCOUNTS:
        assert f"sign in as {name!r} with password {password!r}: {role}" in out, out
    listed = run_cli("users", "list", "--data-dir", data_dir).stdout
    assert {line.split()[1] for line in listed.splitlines() if line.strip()} == {"admin", "clinician", "triage"}
    kit = running_kit.open_kit(data_dir)
    try:
        app = create_app(kit, testing=True)
        for name, role, password in DEMO_ACCOUNTS:
            assert Tablet(app, name, password).get("/api/v1/session").json["role"] == role
    finally:
        kit.close()


def test_a_refused_person_gets_a_styled_page_naming_the_role_and_api_clients_json(ui):
    kit, app = ui
    grow(kit.store, ["F-1"], 1)
    tri = Tablet(app, "tri", "tri password 123")
    page = tri.c.get("/handover", base_url=BASE, headers={"Accept": "text/html"})
    assert page.status_code == 403 and page.mimetype == "text/html"
    text = page.data.decode()
    assert 'id="error-roles"' in text and "<strong>clinician or admin</strong>" in text
    assert "app.css" in text and "Back to the board" in text  # the kit's own page, not a bare one
    api = tri.get("/api/v1/export/patients.csv")
    assert api.status_code == 403 and api.json["error"].startswith("your role (triage)")
    # a finer check inside a view: a triage officer changing a name, from a page and from the API
    r = tri.post("/api/v1/ui/patients/F-1/details", {"name": "X"})
    assert r.status_code == 403 and "patients.write" in r.json["error"]
    page = tri.c.post("/api/v1/ui/patients/F-1/details", json={"name": "X"}, base_url=BASE,
                      headers={"X-CSRF-Token": tri.csrf, "Accept": "application/json"})
    assert page.is_json  # under /api/ always JSON


@pytest.fixture
def restore_levels():
    before = {name: logging.getLogger(name).level for name in running_kit.QUIET_LOGGERS}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def _library_chatter():
    """Real library calls that log: highdicom copying a capture's patient and study modules
    into a new object, pynetdicom given a UID that is not a transfer syntax."""
    import highdicom as hd
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom.presentation import PresentationContext

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"), stop_before_pixels=True)
    sop = hd.base.SOPClass(study_instance_uid=ds.StudyInstanceUID, series_instance_uid=generate_uid(),
                           series_number=1, sop_instance_uid=generate_uid(),
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1", instance_number=1, modality="DOC",
                           manufacturer="fieldkit")
    sop.copy_patient_and_study_information(ds)
    PresentationContext().add_transfer_syntax("1.2.840.10008.5.1.4.1.1.7")
    logging.getLogger("fieldkit").info("kit line")


def test_serve_logging_keeps_library_chatter_off_the_console(caplog, restore_levels):
    running_kit.setup_logging()
    with caplog.at_level(logging.INFO):
        _library_chatter()
    said = [r.getMessage() for r in caplog.records]
    assert "kit line" in said
    assert not [m for m in said if "copy attributes of module" in m or "not a transfer syntax" in m], said
    # without the levels serve sets, the same calls do print them (so the check above can fail)
    for name in running_kit.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _library_chatter()
    said = [r.getMessage() for r in caplog.records]
    assert any("copy attributes of module" in m for m in said) and any("not a transfer syntax" in m for m in said)
