"""Storage Commitment Push Model SCP (PS3.4 Annex J) on the kit's DICOM ports.

A probe that asks (N-ACTION, action type 1, with a Transaction UID and the instances it
sent) learns which of them the kit holds durably, so it may free its own memory. The kit
answers the N-ACTION at once and then sends the N-EVENT-REPORT on the same association
(event type 1: all committed; 2: some failed, each with its reason). An instance is
committed when it is in the catalogue, which it is only after its durable write.
Handler contract (pynetdicom `evt.EVT_N_ACTION`): returns (status, reply); never raises.
"""

from __future__ import annotations

import logging
import threading
import weakref

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.sop_class import StorageCommitmentPushModel

from ..store import instances

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
    with _answered_lock:
        _answered[assoc] = answered
    threading.Thread(target=_send_report, args=(kit, assoc, answered, transaction, referenced),
                     name="commitment-report", daemon=True).start()
    return SUCCESS, None


def _send_report(kit, assoc, answered: threading.Event, transaction: str, referenced) -> None:
    try:
        event_type, info = report(kit, transaction, referenced)
        answered.wait(REPORT_TIMEOUT)
        if not assoc.is_established:
            log.info("storage commitment report not sent: the probe released the association first")
            return
        status = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        code = int(getattr(status, "Status", -1)) if status is not None else -1
        if code != SUCCESS:
            log.info("probe answered the storage commitment report with status %s", hex(code) if code >= 0 else "none")
    except Exception as exc:
        log.warning("storage commitment report failed: %s", type(exc).__name__)
