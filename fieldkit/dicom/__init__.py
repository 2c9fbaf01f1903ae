"""DICOM helpers that know nothing of the store: UIDs, parsing, identity stamping,
frame decoding, picture wrapping and thumbnails (layer 1)."""
