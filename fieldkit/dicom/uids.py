"""The SOP classes and transfer syntaxes the kit accepts, and UIDs for objects it creates.

Probes must never have to transcode, so every transfer syntax a handheld system is known
to send is listed here; the DIMSE receiver, STOW-RS and the upload path all read these
lists, so the kit says the same "yes" everywhere.
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

# -- transfer syntaxes ---------------------------------------------------------------
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
# MPEG-4 AVC/H.264 (incl. fragmentable and stereo variants) and HEVC/H.265
MPEG4_SYNTAXES = (
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
    "1.2.840.10008.1.2.4.108",
)
HEVC_SYNTAXES = ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108")
MPEG2_SYNTAXES = ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101")
VIDEO_SYNTAXES = MPEG4_SYNTAXES + MPEG2_SYNTAXES

NATIVE_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE)
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = NATIVE_SYNTAXES + (
    JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS_P14, JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS, JPEG_LS_NEAR, JPEG2000_LOSSLESS, JPEG2000, RLE,
) + VIDEO_SYNTAXES

# -- storage SOP classes ----------------------------------------------------------------
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

IMAGE_STORAGE_CLASSES: dict[str, str] = {
    US_IMAGE: "Ultrasound Image Storage",
    US_MULTIFRAME: "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
SR_STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.72": "Simplified Adult Echo SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
    "1.2.840.10008.5.1.4.1.1.88.68": "Radiopharmaceutical Radiation Dose SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.71": "Acquisition Context SR Storage",
}
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# documents: the kit's own per-patient handover sheet (and a probe's PDF report)
DOCUMENT_STORAGE_CLASSES: dict[str, str] = {ENCAPSULATED_PDF: "Encapsulated PDF Storage"}
ACCEPTED_SOP_CLASSES: dict[str, str] = {**IMAGE_STORAGE_CLASSES, **SR_STORAGE_CLASSES, **DOCUMENT_STORAGE_CLASSES}


def is_video(transfer_syntax: str) -> bool:
    return str(transfer_syntax) in VIDEO_SYNTAXES


def transfer_syntax_name(uid: str) -> str:
    name = UID(str(uid)).name
    if name == str(uid):
        return {"1.2.840.10008.1.2.4.107": "HEVC/H.265 Main Profile / Level 5.1",
                "1.2.840.10008.1.2.4.108": "HEVC/H.265 Main 10 Profile / Level 5.1"}.get(str(uid), str(uid))
    return name


def derived_uid(root: str, *parts) -> str:
    """The kit's one deterministic UID: the same for the same inputs (a re-run, a stable
    encounter, a re-sent document), so a re-send names the object the hospital holds.

    Two forms, each kept as it was because UIDs already at a hospital must not change:
    under pydicom's root (`PYDICOM_ROOT_UID`, where the audit exports have always been) it
    is pydicom's `generate_uid(entropy_srcs=parts)`; under the kit's root (2.25, or the
    `kit.uid_root` setting, which cannot end in "." as pydicom's root does) a SHA-256 of the
    parts kept apart: 2.25 gives the UUID-derived form, another root a digest suffix cut to 64."""
    parts = [str(part) for part in parts]
    if root == PYDICOM_ROOT_UID:
        return str(generate_uid(PYDICOM_ROOT_UID, entropy_srcs=parts))
    n = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:16], "big")
    root = (root or "2.25").rstrip(".")
    if root == "2.25":
        return f"2.25.{n}"
    return f"{root}.1{n}"[:64].rstrip(".")


def new_uid(root: str = "2.25") -> str:
    """A fresh UID under the kit's root: 2.25 means the UUID-derived form of PS3.5 B.2;
    another root gets a decimal UUID suffix, cut to the 64-character limit."""
    value = uuid.uuid4().int
    if not root or root == "2.25":
        return f"2.25.{value}"
    root = root.rstrip(".")
    uid = f"{root}.{value}"
    if len(uid) > 64:
        # leading "1" keeps the component free of a leading zero (PS3.5 9.1)
        uid = f"{root}.1{value % (10 ** max(1, 62 - len(root)))}"
    return uid
