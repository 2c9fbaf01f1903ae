"""The HTTPS front: one selector thread accepts connections, does the TLS handshake and
reads the request headers, with deadlines and connection caps; only a connection with a
complete request head reaches cheroot's worker threads.

cheroot alone handshakes on its single accept thread and reads headers on its workers, so
one client that connects and says nothing stalls every tablet, and a few dozen clients that
send headers a byte at a time take every worker. Here a silent or slow client costs one file
descriptor until its deadline, and an address can hold only so many of those.

    server = FrontServer(addr, app, handshake_timeout_s=5, header_timeout_s=10,
                         max_connections_per_address=32, max_connections=256, numthreads=32)
    server.ssl_adapter = ...        # a cheroot BuiltinSSLAdapter (its `context` does the handshakes)
    server.prepare(); server.serve()   # serve() runs the front loop until stop()
"""

from __future__ import annotations

import collections
import logging
import queue
import selectors
import socket
import ssl
import threading
import time

from cheroot import server as cheroot_server
from cheroot import wsgi

log = logging.getLogger(__name__)

TLS_RECORD_HANDSHAKE = 0x16
DEFAULT_HEAD_LIMIT = 64 << 10
KEEPALIVE_IDLE_S = 30.0  # how long a served connection may wait for its next request
PLAIN_HTTP_REFUSAL = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                      b"Content-Length: 47\r\n\r\nThis port speaks HTTPS only: use https:// here.")


class _Pending:
    """A connection the front holds: not yet handshaken, or waiting for a complete request head."""
    __slots__ = ("sock", "fd", "addr", "port", "stage", "deadline", "head", "conn", "opened")

    def __init__(self, sock, addr, deadline, stage="hello", conn=None):
        self.sock, self.addr, self.deadline, self.stage, self.conn = sock, addr, deadline, stage, conn
        self.head = bytearray()
        self.fd, self.port = -1, 0
        self.opened = time.monotonic()


class _Connection(cheroot_server.HTTPConnection):
    """cheroot's connection, which tells the front when it closes (for the per-address count)."""
    _release = None

    def close(self):
        try:
            super().close()
        finally:
            release, self._release = self._release, None
            if release:
                release()


class FrontServer(wsgi.Server):
    ConnectionClass = _Connection

    def __init__(self, bind_addr, app, *, handshake_timeout_s: float, header_timeout_s: float,
                 max_connections_per_address: int, max_connections: int, **kwargs):
        kwargs.setdefault("request_queue_size", 128)  # the front accepts at once; a burst waits in the kernel
        super().__init__(bind_addr, app, **kwargs)
        self.handshake_timeout_s = float(handshake_timeout_s)
        self.header_timeout_s = float(header_timeout_s)
        self.max_per_address = int(max_connections_per_address)
        self.max_connections = int(max_connections)
        self._open: collections.Counter = collections.Counter()  # address -> open connections
        self._count_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # fd -> connection held by the front
        self._returns: queue.SimpleQueue = queue.SimpleQueue()  # keep-alive connections back from workers
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = None
        self._front_stop = threading.Event()
        self._front_done = threading.Event()

    # -- cheroot hooks ------------------------------------------------------------------------
    def serve(self):
        """Run the front loop (instead of cheroot's accept loop) until stop()."""
        self.socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while self.ready and not self._front_stop.is_set():
                try:
                    self._tick()
                except Exception:  # a bug must not end HTTPS for every tablet (cheroot's loop does the same)
                    log.exception("error in the HTTPS front loop")
                    self._front_stop.wait(0.1)
        finally:
            for p in list(self._pending.values()):
                self._drop(p)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self._front_done.set()

    def put_conn(self, conn):
        """A worker finished a request on a keep-alive connection: the front waits for the next."""
        if not self.ready or self._front_stop.is_set():
            conn.close()
            return
        self._returns.put(conn)
        try:
            self._wake_w.send(b"\0")
        except OSError:  # wake-up pipe full: the loop is awake anyway
            pass

    def stop(self):
        self._front_stop.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass
            self._front_done.wait(5)  # the loop lets go of the listener before cheroot closes it
        super().stop()

    # -- the loop -----------------------------------------------------------------------------
    def _tick(self):
        now = time.monotonic()
        nearest = min((p.deadline for p in self._pending.values()), default=now + 0.5)
        for key, _events in self._selector.select(timeout=max(0.0, min(0.5, nearest - now))):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._step(key.data)
        self._take_returns()
        now = time.monotonic()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            log.debug("connection from %s dropped: %s deadline passed", p.addr, p.stage)
            self._drop(p)

    def _accept(self):
        for _ in range(64):  # bounded per tick, so deadlines and returns are looked at
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, or the listener closed at stop
                log.warning("accept failed: %s", e)
                self._front_stop.wait(0.1)  # the listener stays readable: do not spin
                return
            host = addr[0] if isinstance(addr, tuple) else ""
            if not self._admit(host):
                log.debug("connection from %s refused: too many open", host)
                sock.close()
                continue
            sock.setblocking(False)
            p = _Pending(sock, host, time.monotonic() + self.handshake_timeout_s)
            p.port = addr[1] if isinstance(addr, tuple) else 0
            self._hold(p)

    def _admit(self, host: str) -> bool:
        with self._count_lock:
            if self._open[host] >= self.max_per_address:
                return False
            if sum(self._open.values()) >= self.max_connections:
                # full: make room by dropping the oldest connection that has not yet sent a request
                waiting = [p for p in self._pending.values() if p.conn is None]
                if not waiting:
                    return False
                oldest = min(waiting, key=lambda p: p.opened)
            else:
                oldest = None
            self._open[host] += 1
        if oldest is not None:
            log.debug("connection from %s dropped to make room", oldest.addr)
            self._drop(oldest)
        return True

    def _release(self, host: str):
        with self._count_lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def _hold(self, p: _Pending, events=selectors.EVENT_READ):
        p.fd = p.sock.fileno()
        self._pending[p.fd] = p
        self._selector.register(p.fd, events, p)

    def _unhold(self, p: _Pending):
        if self._pending.pop(p.fd, None) is not None:
            self._selector.unregister(p.fd)

    def _drop(self, p: _Pending):
        if p.stage == "closed":
            return
        p.stage = "closed"
        self._unhold(p)
        if p.conn is not None:
            p.conn.close()  # releases its count
            return
        try:
            p.sock.close()
        finally:
            self._release(p.addr)

    def _step(self, p: _Pending):
        try:
            if p.stage == "hello":
                self._hello(p)
            if p.stage == "handshake":
                self._handshake(p)
            if p.stage in ("headers", "idle"):
                self._read_head(p)
        except (ssl.SSLError, OSError) as e:  # a client that went away, or spoke nonsense
            log.debug("connection from %s closed during %s: %s", p.addr, p.stage, e.__class__.__name__)
            self._drop(p)

    def _hello(self, p: _Pending):
        first = p.sock.recv(1, socket.MSG_PEEK)
        if not first:
            raise ConnectionResetError("closed before the TLS handshake")
        if first[0] != TLS_RECORD_HANDSHAKE:  # plain HTTP on the HTTPS port: say so, then close
            try:
                p.sock.send(PLAIN_HTTP_REFUSAL)
            finally:
                self._drop(p)
            return
        self._unhold(p)
        p.sock = self.ssl_adapter.context.wrap_socket(p.sock, server_side=True, do_handshake_on_connect=False)
        p.stage = "handshake"
        self._hold(p)

    def _handshake(self, p: _Pending):
        try:
            p.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(p.fd, selectors.EVENT_READ, p)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(p.fd, selectors.EVENT_WRITE, p)
            return
        self._selector.modify(p.fd, selectors.EVENT_READ, p)
        p.stage = "headers"
        p.deadline = time.monotonic() + self.header_timeout_s

    def _read_head(self, p: _Pending):
        for _ in range(8):  # bounded: a head is at most max_request_header_size
            try:
                data = p.sock.recv(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                return
            if not data:
                raise ConnectionResetError("closed before a complete request head")
            if p.stage == "idle":  # a kept-alive connection starts its next request now
                p.stage = "headers"
                p.deadline = time.monotonic() + self.header_timeout_s
            seen = len(p.head)
            p.head += data
            # look only at what is new (a head sent a byte at a time must not cost its square);
            # leading blank lines end the search early, and cheroot then answers 400 at once
            if p.head.find(b"\r\n\r\n", max(0, seen - 3)) >= 0 or len(p.head) > self._head_limit():
                self._hand_over(p)  # cheroot refuses an oversized head itself (413)
                return

    def _head_limit(self) -> int:
        # cheroot's 0 means "no limit"; the front still needs one to bound what it buffers
        return self.max_request_header_size or DEFAULT_HEAD_LIMIT

    def _hand_over(self, p: _Pending):
        self._unhold(p)
        p.sock.settimeout(self.timeout)
        conn = p.conn
        if conn is None:
            conn = self.ConnectionClass(self, p.sock, self.ssl_adapter.makefile)
            conn.remote_addr, conn.remote_port = p.addr, p.port
            conn.ssl_env = self.ssl_adapter.get_environ(p.sock)
            conn._release = lambda host=p.addr: self._release(host)
        _prime(conn.rfile, bytes(p.head))
        self.process_conn(conn)

    def _take_returns(self):
        while True:
            try:
                conn = self._returns.get_nowait()
            except queue.Empty:
                return
            if conn.rfile.has_data():  # a pipelined request is already buffered
                self.process_conn(conn)
                continue
            try:
                conn.socket.setblocking(False)
                p = _Pending(conn.socket, conn.remote_addr, time.monotonic() + KEEPALIVE_IDLE_S,
                             stage="idle", conn=conn)
                self._hold(p)
            except OSError:
                conn.close()
                continue
            if conn.socket.pending():  # TLS already decrypted bytes the selector cannot see
                self._step(p)


def _prime(rfile, data: bytes) -> None:
    """Put bytes the front already read at the head of cheroot's reader (a pure-Python
    BufferedReader: its buffer is `_read_buf` from `_read_pos`, which cheroot's own
    `has_data()` reads too)."""
    if not data:
        return
    with rfile._read_lock:
        rest = rfile._read_buf[rfile._read_pos:]
        rfile._read_buf = data + rest
        rfile._read_pos = 0
