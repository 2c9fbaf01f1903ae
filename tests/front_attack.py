"""Misbehaving HTTPS clients for the availability test and benchmark of the web front.

`Attack(port, idle=100, slow=40)` keeps `idle` TCP connections that never send a byte and
`slow` TLS connections that send their request head one byte a second, from several loopback
addresses (127.0.0.10 and up, a few connections each, as several machines on the Wi-Fi
would), re-opening whatever the server closes. It runs in two threads until `stop()`;
every loop is bounded by the attack's lifetime and every socket has a timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from kitproc import readable

SLOW_HEAD = b"GET /dicom-web/studies HTTP/1.1\r\nHost: kit\r\nX-Slow: " + b"a" * 4000


def source(i: int, per_address: int = 10) -> str:
    """The loopback address of attacker connection i (Linux routes all of 127/8 to lo)."""
    return f"127.0.0.{10 + i // per_address}"


def connect(port: int, src: str, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))


CBC_ONLY = ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256", "AES128-SHA:AES256-SHA")


def assert_aead_only(port: int, src: str = "127.0.0.1") -> None:
    """What the kit's listeners offer (HTTPS and DICOM over TLS alike): a client offering only
    CBC suites over TLS 1.2 is refused, the default one gets AES-GCM or ChaCha20, TLS 1.3 works."""
    import pytest

    def handshake(ciphers: str | None, version: ssl.TLSVersion):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = version
        if ciphers:
            ctx.set_ciphers(ciphers)
        with ctx.wrap_socket(connect(port, src)) as s:
            return s.version(), s.cipher()[0]

    for cbc in CBC_ONLY:
        with pytest.raises(ssl.SSLError):
            handshake(cbc, ssl.TLSVersion.TLSv1_2)
    version, cipher = handshake(None, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    assert handshake(None, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server has closed this connection (without waiting)."""
    if not readable(sock, 0):
        return False
    if isinstance(sock, ssl.SSLSocket):  # TLS 1.3 session tickets make it readable too: look inside
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            sock.recv(1)
            return True  # an answer (an error page) to a request we never finished: it gave up on us
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""  # readable: this does not wait
    except BlockingIOError:
        return False
    except OSError:
        return True


class Attack:
    def __init__(self, port: int, idle: int = 100, slow: int = 40, max_seconds: float = 120.0):
        self.port, self.idle_n, self.slow_n = port, idle, slow
        self.until = time.monotonic() + max_seconds  # a hard bound even if stop() is never called
        self.stopping = threading.Event()
        self.idle: list[socket.socket | None] = [None] * idle
        self.slow: list[tuple[ssl.SSLSocket, int] | None] = [None] * slow
        self.opened = {"idle": 0, "slow": 0}
        self.closed_by_server = {"idle": 0, "slow": 0}
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.threads = [threading.Thread(target=self._keep_idle, daemon=True),
                        threading.Thread(target=self._keep_slow, daemon=True)]

    def __enter__(self) -> "Attack":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.until

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        for s in self.idle:
            if s is not None:
                s.close()
        for entry in self.slow:
            if entry is not None:
                entry[0].close()

    def _keep_idle(self) -> None:
        while self.running():
            for i in range(self.idle_n):
                if not self.running():
                    return
                s = self.idle[i]
                if s is not None and not closed_by_peer(s):
                    continue
                if s is not None:
                    s.close()
                    self.closed_by_server["idle"] += 1
                try:
                    self.idle[i] = connect(self.port, source(i))
                    self.opened["idle"] += 1
                except OSError:
                    self.idle[i] = None
            self.stopping.wait(0.2)

    def _keep_slow(self) -> None:
        while self.running():
            for i in range(self.slow_n):
                if not self.running():
                    return
                entry = self.slow[i]
                if entry is not None:
                    sock, sent = entry
                    try:
                        if closed_by_peer(sock):
                            raise ConnectionResetError
                        sock.send(SLOW_HEAD[sent:sent + 1])  # one more byte of a head that never ends
                        self.slow[i] = (sock, sent + 1)
                        continue
                    except OSError:
                        sock.close()
                        self.closed_by_server["slow"] += 1
                        self.slow[i] = None
                try:
                    raw = connect(self.port, source(self.idle_n + i))
                    sock = self.ctx.wrap_socket(raw)  # the handshake (5 s timeout)
                    sock.send(SLOW_HEAD[:1])
                    self.slow[i] = (sock, 1)
                    self.opened["slow"] += 1
                except OSError:
                    self.slow[i] = None
            self.stopping.wait(1.0)


def tablet_polls(url: str, ca: str, headers: dict, seconds: float, timeout: float = 5.0) -> list[float]:
    """A tablet asking every 0.2 s on a new connection each time: the seconds each answer took
    (the timeout for one that failed)."""
    import requests

    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            r = requests.get(url, headers={**headers, "Connection": "close"}, verify=ca, timeout=timeout)
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        took.append(time.monotonic() - t0 if ok else timeout)
        time.sleep(0.2)
    return took
