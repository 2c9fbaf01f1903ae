"""What the running kit starts and answers, by name: one line per background service and
per control operation. Entries are "module:function" strings, resolved when used, so a
low layer's service needs no import of the kit (tests/test_layers.py resolves them too)."""

from __future__ import annotations

import importlib

# Background services started by `serve`, in order: (name, "module:function").
# Each function takes the Kit and returns a fieldkit.service.Service. Add one line per service.
SERVICES: list[tuple[str, str]] = [
    ("autolock", "fieldkit.kit.lock:start_autolock"),
    ("audit-sync", "fieldkit.sync.audit:start"),
    ("redact-learner", "fieldkit.kit.redaction:start"),
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
    "status": "fieldkit.kit.core:op_status",
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
