"""Durability of ingest's shortcuts: what was acknowledged survives a SIGKILL, and a blob's
directory entries are on disk before the blob is referenced."""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
import time

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import fieldkit.store.blobs as blobs_mod
from fieldkit.store import instances


def test_blob_directory_entry_is_fsynced_before_the_first_blob_in_it_is_acknowledged(store, monkeypatch):
    synced: list[str] = []
    real = blobs_mod.fsync_dir
    monkeypatch.setattr(blobs_mod, "fsync_dir", lambda p: (synced.append(str(p)), real(p)))
    root = store.blobs.root
    first = store.blobs.put_bytes(b"first blob")
    fan_out = str(store.blobs.path(first.addr).parent)
    assert synced == [fan_out, str(root)]  # the new blob's directory, then the directory's entry
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

    def send() -> None:
        for batch in _batches(40, 8):
            if stop.is_set():
                return
            try:
                answer = client.store_instances(batch)
            except Exception as exc:  # the kit died under this request: nothing of it was promised
                errors.append(exc)
                return
            acknowledged.extend(str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 24 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    kit_server.kill()  # mid-request: a batch is being stored right now
    stop.set()
    sender.join(60)
    assert not sender.is_alive() and len(acknowledged) >= 24, errors
    KitProcess(kit_server.data_dir).start().stop()  # a restart recovers the journal
    from fieldkit.runtime import open_kit
    kit = open_kit(kit_server.data_dir)
    try:
        for uid in acknowledged:
            row = instances.get_instance(kit.store, uid)
            assert row is not None, uid
            assert pydicom.dcmread(io.BytesIO(kit.store.blobs.get_bytes(row["blob"]))).SOPInstanceUID == uid
            assert kit.store.blobs.get_bytes(row["thumbnail"])[:2] == b"\xff\xd8"  # the preview, a JPEG
    finally:
        kit.close()
