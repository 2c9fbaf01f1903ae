"""The running kit: the one place that wires config, keys, store, services and web (layer 4).

`open_kit()` unlocks the data key and opens the store; `serve()` runs the HTTPS server in
the foreground and starts every background service in SERVICES as a thread of this one
process. Commands that change the store while the kit runs reach it through CONTROL_OPS
over a Unix socket (see fieldkit/cli/control.py).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from . import __version__
from .config import Config
from .errors import KitLocked
from .events import EventBus
from .security.keys import Keyring
from .security.tpm import sealer_for
from .store import Store

log = logging.getLogger("fieldkit")

CONFIG_FILE = "fieldkit.toml"
RUN_FILE = "run.json"
SOCKET_FILE = "kit.sock"

# Background services started by `serve`, in order: (name, "module:function").
# Each function takes the Kit and returns an object with .stop(). Add one line per service.
SERVICES: list[tuple[str, str]] = [
    ("autolock", "fieldkit.web.auth:start_autolock"),
    ("audit-sync", "fieldkit.cli.security:start_audit_sync"),
    ("redact-learner", "fieldkit.cli.security:start_redact_learner"),
    ("power", "fieldkit.hardware.service:start"),
    ("clock", "fieldkit.hardware.clock:start"),
    ("dicom", "fieldkit.ingest.dimse:start"),
    ("dicom-tls", "fieldkit.ingest.dimse_tls:start"),
    ("inference", "fieldkit.inference.worker:start"),
    ("sync", "fieldkit.sync.worker:start"),
    ("backup", "fieldkit.cli.backup:start_scheduled"),  # scheduled backups (backup.path)
    ("scrub", "fieldkit.store.scrub:start"),
    ("board", "fieldkit.store.board:start"),  # the board built once at start, kept in order after
]

# What answers for a service while the kit is locked (same names as SERVICES): the DICOM
# receivers stay on their ports and refuse every C-STORE with a status saying why.
LOCKED_SERVICES: list[tuple[str, str]] = [
    ("dicom", "fieldkit.ingest.dimse:start_locked"),
    ("dicom-tls", "fieldkit.ingest.dimse_tls:start_locked"),
]

# Operations the running kit performs for a command line client: op -> "module:function".
# Each function is fn(kit, args: dict, emit) -> JSON-able result; emit(dict) streams progress.
CONTROL_OPS: dict[str, str] = {
    "status": "fieldkit.runtime:op_status",
    "import": "fieldkit.cli.ingest:op_import",  # USB/folder import (ingest)
    **{op: f"fieldkit.cli.probes:op_{op.replace('.', '_')}" for op in ("probes.add", "probes.list", "probes.remove")},
    "backup": "fieldkit.cli.backup:op_backup",  # incremental backup (store.backup)
    "store.scrub": "fieldkit.cli.store:op_scrub",  # verify every stored capture now (doctor --scrub)
    "hospital.set": "fieldkit.cli.sync:op_hospital_set",  # seal hospital secrets, save settings, audit
    # accounts, tokens, audit, lock/erase (security)
    **{op: f"fieldkit.cli.security:op_{op.replace('.', '_')}" for op in (
        "users.add", "users.list", "users.disable", "users.reset", "users.unlock", "token.create",
        "token.list", "token.revoke", "audit.verify", "audit.export", "audit.sync", "lock", "unlock", "erase")},
}


def resolve(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each busy thread its own malloc arena and keeps what it freed there:
    with HTTP, DIMSE and ingest threads each passing objects of a few MB through, the
    kit's resident memory grew by ~30 MB of idle arenas. Two arenas serve two cores."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


# Library chatter nobody at the kit can act on, kept off the console: highdicom says which
# module it copies for every report it builds (INFO), and pynetdicom warns at start-up
# that the kit's video and private syntaxes are "not a transfer syntax" it knows. Their
# errors (and highdicom's warnings) still show.
QUIET_LOGGERS = {"highdicom": logging.WARNING, "pynetdicom.presentation": logging.ERROR}


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    from .security.redact import install  # secrets and patient data never reach a log
    install()


class Kit:
    """What every service and blueprint is given: config, store, paths, events, probes."""

    def __init__(self, data_dir: Path, config: Config, store: Store | None, keyring: Keyring):
        self.data_dir = Path(data_dir)
        self.config = config
        self._store = store
        self.keyring = keyring
        self.version = __version__
        self.started_at = time.time()
        self.services: dict[str, object] = {}
        self.locked_services: dict[str, object] = {}  # LOCKED_SERVICES running while locked
        self.hardware = None  # a hardware probe (fieldkit.hardware) when one is wired
        self.clock_watch = None  # fieldkit.hardware.clock.ClockWatch once serve runs
        self.http_port: int | None = None
        self.dicom_port: int | None = None
        self._events = store.events if store is not None else EventBus()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise KitLocked("the kit is locked: unlock it with the kit passphrase")
        return self._store

    @property
    def events(self):
        return self._events

    @property
    def locked(self) -> bool:
        return self._store is None

    def lock(self, actor: str = "system") -> bool:
        """Drop the data key (see fieldkit.web.auth.lock_kit)."""
        from .web.auth import lock_kit
        return lock_kit(self, actor=actor)

    def unlock(self, passphrase: str) -> bool:
        """Take the data key back with the kit passphrase (see fieldkit.web.auth.unlock_kit)."""
        from .web.auth import unlock_kit
        return unlock_kit(self, passphrase)

    def status(self) -> dict:
        out = {"kit_id": self.config["kit.id"], "version": self.version, "locked": self.locked,
               "uptime_s": round(time.time() - self.started_at, 1)}
        if not self.locked:
            out.update(self.store.counts())
            out["disk"] = self.store.space.state()
            out["oldest_unsent"] = self.store.queue.oldest("sync")
            from .sync.progress import kit_status
            out["sync"] = kit_status(self)
            from .store.scrub import damage
            out["damage"] = damage(self.store)
        if self.hardware is not None and hasattr(self.hardware, "state"):
            out["power"] = self.hardware.state()
        if self.clock_watch is not None:
            out["clock"] = self.clock_watch.state()
        inference = self.services.get("inference")
        if inference is not None and hasattr(inference, "status"):
            out["inference"] = inference.status()
        backup = self.services.get("backup")
        if backup is not None:
            out["backup"] = backup.status()
        scrub = self.services.get("scrub")
        if scrub is not None and hasattr(scrub, "status"):
            out["scrub"] = scrub.status()
        out["services"] = sorted(self.services)
        return out

    def close(self) -> None:
        self.stop_services()
        self.stop_locked_services()
        if self._store is not None:
            from .errors import FieldkitError
            from .store import accounts
            try:  # sign-in failures still counted in memory reach the trail
                accounts.flush_signin_audit(self._store, flush_all=True)
            except FieldkitError as exc:
                log.warning("could not record the last sign-in failures: %s", exc.message)
            self._store.close()

    def start_services(self, names: list[str] | None = None) -> None:
        for name, spec in SERVICES:
            if names is not None and name not in names:
                continue
            self.services[name] = resolve(spec)(self)
            log.info("service %s started", name)

    def start_locked_services(self, names: list[str] | None = None) -> None:
        for name, spec in LOCKED_SERVICES:
            if names is None or name in names:
                self.locked_services[name] = resolve(spec)(self)
                log.info("service %s answers while locked", name)

    def stop_locked_services(self) -> None:
        for name, service in reversed(list(self.locked_services.items())):
            try:
                service.stop()
            except Exception:
                log.exception("locked service %s did not stop cleanly", name)
        self.locked_services.clear()

    def stop_services(self) -> None:
        for name, service in reversed(list(self.services.items())):
            try:
                service.stop()
            except Exception:  # one stuck service must not keep the others running
                log.exception("service %s did not stop cleanly", name)
        self.services.clear()


def load_config(data_dir: Path) -> Config:
    return Config.load(Path(data_dir) / CONFIG_FILE)


def open_kit(data_dir: Path, passphrase: str | None = None, config: Config | None = None, *,
             allow_locked: bool = False) -> Kit:
    """Unlock the data key (passphrase if given, else the device key, file or TPM) and open
    the store. A kit in key mode "passphrase" has no device key: with `allow_locked` (what
    `serve` asks for) it comes back locked, holding the data dir, for an admin to unlock."""
    data_dir = Path(data_dir)
    config = config or load_config(data_dir)
    keyring = Keyring(data_dir, sealer=sealer_for(config))
    from .store import check_format
    check_format(data_dir)
    if passphrase is None and allow_locked and keyring.mode == "passphrase":
        return _locked_kit(data_dir, config, keyring)
    key = keyring.unlock(passphrase)
    store = Store.open(data_dir, key, config)
    from .errors import FieldkitError
    from .store import accounts
    try:
        seal_plain_keys(data_dir, key, store, config)
        try:
            accounts.audit_config(store, config.as_dict())
        except FieldkitError as exc:  # a full disk must not keep the kit from opening
            log.warning("could not record the settings in the audit trail: %s", exc.message)
    except BaseException:
        store.close()
        raise
    return Kit(data_dir, config, store, keyring)


def _locked_kit(data_dir: Path, config: Config, keyring: Keyring) -> Kit:
    """A kit that starts without its key: every service waits for the unlock."""
    from .store import acquire_dir_lock
    from .web.auth import kit_state

    fd = acquire_dir_lock(data_dir)  # a second process is refused while locked too
    kit = Kit(data_dir, config, None, keyring)
    state = kit_state(kit)
    state.held_fd = fd
    state.stopped_services = [name for name, _ in SERVICES]  # started by the unlock
    log.warning("kit started locked (key mode passphrase): an admin must unlock it on the unlock page")
    return kit


def unlock_data_key(data_dir: Path, passphrase: str | None = None) -> bytes:
    """The data key alone, without opening the store (works while `serve` runs): for
    commands that only read or write sealed files (`tls renew`, `hospital test`, doctor)."""
    keyring = Keyring(data_dir, sealer=sealer_for(load_config(data_dir)))
    return keyring.unlock(passphrase)


def seal_plain_keys(data_dir: Path, data_key: bytes, store: Store, config: Config) -> None:
    """A kit from before secrets were sealed keeps its CA key and hospital credentials in
    plaintext files: seal them by the data key and overwrite the plaintext (once; a no-op after)."""
    from .security.tls import seal_plain_ca_key
    from .sync.hospital import seal_plain_secrets

    if seal_plain_ca_key(data_dir, data_key):
        log.warning("the kit CA's key was a plaintext file: it is now sealed by the data key")
    sealed = seal_plain_secrets(data_dir, store.secrets, config)
    if sealed:
        log.warning("hospital secret files sealed by the data key: %s", ", ".join(sealed))


def op_status(kit: Kit, args: dict, emit) -> dict:
    return kit.status()


def _tls_adapter(cert: str, key: str):
    """cheroot's TLS adapter, with a socket reader that reads request bodies in one go.

    cheroot reads sockets through pure-Python buffered I/O, which fetches a large read one
    TLS record (16 KiB) at a time into a fresh buffer the size of the whole read: for a
    STOW-RS body that is most of the server's time. Reads of 64 KiB to 16 MiB go straight
    from the socket into a single buffer; request lines and headers are read as before."""
    from cheroot.makefile import StreamReader
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    from .security.tls import harden_tls

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
    from .cli.control import ControlServer
    from .security.tls import SERVER_CERT, SERVER_KEY, TLS_DIR
    from .web import create_app
    from .web.front import FrontServer

    limit_malloc_arenas()
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
    from .security.redact import cheroot_error_log
    server.error_log = cheroot_error_log()  # cheroot writes to stderr itself: route it through redaction
    tls = kit.data_dir / TLS_DIR
    server.ssl_adapter = _tls_adapter(str(tls / SERVER_CERT), str(tls / SERVER_KEY))
    server.prepare()
    kit.http_port = server.bind_addr[1]

    control = ControlServer(kit, kit.data_dir / SOCKET_FILE, CONTROL_OPS)
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
                "dicom_port": kit.dicom_port, "dicom_tls_port": getattr(kit, "dicom_tls_port", None),
                "ae_title": kit.config["dicom.ae_title"]}
        (kit.data_dir / RUN_FILE).write_text(json.dumps(info) + "\n")
        print(f"fieldkit {kit.version} serving {info['url']} (DICOM port {kit.dicom_port}, "
              f"AE title {info['ae_title']}); Ctrl-C to stop", flush=True)
        if ready:
            ready(info)
        http = threading.Thread(target=server.serve, name="https", daemon=True)
        http.start()
        while not stop.wait(0.5) and http.is_alive():
            pass
    finally:
        stop.set()
        server.stop()
        control.stop()
        kit.close()
        (kit.data_dir / RUN_FILE).unlink(missing_ok=True)
        log.info("fieldkit stopped")
