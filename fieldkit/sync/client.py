"""STOW-RS client: send DICOM instances to a hospital's DICOMweb service and read back,
per instance, what the hospital says it stored (PS3.18 §10.5).

An instance counts as stored only when the response lists it in ReferencedSOPSequence
(0008,1199). An entry in FailedSOPSequence (0008,1198) is a failure with its reason. The
HTTP status alone proves nothing either way: Orthanc answers 400 for a batch in which it
stored all but one part, and 200 with empty sequences for a body it did not understand.
So every response body is parsed, whatever the status, and instances the hospital does
not mention are "unknown" (to be asked about with QIDO or re-sent, never assumed).

Errors are two families (see fieldkit.errors): TransientError (network, timeouts, 5xx,
429, a response that is not DICOM JSON/XML) is retried by the worker with backoff;
PermanentError (a refused instance) quarantines only that instance.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import requests

from fieldkit.dicom.stow_tags import (FAILED_SOP_SEQ, FAILURE_REASON, REF_SOP_INSTANCE, REFERENCED_SOP_SEQ,
                                      RETRIEVE_URL, WARNING_REASON)
from fieldkit.errors import FieldkitError, PermanentError, TransientError, short

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a STOW response is small; more is not a response

# PS3.18 table 10.5.3-2 failure reasons; A7xx "out of resources" is the hospital's problem
# and worth retrying, C122 means "not in this transfer syntax" (fall back to the original).
FAILURE_TEXT = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0x0111: "duplicate SOP instance",
}


# ---- errors -------------------------------------------------------------------------

class LinkDown(TransientError):
    """No answer from the hospital: connection refused/reset, DNS, TLS, timeout."""


class HospitalBusy(TransientError):
    """5xx or 429: the hospital is there but cannot take it now."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class BadResponse(TransientError):
    """The answer is not a STOW-RS response (not DICOM JSON/XML): nothing can be
    concluded about any instance, so nothing is confirmed and nothing is quarantined."""


class HospitalConfigError(TransientError):
    """The endpoint refuses the kit itself (401/403, 404/405: wrong credentials or not a
    DICOMweb URL). Not an instance's fault, so no instance is quarantined: items wait
    until the operator fixes the configuration."""


class HospitalTLSError(HospitalConfigError):
    """The hospital's certificate does not match or is not trusted (hospital.ca_bundle, clock)."""


class RequestRefused(PermanentError):
    """A 4xx whose body says nothing per instance: the request as a whole was refused.
    For a batch, the worker splits it and sends each instance alone; for one instance,
    it is that instance's refusal."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"hospital refused the request (HTTP {status})" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail


class InstanceRefused(PermanentError):
    """The hospital refused one instance; the reason is the hospital's."""

    def __init__(self, sop_instance_uid: str, reason: str, code: int | None = None):
        super().__init__(f"hospital refused {sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason
        self.code = code


# ---- request parts -------------------------------------------------------------------

@dataclass
class Part:
    """One instance to send. `chunks` is a callable returning an iterator of bytes (so a
    retry can re-read it); `size` is its exact length."""
    sop_instance_uid: str
    size: int
    chunks: Callable[[], Iterable[bytes]]
    transfer_syntax: str = ""

    @classmethod
    def from_bytes(cls, uid: str, data: bytes, transfer_syntax: str = "") -> "Part":
        return cls(uid, len(data), lambda: [data], transfer_syntax)


class RateLimiter:
    """Token bucket on bytes written, so the kit leaves room on a shared link."""

    def __init__(self, bytes_per_second: float | None):
        self.rate = bytes_per_second if bytes_per_second and bytes_per_second > 0 else None
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= n
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class MultipartBody:
    """multipart/related body streamed part by part, with an exact length (so requests
    sends Content-Length rather than chunked encoding, which some servers reject).

    `on_progress(uid, bytes_of_this_part_sent)` reports bytes as they leave."""

    CHUNK = 64 * 1024

    def __init__(self, parts: list[Part], *, boundary: str | None = None,
                 on_progress: Callable[[str, int], None] | None = None,
                 limiter: RateLimiter | None = None):
        self.parts = parts
        self.boundary = boundary or ("fieldkit-" + secrets.token_hex(16))
        self.on_progress = on_progress
        self.limiter = limiter
        self._segments = self._layout()
        self._len = sum(s[1] for s in self._segments)
        self._iter: Iterator[bytes] | None = None
        self._buf = b""

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def _head(self, part: Part) -> bytes:
        # No transfer-syntax parameter: it is optional in PS3.18 and Orthanc silently
        # ignores a part that carries one (the syntax is in the Part-10 meta anyway).
        return (f"--{self.boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {part.size}\r\n\r\n").encode("ascii")

    def _layout(self) -> list[tuple[str, int, Part | bytes]]:
        segs: list[tuple[str, int, Part | bytes]] = []
        for p in self.parts:
            head = self._head(p)
            segs.append(("raw", len(head), head))
            segs.append(("part", p.size, p))
            segs.append(("raw", 2, b"\r\n"))
        tail = f"--{self.boundary}--\r\n".encode("ascii")
        segs.append(("raw", len(tail), tail))
        return segs

    def __len__(self) -> int:
        return self._len

    def _generate(self) -> Iterator[bytes]:
        for kind, length, obj in self._segments:
            if kind == "raw":
                yield obj
                continue
            sent = 0
            for chunk in obj.chunks():
                if self.boundary.encode() in chunk:  # vanishingly rare; never send ambiguity
                    raise PermanentError(f"instance {obj.sop_instance_uid} contains the "
                                         "multipart boundary")
                for i in range(0, len(chunk), self.CHUNK):
                    piece = chunk[i:i + self.CHUNK]
                    sent += len(piece)
                    yield piece
                    if self.on_progress:
                        self.on_progress(obj.sop_instance_uid, sent)
            if sent != length:
                raise PermanentError(f"instance {obj.sop_instance_uid} changed size while "
                                     f"sending ({sent} != {length} bytes)")

    def read(self, n: int = -1) -> bytes:
        if self._iter is None:
            self._iter = self._generate()
        want = self.CHUNK if n is None or n < 0 else n
        while len(self._buf) < want:
            try:
                self._buf += next(self._iter)
            except StopIteration:
                break
        out, self._buf = self._buf[:want], self._buf[want:]
        if self.limiter and out:
            self.limiter.take(len(out))
        return out


# ---- responses -----------------------------------------------------------------------

@dataclass
class StowResult:
    status: int
    stored: dict[str, str] = field(default_factory=dict)      # uid -> retrieve URL ("" if none)
    failed: dict[str, tuple[int | None, str]] = field(default_factory=dict)  # uid -> (code, text)
    warnings: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)          # sent, not mentioned
    bytes_sent: int = 0


def failure_text(code: int | None) -> str:
    if code is None:
        return "no reason given"
    name = FAILURE_TEXT.get(code) or ("out of resources" if 0xA700 <= code <= 0xA7FF else
                                      "data set does not match SOP class" if 0xA900 <= code <= 0xA9FF else
                                      "cannot understand" if 0xC000 <= code <= 0xCFFF else "failure")
    return f"{name} (0x{code:04X})"


def is_transient_failure(code: int | None) -> bool:
    return code is not None and 0xA700 <= code <= 0xA7FF


def _first(item: dict, tag: str):
    el = item.get(tag)
    if not isinstance(el, dict):
        return None
    values = el.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _seq_items(doc: dict, tag: str) -> list[dict]:
    el = doc.get(tag)
    if el is None:
        return []
    if not isinstance(el, dict):
        raise BadResponse(f"attribute {tag} is not a DICOM JSON element")
    items = el.get("Value", [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadResponse(f"sequence {tag} has malformed items")
    return items


def _as_code(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


def parse_json(text: str | bytes) -> dict:
    """PS3.18 F.2 DICOM JSON -> {"stored": {uid: url}, "failed": {uid: (code, text)}, ...}."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadResponse(f"hospital answered with invalid DICOM JSON ({exc.__class__.__name__})") from None
    if isinstance(doc, list) and len(doc) == 1:  # some servers wrap the dataset in a list
        doc = doc[0]
    if not isinstance(doc, dict):
        raise BadResponse("hospital answered with JSON that is not a DICOM dataset")
    if not any(k in doc for k in (REFERENCED_SOP_SEQ, FAILED_SOP_SEQ)):
        raise BadResponse("hospital's answer has neither ReferencedSOPSequence nor "
                          "FailedSOPSequence: not a STOW-RS response")
    out = {"stored": {}, "failed": {}, "warnings": {}}
    for item in _seq_items(doc, REFERENCED_SOP_SEQ):
        uid = _first(item, REF_SOP_INSTANCE)
        if isinstance(uid, str):
            url = _first(item, RETRIEVE_URL)
            out["stored"][uid] = url if isinstance(url, str) else ""
            warn = _as_code(_first(item, WARNING_REASON))
            if warn is not None:
                out["warnings"][uid] = f"warning 0x{warn:04X}"
    for item in _seq_items(doc, FAILED_SOP_SEQ):
        uid = _first(item, REF_SOP_INSTANCE)
        if isinstance(uid, str):
            code = _as_code(_first(item, FAILURE_REASON))
            out["failed"][uid] = (code, failure_text(code))
    return out


_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def parse_xml(text: str | bytes) -> dict:
    """PS3.19 Native DICOM Model (application/dicom+xml), namespaced or not."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:  # no entity games from a peer
        raise BadResponse("hospital answered with XML declaring entities; refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BadResponse(f"hospital answered with invalid DICOM XML ({exc})") from None

    def local(tag: str) -> str:
        return tag.split("}", 1)[-1]

    def attrs(node) -> dict[str, ET.Element]:
        return {(el.get("tag") or "").upper(): el for el in node
                if local(el.tag) == "DicomAttribute"}

    def value(el) -> str | None:
        if el is None:
            return None
        for v in el:
            if local(v.tag) == "Value" and v.text is not None:
                return v.text.strip()
        return None

    if local(root.tag) != "NativeDicomModel":
        raise BadResponse("hospital answered with XML that is not a NativeDicomModel")
    top = attrs(root)
    if REFERENCED_SOP_SEQ not in top and FAILED_SOP_SEQ not in top:
        raise BadResponse("hospital's answer has neither ReferencedSOPSequence nor "
                          "FailedSOPSequence: not a STOW-RS response")
    out = {"stored": {}, "failed": {}, "warnings": {}}
    for tag, key in ((REFERENCED_SOP_SEQ, "stored"), (FAILED_SOP_SEQ, "failed")):
        seq = top.get(tag)
        if seq is None:
            continue
        for item in seq:
            if local(item.tag) != "Item":
                continue
            a = attrs(item)
            uid = value(a.get(REF_SOP_INSTANCE))
            if not uid:
                continue
            if key == "stored":
                out["stored"][uid] = value(a.get(RETRIEVE_URL)) or ""
                warn = _as_code(value(a.get(WARNING_REASON)))
                if warn is not None:
                    out["warnings"][uid] = f"warning 0x{warn:04X}"
            else:
                code = _as_code(value(a.get(FAILURE_REASON)))
                out["failed"][uid] = (code, failure_text(code))
    return out


def parse_stow_response(content_type: str, body: bytes) -> dict:
    """Parse a STOW-RS response body by its media type (sniffing when the server sends
    none, as Orthanc does for 400)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    stripped = body.lstrip()
    if ctype.endswith("xml") or (not ctype.endswith("json") and stripped.startswith(b"<")):
        return parse_xml(body)
    return parse_json(body)


# ---- the client ----------------------------------------------------------------------

@dataclass
class Endpoint:
    base_url: str                         # DICOMweb root, e.g. https://pacs/dicom-web
    auth_mode: str = "none"               # none | basic | bearer | client-cert
    username: str = ""
    password: str = ""
    token: str = ""
    client_cert: str = ""                 # PEM file with certificate (and key, or key below)
    client_key: str = ""
    ca_bundle: str = ""                   # PEM bundle to trust instead of the system store
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    keep: tuple = field(default=(), compare=False)  # what must live as long as the endpoint (in-memory key file)

    def __repr__(self) -> str:  # never print secrets
        return f"Endpoint({self.base_url!r}, auth={self.auth_mode})"


class StowClient:
    def __init__(self, endpoint: Endpoint, *, limiter: RateLimiter | None = None,
                 accept: str = "application/dicom+json"):
        self.endpoint = endpoint
        self.limiter = limiter
        self.accept = accept
        self.session = requests.Session()
        ep = endpoint
        if ep.auth_mode == "basic":
            self.session.auth = (ep.username, ep.password)
        elif ep.auth_mode == "bearer":
            self.session.headers["Authorization"] = f"Bearer {ep.token}"
        elif ep.auth_mode == "client-cert":
            self.session.cert = (ep.client_cert, ep.client_key) if ep.client_key else ep.client_cert
        elif ep.auth_mode not in ("none", ""):
            raise PermanentError(f"unknown hospital auth mode {ep.auth_mode!r} "
                                 "(none, basic, bearer, client-cert)")
        if ep.ca_bundle:
            self.session.verify = ep.ca_bundle
        self.session.headers["User-Agent"] = "fieldkit-sync"

    def close(self) -> None:
        self.session.close()

    @property
    def timeouts(self) -> tuple[float, float]:
        return (self.endpoint.connect_timeout, self.endpoint.read_timeout)

    def _url(self, path: str) -> str:
        return self.endpoint.base_url.rstrip("/") + path

    def _request(self, method: str, url: str, **kw) -> requests.Response:
        try:
            # verify/cert passed per request: requests lets REQUESTS_CA_BUNDLE from the
            # environment override session.verify, which would ignore hospital.ca_bundle
            r = self.session.request(method, url, timeout=self.timeouts, stream=True,
                                     verify=self.session.verify, cert=self.session.cert, **kw)
        except requests.exceptions.SSLError as exc:
            raise HospitalTLSError(f"TLS with the hospital failed (certificate does not "
                                   f"match or is not trusted): {short(exc)}") from None
        except requests.exceptions.Timeout:
            raise LinkDown(f"hospital did not answer within {self.endpoint.read_timeout:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            raise LinkDown(f"cannot reach the hospital: {short(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise LinkDown(f"request to the hospital failed: {short(exc)}") from None
        return r

    @staticmethod
    def _read_body(r: requests.Response) -> bytes:
        chunks, total = [], 0
        try:
            for chunk in r.iter_content(64 * 1024):
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    raise BadResponse("hospital's answer is too large to be a STOW-RS response")
                chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            raise LinkDown(f"connection dropped while reading the hospital's answer: {short(exc)}") from None
        finally:
            r.close()
        return b"".join(chunks)

    def store(self, parts: list[Part], *,
              on_progress: Callable[[str, int], None] | None = None) -> StowResult:
        """POST {base}/studies with `parts`; return what the hospital says about each.

        Raises a TransientError when nothing can be concluded about any instance (link
        down, 5xx/429 without a usable body, unparseable body), HospitalConfigError for
        401/403/404/405 without a STOW body. Per-instance outcomes are in the result."""
        body = MultipartBody(parts, on_progress=on_progress, limiter=self.limiter)
        headers = {"Content-Type": body.content_type, "Accept": self.accept}
        r = self._request("POST", self._url("/studies"), data=body, headers=headers)
        raw = self._read_body(r)
        status = r.status_code
        try:
            parsed = parse_stow_response(r.headers.get("Content-Type", ""), raw)
        except BadResponse as exc:
            _raise_for_status_without_body(status, r.headers, raw)
            if 400 <= status < 500:
                raise RequestRefused(status, _snippet(raw)) from None
            raise BadResponse(f"HTTP {status}: {exc}") from None
        result = StowResult(status, parsed["stored"], parsed["failed"], parsed["warnings"],
                            bytes_sent=len(body))
        sent = [p.sop_instance_uid for p in parts]
        result.unknown = [u for u in sent if u not in result.stored and u not in result.failed]
        if status in (401, 403, 404, 405) and not result.stored and not result.failed:
            _raise_for_status_without_body(status, r.headers, raw)
        if (status == 429 or status >= 500) and not result.stored and not result.failed:
            raise HospitalBusy(f"hospital answered HTTP {status}", _retry_after(r.headers))
        return result

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """QIDO-RS: does the hospital hold this instance? Returns its retrieve URL ("" if
        none given) or None. Used before re-sending something that may already be there."""
        r = self._request("GET", self._url("/instances"),
                          params={"SOPInstanceUID": sop_instance_uid},
                          headers={"Accept": "application/dicom+json"})
        raw = self._read_body(r)
        if r.status_code == 204:
            return None
        if r.status_code != 200:
            _raise_for_status_without_body(r.status_code, r.headers, raw)
            raise BadResponse(f"QIDO answered HTTP {r.status_code}")
        try:
            docs = json.loads(raw) if raw.strip() else []
        except ValueError:
            raise BadResponse("QIDO answer is not DICOM JSON") from None
        if not isinstance(docs, list):
            raise BadResponse("QIDO answer is not a list of datasets")
        for d in docs:
            if isinstance(d, dict) and _first(d, "00080018") == sop_instance_uid:
                url = _first(d, RETRIEVE_URL)
                return url if isinstance(url, str) else ""
        return None

    def probe(self) -> int:
        """A QIDO that asks for nothing: proves URL, TLS, credentials and DICOMweb; returns
        the HTTP status (200 or 204). Raises the same errors as store(); an answer's HTTP
        status is the error's `status`. The request's error stays as its __context__."""
        r = self._request("GET", self._url("/studies"), params={"limit": "1", "StudyInstanceUID": "0"},
                          headers={"Accept": "application/dicom+json"})
        raw = self._read_body(r)
        if r.status_code in (200, 204):
            if r.status_code == 200 and raw.strip():
                try:
                    doc = json.loads(raw)
                except ValueError:
                    raise HospitalConfigError("the hospital URL does not answer like a DICOMweb "
                                              "service (QIDO reply is not DICOM JSON)") from None
                if not isinstance(doc, list):
                    raise HospitalConfigError("the hospital URL does not answer like a DICOMweb "
                                              "service (QIDO reply is not a list)")
            return r.status_code
        _raise_for_status_without_body(r.status_code, r.headers, raw)
        error = BadResponse(f"hospital answered HTTP {r.status_code} to a QIDO probe")
        error.status = r.status_code
        raise error


def _retry_after(headers) -> float | None:
    v = headers.get("Retry-After")
    if v and v.strip().isdigit():
        return float(v.strip())
    return None


def _raise_for_status_without_body(status: int, headers, raw: bytes) -> None:
    error: FieldkitError | None = None
    if status in (401, 407):
        error = HospitalConfigError(f"hospital refused the kit's credentials (HTTP {status})")
    elif status == 403:
        error = HospitalConfigError("hospital says the kit is not allowed to store (HTTP 403)")
    elif status in (404, 405):
        error = HospitalConfigError(f"hospital URL is not a DICOMweb STOW-RS endpoint (HTTP {status})")
    elif status == 429 or status >= 500:
        error = HospitalBusy(f"hospital answered HTTP {status}", _retry_after(headers))
    if error is not None:
        error.status = status  # for whoever words it differently (doctor)
        raise error


def _snippet(raw: bytes) -> str:
    """A printable, bounded piece of a peer's error body for the operator."""
    text = raw[:300].decode("utf-8", "replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:200]
