"""Incremental backups of a running store, and restoring one into a new data dir.

A backup is a directory (a USB stick, a share) laid out as:

    FIELDKIT-BACKUP.json     in clear: which data key it belongs to (a keyed id), when
    keys/keyring.json        the data key wrapped by the kit passphrase only (no device key)
    manifest.sealed          sealed: every file a complete backup holds, with size and SHA-256
    db/journal-<n>.fkj       the live state as one sealed journal (Store.snapshot_to)
    kit-files-<n>.sealed     sealed: config, TLS material, hospital secrets
    blobs/ab/<address>       the blob files, copied as they are (already sealed)

Blobs are content-addressed and never change, so a backup copies only the blob files the
previous one (its manifest) does not list. The journal is snapshotted first, the blobs
listed after, so every blob the snapshot refers to is copied. Every file is written to a
temp name, fsynced, renamed, and its directory fsynced; the manifest is written last, so
an interrupted backup leaves the previous one whole, and files are pruned only after it.
Nothing here is readable without the passphrase.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import threading
import time
from pathlib import Path

from .. import DATA_FORMAT_VERSION, fsio
from ..config import CONFIG_FILE, Config
from ..errors import BadInput, KeyUnavailable, StorageFull, UnsupportedVersion
from ..security.crypto import InvalidTag, Sealer, derive_subkey
from ..security.files import write_atomic
from ..security.keys import KEYRING_FILE, KEYS_DIR, Keyring

BACKUP_FORMAT = 1
MARKER = "FIELDKIT-BACKUP.json"
MANIFEST = "manifest.sealed"
TMP = ".tmp"
COPY_CHUNK = 1 << 20
_AAD_MANIFEST = b"fieldkit/backup/manifest"
_AAD_FILES = b"fieldkit/backup/kit-files"

_one_at_a_time = threading.Lock()  # a scheduled and a manual backup never interleave


def key_id(backup_key: bytes) -> str:
    """Names the data key without revealing it: tells one kit's backups from another's."""
    return hmac.new(backup_key, b"fieldkit backup key id", hashlib.sha256).hexdigest()[:32]


def _io_error(exc: OSError, target: Path) -> Exception:
    if exc.errno == errno.ENOSPC:
        return StorageFull(f"the backup target {target} is full; nothing there was changed "
                           "(free space or use a bigger stick)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageFull(f"the backup target {target} is read-only ({os.strerror(exc.errno)}); "
                           "nothing was written")
    return StorageFull(f"cannot write the backup at {target}: {exc.strerror}")


def _write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    write_atomic(path, data, mode)


def _copy_hashing(src: Path, dest: Path) -> tuple[int, str]:
    """Copy src to dest (fsynced); returns (size, SHA-256 of the bytes copied)."""
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fin:
        fd = fsio.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while chunk := fin.read(COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                fsio.write_all(fd, chunk)
            fsio.fsync(fd)
        finally:
            os.close(fd)
    return size, digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_marker(target: Path) -> dict | None:
    try:
        doc = json.loads((target / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise BadInput(f"{target / MARKER} is unreadable: {target} is not a usable fieldkit backup") from None
    if not isinstance(doc, dict) or "key_id" not in doc:
        raise BadInput(f"{target / MARKER} is not a fieldkit backup marker")
    return doc


def _open_manifest(target: Path, sealer: Sealer) -> dict:
    sealed = (target / MANIFEST).read_bytes()
    return json.loads(sealer.open(sealed, _AAD_MANIFEST))


def _list_blobs(root: Path) -> dict[str, Path]:
    out = {}
    for fan in os.scandir(root):
        if len(fan.name) != 2 or not fan.is_dir():
            continue  # tmp/ holds unfinished writes
        for entry in os.scandir(fan.path):
            if len(entry.name) == 64:
                out[entry.name] = Path(entry.path)
    return out


def _kit_files(data_dir: Path, include: list[str]) -> dict[str, dict]:
    """The named files and directories of the data dir, as {relative path: mode, content}."""
    out = {}
    for name in include:
        base = data_dir / name
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        for path in paths:
            out[str(path.relative_to(data_dir))] = {"mode": path.stat().st_mode & 0o777,
                                                    "data": base64.b64encode(path.read_bytes()).decode()}
    return out


def _check_target(target: Path, kid: str) -> dict | None:
    """Refuse a target that is not an empty directory or a backup of this data key."""
    if target.exists() and not target.is_dir():
        raise BadInput(f"backup target {target} is a file, not a directory")
    if not target.exists():
        if not target.parent.is_dir():
            raise BadInput(f"backup target {target}: its parent directory does not exist (is the stick mounted?)")
        return None
    marker = _read_marker(target)
    if marker is None:
        if any(target.iterdir()):
            raise BadInput(f"backup target {target} is not empty and holds no fieldkit backup; "
                           "choose an empty directory (nothing was written)")
        return None
    if marker["key_id"] != kid:
        raise BadInput(f"backup target {target} holds a backup of another kit (kit {marker.get('kit_id', '?')}); "
                       "choose another directory (nothing was written)")
    return marker


def backup(store, target: Path, include: list[str], kit_id: str, emit=lambda progress: None) -> dict:
    """Back `store` up into `target` (incremental); returns what was done."""
    target = Path(target).absolute()
    report = emit

    def emit(progress: dict) -> None:  # a client that went away does not stop the backup
        try:
            report(progress)
        except OSError:
            pass

    sealer = Sealer(store._backup_key)
    kid = key_id(store._backup_key)
    if target.resolve().is_relative_to(store.data_dir.resolve()):
        raise BadInput(f"backup target {target} is inside the data dir: a backup must be on other media")
    with _one_at_a_time:
        marker = _check_target(target, kid)
        created: list[Path] = []  # removed again if this backup fails
        try:
            if not target.exists():
                target.mkdir(mode=0o700)
                created.append(target)
                fsio.fsync_dir(target.parent)
            dir_fd = os.open(target, os.O_RDONLY)
        except OSError as exc:
            raise _io_error(exc, target) from None
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(dir_fd)
            raise BadInput(f"another backup into {target} is running; try again when it ends") from None
        try:
            return _backup_locked(store, target, include, kit_id, sealer, kid, marker, created, emit)
        except OSError as exc:
            _undo(created)
            raise _io_error(exc, target) from None
        except BaseException:
            _undo(created)
            raise
        finally:
            os.close(dir_fd)


def _undo(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass


def _backup_locked(store, target, include, kit_id, sealer, kid, marker, created, emit) -> dict:
    started = time.time()
    previous: dict = {}
    if marker is not None and (target / MANIFEST).exists():
        try:
            previous = _open_manifest(target, sealer)
        except (InvalidTag, ValueError, OSError):
            previous = {}  # unreadable: this backup copies everything again
    generation = int(previous.get("generation", 0)) + 1
    if marker is None:
        marker = {"fieldkit_backup": BACKUP_FORMAT, "kit_id": kit_id, "key_id": kid, "last_backup_at": None}
        _write_file(target / MARKER, json.dumps(marker, indent=1).encode(), 0o644)
        created.append(target / MARKER)
    tmp = target / TMP
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted backup
    tmp.mkdir(mode=0o700)
    created.append(tmp)

    # 1. the journal, as of now
    emit({"step": "journal"})
    (target / "db").mkdir(mode=0o700, exist_ok=True)
    journal_name = f"db/journal-{generation}.fkj"
    tables = store.snapshot_to(tmp / "journal.fkj")
    created.append(target / journal_name)
    fsio.replace(tmp / "journal.fkj", target / journal_name)
    fsio.fsync_dir(target / "db")
    journal = {"name": journal_name, "size": (target / journal_name).stat().st_size,
               "sha256": _sha256((target / journal_name).read_bytes())}

    # 2. the blobs the previous backup does not hold (listed after the snapshot)
    have = previous.get("blobs", {})
    blobs = {}
    todo = []
    for addr, path in _list_blobs(store.blobs.root).items():
        dest = target / "blobs" / addr[:2] / addr
        if addr in have and dest.exists() and dest.stat().st_size == have[addr][0]:
            blobs[addr] = have[addr]
        else:
            todo.append((addr, path))
    need = sum(p.stat().st_size for _, p in todo if p.exists()) + (1 << 20)
    st = os.statvfs(target)
    if st.f_bavail * st.f_frsize < need:
        raise StorageFull(f"the backup target {target} is full: {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free, "
                          f"this backup needs about {need / 2**20:.1f} MiB more; nothing there was changed "
                          "(free space or use a bigger stick)")
    copied_bytes, dirs = 0, set()
    for i, (addr, path) in enumerate(todo):
        dest = target / "blobs" / addr[:2] / addr
        if not dest.parent.exists():
            dest.parent.mkdir(mode=0o700, parents=True)
            created.append(dest.parent)
        part = tmp / addr
        try:
            size, digest = _copy_hashing(path, part)
        except FileNotFoundError:
            continue  # deleted since it was listed (retention): no longer in the store
        if addr not in have:
            created.append(dest)
        fsio.replace(part, dest)
        dirs.add(dest.parent)
        blobs[addr] = [size, digest]
        copied_bytes += size
        if i % 50 == 0:
            emit({"step": "blobs", "copied": i + 1, "of": len(todo)})
    for d in dirs:
        fsio.fsync_dir(d)
    if dirs:
        fsio.fsync_dir(target / "blobs")

    # 3. config, TLS and secrets (sealed), and the passphrase-only key file
    files_name = f"kit-files-{generation}.sealed"
    files_sealed = sealer.seal(json.dumps(_kit_files(store.data_dir, include)).encode(), _AAD_FILES)
    created.append(target / files_name)
    _write_file(target / files_name, files_sealed)
    (target / KEYS_DIR).mkdir(mode=0o700, exist_ok=True)
    keyring = Keyring(store.data_dir).passphrase_only()
    _write_file(target / KEYS_DIR / KEYRING_FILE, keyring)

    # 4. the manifest, last: from now on this backup is the complete one
    manifest = {"backup_format": BACKUP_FORMAT, "data_format": DATA_FORMAT_VERSION, "generation": generation,
                "created_at": started, "kit_id": kit_id, "key_id": kid, "tables": tables, "journal": journal,
                "kit_files": {"name": files_name, "sha256": _sha256(files_sealed)},
                "keyring": {"sha256": _sha256(keyring)}, "blobs": blobs}
    _write_file(target / MANIFEST, sealer.seal(json.dumps(manifest).encode(), _AAD_MANIFEST))
    created.clear()  # complete: nothing of it is undone any more
    marker.update(last_backup_at=started, generation=generation)
    _write_file(target / MARKER, json.dumps(marker, indent=1).encode(), 0o644)

    # 5. prune what only older backups needed
    pruned = 0
    for old in list((target / "db").glob("journal-*.fkj")) + list(target.glob("kit-files-*.sealed")):
        if old.name not in (Path(journal_name).name, files_name):
            old.unlink()
    for addr, path in _list_blobs(target / "blobs").items() if (target / "blobs").exists() else []:
        if addr not in blobs:
            path.unlink()
            pruned += 1
    shutil.rmtree(tmp, ignore_errors=True)
    fsio.fsync_dir(target)
    return {"target": str(target), "generation": generation, "blobs": len(blobs), "blobs_copied": len(todo),
            "bytes_copied": copied_bytes, "blobs_pruned": pruned, "journal_bytes": journal["size"],
            "rows": sum(tables.values()), "seconds": round(time.time() - started, 2), "at": started}


def read_marker(target: Path) -> dict | None:
    """The clear marker of a backup (when it was last written), or None."""
    try:
        return _read_marker(Path(target))
    except BadInput:
        return None


# restoring ---------------------------------------------------------------------------------

def _incomplete(source: Path, what: str) -> BadInput:
    return BadInput(f"backup {source} is incomplete or damaged: {what}; nothing was restored "
                    "(use another copy of the backup)")


def restore(source: Path, data_dir: Path, passphrase: str, emit=lambda progress: None) -> dict:
    """Verify the backup at `source` with the passphrase and build a new data dir from it.
    Everything is checked and written in a staging directory first; `data_dir` appears
    only when the restored store has opened with every table row of the backup."""
    source, data_dir = Path(source).absolute(), Path(data_dir).absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        held = "already holds a kit" if (data_dir / KEYS_DIR).exists() else "is not empty"
        raise BadInput(f"{data_dir} {held}; restore makes a new data dir and never overwrites one "
                       "(nothing was changed)")
    if not data_dir.parent.is_dir():
        raise BadInput(f"{data_dir.parent} does not exist")
    if _read_marker(source) is None:
        raise BadInput(f"{source} is not a fieldkit backup (no {MARKER})")
    if not (source / KEYS_DIR / KEYRING_FILE).exists():
        raise _incomplete(source, f"{KEYS_DIR}/{KEYRING_FILE} is missing")
    try:
        data_key = Keyring(source).unlock_with_passphrase(passphrase)
    except KeyUnavailable as exc:
        if exc.message == "wrong passphrase":
            raise KeyUnavailable(f"the passphrase does not open the backup {source} (wrong passphrase, "
                                 "or the backup was made after a passphrase change); nothing was restored") from None
        raise
    sealer = Sealer(derive_subkey(data_key, "backup"))
    try:
        manifest = _open_manifest(source, sealer)
    except FileNotFoundError:
        raise _incomplete(source, "no manifest (the backup was interrupted before it finished)") from None
    except (InvalidTag, ValueError):
        raise _incomplete(source, "the manifest fails its authentication tag") from None
    if manifest.get("data_format", 0) > DATA_FORMAT_VERSION or manifest.get("backup_format", 0) > BACKUP_FORMAT:
        raise UnsupportedVersion(f"backup {source} was written by a newer fieldkit (data format "
                                 f"{manifest.get('data_format')}); upgrade fieldkit to restore it")

    stage = data_dir.with_name(f".{data_dir.name}.restoring-{os.getpid()}")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(mode=0o700)
    try:
        result = _restore_into(source, stage, manifest, sealer, data_key, emit)
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked above); the staging dir takes its place
        os.rename(stage, data_dir)
        fsio.fsync_dir(data_dir.parent)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise StorageFull(f"cannot write {data_dir}: {exc.strerror}; nothing was restored") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result["data_dir"] = str(data_dir)
    return result


def _check_copy(source: Path, rel: str, dest: Path, size: int | None, sha256: str) -> None:
    try:
        got_size, got = _copy_hashing(source / rel, dest)
    except FileNotFoundError:
        raise _incomplete(source, f"{rel} is missing") from None
    if (size is not None and got_size != size) or got != sha256:
        raise _incomplete(source, f"{rel} does not match the manifest (truncated or changed)")


def _restore_into(source: Path, stage: Path, manifest: dict, sealer: Sealer, data_key: bytes, emit) -> dict:
    from . import FORMAT_FILE, Store

    # kit files: config, TLS, secrets
    try:
        sealed = (source / manifest["kit_files"]["name"]).read_bytes()
    except FileNotFoundError:
        raise _incomplete(source, f"{manifest['kit_files']['name']} is missing") from None
    if _sha256(sealed) != manifest["kit_files"]["sha256"]:
        raise _incomplete(source, f"{manifest['kit_files']['name']} does not match the manifest")
    files = json.loads(sealer.open(sealed, _AAD_FILES))
    for rel, entry in files.items():
        path = stage / rel
        if not path.resolve().is_relative_to(stage.resolve()):
            raise _incomplete(source, f"the kit files name a path outside the data dir: {rel!r}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_file(path, base64.b64decode(entry["data"]), entry["mode"])

    # the journal and every blob, checked against the manifest as they are copied
    (stage / "db").mkdir(mode=0o700)
    j = manifest["journal"]
    _check_copy(source, j["name"], stage / "db" / "journal.fkj", j["size"], j["sha256"])
    blobs = manifest["blobs"]
    missing = [a for a in blobs if not (source / "blobs" / a[:2] / a).is_file()]
    if missing:
        raise _incomplete(source, f"{len(missing)} of {len(blobs)} blob files are missing (first: {missing[0][:12]}…)")
    (stage / "blobs").mkdir(mode=0o700)
    for i, (addr, (size, digest)) in enumerate(sorted(blobs.items())):
        dest = stage / "blobs" / addr[:2] / addr
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        _check_copy(source, f"blobs/{addr[:2]}/{addr}", dest, size, digest)
        if i % 50 == 0:
            emit({"step": "blobs", "checked": i + 1, "of": len(blobs)})
    for fan in (stage / "blobs").iterdir():
        fsio.fsync_dir(fan)

    # keys: the backup's passphrase wrapping plus a new device key; then the format
    (stage / KEYS_DIR).mkdir(mode=0o700, exist_ok=True)
    keyring = (source / KEYS_DIR / KEYRING_FILE).read_bytes()
    if _sha256(keyring) != manifest["keyring"]["sha256"]:
        raise _incomplete(source, f"{KEYS_DIR}/{KEYRING_FILE} does not match the manifest")
    _write_file(stage / KEYS_DIR / KEYRING_FILE, keyring)
    Keyring(stage).add_device_key(data_key)
    _write_file(stage / FORMAT_FILE, (json.dumps({"format": manifest["data_format"]}) + "\n").encode(), 0o644)
    for d in (stage / "db", stage / "blobs", stage):
        fsio.fsync_dir(d)

    # the proof: the restored store opens (migrating if need be) with every row of the backup
    config_path = stage / CONFIG_FILE
    store = Store.open(stage, data_key, Config.load(config_path) if config_path.exists() else Config())
    try:
        got = store.read(lambda db: {name: len(db.table(name)) for name in db.tables()})
    finally:
        store.close()
    short = {t: (n, got.get(t, 0)) for t, n in manifest["tables"].items() if got.get(t, 0) < n}
    if short:
        raise _incomplete(source, f"the restored store lacks rows: {short}")
    return {"generation": manifest["generation"], "created_at": manifest["created_at"],
            "kit_id": manifest["kit_id"], "blobs": len(blobs), "rows": sum(manifest["tables"].values()),
            "tables": manifest["tables"]}
