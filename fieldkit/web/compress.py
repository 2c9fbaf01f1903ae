"""gzip for DICOMweb and WADO-URI answers that are worth compressing, when the client accepts it.

The kit's Wi-Fi is the bottleneck, not its bytes: DICOM JSON (QIDO, metadata) shrinks
several-fold, and so do uncompressed instances, frames and bulk data. Already compressed
answers (JPEG frames sent as stored, rendered images, JPEG/RLE/deflated instances) are
left alone: compressing them costs CPU and saves nothing. An endpoint marks a binary
answer worth compressing with `worth_compressing(response)`; JSON always is.

Streamed answers are compressed as they stream (nothing is held whole); a small answer
is not compressed at all.
"""

from __future__ import annotations

import gzip
import zlib

from flask import Response, request

PATHS = ("/dicom-web/", "/wado")
_JSON = ("application/json", "application/dicom+json")
MIN_BYTES = 256  # below this, gzip saves too little to be worth its 18-byte frame
JSON_LEVEL, BINARY_LEVEL = 6, 1  # binaries are large: the fastest level keeps the CPU free


def worth_compressing(response: Response) -> Response:
    """Mark a binary answer (uncompressed pixels or values) as worth gzip."""
    response.worth_compressing = True
    return response


def _gzip_stream(chunks, level: int):
    packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip wrapper
    try:
        for chunk in chunks:
            out = packer.compress(chunk)
            if out:
                yield out
        yield packer.flush()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _after(response: Response) -> Response:
    if not request.path.startswith(PATHS):
        return response
    json = response.mimetype in _JSON
    if not (json or getattr(response, "worth_compressing", False)):
        return response
    response.vary.add("Accept-Encoding")
    if (request.method == "HEAD" or response.status_code != 200 or "Content-Encoding" in response.headers
            or request.accept_encodings.quality("gzip") <= 0):
        return response
    level = JSON_LEVEL if json else BINARY_LEVEL
    if response.is_streamed:
        response.response = _gzip_stream(response.response, level)
        response.headers.pop("Content-Length", None)
    else:
        data = response.get_data()
        if len(data) < MIN_BYTES:
            return response
        response.set_data(gzip.compress(data, level))
    response.headers["Content-Encoding"] = "gzip"
    return response


def init_app(app) -> None:
    app.after_request(_after)
