"""The HTTPS front holds up against clients that connect and stall (real sockets on loopback).

- 100 idle TCP connections and 40 TLS clients sending their headers a byte a second, from
  several addresses and re-opened as the kit closes them: a tablet polling on fresh
  connections gets every answer within 1 s.
- A connection that never sends a ClientHello is closed at the handshake deadline; one that
  never finishes its request head at the header deadline; the per-address cap closes the
  one connection too many at once, and an address below the cap is served.
- TLS 1.2 offers AEAD suites only (a CBC-only client is refused); TLS 1.3 works; a kept-alive
  connection serves request after request.
"""

from __future__ import annotations

import ssl
import statistics
import time

import pytest
import requests

from front_attack import Attack, assert_aead_only, closed_by_peer, connect, tablet_polls
from kitproc import KitProcess, init_kit, run_cli, set_config, wait_until

pytestmark = pytest.mark.timeout(240)

HANDSHAKE_S, HEADER_S, PER_ADDRESS = 2, 3, 8


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    data_dir = init_kit(tmp_path_factory.mktemp("front") / "kit")
    set_config(data_dir, http__handshake_timeout_s=HANDSHAKE_S, http__header_timeout_s=HEADER_S,
               http__max_connections_per_address=PER_ADDRESS)
    proc = KitProcess(data_dir).start()
    token = run_cli("token", "create", "--data-dir", data_dir, "--role", "dicomweb-client").stdout.split()[-1]
    proc.auth = {"Authorization": f"Bearer {token}"}
    yield proc
    proc.stop()


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _seconds_until_closed(sock, limit: float) -> float:
    t0 = time.monotonic()
    assert wait_until(lambda: closed_by_peer(sock), limit, step=0.05), f"still open after {limit} s"
    return time.monotonic() - t0


def test_tablet_answered_within_a_second_under_idle_and_slow_header_attack(kit):
    url = kit.url + "/dicom-web/studies"
    assert requests.get(url, headers=kit.auth, verify=kit.ca, timeout=10).status_code == 200
    with Attack(kit.http_port, idle=100, slow=40, max_seconds=90) as attack:
        assert wait_until(lambda: attack.opened["idle"] >= 100 and attack.opened["slow"] >= 40, 30), attack.opened
        # longer than both deadlines, so the tablet also polls while the kit closes and the attack re-opens
        took = tablet_polls(url, kit.ca, kit.auth, seconds=HANDSHAKE_S + HEADER_S + 4)
        closed = dict(attack.closed_by_server)
    assert len(took) >= 20
    assert max(took) < 1.0, f"slowest tablet request {max(took):.2f} s (median {statistics.median(took):.3f} s)"
    # the attack was real: the kit cut stalled connections at its deadlines and they came back
    assert closed["idle"] >= 100 and closed["slow"] >= 40, closed
    assert requests.get(url, headers=kit.auth, verify=kit.ca, timeout=10).status_code == 200


def test_silent_connection_closed_at_the_handshake_deadline(kit):
    with connect(kit.http_port, "127.0.0.2") as sock:
        waited = _seconds_until_closed(sock, HANDSHAKE_S + 3)
    assert HANDSHAKE_S - 0.5 <= waited <= HANDSHAKE_S + 1.5, waited


def test_unfinished_request_head_closed_at_the_header_deadline(kit):
    with _tls().wrap_socket(connect(kit.http_port, "127.0.0.3")) as sock:
        sock.send(b"GET /healthz HTTP/1.1\r\nHost: kit\r\n")
        t0 = time.monotonic()
        closed = False
        for _ in range(int((HEADER_S + 3) / 0.25)):  # keep trickling; bounded
            if closed_by_peer(sock):
                closed = True
                break
            try:
                sock.send(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.25)
        waited = time.monotonic() - t0
    assert closed, "a head that never ends kept its connection"
    assert HEADER_S - 0.5 <= waited <= HEADER_S + 1.5, waited


def test_per_address_cap_refuses_one_too_many(kit):
    held = [connect(kit.http_port, "127.0.0.4") for _ in range(PER_ADDRESS)]
    try:
        # each accepted connection is held by the kit (open) until its handshake deadline
        assert not any(closed_by_peer(s) for s in held)
        with connect(kit.http_port, "127.0.0.4") as extra:
            assert _seconds_until_closed(extra, 1.0) < 1.0
        # another address is not affected
        with _tls().wrap_socket(connect(kit.http_port, "127.0.0.5")) as other:
            other.send(b"GET /healthz HTTP/1.1\r\nHost: kit\r\nConnection: close\r\n\r\n")
            assert other.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    # once they are gone the address is served again
    def served():
        try:
            with _tls().wrap_socket(connect(kit.http_port, "127.0.0.4")) as again:
                again.send(b"GET /healthz HTTP/1.1\r\nHost: kit\r\nConnection: close\r\n\r\n")
                return again.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
    assert wait_until(served, 5)


def test_tls12_offers_aead_suites_only(kit):
    assert_aead_only(kit.http_port, "127.0.0.6")


def test_kept_alive_connection_serves_request_after_request(kit):
    with requests.Session() as session:
        for _ in range(20):
            r = session.get(kit.url + "/dicom-web/studies", headers=kit.auth, verify=kit.ca, timeout=10)
            assert r.status_code == 200
        # one pooled connection did all of it
        pool = next(iter(session.adapters["https://"].poolmanager.pools._container.values()))
        assert pool.num_connections == 1
    # a request split across writes and sent with its body is read whole
    with _tls().wrap_socket(connect(kit.http_port, "127.0.0.7")) as s:
        s.settimeout(10)
        s.send(b"GET /heal")
        s.send(b"thz HTTP/1.1\r\nHost: kit\r\n")
        s.send(b"\r\nGET /healthz HTTP/1.1\r\nHost: kit\r\nConnection: close\r\n\r\n")  # and one pipelined
        answer = b""
        for _ in range(50):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:400]


def test_plain_http_on_the_https_port_is_told_to_use_https(kit):
    r = requests.get(f"http://127.0.0.1:{kit.http_port}/healthz", timeout=5)
    assert r.status_code == 400 and "https" in r.text


def test_when_full_the_oldest_silent_connection_makes_room(kit):
    """The kit's server stack in this process with room for 4 connections in all: 4 silent
    ones hold it, and a tablet's request still gets in (the oldest silent one is closed)."""
    import threading

    from fieldkit.kit import unlock_data_key
    from fieldkit.kit.serve import _tls_adapter
    from fieldkit.security.secrets import SecretBox
    from fieldkit.security.tls import server_key_path
    from fieldkit.web.front import FrontServer

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = FrontServer(("127.0.0.1", 0), app, handshake_timeout_s=30, header_timeout_s=30,
                         max_connections_per_address=8, max_connections=4, numthreads=2)
    tls = kit.data_dir / "tls"
    with server_key_path(kit.data_dir, SecretBox(unlock_data_key(kit.data_dir))) as key:  # sealed by the data key
        server.ssl_adapter = _tls_adapter(str(tls / "server.pem"), key)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    port = server.bind_addr[1]
    silent = []
    try:
        for i in range(4):
            silent.append(connect(port, f"127.0.0.{20 + i}"))
        # (accepted in the order they connected, whether or not the front has seen them yet)
        r = requests.get(f"https://127.0.0.1:{port}/", verify=kit.ca, timeout=5)
        assert r.status_code == 200 and r.text == "ok"
        assert _seconds_until_closed(silent[0], 2.0) < 2.0  # the oldest made room
        assert not any(closed_by_peer(s) for s in silent[1:])
    finally:
        for s in silent:
            s.close()
        server.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_garbled_request_heads_get_an_answer_or_a_close_and_the_kit_stays_up(kit):
    import random
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(14)
    seeds = [b"GET / HTTP/1.1\r\nHost: kit\r\n\r\n", b"POST /dicom-web/studies HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde",
             b"\r\n\r\n\r\n", b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 3000 + b"\r\n"]
    heads = []
    for _ in range(40):
        head = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):  # flip, insert or cut bytes
            pos = rng.randrange(len(head) + 1)
            op = rng.randrange(3)
            if op == 0 and pos < len(head):
                head[pos] = rng.randrange(256)
            elif op == 1:
                head[pos:pos] = rng.choice([b"\r\n", b"\0", b":", b"\xff" * 10, b" "])
            else:
                del head[pos:pos + rng.randint(1, 20)]
        heads.append(bytes(head))

    def send(i: int) -> tuple[bytes, bytes]:
        with _tls().wrap_socket(connect(kit.http_port, f"127.0.0.{30 + i % 10}")) as s:
            s.settimeout(HEADER_S + 5)
            s.sendall(heads[i])
            try:
                return heads[i], s.recv(64)
            except (ssl.SSLError, ConnectionError):
                return heads[i], b""

    # ten at a time, one per address (under the per-address cap): a head the kit waits on
    # for its deadline does not hold up the others
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(send, range(len(heads))))
    for head, answer in answers:
        # an HTTP status line or a closed connection, never a hang past the header deadline
        assert answer == b"" or answer.startswith(b"HTTP/1."), (head[:80], answer)
    assert requests.get(kit.url + "/healthz", verify=kit.ca, timeout=10).status_code == 200
    assert "error in the HTTPS front loop" not in kit.log()
    assert "Traceback" not in kit.log()
