"""The DIMSE receiver: C-ECHO and C-STORE for handheld probes (pynetdicom, one thread).

Handler contract (pynetdicom `evt.EVT_C_STORE`): the handler gets the raw dataset in the
negotiated transfer syntax (as it arrived: in memory while small, else in the encrypted
spool, nothing past dicom.max_object_mb - see dimse_server, which also holds the
connection limits), hands it to `put_instance`, and answers Success only after that
returned, which is when the object is durable in the store. Every refusal becomes a
DIMSE status with an ErrorComment in `status_for` - the one place errors are mapped.
Refused associations and a summary of each association's stores are audited.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind, StorageCommitmentPushModel, Verification

from ..dicom import parse, uids
from ..dicom.status import status as _status
from ..dicom.prepare import prepare
from ..errors import ConfigError, FieldkitError, KitLocked, StorageFull, TooLarge
from ..security import audit
from ..store import probes
from ..store.blobs import open_reader
from ..store.instances import CONFLICT, put_instance
from . import commitment, dimse_server, qr, worklist

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


def handle_store(event, kit, tally: "StoreTally | None" = None) -> Dataset:
    """EVT_C_STORE: store the dataset durably, then answer."""
    calling = event.assoc.requestor.ae_title
    sink, raw = dimse_server.received_data(event.request)
    size = sink.size if sink is not None else len(raw)
    code = PROCESSING_FAILURE
    try:
        store = kit.store
        ts = str(event.context.transfer_syntax)
        if (sink is not None and sink.over_cap) or size > int(kit.config["dicom.max_object_mb"]) * (1 << 20):
            raise TooLarge(f"object over the {kit.config['dicom.max_object_mb']} MiB limit (dicom.max_object_mb)")
        requested_class = str(event.request.AffectedSOPClassUID)
        store.space.check_capture()
        if sink is not None and not sink.in_memory:
            # read once from the encrypted spool, straight into the dataset
            data = prepare(open_reader(sink), transfer_syntax=ts)
        else:
            data = sink.read_all() if sink is not None else raw
        result = put_instance(store, data, "dimse", transfer_syntax=ts, calling_ae=str(calling).strip())
        code = SUCCESS
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
    finally:
        if tally is not None:
            tally.add(event.assoc, size, code == SUCCESS)


class StoreTally(dimse_server.AssociationTally):
    """C-STORE counts per association, audited as one `dicom.store` event."""

    ACTION = "dicom.store"
    COUNTS = {"stored": 0, "refused": 0, "bytes": 0}

    def add(self, assoc, size: int, stored: bool) -> None:
        if stored:
            self._add(assoc, stored=1, bytes=size)
        else:
            self._add(assoc, refused=1)

    def outcome(self, counts: dict) -> str:
        return audit.OK if counts["stored"] else audit.FAILED


def handle_echo(event) -> int:
    return SUCCESS


LOCKED_COMMENT = dimse_server.LOCKED_COMMENT


def handle_store_locked(event) -> Dataset:
    """EVT_C_STORE while the kit is locked: nothing can be stored, so nothing is kept."""
    log.info("C-STORE from %s refused: the kit is locked", str(event.assoc.requestor.ae_title).strip())
    return _status(REFUSED_OUT_OF_RESOURCES, LOCKED_COMMENT)

# A-ASSOCIATE-RJ (result, source, diagnostic) -> reason (PS3.8 9.3.4)
REJECT_REASONS = {
    (0x01, 0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x03, 0x02): "local limit exceeded",
}
CALLING_NOT_ALLOWED = REJECT_REASONS[(0x01, 0x01, 0x03)]


def reject_reason(assoc) -> str:
    p = assoc.acceptor.primitive
    key = (getattr(p, "result", None), getattr(p, "result_source", None), getattr(p, "diagnostic", None))
    return REJECT_REASONS.get(key, "rejected")


class RefusedCallers:
    """Associations refused (A-ASSOCIATE-RJ): (AE, address, reason) -> count, first and last
    time. Bounded, so a flood cannot grow it; the first refusal of each is audited, repeats
    only counted. `list()` gives the callers refused for their calling AE title, for the
    device page (where an admin may let them in)."""

    LIMIT = 100

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], dict] = {}

    def on_rejected(self, event) -> None:
        ae = str(event.assoc.requestor.ae_title).strip()
        address = str(event.assoc.requestor.address)
        reason = reject_reason(event.assoc)
        now = time.time()
        with self._lock:
            entry = self._seen.get((ae, address, reason))
            first = entry is None
            if first:
                if len(self._seen) >= self.LIMIT:
                    del self._seen[min(self._seen, key=lambda k: self._seen[k]["last"])]
                entry = self._seen[(ae, address, reason)] = {"ae": ae, "address": address, "reason": reason,
                                                             "count": 0, "first": now}
            entry["count"] += 1
            entry["last"] = now
        if first:  # repeats are only counted: a flood must not flood the log or the trail either
            log.info("DICOM association from %s (%s) refused: %s", ae, address, reason)
            try:
                from ..store import accounts
                accounts.audit_append(self._store, actor=f"dicom:{ae}"[:80], action="dicom.association.refused",
                                      object=address, outcome=audit.DENIED, detail={"reason": reason})
            except Exception as exc:  # a locked or full store must not break the receiver
                log.info("refused association not audited: %s", type(exc).__name__)

    def list(self) -> list[dict]:
        with self._lock:
            entries = [dict(e) for e in self._seen.values() if e["reason"] == CALLING_NOT_ALLOWED]
        return sorted(entries, key=lambda e: -e["last"])


class Receiver:
    """A running DIMSE server; `.port` is the bound port, `.stop()` shuts it down."""

    def __init__(self, server, port: int, refused: RefusedCallers | None = None):
        self._server = server
        self.port = port
        self.refused = refused
        self._stopped = threading.Event()

    def allow(self, config, registered: list[str]) -> None:
        """Re-read who may call (a probe was registered or removed while running)."""
        titles = allowed_titles(config, registered)
        if titles is not None:
            self._server.ae.require_calling_aet = titles

    def open_connections(self) -> dict[str, int]:
        """Connections open now, per address."""
        return self._server.open_connections()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._server.shutdown()


def make_ae(config, registered: list[str] = ()) -> AE:
    try:
        ae = dimse_server.GuardedAE(ae_title=config["dicom.ae_title"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"dicom.ae_title {config['dicom.ae_title']!r} is not a usable AE title: {exc}") from None
    # counts only connections that asked for an association (GuardedAE)
    ae.maximum_associations = max(1, int(config["dicom.max_associations"]))
    ae.require_called_aet = True  # a probe must call the kit by its AE title
    # large PDUs: a cine arrives in a few hundred PDVs instead of thousands of 16 KiB ones
    ae.maximum_pdu_size = 4 << 20
    # Silence must end a connection: a socket that never sends an A-ASSOCIATE-RQ goes after
    # acse_timeout, an association that stops talking after network_timeout (the idle timer).
    ae.network_timeout = max(1.0, float(config["dicom.idle_timeout_s"]))
    ae.acse_timeout = max(0.5, float(config["dicom.associate_timeout_s"]))
    ae.dimse_timeout = 60
    ae.add_supported_context(Verification)
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.add_supported_context(StorageCommitmentPushModel)
    for sop_class in qr.SOP_CLASSES:
        ae.add_supported_context(sop_class)
    # scp_role: a C-GET caller takes the SCP role for storage, to get the objects back
    for sop_class in uids.ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(uids.ACCEPTED_TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
    # a C-MOVE's own association to its destination must not hang on a silent host
    ae.connection_timeout = ae.acse_timeout
    titles = allowed_titles(config, registered)
    if titles is not None:
        try:
            ae.require_calling_aet = titles
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"dicom.allowed_ae_titles holds an unusable AE title: {exc}") from None
    return ae


def allowed_titles(config, registered: list[str]) -> list[str] | None:
    """Calling AE titles let in (the setting, registered probes, Q/R AEs); None: anyone."""
    if config["dicom.allow_any_ae"]:
        return None
    # an empty list refuses every caller: a provisioned kit is closed until configured
    allowed = [str(t) for t in config["dicom.allowed_ae_titles"]] + list(registered) + qr.qr_titles(config)
    # (pynetdicom reads an empty list as "anyone", so use a random title nobody has)
    return allowed or [secrets.token_hex(8).upper()]


def listen(kit, port: int, setting: str, ssl_context=None) -> Receiver:
    """A receiver on dicom.bind:port (0 = any free port) in its own thread. While the kit
    is locked the registered probes are sealed in the store, so any caller is let in and
    hears C-ECHO answered and every C-STORE refused (0xA700, "kit locked ...")."""
    config = kit.config
    if getattr(kit, "locked", False):
        ae, refused, tally = make_ae(config), None, None
        ae.require_calling_aet = []
        handlers = [(evt.EVT_C_STORE, handle_store_locked), (evt.EVT_C_ECHO, handle_echo),
                    (evt.EVT_C_FIND, qr.handle_find_locked), (evt.EVT_C_GET, qr.handle_get_locked),
                    (evt.EVT_C_MOVE, qr.handle_move_locked)]
        on_end = None
    else:
        ae = make_ae(config, probes.registered_titles(kit.store))
        refused = RefusedCallers(kit.store)
        tally = StoreTally(kit.store)
        qr_tally = qr.QRTally(kit.store)

        def on_end(assoc):
            tally.on_end(assoc)
            qr_tally.on_end(assoc)
        handlers = [(evt.EVT_C_STORE, handle_store, [kit, tally]), (evt.EVT_C_ECHO, handle_echo),
                    (evt.EVT_REJECTED, refused.on_rejected),
                    # the worklist's queries go on to worklist.handle_find
                    (evt.EVT_C_FIND, qr.handle_find, [kit, qr_tally]),
                    (evt.EVT_C_MOVE, qr.handle_move, [kit, qr_tally]), (evt.EVT_C_GET, qr.handle_get, [kit, qr_tally]),
                    (evt.EVT_N_ACTION, commitment.handle_action, [kit]),
                    (evt.EVT_DIMSE_SENT, commitment.on_sent)]
    if tally is None:  # locked: there is no store, and nothing of a refused object is kept
        def new_sink():
            return dimse_server.StoreSink(None, 0)
    else:
        def new_sink():
            return dimse_server.StoreSink(kit.store.blobs.open_spool, int(config["dicom.max_object_mb"]) * (1 << 20))
    try:
        server = dimse_server.start_server(
            ae, (config["dicom.bind"], port), evt_handlers=handlers, ssl_context=ssl_context,
            per_address=int(config["dicom.max_connections_per_address"]),
            on_end=on_end, new_sink=new_sink)
    except OSError as exc:
        raise ConfigError(f"cannot listen for DICOM on {config['dicom.bind']}:{port}: "
                          f"{exc.strerror or exc} (another receiver running? see {setting})") from None
    bound = server.server_address[1]
    log.info("DIMSE receiver%s listening on port %d as %s", " (TLS)" if ssl_context else "", bound,
             config["dicom.ae_title"])
    return Receiver(server, bound, refused)


def start(kit) -> Receiver:
    """Start the plain receiver on dicom.bind:dicom.port (port 0: a free port, then the
    same one again after a lock and unlock, so probes and run.json keep one port)."""
    return listen(kit, int(kit.config["dicom.port"]) or (kit.dicom_port or 0), "dicom.port")


start_locked = start  # the same listener; `listen` answers "locked" while kit.locked


def register_probe(kit, ae: str, *, name: str = "", host: str = "", actor: str = "", role: str = "") -> dict:
    """Register a probe (audited); the running receivers let it in at once."""
    from ..store import accounts
    row = probes.add_probe(kit.store, ae, name=name, host=host)
    accounts.audit_append(kit.store, actor=actor or accounts.SYSTEM, role=role, action="probe.add", object=row["ae"])
    refresh_allowed(kit)
    return row


def unregister_probe(kit, ae: str, *, actor: str = "", role: str = "") -> None:
    from ..store import accounts
    probes.remove_probe(kit.store, ae)
    accounts.audit_append(kit.store, actor=actor or accounts.SYSTEM, role=role, action="probe.remove", object=ae)
    refresh_allowed(kit)


def refresh_allowed(kit) -> None:
    """Tell the running receivers who may call now (the setting plus registered probes)."""
    registered = probes.registered_titles(kit.store)
    for service in kit.services.values():
        if isinstance(service, Receiver):
            service.allow(kit.config, registered)
