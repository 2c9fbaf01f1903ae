"""Ingest previews: the quick JPEG path gives the same picture as the kit's decoder, and a
frame that does not decode is still refused with the decoder's reason."""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from fieldkit.dicom.frames import DecodeError, decode_frame
from fieldkit.dicom.thumbnails import (THUMB_MAX_SIDE, _jpeg_preview, _native_rgb_preview, thumbnail_jpeg,
                                       thumbnail_of)


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=float)


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_quick_jpeg_preview_matches_the_full_decode(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    assert _jpeg_preview(ds, THUMB_MAX_SIDE) is not None  # the quick path is taken
    quick, full = _pixels(thumbnail_of(ds)), _pixels(thumbnail_jpeg(decode_frame(ds, 0)))
    assert quick.shape == full.shape and max(quick.shape[:2]) <= THUMB_MAX_SIDE
    assert np.abs(quick - full).mean() < 3.0  # same picture, same colours


def test_rgb_jpeg_without_colour_transform_goes_through_the_decoder():
    ds = pydicom.dcmread(get_testdata_file("SC_jpeg_no_color_transform.dcm"))
    assert _jpeg_preview(ds, THUMB_MAX_SIDE) is None
    assert np.array_equal(_pixels(thumbnail_of(ds)), _pixels(thumbnail_jpeg(decode_frame(ds, 0))))


def _with_first_frame(data: bytes):
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate([data(frames[0])] + frames[1:])
    return ds


def test_garbage_first_frame_is_still_a_decode_error():
    ds = _with_first_frame(lambda f: f[:2] + os.urandom(len(f) - 2))  # SOI, then noise
    with pytest.raises(DecodeError, match="does not decode"):
        thumbnail_of(ds)


def test_cut_short_first_frame_is_left_to_the_decoder():
    ds = _with_first_frame(lambda f: f[: len(f) // 2])
    assert _jpeg_preview(ds, THUMB_MAX_SIDE) is None  # the quick path never guesses
    try:
        expected = thumbnail_jpeg(decode_frame(ds, 0))
    except DecodeError:
        with pytest.raises(DecodeError):
            thumbnail_of(ds)
    else:
        assert thumbnail_of(ds) == expected


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "examples_ybr_color.dcm", "JPEG2000.dcm"])
def test_preview_longest_side_is_bounded_and_keeps_the_aspect(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    img = Image.open(io.BytesIO(thumbnail_of(ds)))
    cols, rows = int(ds.Columns), int(ds.Rows)
    assert THUMB_MAX_SIDE // 2 < max(img.size) <= THUMB_MAX_SIDE
    assert abs(img.size[0] / img.size[1] - cols / rows) < 0.02


def test_native_rgb_preview_is_the_decoded_picture():
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    assert _native_rgb_preview(ds, THUMB_MAX_SIDE) is not None  # no decoder on the way
    quick, full = _pixels(thumbnail_of(ds)), _pixels(thumbnail_jpeg(decode_frame(ds, 0)))
    assert quick.shape == full.shape and np.abs(quick - full).mean() < 1.0
