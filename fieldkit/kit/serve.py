"""`fieldkit serve`: the HTTPS server (cheroot behind the front, TLS), the control socket
and every background service of registry.SERVICES, as threads of this one process, until
SIGTERM/SIGINT; and the process set-up it needs (logging through redaction, malloc arenas,
highdicom's standard tables held compactly)."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time

from ..config import Config
from ..dicom import standard_tables
from .control import SOCKET_FILE, ControlServer
from .core import RUN_FILE, Kit

log = logging.getLogger("fieldkit")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each busy thread its own malloc arena and keeps what it freed there:
    with HTTP, DIMSE and ingest threads each passing objects of a few MB through, the
    kit's resident memory grew by ~30 MB of idle arenas. Two arenas serve two cores."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def release_freed_heap() -> bool:
    """Give the system back the heap pages glibc keeps after a burst. Requests of the
    board, QIDO and C-STORE leave many small freed chunks between live ones; free() only
    returns memory at the top of the heap, so without this the kit's resident memory stays
    at its busiest (80-100 MB of it at 100 000 rows under 20 tablets). malloc_trim(0)
    releases the free pages anywhere in the heap. False where there is no glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True


_malloc_trim = None
TRIM_EVERY_S = 20  # short enough that a burst's pages go back soon; a trim takes milliseconds

# Library chatter nobody at the kit can act on, kept off the console: highdicom says which
# module it copies for every report it builds (INFO), and pynetdicom warns at start-up
# that the kit's video and private syntaxes are "not a transfer syntax" it knows. Their
# errors (and highdicom's warnings) still show.
QUIET_LOGGERS = {"highdicom": logging.WARNING, "pynetdicom.presentation": logging.ERROR}


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    from ..security.redact import install  # secrets and patient data never reach a log
    install()


def _tls_adapter(cert: str, key: str):
    """cheroot's TLS adapter, with a socket reader that reads request bodies in one go.

    cheroot reads sockets through pure-Python buffered I/O, which fetches a large read one
    TLS record (16 KiB) at a time into a fresh buffer the size of the whole read: for a
    STOW-RS body that is most of the server's time. Reads of 64 KiB to 16 MiB go straight
    from the socket into a single buffer; request lines and headers are read as before."""
    from cheroot.makefile import StreamReader
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    from ..security.tls import harden_tls

    class BodyReader(StreamReader):
        def read(self, size=-1):
            if size is None or not (64 << 10) <= size <= (16 << 20):  # the kit reads bodies in 1 MiB
                return super().read(size)
            with self._read_lock:
                buffered = self._read_buf[self._read_pos:self._read_pos + size]
                self._read_pos += len(buffered)
                buf = bytearray(size)
                buf[:len(buffered)] = buffered
                got, view = len(buffered), memoryview(buf)
                while got < size:
                    n = self.raw.readinto(view[got:])
                    if not n:  # end of stream (or a non-blocking socket with nothing yet)
                        break
                    got += n
                view.release()
            self.bytes_read += got
            del buf[got:]
            return bytes(buf)

    class Adapter(BuiltinSSLAdapter):
        def makefile(self, sock, mode="r", bufsize=-1):
            if "r" in mode:
                return BodyReader(sock, mode, bufsize if bufsize > 0 else 8192)
            return super().makefile(sock, mode, bufsize)

    adapter = Adapter(cert, key)
    harden_tls(adapter.context)
    return adapter


def serve(kit: Kit, bind: str | None = None, http_port: int | None = None,
          dicom_port: int | None = None, ready=None) -> None:
    """Run until SIGTERM/SIGINT: HTTPS (cheroot behind the front, TLS), control socket, every service."""
    from ..security.tls import SERVER_CERT, TLS_DIR, server_key_path
    from ..web import create_app
    from ..web.front import FrontServer

    limit_malloc_arenas()
    standard_tables.install()  # before any thread builds a report (68 MB less resident)
    overrides = {}
    if bind is not None:
        overrides["http.bind"] = overrides["dicom.bind"] = bind  # DICOM (and DICOM TLS) too
    if http_port is not None:
        overrides["http.port"] = http_port
    if dicom_port is not None:
        overrides["dicom.port"] = dicom_port
    if overrides:
        values = kit.config.as_dict()
        values.update(overrides)
        kit.config = Config(values)

    app = create_app(kit)
    # The catalogue lives in memory as many small objects that stay for the whole run;
    # the cyclic collector need not walk them again and again (with 100 000 instances a
    # full collection is a visible pause in the middle of a C-STORE burst).
    gc.freeze()
    # TLS handshakes and request heads are read by the front's selector thread under deadlines
    # and caps; cheroot's workers only see connections with a complete request head.
    server = FrontServer((kit.config["http.bind"], kit.config["http.port"]), app,
                         handshake_timeout_s=kit.config["http.handshake_timeout_s"],
                         header_timeout_s=kit.config["http.header_timeout_s"],
                         max_connections_per_address=kit.config["http.max_connections_per_address"],
                         max_connections=kit.config["http.max_connections"],
                         numthreads=kit.config["http.threads"], server_name="fieldkit",
                         timeout=30, shutdown_timeout=5)
    server.max_request_body_size = kit.config["http.max_request_mb"] * (1 << 20)
    server.max_request_header_size = 64 * 1024  # oversized headers are refused (413), not buffered
    from ..security.redact import cheroot_error_log
    server.error_log = cheroot_error_log()  # cheroot writes to stderr itself: route it through redaction
    tls = kit.data_dir / TLS_DIR
    with server_key_path(kit.data_dir, None if kit.locked else kit.store.secrets) as key:
        server.ssl_adapter = _tls_adapter(str(tls / SERVER_CERT), key)  # the key is read here, once
    server.prepare()
    kit.http_port = server.bind_addr[1]

    control = ControlServer(kit, kit.data_dir / SOCKET_FILE)
    control.start()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if kit.locked:
            kit.start_locked_services()
        else:
            kit.start_services()
        host = kit.config["http.bind"]
        shown = "localhost" if host in ("0.0.0.0", "127.0.0.1", "::") else host
        info = {"pid": os.getpid(), "url": f"https://{shown}:{kit.http_port}/", "http_port": kit.http_port,
                "dicom_port": kit.dicom_port, "dicom_tls_port": kit.dicom_tls_port,
                "ae_title": kit.config["dicom.ae_title"]}
        (kit.data_dir / RUN_FILE).write_text(json.dumps(info) + "\n")
        print(f"fieldkit {kit.version} serving {info['url']} (DICOM port {kit.dicom_port}, "
              f"AE title {info['ae_title']}); Ctrl-C to stop", flush=True)
        if ready:
            ready(info)
        http = threading.Thread(target=server.serve, name="https", daemon=True)
        http.start()
        trimmed = time.monotonic()
        while not stop.wait(0.5) and http.is_alive():
            if time.monotonic() - trimmed >= TRIM_EVERY_S:
                release_freed_heap()
                trimmed = time.monotonic()
    finally:
        stop.set()
        server.stop()
        control.stop()
        kit.close()
        (kit.data_dir / RUN_FILE).unlink(missing_ok=True)
        log.info("fieldkit stopped")
