"""End to end on a running kit: a simulated lung cine pushed with dcmtk's storescu is
analysed by the kit's inference worker, and the SR it made is fetched with dicomweb-client
and parsed back with pydicom/highdicom, with the same B-line counts the models give."""

from __future__ import annotations

import time

import highdicom as hd
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from fieldkit.inference import runner
from fixtures.dcmtk import store_responses, storescu
from fixtures.inference import lung_cine_dataset, sr_values

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _client(kit_server) -> DICOMwebClient:
    session = requests.Session()
    session.verify = kit_server.ca
    session.trust_env = False
    return DICOMwebClient(url=f"{kit_server.url}/dicom-web", session=session,
                          headers={"Authorization": f"Bearer {kit_server.token('dicomweb-client')}"})


def _counts(report) -> list[float]:
    out = []

    def walk(ds):
        for item in getattr(ds, "ContentSequence", []):
            seq = getattr(item, "ConceptNameCodeSequence", None)
            if seq and seq[0].CodeMeaning == "B-line count":
                out.append(float(item.MeasuredValueSequence[0].NumericValue))
            walk(item)
    walk(report)
    return out


def test_storescu_lung_cine_gives_an_sr_fetched_over_dicomweb(kit_server, need, tmp_path, registry):
    need("storescu")
    ds, _ = lung_cine_dataset(n_frames=10, n_blines=4, seed=31)
    path = tmp_path / "lung.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = storescu(kit_server.dicom_port, [path], "-xs")
    assert store_responses(proc) == ["Success"], proc.stdout + proc.stderr

    client = _client(kit_server)
    study = str(ds.StudyInstanceUID)
    deadline = time.monotonic() + 120
    srs = []
    while time.monotonic() < deadline and not srs:
        found = client.search_for_instances(study_instance_uid=study)
        srs = [i for i in found if i.get("00080016", {}).get("Value", [""])[0] == COMPREHENSIVE_3D_SR]
        if not srs:
            time.sleep(0.5)
    assert srs, f"no SR appeared in study {study}:\n{kit_server.log()}"
    sr_uid = srs[0]["00080018"]["Value"][0]
    series = srs[0]["0020000E"]["Value"][0]
    report = client.retrieve_instance(study, series, sr_uid)
    assert isinstance(report, pydicom.Dataset)
    parsed = hd.sr.Comprehensive3DSR.from_dataset(report)
    assert parsed.SOPInstanceUID == sr_uid

    expected = runner.analyse(ds, registry)
    lung = next(r for r in expected.results if r.task == "lung")
    assert lung.assessable
    assert _counts(report) == [float(c) for c in lung.result["b_line_counts"]]
    values = sr_values(report)
    assert "lung-bline" in values and f"sha256={lung.model['sha256']}" in values
