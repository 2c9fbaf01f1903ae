"""`fieldkit backup`, `fieldkit restore`, and scheduled backups (a service of `serve`).

The backup runs inside the process that owns the store (the running kit, through its
control socket, or this command when no kit runs), so the journal snapshot is consistent
while probes keep sending. See fieldkit/store/backup.py for what a backup holds.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import click

from ..errors import FieldkitError
from ..kit import CONFIG_FILE
from ..kit.control import run_op
from ..security.tls import TLS_DIR
from ..service import Periodic
from ..store import backup as store_backup
from ..sync.hospital import SECRETS_DIR
from .core import DATA_DIR, read_secret_file

log = logging.getLogger(__name__)

KIT_FILES = [CONFIG_FILE, TLS_DIR, SECRETS_DIR]  # held sealed in a backup, with the store


def _run_backup(kit, target: Path, emit, scheduler=None) -> dict:
    scheduler = scheduler or kit.services.get("backup")
    try:
        result = store_backup.backup(kit.store, target, KIT_FILES, kit.config["kit.id"], emit)
    except FieldkitError as exc:
        if scheduler is not None:
            scheduler.record(str(target), time.time(), error=exc.message)
        raise
    if scheduler is not None:
        scheduler.record(str(target), result["at"], result=result)
    return result


def op_backup(kit, args: dict, emit) -> dict:
    return _run_backup(kit, Path(args["to"]), emit)


class BackupScheduler(Periodic):
    """Backs up to backup.path every backup.every_hours (counted from the last backup
    there, so a restart does not postpone it), and keeps the last result for the status."""

    def __init__(self, kit):
        self.kit = kit
        self.path = str(kit.config["backup.path"] or "")
        self.every_s = float(kit.config["backup.every_hours"]) * 3600.0
        self.last: dict = {"at": None, "ok": None, "target": self.path or None, "error": "", "result": None}
        self._lock = threading.Lock()
        self.scheduled = bool(self.path and self.every_s > 0)
        if self.scheduled:
            marker = store_backup.read_marker(Path(self.path))
            if marker and marker.get("last_backup_at"):
                self.last.update(at=marker["last_backup_at"], ok=True)
        super().__init__(self.every_s, "backup", join_timeout=30)

    def record(self, target: str, at: float, result: dict | None = None, error: str = "") -> None:
        with self._lock:
            self.last = {"at": at, "ok": not error, "target": target, "error": error, "result": result}

    def _due_in(self) -> float:
        with self._lock:
            last = self.last["at"] if self.last["ok"] and self.last["target"] == self.path else None
        return 0.0 if last is None else last + self.every_s - time.time()

    def enabled(self) -> bool:
        return self.scheduled

    def next_wait(self) -> float:
        return max(0.0, min(self._due_in(), 3600.0))

    def tick(self) -> float | None:
        if self._due_in() > 0:
            return None
        retry_s = min(self.every_s, 600.0)  # a missing stick is tried again, not every second
        try:
            _run_backup(self.kit, Path(self.path), lambda progress: None, scheduler=self)
            log.info("scheduled backup to %s done", self.path)
        except FieldkitError as exc:
            log.warning("scheduled backup to %s failed: %s", self.path, exc.message)
            return retry_s
        except Exception:
            log.exception("scheduled backup failed")
            return retry_s
        return None

    def status(self) -> dict:
        with self._lock:
            out = {k: v for k, v in self.last.items() if k != "result"}
            if self.last["result"]:
                out.update({k: self.last["result"][k] for k in ("generation", "blobs_copied", "bytes_copied")})
        out["scheduled"] = self.scheduled
        out["path"] = self.path
        out["every_hours"] = self.every_s / 3600.0
        if self.scheduled:
            out["next_at"] = time.time() + max(0.0, self._due_in())
        return out


def start_scheduled(kit) -> BackupScheduler:
    return BackupScheduler(kit)


def _progress(p: dict) -> None:
    if p.get("step") == "blobs":
        done = p.get("copied", p.get("checked"))
        click.echo(f"  blobs {done}/{p['of']}", err=True)


@click.command("backup")
@DATA_DIR
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="Backup directory (e.g. on a mounted USB stick): empty, or an earlier backup of this kit.")
def backup_cmd(data_dir: Path, target: Path):
    """Back the kit up (incremental: only new captures are copied); works while it runs."""
    r = run_op(data_dir, "backup", {"to": str(target.absolute())}, on_progress=_progress)
    click.echo(f"backup {r['generation']} written to {r['target']}: {r['blobs_copied']} new blob files "
               f"({r['bytes_copied'] / 2**20:.1f} MiB) copied, {r['blobs'] - r['blobs_copied']} already there, "
               f"{r['blobs_pruned']} pruned; {r['rows']} records; {r['seconds']} s")
    click.echo("restoring it needs the kit passphrase: fieldkit restore --from PATH --data-dir NEW")


@click.command("restore")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path), help="The backup directory.")
@click.option("--data-dir", "data_dir", required=True, type=click.Path(path_type=Path),
              help="New data directory to create (must not exist or be empty).")
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="File holding the kit passphrase of the backup (else asked).")
def restore_cmd(source: Path, data_dir: Path, passphrase_file):
    """Check a backup with the passphrase and restore it into a new data dir."""
    passphrase = read_secret_file(passphrase_file, "passphrase")
    if passphrase is None:
        passphrase = click.prompt("Kit passphrase of the backup", hide_input=True)
    r = store_backup.restore(source, data_dir, passphrase, emit=_progress)
    click.echo(f"restored backup {r['generation']} of kit {r['kit_id']} into {r['data_dir']}: "
               f"{r['tables'].get('instances', 0)} instances, {r['tables'].get('patients', 0)} patients, "
               f"{r['blobs']} blob files, all verified")
    click.echo("it has a new device key and starts unattended: fieldkit serve --data-dir " + r["data_dir"])


COMMANDS = [backup_cmd, restore_cmd]
