"""PNG/JPEG pictures from probes that only export pictures -> DICOM Secondary Capture
(or Ultrasound Image), carrying the patient's kit identity and the acquisition time.

The picture is decoded and stored uncompressed (Explicit VR Little Endian): no second
lossy step. The object says it came from a picture (ConversionType WSD, a derivation
description and an image comment), and the catalogue flags it too.
"""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from ..errors import BadInput
from . import uids
from .identity import stamp
from .parse import MAX_FRAME_PIXELS

PICTURE_COMMENT = "Converted by the field kit from a picture file exported by the probe"
PICTURE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


class InvalidPicture(BadInput):
    pass


def sniff_picture(head: bytes) -> str | None:
    """'PNG' or 'JPEG' from the first bytes, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    return None


def picture_to_dataset(data: bytes, *, patient_id: str, issuer: str, patient_name: str = "",
                       birth_date: str = "", sex: str = "", acquired_at: dt.datetime | None = None,
                       uid_root: str = "2.25", study_instance_uid: str | None = None,
                       series_instance_uid: str | None = None, as_ultrasound: bool = False,
                       filename: str = "") -> Dataset:
    kind = sniff_picture(data[:8])
    if kind is None:
        raise InvalidPicture("not a PNG or JPEG picture")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width < 1 or height < 1 or width * height > MAX_FRAME_PIXELS:
            raise InvalidPicture(f"picture size {width}x{height} is outside what the kit accepts")
        img.load()
    except InvalidPicture:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidPicture(f"{kind} picture does not decode: {str(exc)[:160]}") from None
    gray = img.mode in ("L", "I;16", "I", "1")
    arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)

    when = (acquired_at or dt.datetime.now(dt.timezone.utc)).astimezone()
    ds = Dataset()
    ds.SOPClassUID = uids.US_IMAGE if as_ultrasound else uids.SECONDARY_CAPTURE
    ds.SOPInstanceUID = uids.new_uid(uid_root)
    ds.StudyInstanceUID = study_instance_uid or uids.new_uid(uid_root)
    ds.SeriesInstanceUID = series_instance_uid or uids.new_uid(uid_root)
    ds.Modality = "US"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    stamp(ds, patient_id, issuer)
    for prefix in ("Study", "Series", "Content", "Acquisition"):
        setattr(ds, f"{prefix}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", when.strftime("%H%M%S"))
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S%z")
    now = dt.datetime.now().astimezone()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = when.strftime("%z")  # every date and time above is the kit's local time
    ds.Manufacturer = ""  # type 2: the camera or phone that took the picture is not known
    ds.Laterality = ""  # type 2C: not known from a picture
    ds.PatientOrientation = ""  # type 2C: not known from a picture
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"  # an exported picture usually shows the probe's text
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{PICTURE_COMMENT} ({kind}{', ' + filename[:40] if filename else ''})"[:1024]
    ds.ImageComments = PICTURE_COMMENT
    ds.Rows, ds.Columns = arr.shape[0], arr.shape[1]
    ds.SamplesPerPixel = 1 if gray else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if gray else "RGB"
    if not gray:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01" if kind == "JPEG" else "00"
    if kind == "JPEG":
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = arr.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds
