"""The DICOM JSON keys of a STOW-RS response (PS3.18 10.5.3): what the kit answers as a
STOW-RS server (web/dicomweb.py) and reads back as a client (sync/client.py)."""

REFERENCED_SOP_SEQ = "00081199"
FAILED_SOP_SEQ = "00081198"
REF_SOP_CLASS = "00081150"
REF_SOP_INSTANCE = "00081155"
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
ERROR_COMMENT = "00000902"
