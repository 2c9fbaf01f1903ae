"""The DIMSE listener, hardened: what pynetdicom's server does, plus the limits that keep
one misbehaving host from stopping the probes.

- A connection must send its A-ASSOCIATE-RQ within `dicom.associate_timeout_s` (the AE's
  acse_timeout) or it is closed; until it sends anything it is one sleeping thread, and
  until the request has arrived it holds no association slot: the limit
  (`dicom.max_associations`) counts only connections that asked for an association
  (pynetdicom counts every connected socket).
- At most `dicom.max_connections_per_address` connections from one address at once; one
  more is closed on accept.
- On the TLS port the handshake must also finish within that deadline.
- A C-STORE data set is written as it arrives into a `StoreSink` (memory while small, the
  store's encrypted spool once large, nothing kept past `dicom.max_object_mb`), never into
  pynetdicom's in-memory buffer or its plaintext temp file.
- `on_end(assoc)` is called once when a connection's thread ends, whatever ended it.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from datetime import datetime
from io import BytesIO

from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from .spoolio import PartBuffer

log = logging.getLogger(__name__)

# what every DIMSE service of a locked kit answers (C-STORE, Q/R, worklist)
LOCKED_COMMENT = "kit locked: an admin must unlock it"


class GuardedAE(AE):
    """An AE whose association limit counts only connections that sent an A-ASSOCIATE-RQ:
    pynetdicom compares `active_associations` with `maximum_associations` when a request
    arrives, and would otherwise count silent sockets too."""

    @property
    def active_associations(self):
        return [a for a in super().active_associations if a.requestor.primitive is not None]

    def _create_socket(self, assoc, address, tls_args):
        """The socket of an association the kit asks for from its receiver's AE (a
        C-MOVE's to its destination), sent without Nagle's delay (see `no_delay`)."""
        sock = super()._create_socket(assoc, address, tls_args)
        no_delay(sock.socket)
        return sock


def no_delay(sock) -> None:
    """TCP_NODELAY, as dcmtk sets by default: DIMSE sends small PDUs (a command, a
    pending status) back to back, which Nagle's algorithm would hold until the peer's
    delayed ACK."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket
        pass


class StoreSink(PartBuffer):
    """Where one C-STORE data set goes as it arrives. Past `cap` bytes nothing more is kept
    (the spool is dropped, bytes are only counted), so an object over the limit costs
    neither memory nor disk; the handler then refuses it with a DIMSE status."""

    name = ""  # pynetdicom unlinks the file named here after the handler: there is none

    def __init__(self, open_spool, cap: int):
        super().__init__(open_spool)
        self.cap = cap
        self.file = self  # pynetdicom calls `.file.flush()` after each fragment
        self.over_cap = False

    def write(self, data) -> int:
        if self.over_cap:
            self.size += len(data)
            return len(data)
        if self.size + len(data) > self.cap:
            self.over_cap = True
            super().close()
            self.size += len(data)
            return len(data)
        return super().write(data)

    def flush(self) -> None:
        pass


class _StreamedStoreProvider(DIMSEServiceProvider):
    """Moves each C-STORE data set out of pynetdicom's BytesIO into a StoreSink once its
    command set is decoded. (A data set that arrives whole in the same P-DATA as its
    command, at most one PDU, stays in the BytesIO and is checked by the handler.)"""

    def __init__(self, assoc, new_sink):
        super().__init__(assoc)
        self._new_sink = new_sink

    def receive_primitive(self, primitive) -> None:
        msg = self.message
        if isinstance(msg, C_STORE_RQ) and msg._data_set_file is None:
            sink = self._new_sink()
            sink.write(msg.data_set.getvalue())
            msg.data_set = BytesIO()
            msg._data_set_file = sink  # decode_msg writes further fragments here
        super().receive_primitive(primitive)


def received_data(request) -> tuple[StoreSink | None, bytes]:
    """The data set of a C-STORE request: (sink, b"") when streamed, else (None, bytes)."""
    sink = getattr(request, "_dataset_file", None)
    if isinstance(sink, StoreSink):
        return sink, b""
    return None, request.DataSet.getvalue()


class _GuardedHandler(RequestHandler):
    """Runs in the connection's own thread (never the accept thread). Until the peer has
    sent something, the connection costs one thread asleep in a poll: pynetdicom's reader
    thread, started only then, polls its socket every millisecond, and 50 idle connections
    each with one of those would slow the probes."""

    def handle(self) -> None:
        server = self.server
        host = str(self.client_address[0])
        deadline = time.monotonic() + float(server.ae.acse_timeout)
        sock = self.request
        no_delay(sock)
        why = ""
        if isinstance(sock, ssl.SSLSocket):
            why = self._handshake(deadline)
        if not why and not _readable(sock, deadline):
            why = "nothing sent before the associate deadline (dicom.associate_timeout_s)"
        if why:
            log.debug("DICOM connection from %s closed: %s", host, why)
            server.shutdown_request(sock)
            server.connection_ended(host, None)
            return
        try:
            assoc = self._create_association()
            assoc.acse_timeout = max(0.5, deadline - time.monotonic())  # the rest of the deadline
            _BoundedSocket.adopt(assoc.dul.socket, deadline, max(server.ae.maximum_pdu_size, 1 << 16) + 1024)
            assoc.dimse = _StreamedStoreProvider(assoc, server.new_sink)
            run = assoc.run

            def run_then_free():
                try:
                    run()
                finally:
                    server.connection_ended(host, assoc)

            assoc.run = run_then_free
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
        except BaseException:
            server.connection_ended(host, None)
            raise

    def _handshake(self, deadline: float) -> str:
        """The TLS handshake under the associate deadline ('' when done): a peer that starts
        one and stalls must not hold its connection (the accept thread only wraps the
        socket, see dimse_tls)."""
        sock = self.request
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.do_handshake()
            sock.settimeout(None)
            return ""
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            return f"TLS handshake failed ({type(exc).__name__})"


class _BoundedSocket(AssociationSocket):
    """pynetdicom reads a PDU by its declared length, as long as the peer takes: a peer
    that declares 4 GiB (before any association, no AE title needed) would be buffered
    whole, and one that stops mid-PDU would hold its connection for good. Here a PDU
    longer than the kit's maximum is not read at all, and one must arrive within the
    associate deadline (before the association) or the idle timeout (after); either way
    the read comes back short, which pynetdicom treats as a closed connection."""

    @classmethod
    def adopt(cls, sock: AssociationSocket, associate_deadline: float, max_pdu: int) -> None:
        sock.__class__ = cls  # pynetdicom made the socket; only its reads change
        sock.associate_deadline = associate_deadline
        sock.max_pdu = max_pdu

    def recv(self, nr_bytes: int) -> bytearray:
        out = bytearray()
        raw = self.socket
        address = self.assoc.requestor.address
        if nr_bytes > self.max_pdu:
            log.debug("DICOM connection from %s closed: a PDU of %d bytes is over the kit's maximum", address, nr_bytes)
            return out
        if self.assoc.is_established:
            deadline = time.monotonic() + float(self.assoc.network_timeout or 60)
        else:
            deadline = self.associate_deadline
        try:
            while len(out) < nr_bytes and raw is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.debug("DICOM connection from %s closed: a PDU was not complete in time", address)
                    break
                raw.settimeout(remaining)
                chunk = raw.recv(min(1 << 16, nr_bytes - len(out)))
                if not chunk:
                    break
                out += chunk
        except OSError:  # timed out or reset: what arrived is short, the connection ends
            pass
        finally:
            if raw is not None:
                try:
                    raw.settimeout(None)  # sends stay blocking, as pynetdicom expects
                except OSError:
                    pass
        return out


def _readable(sock, deadline: float) -> bool:
    """Wait (asleep) until the peer sent something or closed, or the deadline passed."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(max(0.0, deadline - time.monotonic())))


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a per-address connection cap."""

    # socketserver's listen backlog is 5: a burst of connections (an attacker's) would make
    # the kernel drop a probe's SYN and the probe wait a second or more to retry
    request_queue_size = 128
    # a connection's thread may sit out the associate deadline: stopping the kit must not
    # wait for an idle attacker's (socketserver joins non-daemon handler threads)
    daemon_threads = True

    def __init__(self, *args, per_address: int, new_sink, on_end=None, **kwargs):
        self.per_address = max(1, int(per_address))
        self.new_sink = new_sink
        self._on_end = on_end
        self._open: Counter[str] = Counter()
        self._open_lock = threading.Lock()
        super().__init__(*args, request_handler=_GuardedHandler, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        host = str(client_address[0])
        with self._open_lock:
            if self._open[host] >= self.per_address:
                full = True
            else:
                full = False
                self._open[host] += 1
        if full:
            log.debug("DICOM connection from %s closed: %d already open from that address "
                     "(dicom.max_connections_per_address)", host, self.per_address)
        return not full

    def connection_ended(self, host: str, assoc) -> None:
        with self._open_lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]
        # an abandoned C-STORE (aborted mid-transfer) leaves its spool behind: drop it
        sink = getattr(getattr(getattr(assoc, "dimse", None), "message", None), "_data_set_file", None)
        if isinstance(sink, StoreSink):
            sink.close()
        if assoc is not None and self._on_end is not None:
            try:
                self._on_end(assoc)
            except Exception:  # a summary that cannot be written must not break the receiver
                log.exception("end-of-association handler failed")

    def open_connections(self) -> dict[str, int]:
        with self._open_lock:
            return dict(self._open)


def start_server(ae: AE, address, *, evt_handlers, ssl_context=None, per_address: int, new_sink,
                 on_end=None) -> GuardedServer:
    """What `AE.start_server(block=False)` does, with the GuardedServer."""
    server = ae.make_server(address, evt_handlers=evt_handlers, ssl_context=ssl_context,
                            server_class=GuardedServer, per_address=per_address, new_sink=new_sink,
                            on_end=on_end)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


class AssociationTally:
    """Counts kept per association and audited as one summary event when the connection
    ends (an event per message would flood the audit chain during a cine burst). A
    subclass names its `ACTION`, its fresh `COUNTS` and the event's `outcome`."""

    ACTION = ""
    COUNTS: dict[str, int] = {}

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()
        self._by_assoc: dict[int, dict] = {}

    def _add(self, assoc, **increments) -> None:
        with self._lock:
            t = self._by_assoc.setdefault(id(assoc), dict(self.COUNTS))
            for k, v in increments.items():
                t[k] += v

    def outcome(self, counts: dict) -> str:
        raise NotImplementedError

    def on_end(self, assoc) -> None:
        with self._lock:
            t = self._by_assoc.pop(id(assoc), None)
        if t is None:
            return
        from ..store import accounts
        ae = str(assoc.requestor.ae_title or "").strip()
        try:
            accounts.audit_append(self._store, actor=f"dicom:{ae}"[:80], action=self.ACTION,
                                  object=str(assoc.requestor.address), outcome=self.outcome(t), detail=t)
        except Exception as exc:  # a locked or full store must not break the receiver
            log.info("%s summary not audited: %s", self.ACTION, type(exc).__name__)
