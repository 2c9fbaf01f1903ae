"""The DIMSE receiver against dcmtk's storescu/echoscu (a real probe-side client)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from fieldkit.dicom.frames import decode_frames
from fieldkit.records import KIND_INFER, KIND_SYNC
from fieldkit.store import instances
from fixtures.dcmtk import echoscu, sample_files, store_responses, storescu, pydicom_file


@pytest.fixture(autouse=True)
def _dcmtk(need):
    need("storescu")
    need("echoscu")


def test_echoscu_gets_an_answer(dimse_kit):
    proc = echoscu(dimse_kit.receiver.port)
    assert proc.returncode == 0, proc.stderr
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_storescu_every_transfer_syntax_is_stored_durably_and_decodes_like_the_original(dimse_kit, tmp_path):
    store = dimse_kit.store
    issuer = dimse_kit.config.issuer_of_patient_id
    samples = sample_files(tmp_path / "samples")
    for path, flag, label in samples:
        proc = storescu(dimse_kit.receiver.port, [path], flag, "-R")
        assert store_responses(proc) == ["Success"], f"{label}: {proc.stdout}{proc.stderr}"
        original = pydicom.dcmread(path)
        row = instances.get_instance(store, original.SOPInstanceUID)
        assert row is not None, label
        assert row["transfer_syntax"] == original.file_meta.TransferSyntaxUID, label  # no transcoding
        assert row["source"] == "dimse" and row["thumbnail"] and row["decode_error"] == ""
        stored = instances.read_dataset(store, original.SOPInstanceUID)
        assert stored.PatientID == row["patient_id"] and stored.IssuerOfPatientID == issuer
        if original.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.107"):
            assert row["frames"] == 12
            np.testing.assert_array_equal(decode_frames(stored), decode_frames(original), err_msg=label)
        else:
            np.testing.assert_array_equal(stored.pixel_array, original.pixel_array, err_msg=label)
    rows = instances.instance_rows(store)
    assert len(rows) == len(samples)
    infer = [r.payload["sop_instance_uid"] for r in store.queue.rows(kind=KIND_INFER)]
    sync = [r.payload["sop_instance_uid"] for r in store.queue.rows(kind=KIND_SYNC)]
    assert sorted(infer) == sorted(sync) == sorted(r["sop_instance_uid"] for r in rows)


def test_same_instance_twice_is_stored_once(dimse_kit):
    path = pydicom_file("examples_rgb_color.dcm")
    for _ in range(2):
        assert store_responses(storescu(dimse_kit.receiver.port, [path])) == ["Success"]
    assert len(instances.instance_rows(dimse_kit.store)) == 1
    assert len(dimse_kit.store.queue.rows(kind=KIND_INFER)) == 1


def test_same_uid_other_content_is_kept_as_conflict(dimse_kit, tmp_path):
    path = pydicom_file("examples_rgb_color.dcm")
    changed = pydicom.dcmread(path)
    changed.PixelData = bytes(len(changed.PixelData))
    changed.save_as(tmp_path / "changed.dcm")
    assert store_responses(storescu(dimse_kit.receiver.port, [path])) == ["Success"]
    replies = store_responses(storescu(dimse_kit.receiver.port, [tmp_path / "changed.dcm"]))
    assert len(replies) == 1 and replies[0].startswith("Warning")
    row = instances.get_instance(dimse_kit.store, changed.SOPInstanceUID)
    assert row["conflict"] is True and len(row["conflicts"]) == 1
    first = instances.read_dataset(dimse_kit.store, changed.SOPInstanceUID)
    np.testing.assert_array_equal(first.pixel_array, pydicom.dcmread(path).pixel_array)  # untouched


def _broken(tmp_path):
    good = pydicom.dcmread(pydicom_file("examples_jpeg2k.dcm"))
    garbage = good.copy()
    garbage.PixelData = pydicom.encaps.encapsulate([os.urandom(5000)])
    garbage.SOPInstanceUID = generate_uid()
    garbage.save_as(tmp_path / "garbage-j2k.dcm")
    short = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    short.SOPInstanceUID = generate_uid()
    short.save_as(tmp_path / "short.dcm")
    return [(tmp_path / "garbage-j2k.dcm", "-xv"), (tmp_path / "short.dcm", "-xe")]


def test_bad_objects_are_refused_with_a_reason_and_the_kit_keeps_running(dimse_kit, tmp_path):
    assert store_responses(storescu(dimse_kit.receiver.port, [pydicom_file("examples_rgb_color.dcm")])) == ["Success"]
    for path, flag in _broken(tmp_path):
        proc = storescu(dimse_kit.receiver.port, [path], flag, "-R", "-d")
        replies = store_responses(proc)
        assert len(replies) == 1 and replies[0].startswith("Error"), proc.stdout + proc.stderr
        comment = [line for line in (proc.stdout + proc.stderr).splitlines() if "ErrorComment" in line]
        assert comment and ("decode" in comment[0] or "truncated" in comment[0]), comment
    assert echoscu(dimse_kit.receiver.port).returncode == 0
    assert len(instances.instance_rows(dimse_kit.store)) == 1  # only the good one


def test_object_over_the_size_cap_is_refused_out_of_resources(dimse_kit):
    dimse_kit.config = dimse_kit.config.with_overrides(dicom__max_object_mb=0)
    proc = storescu(dimse_kit.receiver.port, [pydicom_file("examples_rgb_color.dcm")])
    replies = store_responses(proc)
    assert replies == ["Refused: OutOfResources"], proc.stdout + proc.stderr
    assert instances.instance_rows(dimse_kit.store) == []


def test_closed_allow_list_refuses_unknown_calling_ae(kit):
    from fieldkit.ingest import dimse

    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1",
                                           dicom__allow_any_ae=False, dicom__allowed_ae_titles=["SONO1"])
    receiver = dimse.start(kit)
    try:
        refused = storescu(receiver.port, [pydicom_file("examples_rgb_color.dcm")], aet="STRANGER")
        assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr
        accepted = storescu(receiver.port, [pydicom_file("examples_rgb_color.dcm")], aet="SONO1")
        assert store_responses(accepted) == ["Success"]
    finally:
        receiver.stop()


def test_html_patient_name_is_stored_as_sent(dimse_kit, tmp_path):
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.PatientName = "<script>alert(1)</script>"
    ds.PatientID = "HTML-1"
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "html.dcm")
    assert store_responses(storescu(dimse_kit.receiver.port, [tmp_path / "html.dcm"])) == ["Success"]
    row = instances.get_instance(dimse_kit.store, ds.SOPInstanceUID)
    from fieldkit.store.patients import get_patient
    assert get_patient(dimse_kit.store, row["patient_id"])["name"] == "<script>alert(1)</script>"


def _corpus(directory, n):
    base = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    paths = []
    for i in range(n):
        base.SOPInstanceUID = generate_uid()
        path = directory / f"img{i:03d}.dcm"
        base.save_as(path)
        paths.append(path)
    return paths


def test_sigkill_mid_batch_loses_nothing_storescu_saw_succeed(kit_server, tmp_path):
    from kitproc import KitProcess, readable

    paths = _corpus(tmp_path, 80)
    proc = subprocess.Popen(["storescu", "-v", "-aec", "FIELDKIT", "127.0.0.1", str(kit_server.dicom_port),
                             *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sending, succeeded = None, []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(succeeded) < 15:
            if not readable(proc.stdout, 1.0):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if "Sending file:" in line:
                sending = line.split("Sending file:", 1)[1].strip()
            elif "Received Store Response (Success)" in line:
                succeeded.append(sending)
        kit_server.kill()
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for line in rest.splitlines():  # responses already in the pipe when the kit died
        if "Sending file:" in line:
            sending = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line:
            succeeded.append(sending)
    assert len(succeeded) >= 15
    restarted = KitProcess(kit_server.data_dir).start()
    restarted.stop()
    from fieldkit.kit import open_kit
    kit = open_kit(kit_server.data_dir)
    try:
        for path in succeeded:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert instances.get_instance(kit.store, uid) is not None, path
            kit.store.blobs.get_bytes(instances.get_instance(kit.store, uid)["blob"])
    finally:
        kit.close()


def test_structured_report_is_stored_and_synced_but_not_analysed(dimse_kit):
    path = pydicom_file("test-SR.dcm")
    assert store_responses(storescu(dimse_kit.receiver.port, [path])) == ["Success"]
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    row = instances.get_instance(dimse_kit.store, uid)
    assert row is not None and row["thumbnail"] is None and row["frames"] == 0
    assert dimse_kit.store.queue.rows(kind=KIND_INFER) == []
    sync = dimse_kit.store.queue.rows(kind=KIND_SYNC)
    assert [q.payload["sop_instance_uid"] for q in sync] == [uid]


def test_unsupported_sop_class_is_refused_at_association(dimse_kit):
    proc = storescu(dimse_kit.receiver.port, [pydicom_file("MR_small.dcm")])
    assert proc.returncode != 0 or store_responses(proc) == []
    assert "No presentation context" in proc.stdout + proc.stderr or "no acceptable" in \
        (proc.stdout + proc.stderr).lower()
    assert instances.instance_rows(dimse_kit.store) == []


def test_bad_receiver_settings_are_clear_config_errors(dimse_kit):
    from fieldkit.errors import ConfigError
    from fieldkit.ingest import dimse

    taken = dimse_kit.config.with_overrides(dicom__port=dimse_kit.receiver.port)
    for config, words in ((taken, "cannot listen"),
                          (dimse_kit.config.with_overrides(dicom__ae_title="X" * 17), "AE title"),
                          (dimse_kit.config.with_overrides(dicom__allow_any_ae=False,
                                                           dicom__allowed_ae_titles=["Y" * 17]), "allowed_ae_titles")):
        class Probe:
            pass
        probe = Probe()
        probe.config, probe.store, probe.dicom_port = config, dimse_kit.store, None
        with pytest.raises(ConfigError, match=words):
            dimse.start(probe)
    assert echoscu(dimse_kit.receiver.port).returncode == 0
