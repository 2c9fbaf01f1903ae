"""The worklist's lean answer path (fieldkit.ingest.fast_find: answers written as ready-made
PDUs) gives real peers exactly what pynetdicom's normal path gives them: dcmtk's
`findscu -W` and pynetdicom as a probe's worklist client, with small and large maximum PDU
lengths, over DICOM-TLS, and with a C-CANCEL mid-stream."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_FIND_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind

from fieldkit.ingest import fast_find
from fieldkit.store import patients
from test_worklist import PROBE_KEYS, board  # noqa: F401  (board: the 30-patient fixture)


@pytest.fixture
def lean_calls(monkeypatch):
    """What each query's lean attempt gave: a Sent, or None when it took the normal path."""
    calls = []
    real = fast_find.send_pending

    def recording(event, identifiers):
        calls.append(real(event, identifiers))
        return calls[-1]

    monkeypatch.setattr(fast_find, "send_pending", recording)
    return calls


def _lean(kit, on: bool) -> None:
    kit.config = kit.config.with_overrides(worklist__lean_answers=on)


def _findscu(port: int, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    out.mkdir(parents=True)
    args = ["findscu", "-v", "-W", "-aet", "PROBE", "-aec", "FIELDKIT", "-X", "-od", str(out), *extra]
    for k in PROBE_KEYS:
        args += ["-k", k]
    proc = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    return proc, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _statuses(log: str) -> list[str]:
    """findscu's per-response lines, without their (per-association) message IDs."""
    return [line.split("(", 1)[1] for line in log.splitlines() if "Find Response" in line]


def test_findscu_gets_the_same_answers_from_both_paths(board, tmp_path, lean_calls):  # noqa: F811
    kit, _ = board
    for max_pdu in ("4096", "131072"):  # findscu's smallest and largest
        runs = {}
        for on in (False, True):
            _lean(kit, on)
            proc, answers = _findscu(kit.receiver.port, tmp_path / f"{max_pdu}-{on}", "--max-pdu", max_pdu)
            assert proc.returncode == 0, proc.stderr
            runs[on] = (_statuses(proc.stdout + proc.stderr), [Dataset(a) for a in answers])
        assert lean_calls[-1] == fast_find.Sent(31, False)  # the second run took the lean path
        assert len(runs[True][1]) == 31
        assert runs[True] == runs[False]  # every dataset, in order, and every status


def test_pynetdicom_gets_the_same_answers_and_statuses_from_both_paths(board, lean_calls):  # noqa: F811
    """200 bytes splits every answer over several PDUs; 40 is below what the lean path
    takes (the normal path answers). With the cap, the final Success carries its comment."""
    kit, _ = board
    kit.config = kit.config.with_overrides(worklist__max_items=20)
    query = Dataset()
    for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        setattr(query, k, "")
    step = Dataset()
    step.Modality = "US"
    step.ScheduledProcedureStepDescription = ""
    query.ScheduledProcedureStepSequence = [step]
    for max_pdu, lean_taken in ((0, True), (16382, True), (200, True), (40, False)):
        runs = {}
        for on in (False, True):
            _lean(kit, on)
            ae = AE(ae_title="PROBE")
            ae.add_requested_context(ModalityWorklistInformationFind)
            assoc = ae.associate("127.0.0.1", kit.receiver.port, ae_title="FIELDKIT", max_pdu=max_pdu)
            assert assoc.is_established and assoc.requestor.maximum_length == max_pdu
            try:
                runs[on] = [(int(s.Status), s.get("ErrorComment"), encode(i, False, True) if i is not None else None)
                            for s, i in assoc.send_c_find(query, ModalityWorklistInformationFind)]
            finally:
                assoc.release()
        assert (lean_calls[-1] is not None) == lean_taken, max_pdu
        assert [code for code, _, _ in runs[True]] == [0xFF00] * 20 + [0x0000]
        assert runs[True][-1][1] == "11 more items not sent; narrow the query"
        assert runs[True] == runs[False], max_pdu


def test_a_c_cancel_mid_stream_stops_the_answers(board, lean_calls, monkeypatch):  # noqa: F811
    kit, _ = board
    for n in range(90):
        patients.create_patient(kit.store, tag=f"T-6{n:03d}", triage="green")
    monkeypatch.setattr(fast_find, "BATCH_BYTES", 1)  # one answer per batch: a cancel can land anywhere
    query = Dataset()
    query.PatientID = ""
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", kit.receiver.port, ae_title="FIELDKIT")
    assert assoc.is_established
    try:
        full = [str(i.PatientID) for s, i in assoc.send_c_find(query, ModalityWorklistInformationFind, msg_id=1)
                if int(s.Status) == 0xFF00]
        assert len(full) == 121
        got, final = [], None
        context_id = assoc.accepted_contexts[0].context_id
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind, msg_id=2):
            if int(status.Status) == 0xFF00:
                got.append(str(identifier.PatientID))
                if len(got) == 1:
                    assoc.send_c_cancel(2, context_id)
            else:
                final = int(status.Status)
        assert final == 0xFE00
        assert 1 <= len(got) < len(full) and got == full[:len(got)]
        assert lean_calls[-1].cancelled and lean_calls[-1].count == len(got)
        # the association is still good after the cancel
        again = [s for s, _ in assoc.send_c_find(query, ModalityWorklistInformationFind, msg_id=3)]
        assert len(again) == 122 and int(again[-1].Status) == 0x0000
    finally:
        assoc.release()


def test_findscu_cancelling_after_two_answers_gets_a_clean_end(board, tmp_path, lean_calls):  # noqa: F811
    """dcmtk's own C-CANCEL: whether it lands before the last answer is a race, but what
    arrives is the start of the list and the association ends normally."""
    kit, _ = board
    _, everything = _findscu(kit.receiver.port, tmp_path / "all")
    proc, answers = _findscu(kit.receiver.port, tmp_path / "cancel", "--cancel", "2")
    assert proc.returncode == 0, proc.stderr
    assert 2 <= len(answers) and [a.PatientID for a in answers] == [a.PatientID for a in everything[:len(answers)]]
    assert _statuses(proc.stdout + proc.stderr)[-1] in ("Cancel)", "Success)")
    assert all(call is not None for call in lean_calls)


def test_over_dicom_tls_the_lean_path_gives_the_same_answers(board, tmp_path, lean_calls, need):  # noqa: F811
    from fieldkit.ingest import dimse_tls

    kit, _ = board
    findscu = need("findscu")
    kit.config = kit.config.with_overrides(dicom__tls_port=0)
    receiver = dimse_tls.start(kit)
    tls = ["+tla", "+cf", str(kit.data_dir / "tls" / "ca.pem")]
    try:
        runs = {}
        for on in (False, True):
            _lean(kit, on)
            out = tmp_path / str(on)
            out.mkdir()
            args = [findscu, "-W", "-v", *tls, "-aet", "PROBE", "-aec", "FIELDKIT", "-X", "-od", str(out)]
            for k in PROBE_KEYS:
                args += ["-k", k]
            proc = subprocess.run(args + ["127.0.0.1", str(receiver.port)], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 0, proc.stderr
            runs[on] = (_statuses(proc.stdout + proc.stderr),
                        [Dataset(pydicom.dcmread(p)) for p in sorted(out.glob("rsp*.dcm"))])
    finally:
        receiver.stop()
    assert lean_calls[-1] == fast_find.Sent(31, False)
    assert runs[True] == runs[False] and len(runs[True][1]) == 31


def _decode(stream: bytes, assoc_context: int) -> tuple[list[int], DIMSEMessage]:
    """Read PDUs with pynetdicom's own decoder into one DIMSE message; the PDU lengths."""
    message, lengths, offset = DIMSEMessage(), [], 0
    done = False
    while offset < len(stream):
        assert stream[offset] == 0x04
        length = int.from_bytes(stream[offset + 2:offset + 6], "big")
        pdu = P_DATA_TF()
        pdu.decode(stream[offset:offset + 6 + length])
        lengths.append(length)
        primitive = pdu.to_primitive()
        assert {context_id for context_id, _ in primitive.presentation_data_value_list} == {assoc_context}
        assert not done, "bytes after the end of the message"
        done = message.decode_msg(primitive)
        offset += 6 + length
    assert done
    return lengths, message


@pytest.mark.parametrize("max_pdu", [0, 64, 100, 1000, 4096])
def test_message_pdus_read_back_as_the_same_message(max_pdu):
    """Any fragmenting: pynetdicom's decoder gets the command and data set back, and no
    PDU is longer than the peer allows."""
    request = C_FIND()
    request.MessageID = 7
    request.AffectedSOPClassUID = ModalityWorklistInformationFind
    request.Identifier = BytesIO(b"\x00")
    command = fast_find.pending_command(request)
    item = Dataset()
    item.PatientName = "Doe^Jane"
    item.PatientID = "P-1"
    item.StudyDescription = "x" * 900
    data = encode(item, False, True)
    lengths, message = _decode(fast_find.message_pdus(5, command, data, max_pdu), 5)
    assert max_pdu == 0 or max(lengths) <= max_pdu
    if max_pdu in (0, 4096):
        assert len(lengths) == 1  # command and data set in one PDU
    else:
        assert len(lengths) > 1
    assert isinstance(message, C_FIND_RSP)
    assert message.command_set.MessageIDBeingRespondedTo == 7
    assert message.command_set.Status == 0xFF00
    assert message.command_set.CommandDataSetType != 0x0101
    assert message.data_set.getvalue() == data
