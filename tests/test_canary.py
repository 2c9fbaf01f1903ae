"""Patients' data is never at rest in clear: a canary name must not appear in any file."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from fieldkit.kit import open_kit

CANARY = "ZZCANARY^Qwertyuiop"


def _encodings(text: str) -> list[bytes]:
    forms = {text, text.replace("^", " "), text.split("^")[0]}
    out = []
    for form in forms:
        for enc in ("ascii", "utf-8", "utf-16-le", "utf-16-be", "latin-1"):
            out.append(form.encode(enc))
    return out


def _files_containing(root: Path, needles: list[bytes], since: float) -> list[Path]:
    hits = []
    # os.walk, not rglob: other tests' temp dirs may vanish while this one looks
    paths = (Path(d) / f for d, _, files in os.walk(root) for f in files)
    for path in paths:
        try:
            if not path.is_file() or path.stat().st_mtime < since - 1:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if any(n in data for n in needles):
            hits.append(path)
    return hits


def test_canary_patient_is_nowhere_in_clear(data_dir):
    started = time.time()
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.PatientName = CANARY
    ds.PatientID = "ZZCANARYID"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    dicom_bytes = buf.getvalue()
    assert CANARY.encode() in dicom_bytes  # the canary really is in what we store

    kit = open_kit(data_dir)
    ref = kit.store.blobs.put_bytes(dicom_bytes)
    kit.store.write(lambda db: db.table("patients").insert({"id": "ZZCANARYID", "name": CANARY}))
    with kit.store.blobs.open_spool() as spool:
        spool.write(dicom_bytes)
        assert _files_containing(data_dir, _encodings(CANARY), started) == []
    kit.store.compact()
    kit.close()

    needles = _encodings(CANARY) + [b"ZZCANARYID"]
    assert _files_containing(data_dir, needles, started) == []
    assert _files_containing(Path(tempfile.gettempdir()), needles, started) == []

    kit = open_kit(data_dir)  # and it all reads back
    assert kit.store.blobs.get_bytes(ref.addr) == dicom_bytes
    assert kit.store.read(lambda db: db.table("patients").all())[0]["name"] == CANARY
    kit.close()
