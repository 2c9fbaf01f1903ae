"""WADO-URI and CORS on a running kit: legacy /wado links and a viewer on another origin."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from fieldkit.dicom.frames import decode_frames
from fixtures.dcmtk import pydicom_file
from kitproc import KitProcess, dataset_bytes, init_kit, set_config

VIEWER = "https://viewer.example:3000"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    data_dir = init_kit(tmp_path_factory.mktemp("wado") / "kit")
    set_config(data_dir, **{"http.cors_origins": [VIEWER]})
    proc = KitProcess(data_dir).start()
    proc.reader = {"Authorization": f"Bearer {proc.token('dicomweb-client')}"}
    cine = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))  # 30 JPEG baseline frames
    cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    boundary = "wado-test"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(cine)
            + f"\r\n--{boundary}--\r\n".encode())
    r = proc.post("/dicom-web/studies", data=body, headers={
        **proc.reader, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
    proc.cine = cine
    yield proc
    proc.stop()


def _wado(kit, headers=None, **params):
    ds = kit.cine
    query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
             "objectUID": ds.SOPInstanceUID, **params}
    return kit.get("/wado", params={k: v for k, v in query.items() if v is not None},
                   headers=kit.reader if headers is None else headers)


def test_wado_uri_serves_the_object_and_rendered_frames(kit):
    ds = kit.cine
    # the object as stored when its syntax is named
    r = _wado(kit, contentType="application/dicom", transferSyntax=ds.file_meta.TransferSyntaxUID)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PixelData == ds.PixelData
    # no transferSyntax: Explicit VR Little Endian, as PS3.18 says, decoded on the kit
    r = _wado(kit, contentType="application/dicom")
    assert r.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    plain = pydicom.dcmread(io.BytesIO(r.content))
    assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.abs(plain.pixel_array.astype(int) - ds.pixel_array.astype(int)).max() <= 2
    # no contentType: a JPEG of the first frame; PNG of frame 7 is exactly that frame
    r = _wado(kit)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (ds.Columns, ds.Rows)
    r = _wado(kit, contentType="image/png", frameNumber="7")
    assert r.headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), decode_frames(ds, [6])[0])
    # a preference list: the first one served wins
    r = _wado(kit, contentType="image/gif,image/png")
    assert r.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("params, reason", [
    ({"requestType": "WADX"}, "requestType must be WADO"),
    ({"requestType": None}, "needs requestType"),
    ({"objectUID": None}, "needs objectUID"),
    ({"studyUID": "1.2.abc"}, "studyUID must be a DICOM UID"),
    ({"contentType": "image/gif"}, "contentType"),
    ({"frameNumber": "31", "contentType": "image/jpeg"}, "frameNumber must be a whole number from 1 to 30"),
    ({"frameNumber": "0"}, "frameNumber must be"),
    ({"frameNumber": "x"}, "frameNumber must be"),
    ({"frameNumber": "2", "contentType": "application/dicom"}, "frameNumber applies to image"),
    ({"transferSyntax": "1.2.840.10008.1.2.1"}, "transferSyntax applies to application/dicom"),
    ({"contentType": "application/dicom", "transferSyntax": "not-a-uid"}, "transferSyntax must be"),
    ({"windowCenter": "40"}, "not supported by this kit: windowCenter"),
    ({"bogus": "1"}, "unknown WADO-URI parameter(s): bogus"),
])
def test_a_malformed_wado_uri_is_a_400_naming_the_problem(kit, params, reason):
    r = _wado(kit, **params)
    assert r.status_code == 400, (params, r.status_code)
    assert reason in r.json()["error"]


def test_wado_uri_unknown_objects_and_roles_are_refused(kit):
    r = _wado(kit, objectUID="1.2.3.4")
    assert r.status_code == 404 and "no instance" in r.json()["error"]
    r = _wado(kit, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.80")
    assert r.status_code == 406  # a syntax the kit does not convert to
    r = _wado(kit, headers={})
    assert r.status_code == 401, (r.headers, r.request.headers)
    probe = {"Authorization": f"Bearer {kit.token('probe')}"}  # may store, may not read
    assert _wado(kit, headers=probe).status_code == 403
    assert _wado(kit, headers=kit.auth("clinician")).status_code == 200


def test_cors_answers_listed_origins_only(kit):
    qido = "/dicom-web/studies"
    # preflight: no credentials, answered for the listed origin with what it may send
    r = kit.get(qido, headers={"Origin": VIEWER})  # without a token: refused, but readable cross-origin
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == VIEWER
    pre = {"Origin": VIEWER, "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization"}
    import requests
    r = requests.options(kit.url + qido, headers=pre, verify=kit.ca, timeout=30)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "GET" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Credentials"] == "true" and "Origin" in r.headers["Vary"]
    # the real request: the answer names the origin and exposes the QIDO warning header
    r = kit.get(qido, params={"InstitutionName": "x"}, headers={**kit.reader, "Origin": VIEWER})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Warning" in r.headers["Access-Control-Expose-Headers"]
    r = _wado(kit, headers={**kit.reader, "Origin": VIEWER})
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER
    # another origin, or the tablet UI's API: no CORS at all, preflight refused by the guard
    for origin, path in (("https://evil.example", qido), (VIEWER, "/api/v1/session")):
        r = requests.options(kit.url + path, headers={**pre, "Origin": origin}, verify=kit.ca, timeout=30)
        assert "Access-Control-Allow-Origin" not in r.headers and r.status_code in (401, 403), (origin, path)
        r = kit.get(path, headers={**kit.reader, "Origin": origin})
        assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_star_allows_any_origin_without_credentials_and_is_off_by_default(tmp_path):
    data_dir = init_kit(tmp_path / "kit")
    proc = KitProcess(data_dir).start()
    try:
        reader = {"Authorization": f"Bearer {proc.token('dicomweb-client')}"}
        r = proc.get("/dicom-web/studies", headers={**reader, "Origin": VIEWER})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        proc.stop()
        set_config(data_dir, **{"http.cors_origins": ["*"]})
        proc.start()
        r = proc.get("/dicom-web/studies", headers={**reader, "Origin": "https://any.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers
    finally:
        proc.stop()


def test_a_bad_cors_origin_setting_is_refused():
    from fieldkit.config import SETTINGS

    setting = SETTINGS["http.cors_origins"]
    assert setting.default == []
    for good in (["*"], ["https://viewer.lan"], ["http://10.0.0.5:3000", "https://a.b:8443"]):
        assert setting.problem(good) is None, good
    for bad in (["https://viewer.lan/"], ["https://viewer.lan/ohif"], ["ftp://x"], ["viewer.lan"],
                ["https://a b"], ["https://u:p@h"]):
        assert setting.problem(bad) is not None, bad


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NAMES = ["requestType", "studyUID", "seriesUID", "objectUID", "contentType", "frameNumber", "transferSyntax",
          "charset", "rows", "x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(_NAMES), st.text(max_size=30), max_size=6))
def test_any_wado_uri_query_gets_an_answer_or_a_clear_refusal(kit, query):
    """Fuzzed queries (the real object's UIDs or garbage): an object, or a 4xx with a reason."""
    ds = kit.cine
    real = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID}
    r = kit.get("/wado", params={**real, **query}, headers=kit.reader)
    assert r.status_code in (200, 400, 404, 406), (query, r.status_code)
    if r.status_code != 200:
        assert r.json()["error"]
