"""The request sequence OHIF v3 makes (recorded in tests/data/ohif_session.json) replayed
against a running kit holding vendors' test files: every answer checked against PS3.18
(status, media type and its parameters, DICOM JSON shape, multipart parts), frames and
palette LUT bytes compared with the stored instances, read with pydicom from the store."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import urljoin

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from fixtures.dcmtk import pydicom_file
from kitproc import KitProcess, dataset_bytes, init_kit, set_config
from ohif_session import LUT_TAGS, get, replay

FILES = ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm")
NUMERIC_VRS = {"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
ALL_VRS = NUMERIC_VRS | BINARY_VRS | {"AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "SQ", "ST",
                                      "TM", "UC", "UI", "UR", "UT"}
# PS3.18 table 10.6.3-3: attributes every study and series answer carries
STUDY_KEYS = ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020", "00100030",
              "00100040", "0020000D", "00200010", "00201206", "00201208")
SERIES_KEYS = ("00080060", "0020000E", "00200011", "00201209")


def _params(value: str) -> tuple[str, dict]:
    """A media type and its parameters (quoted or not), lower-cased names."""
    media, *rest = [p.strip() for p in value.split(";")]
    params = {}
    for p in rest:
        name, _, v = p.partition("=")
        params[name.strip().lower()] = v.strip().strip('"')
    return media.lower(), params


def _parts(reply) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related answer, checked for their framing (RFC 2046)."""
    media, params = _params(reply.headers["Content-Type"])
    assert media == "multipart/related" and params.get("boundary"), reply.headers["Content-Type"]
    delimiter = b"--" + params["boundary"].encode()
    body = reply.body
    assert body.startswith(delimiter + b"\r\n") and body.rstrip(b"\r\n").endswith(delimiter + b"--")
    out = []
    for chunk in body.split(b"\r\n" + delimiter)[:-1]:
        chunk = chunk[len(delimiter) + 2:] if chunk.startswith(delimiter) else chunk[2:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep, "a part without a blank line after its headers"
        types = [h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                 if h.lower().startswith(b"content-type:")]
        assert len(types) == 1, head
        out.append((types[0], data))
    return out


def _check_json_value(tag: str, attr: dict, where: str) -> None:
    """PS3.18 F.2: one attribute of a DICOM JSON object."""
    assert re.fullmatch(r"[0-9A-F]{8}", tag), f"{where}: key {tag!r}"
    assert attr.get("vr") in ALL_VRS, f"{where} {tag}: vr {attr.get('vr')!r}"
    held = [k for k in ("Value", "BulkDataURI", "InlineBinary") if k in attr]
    assert len(held) <= 1 and set(attr) <= {"vr", *held}, f"{where} {tag}: {sorted(attr)}"
    if "Value" not in attr:
        return
    values, vr = attr["Value"], attr["vr"]
    assert isinstance(values, list) and values, f"{where} {tag}: Value must be a non-empty array"
    for v in values:
        if vr == "SQ":
            assert isinstance(v, dict), f"{where} {tag}: a sequence item is an object"
            for t, a in v.items():
                _check_json_value(t, a, f"{where} {tag}/item")
        elif v is None:  # an empty value in a multi-valued attribute (F.2.5)
            continue
        elif vr == "PN":
            assert isinstance(v, dict) and v and set(v) <= {"Alphabetic", "Ideographic", "Phonetic"}, (where, tag, v)
        elif vr in NUMERIC_VRS:
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (where, tag, v)
        elif vr == "AT":
            assert isinstance(v, str) and re.fullmatch(r"[0-9A-F]{8}", v), (where, tag, v)
        else:
            assert isinstance(v, str) and v != "", f"{where} {tag}: {v!r} (an empty value is null)"


def _check_dicom_json(reply, where: str) -> list[dict]:
    assert reply.status == 200, (where, reply.status, reply.body[:200])
    assert _params(reply.headers["Content-Type"])[0] == "application/dicom+json", reply.headers["Content-Type"]
    items = json.loads(reply.body)
    assert isinstance(items, list) and items, where
    for item in items:
        assert isinstance(item, dict)
        for tag, attr in item.items():
            _check_json_value(tag, attr, where)
    return items


def _uid(item: dict, tag: str) -> str:
    return item[tag]["Value"][0]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The recorded session replayed once against a kit holding the three vendors' files,
    every BulkDataURI of the metadata resolved; then the kit is stopped and the stored
    instances read back from its store (in memory, never written in clear)."""
    data_dir = init_kit(tmp_path_factory.mktemp("ohif") / "kit")
    set_config(data_dir, **{"inference.enabled": False})  # the three instances and nothing else
    kit = KitProcess(data_dir).start()
    sent = []
    for name in FILES:
        ds = pydicom.dcmread(pydicom_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sent.append(ds)
    try:
        http = requests.Session()
        http.verify, http.trust_env = kit.ca, False
        http.headers["Authorization"] = f"Bearer {kit.token('dicomweb-client')}"
        root = f"{kit.url}/dicom-web/"
        boundary = "ohif"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(d)
                        + b"\r\n" for d in sent) + f"--{boundary}--\r\n".encode()
        r = http.post(root + "studies", data=body, timeout=120, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 200, r.text[:300]
        first = sent[0]
        filters = {"patient_name": str(first.PatientName).split("^")[0], "study_date": first.StudyDate,
                   "modality": first.Modality}
        exchanges = replay(http, root, [d.StudyInstanceUID for d in sent], filters)
        bulk = {}  # BulkDataURI -> (reply as octet-stream, reply as multipart)
        for ex in exchanges:
            if ex.request["kind"] != "metadata" or ex.reply.status != 200:
                continue
            for item in json.loads(ex.reply.body):
                for uri in _bulk_uris(item):
                    url = urljoin(root, uri)
                    bulk[uri] = (get(http, url, {"Accept": "application/octet-stream"}),
                                 get(http, url, {"Accept": "multipart/related; type=application/octet-stream"}))
    finally:
        kit.stop()
    from fieldkit.kit import open_kit
    from fieldkit.store import instances

    opened = open_kit(data_dir)
    try:
        stored = {}
        for ds in sent:
            row = instances.get_instance(opened.store, ds.SOPInstanceUID)
            stored[ds.SOPInstanceUID] = pydicom.dcmread(io.BytesIO(opened.store.blobs.get_bytes(row["blob"])))
    finally:
        opened.close()
    return {"sent": sent, "exchanges": exchanges, "bulk": bulk, "stored": stored}


def _bulk_uris(item: dict):
    for attr in item.values():
        if "BulkDataURI" in attr:
            yield attr["BulkDataURI"]
        for sub in attr.get("Value") or []:
            if attr.get("vr") == "SQ" and isinstance(sub, dict):
                yield from _bulk_uris(sub)


def _of(session, kind: str):
    found = [ex for ex in session["exchanges"] if ex.request["kind"] == kind]
    assert found, kind
    return found


def test_the_recorded_session_covers_what_ohif_asks_for(session):
    kinds = [ex.request["kind"] for ex in session["exchanges"]]
    assert kinds.count("study list") == 3 and kinds.count("series list") == 3
    assert kinds.count("metadata") == 3 and kinds.count("thumbnail") == 3
    assert kinds.count("frames") == 30 + 1 + 1  # the SonoSite cine's 30, one RGB, one palette image
    assert kinds.count("lut") == 2 * 3  # red, green, blue of the palette image, two ways each
    assert all(ex.reply.status == 200 for ex in session["exchanges"]), \
        [(ex.url, ex.reply.status) for ex in session["exchanges"] if ex.reply.status != 200]


def test_study_lists_are_dicom_json_with_the_attributes_ps3_18_requires(session):
    sent = session["sent"]
    all_studies = {d.StudyInstanceUID for d in sent}
    for ex in _of(session, "study list"):
        items = _check_dicom_json(ex.reply, ex.url)
        found = [_uid(i, "0020000D") for i in items]
        for item in items:
            missing = [k for k in (*STUDY_KEYS, "00081030") if k not in item]
            assert not missing, (ex.url, missing)  # required, and OHIF's includefield
            assert item["00080061"] == {"vr": "CS", "Value": ["US"]}
            assert item["00201208"]["Value"] == [1]
        expect = ex.request["expect"]
        if expect == "all studies":
            assert sorted(found) == sorted(all_studies)
        elif expect == "first study":  # PatientName wildcard, StudyDate range, ModalitiesInStudy
            assert found == [sent[0].StudyInstanceUID], ex.url
            assert "Warning" not in ex.reply.headers, ex.reply.headers.get("Warning")
        else:  # limit=1&offset=1
            assert len(found) == 1 and found[0] in all_studies


def test_series_lists_and_metadata_describe_the_stored_instances(session):
    by_sop = {d.SOPInstanceUID: d for d in session["sent"]}
    by_study = {d.StudyInstanceUID: d for d in session["sent"]}
    for ex in _of(session, "series list"):
        items = _check_dicom_json(ex.reply, ex.url)
        assert len(items) == 1
        missing = [k for k in (*SERIES_KEYS, "0008103E", "0020000D") if k not in items[0]]
        assert not missing, (ex.url, missing)
        assert _uid(items[0], "0020000D") == ex.about["study"]
        ds = by_study[ex.about["study"]]
        if "SeriesDate" in ds:  # includefield=00080021, read from the stored header
            assert items[0]["00080021"] == {"vr": "DA", "Value": [ds.SeriesDate]}
        else:
            assert "Value" not in items[0].get("00080021", {})
    for ex in _of(session, "metadata"):
        items = _check_dicom_json(ex.reply, ex.url)
        assert len(items) == 1
        item = items[0]
        ds = by_sop[_uid(item, "00080018")]
        assert _uid(item, "0020000E") == ex.about["series"] == ds.SeriesInstanceUID
        assert _uid(item, "00020010") == ds.file_meta.TransferSyntaxUID
        assert item["00280010"]["Value"] == [ds.Rows] and item["00280011"]["Value"] == [ds.Columns]
        assert "BulkDataURI" in item["7FE00010"], "pixel data is never inline in metadata"


def test_every_bulk_data_uri_answers_the_stored_value(session):
    stored = session["stored"]
    assert session["bulk"]
    for uri, (single, multi) in session["bulk"].items():
        sop = re.search(r"/instances/([0-9.]+)/bulkdata/", uri).group(1)
        tag = uri.rsplit("/bulkdata/", 1)[1]
        assert single.status == 200 and multi.status == 200, uri
        elem = stored[sop][int(tag, 16)]
        parts = _parts(multi)
        assert _params(multi.headers["Content-Type"])[1]["type"] == "application/octet-stream"
        assert all(_params(t)[0] == "application/octet-stream" and "transfer-syntax" in _params(t)[1]
                   for t, _ in parts), [t for t, _ in parts]
        if tag == "7FE00010" and stored[sop].file_meta.TransferSyntaxUID.is_encapsulated:
            ds = stored[sop]
            assert [b for _, b in parts] == list(generate_frames(elem.value, number_of_frames=ds.NumberOfFrames))
        else:
            assert [b for _, b in parts] == [elem.value], uri
            assert single.body == elem.value
            assert _params(single.headers["Content-Type"])[0] == "application/octet-stream"


def test_palette_lut_bulk_data_is_the_stored_table_byte_for_byte(session):
    stored = session["stored"]
    palette = session["sent"][2]
    for ex in _of(session, "lut"):
        assert ex.about["sop"] == palette.SOPInstanceUID and ex.about["tag"] in LUT_TAGS
        want = stored[palette.SOPInstanceUID][int(ex.about["tag"], 16)].value
        assert want == palette[int(ex.about["tag"], 16)].value and len(want) == 512  # 256 16-bit entries
        if ex.request["answer"] == "bulk":  # OHIF's single-part request
            assert _params(ex.reply.headers["Content-Type"])[0] == "application/octet-stream"
            assert ex.reply.body == want
        else:
            parts = _parts(ex.reply)
            assert [b for _, b in parts] == [want]
            media, params = _params(parts[0][0])
            assert media == "application/octet-stream" and params["transfer-syntax"] == "1.2.840.10008.1.2.1"


def test_frames_come_back_byte_identical_to_the_stored_ones(session):
    stored = session["stored"]
    seen = 0
    for ex in _of(session, "frames"):
        ds = stored[ex.about["sop"]]
        ts = ds.file_meta.TransferSyntaxUID
        media, params = _params(ex.reply.headers["Content-Type"])
        assert media == "multipart/related" and params["type"] == "application/octet-stream"
        parts = _parts(ex.reply)
        assert len(parts) == 1
        part_media, part_params = _params(parts[0][0])
        assert part_media == "application/octet-stream" and part_params["transfer-syntax"] == ts
        frame = ex.about["frame"]
        if ts.is_encapsulated:  # as stored, never decoded on the kit
            want = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))[frame - 1]
        else:
            size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
            want = ds.PixelData[(frame - 1) * size:frame * size]
        assert parts[0][1] == want, (ex.url, len(parts[0][1]), len(want))
        seen += 1
    assert seen == 32


def test_thumbnails_are_jpeg_images(session):
    for ex in _of(session, "thumbnail"):
        assert _params(ex.reply.headers["Content-Type"])[0] == "image/jpeg"
        image = Image.open(io.BytesIO(ex.reply.body))
        assert image.format == "JPEG" and max(image.size) <= 256, image.size
