"""Pending C-FIND answers written as ready-made P-DATA-TF PDUs, for answers already encoded.

Why: pynetdicom turns every answer into a primitive, a message, P-DATA primitives, PDU
objects and bytes, with its event machinery around each step: about a millisecond of
Python per answer, where the answer itself (encoded once and cached by the caller) costs
nothing. Here the C-FIND-RSP command set is encoded once per query (only
MessageIDBeingRespondedTo changes between queries), and each Pending answer becomes the
bytes PS3.8 9.3.5 describes (PDU type 0x04, length, then PDVs: length, presentation
context ID, message control header), fragmented to the peer's maximum PDU length.

How the bytes reach the peer without bypassing pynetdicom: a batch is queued on the
association's upper layer (DUL) as an empty P-DATA, in order with everything else queued
there; the DUL thread encodes it as an empty P-DATA-TF (a PDU pynetdicom never sends
otherwise) and hands it to the socket, which sends the batch in its place in one
`sendall`. So the socket is still written by the DUL thread alone (the one reading it,
which TLS needs), no PDU of another message can land inside a batch, and the final
status goes through pynetdicom's normal path afterwards, keeping its state right.
C-CANCEL is honoured between batches. Anything unusual (no PDU length worth fragmenting
to, an association not in data transfer, a socket that is not pynetdicom's) answers
None and the caller yields its answers the normal way.

Usage, inside an EVT_C_FIND handler (a generator):

    sent = fast_find.send_pending(event, encoded_identifiers)
    if sent is None:   yield each (0xFF00, dataset) as usual
    elif sent.cancelled: yield 0xFE00, None; return
    ...then the final status as usual.
"""

from __future__ import annotations

import collections
import logging
import socket as socket_module
import struct
import threading
import time
from io import BytesIO
from typing import NamedTuple, Sequence

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

PENDING = 0xFF00
BATCH_BYTES = 64 * 1024  # a few hundred answers: the granularity of C-CANCEL
MIN_PDU = 64  # below this a command set alone takes several PDUs: the normal path (pathological)
_EMPTY_P_DATA_TF = b"\x04\x00\x00\x00\x00\x00"
_COMMAND, _DATA = 0x01, 0x00  # message control header bits (PS3.8 E.2)
_LAST = 0x02


class Sent(NamedTuple):
    count: int  # Pending answers written
    cancelled: bool  # a C-CANCEL stopped them: the caller answers Cancel (0xFE00)


def pending_command(request) -> bytes:
    """The C-FIND-RSP command set of a Pending answer to `request`, encoded (Implicit VR
    Little Endian, PS3.7 6.3.1) by pynetdicom itself, so it is byte for byte the one its
    normal path would send."""
    rsp = C_FIND()
    rsp.MessageID = request.MessageID
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
    rsp.Status = PENDING
    rsp.Identifier = BytesIO(b"\x00")  # only says "a data set follows" (CommandDataSetType)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    return encode(message.command_set, True, True)


def _pdu(context_id: int, pdvs: Sequence[tuple[int, bytes]]) -> bytes:
    items = b"".join(struct.pack(">IBB", len(value) + 2, context_id, header) + value for header, value in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(items)) + items


def message_pdus(context_id: int, command: bytes, data: bytes, max_pdu: int) -> bytes:
    """One DIMSE message (command set and data set) as P-DATA-TF PDUs: one PDU holding
    both PDVs when they fit in `max_pdu` (the peer's maximum length of a PDU's variable
    field; 0 = no limit), else each part in fragments of at most `max_pdu` - 6 bytes,
    one PDV per PDU, as pynetdicom fragments."""
    if not max_pdu or len(command) + len(data) + 12 <= max_pdu:
        return _pdu(context_id, ((_COMMAND | _LAST, command), (_DATA | _LAST, data)))
    size = max_pdu - 6
    out = []
    for kind, part in ((_COMMAND, command), (_DATA, data)):
        pieces = [part[i:i + size] for i in range(0, len(part), size)] or [b""]
        for n, piece in enumerate(pieces):
            out.append(_pdu(context_id, ((kind | (_LAST if n == len(pieces) - 1 else 0), piece),)))
    return b"".join(out)


class _Batch(P_DATA):
    """Holds a batch's place in the DUL's queue (no PDV: the DUL encodes it as an empty
    P-DATA-TF, which the socket replaces by the batch)."""

    def __init__(self, data: bytes):
        super().__init__()
        self.data = data
        self.written = threading.Event()


def _adopt(socket) -> None:
    """Let the association's socket send batches in place of their empty P-DATA-TF."""
    if getattr(socket, "_fast_find_batches", None) is not None:
        return
    batches: collections.deque[_Batch] = collections.deque()
    send = socket.send

    def send_or_batch(bytestream) -> None:
        if len(bytestream) != len(_EMPTY_P_DATA_TF) or bytes(bytestream) != _EMPTY_P_DATA_TF:
            return send(bytestream)
        try:
            batch = batches.popleft()
        except IndexError:  # no batch waiting: an empty P-DATA-TF is never sent
            return None
        try:
            send(batch.data)
        finally:
            batch.written.set()
        return None

    socket._fast_find_batches = batches
    socket.send = send_or_batch  # this socket only; pynetdicom's DUL calls socket.send


def usable(event) -> bool:
    """Whether this association can take the lean path now."""
    try:
        assoc = event.assoc
        socket = assoc.dul.socket
        max_pdu = int(assoc.requestor.maximum_length or 0)
        return (assoc.is_established and assoc.is_acceptor and socket is not None
                and getattr(socket, "socket", None) is not None
                and assoc.dul.state_machine.current_state == "Sta6"
                and (max_pdu == 0 or max_pdu >= MIN_PDU))
    except Exception:  # anything unexpected: the normal path
        return False


def send_pending(event, identifiers: Sequence[bytes]) -> Sent | None:
    """Send each encoded identifier (in the context's transfer syntax) as a Pending
    C-FIND-RSP to the peer of `event` (pynetdicom's EVT_C_FIND), in batches, checking for
    a C-CANCEL before each. None: nothing was sent, use the normal path."""
    if not usable(event) or not all(identifiers):  # an empty data set is not an answer
        return None
    assoc = event.assoc
    dul = assoc.dul
    _adopt(dul.socket)
    context_id = int(event.context.context_id)
    max_pdu = int(assoc.requestor.maximum_length or 0)
    command = pending_command(event.request)
    patience = float(assoc.network_timeout or 60)
    sent = 0
    while sent < len(identifiers):
        if event.is_cancelled:
            return Sent(sent, True)
        chunk, size = [], 0
        while sent + len(chunk) < len(identifiers) and size < BATCH_BYTES:
            chunk.append(message_pdus(context_id, command, identifiers[sent + len(chunk)], max_pdu))
            size += len(chunk[-1])
        batch = _Batch(b"".join(chunk))
        dul.socket._fast_find_batches.append(batch)
        dul.send_pdu(batch)
        # wait until written: a C-CANCEL read meanwhile is seen before the next batch
        deadline = time.monotonic() + patience
        while not batch.written.wait(0.5):
            if not assoc.is_established:  # aborted or closed meanwhile: nothing more to send
                return Sent(sent, True)
            if time.monotonic() > deadline:
                # a peer that reads nothing for the idle timeout: close the connection (the
                # DUL thread, blocked sending, then sees it closed and ends the association)
                log.info("C-FIND answers to %s not taken in %.0f s: connection closed",
                         str(assoc.requestor.ae_title).strip(), patience)
                try:
                    dul.socket.socket.shutdown(socket_module.SHUT_RDWR)
                except OSError:
                    pass
                return Sent(sent, True)
        sent += len(chunk)
    return Sent(sent, False)
