"""How the sync client reads a hospital's STOW-RS answer (sync/client.py), on answers
written by hand: only what ReferencedSOPSequence lists counts as stored, FailedSOPSequence
entries carry the hospital's reason, and anything else is a BadResponse, never a guess."""

from __future__ import annotations

import json

import pytest

from fieldkit.sync import client as c


def el(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


def item(uid=None, url=None, failure=None, warning=None) -> dict:
    out = {}
    if uid is not None:
        out["00081155"] = el("UI", uid)
    if url is not None:
        out["00081190"] = el("UR", url)
    if failure is not None:
        out["00081197"] = el("US", failure)
    if warning is not None:
        out["00081196"] = el("US", warning)
    return out


def answer(stored=(), failed=()) -> bytes:
    doc = {}
    if stored is not None:
        doc["00081199"] = {"vr": "SQ", "Value": list(stored)}
    if failed is not None:
        doc["00081198"] = {"vr": "SQ", "Value": list(failed)}
    return json.dumps(doc).encode()


def test_stored_failed_and_warnings_from_dicom_json():
    out = c.parse_stow_response("application/dicom+json", answer(
        [item("1.1", "http://pacs/1.1"), item("1.2", warning=0xB000), item("1.3")],
        [item("2.1", failure=0xA700), item("2.2")]))
    assert out["stored"] == {"1.1": "http://pacs/1.1", "1.2": "", "1.3": ""}
    assert out["warnings"] == {"1.2": "warning 0xB000"}
    assert out["failed"] == {"2.1": (0xA700, "out of resources (0xA700)"), "2.2": (None, "no reason given")}


def test_an_answer_wrapped_in_a_list_is_read_and_other_shapes_are_refused():
    out = c.parse_json(b"[" + answer([item("1.1")], None) + b"]")
    assert out["stored"] == {"1.1": ""} and out["failed"] == {}
    for body, why in [(b"[]", "^hospital answered with JSON that is not a DICOM dataset$"), (b"[1, 2]", "not a DICOM dataset"),
                      (b'"x"', "not a DICOM dataset"),
                      (b"{", "invalid DICOM JSON"), (b"\xff\xfe", "invalid DICOM JSON"),
                      (b"{}", "neither ReferencedSOPSequence nor FailedSOPSequence")]:
        with pytest.raises(c.BadResponse, match=why):
            c.parse_json(body)


def test_a_list_of_two_datasets_is_not_taken_for_one():
    with pytest.raises(c.BadResponse):
        c.parse_json(b"[" + answer([item("1.1")]) + b"," + answer([item("1.2")]) + b"]")


def test_either_sequence_alone_is_a_stow_answer():
    assert c.parse_json(answer([item("1.1")], None))["stored"] == {"1.1": ""}
    only_failed = c.parse_json(answer(None, [item("2.1", failure=0xC000)]))
    assert only_failed["stored"] == {} and only_failed["failed"]["2.1"][0] == 0xC000


def test_items_without_a_usable_uid_confirm_nothing():
    out = c.parse_json(answer([item(), {"00081155": {"vr": "UI"}}, {"00081155": el("UI")},
                               {"00081155": "1.9"}, item(7), {"00081155": {"vr": "UI", "Value": "1.8"}}],
                              [item(), item(8, failure=0xC000)]))
    assert out == {"stored": {}, "failed": {}, "warnings": {}}


def test_a_retrieve_url_that_is_not_text_is_left_empty():
    out = c.parse_json(answer([item("1.1", url=5)]))
    assert out["stored"] == {"1.1": ""}


def test_malformed_sequences_are_a_bad_response():
    with pytest.raises(c.BadResponse, match="attribute 00081199 is not a DICOM JSON element"):
        c.parse_json(json.dumps({"00081199": [1]}).encode())
    with pytest.raises(c.BadResponse, match="sequence 00081198 has malformed items"):
        c.parse_json(json.dumps({"00081198": {"vr": "SQ", "Value": [1]}}).encode())
    with pytest.raises(c.BadResponse, match="sequence 00081199 has malformed items"):
        c.parse_json(json.dumps({"00081199": {"vr": "SQ", "Value": {"a": 1}}}).encode())
    # a sequence with no items is an answer that confirms nothing
    assert c.parse_json(json.dumps({"00081199": {"vr": "SQ"}}).encode())["stored"] == {}
    assert c.parse_json(json.dumps({"00081199": None, "00081198": {"vr": "SQ"}}).encode())["stored"] == {}


@pytest.mark.parametrize("raw, code", [(0xC122, 0xC122), ("49442", 0xC122), (" 272 ", 0x0110), (True, None),
                                       ("0xC122", None), (1.5, None), ("", None), ([], None)])
def test_failure_codes_as_numbers_or_digit_strings(raw, code):
    out = c.parse_json(answer(None, [item("2.1", failure=raw)]))
    assert out["failed"]["2.1"][0] == code


@pytest.mark.parametrize("code, text", [
    (None, "no reason given"),
    (0xA700, "out of resources (0xA700)"), (0xA7FF, "out of resources (0xA7FF)"), (0xA701, "out of resources (0xA701)"),
    (0xA900, "data set does not match SOP class (0xA900)"), (0xA9FF, "data set does not match SOP class (0xA9FF)"),
    (0xC000, "cannot understand (0xC000)"), (0xCFFF, "cannot understand (0xCFFF)"),
    (0xC122, "transfer syntax not supported (0xC122)"), (0x0110, "processing failure (0x0110)"),
    (0x0122, "SOP class not supported (0x0122)"), (0x0124, "not authorized (0x0124)"),
    (0x0111, "duplicate SOP instance (0x0111)"),
    (0xA6FF, "failure (0xA6FF)"), (0xA800, "failure (0xA800)"), (0xA8FF, "failure (0xA8FF)"),
    (0xAA00, "failure (0xAA00)"), (0xBFFF, "failure (0xBFFF)"), (0xD000, "failure (0xD000)"), (0x12, "failure (0x0012)"),
])
def test_failure_reasons_in_words(code, text):
    assert c.failure_text(code) == text


@pytest.mark.parametrize("code, transient", [(None, False), (0xA6FF, False), (0xA700, True), (0xA7FF, True),
                                             (0xA800, False), (0xC000, False)])
def test_only_out_of_resources_is_worth_retrying(code, transient):
    assert c.is_transient_failure(code) is transient


NS = 'xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'


def xml(body: str, ns: str = NS) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><NativeDicomModel {ns}>{body}</NativeDicomModel>'.encode()


def attr(tag: str, vr: str, inner: str) -> str:
    return f'<DicomAttribute tag="{tag}" vr="{vr}">{inner}</DicomAttribute>'


def val(text: str) -> str:
    return f'<Value number="1">{text}</Value>'


def xitem(*attrs: str) -> str:
    return '<Item number="1">' + "".join(attrs) + "</Item>"


@pytest.mark.parametrize("ns", [NS, ""])
def test_stored_failed_and_warnings_from_dicom_xml(ns):
    body = xml(
        attr("00081199", "SQ",
             "<Other/>"  # not an item: skipped, and the items after it still read
             + xitem(attr("00081190", "UR", val("http://pacs/none")))  # no UID: confirms nothing
             + xitem(attr("00081155", "UI", val(" 1.1 ")), attr("00081190", "UR", val("http://pacs/1.1")))
             + xitem(attr("00081155", "UI", val("1.2")), attr("00081196", "US", val("45056"))))
        + attr("00081198", "SQ",
               xitem(attr("00081155", "UI", val("2.1")), attr("00081197", "US", val("42752")))
               + xitem(attr("00081155", "UI", val("2.2")))
               + xitem(attr("00081155", "UI", "<Value/>"))), ns)
    for ctype in ("application/dicom+xml", "application/dicom+xml; charset=utf-8", "", "text/plain"):
        out = c.parse_stow_response(ctype, body)
        assert out["stored"] == {"1.1": "http://pacs/1.1", "1.2": ""}
        assert out["warnings"] == {"1.2": "warning 0xB000"}
        assert out["failed"] == {"2.1": (0xA700, "out of resources (0xA700)"), "2.2": (None, "no reason given")}
    # no media type and no XML declaration: sniffed from the first character past the blanks
    bare = body.split(b"?>", 1)[1]
    assert c.parse_stow_response("", b"  \n" + bare)["stored"] == {"1.1": "http://pacs/1.1", "1.2": ""}


def test_xml_tags_are_read_in_any_case_and_as_text():
    body = xml(attr("00081199", "SQ", xitem(attr("00081155", "UI", val("1.1")))).replace("00081199", "00081199".lower()))
    assert c.parse_xml(body.decode())["stored"] == {"1.1": ""}
    lower = xml(attr("0008119a", "SQ", "") + attr("00081199", "SQ", xitem(attr("00081155", "UI", val("1.5")))))
    assert c.parse_xml(lower)["stored"] == {"1.5": ""}


def test_xml_that_is_not_a_stow_answer_is_refused():
    for body, why in [(b"<a/>", "^hospital answered with XML that is not a NativeDicomModel$"), (b"<NativeDicomModel>", "invalid DICOM XML"),
                      (xml(""), "neither ReferencedSOPSequence nor FailedSOPSequence"),
                      (b'<!DOCTYPE x [<!ENTITY a "b">]><NativeDicomModel/>',
                       "^hospital answered with XML declaring entities; refused$"),
                      (b'<?xml version="1.0"?><!ENTITY a "b"><NativeDicomModel/>', "declaring entities"),
                      (b'<!DOCTYPE NativeDicomModel SYSTEM "http://elsewhere/x.dtd"><NativeDicomModel/>',
                       "declaring entities")]:
        with pytest.raises(c.BadResponse, match=why):
            c.parse_xml(body)


def test_the_media_type_decides_and_json_is_never_sniffed_as_xml():
    js = answer([item("1.1")])
    assert c.parse_stow_response("application/dicom+json", js)["stored"] == {"1.1": ""}
    assert c.parse_stow_response("", b"\n " + js)["stored"] == {"1.1": ""}
    assert c.parse_stow_response("APPLICATION/DICOM+JSON; charset=utf-8", js)["stored"] == {"1.1": ""}
    with pytest.raises(c.BadResponse, match="invalid DICOM JSON"):  # json declared: not read as XML
        c.parse_stow_response("application/json", xml(attr("00081199", "SQ", "")))
    with pytest.raises(c.BadResponse, match="invalid DICOM XML"):  # xml declared: not read as JSON
        c.parse_stow_response("application/dicom+xml", js)
    with pytest.raises(c.BadResponse, match="invalid DICOM JSON"):  # parameters do not hide the type
        c.parse_stow_response("application/dicom+json; charset=utf-8", xml(attr("00081199", "SQ", "")))


def test_an_xml_answer_with_only_failures_lists_them():
    body = xml(attr("00081198", "SQ", xitem(attr("00081155", "UI", val("2.1")), attr("00081197", "US", val("272")))))
    out = c.parse_xml(body)
    assert out["stored"] == {} and out["failed"] == {"2.1": (0x0110, "processing failure (0x0110)")}
