"""The streaming multipart reader: same parts whatever the chunking; broken bodies refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.ingest.multipart import MultipartError, content_type_params, iter_parts


def _body(parts: list[bytes], boundary: str = "xYz") -> bytes:
    out = b"preamble to ignore\r\n"
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue".encode()


def _collect(chunks, boundary="xYz"):
    out, cur = [], None
    for event, value in iter_parts(chunks, boundary):
        if event == "part":
            cur = bytearray()
        elif event == "data":
            cur += value
        else:
            out.append(bytes(cur))
    return out


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
       cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_parts_are_the_same_whatever_the_chunking(parts, cuts):
    body = _body(parts)
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(body[pos:pos + c])
        pos += c
    chunks.append(body[pos:])
    assert _collect(chunks) == parts


def test_parts_containing_boundary_like_bytes_survive():
    # (a real delimiter, CRLF--boundary, may not occur inside a part: RFC 2046)
    tricky = [b"--xYz", b"\r\n--xY", b"\r\n-xYz", b"\r\n\r\n", b"xYz--"]
    assert _collect([_body(tricky)]) == tricky


@pytest.mark.parametrize("body,message", [
    (b"no boundary anywhere", "no part found"),
    (b"--xYz\r\nContent-Type: a\r\n\r\ncut short", "ended inside a part"),
    (b"--xYz\r\nContent-Type: a" + b"x" * 20000, "headers"),
    (b"--xYz junk\r\n\r\n\r\n--xYz--", "malformed"),
])
def test_broken_bodies_are_refused_with_a_reason(body, message):
    with pytest.raises(MultipartError, match=message):
        _collect([body])


def test_content_type_parameters():
    media, params = content_type_params('multipart/related; type="application/dicom"; boundary=abc')
    assert media == "multipart/related" and params == {"type": "application/dicom", "boundary": "abc"}
