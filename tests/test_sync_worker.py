"""The sync worker against a real Orthanc, in-process with a real Store on a temp dir."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from fieldkit.records import T_INSTANCES
from fieldkit.sync.worker import SyncWorker, in_windows
from fixtures.orthanc import start_orthanc, _require_orthanc
from fixtures.sync import add_to_store, corpus, finding_sr, sync_config
from kitproc import wait_until
from proxy import Proxy

JPEG_LS = "1.2.840.10008.1.2.4.80"


def instances(store):
    return {d["sop_instance_uid"]: dict(d) for d in store.read(lambda db: db.table(T_INSTANCES).all())}




def test_once_sends_everything_once_with_kit_identity_and_lossless_pixels(kit, orthanc):
    items = corpus("T-0201")
    study = str(items[0][1].StudyInstanceUID)
    sr = finding_sr("T-0201", study)
    add_to_store(kit.store, items + [sr], triage="red")
    kit.store.queue.enqueue("sync", {"patient_id": "T-0201", "what": "triage"}, priority=0)
    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir)
    st = worker.run_once(timeout=60)
    assert st["counts"]["confirmed"] == 6 and st["counts"]["quarantined"] == 0
    assert st["queue_bytes"] == 0
    # in Orthanc: every instance and SR once, plus the triage status document
    assert orthanc.instance_count() == 6
    found = set()
    for iid in orthanc.rest("/instances"):
        tags = orthanc.rest(f"/instances/{iid}/simplified-tags")
        assert tags["PatientID"] == "T-0201"
        assert tags["IssuerOfPatientID"] in ("FIELDKIT-TEST", kit.config.issuer_of_patient_id)
        found.add(tags["SOPInstanceUID"])
    assert {str(ds.SOPInstanceUID) for _, ds in items + [sr]} <= found
    # QIDO agrees (the hospital's own DICOMweb view)
    import requests
    qido = requests.get(orthanc.base_url + "/instances", params={"PatientID": "T-0201"}, timeout=10).json()
    assert len(qido) == 6
    # catalogue says confirmed, with the hospital's retrieve URL
    cat = instances(kit.store)
    for _, ds in items + [sr]:
        doc = cat[str(ds.SOPInstanceUID)]
        assert doc["sync_state"] == "confirmed" and str(ds.SOPInstanceUID) in doc["retrieve_url"]
    # the uncompressed RGB image travelled as JPEG-LS, pixels identical
    data, ds = items[1]
    oid = [i for i in orthanc.rest("/instances")
           if orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == ds.SOPInstanceUID][0]
    import requests as rq
    raw = rq.get(f"{orthanc.rest_url}/instances/{oid}/file", timeout=10).content
    got = pydicom.dcmread(io.BytesIO(raw))
    assert got.file_meta.TransferSyntaxUID == JPEG_LS
    assert np.array_equal(got.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    # fewer bytes crossed the wire than the originals hold (lossless compression)
    originals = sum(len(d) for d, _ in items + [sr])
    assert st["confirmed_bytes"] > originals  # plus the triage status document
    assert st["confirmed_wire_bytes"] < 0.7 * originals


def test_hospital_down_then_up_drains_without_anyone(kit, tmp_path):
    _require_orthanc()
    h = start_orthanc(tmp_path / "o")
    url = h.base_url
    h.stop()
    items = corpus("T-0202")
    add_to_store(kit.store, items)
    worker = SyncWorker(kit.store, sync_config(kit.config, url), kit.data_dir, poll=0.1).start()
    try:
        assert wait_until(lambda: worker.backoff.failures >= 2, 20)
        st = worker.status()
        assert st["link_up"] is False and "cannot reach" in st["link"]
        assert st["counts"]["queued"] == 4 and st["counts"]["confirmed"] == 0
        h.start_again()
        assert wait_until(lambda: worker.status()["counts"]["confirmed"] == 4, 30)
        assert h.instance_count() == 4
        assert worker.status()["link_up"] is True
    finally:
        worker.stop()
        h.stop()


def test_windows():
    import datetime as dt
    at = dt.datetime(2026, 1, 1, 23, 30)
    assert in_windows([], at)
    assert in_windows(["22:00-06:00"], at)
    assert not in_windows(["08:00-17:00"], at)
    from fieldkit.errors import ConfigError
    with pytest.raises(ConfigError):
        in_windows(["8am-5pm"], at)


def test_hospital_refusing_jpeg_ls_gets_the_original(kit, orthanc):
    items = corpus("T-0503")
    add_to_store(kit.store, items)
    proxy = Proxy(orthanc.http_port)

    def intercept(head, body):
        if JPEG_LS.encode() in body:
            parts = [p for p in body.split(b"\r\n--") if JPEG_LS.encode() in p]
            uids = [str(ds.SOPInstanceUID) for _, ds in items
                    if any(str(ds.SOPInstanceUID).encode() in p for p in parts)]
            import json
            doc = {"00081198": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [0xC122]}} for u in uids]}}
            return 409, json.dumps(doc).encode(), {"Content-Type": "application/dicom+json"}
        return None

    proxy.intercept = intercept
    try:
        st = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir).run_once(timeout=60)
    finally:
        proxy.stop()
    assert st["counts"]["confirmed"] == 4 and st["counts"]["quarantined"] == 0
    rgb = str(items[1][1].SOPInstanceUID)
    oid = [i for i in orthanc.rest("/instances")
           if orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == rgb][0]
    import requests
    raw = requests.get(f"{orthanc.rest_url}/instances/{oid}/file", timeout=10).content
    assert pydicom.dcmread(io.BytesIO(raw)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_low_battery_defers_bulk_images_but_not_red_or_findings(kit, orthanc):
    from types import SimpleNamespace
    green = corpus("T-0505")[:2]
    red = corpus("T-0506")[:1]
    sr_data, sr = finding_sr("T-0505", str(green[0][1].StudyInstanceUID))
    add_to_store(kit.store, green + [(sr_data, sr)], triage="green")
    add_to_store(kit.store, red, triage="red")
    low = SimpleNamespace(defer_bulk_sync=True)
    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir,
                        power_policy=lambda: low)
    st = worker.run_once(timeout=30)
    done = {i["sop_instance_uid"] for i in st["items"] if i["state"] == "confirmed"}
    assert done == {str(sr.SOPInstanceUID), str(red[0][1].SOPInstanceUID)}
    assert st["counts"]["queued"] == 2
