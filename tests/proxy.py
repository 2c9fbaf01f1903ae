"""A TCP proxy for tests, between the kit and the hospital, that misbehaves on demand.

Each client connection carries one HTTP request: the proxy reads the request head,
rewrites `Connection` to `close` (so keep-alive cannot smuggle a second request past it),
then either answers itself (`respond_with`, `intercept`) or forwards and pipes both ways,
subject to:

    rate            bytes/s shared by all connections (a slow link), None = no limit
    stalled         hold every byte (a link that hangs) while set
    cut_after       cut the next forwarded requests whose body is longer than the value,
                    after that many bytes (list, FIFO)
    refuse          accept and close at once (hospital unreachable)
    respond_with    canned (status, body, headers) answers for the next requests (FIFO)
    intercept       fn(head: bytes, body: bytes) -> (status, body, headers) | None

Counters: bytes_up (towards the hospital), requests, cuts.
"""

from __future__ import annotations

import socket
import threading
import time


class _Cut(OSError):
    pass


class _Bucket:
    def __init__(self):
        self.lock = threading.Lock()
        self.allow = 0.0
        self.last = time.monotonic()

    def take(self, n: int, rate: float | None, stop: threading.Event) -> None:
        if not rate:
            return
        with self.lock:
            now = time.monotonic()
            self.allow = min(rate * 0.05, self.allow + (now - self.last) * rate)
            self.last = now
            self.allow -= n
            wait = -self.allow / rate if self.allow < 0 else 0.0
        if wait > 0:
            stop.wait(wait)


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 409: "Conflict",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Proxy:
    CHUNK = 16 * 1024

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.rate: float | None = None
        self.stalled = threading.Event()
        self.cut_after: list[int] = []
        self.refuse = False
        self.respond_with: list[tuple[int, bytes, dict]] = []
        self.intercept = None
        self.bytes_up = 0
        self.requests = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._bucket_up = _Bucket()
        self._bucket_down = _Bucket()
        self._stop = threading.Event()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)
        self._thread.start()

    def url(self, path: str = "/dicom-web") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._srv.close()
        with self._lock:
            for c in list(self._conns):
                _close(c)

    def cut_all(self) -> None:
        """Drop every open connection now (the link goes away mid-transfer)."""
        with self._lock:
            conns = list(self._conns)
            self.cuts += 1
        for c in conns:
            _close(c)

    # ------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                continue
            if self.refuse:
                _close(client)
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _track(self, s: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(s)

    def _handle(self, client: socket.socket) -> None:
        self._track(client, True)
        upstream = None
        try:
            client.settimeout(30)
            head, rest = _read_head(client)
            if head is None:
                return
            length = _content_length(head)
            with self._lock:
                self.requests += 1
                canned = self.respond_with.pop(0) if self.respond_with else None
                # a cut is armed on the next forwarded request whose body is long enough
                cut = None
                if canned is None and self.cut_after and length > self.cut_after[0]:
                    cut = self.cut_after.pop(0)
            if canned is not None or self.intercept is not None:
                body = rest + _read_exact(client, max(0, length - len(rest)))
                answer = canned or self.intercept(head, body)
                if answer is not None:
                    _answer(client, *answer)
                    return
                rest = body
            head = _force_close(head)
            upstream = socket.create_connection(self.upstream, timeout=30)
            self._track(upstream, True)
            sent = [0]  # request bytes forwarded on this connection (for cut_after)
            down = threading.Thread(target=self._pipe, args=(upstream, client, False, None, sent), daemon=True)
            down.start()
            self._send(upstream, head + rest, True, cut, sent)
            self._pipe(client, upstream, True, cut, sent)
            down.join(60)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    self._track(s, False)
                    _close(s)

    def _send(self, dst, data: bytes, up: bool, cut: int | None, sent: list) -> None:
        for i in range(0, len(data), self.CHUNK):
            piece = data[i:i + self.CHUNK]
            while self.stalled.is_set() and not self._stop.is_set():
                time.sleep(0.05)
            (self._bucket_up if up else self._bucket_down).take(len(piece), self.rate, self._stop)
            if up:
                with self._lock:
                    if cut is not None and sent[0] + len(piece) > cut:
                        self.cuts += 1
                        raise _Cut("cut")
                    self.bytes_up += len(piece)
                    sent[0] += len(piece)
            dst.sendall(piece)

    def _pipe(self, src, dst, up: bool, cut: int | None, sent: list) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(self.CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    break
                self._send(dst, data, up, cut, sent)
        except _Cut:
            _close(src)
            _close(dst)
        except OSError:
            pass
        finally:
            if not up:
                # response finished (upstream closed): close the client side too
                _close(dst)
            else:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(16384)
        if not data:
            return None, b""
        buf += data
        if len(buf) > 65536:
            return None, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        data = sock.recv(min(n, 65536))
        if not data:
            break
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return 0
    return 0


def _force_close(head: bytes) -> bytes:
    lines = [l for l in head.rstrip(b"\r\n").split(b"\r\n")
             if not l.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


def _answer(sock: socket.socket, status: int, body: bytes, headers: dict | None = None) -> None:
    hdrs = {"Content-Length": str(len(body)), "Connection": "close"}
    hdrs.update(headers or {})
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    sock.sendall(head.encode("latin-1") + body)
