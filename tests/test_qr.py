"""Query/Retrieve on the kit's DIMSE port, asked by a viewer's tools: dcmtk's findscu (Study
and Patient Root, every level), movescu into a storescp the test starts, getscu, and
pynetdicom as SCU; the objects that arrive are the stored ones, byte for byte. Bad input
(unknown destination, invalid key or level, callers that may not ask) gets a standard
status with a reason."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_FIND,
    StudyRootQueryRetrieveInformationModelFind as STUDY_FIND,
    StudyRootQueryRetrieveInformationModelGet as STUDY_GET,
    StudyRootQueryRetrieveInformationModelMove as STUDY_MOVE,
    UltrasoundImageStorage,
)

from fieldkit.ingest import dimse, qr
from fieldkit.store import accounts, instances, probes
from fixtures.dcmtk import pydicom_file
from fixtures.orthanc import free_port

CINE = "examples_ybr_color.dcm"  # the 30-frame JPEG baseline SonoSite cine


def _part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def library(kit):
    """Three patients' studies on a running receiver: Doe^Jane (two studies, one a cine
    series of two series), Roe^Rick, Poe^Ann; 'VIEWER' may query, 'PROBE1' is a probe."""
    need_tools = ("findscu", "movescu", "getscu", "storescp")
    for tool in need_tools:
        from conftest import need_peer
        need_peer(tool)
    still = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    made = []

    def add(ds, name, pid, study, date, series, number, description="", accession=""):
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.StudyDate = name, pid, study, date
        ds.SeriesInstanceUID, ds.InstanceNumber = series, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDescription, ds.AccessionNumber = description, accession
        result = instances.put_instance(kit.store, _part10(ds), "stow")
        assert result["status"] == "stored"
        made.append(instances.get_instance(kit.store, ds.SOPInstanceUID))

    jane1, jane2, rick, ann = (generate_uid() for _ in range(4))
    s1, s2 = generate_uid(), generate_uid()
    add(still, "Doe^Jane", "P-1", jane1, "20240110", s1, 1, "eFAST", "A1")
    add(still, "Doe^Jane", "P-1", jane1, "20240110", s1, 2, "eFAST", "A1")
    add(pydicom.dcmread(pydicom_file(CINE)), "Doe^Jane", "P-1", jane1, "20240110", s2, 1, "eFAST", "A1")
    add(still, "Doe^Jane", "P-1", jane2, "20240320", generate_uid(), 1, "Lung", "A2")
    add(still, "Roe^Rick", "P-2", rick, "20240215", generate_uid(), 1, "Lung", "A3")
    add(still, "Poe^Ann", "P-3", ann, "20231201", generate_uid(), 1, "Cardiac", "A4")
    probes.add_probe(kit.store, "PROBE1")
    dest_port = free_port()
    kit.config = kit.config.with_overrides(
        dicom__port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=False, dicom__allowed_ae_titles=["SENDER"],
        dicom__qr_ae_titles=["VIEWER"], dicom__move_destinations=[f"DEST@127.0.0.1:{dest_port}"])
    receiver = dimse.start(kit)
    kit.receiver, kit.dest_port = receiver, dest_port
    kit.made = made
    kit.studies = {"jane1": jane1, "jane2": jane2, "rick": rick, "ann": ann}
    kit.series = {"still": s1, "cine": s2}
    yield kit
    receiver.stop()


def _findscu(port: int, model: str, *keys: str, out: Path, aet: str = "VIEWER"):
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-v", model, "-aet", aet, "-aec", "FIELDKIT", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    return proc, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _stored(kit, sop_uid: str) -> bytes:
    """The stored object, decrypted: what every retrieve must deliver."""
    return kit.store.blobs.get_bytes(instances.get_instance(kit.store, sop_uid)["blob"])


def _dataset_bytes(part10: bytes) -> bytes:
    """A Part-10 file's data set, past its file meta (each writer makes its own meta:
    its implementation UID, the sender's AE title)."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return part10[144 + group_length:]


def test_findscu_study_root_at_every_level(library, tmp_path):
    kit, port = library, library.receiver.port
    proc, studies = _findscu(port, "-S", "QueryRetrieveLevel=STUDY", "PatientName=doe*", "StudyInstanceUID",
                             "StudyDate", "StudyDescription", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
                             out=tmp_path / "study")
    assert "Success" in proc.stdout + proc.stderr
    got = {s.StudyInstanceUID: s for s in studies}
    assert set(got) == {kit.studies["jane1"], kit.studies["jane2"]}
    assert got[kit.studies["jane1"]].NumberOfStudyRelatedInstances == 3
    assert got[kit.studies["jane1"]].StudyDescription == "eFAST"
    assert all(s.RetrieveAETitle == "FIELDKIT" and s.QueryRetrieveLevel == "STUDY" for s in studies)

    _, ranged = _findscu(port, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20240201-20241231",
                         "StudyInstanceUID", out=tmp_path / "range")
    assert {s.StudyInstanceUID for s in ranged} == {kit.studies["jane2"], kit.studies["rick"]}

    _, series = _findscu(port, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={kit.studies['jane1']}",
                         "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances", out=tmp_path / "series")
    assert {s.SeriesInstanceUID: int(s.NumberOfSeriesRelatedInstances) for s in series} == {
        kit.series["still"]: 2, kit.series["cine"]: 1}
    assert {s.Modality for s in series} == {"US"}

    _, images = _findscu(port, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={kit.studies['jane1']}",
                         f"SeriesInstanceUID={kit.series['still']}", "SOPInstanceUID", "InstanceNumber",
                         out=tmp_path / "image")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2]
    held = {r["sop_instance_uid"] for r in kit.made if r["series_instance_uid"] == kit.series["still"]}
    assert {i.SOPInstanceUID for i in images} == held

    # UID lists (backslash) match any of them
    two = f"{kit.studies['rick']}\\{kit.studies['ann']}"
    _, listed = _findscu(port, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={two}", out=tmp_path / "list")
    assert {s.StudyInstanceUID for s in listed} == {kit.studies["rick"], kit.studies["ann"]}


def test_findscu_patient_root_at_every_level(library, tmp_path):
    kit, port = library, library.receiver.port
    _, pats = _findscu(port, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=?oe^*", "PatientID",
                       "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances", out=tmp_path / "p")
    by_name = {str(p.PatientName): p for p in pats}
    assert set(by_name) == {"Doe^Jane", "Roe^Rick", "Poe^Ann"}
    assert int(by_name["Doe^Jane"].NumberOfPatientRelatedStudies) == 2
    assert int(by_name["Doe^Jane"].NumberOfPatientRelatedInstances) == 4
    jane = by_name["Doe^Jane"].PatientID  # the kit's own patient ID, stamped on every object
    assert jane == kit.made[0]["patient_id"]

    _, studies = _findscu(port, "-P", "QueryRetrieveLevel=STUDY", f"PatientID={jane}", "StudyInstanceUID",
                          "AccessionNumber", out=tmp_path / "s")
    assert {(s.StudyInstanceUID, s.AccessionNumber) for s in studies} == {
        (kit.studies["jane1"], "A1"), (kit.studies["jane2"], "A2")}
    _, series = _findscu(port, "-P", "QueryRetrieveLevel=SERIES", f"PatientID={jane}",
                         f"StudyInstanceUID={kit.studies['jane1']}", "SeriesInstanceUID", out=tmp_path / "se")
    assert {s.SeriesInstanceUID for s in series} == set(kit.series.values())
    _, images = _findscu(port, "-P", "QueryRetrieveLevel=IMAGE", f"PatientID={jane}",
                         f"StudyInstanceUID={kit.studies['jane1']}", f"SeriesInstanceUID={kit.series['cine']}",
                         "SOPInstanceUID", "NumberOfFrames", out=tmp_path / "i")
    assert [int(i.NumberOfFrames) for i in images] == [30]


@pytest.fixture
def destination(library, tmp_path):
    """dcmtk's storescp as the C-MOVE destination DEST, writing what it gets as it came (+B)."""
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "DEST", "+xa", "+B", "-od", str(received), str(library.dest_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(library.dest_port)
        yield received
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_movescu_into_storescp_delivers_the_stored_objects(library, destination):
    kit, received = library, destination
    proc = subprocess.run(["movescu", "-v", "-S", "-aet", "VIEWER", "-aec", "FIELDKIT", "-aem", "DEST",
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={kit.studies['jane1']}",
                           "127.0.0.1", str(kit.receiver.port)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "Received Final Move Response (Success)" in out, out[-2000:]
    files = sorted(received.iterdir())
    sent = [r for r in kit.made if r["study_instance_uid"] == kit.studies["jane1"]]
    assert len(files) == len(sent) == 3
    for path in files:
        got = pydicom.dcmread(path, stop_before_pixels=True)
        assert _dataset_bytes(path.read_bytes()) == _dataset_bytes(_stored(kit, got.SOPInstanceUID))
    frames = [pydicom.dcmread(p).get("NumberOfFrames", 1) for p in files]
    assert sorted(int(f) for f in frames) == [1, 1, 30]


def _wait_port(port: int, timeout: float = 15) -> None:
    import socket
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_getscu_fetches_a_series_on_the_same_association(library, tmp_path):
    kit = library
    out = tmp_path / "got"
    out.mkdir()
    proc = subprocess.run(["getscu", "-v", "-S", "-aet", "VIEWER", "-aec", "FIELDKIT", "-od", str(out),
                           "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={kit.studies['jane1']}",
                           "-k", f"SeriesInstanceUID={kit.series['cine']}\\{kit.series['still']}",
                           "127.0.0.1", str(kit.receiver.port)], capture_output=True, text=True, timeout=120)
    files = sorted(out.iterdir())
    assert len(files) == 3, (proc.stdout + proc.stderr)[-2000:]
    for path in files:
        got = pydicom.dcmread(path)
        stored = pydicom.dcmread(io.BytesIO(_stored(kit, got.SOPInstanceUID)))
        assert got.PatientID == stored.PatientID and got.StudyInstanceUID == stored.StudyInstanceUID
        if stored.file_meta.TransferSyntaxUID.is_compressed:
            # getscu accepted only native syntaxes: the cine comes decoded, every frame
            assert got.file_meta.TransferSyntaxUID.is_compressed is False
            assert (got.pixel_array == stored.pixel_array).all() or got.NumberOfFrames == stored.NumberOfFrames
            assert int(got.NumberOfFrames) == 30
        else:
            assert got.PixelData == stored.PixelData


def _assoc(port: int, aet: str, *contexts, roles=()):
    ae = AE(aet)
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT", ext_neg=list(roles))
    assert assoc.is_established
    return assoc


def _query(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_pynetdicom_find_and_get_with_cancel_and_warnings(library):
    kit, port = library, library.receiver.port
    ae = AE("VIEWER")
    ae.add_requested_context(STUDY_FIND)
    ae.add_requested_context(STUDY_GET)
    ae.add_requested_context(UltrasoundImageStorage)
    received = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000
    from pynetdicom import evt
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT", ext_neg=[build_role(UltrasoundImageStorage,
                                                                                     scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        # a key the kit cannot match on is returned empty, and every answer says so (0xFF01)
        answers = list(assoc.send_c_find(_query("STUDY", StudyInstanceUID="", OtherPatientIDs="X*"), STUDY_FIND))
        assert [s.Status for s, _ in answers[:-1]] == [qr.PENDING_KEYS_NOT_SUPPORTED] * 4
        assert answers[-1][0].Status == qr.SUCCESS
        # the same key, empty, is just a return key
        plain = list(assoc.send_c_find(_query("STUDY", StudyInstanceUID="", OtherPatientIDs=""), STUDY_FIND))
        assert {s.Status for s, _ in plain[:-1]} == {qr.PENDING}
        # C-GET of one image: its own object, byte for byte in its pixels
        still = next(r for r in kit.made if r["frames"] in (0, 1, None) and r["sop_class_uid"] == UltrasoundImageStorage)
        statuses = list(assoc.send_c_get(_query("IMAGE", StudyInstanceUID=still["study_instance_uid"],
                                                SeriesInstanceUID=still["series_instance_uid"],
                                                SOPInstanceUID=still["sop_instance_uid"]), STUDY_GET))
        assert statuses[-1][0].Status == 0x0000 and statuses[-1][0].NumberOfCompletedSuboperations == 1
        assert [d.SOPInstanceUID for d in received] == [still["sop_instance_uid"]]
        stored = pydicom.dcmread(io.BytesIO(_stored(kit, still["sop_instance_uid"])))
        assert received[0].PixelData == stored.PixelData
    finally:
        assoc.release()


def test_a_cancelled_find_stops_with_0xfe00(kit, monkeypatch):
    """400 matches: the C-CANCEL sent after the first answer arrives long before the last.
    The kit queues at most BACKLOG answers ahead of the socket and looks for a C-CANCEL
    before each; a backlog of 2 (instead of 64) keeps that so even when a busy machine
    delays the canceller."""
    monkeypatch.setattr(qr._PendingSender, "BACKLOG", 2)
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    batch = instances.Batch(kit.store, "stow")
    for _ in range(400):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        batch.add(_part10(ds))
    batch.commit()
    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1", dicom__qr_ae_titles=["VIEWER"])
    receiver = dimse.start(kit)
    try:
        assoc = _assoc(receiver.port, "VIEWER", STUDY_FIND)
        try:
            responses = assoc.send_c_find(_query("IMAGE", StudyInstanceUID=ds.StudyInstanceUID, SOPInstanceUID=""),
                                          STUDY_FIND, msg_id=7)
            status, _ = next(responses)
            assert status.Status == qr.PENDING
            assoc.send_c_cancel(7, query_model=STUDY_FIND)
            rest = [s.Status for s, _ in responses]
        finally:
            assoc.release()
    finally:
        receiver.stop()
    assert rest[-1] == qr.CANCEL and len(rest) < 400


def test_bad_queries_get_a_standard_status_with_a_reason(library, destination):
    port = library.receiver.port
    assoc = _assoc(port, "VIEWER", STUDY_FIND, PATIENT_FIND, STUDY_MOVE)
    try:
        def one(query, model=STUDY_FIND):
            (status, ident), = list(assoc.send_c_find(query, model))
            return status.Status, str(status.get("ErrorComment", ""))

        assert one(_query("PATIENT", PatientID="")) == (qr.IDENTIFIER_DOES_NOT_MATCH,
                                                        "QueryRetrieveLevel 'PATIENT' is not one of STUDY/SERIES/IMAGE")
        code, why = one(_query("BOGUS"), PATIENT_FIND)
        assert code == qr.IDENTIFIER_DOES_NOT_MATCH and "QueryRetrieveLevel" in why
        no_level = Dataset()
        no_level.PatientID = ""
        code, why = one(no_level)
        assert code == qr.IDENTIFIER_DOES_NOT_MATCH and "QueryRetrieveLevel" in why
        code, why = one(_query("STUDY", SOPInstanceUID=""))
        assert code == qr.IDENTIFIER_DOES_NOT_MATCH and "SOPInstanceUID" in why
        code, why = one(_query("STUDY", StudyDate="2024-01-01"))
        assert code == qr.UNABLE_TO_PROCESS and "StudyDate" in why
        code, why = one(_query("STUDY", StudyInstanceUID="1.2.abc"))
        assert code == qr.UNABLE_TO_PROCESS and "StudyInstanceUID" in why
        # C-MOVE to a destination the kit does not know: 0xA801, nothing sent
        (status, _), = list(assoc.send_c_move(_query("STUDY", StudyInstanceUID=library.studies["rick"]),
                                              "STRANGER", STUDY_MOVE))
        assert status.Status == qr.MOVE_DESTINATION_UNKNOWN
        # a retrieve without the level's unique key: 0xA900
        statuses = [s for s, _ in assoc.send_c_move(_query("STUDY", PatientName="Doe*"), "DEST", STUDY_MOVE)]
        assert statuses[-1].Status == qr.IDENTIFIER_DOES_NOT_MATCH
        assert "StudyInstanceUID" in statuses[-1].ErrorComment
        assert list(destination.iterdir()) == []
        # still answering afterwards
        answers = list(assoc.send_c_find(_query("STUDY", StudyInstanceUID=library.studies["rick"]), STUDY_FIND))
        assert [s.Status for s, _ in answers] == [qr.PENDING, qr.SUCCESS]
    finally:
        assoc.release()


@pytest.mark.parametrize("caller, reason", [
    ("PROBE1", "a probe may send images, not query or retrieve them"),
    ("SENDER", "AE not registered for query/retrieve (dicom.qr_ae_titles)"),
])
def test_callers_not_registered_for_query_retrieve_are_refused(library, tmp_path, caller, reason):
    kit, port = library, library.receiver.port
    assoc = _assoc(port, caller, STUDY_FIND, STUDY_GET)
    try:
        (status, ident), = list(assoc.send_c_find(_query("STUDY", StudyInstanceUID=""), STUDY_FIND))
        assert (status.Status, status.ErrorComment) == (qr.NOT_AUTHORISED, reason) and ident is None
        statuses = list(assoc.send_c_get(_query("STUDY", StudyInstanceUID=kit.studies["rick"]), STUDY_GET))
        assert statuses[-1][0].Status == qr.NOT_AUTHORISED
    finally:
        assoc.release()
    # dcmtk sees the same refusal, and no answer
    proc, answers = _findscu(port, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", out=tmp_path / "r",
                             aet=caller)
    assert answers == []
    assert "Find Response (Unknown Status: 0x124)" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-1500:]
    # the refusal is on the audit trail, with no patient data in it
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        events = [e for e in accounts.audit_events(kit.store) if e["action"] == "dicom.query_retrieve"]
        if events:
            break
        time.sleep(0.1)
    assert events and events[-1]["actor"] == f"dicom:{caller}" and events[-1]["outcome"] == "denied"


def test_an_unknown_caller_is_not_let_in_at_all(library, tmp_path):
    proc, answers = _findscu(library.receiver.port, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                             out=tmp_path / "x", aet="INTRUDER")
    assert answers == [] and "Association Rejected" in proc.stdout + proc.stderr


def test_matching_rules_are_the_same_as_qido():
    """One matcher for QIDO and C-FIND: the query's keys become the same filters."""
    ident = _query("STUDY", PatientName="doe^j*", StudyDate="20240101-", StudyInstanceUID="1.2\\1.3",
                   StudyDescription="", ModalitiesInStudy="US")
    q = qr.parse_query(ident, qr.STUDY_ROOT)
    assert q.filters == {"PatientName": "doe^j*", "StudyDate": "20240101-", "StudyInstanceUID": "1.2\\1.3",
                         "ModalitiesInStudy": "US"}
    assert q.returned == ["StudyDate", "ModalitiesInStudy", "StudyDescription", "PatientName", "StudyInstanceUID"]
    assert qr.parse_query(_query("SERIES", SeriesInstanceUID="1.2"), qr.STUDY_ROOT, retrieve=True).filters
    with pytest.raises(qr.QueryError) as err:
        qr.parse_query(_query("IMAGE", SeriesInstanceUID="1.2"), qr.STUDY_ROOT, retrieve=True)
    assert err.value.status == qr.IDENTIFIER_DOES_NOT_MATCH and "SOPInstanceUID" in err.value.message


def test_answers_in_big_endian_and_in_utf8_read_back_right(library):
    kit, port = library, library.receiver.port
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.SpecificCharacterSet, ds.PatientName, ds.PatientID = "ISO_IR 192", "Müller^Jörg", "P-9"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assert instances.put_instance(kit.store, _part10(ds), "stow")["status"] == "stored"
    ae = AE("VIEWER")
    ae.add_requested_context(STUDY_FIND, ["1.2.840.10008.1.2.2"])  # Explicit VR Big Endian only
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
    assert assoc.is_established
    try:
        answers = [a for s, a in assoc.send_c_find(_query("IMAGE", StudyInstanceUID=ds.StudyInstanceUID,
                                                          PatientName="", Rows="", Columns="",
                                                          SOPInstanceUID=""), STUDY_FIND) if a is not None]
    finally:
        assoc.release()
    assert len(answers) == 1
    got = answers[0]
    assert got.SpecificCharacterSet == "ISO_IR 192"
    got.decode()
    assert str(got.PatientName) == "Müller^Jörg"
    assert (got.Rows, got.Columns) == (ds.Rows, ds.Columns)
    assert got.SOPInstanceUID == ds.SOPInstanceUID


def test_a_locked_kit_refuses_queries_with_a_reason(kit):
    from types import SimpleNamespace

    locked = SimpleNamespace(locked=True, config=kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1"))
    receiver = dimse.listen(locked, 0, "dicom.port")
    try:
        assoc = _assoc(receiver.port, "VIEWER", STUDY_FIND)
        try:
            (status, _), = list(assoc.send_c_find(_query("STUDY", StudyInstanceUID=""), STUDY_FIND))
        finally:
            assoc.release()
        assert (status.Status, status.ErrorComment) == (qr.REFUSED_OUT_OF_RESOURCES, dimse.LOCKED_COMMENT)
    finally:
        receiver.stop()


def test_fuzzed_identifiers_get_an_answer_or_a_status_never_a_crash(kit):
    """Random identifiers (levels, keys of every level, wildcards, ranges, junk, control
    characters, long values) through the parser, the search and the answer builder."""
    import random

    from pynetdicom.dsutils import decode, encode

    instances.put_instance(kit.store, _part10(pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))), "stow")
    rng = random.Random(20)
    keywords = list(qr.KEYS) + ["OtherPatientIDs", "ReferencedStudySequence", "PatientAge", "QueryRetrieveLevel"]
    pieces = ["", "*", "?", "doe*", "2024", "20240101-", "-20231231", "1.2.3", "1.2\\1.3", "a\\b", "x" * 300,
              "\x00\x1b", "ü", "[a-z]", "--", "US", "0", "-", "1.2.a", "20241301"]
    outcomes = set()
    for _ in range(400):
        ds = Dataset()
        ds.QueryRetrieveLevel = rng.choice(["PATIENT", "STUDY", "SERIES", "IMAGE", "", "study", "X" * 20])
        for keyword in rng.sample(keywords, rng.randint(0, 6)):
            value = rng.choice(pieces)
            try:
                if keyword == "ReferencedStudySequence":
                    setattr(ds, keyword, [Dataset()] if value else [])
                else:
                    setattr(ds, keyword, value)
            except Exception:  # pydicom refuses the value for this VR: not an identifier a peer could send
                continue
        root = rng.choice([qr.PATIENT_ROOT, qr.STUDY_ROOT])
        try:
            q = qr.parse_query(ds, root, retrieve=rng.random() < 0.3)
        except qr.QueryError as exc:
            assert exc.status in (qr.IDENTIFIER_DOES_NOT_MATCH, qr.UNABLE_TO_PROCESS) and exc.message
            assert len(exc.message) <= 200
            outcomes.add(exc.status)
            continue
        for view in qr.find(kit, q):
            syntax = (rng.random() < 0.5, rng.random() < 0.8)
            data = encode(qr.answer(view, q, kit, syntax), *syntax)
            assert decode(io.BytesIO(data), *syntax).QueryRetrieveLevel == q.level
        outcomes.add(qr.SUCCESS)
    assert outcomes == {qr.SUCCESS, qr.IDENTIFIER_DOES_NOT_MATCH, qr.UNABLE_TO_PROCESS}


def test_encoded_answer_cache_is_bounded_in_bytes():
    """The C-FIND answer cache keeps recent answers (the same one comes back without a new
    encoding) but never holds more than its byte bound, however many answers pass."""
    cache = qr._Encoded()
    cache.LIMIT_BYTES = 64 << 10
    syntax = (True, True)

    def elements(n: int):
        return ((0x00080052, "CS", b"PATIENT "), (0x00100010, "PN", f"Scale^{n:06d}".encode()),
                (0x00100020, "LO", f"PID{n:07d}".encode() + b" " * 200))

    for n in range(5000):
        data = cache.get(elements(n), syntax, False)
        assert cache.bytes <= cache.LIMIT_BYTES
    assert cache.get(elements(4999), syntax, False) is data  # the newest answer is still held
    assert len(cache._data) < 5000 // 10
    assert cache.bytes == sum(qr._cost(k, v) for k, v in cache._data.items())
    assert b"Scale^004999" in data and b"PID0004999" in data  # the answer asked for
