"""The data key and the ways it is wrapped.

One random 256-bit data key encrypts everything. It is never stored bare: `keys/keyring.json`
holds it wrapped (AES-256-GCM) by a key derived from the kit passphrase with scrypt
(parameters recorded beside it) and, depending on the key mode chosen at `init`, by a
device key that lets `serve` start unattended after a power cut:

- `device`: the device key is the file `keys/device.key` (0600) beside the keyring. The
  kit restarts alone, and a stolen disk decrypts fully: it protects nothing against theft.
- `tpm`: the device key is sealed to the box's TPM 2.0 (`security.tpm.KeySealer`) and
  kept only in that sealed form in the keyring. The kit restarts alone on its own box;
  the disk in another box (another TPM, or none) opens with the passphrase only.
- `passphrase`: no device key at all. Nothing on disk unlocks the kit; `serve` starts
  locked until an admin unlocks it with the passphrase.

Changing the passphrase rewraps the same data key; no data is re-encrypted. Destroying
the keyring makes the data unreadable. Format 1 keyrings (no mode) are `device` keyrings.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .. import fsio
from ..errors import BadInput, KeyUnavailable, UnsupportedVersion
from .crypto import InvalidTag, Sealer, random_key
from .files import write_atomic
from .tpm import KeySealer

KEYRING_VERSION = 2  # 2: a "mode" and the TPM-sealed device key; 1 is read as mode "device"
KEY_MODES = ("tpm", "passphrase", "device")
KEYS_DIR = "keys"
KEYRING_FILE = "keyring.json"
DEVICE_KEY_FILE = "device.key"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _passphrase_key(passphrase: str, kdf: dict) -> bytes:
    return Scrypt(salt=_unb64(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
        passphrase.encode("utf-8"))


def _mode_of(doc: dict) -> str:
    mode = doc.get("mode", "device")  # format 1 had only the device key file
    if mode not in KEY_MODES:
        raise KeyUnavailable(f"key file names an unknown key mode {mode!r}")
    return mode


class Keyring:
    """The wrapped data key of one data dir."""

    def __init__(self, data_dir: Path, sealer: KeySealer | None = None):
        self.dir = Path(data_dir) / KEYS_DIR
        self.path = self.dir / KEYRING_FILE
        self.device_key_path = self.dir / DEVICE_KEY_FILE
        self.sealer = sealer  # the TPM, for a keyring in mode "tpm"

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def mode(self) -> str:
        return _mode_of(self._load())

    # creation -------------------------------------------------------------------------
    def create(self, passphrase: str, scrypt_n: int = 2**15, mode: str = "device") -> bytes:
        """A new random data key, wrapped by the passphrase and, per `mode`, a device key."""
        if mode not in KEY_MODES:
            raise BadInput(f"unknown key mode {mode!r}: choose one of {', '.join(KEY_MODES)}")
        if mode == "tpm" and self.sealer is None:
            raise KeyUnavailable("key mode tpm needs a TPM (setting security.tpm_tcti)")
        data_key = random_key()
        kdf = {"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": _b64(os.urandom(16))}
        doc = {
            "version": KEYRING_VERSION,
            "mode": mode,
            "kdf": kdf,
            "wrapped": {
                "passphrase": _b64(Sealer(_passphrase_key(passphrase, kdf)).seal(data_key, b"passphrase")),
            },
        }
        if mode == "tpm":
            device_key = random_key()
            doc["tpm_sealed"] = _b64(self.sealer.seal(device_key))  # before anything is written
            doc["wrapped"]["tpm"] = _b64(Sealer(device_key).seal(data_key, b"tpm"))
        fsio.makedirs(self.dir, 0o700)
        if mode == "device":
            device_key = random_key()
            write_atomic(self.device_key_path, device_key)
            doc["wrapped"]["device"] = _b64(Sealer(device_key).seal(data_key, b"device"))
        write_atomic(self.path, json.dumps(doc, indent=1).encode())
        return data_key

    # unwrapping -----------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise KeyUnavailable(f"key file {self.path} is missing: this data dir cannot be opened "
                                 "(was the kit erased?)") from None
        except (ValueError, UnicodeDecodeError):
            raise KeyUnavailable(f"key file {self.path} is corrupt (not valid JSON)") from None
        if not isinstance(doc, dict) or "version" not in doc:
            raise KeyUnavailable(f"key file {self.path} is corrupt (no version)")
        if doc["version"] > KEYRING_VERSION:
            raise UnsupportedVersion(f"key file {self.path} was written by a newer fieldkit "
                                     f"(format {doc['version']}, this one reads {KEYRING_VERSION}); upgrade fieldkit")
        return doc

    def unlock(self, passphrase: str | None = None) -> bytes:
        """The data key: by the passphrase when one is given, else as the key mode allows
        (device key file or TPM; a "passphrase" kit refuses)."""
        return self.unlock_with_passphrase(passphrase) if passphrase is not None else self.unlock_with_device_key()

    def unlock_with_passphrase(self, passphrase: str) -> bytes:
        doc = self._load()
        try:
            key = _passphrase_key(passphrase, doc["kdf"])
            return Sealer(key).open(_unb64(doc["wrapped"]["passphrase"]), b"passphrase")
        except InvalidTag:
            raise KeyUnavailable("wrong passphrase") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyUnavailable(f"key file {self.path} is corrupt") from None

    def unlock_with_device_key(self) -> bytes:
        """The data key without a person: from the device key file (mode "device") or the
        TPM-sealed device key (mode "tpm"). A "passphrase" kit has nothing to unlock with."""
        doc = self._load()
        mode = _mode_of(doc)
        if mode == "passphrase":
            raise KeyUnavailable("this kit keeps no key on its disk (key mode passphrase): start `fieldkit serve` "
                                 "and unlock it (unlock page or `fieldkit unlock`), or give --passphrase-file")
        if mode == "tpm":
            return self._unlock_with_tpm(doc)
        try:
            device_key = self.device_key_path.read_bytes()
        except FileNotFoundError:
            raise KeyUnavailable(f"device key {self.device_key_path} is missing; start with "
                                 "--passphrase-file or unlock with the kit passphrase") from None
        if len(device_key) != 32:
            raise KeyUnavailable(f"device key {self.device_key_path} is corrupt (wrong length)")
        try:
            return Sealer(device_key).open(_unb64(doc["wrapped"]["device"]), b"device")
        except InvalidTag:
            raise KeyUnavailable(f"device key {self.device_key_path} does not match this kit's key file") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyUnavailable(f"key file {self.path} is corrupt") from None

    def _unlock_with_tpm(self, doc: dict) -> bytes:
        if self.sealer is None:
            raise KeyUnavailable("this kit's device key is sealed to a TPM and no TPM is configured "
                                 "(setting security.tpm_tcti); unlock it with the kit passphrase")
        try:
            sealed, wrapped = _unb64(doc["tpm_sealed"]), _unb64(doc["wrapped"]["tpm"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyUnavailable(f"key file {self.path} is corrupt (no TPM-sealed key)") from None
        device_key = self.sealer.unseal(sealed)  # KeyUnavailable when this is not the kit's TPM
        try:
            return Sealer(device_key).open(wrapped, b"tpm")
        except (InvalidTag, ValueError):
            raise KeyUnavailable("the TPM unsealed a key that does not open this kit's key file") from None

    def change_passphrase(self, old: str, new: str) -> None:
        """Rewrap the same data key under a new passphrase (fresh salt); data is untouched."""
        data_key = self.unlock_with_passphrase(old)
        doc = self._load()
        kdf = dict(doc["kdf"], salt=_b64(os.urandom(16)))
        doc["kdf"] = kdf
        doc["wrapped"]["passphrase"] = _b64(Sealer(_passphrase_key(new, kdf)).seal(data_key, b"passphrase"))
        write_atomic(self.path, json.dumps(doc, indent=1).encode())

    # backups ---------------------------------------------------------------------------
    def passphrase_only(self) -> bytes:
        """The key file without the device wrapping: what a backup holds, so that a stolen
        backup cannot be opened without the passphrase."""
        doc = self._load()
        doc["wrapped"] = {"passphrase": doc["wrapped"]["passphrase"]}
        doc.pop("tpm_sealed", None)
        return json.dumps(doc, indent=1).encode()

    def add_device_key(self, data_key: bytes) -> None:
        """Wrap `data_key` by a new device key (a restored kit restarts unattended). A
        "passphrase" kit stays one; a "tpm" kit restored elsewhere cannot use the old box's
        TPM, so it becomes a "device" kit (re-initialise to seal to the new box's TPM)."""
        doc = self._load()
        if _mode_of(doc) == "passphrase":
            return
        doc["version"] = KEYRING_VERSION
        doc["mode"] = "device"
        doc.pop("tpm_sealed", None)
        doc["wrapped"].pop("tpm", None)
        device_key = random_key()
        write_atomic(self.device_key_path, device_key)
        doc["wrapped"]["device"] = _b64(Sealer(device_key).seal(data_key, b"device"))
        write_atomic(self.path, json.dumps(doc, indent=1).encode())

    def destroy(self) -> None:
        """Crypto-erase: overwrite the wrapped keys and the device key, then unlink them."""
        for path in (self.path, self.device_key_path):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            fd = fsio.open(path, os.O_WRONLY)
            try:
                fsio.write_all(fd, os.urandom(max(size, 64)))
                fsio.fsync(fd)
            finally:
                os.close(fd)
            fsio.unlink(path)
        fsio.fsync_dir(self.dir)
