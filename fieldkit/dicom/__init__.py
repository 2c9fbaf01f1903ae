"""DICOM helpers that know nothing of the store: UIDs, parsing, identity stamping,
frame decoding, picture wrapping and thumbnails (layer 1)."""

from pydicom import config as _pydicom_config

# pydicom's value validation warns with the offending value ("Invalid value for VR DA:
# '19801332x'"), and values are patient data, which must never reach a log. The kit checks
# what it relies on itself (fieldkit.dicom.parse) and keeps the rest as sent.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
_pydicom_config.settings.writing_validation_mode = _pydicom_config.IGNORE

# Lossless and 12-bit JPEG through libjpeg-turbo (permissive; see jpeg_turbo.py).
from . import jpeg_turbo as _jpeg_turbo  # noqa: E402

_jpeg_turbo.register()
