"""gzip for DICOMweb and WADO-URI answers that are worth compressing, when the client accepts it.

The kit's Wi-Fi is the bottleneck, not its bytes: DICOM JSON (QIDO, metadata) shrinks
several-fold, and so do uncompressed instances, frames and bulk data. Already compressed
answers (rendered images, JPEG/RLE/deflated instances) are left alone: compressing them
costs CPU and saves nothing. Compressed frames sent as stored are tried: a probe's JPEG
frames repeat their tables and markers in every frame (the SonoSite cine's shrink by 8 %
at level 1, 0.25 ms a frame), so their answer is gzipped when a trial on its first bytes
pays, and sent as it is otherwise. An endpoint marks a binary answer worth compressing
with `worth_compressing(response)` (or `if_it_pays=True`); JSON always is.

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
# binaries are large: a fast level keeps the CPU free. On uncompressed ultrasound frames
# level 3 costs about what level 1 does (4.5 against 3.8 ms for a 225 KiB RGB frame) for
# 7-9 % fewer bytes; level 6 would save 2-7 % more for 3-4x the CPU.
JSON_LEVEL, BINARY_LEVEL, TRIED_LEVEL = 6, 3, 1
TRIAL_BYTES, TRIAL_RATIO = 16384, 0.95  # gzip a tried answer when its first 16 KiB shrink by 5 %


def worth_compressing(response: Response, if_it_pays: bool = False) -> Response:
    """Mark a binary answer (uncompressed pixels or values) as worth gzip; with
    `if_it_pays`, an answer already compressed (stored frames): gzipped only when a trial
    on its first bytes shrinks them (the answer is then held whole, not streamed)."""
    response.worth_compressing = "try" if if_it_pays else True
    return response


def _pays(data: bytes) -> bool:
    sample = data[:TRIAL_BYTES]
    packer = zlib.compressobj(TRIED_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return len(packer.compress(sample) + packer.flush()) < len(sample) * TRIAL_RATIO


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
    if getattr(response, "worth_compressing", None) == "try":
        if not _pays(response.get_data()):
            return response
        level = TRIED_LEVEL
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
