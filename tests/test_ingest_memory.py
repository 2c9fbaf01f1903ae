"""A large cine is held in memory about once while it is stored, not several times.

Each peak is measured in a fresh interpreter that opens the test's kit: tracemalloc counts
the allocations of every thread in its process, and in a long test run a thread another
test left behind could allocate inside the window and fail a store that did nothing wrong."""

from __future__ import annotations

import io
import multiprocessing
import tracemalloc

import pydicom
from pydicom.uid import generate_uid

from fieldkit.dicom.uids import US_MULTIFRAME
from fieldkit.store import instances
from fixtures.dcmtk import pydicom_file


def _peak_of(fn, *args, **kwargs):
    """(what fn returned, the peak of memory traced while it ran)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def _in_fresh_process(measure, data_dir):
    """Run measure(store) in a new interpreter on the kit at data_dir; what it returned."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply_async(_open_and_measure, (measure, str(data_dir))).get(timeout=300)


def _open_and_measure(measure, data_dir: str):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        return measure(kit.store)
    finally:
        kit.close()


def _store_a_large_cine(store) -> dict:
    frames = 130  # ~30 MB of native RGB frames
    data = _cine_bytes(frames)
    result, peak = _peak_of(instances.put_instance, store, data, "upload")
    stored = instances.read_dataset(store, result["sop_instance_uid"])
    return {"status": result["status"], "frames": result["instance"]["frames"], "peak": peak,
            "size": len(data), "same_pixels": stored.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData}


def test_storing_a_large_cine_needs_about_one_extra_copy(data_dir):
    r = _in_fresh_process(_store_a_large_cine, data_dir)
    assert r["status"] == "stored" and r["frames"] == 130
    assert r["peak"] < 1.5 * r["size"], f"peak {r['peak'] / 1e6:.0f} MB for a {r['size'] / 1e6:.0f} MB object"
    assert r["same_pixels"]


def _cine_bytes(frames: int) -> bytes:
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes(ds.PixelData) * frames
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_uploads_larger_than_a_spool_chunk_are_read_whole(store):
    """Spools are sealed in 1 MiB chunks; objects and zip members across them stay intact."""
    import zipfile

    from fieldkit.ingest.upload import store_stream

    big = _cine_bytes(13)  # ~3 MB
    chunks = [big[i:i + 70_000] for i in range(0, len(big), 70_000)]
    out = store_stream(store, chunks, "cine.dcm", "upload", 1 << 30)
    assert [r["status"] for r in out] == ["stored"], out
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", method) as zf:
            zf.writestr("a.dcm", _cine_bytes(9))
            zf.writestr("b.dcm", _cine_bytes(11))
        out = store_stream(store, [zbuf.getvalue()], "bundle.zip", "upload", 1 << 30)
        assert [r["status"] for r in out] == ["stored", "stored"], out


def test_multipart_parts_small_in_memory_large_through_the_spool(store):
    from fieldkit.ingest.upload import store_multipart

    small, large = _cine_bytes(2), _cine_bytes(22)  # ~0.5 MB and ~5 MB (over the 4 MiB threshold)
    body = b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in (small, large, small))
    body += b"--B--\r\n"
    chunks = [body[i:i + 300_000] for i in range(0, len(body), 300_000)]
    out = store_multipart(store, chunks, "B", source="stow", default_type="application/dicom", max_bytes=1 << 30)
    assert [r["status"] for r in out] == ["stored", "stored", "duplicate"], out
    frames = {instances.get_instance(store, r["sop_instance_uid"])["frames"] for r in out}
    assert frames == {2, 22}


def _store_a_stow_batch_of_large_cines(store) -> dict:
    from fieldkit.ingest.upload import store_multipart

    cines = [_cine_bytes(40) for _ in range(4)]  # ~9 MB each: every one goes through the spool
    boundary = "cine-boundary"
    body = b"".join(b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + c
                    for c in cines) + b"\r\n--" + boundary.encode() + b"--"
    chunks = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    del body
    results, peak = _peak_of(store_multipart, store, iter(chunks), boundary, source="stow",
                             default_type="application/dicom", max_bytes=1 << 30)
    return {"statuses": [r["status"] for r in results], "peak": peak, "size": len(cines[0])}


def test_a_stow_batch_of_large_cines_holds_about_one_at_a_time(data_dir):
    """The parts of one STOW request are committed together; the objects themselves must
    not wait in memory for that commit."""
    r = _in_fresh_process(_store_a_stow_batch_of_large_cines, data_dir)
    assert r["statuses"] == ["stored"] * 4
    assert r["peak"] < 2.5 * r["size"], f"peak {r['peak'] / 1e6:.0f} MB for 4 objects of {r['size'] / 1e6:.0f} MB"


def _store_a_zip_with_a_large_member(store) -> dict:
    import zipfile

    from fieldkit.ingest.upload import store_stream

    member = _cine_bytes(130)  # ~30 MB
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cine.dcm", member)
    body = zbuf.getvalue()
    chunks = [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    del zbuf, body
    out, peak = _peak_of(store_stream, store, iter(chunks), "bundle.zip", "upload", 1 << 30)
    return {"outcomes": out, "peak": peak, "size": len(member)}


def test_a_large_zip_member_streams_through_the_spool(data_dir):
    """A zip member is copied into the encrypted spool, not read whole and then copied:
    storing it costs about one copy of the member, like any other upload."""
    r = _in_fresh_process(_store_a_zip_with_a_large_member, data_dir)
    assert [o["status"] for o in r["outcomes"]] == ["stored"], r["outcomes"]
    assert r["peak"] < 1.5 * r["size"], f"peak {r['peak'] / 1e6:.0f} MB for a {r['size'] / 1e6:.0f} MB member"
