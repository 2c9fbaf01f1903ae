"""Throw 10 000+ mutated DICOM files at the ingest path: every one is stored, recognised
as a duplicate/conflict, or refused with a reason - never an unexpected error, never a
hang, and the kit's store stays readable."""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid)

from fieldkit.ingest.dimse import PROCESSING_FAILURE
from fieldkit.ingest.upload import store_dicom_bytes
from fieldkit.store import instances
from fixtures.dcmtk import pydicom_file
from kitproc import dataset_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every odd VR

N_MUTANTS = 10_000
TIME_BUDGET_S = 150  # hard stop for slow machines; the count assertion below still applies


def _small(ds: pydicom.Dataset, size: int = 24) -> pydicom.Dataset:
    arr = ds.pixel_array
    if arr.ndim == 4:
        arr = arr[:3, :size, :size]
        ds.NumberOfFrames = 3
    else:
        arr = arr[:size, :size]
    ds.Rows, ds.Columns = size, size
    ds.PhotometricInterpretation = "RGB" if ds.SamplesPerPixel == 3 else ds.PhotometricInterpretation
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def seeds() -> list[bytes]:
    out = []
    rgb = _small(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")))
    out.append(dataset_bytes(rgb))
    cine = _small(pydicom.dcmread(pydicom_file("examples_ybr_color.dcm")))
    out.append(dataset_bytes(cine))
    pal = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
    arr = pal.pixel_array[:24, :24]
    pal.Rows = pal.Columns = 24
    pal.PixelData = np.ascontiguousarray(arr).tobytes()
    pal.SOPInstanceUID = generate_uid()
    out.append(dataset_bytes(pal))
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        # openjpeg wants more than a few resolution levels' worth of pixels
        ds = _small(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")), 64 if syntax == JPEG2000Lossless else 24)
        ds.compress(syntax)
        out.append(dataset_bytes(ds))
    jpg = _small(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")))
    buf = io.BytesIO()
    Image.fromarray(jpg.pixel_array).save(buf, "JPEG", quality=90)
    jpg.PixelData = encapsulate([buf.getvalue()])
    jpg["PixelData"].VR = "OB"
    jpg.PhotometricInterpretation = "YBR_FULL_422"
    jpg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.append(dataset_bytes(jpg))
    dfl = _small(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")))
    dfl.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out.append(dataset_bytes(dfl))
    out.append(open(pydicom_file("ExplVR_BigEnd.dcm"), "rb").read())
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        op = rng.random()
        # most damage lands in the header area, where the parsers branch most
        pos = rng.randrange(min(len(b), 700)) if rng.random() < 0.75 else rng.randrange(len(b))
        if op < 0.35:
            b[pos] ^= 1 << rng.randrange(8)
        elif op < 0.55:
            b[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op < 0.65:
            b[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xfe\xff\xdd\xe0",
                                         b"\xfe\xff\x00\xe0", rng.randbytes(4)))
        elif op < 0.75:
            del b[rng.randrange(len(b) // 4, len(b)):]  # truncation
        elif op < 0.85:
            b[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op < 0.92:
            start = rng.randrange(len(b))
            b[pos:pos] = b[start:start + rng.randrange(1, 64)]
        else:
            b[pos:pos + 2] = rng.choice((b"SQ", b"UN", b"OB", b"UT", b"PN", b"US", b"DS"))
        if not b:
            break
    return bytes(b)


def test_ten_thousand_mutants_never_crash_the_ingest_path(store):
    rng = random.Random(20240601)
    pool = seeds()
    originals = {}
    for data in pool:  # the seeds themselves are good objects
        result = store_dicom_bytes(store, data, "seed", "upload")
        assert result["status"] == "stored", result
        originals[result["sop_instance_uid"]] = instances.get_instance(store, result["sop_instance_uid"])["blob"]
    outcomes: dict[str, int] = {}
    internal = []
    start = time.monotonic()
    n = 0
    while n < N_MUTANTS and time.monotonic() - start < TIME_BUDGET_S:
        data = mutate(rng.choice(pool), rng)
        result = store_dicom_bytes(store, data, f"mutant {n}", "upload")
        outcomes[result["status"]] = outcomes.get(result["status"], 0) + 1
        if result["status"] == "refused":
            assert result["reason"], result
            if result["code"] == PROCESSING_FAILURE:
                internal.append((n, result["reason"]))
        n += 1
    assert n >= N_MUTANTS, f"only {n} mutants in {TIME_BUDGET_S} s"
    assert internal == [], internal[:5]
    # mutants keep their seed's UID: a readable one is kept as a conflict, never over the seed
    assert outcomes.get("refused", 0) > N_MUTANTS // 10 and outcomes.get("conflict", 0) > 0, outcomes
    # nothing already stored was touched: the seed blobs are still the seed rows' blobs
    for uid, blob in originals.items():
        assert instances.get_instance(store, uid)["blob"] == blob
        pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(blob)))


def test_mutants_over_stow_and_upload_never_get_a_5xx(kit_server):
    """The same mutations through the running kit's HTTP endpoints, bodies mangled too."""
    import requests

    rng = random.Random(7)
    pool = seeds()
    auth = {"Authorization": f"Bearer {kit_server.token('dicomweb-client')}"}
    probe = {"Authorization": f"Bearer {kit_server.token('probe')}"}
    statuses = []
    for round_ in range(15):
        parts = [mutate(rng.choice(pool), rng) for _ in range(20)]
        boundary = f"fz{round_}"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                        for p in parts) + f"--{boundary}--\r\n".encode()
        if round_ % 3 == 2:  # mangle the multipart framing itself
            body = mutate(body, rng)
        r = requests.post(f"{kit_server.url}/dicom-web/studies", data=body, verify=kit_server.ca, timeout=120,
                          headers={**auth, "Content-Type": f'multipart/related; type="application/dicom"; '
                                                          f'boundary={boundary}'})
        statuses.append(r.status_code)
        r = requests.post(f"{kit_server.url}/api/v1/upload", data=parts[0], verify=kit_server.ca, timeout=120,
                          headers={**probe, "X-Filename": "m.dcm", "Content-Type": "application/octet-stream"})
        statuses.append(r.status_code)
    assert all(s < 500 for s in statuses), statuses
    assert set(statuses) <= {200, 202, 207, 400, 409, 422}, statuses
    assert kit_server.get("/healthz").status_code in (200, 204)
