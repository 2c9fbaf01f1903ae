"""Sealing the device key to a TPM 2.0, so that the key file is useless away from its box.

`KeySealer` is the small interface the keyring needs: `seal(secret) -> blob` and
`unseal(blob) -> secret`. `Tpm2Sealer` implements it with tpm2-tools: the secret becomes a
sealed-data object under the TPM's storage primary key (re-created from the owner seed on
every use, so nothing but the object's public and private parts is kept). The private part
is encrypted by the TPM with a key that never leaves it: another TPM, or no TPM, cannot
load it.

The TCTI says which TPM: `device:/dev/tpmrm0` (the kernel's resource manager) in the
field, `swtpm:host=127.0.0.1,port=N` for a software TPM in tests. Without a resource
manager loaded objects stay in the TPM's few slots, so every step flushes them.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

from ..errors import KeyUnavailable

TOOL_TIMEOUT_S = 30  # one TPM command; a TPM that does not answer must not hang start-up
_MAGIC = b"FKTPM1"


class KeySealer(Protocol):
    """Seals a short secret to something that is not on the disk."""

    name: str

    def seal(self, secret: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...


class Tpm2Sealer:
    """A TPM 2.0 reached through tpm2-tools and a TCTI string."""

    name = "tpm2"

    def __init__(self, tcti: str):
        if not isinstance(tcti, str) or not tcti:
            raise KeyUnavailable("no TPM configured (setting security.tpm_tcti is empty)")
        self.tcti = tcti

    def _run(self, args: list[str], what: str, stdin: bytes | None = None) -> bytes:
        tool = shutil.which(args[0])
        if tool is None:
            raise KeyUnavailable(f"{args[0]} is not installed (Debian package tpm2-tools): "
                                 "the key sealed to the TPM cannot be reached")
        try:
            proc = subprocess.run([tool, *args[1:]], input=stdin, capture_output=True, timeout=TOOL_TIMEOUT_S,
                                  env={"TPM2TOOLS_TCTI": self.tcti, "PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            raise KeyUnavailable(f"the TPM ({self.tcti}) did not answer within {TOOL_TIMEOUT_S} s "
                                 f"while trying to {what}") from None
        if proc.returncode != 0:
            raise KeyUnavailable(f"the TPM ({self.tcti}) could not {what}: {_reason(proc.stderr)}")
        return proc.stdout

    def _flush(self) -> None:
        self._run(["tpm2_flushcontext", "-t"], "free its object slots")

    def _primary(self, work: Path) -> Path:
        ctx = work / "primary.ctx"
        self._flush()
        self._run(["tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc", "-c", str(ctx)],
                  "re-create its storage primary key")
        self._flush()
        return ctx

    def seal(self, secret: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="fk-tpm-") as tmp:  # TPM contexts only: no secret
            work = Path(tmp)
            primary = self._primary(work)
            try:
                self._run(["tpm2_create", "-Q", "-C", str(primary), "-i", "-",
                           "-u", str(work / "seal.pub"), "-r", str(work / "seal.priv")],
                          "seal the device key", stdin=secret)
            finally:
                self._flush()
            pub, priv = (work / "seal.pub").read_bytes(), (work / "seal.priv").read_bytes()
        return _MAGIC + struct.pack(">HH", len(pub), len(priv)) + pub + priv

    def unseal(self, blob: bytes) -> bytes:
        pub, priv = _split(blob)
        with tempfile.TemporaryDirectory(prefix="fk-tpm-") as tmp:
            work = Path(tmp)
            (work / "seal.pub").write_bytes(pub)
            (work / "seal.priv").write_bytes(priv)
            primary = self._primary(work)
            try:
                self._run(["tpm2_load", "-Q", "-C", str(primary), "-u", str(work / "seal.pub"),
                           "-r", str(work / "seal.priv"), "-c", str(work / "seal.ctx")],
                          "load the sealed device key (was it sealed by another TPM?)")
                self._flush()
                return self._run(["tpm2_unseal", "-c", str(work / "seal.ctx")], "unseal the device key")
            finally:
                self._flush()


def sealer_for(config) -> Tpm2Sealer | None:
    """The kit's TPM as named by `security.tpm_tcti` (None when the setting is empty)."""
    tcti = config["security.tpm_tcti"]
    return Tpm2Sealer(tcti) if tcti else None


def _split(blob: bytes) -> tuple[bytes, bytes]:
    head = len(_MAGIC) + 4
    if not isinstance(blob, bytes) or len(blob) < head or not blob.startswith(_MAGIC):
        raise KeyUnavailable("the sealed device key in the key file is corrupt")
    n_pub, n_priv = struct.unpack(">HH", blob[len(_MAGIC):head])
    if len(blob) != head + n_pub + n_priv:
        raise KeyUnavailable("the sealed device key in the key file is corrupt (wrong length)")
    return blob[head:head + n_pub], blob[head + n_pub:]


def _reason(stderr: bytes) -> str:
    """The last ERROR line of tpm2-tools, which names the TPM's answer."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    tool = [ln for ln in lines if ln.startswith("ERROR: ")]
    errors = tool or [ln for ln in lines if ln.startswith("ERROR")]
    return (errors[0] if errors else (lines[-1] if lines else "no reason given"))[:300]
