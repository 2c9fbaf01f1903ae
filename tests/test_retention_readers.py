"""After retention purged an instance (the hospital confirmed it; only a tombstone with the
hospital's retrieve URL is left), every reader on the kit says so instead of failing:
WADO-RS answers 410 Gone naming the retrieve URL, the tablet UI shows a placeholder
saying where the capture went, inference skips it with the reason, and sync neither
re-sends nor quarantines it. Real store, real Orthanc as the hospital."""

from __future__ import annotations

import time

import pydicom
import pytest
import requests

from fieldkit.records import KIND_SYNC
from fieldkit.store import instances as catalogue
from fieldkit.sync.retention import purge_expired
from fieldkit.sync.worker import SyncWorker
from fieldkit.web import create_app
from fixtures.sync import corpus, restamp, sync_config
from test_ui_api import Tablet
from kitproc import run_cli

BASE = "https://localhost"


@pytest.fixture
def purged(data_dir, tmp_path, orthanc):
    secret = tmp_path / ".clin"
    secret.write_text("clin password 123\n")
    run_cli("users", "add", "clin", "--data-dir", data_dir, "--role", "clinician", "--password-file", secret)
    from fieldkit.ingest.upload import store_dicom_bytes
    from fieldkit.kit import open_kit
    from fieldkit.store.accounts import create_token_info
    kit = open_kit(data_dir)
    try:
        items = corpus("T-0701")[:2]
        for i, (data, _) in enumerate(items):
            out = store_dicom_bytes(kit.store, data, f"c{i}.dcm", "upload")
            assert out["status"] == "stored", out
        uids = [str(ds.SOPInstanceUID) for _, ds in items]
        assert all(catalogue.get_instance(kit.store, u).get("thumbnail") for u in uids)
        st = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir).run_once(timeout=60)
        assert st["counts"]["confirmed"] == 2
        assert purge_expired(kit.store, 1, now=time.time() + 2 * 86400) == 2
        token, _ = create_token_info(kit.store, "dicomweb-client", None, "wado test")
        yield kit, create_app(kit, testing=True), items, token
    finally:
        kit.close()


def test_every_reader_copes_with_a_purged_instance(purged, orthanc):
    kit, app, items, token = purged
    ds0 = items[0][1]
    uid, study, series = str(ds0.SOPInstanceUID), str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    row = catalogue.get_instance(kit.store, uid)
    url = row["retrieve_url"]
    assert row["blob"] == "" and row["thumbnail"] == "" and row["purged_at"] and uid in url
    # the retrieve URL the kit keeps really fetches the instance from the hospital
    got = requests.get(url, auth=orthanc.auth, timeout=30, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert got.status_code == 200 and uid.encode() in got.content

    # WADO-RS on the kit: 410 Gone with the retrieve URL, never a 500
    c = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    inst = f"/dicom-web/studies/{study}/series/{series}/instances/{uid}"
    for path in (inst, inst + "/metadata", inst + "/frames/1", inst + "/rendered", inst + "/thumbnail",
                 inst + "/bulkdata/7FE00010",
                 f"/dicom-web/studies/{study}", f"/dicom-web/studies/{study}/metadata"):
        r = c.get(path, base_url=BASE, headers=auth)
        assert r.status_code == 410, (path, r.status_code, r.data[:200])
        assert "purged" in r.get_data(as_text=True) and "retrieve it from the hospital" in r.get_data(as_text=True)
    assert url in c.get(inst, base_url=BASE, headers=auth).get_data(as_text=True)
    # QIDO still lists it (the kit knows it exists and where it is)
    q = c.get(f"/dicom-web/studies/{study}/instances", base_url=BASE, headers=auth)
    assert q.status_code == 200 and uid in q.get_data(as_text=True)
    # a study with one purged and one held instance serves what it holds
    data, fresh = restamp(pydicom.dcmread(pydicom.data.get_testdata_file("examples_palette.dcm")), "T-0701",
                          study_uid=study)
    from fieldkit.ingest.upload import store_dicom_bytes
    assert store_dicom_bytes(kit.store, data, "late.dcm", "upload")["status"] == "stored"
    r = c.get(f"/dicom-web/studies/{study}", base_url=BASE, headers=auth)
    assert r.status_code == 200
    body = r.get_data()
    assert str(fresh.SOPInstanceUID).encode() in body and uid.encode() not in body

    # the tablet UI: a placeholder that says where the capture went, 410 for its images
    t = Tablet(app, "clin", "clin password 123")
    page = t.get(f"/api/v1/ui/patients/{row['patient_id']}")
    assert page.status_code == 200
    cap = {x["uid"]: x for x in page.json["captures"]}[uid]
    assert cap["purged"] is True and cap["has_thumbnail"] is False and cap["retrieve_url"] == url
    assert "sent to the hospital and purged" in cap["decode_error"] and url in cap["decode_error"]
    r = t.get(f"/api/v1/ui/instances/{uid}/cine")
    assert r.status_code == 410 and r.json["retrieve_url"] == url and "purged" in r.json["error"]
    for path in (f"/api/v1/ui/instances/{uid}/thumbnail.jpg", f"/api/v1/ui/instances/{uid}/sprite.jpg"):
        r = t.get(path)
        assert r.status_code == 410 and url in r.json["error"], (path, r.status_code)
    assert t.get("/api/v1/ui/board").status_code == 200

    # inference: skipped with the reason, nothing stored
    from fieldkit.inference.registry import Registry
    from fieldkit.inference.worker import process
    out = process(kit, Registry(kit.config, kit.data_dir), uid)
    assert out["outcome"] == "skipped" and "purged" in out["reason"] and url in out["reason"]

    # sync: a row for a purged (confirmed) instance is acknowledged, not re-sent or quarantined
    before = orthanc.instance_count()
    row_id = kit.store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": uid}, priority=10, key=uid)
    st = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir).run_once(timeout=60)
    assert kit.store.queue.get(row_id).state == "done"
    assert st["counts"]["quarantined"] == 0
    assert orthanc.instance_count() == before + 1  # only the late capture went
    assert catalogue.get_instance(kit.store, uid)["sync_state"] == "confirmed"
