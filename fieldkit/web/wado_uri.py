"""WADO-URI (PS3.18 section 9): `GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..`,
for the legacy integrations and viewers (Weasis, older PACS links) that still use it.

The same objects and the same permission as WADO-RS (`dicomweb.read`); the answers reuse
WADO-RS's retrieve and render code. `contentType` is a list of media types in order of
preference: `application/dicom` (the object; `transferSyntax` picks the syntax, default
Explicit VR Little Endian as the standard says, or the stored one when named), `image/jpeg`
or `image/png` (one rendered frame, `frameNumber`, default 1). A request the kit cannot
answer as asked is a 400 naming the parameter, never an answer to another question.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, request
from pydicom.uid import UID

from ..dicom import uids
from ..errors import BadInput
from ..ingest.multipart import content_type_params
from . import dicomweb
from .compress import worth_compressing

bp = Blueprint("wado_uri", __name__)

ROUTE_PERMISSIONS = {"wado_uri.wado": dicomweb.READ}

_DICOM, _JPEG, _PNG = "application/dicom", "image/jpeg", "image/png"
_REQUIRED = ("requestType", "studyUID", "seriesUID", "objectUID")
# parameters of PS3.18 table 9.1-1 the kit does not implement: named in the 400, not ignored
_UNSUPPORTED = {"anonymize", "annotation", "rows", "columns", "region", "windowCenter", "windowWidth",
                "imageQuality", "presentationUID", "presentationSeriesUID"}
_KNOWN = set(_REQUIRED) | {"contentType", "frameNumber", "transferSyntax", "charset"}


def _uid(name: str) -> str:
    value = request.args.get(name, "")
    if not UID(value).is_valid:
        raise BadInput(f"{name} must be a DICOM UID (digits and dots, at most 64 characters)")
    return value


def _content_type(is_image: bool) -> str:
    """The first media type of `contentType` the kit serves for this object."""
    asked = request.args.get("contentType", "")
    if not asked:  # PS3.18 9.1.2.1.5: image/jpeg for images; other objects only as DICOM here
        return _JPEG if is_image else _DICOM
    offered = {_DICOM, _JPEG, _PNG} if is_image else {_DICOM}
    for item in asked.split(","):
        media, _ = content_type_params(item.strip())
        if media in ("*/*", "image/*") and is_image:
            return _JPEG
        if media in ("*/*", "application/*"):
            return _DICOM
        if media in offered:
            return media
    what = "application/dicom, image/jpeg or image/png" if is_image else "application/dicom (not an image)"
    raise BadInput(f"contentType {asked[:60]!r} is not served for this object: ask for {what}")


@bp.get("/wado", endpoint="wado")
def wado():
    unsupported = sorted(set(request.args) & _UNSUPPORTED)
    if unsupported:
        raise BadInput(f"WADO-URI parameter(s) not supported by this kit: {', '.join(unsupported)}")
    unknown = sorted(set(request.args) - _KNOWN - _UNSUPPORTED)
    if unknown:
        raise BadInput(f"unknown WADO-URI parameter(s): {', '.join(k[:40] for k in unknown[:5])}")
    missing = [k for k in _REQUIRED if not request.args.get(k)]
    if missing:
        raise BadInput(f"WADO-URI needs {', '.join(missing)}")
    if request.args["requestType"] != "WADO":
        raise BadInput("requestType must be WADO")
    row = dicomweb._rows_for(_uid("studyUID"), _uid("seriesUID"), _uid("objectUID"))[0]
    media = _content_type(bool(row["rows"]))
    frame, syntax = request.args.get("frameNumber"), request.args.get("transferSyntax")
    if media == _DICOM:
        if frame is not None:
            raise BadInput("frameNumber applies to image/jpeg and image/png only")
        ts = syntax or uids.EXPLICIT_LE  # PS3.18 9.1.2.2.2: absent means Explicit VR Little Endian
        if syntax is not None and not UID(syntax).is_valid:
            raise BadInput("transferSyntax must be a transfer syntax UID")
        [(sent, chunks)] = list(dicomweb._instance_parts([row], ts))
        response = Response(chunks, content_type=f"{_DICOM}; transfer-syntax={sent}")
        return worth_compressing(response) if sent in dicomweb.PLAIN_SYNTAXES else response
    if syntax is not None:
        raise BadInput("transferSyntax applies to application/dicom only")
    n = row["frames"] or 1
    if frame is None:
        index = 0
    elif not re.fullmatch(r"[0-9]{1,9}", frame) or not 1 <= int(frame) <= n:
        raise BadInput(f"frameNumber must be a whole number from 1 to {n}")
    else:
        index = int(frame) - 1
    return dicomweb.rendered_response(row, index, media)
