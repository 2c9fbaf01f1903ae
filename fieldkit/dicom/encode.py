"""Encoding the copy the kit keeps: a received dataset written once as Part 10 in its own
transfer syntax (`Encoded`), with only the identity attributes re-encoded when the kit
stamps them, and the file meta group built directly (`file_meta_bytes`)."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.tag import BaseTag

from . import uids


# PatientID .. OtherPatientIDsSequence: the only part of a dataset the kit's stamp changes
IDENTITY_FIRST, IDENTITY_LAST = 0x00100020, 0x00101002
# what dicom.identity.stamp sets: PatientID, IssuerOfPatientID, OtherPatientIDsSequence
STAMPED_TAGS = frozenset({0x00100020, 0x00100021, 0x00101002})


PIXEL_DATA = 0x7FE00010
# explicit VR: these VRs have a 4-byte length after two reserved bytes, the others 2 bytes
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH",
                        "SL", "SS", "ST", "TM", "UI", "UL", "US"})


def element_header(tag: int, vr: str | None, length: int, implicit: bool = False, little: bool = True) -> bytes | None:
    """The bytes before an element's value (tag, VR, length) in the given encoding, or
    None when the VR cannot carry that length in explicit VR (then pydicom decides)."""
    e = "<" if little else ">"
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(e + "L", length)
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(e + "L", length)
    if vr in _SHORT_VRS and length <= 0xFFFF:
        return head + vr.encode() + struct.pack(e + "H", length)
    return None


class Encoded:
    """The dataset encoded once, in its own transfer syntax, in slices: before the identity
    attributes, the identity attributes, after them. Elements nobody converted or changed
    are copied as they were received (header and value bytes), so only what the kit reads
    or stamps goes through pydicom's writer; the Pixel Data value is referenced, not
    copied, so a large cine sits in memory once.

    `raw` is the dataset's element dict as read (`dict(ds._dict)` before anything looked
    at the elements); without it, whatever is still unconverted is copied.

    Once built it no longer needs the dataset: `identity` is a small dataset holding the
    identity attributes (PatientID .. OtherPatientIDsSequence), which the kit stamps
    (dicom.identity.stamp) before `write_part10()` re-encodes just that slice.

    `digest` is the SHA-256 of the dataset as received (file meta excluded), before the
    kit stamps it: the same capture sent twice, by any path, has the same digest.
    """

    def __init__(self, ds: Dataset, raw: dict | None = None):
        self._ds = ds
        # elements as read, before anything looked at them: written back byte for byte
        # plain int keys: pydicom's tag type compares in Python, and this is the hot path
        self._raw = {int(t): e for t, e in (ds._dict if raw is None else raw).items()}
        # the encoding the file meta will announce (a dataset built in memory has no
        # original encoding; one read from bytes was read in this very syntax)
        ts = pydicom.uid.UID(str(ds.file_meta.TransferSyntaxUID))
        self._implicit, self._little = ts.is_implicit_VR, ts.is_little_endian
        if ds.original_encoding == (None, None):
            correct_ambiguous_vr(ds, self._little)  # e.g. Pixel Data "OB or OW" -> OB/OW
            ds.set_original_encoding(self._implicit, self._little, ds._character_set)
        self.transfer_syntax = str(ts)
        self.sop_class, self.sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        self._charset = ds._character_set
        tags = sorted(map(int, ds._dict))
        self._head = self._encode([t for t in tags if t < IDENTITY_FIRST])
        tail = [t for t in tags if t > IDENTITY_LAST]
        pixel = self._raw.get(PIXEL_DATA) if PIXEL_DATA in tail else None
        if isinstance(pixel, RawDataElement) and pixel.value is not None and \
                (self._implicit or pixel.VR in ("OB", "OW")):
            self._tail = [self._encode([t for t in tail if t < PIXEL_DATA]), *self._raw_pixels(pixel),
                          self._encode([t for t in tail if t > PIXEL_DATA])]
        else:
            self._tail = [self._encode(tail)]
        ident = [t for t in tags if IDENTITY_FIRST <= t <= IDENTITY_LAST]
        h = hashlib.sha256(self._head)
        h.update(self._encode(ident, stamped=()))
        for piece in self._tail:
            h.update(piece)
        self.digest = h.hexdigest()
        # from here on only the identity slice is encoded again: keep just that
        self.identity = Dataset({BaseTag(t): ds.get_item(t) for t in ident}, parent_encoding=self._charset)
        self.identity.set_original_encoding(self._implicit, self._little, ds.original_character_set)
        self._raw = {t: self._raw[t] for t in ident if t in self._raw}
        self._ds = self.identity

    def _raw_pixels(self, raw: RawDataElement) -> list:
        undefined = raw.length == 0xFFFFFFFF
        value = raw.value
        pad = b"\0" if not undefined and len(value) % 2 else b""
        length = 0xFFFFFFFF if undefined else len(value) + len(pad)
        header = element_header(PIXEL_DATA, raw.VR, length, self._implicit, self._little)
        return [header, value, self._delimiter() if undefined else pad]

    def _delimiter(self) -> bytes:
        return struct.pack("<HHL" if self._little else ">HHL", 0xFFFE, 0xE0DD, 0)

    def _as_received(self, tag: int) -> bytes | None:
        """An element never converted, written back exactly as it came (header and value),
        or None when it has to go through pydicom (converted, changed, odd length, or an
        encoding that does not match the dataset's)."""
        raw = self._raw.get(tag)
        if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes) or \
                raw.is_implicit_VR != self._implicit or raw.is_little_endian != self._little:
            return None
        value, length = raw.value, raw.length
        undefined = length == 0xFFFFFFFF
        if not undefined and (length != len(value) or length % 2):
            return None
        head = element_header(tag, raw.VR, length, self._implicit, self._little)
        if head is None:
            return None
        return head + value + (self._delimiter() if undefined else b"")

    def _encode(self, tags: list, stamped=STAMPED_TAGS) -> bytes:
        """Elements in tag order: those as received copied, the rest (and those the stamp
        may have changed) encoded by pydicom."""
        out, pending = [], []
        for t in tags:
            same = None if t in stamped else self._as_received(t)
            if same is None:
                pending.append(t)
                continue
            if pending:
                out.append(self._pydicom_encode(pending))
                pending = []
            out.append(same)
        if pending:
            out.append(self._pydicom_encode(pending))
        return b"".join(out)

    def _pydicom_encode(self, tags: list) -> bytes:
        quick = self._plain_text(self._ds, tags)
        if quick is not None:
            return quick
        sub = Dataset({BaseTag(t): self._ds.get_item(t) for t in tags}, parent_encoding=self._charset)
        sub.set_original_encoding(self._implicit, self._little, self._ds.original_character_set)
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = self._implicit, self._little
        write_dataset(fp, sub, parent_encoding=self._charset)
        return fp.getvalue()

    def _plain_text(self, ds: Dataset, tags: list, depth: int = 0) -> bytes | None:
        """The stamped identity (short ASCII text values, a sequence of them) encoded
        directly, as pydicom would; None for anything else, which pydicom then encodes.
        pydicom's generic writer costs more per stamp than copying a whole still."""
        e = "<" if self._little else ">"
        out = []
        for t in tags:
            elem = ds.get_item(t)
            if isinstance(elem, RawDataElement) or elem is None:
                return None
            if elem.VR == "SQ" and depth == 0 and elem.value is not None:
                items = []
                for item in elem.value:
                    body = self._plain_text(item, sorted(map(int, item._dict)), depth + 1)
                    if body is None:
                        return None
                    items.append(struct.pack(e + "HHL", 0xFFFE, 0xE000, len(body)) + body)
                value, vr = b"".join(items), "SQ"
            elif elem.VR in ("LO", "SH", "CS") and isinstance(elem.value, str) and elem.value.isascii() \
                    and "\\" not in elem.value:
                value, vr = elem.value.encode("ascii"), elem.VR
                value += b" " * (len(value) % 2)
            else:
                return None
            head = element_header(t, vr, len(value), self._implicit, self._little)
            if head is None:
                return None
            out.append(head + value)
        return b"".join(out)

    def write_part10(self, write, implementation_version: str = "FIELDKIT") -> None:
        """Write the Part-10 file the kit stores, piece by piece, to `write`: file meta
        rebuilt for this object, dataset kept in its transfer syntax (deflated stays
        deflated, big endian stays big endian)."""
        ident = self._encode(sorted(map(int, self.identity._dict)))
        ts = self.transfer_syntax
        write(b"\0" * 128 + b"DICM" + file_meta_bytes(self.sop_class, self.sop_instance, ts,
                                                      implementation_version))
        pieces = [self._head, ident, *self._tail]
        if ts == uids.DEFLATED_LE:
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            size = 0
            for piece in pieces:
                chunk = packer.compress(piece)
                size += len(chunk)
                write(chunk)
            chunk = packer.flush()
            size += len(chunk)
            write(chunk + (b"\0" if (size % 2) else b""))
        else:
            for piece in pieces:
                write(piece)

    def part10(self, implementation_version: str = "FIELDKIT") -> bytes:
        out: list[bytes] = []
        self.write_part10(out.append, implementation_version)
        return b"".join(out)


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    implementation_version: str = "FIELDKIT") -> bytes:
    """The file meta group (0002) of a stored copy, explicit VR little endian as PS3.10
    requires. Built directly: it is six fixed elements, and pydicom's generic writer costs
    more than the rest of storing a still image."""
    def element(elem: int, vr: str, value: bytes) -> bytes:
        return element_header(0x00020000 | elem, vr, len(value)) + value

    def uid(value: str) -> bytes:
        data = value.encode("ascii")
        return data + b"\0" * (len(data) % 2)

    version = implementation_version.encode("ascii")[:16]
    body = (element(0x0001, "OB", b"\0\1") + element(0x0002, "UI", uid(sop_class)) +
            element(0x0003, "UI", uid(sop_instance)) + element(0x0010, "UI", uid(transfer_syntax)) +
            element(0x0012, "UI", uid(pydicom.uid.PYDICOM_IMPLEMENTATION_UID)) +
            element(0x0013, "SH", version + b" " * (len(version) % 2)))
    return element(0x0000, "UL", struct.pack("<L", len(body))) + body


def content_digest(ds: Dataset) -> str:
    """See Encoded.digest."""
    return Encoded(ds).digest


def encode_part10(ds: Dataset, implementation_version: str = "FIELDKIT") -> bytes:
    return Encoded(ds).part10(implementation_version)
