"""No secrets or patient data in logs: the redaction installed by the logging setup, in a
fresh interpreter, and a real running kit that ingests a canary patient and signs people in."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pydicom
import requests

from fieldkit.security import redact
from fieldkit.security.tokens import new_token

from fixtures.dcmtk import pydicom_file, store_responses, storescu
from kitproc import ADMIN_PASSWORD, ADMIN_USER


def test_redact_scrubs_the_usual_shapes():
    token = new_token()
    cases = {
        f"Authorization: Bearer {token}": token,
        f"using token {token}": token,
        "Cookie: __Host-fk_session=abcdefSECRET1": "abcdefSECRET1",
        '{"username": "amina", "password": "hunter2 hunter2"}': "hunter2",
        "POST /login username=amina&password=s3cr3t-pw&csrf_token=zzzCSRFzzz": "s3cr3t-pw",
        "form pin=604817 ok": "604817",
        "stored instance for CANARY^Zq7x^^": "Zq7x",
        "{'PatientName': 'Doe^Jane', 'PatientID': 'PID-4242'}": "PID-4242",
        "(0010,0020) Patient ID  LO: 'PID-4242'": "PID-4242",
        "search q=Okonkwo&limit=5": "Okonkwo",
    }
    for line, secret in cases.items():
        out = redact.redact(line)
        assert secret not in out, (line, out)
        assert redact.MASK in out
    assert redact.redact("stored 3 instances in 0.2 s") == "stored 3 instances in 0.2 s"


def test_remembered_values_are_masked_anywhere():
    redact.remember("Okafor^Chidi", "TAG-889911")
    try:
        assert "TAG-889911" not in redact.redact("merged record TAG-889911 into P7")
        assert "Chidi" not in redact.redact("identified as Chidi Okafor")
        assert "chidi" not in redact.redact("typed as chidi okafor").lower()  # in any letter case
        # where remembered values overlap, the longest is masked whole
        assert redact.redact("name Okafor Chidi, tag TAG-889911") == "name [redacted], tag [redacted]"
        redact.remember("İlkay^Öztürk")  # a capital whose lower case is two characters
        assert redact.redact("for İlkay Öztürk at 10:02") == "for [redacted] at 10:02"
        assert redact.redact("stored 3 instances in 0.2 s") == "stored 3 instances in 0.2 s"
    finally:
        redact.forget_all()


def test_patients_arriving_one_by_one_do_not_pile_up_old_patterns_in_memory():
    """Each new value rebuilds the matcher of every remembered value; the old ones must
    not stay behind (when it was a regular expression, re's own cache kept the last 512:
    ~100 MB at the bound)."""
    import tracemalloc

    redact.forget_all()
    redact.remember(*(f"Patient{n:05d}^Given{n:05d}" for n in range(500)))  # 1 500 values
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(60):  # new patients at a busy post, one at a time
            redact.remember(f"Arrival{n:04d}^Late{n:04d}")
        grown = tracemalloc.get_traced_memory()[0] - before
        assert "Arrival0059" not in redact.redact("stored for Arrival0059 Late0059")
    finally:
        tracemalloc.stop()
        redact.forget_all()
    assert grown < 2**20, f"{grown / 2**20:.1f} MB kept after 60 new patients"


def test_the_logging_setup_redacts_every_logger_and_traceback(tmp_path):
    token = new_token()
    script = textwrap.dedent(f"""
        import logging
        from fieldkit.kit import setup_logging
        setup_logging()
        import pydicom
        from pydicom.data import get_testdata_file
        ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
        ds.PatientName = "CANARY^Qx81"
        ds.PatientID = "CANARYID7731"
        logging.getLogger("werkzeug").info("GET /api?token=%s HTTP/1.1", "{token}")
        logging.getLogger("pynetdicom").debug("dataset %s", ds)
        logging.getLogger("pynetdicom").warning("dataset %r", ds)
        logging.getLogger("x").warning("headers %s", {{"Authorization": "Bearer {token}"}})
        logging.getLogger("x").warning("patient %s", ds.PatientName)
        try:
            raise KeyError(str(ds.PatientName) + " password=pw-in-exception-77")
        except KeyError:
            logging.getLogger("fieldkit").exception("failed for %s", ds.PatientID)
        print("DONE")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "DONE" in proc.stdout, proc.stderr
    log = proc.stderr
    assert "WARNING" in log and "Traceback" in log
    for secret in (token, "Qx81", "CANARYID7731", "pw-in-exception-77"):
        assert secret not in log, secret


def _canary_file(tmp_path, name, pid):
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.PatientName = name
    ds.PatientID = pid
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "probe" / "canary.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_running_kit_logs_no_canary_token_or_password(kit_server, tmp_path, need):
    need("storescu")
    name, pid = "CANARYLOG^Wq19x", "CANARYPID5521"
    sent = storescu(kit_server.dicom_port, [_canary_file(tmp_path, name, pid)])
    assert store_responses(sent) and all("Success" in s for s in store_responses(sent)), sent.stdout + sent.stderr
    s = requests.Session()
    page = s.get(kit_server.url + "/login", timeout=30, verify=kit_server.ca)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    bad = s.post(kit_server.url + "/login", data={"username": ADMIN_USER, "password": "wrong " + ADMIN_PASSWORD,
                                                  "csrf_token": csrf}, timeout=30, verify=kit_server.ca)
    assert bad.status_code == 401
    ok = s.post(kit_server.url + "/login", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD,
                                                 "csrf_token": csrf}, timeout=30, allow_redirects=False,
                verify=kit_server.ca)
    assert ok.status_code == 303
    token = kit_server.token("sync")  # a machine token (status.read), for the redaction check
    r = requests.get(kit_server.url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"},
                     verify=kit_server.ca, timeout=30)
    assert r.status_code == 200 and r.json()["instances"] >= 1
    requests.get(kit_server.url + "/api/v1/status?access_token=" + token, verify=kit_server.ca, timeout=30)
    kit_server.stop()
    log = kit_server.log()
    assert log, "the kit wrote no log at all"
    logs = [kit_server.log_path.read_text(errors="replace")]
    logs += [p.read_text(errors="replace") for p in kit_server.data_dir.rglob("*.log")]
    for text in logs:
        for secret in ("Wq19x", "CANARYLOG", pid, token, ADMIN_PASSWORD):
            assert secret not in text, f"{secret!r} found in a log"


def test_the_patients_already_stored_are_registered_with_one_pattern_compiled(kit, monkeypatch):
    """At start the learner hands the redactor every stored patient at once: each call
    compiles the pattern of all remembered values again, and one call per patient took
    minutes of CPU on a kit with thousands of patients."""
    import time

    from fieldkit.kit.redaction import start as start_redact_learner
    from fieldkit.store import patients

    redact.forget_all()
    made = [patients.create_patient(kit.store, tag=f"TAG-7{n:04d}", name=f"Stored{n:03d}^Given{n:03d}")
            for n in range(40)]
    calls = []
    real = redact.remember
    monkeypatch.setattr(redact, "remember", lambda *values: (calls.append(len(values)), real(*values)))
    learner = start_redact_learner(kit)
    try:
        deadline = time.monotonic() + 10  # until the newest patient is masked: all are registered
        while "TAG-70039" in redact.redact("TAG-70039") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) == 1 and calls[0] >= 3 * len(made), calls
        line = redact.redact("moved TAG-70039 (Given039 Stored039) and TAG-70000 to red")
        assert "TAG-70039" not in line and "Given039" not in line and "TAG-70000" not in line
    finally:
        learner.stop()
        redact.forget_all()


def test_patients_are_registered_with_the_redactor_as_they_arrive(kit):
    import time

    from fieldkit.kit.redaction import start as start_redact_learner
    from fieldkit.store import patients

    redact.forget_all()
    patients.create_patient(kit.store, tag="TAG-40417", name="Okonkwo^Adaeze")
    learner = start_redact_learner(kit)  # preloads what is already stored
    try:
        deadline = time.monotonic() + 10
        while "TAG-40417" in redact.redact("tag TAG-40417") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "TAG-40417" not in redact.redact("moved TAG-40417 to red")
        later = patients.create_patient(kit.store, name="Bello^Tunde")  # published as an event
        while later["id"] in redact.redact(later["id"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        line = redact.redact(f"GET /patients/{later['id']} for Tunde Bello")
        assert later["id"] not in line and "Tunde" not in line
    finally:
        learner.stop()
        redact.forget_all()
