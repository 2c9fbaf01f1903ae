"""The DIMSE receiver: C-ECHO and C-STORE for handheld probes (pynetdicom, one thread).

Handler contract (pynetdicom `evt.EVT_C_STORE`): the handler gets the raw dataset in the
negotiated transfer syntax, hands it to `put_instance`, and answers Success only after
that returned, which is when the object is durable in the store. Every refusal becomes a
DIMSE status with an ErrorComment in `status_for` - the one place errors are mapped.
"""

from __future__ import annotations

import logging
import secrets
import threading

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from ..dicom import parse, uids
from ..errors import ConfigError, FieldkitError, KitLocked, StorageFull, TooLarge
from ..store.instances import CONFLICT, put_instance

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 Annex B.2.3 and GG.4)
SUCCESS = 0x0000
WARNING_COERCION = 0xB000
REFUSED_OUT_OF_RESOURCES = 0xA700
REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
ERROR_DOES_NOT_MATCH_SOP_CLASS = 0xA900
ERROR_CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_CODE_STATUS = {
    parse.UNSUPPORTED_SOP_CLASS: REFUSED_SOP_CLASS_NOT_SUPPORTED,
    parse.UNSUPPORTED_TRANSFER_SYNTAX: ERROR_CANNOT_UNDERSTAND,
    parse.DOES_NOT_MATCH_SOP_CLASS: ERROR_DOES_NOT_MATCH_SOP_CLASS,
    parse.CANNOT_UNDERSTAND: ERROR_CANNOT_UNDERSTAND,
    parse.TOO_LARGE: REFUSED_OUT_OF_RESOURCES,
}


def status_for(exc: BaseException) -> tuple[int, str]:
    """(DIMSE status, reason) for anything put_instance raised."""
    if isinstance(exc, parse.InvalidDicom):
        return _CODE_STATUS.get(exc.code, ERROR_CANNOT_UNDERSTAND), exc.message
    if isinstance(exc, (TooLarge, StorageFull, KitLocked)):
        return REFUSED_OUT_OF_RESOURCES, exc.message
    if isinstance(exc, FieldkitError):
        return ERROR_CANNOT_UNDERSTAND if exc.http_status < 500 else PROCESSING_FAILURE, exc.message
    return PROCESSING_FAILURE, "internal error while storing; nothing was kept (see the kit log)"


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: 64 characters, no backslash
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


def handle_store(event, kit) -> Dataset:
    """EVT_C_STORE: store the dataset durably, then answer."""
    calling = event.assoc.requestor.ae_title
    try:
        store = kit.store
        raw = event.request.DataSet.getvalue()
        ts = str(event.context.transfer_syntax)
        cap = int(kit.config["dicom.max_object_mb"]) * (1 << 20)
        if len(raw) > cap:
            raise TooLarge(f"object over the {kit.config['dicom.max_object_mb']} MiB limit")
        requested_class = str(event.request.AffectedSOPClassUID)
        result = put_instance(store, raw, "dimse", transfer_syntax=ts)
        if result["instance"]["sop_class_uid"] != requested_class:
            # stored already (it is a valid object); tell the probe its request was odd
            return _status(WARNING_COERCION, "SOP class differs from the C-STORE request")
        if result["status"] == CONFLICT:
            return _status(WARNING_COERCION, "UID already held with other content: kept as conflict")
        return _status(SUCCESS)
    except Exception as exc:
        code, reason = status_for(exc)
        if code == PROCESSING_FAILURE and not isinstance(exc, FieldkitError):
            log.exception("C-STORE from %s failed unexpectedly", calling)
        else:
            log.info("C-STORE from %s refused (0x%04X): %s", calling, code, reason)
        return _status(code, reason)


def handle_echo(event) -> int:
    return SUCCESS


class Receiver:
    """A running DIMSE server; `.port` is the bound port, `.stop()` shuts it down."""

    def __init__(self, server, port: int):
        self._server = server
        self.port = port
        self._stopped = threading.Event()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._server.shutdown()


def make_ae(config) -> AE:
    try:
        ae = AE(ae_title=config["dicom.ae_title"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"dicom.ae_title {config['dicom.ae_title']!r} is not a usable AE title: {exc}") from None
    ae.maximum_associations = max(1, int(config["dicom.max_associations"]))
    # large PDUs: a cine arrives in a few hundred PDVs instead of thousands of 16 KiB ones
    ae.maximum_pdu_size = 4 << 20
    # Every connection holds a slot until its thread ends, so silence must end it: a socket
    # that never sends an A-ASSOCIATE-RQ goes after acse_timeout, an association that stops
    # talking after network_timeout (pynetdicom's idle timer).
    idle = max(1.0, float(config["dicom.idle_timeout_s"]))
    ae.network_timeout = idle
    ae.acse_timeout = min(30.0, idle)
    ae.dimse_timeout = 60
    ae.add_supported_context(Verification)
    for sop_class in uids.ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(uids.ACCEPTED_TRANSFER_SYNTAXES))
    if not config["dicom.allow_any_ae"]:
        # an empty list refuses every caller: a provisioned kit is closed until configured
        allowed = [str(t) for t in config["dicom.allowed_ae_titles"]]
        # (pynetdicom reads an empty list as "anyone", so use a random title nobody has)
        try:
            ae.require_calling_aet = allowed or [secrets.token_hex(8).upper()]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"dicom.allowed_ae_titles holds an unusable AE title: {exc}") from None
    return ae


def listen(kit, port: int, setting: str, ssl_context=None) -> Receiver:
    """A receiver on dicom.bind:port (0 = any free port) in its own thread."""
    config = kit.config
    ae = make_ae(config)
    handlers = [(evt.EVT_C_STORE, handle_store, [kit]), (evt.EVT_C_ECHO, handle_echo)]
    try:
        server = ae.start_server((config["dicom.bind"], port), block=False, evt_handlers=handlers,
                                 ssl_context=ssl_context)
    except OSError as exc:
        raise ConfigError(f"cannot listen for DICOM on {config['dicom.bind']}:{port}: "
                          f"{exc.strerror or exc} (another receiver running? see {setting})") from None
    bound = server.server_address[1]
    log.info("DIMSE receiver%s listening on port %d as %s", " (TLS)" if ssl_context else "", bound,
             config["dicom.ae_title"])
    return Receiver(server, bound)


def start(kit) -> Receiver:
    """Start the plain receiver on dicom.bind:dicom.port."""
    receiver = listen(kit, int(kit.config["dicom.port"]), "dicom.port")
    kit.dicom_port = receiver.port
    return receiver
