"""fieldkit: an offline-first field kit for point-of-care ultrasound."""

__version__ = "0.1.0"

# Version of the on-disk layout. A data dir written by a newer layout is refused.
DATA_FORMAT_VERSION = 3  # 2: the store notes its own format; 3: the audit chain is keyed (store/migrations.py)
