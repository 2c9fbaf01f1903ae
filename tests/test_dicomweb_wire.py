"""DICOMweb on the wire: gzip where it pays, DICOM JSON nulls (PS3.18 F.2.5), and links
that follow a trusted proxy's Forwarded header and nobody else's."""

from __future__ import annotations

import gzip
import io
import json

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fixtures.dcmtk import pydicom_file
from kitproc import KitProcess, dataset_bytes, init_kit, set_config


def _fresh(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    data_dir = init_kit(tmp_path_factory.mktemp("wire") / "kit")
    set_config(data_dir, **{"http.trusted_proxies": ["127.0.0.1"]})
    proc = KitProcess(data_dir).start()
    proc.reader = {"Authorization": f"Bearer {proc.token('dicomweb-client')}"}
    plain = _fresh("examples_rgb_color.dcm")  # Explicit VR Little Endian
    plain.ImageType = ["ORIGINAL", "", "ABDOMINAL"]
    plain.add_new(0x00280030, "DS", ["0.5", ""])  # PixelSpacing with an empty second value
    plain.add_new(0x00401010, "PN", ["Curie^Marie", ""])  # NamesOfIntendedRecipientsOfResults
    plain.add_new(0x00181063, "DS", "")  # FrameTime, empty
    cine = _fresh("examples_ybr_color.dcm")  # JPEG baseline frames
    j2k = _fresh("examples_jpeg2k.dcm")  # a JPEG 2000 frame: gzip cannot shrink it
    boundary = "wire"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(d) + b"\r\n"
                    for d in (plain, cine, j2k)) + f"--{boundary}--\r\n".encode()
    r = proc.post("/dicom-web/studies", data=body, headers={
        **proc.reader, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
    proc.plain, proc.cine, proc.j2k, proc.data_dir = plain, cine, j2k, data_dir
    yield proc
    proc.stop()


def _url(ds, tail=""):
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{tail}"


def _wire(kit, path, encoding="gzip", **headers):
    """(bytes on the wire, decoded bytes, response) of a GET."""
    r = requests.get(kit.url + path, headers={**kit.reader, "Accept-Encoding": encoding, **headers},
                     verify=kit.ca, timeout=60, stream=True)
    wire = r.raw.read(decode_content=False)
    decoded = gzip.decompress(wire) if r.headers.get("Content-Encoding") == "gzip" else wire
    return wire, decoded, r


def test_json_and_uncompressed_answers_are_gzipped_when_accepted(kit):
    plain, cine = kit.plain, kit.cine
    sizes = {}
    for label, path, headers in (
            ("qido", "/dicom-web/instances", {}),
            ("metadata", _url(plain, "/metadata"), {}),
            ("instance", _url(plain), {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
            ("decoded frame", _url(cine, "/frames/1"),
             {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'})):
        wire, decoded, r = _wire(kit, path, **headers)
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip", label
        assert "Accept-Encoding" in r.headers["Vary"]
        same, _, r2 = _wire(kit, path, encoding="identity", **headers)
        assert "Content-Encoding" not in r2.headers
        if label in ("qido", "metadata"):
            assert json.loads(decoded) == json.loads(same)
        else:  # multipart: boundaries differ between answers, the parts do not
            assert len(decoded) == len(same)
        sizes[label] = (len(same), len(wire))
        assert len(wire) < len(same) * 0.8, (label, len(wire), len(same))
    print("wire bytes identity/gzip:", {k: f"{a}/{b} ({a / b:.1f}x)" for k, (a, b) in sizes.items()})


def test_compressed_answers_are_sent_as_they_are(kit):
    cine, j2k = kit.cine, kit.j2k
    ohif = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    for path, headers in ((_url(j2k, "/frames/1"), ohif),
                          (_url(cine, "/rendered"), {"Accept": "image/jpeg"}),
                          (_url(cine), {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})):
        _, _, r = _wire(kit, path, **headers)
        assert r.status_code == 200 and "Content-Encoding" not in r.headers, path
    # stored frames whose bytes gzip does shrink (the SonoSite JPEG's tables repeat in
    # every frame) are gzipped; decoded, they are the stored bytes
    stored = list(pydicom.encaps.generate_frames(cine.PixelData, number_of_frames=30))
    wire, decoded, r = _wire(kit, _url(cine, "/frames/1,2"), **ohif)
    assert r.headers["Content-Encoding"] == "gzip" and len(wire) < len(decoded) * 0.95
    assert stored[0] in decoded and stored[1] in decoded
    _, same, r = _wire(kit, _url(cine, "/frames/1,2"), encoding="identity", **ohif)
    assert "Content-Encoding" not in r.headers and len(same) == len(decoded)
    frames = requests.get(kit.url + _url(cine, "/frames/2"), verify=kit.ca, timeout=60, headers={
        **kit.reader, "Accept": 'multipart/related; type="image/jpeg"'})
    assert "Content-Type: image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50" in frames.content[:300].decode("latin-1")


def test_empty_values_of_multi_valued_attributes_are_null(kit):
    plain = kit.plain
    _, body, r = _wire(kit, _url(plain, "/metadata"))
    item = json.loads(body)[0]
    assert item["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "ABDOMINAL"]}
    assert item["00280030"] == {"vr": "DS", "Value": [0.5, None]}
    assert item["00401010"] == {"vr": "PN", "Value": [{"Alphabetic": "Curie^Marie"}, None]}
    assert item["00181063"] == {"vr": "DS"}  # empty: no Value at all (F.2.5)
    # a third-party client reads it back
    session = requests.Session()
    session.verify, session.trust_env = kit.ca, False
    client = DICOMwebClient(url=f"{kit.url}/dicom-web", session=session, headers=kit.reader)
    meta = client.retrieve_instance_metadata(plain.StudyInstanceUID, plain.SeriesInstanceUID, plain.SOPInstanceUID)
    ds = pydicom.Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    assert list(ds.ImageType) == ["ORIGINAL", "", "ABDOMINAL"] and ds.PixelSpacing[0] == 0.5


def test_links_follow_a_trusted_proxy_and_no_one_else(kit):
    plain = kit.plain
    meta_path = _url(plain, "/metadata")

    def links(**headers):
        r = requests.get(kit.url + meta_path, headers={**kit.reader, **headers}, verify=kit.ca, timeout=30)
        q = requests.get(kit.url + "/dicom-web/studies", params={"StudyInstanceUID": plain.StudyInstanceUID},
                         headers={**kit.reader, **headers}, verify=kit.ca, timeout=30)
        return r.json()[0]["7FE00010"]["BulkDataURI"], q.json()[0]["00081190"]["Value"][0]

    bulk, retrieve = links(Forwarded='for=192.0.2.60;proto=https;host="pacs.example:9443"')
    assert bulk == f"https://pacs.example:9443{_url(plain, '/bulkdata/7FE00010')}"
    assert retrieve == f"https://pacs.example:9443/dicom-web/studies/{plain.StudyInstanceUID}"
    # the nearest proxy's element counts; X-Forwarded-* when there is no Forwarded
    bulk, _ = links(Forwarded="host=first.example, proto=https;host=near.example")
    assert bulk.startswith("https://near.example/dicom-web/")
    bulk, _ = links(**{"X-Forwarded-Host": "viewer.example", "X-Forwarded-Proto": "http"})
    assert bulk.startswith("http://viewer.example/dicom-web/")
    for bad in ('host="evil.example/x"', "proto=gopher;host=a.example", "host="):
        bulk, retrieve = links(Forwarded=bad)
        assert bulk.startswith("studies/") and retrieve.startswith(kit.url), bad  # ignored
    # from an address that is not a trusted proxy, the header is ignored
    kit.stop()
    set_config(kit.data_dir, **{"http.trusted_proxies": ["192.0.2.1"], "onboarding.kit_url": "https://kit.lan:8443/"})
    kit.start()
    bulk, retrieve = links(Forwarded="proto=https;host=evil.example")
    assert bulk == f"https://kit.lan:8443{_url(plain, '/bulkdata/7FE00010')}"
    assert retrieve.startswith("https://kit.lan:8443/dicom-web/studies/")


def test_a_bad_trusted_proxy_setting_is_refused():
    from fieldkit.config import SETTINGS

    setting = SETTINGS["http.trusted_proxies"]
    assert setting.default == [] and setting.problem(["10.0.0.1", "::1"]) is None
    assert setting.problem(["proxy.lan"]) is not None and setting.problem(["10.0.0.0/8"]) is not None


def test_study_and_series_rendered_and_thumbnail(kit):
    from email.parser import BytesParser

    first, second = _fresh("examples_rgb_color.dcm"), _fresh("examples_rgb_color.dcm")
    second.StudyInstanceUID = first.StudyInstanceUID = generate_uid()
    second.SeriesInstanceUID = first.SeriesInstanceUID = generate_uid()
    first.InstanceNumber, second.InstanceNumber = 1, 2
    arr = second.pixel_array.copy()
    arr[:10] = 255  # tell the two apart
    second.PixelData = arr.tobytes()
    boundary = "group"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(d) + b"\r\n"
                    for d in (second, first)) + f"--{boundary}--\r\n".encode()
    r = kit.post("/dicom-web/studies", data=body, headers={
        **kit.reader, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200
    import numpy as np
    from PIL import Image
    study = f"/dicom-web/studies/{first.StudyInstanceUID}"
    for path in (f"{study}/rendered", f"{study}/series/{first.SeriesInstanceUID}/rendered"):
        r = kit.get(path, headers={**kit.reader, "Accept": 'multipart/related; type="image/png"'})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith('multipart/related; type="image/png"')
        message = BytesParser().parsebytes(b"Content-Type: " + r.headers["Content-Type"].encode() + b"\r\n\r\n"
                                           + r.content)
        parts = [p.get_payload(decode=True) for p in message.get_payload()]
        assert len(parts) == 2, path
        for part, ds in zip(parts, (first, second)):  # instance number order
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(part))), ds.pixel_array)
    r = kit.get(f"{study}/rendered", headers=kit.reader)  # JPEG by default
    assert r.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    thumbs = [kit.get(p, headers=kit.reader) for p in (f"{study}/thumbnail",
                                                         f"{study}/series/{first.SeriesInstanceUID}/thumbnail")]
    own = kit.get(f"{study}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}/thumbnail",
                  headers=kit.reader)
    assert all(t.status_code == 200 and t.headers["Content-Type"] == "image/jpeg" and t.content == own.content
               for t in thumbs)
    assert kit.get("/dicom-web/studies/1.2.3.4/rendered", headers=kit.reader).status_code == 404
    assert kit.get(f"{study}/thumbnail", headers={}).status_code == 401
    probe = {"Authorization": f"Bearer {kit.token('probe')}"}
    assert kit.get(f"{study}/rendered", headers=probe).status_code == 403
