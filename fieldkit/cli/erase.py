"""What `fieldkit erase` destroys besides the wrapped data key: every key and secret file
of the data dir (device key, the kit CA's and server's TLS keys, hospital credentials)."""

from __future__ import annotations

from pathlib import Path

from ..security.keys import KEYS_DIR
from ..security.secrets import shred
from ..security.tls import private_key_files
from ..sync.hospital import SECRETS_DIR, secret_files


def key_files(data_dir: Path, config=None) -> list[Path]:
    """Every file of the data dir that holds a key or a secret (sealed or not)."""
    data_dir = Path(data_dir)
    keys = data_dir / KEYS_DIR
    out = sorted(p for p in keys.rglob("*") if p.is_file()) if keys.is_dir() else []
    out += [p for p in private_key_files(data_dir) if p.is_file()]
    out += secret_files(data_dir, config)
    return list(dict.fromkeys(out))


def erase_key_files(data_dir: Path, config=None) -> list[str]:
    """Overwrite and remove every key and secret file; returns them, relative to the data dir."""
    data_dir = Path(data_dir)
    removed = [str(p.relative_to(data_dir)) for p in key_files(data_dir, config) if shred(p)]
    folder = data_dir / SECRETS_DIR
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed
