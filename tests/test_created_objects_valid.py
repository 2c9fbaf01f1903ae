"""Every kind of object the kit creates is valid DICOM: dicom3tools' dciodvfy finds no error,
pydicom reads every value under strict validation, highdicom parses the SR, and each one
says which time zone its dates and times are in (TimezoneOffsetFromUTC)."""

from __future__ import annotations

import datetime as dt
import io
import re
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import config as pydicom_config

from fieldkit.dicom.pictures import picture_to_dataset
from fieldkit.inference import runner, sr
from fieldkit.security.audit_dicom import audit_sr, to_bytes
from fieldkit.sync.updates import build_review, build_update
from fixtures.inference import dataset_bytes, lung_cine_dataset

ISSUER = "FIELDKIT-TEST1"
PATIENT = {"id": "T-0042", "tag": "0042", "name": "Curie^Marie", "birth_date": "19670107", "sex": "F",
           "triage": "red", "merged_into": None}


def _picture() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(buf, "PNG")
    return dataset_bytes(picture_to_dataset(buf.getvalue(), patient_id="T-0042", issuer=ISSUER,
                                            patient_name="Curie^Marie", as_ultrasound=True))


def _sr(registry) -> bytes:
    ds, _ = lung_cine_dataset(n_frames=2, n_blines=2, seed=3)
    ds = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)))
    ds.AccessionNumber = "PR\\US"  # a source's invalid value: not passed on
    ds.ReferringPhysicianName = "x" * 70  # over 64 characters a component: not passed on
    return dataset_bytes(sr.build_sr(ds, runner.analyse(ds, registry)))


def _objects(registry) -> dict[str, bytes]:
    when = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
    update, _ = build_update("T-0042", ISSUER, PATIENT, "TEST1", "triage red", when=when)
    finding = {"id": "f1", "task": "lung", "model": "lung-blines", "model_version": "1"}
    target = {"sop_instance_uid": "1.2.3.4", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
              "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.5"}
    review, _ = build_review(patient_id="T-0042", issuer=ISSUER, patient_doc=PATIENT, kit_id="TEST1",
                             finding=finding, target=target,
                             review={"decision": "agree", "note": "ok", "by": "dr-a", "at": when.timestamp()})
    export = {"format": "fieldkit-audit/1", "events": [{"seq": 1, "hash": "ab" * 32, "alg": "sha256"}]}
    audit = to_bytes(audit_sr(export, kit_id="TEST1", issuer=ISSUER))
    return {"findings SR": _sr(registry), "status document": update, "review document": review,
            "audit document": audit, "picture": _picture()}


@pytest.fixture(scope="module")
def objects():
    from fieldkit.config import Config
    from fieldkit.inference.registry import Registry
    return _objects(Registry(Config(), data_dir=None))


KINDS = ["findings SR", "status document", "review document", "audit document", "picture"]


@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_error(objects, kind, need, tmp_path):
    tool = need("dciodvfy")
    path = tmp_path / "object.dcm"
    path.write_bytes(objects[kind])
    out = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("kind", KINDS)
def test_pydicom_reads_every_value_strictly_and_times_carry_their_zone(objects, kind):
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        ds = pydicom.dcmread(io.BytesIO(objects[kind]))
        for elem in ds.iterall():  # converting each value checks it against its VR
            _ = elem.value
    finally:
        pydicom_config.settings.reading_validation_mode = old
    offset = ds.TimezoneOffsetFromUTC
    assert re.fullmatch(r"[+-](0[0-9]|1[0-4])[0-5][0-9]", offset), offset
    # the dates and times the object states are one moment apart at most a day, all in that zone
    zone = dt.timezone(dt.timedelta(hours=int(offset[:3]), minutes=int(offset[0] + offset[3:])))
    moments = [dt.datetime.strptime(ds.get(f"{p}Date") + ds.get(f"{p}Time")[:6], "%Y%m%d%H%M%S").replace(tzinfo=zone)
               for p in ("Content", "InstanceCreation") if ds.get(f"{p}Date") and ds.get(f"{p}Time")]
    assert moments, "no content or creation date and time"
    assert all(abs((m - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 86400 * 400 for m in moments)


def test_highdicom_parses_the_findings_sr_and_invalid_source_values_are_not_copied(objects):
    ds = pydicom.dcmread(io.BytesIO(objects["findings SR"]))
    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert report.AccessionNumber == "" and str(report.ReferringPhysicianName) == ""
    # the SR is in its source's zone: none given, the kit's own
    local = dt.datetime.now().astimezone().strftime("%z")
    assert ds.TimezoneOffsetFromUTC == local
    for kind in ("status document", "review document", "audit document"):
        doc = pydicom.dcmread(io.BytesIO(objects[kind]))
        assert doc.TimezoneOffsetFromUTC == "+0000"  # their times are the kit's clock in UTC
        hd.sr.ContentSequence.from_sequence(doc.ContentSequence)  # the content tree parses
