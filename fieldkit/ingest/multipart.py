"""A streaming multipart/related reader (STOW-RS bodies, multipart uploads).

Parts are handed out as they stream in, chunk by chunk, so a 1 GB body never sits in
memory: the caller sends each part's bytes to an encrypted spool. A part that the body
ends inside of, a missing boundary or oversized part headers are reported, never guessed.
"""

from __future__ import annotations

from email.message import Message
from typing import Iterable, Iterator

from ..errors import BadInput

MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 100_000


class MultipartError(BadInput):
    pass


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """'multipart/related; type="application/dicom"; boundary=x' -> (media type, params)."""
    msg = Message()
    msg["content-type"] = value or ""
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type().lower(), params


class Part:
    def __init__(self, headers: dict[str, str]):
        self.headers = headers
        self.complete = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def iter_parts(chunks: Iterable[bytes], boundary: str) -> Iterator[tuple[str, object]]:
    """Events: ("part", Part) when a part's headers are read, ("data", bytes) for its body,
    ("end", Part) when its closing boundary was seen. Raises MultipartError on a body
    that ends inside a part (after "data" events for what did arrive) or has no parts."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("multipart body without a usable boundary parameter")
    delim = b"\r\n--" + boundary.encode("latin-1")
    buf = bytearray(b"\r\n")  # so the first boundary looks like every other one
    state = "preamble"
    part: Part | None = None
    parts = 0
    it = iter(chunks)
    eof = False

    def fill() -> bool:
        nonlocal eof
        if eof:
            return False
        for chunk in it:
            if chunk:
                buf.extend(chunk)
                return True
        eof = True
        return False

    while True:
        if state in ("preamble", "body"):
            idx = buf.find(delim)
            if idx < 0:
                keep = len(delim) - 1
                if state == "body" and len(buf) > keep:
                    yield "data", bytes(buf[:-keep])
                    del buf[:-keep]
                elif state == "preamble" and len(buf) > MAX_HEADER_BYTES * 4:
                    del buf[:-keep]
                if not fill():
                    if state == "body":
                        if buf:
                            yield "data", bytes(buf)
                        raise MultipartError("multipart body ended inside a part: closing boundary missing "
                                             "(truncated upload or wrong boundary)")
                    raise MultipartError(f"no part found with the boundary {boundary[:70]!r}: "
                                         "body is not the multipart it claims to be")
                continue
            if state == "body":
                if idx:
                    yield "data", bytes(buf[:idx])
                part.complete = True
                yield "end", part
                part = None
            del buf[: idx + len(delim)]
            state = "after_delim"
        elif state == "after_delim":
            while len(buf) < 2 and fill():
                pass
            if buf[:2] == b"--":
                return
            # transport padding, then CRLF
            while b"\r\n" not in buf[:1024] and fill():
                pass
            end = buf.find(b"\r\n")
            if end < 0 or buf[:end].strip(b" \t"):
                raise MultipartError("malformed multipart boundary line")
            del buf[: end + 2]
            state = "headers"
        elif state == "headers":
            while b"\r\n\r\n" not in buf and not buf.startswith(b"\r\n"):
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("part headers larger than 16 KiB")
                if not fill():
                    raise MultipartError("multipart body ended inside part headers")
            if buf.startswith(b"\r\n"):
                raw, rest = b"", 2
            else:
                end = buf.find(b"\r\n\r\n")
                raw, rest = bytes(buf[:end]), end + 4
            del buf[:rest]
            headers = {}
            for line in raw.decode("latin-1").split("\r\n"):
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            parts += 1
            if parts > MAX_PARTS:
                raise MultipartError(f"more than {MAX_PARTS} parts in one body")
            part = Part(headers)
            yield "part", part
            state = "body"
