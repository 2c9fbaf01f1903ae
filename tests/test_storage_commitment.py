"""Storage Commitment Push Model with pynetdicom as the probe: the report lists exactly the
instances the kit holds, and each one it does not hold with the reason."""

from __future__ import annotations

import threading
import time

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, UltrasoundImageStorage

from fieldkit.ingest import commitment
from kitproc import wait_until

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def _capture() -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _ref(cls: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
    return item


def _probe(port: int):
    """A probe's association (store + commitment) and the reports it receives."""
    reports, got = [], threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(UltrasoundImageStorage, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    return assoc, reports, got


def test_the_probe_learns_what_is_held_and_what_is_not(dimse_kit):
    assoc, reports, got = _probe(dimse_kit.receiver.port)
    try:
        sent = []
        for _ in range(3):
            ds = _capture()
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            assert assoc.send_c_store(ds).Status == 0x0000
            sent.append(str(ds.SOPInstanceUID))
        never_sent = generate_uid()
        wrong_class = _ref("1.2.840.10008.5.1.4.1.1.7", sent[2])  # held, but not as Secondary Capture
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = Sequence([_ref(UltrasoundImageStorage, u) for u in sent[:2]]
                                                 + [_ref(UltrasoundImageStorage, never_sent), wrong_class])
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        assert got.wait(30), "no N-EVENT-REPORT came"
    finally:
        assoc.release()
    (event_type, info), = reports
    assert event_type == commitment.SOME_FAILED
    assert info.TransactionUID == request.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(sent[:2])
    failed = {(i.ReferencedSOPInstanceUID, int(i.FailureReason)) for i in info.FailedSOPSequence}
    assert failed == {(never_sent, commitment.NO_SUCH_INSTANCE), (sent[2], commitment.CLASS_INSTANCE_CONFLICT)}


def test_all_committed_and_bad_requests(dimse_kit):
    assoc, reports, got = _probe(dimse_kit.receiver.port)
    try:
        ds = _capture()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        assert assoc.send_c_store(ds).Status == 0x0000
        empty = Dataset()
        empty.TransactionUID = generate_uid()
        status, _ = assoc.send_n_action(empty, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == commitment.INVALID_ARGUMENT  # nothing to commit
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = Sequence([_ref(UltrasoundImageStorage, ds.SOPInstanceUID)])
        status, _ = assoc.send_n_action(request, 7, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == commitment.NO_SUCH_ACTION_TYPE
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000 and got.wait(30)
    finally:
        assoc.release()
    assert [event_type for event_type, _ in reports] == [commitment.ALL_COMMITTED]


def _listening_probe(host: str, port: int):
    """The probe's own SCP, where it takes storage commitment reports on a new association."""
    reports, got, callers = [], threading.Event(), []

    def on_report(event):
        callers.append(str(event.assoc.requestor.ae_title).strip())
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = AE(ae_title="PROBE2")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    return server, reports, got, callers


def test_a_probe_that_hung_up_gets_its_report_on_a_new_association(dimse_kit):
    """The probe sends, asks, releases, and listens on its registered host (127.0.0.2 here,
    not the address it called from) and the configured port."""
    from fieldkit.store import probes
    from fixtures.orthanc import free_port

    port = free_port()
    dimse_kit.config = dimse_kit.config.with_overrides(dicom__commitment_report_port=port)
    probes.add_probe(dimse_kit.store, "PROBE2", host="127.0.0.2")
    ae = AE(ae_title="PROBE2")
    ae.add_requested_context(UltrasoundImageStorage, ["1.2.840.10008.1.2.1"])
    ae.add_requested_context(StorageCommitmentPushModel)
    offered = threading.Event()

    def refuse(event):  # the probe takes no report on this association: it will hang up
        offered.set()
        return 0x0110, None

    assoc = ae.associate("127.0.0.1", dimse_kit.receiver.port, ae_title="FIELDKIT",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, refuse)])
    assert assoc.is_established
    ds = _capture()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    assert assoc.send_c_store(ds).Status == 0x0000
    never_sent = generate_uid()
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = Sequence([_ref(UltrasoundImageStorage, ds.SOPInstanceUID),
                                              _ref(UltrasoundImageStorage, never_sent)])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
    assert status.Status == 0x0000
    # the probe listens for its report as it hangs up (the kit's tries on a new association
    # start at once: listening only after the release raced them on a loaded machine)
    server, reports, got, callers = _listening_probe("127.0.0.2", port)
    # the kit offers the report on this association first, and the probe refuses it; it hangs
    # up once that is over (a release while the report arrives can wait for ever in
    # pynetdicom, its reactor busy with the report)
    assert offered.wait(30), "the kit did not offer the report on the probe's own association first"
    assoc.release()
    try:
        assert got.wait(30), "no N-EVENT-REPORT came on a new association"
        # the kit got the answer and hung up: no second try comes
        assert wait_until(lambda: not server.active_associations, 30)
        time.sleep(commitment.REPORT_RETRY_SECONDS + 1)  # (a retry would have come by now)
    finally:
        server.shutdown()
    (event_type, info), = reports
    assert callers == ["FIELDKIT"] and event_type == commitment.SOME_FAILED
    assert info.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert [(i.ReferencedSOPInstanceUID, int(i.FailureReason)) for i in info.FailedSOPSequence] == \
        [(never_sent, commitment.NO_SUCH_INSTANCE)]


def test_a_probe_that_never_listens_is_tried_a_bounded_number_of_times(kit):
    from fixtures.orthanc import free_port

    kit.config = kit.config.with_overrides(dicom__commitment_report_port=free_port())  # nobody listens there
    event_type, info = commitment.report(kit, generate_uid(), [_ref(UltrasoundImageStorage, generate_uid())])
    t0 = time.monotonic()
    assert commitment.report_on_new_association(kit, ("GONE", "127.0.0.1"), event_type, info,
                                                tries=3, wait=0.2) is False
    assert time.monotonic() - t0 < 20
