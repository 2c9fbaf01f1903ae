"""A large cine is held in memory about once while it is stored, not several times."""

from __future__ import annotations

import io
import tracemalloc

import pydicom
from pydicom.uid import generate_uid

from fieldkit.dicom.uids import US_MULTIFRAME
from fieldkit.store import instances
from fixtures.dcmtk import pydicom_file


def test_storing_a_large_cine_needs_about_one_extra_copy(store):
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    frames = 130  # ~30 MB of native RGB frames
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes(ds.PixelData) * frames
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    del ds, buf
    tracemalloc.start()
    try:
        result = instances.put_instance(store, data, "upload")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["status"] == "stored" and result["instance"]["frames"] == frames
    assert peak < 1.5 * len(data), f"peak {peak / 1e6:.0f} MB for a {len(data) / 1e6:.0f} MB object"
    stored = instances.read_dataset(store, result["sop_instance_uid"])
    assert stored.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
