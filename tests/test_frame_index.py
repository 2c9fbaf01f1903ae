"""One frame of a long cine is read by decrypting only the chunks that hold it: the frame
index says where each frame lies, and a blob's reader jumps to a chunk without decrypting
the ones before it."""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from fieldkit.dicom.frame_index import FrameIndexCache, frame_spans
from fieldkit.errors import StoreCorrupt
from fieldkit.store import blobs as blobmod


def _cine(frames: list[bytes], *, extended=False, **encaps) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 480, 640, 3, 8
    ds.NumberOfFrames = len(frames)
    if extended:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames, **encaps)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _frames(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(n)  # frames of uneven, even lengths (as encapsulation pads)
    return [b"\xff\xd8" + os.urandom(int(rng.integers(size // 2, size)) // 2 * 2) + b"\xff\xd9" for _ in range(n)]


def _read(data: bytes, spans) -> list[bytes]:
    return [b"".join(data[o:o + n] for o, n in frame) for frame in spans]


@pytest.mark.parametrize("layout", [
    {"has_bot": False}, {"has_bot": True}, {"has_bot": True, "fragments_per_frame": 3}, {"extended": True}])
def test_the_spans_give_back_every_frame_as_stored(layout):
    frames = _frames(12, 4000)
    data = _cine(frames, **layout)
    spans = frame_spans(io.BytesIO(data), 12)
    stored = list(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=12))
    assert _read(data, spans) == stored
    assert [f.rstrip(b"\x00") for f in stored] == [f.rstrip(b"\x00") for f in frames]


def test_a_single_frame_in_several_fragments_is_joined():
    frame = _frames(1, 9000)[0]
    data = _cine([frame], fragments_per_frame=4)
    spans = frame_spans(io.BytesIO(data), 1)
    assert len(spans) == 1 and len(spans[0]) == 4
    assert _read(data, spans)[0].rstrip(b"\x00") == frame.rstrip(b"\x00")


def test_an_ambiguous_layout_is_not_guessed():
    data = _cine(_frames(4, 3000), fragments_per_frame=2, has_bot=False)  # 8 fragments, 4 frames, no offset table
    assert frame_spans(io.BytesIO(data), 4) is None
    native = Dataset()
    native.file_meta = FileMetaDataset()
    native.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    native.file_meta.MediaStorageSOPClassUID = native.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    native.file_meta.MediaStorageSOPInstanceUID = native.SOPInstanceUID = generate_uid()
    native.Rows, native.Columns, native.BitsAllocated, native.SamplesPerPixel = 8, 8, 8, 1
    native.PixelData = b"\x00" * 64
    buf = io.BytesIO()
    native.save_as(buf, enforce_file_format=True)
    assert frame_spans(io.BytesIO(buf.getvalue()), 1) is None


def test_one_frame_of_a_long_cine_decrypts_only_its_chunks(store, monkeypatch):
    frames = _frames(40, 300_000)  # about 6 MiB: six sealed chunks
    data = _cine(frames)
    ref = store.blobs.put_bytes(data)
    cache = FrameIndexCache()

    def build():
        with store.blobs.open(ref.addr, ref.size) as fh:
            return frame_spans(fh, 40)

    spans = cache.get(ref.addr, build)
    assert cache.get(ref.addr, lambda: pytest.fail("the index is made once")) is spans
    opened = []
    real = blobmod._read_sealed_chunk
    monkeypatch.setattr(blobmod, "_read_sealed_chunk", lambda path, sealer, i: opened.append(i) or real(path, sealer, i))
    with store.blobs.open(ref.addr, ref.size) as fh:
        offset, length = spans[29][0]
        fh.seek(offset)
        assert fh.read(length).rstrip(b"\x00") == frames[29].rstrip(b"\x00")
    wanted = {offset // blobmod.CHUNK, (offset + length - 1) // blobmod.CHUNK}
    assert set(opened) == wanted and len(data) // blobmod.CHUNK >= 5


def test_a_damaged_chunk_read_alone_is_refused(store):
    ref = store.blobs.put_bytes(os.urandom(3 << 20))
    path = store.blobs.path(ref.addr)
    raw = bytearray(path.read_bytes())
    raw[20 + 2 * (4 + blobmod.CHUNK + 28) + 50] ^= 1  # inside the third chunk
    path.write_bytes(bytes(raw))
    with store.blobs.open(ref.addr, ref.size) as fh:
        assert len(fh.read(100)) == 100  # the first chunk still reads
        fh.seek((2 << 20) + 10)
        with pytest.raises(StoreCorrupt, match="authentication"):
            fh.read(10)
