"""The same instance re-sent in another encoding is a duplicate, stored once; only a real
difference (a pixel, an attribute) is a conflict. Copies made by dcmtk (dcmconv, dcmcjpeg,
dcmcrle) and sent by storescu and STOW-RS."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from fieldkit.dicom.compare import difference, same_content
from fieldkit.store import instances
from fixtures.dcmtk import pydicom_file, store_responses, storescu
from kitproc import dataset_bytes

EXPLICIT_BE, IMPLICIT_LE = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2"
JPEG_SV1, RLE = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"


def _encodings(need, directory, name: str = "examples_rgb_color.dcm") -> dict[str, bytes]:
    """One fresh instance in five encodings, each made by a dcmtk tool."""
    for tool in ("dcmconv", "dcmcjpeg", "dcmcrle"):
        need(tool)
    directory.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    original = directory / "original.dcm"
    ds.save_as(original, enforce_file_format=True)
    out = {"explicit-le": original}
    for label, cmd in (("big-endian", ["dcmconv", "+tb"]), ("implicit-le", ["dcmconv", "+ti"]),
                       ("jpeg-lossless", ["dcmcjpeg", "+e1"]), ("rle", ["dcmcrle"])):
        path = directory / f"{label}.dcm"
        subprocess.run([*cmd, str(original), str(path)], check=True, capture_output=True, timeout=60)
        out[label] = path
    return {label: path.read_bytes() for label, path in out.items()}


def _changed(data: bytes, change) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    return dataset_bytes(ds)


def _flip_pixel(ds):
    arr = ds.pixel_array.copy()
    arr[5, 5, 0] ^= 1
    ds.PixelData = arr.tobytes()


def test_other_encodings_are_duplicates_and_real_differences_conflicts(store, need, tmp_path):
    copies = _encodings(need, tmp_path)
    syntaxes = {label: str(pydicom.dcmread(io.BytesIO(d)).file_meta.TransferSyntaxUID) for label, d in copies.items()}
    assert syntaxes["big-endian"] == EXPLICIT_BE and syntaxes["implicit-le"] == IMPLICIT_LE
    assert syntaxes["jpeg-lossless"] == JPEG_SV1 and syntaxes["rle"] == RLE
    first = instances.put_instance(store, copies["explicit-le"], "dimse")
    assert first["status"] == "stored"
    uid = first["sop_instance_uid"]
    for label in ("big-endian", "implicit-le", "jpeg-lossless", "rle"):
        result = instances.put_instance(store, copies[label], "stow")
        assert result["status"] == "duplicate", label
        assert "another encoding" in result["message"]
    row = instances.get_instance(store, uid)
    assert not row["conflict"] and row["conflicts"] == [] and row["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert len(instances.instance_rows(store, study_uid=row["study_instance_uid"])) == 1
    # a real difference, in any encoding, is a conflict kept for review
    for label, change in (("big-endian", _flip_pixel),
                          ("jpeg-lossless", lambda ds: setattr(ds, "StudyDescription", "other study")),
                          ("explicit-le", lambda ds: setattr(ds, "PatientName", "Someone^Else"))):
        result = instances.put_instance(store, _changed(copies[label], change), "stow")
        assert result["status"] == "conflict", label
    assert len(instances.get_instance(store, uid)["conflicts"]) == 3


def test_a_copy_under_another_patient_id_is_a_conflict(store, need, tmp_path):
    copies = _encodings(need, tmp_path)
    assert instances.put_instance(store, copies["explicit-le"], "dimse")["status"] == "stored"
    other = _changed(copies["big-endian"], lambda ds: setattr(ds, "PatientID", "SOMEONE-ELSE"))
    assert instances.put_instance(store, other, "dimse")["status"] == "conflict"


def test_compare_sees_binary_values_in_either_byte_order(need, tmp_path):
    """Palette LUT data (OW) read from big endian bytes equals the little endian value."""
    copies = _encodings(need, tmp_path, "examples_palette.dcm")
    a, b = (pydicom.dcmread(io.BytesIO(copies[k])) for k in ("explicit-le", "big-endian"))
    assert a.RedPaletteColorLookupTableData != b.RedPaletteColorLookupTableData  # the bytes differ
    assert same_content(a, b)
    b.RedPaletteColorLookupTableData = a.RedPaletteColorLookupTableData  # now wrong in big endian
    assert difference(a, b, True, False) == "0028,1201"
    assert not same_content(a, b)


def test_storescu_and_stow_of_other_encodings_store_once(kit_server, need, tmp_path):
    need("storescu")
    copies = _encodings(need, tmp_path)
    paths = {}
    for label, data in copies.items():
        paths[label] = tmp_path / f"send-{label}.dcm"
        paths[label].write_bytes(data)
    for label, flag in (("explicit-le", "-xe"), ("big-endian", "-xb"), ("jpeg-lossless", "-xs")):
        assert store_responses(storescu(kit_server.dicom_port, [paths[label]], flag, "-R")) == ["Success"], label
    token = {"Authorization": f"Bearer {kit_server.token('dicomweb-client')}"}
    boundary = "same-content"
    for label in ("implicit-le", "rle"):
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + copies[label]
                + f"\r\n--{boundary}--\r\n".encode())
        r = kit_server.post("/dicom-web/studies", data=body, headers={
            **token, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 200, (label, r.text)
        assert "00081196" not in r.json()["00081199"]["Value"][0], label  # no conflict warning
    original = pydicom.dcmread(io.BytesIO(copies["explicit-le"]))
    r = kit_server.get("/dicom-web/instances", params={"SOPInstanceUID": original.SOPInstanceUID}, headers=token)
    assert len(r.json()) == 1
    # what WADO-RS gives back is the first copy, untouched
    r = kit_server.get(f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
                       f"/instances/{original.SOPInstanceUID}", headers={**token, "Accept": 'multipart/related; '
                                                                         'type="application/dicom"; transfer-syntax=*'})
    assert "transfer-syntax=1.2.840.10008.1.2.1" in r.text[:400]
    # a copy with one pixel changed, sent by STOW, is kept as a conflict (WarningReason B000)
    changed = _changed(copies["big-endian"], _flip_pixel)
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + changed
            + f"\r\n--{boundary}--\r\n".encode())
    r = kit_server.post("/dicom-web/studies", data=body, headers={
        **token, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200 and r.json()["00081199"]["Value"][0]["00081196"]["Value"] == [0xB000]
    assert np.any(pydicom.dcmread(io.BytesIO(changed)).pixel_array != original.pixel_array)
