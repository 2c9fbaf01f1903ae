"""The running kit: `Kit` (what every service and blueprint is given) and `open_kit`, which
unlocks the data key and opens the store. The kit's file names in its data dir live here."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .. import __version__
from ..config import CONFIG_FILE, Config
from ..errors import FieldkitError, KitLocked
from ..events import EventBus
from ..security.keys import Keyring
from ..security.tpm import sealer_for
from ..service import Service
from ..store import Store, accounts, acquire_dir_lock, check_format
from .lock import LockState, lock_kit, unlock_kit
from .registry import LOCKED_SERVICES, SERVICES, resolve

log = logging.getLogger("fieldkit")

RUN_FILE = "run.json"  # what `serve` listens on, for commands and doctor; gone when it stops


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
        self.lock_state = LockState()
        # What running services offer the rest of the kit, taken from the service objects
        # when they start (services read the kit; they never set its attributes):
        self.hardware = None  # the power monitor (a probe: tests and tools may set their own)
        self.clock_watch = None  # fieldkit.hardware.clock.ClockWatch once serve runs
        self.ports: dict[str, int] = {}  # service name -> its listening port, kept across lock/unlock
        self.http_port: int | None = None
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

    @property
    def dicom_port(self) -> int | None:
        return self.ports.get("dicom")

    @property
    def dicom_tls_port(self) -> int | None:
        return self.ports.get("dicom-tls")

    def detach_store(self) -> Store:
        """The lock takes the store away (fieldkit.kit.lock): from now on the kit is locked."""
        store, self._store = self._store, None
        return store

    def attach_store(self, store: Store) -> None:
        self._store = store

    def lock(self, actor: str = "system") -> bool:
        """Drop the data key (see fieldkit.kit.lock.lock_kit)."""
        return lock_kit(self, actor=actor)

    def unlock(self, passphrase: str) -> bool:
        """Take the data key back with the kit passphrase (see fieldkit.kit.lock.unlock_kit)."""
        return unlock_kit(self, passphrase)

    def status(self) -> dict:
        out = {"kit_id": self.config["kit.id"], "version": self.version, "locked": self.locked,
               "uptime_s": round(time.time() - self.started_at, 1)}
        if not self.locked:
            out.update(self.store.counts())
            out["disk"] = self.store.space.state()
            out["oldest_unsent"] = self.store.queue.oldest("sync")
            from ..sync.progress import kit_status
            out["sync"] = kit_status(self)
            from ..store.scrub import damage
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
            try:  # sign-in failures still counted in memory reach the trail
                accounts.flush_signin_audit(self._store, flush_all=True)
            except FieldkitError as exc:
                log.warning("could not record the last sign-in failures: %s", exc.message)
            self._store.close()

    def start_services(self, names: list[str] | None = None) -> None:
        for name, spec in SERVICES:
            if names is not None and name not in names:
                continue
            self.services[name] = self._started(name, spec)
            log.info("service %s started", name)

    def start_locked_services(self, names: list[str] | None = None) -> None:
        for name, spec in LOCKED_SERVICES:
            if names is None or name in names:
                self.locked_services[name] = self._started(name, spec)
                log.info("service %s answers while locked", name)

    def _started(self, name: str, spec: str) -> Service:
        """Start one service and take what it offers (see fieldkit.service.Service)."""
        service = resolve(spec)(self)
        port = getattr(service, "port", None)
        if port:
            self.ports[name] = port
        if getattr(service, "monitor", None) is not None:
            self.hardware = service.monitor
        if getattr(service, "watch", None) is not None:
            self.clock_watch = service.watch
        return service

    def stop_locked_services(self) -> None:
        for name, service in reversed(list(self.locked_services.items())):
            try:
                service.stop()
            except Exception:
                log.exception("locked service %s did not stop cleanly", name)
        self.locked_services.clear()

    def stop_services(self) -> None:
        """Stop every service at once: each one's stop waits out its own poll (up to half a
        second), and one after another those waits made every stop or lock take seconds."""
        def stop(name: str, service: Service) -> None:
            try:
                service.stop()
            except Exception:  # one stuck service must not keep the others running
                log.exception("service %s did not stop cleanly", name)

        stopping = [threading.Thread(target=stop, args=item, name=f"stop-{item[0]}", daemon=True)
                    for item in self.services.items()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
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
    check_format(data_dir)
    if passphrase is None and allow_locked and keyring.mode == "passphrase":
        return _locked_kit(data_dir, config, keyring)
    key = keyring.unlock(passphrase)
    store = Store.open(data_dir, key, config)
    try:
        seal_plain_keys(data_dir, key, store, config, unattended=keyring.mode != "passphrase")
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
    fd = acquire_dir_lock(data_dir)  # a second process is refused while locked too
    kit = Kit(data_dir, config, None, keyring)
    kit.lock_state.held_fd = fd
    kit.lock_state.stopped_services = [name for name, _ in SERVICES]  # started by the unlock
    log.warning("kit started locked (key mode passphrase): an admin must unlock it on the unlock page")
    return kit


def unlock_data_key(data_dir: Path, passphrase: str | None = None) -> bytes:
    """The data key alone, without opening the store (works while `serve` runs): for
    commands that only read or write sealed files (`tls renew`, `hospital test`, doctor)."""
    keyring = Keyring(data_dir, sealer=sealer_for(load_config(data_dir)))
    return keyring.unlock(passphrase)


def seal_plain_keys(data_dir: Path, data_key: bytes, store: Store, config: Config, *,
                    unattended: bool = True) -> None:
    """A kit from before secrets were sealed keeps its CA key, server key and hospital
    credentials in plaintext files: seal them by the data key and overwrite the plaintext
    (once; a no-op after). The server key stays a file where the kit starts locked
    (`unattended` False: key mode passphrase), since it serves the unlock page."""
    from ..security.tls import seal_plain_ca_key, seal_plain_server_key
    from ..sync.hospital import seal_plain_secrets

    if seal_plain_ca_key(data_dir, data_key):
        log.warning("the kit CA's key was a plaintext file: it is now sealed by the data key")
    if unattended and seal_plain_server_key(data_dir, data_key):
        log.warning("the HTTPS server key was a plaintext file: it is now sealed by the data key")
    sealed = seal_plain_secrets(data_dir, store.secrets, config)
    if sealed:
        log.warning("hospital secret files sealed by the data key: %s", ", ".join(sealed))


def op_status(kit: Kit, args: dict, emit) -> dict:
    return kit.status()
