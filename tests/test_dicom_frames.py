"""fieldkit.dicom: decoding every photometric interpretation and syntax, checking, stamping."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fieldkit.dicom import encode, parse, uids
from fieldkit.dicom.frames import DecodeError, decode_frame, decode_frames
from fieldkit.dicom.identity import source_identity, stamp
from fixtures.dcmtk import pydicom_file, video_dataset


def _gray(pi: str, arr: np.ndarray, **extra) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = uids.US_IMAGE, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, pi
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    return ds


def test_monochrome2_8bit_is_kept_and_monochrome1_is_inverted():
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    m2 = decode_frame(_gray("MONOCHROME2", arr))
    m1 = decode_frame(_gray("MONOCHROME1", arr))
    assert m2.shape == (8, 8, 3) and m2.dtype == np.uint8
    np.testing.assert_array_equal(m2[:, :, 0], arr)
    np.testing.assert_array_equal(m1[:, :, 1], 255 - arr)


def test_16bit_grayscale_uses_the_window():
    arr = np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8)
    out = decode_frame(_gray("MONOCHROME2", arr, WindowCenter=1000, WindowWidth=1000))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # below and above the window
    mid = out[:, :, 0][(arr > 600) & (arr < 1400)]
    assert mid.min() < 128 < mid.max()


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "examples_jpeg2k.dcm", "ExplVR_BigEnd.dcm",
                                  "examples_ybr_color.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+np.dcm", "image_dfl.dcm"])
def test_colour_and_compressed_files_decode_like_pydicom(name):
    ds = pydicom.dcmread(pydicom_file(name))
    got = decode_frames(ds)
    ref = ds.pixel_array
    if ref.ndim == 2:
        ref = np.repeat(ref[:, :, None], 3, axis=2)
    if ref.ndim == 3 and ds.get("NumberOfFrames", 1) in (1, None, "1"):
        ref = ref[None]
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_palette_colour_goes_through_the_palette():
    ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
    rgb = apply_color_lut(ds.pixel_array, ds)
    expected = (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb
    np.testing.assert_array_equal(decode_frame(ds), expected)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_video_cines_decode_with_pyav(codec):
    ds = video_dataset(codec, frames=6)
    frames = decode_frames(ds)
    source = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm")).pixel_array[:6]
    assert frames.shape == (6, 240, 320, 3)
    assert np.abs(frames.astype(int) - source.astype(int)).mean() < 12  # lossy, but the same picture
    np.testing.assert_array_equal(decode_frames(ds, [4])[0], frames[4])


def test_garbage_pixel_data_is_a_decode_error_with_the_reason():
    ds = pydicom.dcmread(pydicom_file("examples_jpeg2k.dcm"))
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 300])
    with pytest.raises(DecodeError, match="does not decode"):
        decode_frame(ds)
    with pytest.raises(DecodeError, match="frame 3 requested"):
        decode_frames(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")), [2])


def test_check_refuses_with_reason_codes():
    mr = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    with pytest.raises(parse.InvalidDicom) as e:
        parse.check(mr)
    assert e.value.code == parse.UNSUPPORTED_SOP_CLASS
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    del ds.StudyInstanceUID
    with pytest.raises(parse.InvalidDicom, match="StudyInstanceUID"):
        parse.check(ds)
    with pytest.raises(parse.InvalidDicom, match="not a DICOM Part-10"):
        parse.read_part10(b"\x89PNG\r\n\x1a\n" + b"\0" * 300)
    raw = open(pydicom_file("examples_ybr_color.dcm"), "rb").read()
    with pytest.raises(parse.InvalidDicom, match="truncated"):
        parse.check(parse.read_part10(raw[: len(raw) // 2]))


def test_content_digest_ignores_file_meta_and_survives_a_round_trip():
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    digest = encode.content_digest(ds)
    again = parse.read_part10(encode.encode_part10(ds))
    assert encode.content_digest(again) == digest
    again.PixelData = bytes(len(again.PixelData))
    assert encode.content_digest(again) != digest


def test_stamp_keeps_the_probe_id_in_other_patient_ids():
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    before = source_identity(ds)
    assert stamp(ds, "U-ABC123", "FIELDKIT-K1") is True
    assert ds.PatientID == "U-ABC123" and ds.IssuerOfPatientID == "FIELDKIT-K1"
    assert [o.PatientID for o in ds.OtherPatientIDsSequence] == [before.patient_id]
    assert stamp(ds, "U-ABC123", "FIELDKIT-K1") is False  # idempotent
    assert len(ds.OtherPatientIDsSequence) == 1


def test_uids_under_the_kit_root_are_valid():
    for root in ("2.25", "1.2.826.0.1.3680043.10.999", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20"):
        uid = uids.new_uid(root)
        assert parse.valid_uid(uid) and uid.startswith(root + ".") and len(uid) <= 64


def test_stored_copies_are_well_formed_for_dcmtk(need, tmp_path):
    """What the kit stores must read cleanly in a toolkit that is not pydicom."""
    import subprocess

    from PIL import Image

    from fieldkit.dicom import pictures
    from fixtures.dcmtk import sample_files

    need("storescu")  # dcmdump ships with it (dcmtk)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "PNG")
    built = [pictures.picture_to_dataset(buf.getvalue(), patient_id="U-1", issuer="FIELDKIT-T")]
    read = [pydicom.dcmread(p) for p, _, _ in sample_files(tmp_path / "s")]
    for i, ds in enumerate(built + read):
        enc = encode.Encoded(ds)
        stamp(enc.identity, "U-1", "FIELDKIT-T", source_identity(ds))
        path = tmp_path / f"out{i}.dcm"
        path.write_bytes(enc.part10())
        proc = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60)
        problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line[:2] in ("E:", "W:")]
        assert proc.returncode == 0 and problems == [], (i, problems[:3])
        again = pydicom.dcmread(path)
        assert again.PatientID == "U-1" and again.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
@pytest.mark.parametrize("source_id, issuer", [("SONO-77", ""), ("SONO-77", "PROBE-A"), ("", ""),
                                                ("Müller-1", ""), ("A\\B", "")])
def test_stamped_identity_is_encoded_as_pydicom_would(syntax, source_id, issuer):
    """The stored copy's identity slice is written directly when it is plain text; it must
    be byte for byte what pydicom's writer makes, and anything else goes to pydicom."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.PatientID = source_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.file_meta.TransferSyntaxUID = syntax
    uid = pydicom.uid.UID(syntax)
    if not uid.is_little_endian:  # big endian: the pixel bytes are words
        ds.PixelData = ds.PixelData
    enc = encode.Encoded(ds)
    stamp(enc.identity, "U-ABC123", "FIELDKIT-K1", source_identity(ds))
    ident = sorted(map(int, enc.identity._dict))
    sub = pydicom.Dataset({pydicom.tag.BaseTag(t): enc.identity.get_item(t) for t in ident})
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = uid.is_implicit_VR, uid.is_little_endian
    write_dataset(fp, sub)
    assert enc._pydicom_encode(ident) == fp.getvalue()
    back = parse.read_part10(enc.part10())
    assert back.PatientID == "U-ABC123" and back.IssuerOfPatientID == "FIELDKIT-K1"
    if source_id and "\\" not in source_id:  # a backslash makes two values; pydicom's business
        assert [o.PatientID for o in back.OtherPatientIDsSequence] == [source_id]
