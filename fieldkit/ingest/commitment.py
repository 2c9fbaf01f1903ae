"""Storage Commitment Push Model SCP (PS3.4 Annex J) on the kit's DICOM ports.

A probe that asks (N-ACTION, action type 1, with a Transaction UID and the instances it
sent) learns which of them the kit holds durably, so it may free its own memory. The kit
answers the N-ACTION at once and then sends the N-EVENT-REPORT on the same association
(event type 1: all committed; 2: some failed, each with its reason). When the probe has
released that association by then (many do: they ask, hang up, and listen), the kit opens
one to the probe (PS3.4 J.3.3, the kit proposing the SCP role) at the registered probe's
host (else the address it called from) and `dicom.commitment_report_port`, and sends the
report there; a probe not listening yet is tried again a few times. An instance is
committed when it is in the catalogue, which it is only after its durable write.
Handler contract (pynetdicom `evt.EVT_N_ACTION`): returns (status, reply); never raises.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel

from ..store import instances, probes

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMIT = 1
ALL_COMMITTED, SOME_FAILED = 1, 2
SUCCESS = 0x0000
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT = 0x0115
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
REPORT_TIMEOUT = 30.0  # seconds the report may wait for the N-ACTION answer to go out
SAME_ASSOCIATION_SECONDS = 5.0  # a probe still on its association answers a report in milliseconds
REPORT_TRIES = 4  # associations tried when the probe's own has ended
REPORT_RETRY_SECONDS = 3.0  # between those tries (a probe may need a moment to listen)


def outcome(store, referenced) -> tuple[list[Dataset], list[Dataset]]:
    """(committed, failed) items for a ReferencedSOPSequence."""
    done, failed = [], []
    for ref in referenced:
        cls, uid = str(ref.get("ReferencedSOPClassUID", "")), str(ref.get("ReferencedSOPInstanceUID", ""))
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
        row = instances.get_instance(store, uid) if uid else None
        if row is None:
            item.FailureReason = NO_SUCH_INSTANCE
            failed.append(item)
        elif row.get("sop_class_uid") != cls:
            item.FailureReason = CLASS_INSTANCE_CONFLICT
            failed.append(item)
        else:
            done.append(item)
    return done, failed


def report(kit, transaction_uid: str, referenced) -> tuple[int, Dataset]:
    """(event type, event information) of the N-EVENT-REPORT for one transaction."""
    done, failed = outcome(kit.store, referenced)
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.RetrieveAETitle = kit.config["dicom.ae_title"]
    if done:
        info.ReferencedSOPSequence = Sequence(done)
    if failed:
        info.FailedSOPSequence = Sequence(failed)
    return (SOME_FAILED if failed else ALL_COMMITTED), info


# association -> set once its N-ACTION answer has gone out, so the report comes after it
_answered: "weakref.WeakKeyDictionary[object, threading.Event]" = weakref.WeakKeyDictionary()
_answered_lock = threading.Lock()


def on_sent(event) -> None:
    """EVT_DIMSE_SENT: release the report waiting for this association's N-ACTION answer."""
    if type(event.message).__name__ == "N_ACTION_RSP":
        with _answered_lock:
            waiting = _answered.get(event.assoc)
        if waiting is not None:
            waiting.set()


def handle_action(event, kit):
    """EVT_N_ACTION: check the request, answer it, then report on the same association."""
    try:
        if event.action_type != REQUEST_COMMIT:
            return NO_SUCH_ACTION_TYPE, None
        request = event.action_information
        transaction = str(request.get("TransactionUID", "") or "")
        referenced = list(request.get("ReferencedSOPSequence", []) or [])
        if not transaction or not referenced:
            return INVALID_ARGUMENT, None
    except Exception as exc:  # an action information pydicom cannot decode
        log.info("storage commitment request refused: %s", type(exc).__name__)
        return PROCESSING_FAILURE, None
    assoc, answered = event.assoc, threading.Event()
    requestor = (str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))
    with _answered_lock:
        _answered[assoc] = answered
    threading.Thread(target=_send_report, args=(kit, assoc, answered, transaction, referenced, requestor),
                     name="commitment-report", daemon=True).start()
    return SUCCESS, None


def _send_report(kit, assoc, answered: threading.Event, transaction: str, referenced,
                 requestor: tuple[str, str]) -> None:
    try:
        event_type, info = report(kit, transaction, referenced)
        answered.wait(REPORT_TIMEOUT)
        if assoc.is_established:
            # a probe that is hanging up ignores the report, and pynetdicom holds the
            # association (and the probe's release) until the answer times out: keep it short
            assoc.dimse_timeout = SAME_ASSOCIATION_SECONDS
            status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
            if _answered_ok(status):
                return
            # released while the report was on its way, or the probe takes reports only on
            # its own listening port (it refused this one): offer it there
        report_on_new_association(kit, requestor, event_type, info)
    except Exception as exc:
        log.warning("storage commitment report failed: %s", type(exc).__name__)


def _answered_ok(status) -> bool:
    code = int(status.Status) if status is not None and "Status" in status else -1
    if code != SUCCESS:
        log.info("storage commitment report answered with %s", f"status 0x{code:04X}" if code >= 0 else "nothing")
    return code == SUCCESS


def report_address(kit, ae_title: str, called_from: str) -> tuple[str, int]:
    """(host, port) to send a probe its report on: its registered host, else the address
    it called from; the port from dicom.commitment_report_port."""
    probe = next((p for p in probes.list_probes(kit.store) if p["ae"] == ae_title), None)
    host = ((probe or {}).get("host") or "").strip() or called_from
    return host, int(kit.config["dicom.commitment_report_port"])


def report_on_new_association(kit, requestor: tuple[str, str], event_type: int, info: Dataset,
                              tries: int = REPORT_TRIES, wait: float = REPORT_RETRY_SECONDS) -> bool:
    """Open an association to the probe, the kit in the SCP role, and send the report;
    up to `tries` times, `wait` seconds apart. True when the probe answered it."""
    ae_title, called_from = requestor
    host, port = report_address(kit, ae_title, called_from)
    ae = AE(ae_title=kit.config["dicom.ae_title"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    for attempt in range(1, max(1, tries) + 1):
        assoc = ae.associate(host, port, ae_title=ae_title or "ANY-SCP", ext_neg=[role])
        if assoc.is_established:
            try:
                status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                      WELL_KNOWN_INSTANCE)
            finally:
                assoc.release()
            if _answered_ok(status):
                return True
        if attempt < tries:
            time.sleep(wait)
    log.info("storage commitment report for %s not delivered after %d tries (%s port %d)",
             ae_title, tries, "registered host" if host != called_from else "its address", port)
    return False
