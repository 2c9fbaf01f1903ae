"""The JPEG transfer syntaxes probes send decode with the default install's permissive
decoders (Pillow; libjpeg-turbo through fieldkit.dicom.jpeg_turbo), without the GPL-3.0
libjpeg plugin: lossless exactly, lossy as dcmtk's own decoder (`dcmdjpeg`) does, and a
corrupt stream is an error, never a crash. Files are encoded by dcmtk's `dcmcjpeg`."""

from __future__ import annotations

import copy
import random
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, SecondaryCaptureImageStorage, generate_uid)

from fieldkit.dicom.frames import DecodeError, decode_frames
from fieldkit.dicom.jpeg_turbo import LABEL as TURBO


def native(path, samples: int, bits: int):
    """A smooth test picture with some edges, as a native Secondary Capture file."""
    rows, cols = 48, 64
    y, x = np.mgrid[0:rows, 0:cols]
    top = (1 << bits) - 1
    grey = ((x * top // cols + y * 7 + ((x // 8 + y // 8) % 2) * top // 5) % (top + 1))
    dtype = np.uint8 if bits <= 8 else np.uint16
    arr = np.stack([grey, top - grey, (grey // 2 + y) % (top + 1)], axis=-1) if samples == 3 else grey
    arr = arr.astype(dtype)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Jpeg", "JPEG1", "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return arr


def encode(tmp_path, need, option, samples, bits):
    """(the dcmcjpeg-encoded dataset, the original pixels, dcmdjpeg's decoded file)."""
    dcmcjpeg, dcmdjpeg = need("dcmcjpeg"), need("dcmdjpeg")
    original = native(tmp_path / "native.dcm", samples, bits)
    encoded, reference = tmp_path / "jpeg.dcm", tmp_path / "decoded.dcm"
    subprocess.run([dcmcjpeg, option, str(tmp_path / "native.dcm"), str(encoded)], check=True, timeout=60)
    subprocess.run([dcmdjpeg, str(encoded), str(reference)], check=True, timeout=60)
    return pydicom.dcmread(encoded), original, reference


@pytest.mark.parametrize("option,syntax,samples,bits,plugins", [
    ("+eb", JPEGBaseline8Bit, 1, 8, ["pillow"]),
    ("+eb", JPEGBaseline8Bit, 3, 8, ["pillow"]),
    ("+ee", JPEGExtended12Bit, 1, 8, [TURBO, "pillow"]),
    ("+ee", JPEGExtended12Bit, 3, 8, [TURBO, "pillow"]),
    ("+ee", JPEGExtended12Bit, 1, 12, [TURBO]),
    ("+e1", JPEGLosslessSV1, 1, 8, [TURBO]),
    ("+e1", JPEGLosslessSV1, 3, 8, [TURBO]),
    ("+e1", JPEGLosslessSV1, 1, 12, [TURBO]),
    ("+el", JPEGLossless, 1, 16, [TURBO]),
])
def test_jpeg_family_decodes_with_permissive_decoders(tmp_path, need, option, syntax, samples, bits, plugins):
    ds, original, reference = encode(tmp_path, need, option, samples, bits)
    assert ds.file_meta.TransferSyntaxUID == syntax
    lossless = syntax in (JPEGLossless, JPEGLosslessSV1)
    expected = original if lossless else pixel_array(pydicom.dcmread(reference))
    for plugin in plugins:
        got = pixel_array(ds, decoding_plugin=plugin)
        assert got.shape == original.shape, plugin
        if lossless:
            assert np.array_equal(got, original), plugin
        else:  # IDCTs differ by a grey level or two between libjpeg builds
            assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= 3, plugin
    # and the kit's own path (whichever decoder pydicom picks) gives a picture
    frames = decode_frames(ds)
    assert frames.shape == (1, 48, 64, 3) and frames.dtype == np.uint8 and frames.std() > 10


def test_corrupt_lossless_and_12_bit_streams_are_errors_not_crashes(tmp_path, need):
    """Bit flips, truncations and stray bytes in the JPEG stream: each decode either gives
    frames of the right shape or a DecodeError, and the process survives (GDCM aborted
    the process on such input, which is why the kit does not use it)."""
    streams = []
    for option, samples, bits in (("+e1", 1, 8), ("+e1", 3, 8), ("+el", 1, 16), ("+ee", 1, 12)):
        (tmp_path / option).mkdir(exist_ok=True)
        ds, _, _ = encode(tmp_path / option, need, option, samples, bits)
        streams.append(ds)
    rng = random.Random(14)
    outcomes = {"decoded": 0, "refused": 0}
    for n in range(1500):
        ds = copy.deepcopy(rng.choice(streams))
        frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
        for _ in range(rng.choice((1, 2, 4))):
            pos = rng.randrange(len(frame))
            kind = rng.random()
            if kind < 0.5:
                frame[pos] ^= 1 << rng.randrange(8)
            elif kind < 0.7:
                del frame[rng.randrange(len(frame) // 2, len(frame)):]
            else:
                frame[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        ds.PixelData = encapsulate([bytes(frame)])
        try:
            frames = decode_frames(ds)
            assert frames.shape == (1, 48, 64, 3)
            outcomes["decoded"] += 1
        except DecodeError as exc:
            assert str(exc).startswith("pixel data does not decode")
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 1500, outcomes
