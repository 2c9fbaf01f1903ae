"""DICOMweb on a running kit, driven by dicomweb-client (a client nobody here wrote)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fieldkit.dicom.frames import decode_frames
from fixtures.dcmtk import SHIPPED, pydicom_file, sample_files, store_responses, storescu
from kitproc import dataset_bytes


def _client(kit_server, role="dicomweb-client") -> DICOMwebClient:
    session = requests.Session()
    session.verify = kit_server.ca
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment beats session.verify
    return DICOMwebClient(url=f"{kit_server.url}/dicom-web", session=session,
                          headers={"Authorization": f"Bearer {kit_server.token(role)}"})


def _fresh(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_storescu_then_wado_rs_gives_back_the_same_pixels(kit_server, need, tmp_path):
    need("storescu")
    client = _client(kit_server)
    for path, flag, label in sample_files(tmp_path):
        assert store_responses(storescu(kit_server.dicom_port, [path], flag, "-R")) == ["Success"], label
        original = pydicom.dcmread(path)
        got = client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID,
                                       original.SOPInstanceUID)
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.IssuerOfPatientID == "FIELDKIT-TEST1" and got.PatientID.startswith("U-")
        if label in SHIPPED or label in ("deflated", "jpeg-ls", "rle"):
            np.testing.assert_array_equal(got.pixel_array, original.pixel_array, err_msg=label)
        else:
            np.testing.assert_array_equal(decode_frames(got), decode_frames(original), err_msg=label)
    # metadata, frames and rendered frames of the SonoSite cine
    cine = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    meta = client.retrieve_instance_metadata(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    assert meta["00080018"]["Value"] == [cine.SOPInstanceUID] and meta["00280008"]["Value"] in ([30], ["30"])
    frames = client.retrieve_instance_frames(cine.StudyInstanceUID, cine.SeriesInstanceUID,
                                             cine.SOPInstanceUID, frame_numbers=[1, 30])
    expected = cine.pixel_array
    assert frames[0] == expected[0].tobytes() and frames[1] == expected[29].tobytes()
    png = client.retrieve_instance_frames_rendered(cine.StudyInstanceUID, cine.SeriesInstanceUID,
                                                   cine.SOPInstanceUID, frame_numbers=[2],
                                                   media_types=("image/png",))
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(img, decode_frames(cine, [1])[0])
    # explicit VR little endian on request: the JPEG cine comes back decompressed
    plain = client.retrieve_instance(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID,
                                     media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert plain.SOPInstanceUID == plain.file_meta.MediaStorageSOPInstanceUID == cine.SOPInstanceUID  # the same instance
    assert np.abs(plain.pixel_array.astype(int) - expected.astype(int)).max() <= 2


def test_stow_mixed_batch_lists_what_was_stored_and_why_not(kit_server):
    client = _client(kit_server)
    good = [_fresh("examples_rgb_color.dcm"), _fresh("examples_jpeg2k.dcm")]
    truncated = dataset_bytes(_fresh("examples_palette.dcm"))
    truncated = truncated[: len(truncated) // 2]
    url = f"{kit_server.url}/dicom-web/studies"
    boundary = "b0undary"
    parts = [dataset_bytes(d) for d in good] + [truncated, b"this is not DICOM at all"]
    # dicomweb-client's own multipart STOW (the public store_instances() only takes
    # datasets, which cannot be truncated or non-DICOM)
    resp = client._http_post_multipart_application_dicom(url, parts)
    assert sorted(i.ReferencedSOPInstanceUID for i in resp.ReferencedSOPSequence) == \
        sorted(d.SOPInstanceUID for d in good)
    assert len(resp.FailedSOPSequence) == 2
    assert all(i.FailureReason in (0xC000, 0xA900) for i in resp.FailedSOPSequence)
    reasons = [i.get((0x0000, 0x0902)).value for i in resp.FailedSOPSequence]
    assert any("truncated" in x or "Pixel Data" in x for x in reasons) and any("DICM" in x for x in reasons)
    # and through dicomweb-client itself: all good -> 200 with a ReferencedSOPSequence
    more = [_fresh("examples_rgb_color.dcm")]
    out = client.store_instances(more)
    assert [i.ReferencedSOPInstanceUID for i in out.ReferencedSOPSequence] == [more[0].SOPInstanceUID]
    found = client.search_for_instances(search_filters={"SOPInstanceUID": more[0].SOPInstanceUID})
    assert len(found) == 1
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{boundary}--\r\n".encode()
    token = kit_server.token("dicomweb-client")
    mixed = [dataset_bytes(_fresh("examples_rgb_color.dcm")), b"junk"]
    r = requests.post(url, verify=kit_server.ca, timeout=60, data=b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in mixed)
        + f"--{boundary}--\r\n".encode(), headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 202  # some stored, some refused
    # none stored -> 409; a broken boundary -> 400; the kit keeps running
    r = requests.post(url, data=body.replace(b"b0undary", b"other"), verify=kit_server.ca, timeout=60,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    bad_only = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"junk\r\n"
                + f"--{boundary}--\r\n".encode())
    r = requests.post(url, data=bad_only, verify=kit_server.ca, timeout=60,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409
    assert kit_server.get("/healthz").status_code in (200, 204)


def test_qido_matching_keys_and_paging(kit_server):
    client = _client(kit_server)
    a, b = _fresh("examples_rgb_color.dcm"), _fresh("examples_palette.dcm")
    a.StudyDate, b.StudyDate = "20240105", "20240320"
    a.StudyInstanceUID, b.StudyInstanceUID = generate_uid(), generate_uid()
    a.PatientID, b.PatientID = "PROBE-A", "PROBE-B"
    client.store_instances([a, b])
    studies = client.search_for_studies()
    assert len(studies) == 2
    in_range = client.search_for_studies(search_filters={"StudyDate": "20240101-20240131"})
    assert [s["0020000D"]["Value"][0] for s in in_range] == [a.StudyInstanceUID]
    pid = in_range[0]["00100020"]["Value"][0]
    assert pid.startswith("U-")
    assert len(client.search_for_studies(search_filters={"PatientID": pid})) == 1
    assert len(client.search_for_studies(search_filters={"ModalitiesInStudy": "US"})) == 2
    assert len(client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})) == 0
    assert len(client.search_for_studies(limit=1)) == 1
    assert len(client.search_for_studies(limit=1, offset=1)) == 1
    series = client.search_for_series(b.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [b.SeriesInstanceUID]
    inst = client.search_for_instances(b.StudyInstanceUID, b.SeriesInstanceUID)
    assert [i["00080018"]["Value"][0] for i in inst] == [b.SOPInstanceUID]


def test_dicomweb_needs_a_token_with_the_right_role(kit_server):
    r = kit_server.get("/dicom-web/studies")
    assert r.status_code == 401
    token = kit_server.token("probe")
    r = kit_server.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


def test_stow_to_a_named_study_refuses_other_studies_and_wado_404s_unknown(kit_server):
    client = _client(kit_server)
    ds = _fresh("examples_rgb_color.dcm")
    wrong = generate_uid()
    token = kit_server.token("dicomweb-client")
    boundary = "bb"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(ds)
            + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{kit_server.url}/dicom-web/studies/{wrong}", data=body, verify=kit_server.ca, timeout=60,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409
    failed = pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0]
    assert failed.FailureReason == 0xA900 and failed.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID}) == []
    r = kit_server.get(f"/dicom-web/studies/{wrong}/series/{wrong}/instances/{wrong}",
                       headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404


def test_study_and_series_retrieve_metadata_rendered_and_thumbnail(kit_server):
    client = _client(kit_server)
    study, series = generate_uid(), generate_uid()
    sent = []
    for name in ("examples_rgb_color.dcm", "examples_jpeg2k.dcm", "examples_ybr_color.dcm"):
        ds = _fresh(name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        sent.append(ds)
    client.store_instances(sent)
    got = client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in sent)
    assert len(client.retrieve_series(study, series)) == 3
    meta = client.retrieve_study_metadata(study)
    assert len(meta) == 3 and all("7FE00010" in m and "BulkDataURI" in m["7FE00010"] for m in meta)
    assert len(client.retrieve_series_metadata(study, series)) == 3
    jpeg = client.retrieve_instance_rendered(study, series, sent[0].SOPInstanceUID)
    from PIL import Image
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (320, 240)
    token = kit_server.token("dicomweb-client")
    thumb = kit_server.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sent[2].SOPInstanceUID}/thumbnail",
                           headers={"Authorization": f"Bearer {token}"})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (160, 120)  # 320x240 / 2
    j2k = client.retrieve_instance_frames(study, series, sent[1].SOPInstanceUID, frame_numbers=[1],
                                          media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),))
    assert j2k[0] == pydicom.encaps.generate_frames(sent[1].PixelData, number_of_frames=1).__next__()
    series_found = client.search_for_series(search_filters={"Modality": "US", "StudyInstanceUID": study})
    assert [s["0020000E"]["Value"][0] for s in series_found] == [series]
    assert series_found[0]["00201209"]["Value"] == [3]


def test_large_stow_bodies_arrive_whole_chunked_or_not(kit_server):
    """A multi-megabyte STOW body, sent chunked in odd-sized pieces and sent with a
    Content-Length, is read whole: every part stored, pixels intact."""
    token = kit_server.token("dicomweb-client")
    http = requests.Session()
    http.verify, http.trust_env = kit_server.ca, False
    for chunked in (True, False):
        sent = [_fresh("examples_ybr_color.dcm") for _ in range(4)] + [_fresh("examples_rgb_color.dcm") for _ in range(8)]
        boundary = "large-body-boundary"
        body = b"".join(b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(d)
                        for d in sent) + b"\r\n--" + boundary.encode() + b"--"
        assert len(body) > 2 << 20
        pieces = [body[i:i + 777_777] for i in range(0, len(body), 777_777)]
        r = http.post(f"{kit_server.url}/dicom-web/studies", data=iter(pieces) if chunked else body,
                      timeout=120, headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 200, r.text[:300]
        spent = {k: float(v) for k, v in (item.split(";dur=") for item in r.headers["Server-Timing"].split(", "))}
        assert set(spent) == {"parts", "body", "commit"} and spent["parts"] > 0 and min(spent.values()) >= 0
        stored = {i["00081155"]["Value"][0] for i in r.json()["00081199"]["Value"]}
        assert stored == {str(d.SOPInstanceUID) for d in sent}
        client = _client(kit_server)
        back = client.retrieve_instance(str(sent[0].StudyInstanceUID), str(sent[0].SeriesInstanceUID),
                                        str(sent[0].SOPInstanceUID))
        assert back.PixelData == sent[0].PixelData


def _parts(response) -> list[tuple[str, bytes]]:
    """(part Content-Type, bytes) of a multipart/related answer."""
    media = response.headers["Content-Type"]
    boundary = media.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        ctype = [h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                 if h.lower().startswith(b"content-type:")][0]
        out.append((ctype, body[:-2]))
    return out


OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def test_frames_are_sent_as_stored_unless_pixels_are_asked_for(kit_server):
    client = _client(kit_server)
    cine = _fresh("examples_ybr_color.dcm")  # the SonoSite cine: 30 JPEG baseline frames
    client.store_instances([cine])
    stored = list(pydicom.encaps.generate_frames(cine.PixelData, number_of_frames=30))
    token = kit_server.token("dicomweb-client")
    url = (f"/dicom-web/studies/{cine.StudyInstanceUID}/series/{cine.SeriesInstanceUID}"
           f"/instances/{cine.SOPInstanceUID}/frames/1,30")
    jpeg = "1.2.840.10008.1.2.4.50"
    for accept in (OHIF_FRAMES, f'multipart/related; type="application/octet-stream"; transfer-syntax={jpeg}',
                   f'multipart/related; type="image/jpeg"; transfer-syntax={jpeg}'):
        r = kit_server.get(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})
        assert r.status_code == 200, accept
        parts = _parts(r)
        assert [body for _, body in parts] == [stored[0], stored[29]], accept
        assert all(f"transfer-syntax={jpeg}" in ctype for ctype, _ in parts), accept
    # raw pixels only when asked for explicitly (dicomweb-client's default frames request)
    raw = client.retrieve_instance_frames(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID,
                                          frame_numbers=[2], media_types=("application/octet-stream",))
    assert raw[0] == cine.pixel_array[1].tobytes()
    # a syntax the kit does not hold and cannot make
    r = kit_server.get(url, headers={"Authorization": f"Bearer {token}",
                                     "Accept": 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'})
    assert r.status_code == 406


def test_qido_matches_descriptions_and_times_and_warns_about_what_it_ignores(kit_server):
    client = _client(kit_server)
    a, b = _fresh("examples_rgb_color.dcm"), _fresh("examples_palette.dcm")
    a.StudyInstanceUID, b.StudyInstanceUID = generate_uid(), generate_uid()
    a.StudyDescription, b.StudyDescription = "Lung left", "FAST abdomen"
    a.ReferringPhysicianName, b.ReferringPhysicianName = "Curie^Marie", "Lister^Joseph"
    a.StudyTime, b.StudyTime = "083000", "141500"
    a.SeriesDescription, b.SeriesDescription = "B-lines", "Morison pouch"
    client.store_instances([a, b])
    token = kit_server.token("dicomweb-client")

    def qido(path="/dicom-web/studies", **params):
        r = kit_server.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text[:200]
        return [s["0020000D"]["Value"][0] for s in r.json()], r.headers.get("Warning", "")

    for params, want in (({"StudyDescription": "lung*"}, [a]), ({"00081030": "FAST abdomen"}, [b]),
                         ({"ReferringPhysicianName": "lister*"}, [b]), ({"StudyTime": "120000-"}, [b]),
                         ({"StudyTime": "-0900"}, [a]), ({"SeriesDescription": "morison*"}, [b])):
        found, warning = qido(**params)
        assert found == [d.StudyInstanceUID for d in want], params
        assert warning == "", params
    found, warning = qido("/dicom-web/series", SeriesDescription="B-lines")
    assert found == [a.StudyInstanceUID] and warning == ""
    # what the kit does not match is named, not silently dropped
    found, warning = qido(OperatorsName="Field*", StudyDescription="lung*")
    assert found == [a.StudyInstanceUID]
    assert warning.startswith('299 fieldkit "') and "OperatorsName" in warning
    _, warning = qido(fuzzymatching="false")
    assert warning == ""
    _, warning = qido(includefield="StudyDescription,00080090")
    assert warning == ""  # both are returned at study level
    # a parameter that is no DICOM attribute at all is an error, not a warning
    r = kit_server.get("/dicom-web/studies", params={"NoSuchKey": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400


def test_bulk_data_uris_answer_the_element_value(kit_server, data_dir):
    from urllib.parse import urljoin

    from kitproc import set_config

    client = _client(kit_server)
    palette = _fresh("examples_palette.dcm")  # PALETTE COLOR with 16-bit LUT entries
    nested = pydicom.Dataset()
    nested.add_new(0x00420011, "OB", bytes(range(256)) * 20)  # 5 KiB inside a sequence item
    palette.add_new(0x00400555, "SQ", [nested])
    cine = _fresh("examples_ybr_color.dcm")  # 30 JPEG frames
    client.store_instances([palette, cine])
    root = f"{kit_server.url}/dicom-web/"
    meta = client.retrieve_instance_metadata(palette.StudyInstanceUID, palette.SeriesInstanceUID,
                                             palette.SOPInstanceUID)
    for tag, keyword in (("00281201", "RedPaletteColorLookupTableData"),
                         ("00281202", "GreenPaletteColorLookupTableData"),
                         ("00281203", "BluePaletteColorLookupTableData")):
        uri = meta[tag]["BulkDataURI"]
        # no configured public address: relative to the DICOMweb root, never from the Host header
        assert uri.startswith("studies/") and uri.endswith(f"/bulkdata/{tag}")
        got = client.retrieve_bulkdata(urljoin(root, uri))  # multipart/related octet-stream
        assert got == [palette[keyword].value] and len(got[0]) == 512
        single = kit_server.get(f"/dicom-web/{uri}", headers={
            "Authorization": f"Bearer {kit_server.token('dicomweb-client')}", "Accept": "application/octet-stream"})
        assert single.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        assert single.content == palette[keyword].value
    pixels = client.retrieve_bulkdata(urljoin(root, meta["7FE00010"]["BulkDataURI"]))
    assert pixels == [palette.PixelData]
    uri = meta["00400555"]["Value"][0]["00420011"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/00400555/0/00420011")
    assert client.retrieve_bulkdata(urljoin(root, uri)) == [nested[0x00420011].value]
    # encapsulated pixel data: the stored frames, one part each
    meta = client.retrieve_instance_metadata(cine.StudyInstanceUID, cine.SeriesInstanceUID, cine.SOPInstanceUID)
    frames = client.retrieve_bulkdata(urljoin(root, meta["7FE00010"]["BulkDataURI"]))
    assert frames == list(pydicom.encaps.generate_frames(cine.PixelData, number_of_frames=30))
    # an unknown bulk path is a 404 with the reason, not a crash
    token = kit_server.token("dicomweb-client")
    base = (f"/dicom-web/studies/{palette.StudyInstanceUID}/series/{palette.SeriesInstanceUID}"
            f"/instances/{palette.SOPInstanceUID}/bulkdata/")
    for bad in ("00091234", "zz", "00281201/0/00100010", "00100010/x"):
        r = kit_server.get(base + bad, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404 and "bulk data" in r.json()["error"], bad
    # with a configured public address, the URIs are built from it whatever Host says
    kit_server.stop()
    set_config(data_dir, **{"onboarding.kit_url": "https://fieldkit.example:8443/"})
    kit_server.start()
    r = kit_server.get(base.replace("/bulkdata/", "/metadata"), headers={
        "Authorization": f"Bearer {kit_server.token('dicomweb-client')}", "Host": "evil.example"})
    assert r.status_code == 200
    assert r.json()[0]["00281201"]["BulkDataURI"] == f"https://fieldkit.example:8443{base}00281201"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789ABCDEFabcdefxyz/-.", max_size=40))
def test_bulk_data_paths_resolve_or_are_refused_cleanly(path):
    """Any path gives the element it names or NotFound with the reason, never another error."""
    from fieldkit.errors import NotFound
    from fieldkit.web.dicomweb import _element_at

    ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
    item = pydicom.Dataset()
    item.add_new(0x00420011, "OB", b"\x01" * 10)
    ds.add_new(0x00400555, "SQ", [item])
    try:
        elem = _element_at(ds, path)
    except NotFound as exc:
        assert "no bulk data" in str(exc)
    else:
        assert elem.VR != "SQ"
