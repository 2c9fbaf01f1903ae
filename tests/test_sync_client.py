"""STOW-RS client against a real Orthanc + DICOMweb plugin: per-instance outcomes come
from the response body, never from the HTTP status alone."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from fieldkit.sync import client as c
from fixtures.orthanc import start_orthanc, _require_orthanc, free_port
from fixtures.sync import corpus


def parts_of(items):
    return [c.Part.from_bytes(ds.SOPInstanceUID, data, ds.file_meta.TransferSyntaxUID)
            for data, ds in items]


def test_batch_is_confirmed_per_instance_and_lands_once(orthanc):
    items = corpus("T-0101")
    cl = c.StowClient(c.Endpoint(orthanc.base_url))
    progress = {}
    res = cl.store(parts_of(items), on_progress=lambda uid, n: progress.__setitem__(uid, n))
    assert res.status == 200
    assert set(res.stored) == {ds.SOPInstanceUID for _, ds in items}
    assert not res.failed and not res.unknown
    for data, ds in items:
        assert progress[ds.SOPInstanceUID] == len(data)
        assert ds.SOPInstanceUID in res.stored[ds.SOPInstanceUID]  # retrieve URL names it
    # sending again is harmless: same UIDs, still one copy each
    again = cl.store(parts_of(items))
    assert set(again.stored) == set(res.stored)
    assert orthanc.instance_count() == len(items)
    # the hospital holds the kit's PatientID and issuer
    pats = orthanc.rest("/patients?expand")
    assert [p["MainDicomTags"]["PatientID"] for p in pats] == ["T-0101"]
    inst = orthanc.rest("/instances")[0]
    tags = orthanc.rest(f"/instances/{inst}/simplified-tags")
    assert tags["IssuerOfPatientID"] == "FIELDKIT-TEST"
    assert cl.find_instance(items[0][1].SOPInstanceUID) is not None
    assert cl.find_instance("1.2.3.4.5.6.7.8.9") is None


def test_xml_response_is_parsed_the_same(orthanc):
    items = corpus("T-0102")[:2]
    cl = c.StowClient(c.Endpoint(orthanc.base_url), accept="application/dicom+xml")
    res = cl.store(parts_of(items))
    assert set(res.stored) == {ds.SOPInstanceUID for _, ds in items}


def test_400_for_a_batch_still_confirms_what_was_stored(orthanc):
    items = corpus("T-0103")[:2]
    parts = parts_of(items) + [c.Part.from_bytes("1.2.3.999", b"not dicom" * 20)]
    res = c.StowClient(c.Endpoint(orthanc.base_url)).store(parts)
    assert res.status == 400  # Orthanc's answer for a partly bad batch
    assert set(res.stored) == {ds.SOPInstanceUID for _, ds in items}
    assert res.unknown == ["1.2.3.999"]
    assert orthanc.instance_count() == 2


def test_failed_sop_sequence_carries_the_reason(orthanc):
    items = corpus("T-0104")[:1]
    cl = c.StowClient(c.Endpoint(orthanc.base_url.rstrip("/") + "/studies/1.2.3"))
    # POST .../studies/1.2.3/studies is not a route; use the study-scoped URL directly
    cl._url = lambda path: orthanc.base_url + "/studies/1.2.3"
    res = cl.store(parts_of(items))
    uid = items[0][1].SOPInstanceUID
    assert uid in res.failed and not res.stored
    code, text = res.failed[uid]
    assert code == 0x0110 and "processing failure" in text


def test_wrong_credentials_and_wrong_url_are_config_errors(tmp_path):
    _require_orthanc()
    h = start_orthanc(tmp_path / "o", username="kit", password="right-password")
    try:
        items = corpus("T-0105")[:1]
        bad = c.StowClient(c.Endpoint(h.base_url, auth_mode="basic", username="kit", password="wrong"))
        with pytest.raises(c.HospitalConfigError, match="credentials"):
            bad.store(parts_of(items))
        with pytest.raises(c.HospitalConfigError):
            bad.probe()
        good = c.StowClient(c.Endpoint(h.base_url, auth_mode="basic", username="kit", password="right-password"))
        good.probe()
        assert set(good.store(parts_of(items)).stored) == {items[0][1].SOPInstanceUID}
        notweb = c.StowClient(c.Endpoint(h.rest_url + "/nothing-here", auth_mode="basic",
                                         username="kit", password="right-password"))
        with pytest.raises(c.HospitalConfigError, match="not a DICOMweb"):
            notweb.store(parts_of(items))
        assert "right-password" not in repr(good.endpoint)
    finally:
        h.stop()


def test_closed_port_is_link_down():
    cl = c.StowClient(c.Endpoint(f"http://127.0.0.1:{free_port()}/dicom-web", connect_timeout=2))
    with pytest.raises(c.LinkDown):
        cl.store([c.Part.from_bytes("1.2.3", b"x" * 10)])


def test_server_that_never_answers_times_out_bounded():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)  # read nothing, answer nothing
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        cl = c.StowClient(c.Endpoint(f"http://127.0.0.1:{port}/dicom-web",
                                     connect_timeout=1, read_timeout=1.5))
        t0 = time.monotonic()
        with pytest.raises(c.LinkDown):
            cl.store([c.Part.from_bytes("1.2.3", b"x" * 1000)])
        assert time.monotonic() - t0 < 10
    finally:
        stop.set()
        t.join(2)
        for conn in held:
            conn.close()
        srv.close()


def test_parsers_on_hand_written_answers():
    js = ('{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]},'
          '"00081190":{"vr":"UR","Value":["http://h/1.2.3"]}}]},'
          '"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.4"]},'
          '"00081197":{"vr":"US","Value":[49442]}}]}}')
    out = c.parse_stow_response("application/dicom+json", js.encode())
    assert out["stored"] == {"1.2.3": "http://h/1.2.3"}
    assert out["failed"]["1.2.4"][0] == 0xC122
    assert "transfer syntax" in out["failed"]["1.2.4"][1]
    with pytest.raises(c.BadResponse):
        c.parse_stow_response("application/json", b'{"status": "ok"}')
    with pytest.raises(c.BadResponse):
        c.parse_stow_response("text/html", b"<html><body>Welcome</body></html>")
    with pytest.raises(c.BadResponse):
        c.parse_stow_response("application/dicom+xml",
                              b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a/>')


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=8)),
                              lambda ch: st.one_of(st.lists(ch, max_size=3),
                                                   st.dictionaries(st.sampled_from(
                                                       ["00081199", "00081198", "00081155", "Value",
                                                        "vr", "00081197", "00081190"]), ch, max_size=4)),
                              max_leaves=12).map(lambda v: __import__("json").dumps(v).encode())),
       st.sampled_from(["application/dicom+json", "application/dicom+xml", ""]))
def test_fuzz_response_parser_never_crashes(body, ctype):
    try:
        out = c.parse_stow_response(ctype, body)
    except c.BadResponse:
        return
    assert set(out) == {"stored", "failed", "warnings"}
    assert all(isinstance(k, str) for k in out["stored"])


def test_tls_certificate_not_trusted_or_not_matching_is_a_clear_config_error(kit_server):
    # the kit's own HTTPS server stands in for a TLS hospital endpoint
    url = f"https://127.0.0.1:{kit_server.http_port}/dicom-web"
    untrusted = c.StowClient(c.Endpoint(url, connect_timeout=3, read_timeout=5))
    with pytest.raises(c.HospitalConfigError, match="TLS"):
        untrusted.store([c.Part.from_bytes("1.2.3", b"x" * 10)])
    # a name the certificate does not carry, even with the right CA
    mismatch = c.StowClient(c.Endpoint(f"https://127.0.0.2:{kit_server.http_port}/dicom-web",
                                       ca_bundle=kit_server.ca, connect_timeout=3, read_timeout=5))
    with pytest.raises((c.HospitalConfigError, c.LinkDown)) as err:
        mismatch.probe()
    assert "TLS" in str(err.value) or "cannot reach" in str(err.value)
    # trusted: TLS succeeds and whatever answers is judged on its body, not mistaken for TLS
    trusted = c.StowClient(c.Endpoint(url, ca_bundle=kit_server.ca, connect_timeout=3, read_timeout=5))
    try:
        trusted.probe()
    except c.HospitalConfigError as exc:
        assert "TLS" not in str(exc)
    except (c.BadResponse, c.HospitalBusy):
        pass
