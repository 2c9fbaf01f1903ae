"""Errors the kit reports to people.

Every error carries a message meant for the operator, the process exit code the command
line uses for it, and the HTTP status the web layer answers with (datasette style).
"""


def short(exc: BaseException, limit: int = 200) -> str:
    """An exception in one bounded line for a message: its first line (or its type's name
    when it says nothing), at most `limit` characters. Libraries' errors can run to pages."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class FieldkitError(Exception):
    """Base class: a clear, single-line reason for the operator."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(FieldkitError):
    exit_code = 2
    http_status = 500


class BadInput(FieldkitError):
    """Input from a user or a peer that the kit refuses (never a crash)."""

    exit_code = 2
    http_status = 400


class NotFound(FieldkitError):
    exit_code = 3
    http_status = 404


class Conflict(FieldkitError):
    exit_code = 4
    http_status = 409


class TooLarge(BadInput):
    http_status = 413


class Unauthorized(FieldkitError):
    exit_code = 5
    http_status = 401


class Forbidden(FieldkitError):
    exit_code = 5
    http_status = 403


class KeyUnavailable(FieldkitError):
    """Wrong passphrase, missing or corrupt key file: the data key cannot be unwrapped."""

    exit_code = 6
    http_status = 503


class KitLocked(FieldkitError):
    """The data key is not in memory (the kit was locked)."""

    exit_code = 6
    http_status = 423


class StoreBusy(FieldkitError):
    """Another process owns this data dir."""

    exit_code = 7
    http_status = 503


class StoreCorrupt(FieldkitError):
    """Damage found on disk that is not a torn final write; names file and offset."""

    exit_code = 8
    http_status = 500

    def __init__(self, path, offset: int, reason: str, seq: int | None = None,
                 remedy: str = "refusing to open (restore from backup or contact support)"):
        where = f"byte offset {offset}" + (f" (record {seq})" if seq is not None else "")
        super().__init__(f"store file {path} is damaged at {where}: {reason}; {remedy}")
        self.path = str(path)
        self.offset = offset
        self.seq = seq
        self.reason = reason


class UnsupportedVersion(FieldkitError):
    exit_code = 9
    http_status = 500


class StorageFull(FieldkitError):
    """The disk is full or read-only: nothing was acknowledged, nothing was damaged."""

    exit_code = 10
    http_status = 507


class TransientError(FieldkitError):
    """Worth retrying later: network down, timeout, 5xx, 429."""

    http_status = 503


class PermanentError(FieldkitError):
    """Retrying will not help: a refused instance, a 4xx, a bad model."""

    http_status = 422
