"""Find private keys and secrets in files, the way someone holding the disk would look."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)


def files(root: Path) -> list[Path]:
    """Every regular file under root, listed by `find` (as an attacker's shell would)."""
    out = subprocess.run(["find", str(root), "-type", "f"], capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in out.splitlines() if line]


def private_keys(path: Path) -> list:
    """Private keys the cryptography loaders read from this file: PEM blocks anywhere in
    it, or the whole file as DER."""
    data = path.read_bytes()
    keys = []
    for block in PEM_KEY.finditer(data):
        try:
            keys.append(serialization.load_pem_private_key(block.group(0), password=None))
        except (ValueError, TypeError):
            pass
    try:
        keys.append(serialization.load_der_private_key(data, password=None))
    except (ValueError, TypeError):
        pass
    return keys


def key_files(root: Path) -> dict[Path, list]:
    """{file: [private keys]} for every file under root that holds a readable private key."""
    found = {}
    for path in files(root):
        keys = private_keys(path)
        if keys:
            found[path] = keys
    return found


def public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in files(root) if needle in p.read_bytes()]
