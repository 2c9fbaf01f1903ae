"""Tablet upload (pictures, DICOM, zip bundles) on a running kit, and `fieldkit import`."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from fixtures.dcmtk import pydicom_file
from kitproc import run_cli


def _picture(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _fresh_bytes(name: str) -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def _headers(kit_server, role):
    return {"Authorization": f"Bearer {kit_server.token(role)}"}


def test_png_and_jpeg_upload_become_dicom_under_the_right_patient(kit_server):
    png, jpeg = _picture("PNG", 1), _picture("JPEG", 2)
    r = kit_server.post("/api/v1/upload", headers=_headers(kit_server, "probe"),
                        files=[("file", ("scan1.png", png, "image/png")), ("file", ("scan2.jpg", jpeg, "image/jpeg"))])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["stored", "stored"]
    pid = results[0]["patient_id"]
    assert pid.startswith("U-") and results[1]["patient_id"] == pid
    # a later picture for the same, now known, patient
    r = kit_server.post(f"/api/v1/upload?patient_id={pid}&acquired_at=2024-05-01T10:20:30",
                        headers={**_headers(kit_server, "probe"), "X-Filename": "later.png",
                                 "Content-Type": "image/png"}, data=_picture("PNG", 3))
    assert r.status_code == 200 and r.json()["results"][0]["patient_id"] == pid
    qido = kit_server.get("/dicom-web/instances", params={"PatientID": pid},
                          headers=_headers(kit_server, "dicomweb-client"))
    # (the kit's own findings, structured reports, may appear under the patient too)
    found = [i for i in qido.json() if i["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(found) == 3 and {i["00100020"]["Value"][0] for i in found} == {pid}
    one = found[0]
    wado = kit_server.get(one["00081190"]["Value"][0].replace(kit_server.url, ""),
                          headers=_headers(kit_server, "dicomweb-client"))
    assert wado.status_code == 200
    ds = pydicom.dcmread(io.BytesIO(wado.content.split(b"\r\n\r\n", 1)[1]), force=True)
    assert ds.ConversionType == "WSD" and "picture" in ds.ImageComments
    assert ds.IssuerOfPatientID == "FIELDKIT-TEST1"
    # the PNG's pixels are kept exactly
    png_row = [i for i in found if i["00080018"]["Value"][0] == results[0]["sop_instance_uid"]][0]
    got = kit_server.get(png_row["00081190"]["Value"][0].replace(kit_server.url, ""),
                         headers=_headers(kit_server, "dicomweb-client"))
    pix = pydicom.dcmread(io.BytesIO(got.content.split(b"\r\n\r\n", 1)[1]), force=True).pixel_array
    np.testing.assert_array_equal(pix, np.asarray(Image.open(io.BytesIO(png))))


def test_zip_bundle_with_dicomdir_path_tricks_and_a_bomb(kit_server):
    a, ds_a = _fresh_bytes("examples_rgb_color.dcm")
    b, ds_b = _fresh_bytes("examples_jpeg2k.dcm")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("DICOM/IMG0001", a)
        zf.writestr("DICOM/IMG0002", b)
        zf.writestr("../escape.dcm", a)
        zf.writestr("/abs/path.dcm", b)
        zf.writestr("bomb.dcm", b"\0" * (40 << 20))
        zf.writestr("notes.txt", b"hello")
    r = kit_server.post("/api/v1/upload", headers={**_headers(kit_server, "probe"), "X-Filename": "stick.zip",
                                                    "Content-Type": "application/zip"}, data=buf.getvalue())
    assert r.status_code == 207, r.text
    by_name = {x["name"].split(":", 1)[1]: x for x in r.json()["results"] if ":" in x["name"]}
    assert by_name["DICOM/IMG0001"]["status"] == "stored" and by_name["DICOM/IMG0002"]["status"] == "stored"
    assert by_name["../escape.dcm"]["status"] == "refused" and ".." in by_name["../escape.dcm"]["reason"]
    assert by_name["/abs/path.dcm"]["status"] == "refused" and "absolute" in by_name["/abs/path.dcm"]["reason"]
    assert by_name["bomb.dcm"]["status"] == "refused" and "zip bomb" in by_name["bomb.dcm"]["reason"]
    assert by_name["notes.txt"]["status"] == "skipped"
    assert kit_server.get("/healthz").status_code in (200, 204)


def test_non_dicom_upload_is_refused_with_a_reason(kit_server):
    r = kit_server.post("/api/v1/upload", headers={**_headers(kit_server, "probe"), "X-Filename": "x.bin",
                                                    "Content-Type": "application/octet-stream"},
                        data=b"MZ\x90\x00 definitely not an image")
    assert r.status_code == 422
    assert "not a DICOM file" in r.json()["results"][0]["reason"]


def test_upload_needs_the_upload_permission(kit_server):
    r = kit_server.post("/api/v1/upload", data=b"x", headers={"X-Filename": "a.dcm"})
    assert r.status_code in (401, 403)


def _stick(tmp_path):
    stick = tmp_path / "stick"
    (stick / "DICOM" / "ST1").mkdir(parents=True)
    uids = []
    for i, name in enumerate(["examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm"]):
        data, ds = _fresh_bytes(name)
        (stick / "DICOM" / "ST1" / f"IM{i}").write_bytes(data)
        uids.append(ds.SOPInstanceUID)
    (stick / "README.TXT").write_text("probe export")
    # a DICOMDIR pointing at the files (pydicom's FileSet writes a standard one)
    from pydicom.fileset import FileSet
    fs = FileSet()
    for f in sorted((stick / "DICOM" / "ST1").iterdir()):
        fs.add(pydicom.dcmread(f))
    dicomdir_dir = tmp_path / "dicomdir_set"
    fs.write(dicomdir_dir)
    return stick, dicomdir_dir, uids


def test_import_is_idempotent_locally_and_through_the_running_kit(data_dir, tmp_path):
    stick, dicomdir_dir, uids = _stick(tmp_path)
    first = run_cli("import", stick, "--data-dir", data_dir, "--quiet")
    assert "3 stored, 0 already on the kit" in first.stdout and "1 skipped" in first.stdout
    second = run_cli("import", stick, "--data-dir", data_dir, "--quiet")
    assert "0 stored, 3 already on the kit (not stored again)" in second.stdout
    from kitproc import KitProcess
    kit = KitProcess(data_dir).start()
    try:
        third = run_cli("import", dicomdir_dir / "DICOMDIR", "--data-dir", data_dir)
        assert "0 stored, 3 already on the kit" in third.stdout, third.stdout + third.stderr
        assert "importing" in third.stderr  # the progress bar
    finally:
        kit.stop()
    from fieldkit.kit import open_kit
    from fieldkit.store import instances
    k = open_kit(data_dir)
    try:
        imported = [r for r in instances.instance_rows(k.store) if r["source"] != "kit"]  # not findings
        assert sorted(r["sop_instance_uid"] for r in imported) == sorted(uids)
        assert {r["source"] for r in imported} == {"import"}
    finally:
        k.close()
