"""A pydicom decoder plugin for the JPEG syntaxes Pillow cannot read: lossless (Process 14,
both predictors) and 12-bit Extended (Process 4), decoded by libjpeg-turbo 3 through
imagecodecs (BSD-3-Clause).

The kit is Apache-2.0 and pydicom's other decoder for these syntaxes, pylibjpeg-libjpeg, is
GPL-3.0; GDCM's plugin is permissive but aborts the whole process on some corrupt lossless
streams, where libjpeg-turbo raises an error the kit can report. Pillow keeps 8-bit baseline
and extended. `register()` adds this plugin to pydicom's decoders (fieldkit.dicom does it).
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit)
LABEL = "fieldkit-libjpeg-turbo"

# read by pydicom when the plugin is not available
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1",) for syntax in SYNTAXES}


def is_available(syntax: str) -> bool:
    if syntax not in SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's samples, colour-by-pixel, as the stream holds them: equal in and out
    colour spaces make libjpeg-turbo convert nothing, and pydicom converts YCbCr itself."""
    import imagecodecs

    samples = runner.samples_per_pixel
    space = "YCBCR" if samples == 3 else ("GRAYSCALE" if samples == 1 else None)
    if space is None:
        raise ValueError(f"JPEG with {samples} samples per pixel is not supported")
    arr = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
    shape = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    if arr.shape != shape:
        raise ValueError(f"the JPEG stream is {arr.shape[1]}x{arr.shape[0]}, "
                         f"the dataset says {runner.columns}x{runner.rows}")
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)  # libjpeg-turbo's container
    runner.set_option("planar_configuration", 0)
    return arr.tobytes()


def register() -> None:
    """Add the plugin to pydicom's decoders for SYNTAXES (once per process)."""
    from pydicom.pixels.decoders import base

    for syntax in SYNTAXES:
        decoder = base.get_decoder(syntax)
        if LABEL not in decoder._available and LABEL not in decoder._unavailable:
            decoder.add_plugin(LABEL, (__name__, "decode_frame"))
