"""A real `fieldkit serve` whose data dir is on a small tmpfs that fills up with captures
while the hospital does not answer (sync rows stay leased): captures are refused
with clear statuses, reads and tokens keep working, nothing acknowledged is lost, and the
kit takes captures again by itself once space is freed."""

from __future__ import annotations

import os
import socket

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fixtures.dcmtk import storescu, store_responses
from kitproc import KitProcess, dataset_bytes, init_kit, set_config, wait_until
from fixtures.durability import fill_disk

MiB = 1 << 20


def capture() -> tuple[bytes, tuple[str, str, str]]:
    """A single-frame ultrasound image of noise (~0.9 MiB, does not compress) with new UIDs."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.Rows, ds.Columns = 480, 640
    ds.PixelData = os.urandom(480 * 640 * 3)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return dataset_bytes(ds), (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def stow(kit: KitProcess, token: str, data: bytes):
    boundary = "fieldkit-test-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    return kit.post("/dicom-web/studies", data=body, headers={
        "Authorization": f"Bearer {token}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def wado(kit: KitProcess, token: str, uids: tuple[str, str, str]):
    study, series, sop = uids
    return kit.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                   headers={"Authorization": f"Bearer {token}", "Accept": "multipart/related; type=\"application/dicom\""})


def test_full_disk_refuses_captures_keeps_everything_and_resumes(small_disk, tmp_path):
    # a hospital that takes the connection and never answers: the sync worker's rows stay
    # leased while the disk fills
    hospital = socket.create_server(("127.0.0.1", 0), backlog=64)
    data_dir = init_kit(small_disk / "kit")
    set_config(data_dir, hospital__url=f"http://127.0.0.1:{hospital.getsockname()[1]}/dicom-web",
               hospital__read_timeout_seconds=120.0, inference__enabled=False,
               store__warn_free_mb=20, store__refuse_free_mb=10)
    filler = small_disk / "filler"
    stat = os.statvfs(small_disk)
    with open(filler, "wb") as fh:  # leave ~16 MiB: a dozen captures fill it to the refuse mark
        fh.write(bytes(stat.f_bavail * stat.f_frsize - 16 * MiB))
    kit = KitProcess(data_dir)
    kit.log_path = tmp_path / "serve.log"  # the log is not what fills the disk
    kit.start()
    try:
        writer, auth = kit.token("probe"), kit.auth("clinician")

        acknowledged, refused = [], None
        for _ in range(40):
            data, uids = capture()
            answer = stow(kit, writer, data)
            if answer.status_code == 507:
                refused = answer
                break
            assert answer.status_code == 200, answer.text
            acknowledged.append(uids)
        assert refused is not None and len(acknowledged) >= 3
        assert refused.headers["Content-Type"].startswith("application/json")
        assert "new captures are refused" in refused.json()["error"]
        upload = kit.post("/api/v1/upload", data=capture()[0], headers={
            "Authorization": f"Bearer {writer}", "Content-Type": "application/dicom", "X-Filename": "a.dcm"})
        assert upload.status_code == 507 and "new captures are refused" in upload.json()["error"]
        assert wait_until(lambda: kit.get("/api/v1/status", headers=auth).json()["queue"]["sync"]["leased"] > 0, 120)
        status = kit.get("/api/v1/status", headers=auth).json()
        assert status["disk"]["level"] == "full" and "sync to the hospital" in status["disk"]["message"]

        # the probe gets Refused: Out of Resources, with the reason
        probe_file = tmp_path / "probe.dcm"
        probe_file.write_bytes(capture()[0])
        responses = store_responses(storescu(kit.dicom_port, [probe_file]))
        assert responses and ("0xa700" in responses[0].lower() or "outofresources" in responses[0].lower().replace(" ", "")), responses

        # now the disk really is full; the journal goes on in its reserve
        reserve = status["disk"]["journal_reserve_bytes"]
        fill_disk(small_disk / "filler2")
        assert kit.get("/healthz").status_code == 200
        assert kit.get("/api/v1/ui/board", headers=auth).status_code == 200
        late_token = kit.token("dicomweb-client")  # an operator action, journaled on a full disk
        for uids in acknowledged:
            assert wado(kit, late_token, uids).status_code == 200, uids
        assert stow(kit, writer, capture()[0]).status_code == 507
        assert kit.get("/api/v1/status", headers=auth).json()["disk"]["journal_reserve_bytes"] < reserve

        # space returns: captures are taken again, same process, no restart
        pid = kit.proc.pid
        filler.unlink()
        (small_disk / "filler2").unlink()
        assert wait_until(lambda: kit.get("/api/v1/status", headers=auth).json()["disk"]["level"] == "ok", 60)
        data, uids = capture()
        assert stow(kit, writer, data).status_code == 200
        acknowledged.append(uids)
        assert kit.proc.pid == pid and kit.proc.poll() is None
        assert kit.get("/api/v1/status", headers=auth).json()["queue"]["sync"]["leased"] > 0
    finally:
        hospital.close()  # the waiting requests are reset, so the kit stops promptly
        kit.stop()

    # a restart opens the same store with everything acknowledged
    kit = KitProcess(data_dir)
    kit.log_path = tmp_path / "serve.log"
    kit.start()
    try:
        token = kit.token("dicomweb-client")
        for uids in acknowledged:
            answer = wado(kit, token, uids)
            assert answer.status_code == 200 and uids[2].encode() in answer.content, uids
    finally:
        kit.stop()
