"""Durability of ingest's shortcuts: what was acknowledged survives a SIGKILL, and a blob's
directory entries are on disk before the blob is referenced."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import threading
import time

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import fieldkit.store.blobs as blobs_mod
from fieldkit import fsio
from fieldkit.store import instances


def test_blob_directory_entry_is_fsynced_before_the_first_blob_in_it_is_acknowledged(store, monkeypatch):
    synced: list[str] = []
    real = fsio.fsync_dir
    monkeypatch.setattr(fsio, "fsync_dir", lambda p: (synced.append(str(p)), real(p)))
    root = store.blobs.root
    first = store.blobs.put_bytes(b"first blob")
    fan_out = str(store.blobs.path(first.addr).parent)
    # the new directory's entry as it is made, the new blob's directory, then the directory's entry
    assert synced == [str(root), fan_out, str(root)]
    synced.clear()
    def addr(d: bytes) -> str:  # where a blob will land, without writing it
        return hmac.new(store.blobs._id_key, d, hashlib.sha256).hexdigest()

    data = next(d for d in (f"blob {i}".encode() for i in range(100_000)) if addr(d)[:2] == first.addr[:2])
    assert store.blobs.put_bytes(data).addr == addr(data)
    assert synced == [fan_out]  # later blobs there: their directory only
    synced.clear()
    again = blobs_mod.BlobStore(root, store.blobs._sealer, store.blobs._id_key)  # a new run
    again.put_bytes(data)  # same content: nothing new is written, and yet its entries are synced
    assert synced == [fan_out, str(root)]
    assert again.get_bytes(store.blobs.put_bytes(data).addr) == data


def _batches(n_batches: int, per_batch: int) -> list[list[pydicom.Dataset]]:
    out = []
    for _ in range(n_batches):
        batch = []
        for _ in range(per_batch):
            ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            batch.append(ds)
        out.append(batch)
    return out


def test_sigkill_mid_stow_loses_nothing_a_response_listed(kit_server):
    from kitproc import KitProcess

    session = requests.Session()
    session.verify, session.trust_env = kit_server.ca, False
    client = DICOMwebClient(f"{kit_server.url}/dicom-web", session=session,
                            headers={"Authorization": f"Bearer {kit_server.token('dicomweb-client')}"})
    acknowledged: list[str] = []
    stop = threading.Event()
    errors: list[Exception] = []
    changed = threading.Condition()
    in_flight = {"request": 0, "sending": False}

    def send() -> None:
        for batch in _batches(40, 8):
            if stop.is_set():
                return
            with changed:
                in_flight["request"] += 1
                in_flight["sending"] = True
                changed.notify_all()
            try:
                answer = client.store_instances(batch)
            except Exception as exc:  # the kit died under this request: nothing of it was promised
                errors.append(exc)
                return
            with changed:
                in_flight["sending"] = False
                acknowledged.extend(str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence)
                changed.notify_all()

    def blob_count() -> int:
        return sum(len(files) for folder, _, files in os.walk(kit_server.data_dir / "blobs")
                   if os.path.basename(folder) != "tmp")

    sender = threading.Thread(target=send)
    sender.start()
    killed_in = None
    deadline = time.monotonic() + 120
    while killed_in is None and sender.is_alive() and time.monotonic() < deadline:
        with changed:  # three batches acknowledged, and the next one on its way
            changed.wait_for(lambda: (len(acknowledged) >= 24 and in_flight["sending"])
                             or not sender.is_alive(), timeout=60)
            request, before = in_flight["request"], blob_count()
        # kill once the kit is storing this request's objects (new blobs), before it answers
        while sender.is_alive() and in_flight["request"] == request and in_flight["sending"]:
            if blob_count() > before:
                kit_server.kill()
                killed_in = request
                break
            time.sleep(0.002)  # a bounded poll: the loop ends when the request does
    stop.set()
    sender.join(60)
    assert killed_in is not None and not sender.is_alive() and len(acknowledged) >= 24, errors
    # the kill landed mid-request: the request in flight failed, its batch was never listed
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError), errors
    assert len(acknowledged) == 8 * (killed_in - 1)
    KitProcess(kit_server.data_dir).start().stop()  # a restart recovers the journal
    from fieldkit.kit import open_kit
    kit = open_kit(kit_server.data_dir)
    try:
        for uid in acknowledged:
            row = instances.get_instance(kit.store, uid)
            assert row is not None, uid
            assert pydicom.dcmread(io.BytesIO(kit.store.blobs.get_bytes(row["blob"]))).SOPInstanceUID == uid
            assert kit.store.blobs.get_bytes(row["thumbnail"])[:2] == b"\xff\xd8"  # the preview, a JPEG
    finally:
        kit.close()
