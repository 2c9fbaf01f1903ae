"""Pixels checked against values written by hand and against an outside decoder.

Each fixture is a Part-10 file written byte by byte here (not by pydicom's writer, not by
the kit's encoder) with pixel values chosen so the right picture is known in advance:
YBR_FULL, YBR_FULL_422, PALETTE COLOR with a hand-written 16-bit LUT, MONOCHROME1,
16-bit with a window, and Explicit VR Big Endian. The kit's three pixel paths - the frame
decoder (dicom/frames.py, what thumbnails and inference use), the WADO-RS rendered PNG
(dicom/thumbnails.render) and the models' luma (inference/decode.py) - must give those
values, and so must dcmtk's `dcm2pnm`, a decoder that shares no code with the kit.
The stored copy (after ingest stamps the kit's identity) must decode to the same pixels.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from fieldkit.dicom.frames import decode_frame
from fieldkit.dicom.thumbnails import render
from fieldkit.inference.decode import luma_frames

EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
LONG_VRS = {"OB", "OW", "SQ", "UN", "UT", "UC", "UR"}


def element(group: int, elem: int, vr: str, value: bytes, big: bool = False) -> bytes:
    """One Explicit VR element: tag, VR, length (2 or 4 bytes) and the even-length value."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    end = ">" if big else "<"
    head = struct.pack(end + "HH", group, elem) + vr.encode()
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack(end + "I", len(value)) + value
    return head + struct.pack(end + "H", len(value)) + value


def us(*values: int, big: bool = False) -> bytes:
    return struct.pack((">" if big else "<") + "H" * len(values), *values)


def part10(sop_uid: str, ts: str, body: list[tuple[int, int, str, bytes]]) -> bytes:
    """Preamble, DICM, the file meta group (always Explicit VR Little Endian), then the
    data set elements (in tag order) in the transfer syntax `ts`."""
    big = ts == EXPLICIT_BE
    meta = b"".join([
        element(0x0002, 0x0001, "OB", b"\0\1"),
        element(0x0002, 0x0002, "UI", US_IMAGE.encode()),
        element(0x0002, 0x0003, "UI", sop_uid.encode()),
        element(0x0002, 0x0010, "UI", ts.encode()),
        element(0x0002, 0x0012, "UI", b"1.2.826.0.1.3680043.10.999.1"),
    ])
    group_length = element(0x0002, 0x0000, "UL", struct.pack("<I", len(meta)))
    data = b"".join(element(g, e, vr, v, big) for g, e, vr, v in sorted(body, key=lambda t: (t[0], t[1])))
    return b"\0" * 128 + b"DICM" + group_length + meta + data


def image(name: str, ts: str, *, pi: str, rows: int, cols: int, samples: int, bits: int,
          pixels: bytes, more: list | None = None) -> bytes:
    big = ts == EXPLICIT_BE
    sop = f"1.2.826.0.1.3680043.10.999.7.{zlib.crc32(name.encode())}"
    body = [
        (0x0008, 0x0016, "UI", US_IMAGE.encode()),
        (0x0008, 0x0018, "UI", sop.encode()),
        (0x0008, 0x0060, "CS", b"US"),
        (0x0010, 0x0010, "PN", b"Oracle^" + name.encode()),
        (0x0010, 0x0020, "LO", b"ORACLE1"),
        (0x0020, 0x000D, "UI", b"1.2.826.0.1.3680043.10.999.7.1"),
        (0x0020, 0x000E, "UI", b"1.2.826.0.1.3680043.10.999.7.2"),
        (0x0020, 0x0013, "IS", b"1"),
        (0x0028, 0x0002, "US", us(samples, big=big)),
        (0x0028, 0x0004, "CS", pi.encode()),
        (0x0028, 0x0010, "US", us(rows, big=big)),
        (0x0028, 0x0011, "US", us(cols, big=big)),
        (0x0028, 0x0100, "US", us(bits, big=big)),
        (0x0028, 0x0101, "US", us(bits, big=big)),
        (0x0028, 0x0102, "US", us(bits - 1, big=big)),
        (0x0028, 0x0103, "US", us(0, big=big)),
        (0x7FE0, 0x0010, "OW" if bits > 8 else "OB", pixels),
    ]
    if samples == 3:
        body.append((0x0028, 0x0006, "US", us(0, big=big)))
    return part10(sop, ts, body + (more or []))


# --- the fixtures: bytes on disk -> the RGB picture a reader must see, written by hand ---

BLACK, WHITE, RED, GREEN, BLUE = (0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)

# YBR_FULL (JFIF YCbCr, full range): Y Cb Cr per pixel, interleaved. Neutral chroma (128)
# is grey exactly; the primaries come back within rounding of the conversion.
YBR_FULL = dict(
    pi="YBR_FULL", rows=2, cols=3, samples=3, bits=8,
    pixels=bytes([0, 128, 128, 255, 128, 128, 100, 128, 128,
                  76, 85, 255, 150, 44, 21, 29, 255, 107]),
    expected=[[BLACK, WHITE, (100, 100, 100)],
              [RED, GREEN, BLUE]],
    tolerance=2,
)

# YBR_FULL_422: each pair of pixels stored as Y1 Y2 Cb Cr (chroma shared by the pair).
YBR_FULL_422 = dict(
    pi="YBR_FULL_422", rows=2, cols=4, samples=3, bits=8,
    pixels=bytes([50, 200, 128, 128, 255, 255, 128, 128,
                  76, 76, 85, 255, 29, 29, 255, 107]),
    expected=[[(50, 50, 50), (200, 200, 200), WHITE, WHITE],
              [RED, RED, BLUE, BLUE]],
    tolerance=2,
)

# PALETTE COLOR: 8-bit indices into a 4-entry palette of 16-bit words (first mapped value
# 0); a 16-bit entry shows as its high byte.
LUT_RED = [0x0000, 0xFFFF, 0x0000, 0x1234]
LUT_GREEN = [0x0000, 0x0000, 0xFFFF, 0x5678]
LUT_BLUE = [0xFFFF, 0x0000, 0x0000, 0x9ABC]
PALETTE = dict(
    pi="PALETTE COLOR", rows=2, cols=2, samples=1, bits=8,
    pixels=bytes([0, 1, 2, 3]),
    more=[(0x0028, 0x1101 + k, "US", us(4, 0, 16)) for k in range(3)]
    + [(0x0028, 0x1201 + k, "OW", us(*lut)) for k, lut in enumerate((LUT_RED, LUT_GREEN, LUT_BLUE))],
    expected=[[BLUE, RED], [GREEN, (0x12, 0x56, 0x9A)]],
    tolerance=1,
)

# MONOCHROME1: 0 is white, so a stored value v shows as 255 - v.
MONOCHROME1 = dict(
    pi="MONOCHROME1", rows=2, cols=3, samples=1, bits=8,
    pixels=bytes([0, 255, 100, 200, 10, 128]),
    expected=[[(255,) * 3, (0,) * 3, (155,) * 3], [(55,) * 3, (245,) * 3, (127,) * 3]],
    tolerance=0,
)

# 16-bit MONOCHROME2 with a window of centre 1500, width 1000 (DICOM linear function):
# at or below 1000 black, from 2000 white, 1250 / 1500 / 1750 a quarter, half, three quarters.
WINDOWED = [800, 1000, 1250, 1500, 1750, 2000, 2200, 40000]
GREY16 = dict(
    pi="MONOCHROME2", rows=2, cols=4, samples=1, bits=16,
    pixels=us(*WINDOWED),
    more=[(0x0028, 0x1050, "DS", b"1500"), (0x0028, 0x1051, "DS", b"1000")],
    expected=[[(0,) * 3, (0,) * 3, (64,) * 3, (128,) * 3], [(191,) * 3, (255,) * 3, (255,) * 3, (255,) * 3]],
    tolerance=1,
    dcm2pnm=["+Wi", "1"],
)

# The same picture, Explicit VR Big Endian: every number (and every 16-bit pixel) is
# stored most significant byte first.
BIG_ENDIAN = dict(GREY16, pixels=us(*WINDOWED, big=True), ts=EXPLICIT_BE)

FIXTURES = {
    "ybr_full": YBR_FULL,
    "ybr_full_422": YBR_FULL_422,
    "palette_16bit_lut": PALETTE,
    "monochrome1": MONOCHROME1,
    "grey16_window": GREY16,
    "big_endian_16bit": BIG_ENDIAN,
}


def build(name: str) -> tuple[bytes, np.ndarray, int]:
    f = FIXTURES[name]
    data = image(name, f.get("ts", EXPLICIT_LE), pi=f["pi"], rows=f["rows"], cols=f["cols"],
                 samples=f["samples"], bits=f["bits"], pixels=f["pixels"], more=f.get("more"))
    return data, np.array(f["expected"], dtype=np.uint8), f["tolerance"]


def assert_close(got: np.ndarray, expected: np.ndarray, tolerance: int, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{what}: off by {diff.max()}\n got {got.tolist()}\n expected {expected.tolist()}"


def test_the_fixtures_are_written_in_their_own_byte_order():
    # the hand-written bytes say what the test claims, independently of any DICOM reader
    be, _, _ = build("big_endian_16bit")
    le, _, _ = build("grey16_window")
    assert be[128:132] == le[128:132] == b"DICM"
    assert struct.pack(">H", 1250) + struct.pack(">H", 1500) in be
    assert struct.pack("<H", 1250) + struct.pack("<H", 1500) in le
    assert b"\x28\x00\x10\x00US\x02\x00\x02\x00" in le  # (0028,0010) Rows = 2, little endian
    assert b"\x00\x28\x00\x10US\x00\x02\x00\x02" in be  # the same element, big endian


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_kits_frame_rendered_and_luma_paths_give_the_hand_written_pixels(name):
    data, expected, tolerance = build(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    frame = decode_frame(ds)
    assert frame.dtype == np.uint8
    assert_close(frame, expected, tolerance, "decode_frame")
    # WADO-RS rendered: the PNG a viewer receives holds the same pixels (PNG is lossless)
    png = np.asarray(Image.open(io.BytesIO(render(frame, "image/png"))).convert("RGB"))
    assert_close(png, expected, tolerance, "rendered PNG")
    # the models' input: ITU-R 601 luma of the same picture
    luma, _ = luma_frames(ds, [0], colour_at=None)
    weights = np.array([0.299, 0.587, 0.114])
    expected_luma = np.rint(expected.astype(float) @ weights).astype(np.uint8)[None]
    assert_close(luma, expected_luma, tolerance + 1, "luma")


def dcm2pnm_pixels(need, tmp_path, data: bytes, options: list[str]) -> np.ndarray:
    tool = need("dcm2pnm")
    src, out = tmp_path / "in.dcm", tmp_path / "out.pnm"
    src.write_bytes(data)
    done = subprocess.run([tool, "+op", *options, str(src), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    img = Image.open(out)
    return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_dcmtk_decodes_the_fixtures_to_the_same_pixels(name, need, tmp_path):
    data, expected, tolerance = build(name)
    outside = dcm2pnm_pixels(need, tmp_path, data, FIXTURES[name].get("dcm2pnm", []))
    # dcmtk rounds its own way: its colour conversion (from the hand-rounded YCbCr) and
    # its MONOCHROME1 inversion land up to one more step away than the kit's
    tolerance += 1
    assert_close(outside, expected, tolerance, "dcm2pnm")
    kit = decode_frame(pydicom.dcmread(io.BytesIO(data)))
    assert_close(kit, outside, tolerance, "kit against dcm2pnm")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_stored_copy_decodes_to_the_same_pixels(name, store):
    from fieldkit.store import instances

    data, expected, tolerance = build(name)
    result = instances.put_instance(store, data, "stow")
    assert result["status"] == "stored", result
    row = instances.get_instance(store, result["sop_instance_uid"])
    stored = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["blob"])))
    assert stored.PatientID != "ORACLE1"  # the kit's identity was stamped on the copy
    assert_close(decode_frame(stored), expected, tolerance, "stored copy")


def test_a_lut_entry_past_the_palette_is_clamped_to_its_last_colour():
    # index 7 in a 4-entry palette: readers clamp to the last entry (PS3.3 C.7.6.3.1.5)
    f = dict(PALETTE, pixels=bytes([0, 1, 2, 7]))
    data = image("palette_clamp", EXPLICIT_LE, pi=f["pi"], rows=2, cols=2, samples=1, bits=8,
                 pixels=f["pixels"], more=f["more"])
    frame = decode_frame(pydicom.dcmread(io.BytesIO(data)))
    assert frame[1, 1].tolist() == [0x12, 0x56, 0x9A]
