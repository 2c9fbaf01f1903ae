"""The audit trail to the hospital: new audit events as audit SRs over the same STOW-RS
link as the studies (see fieldkit.security.audit_dicom), once on demand (`fieldkit audit
sync`) or every `security.audit_sync_minutes` as a service of `serve`."""

from __future__ import annotations

import logging

from pydicom.uid import ExplicitVRLittleEndian

from ..errors import FieldkitError, PermanentError
from ..security.audit_dicom import audit_sr, to_bytes
from ..service import Periodic
from ..store import accounts
from .client import Part, StowClient, failure_text
from .hospital import endpoint_from_config

log = logging.getLogger(__name__)

AUDIT_SYNC_BATCH = 5000  # events per SR document (about 2 MB of JSON)


def sync_audit_once(kit) -> dict:
    """Send the events the hospital has not yet confirmed. An event counts as synced only
    when the hospital lists the document as stored. Sending is not itself audited (it would
    always leave one more event to send)."""
    store = kit.store
    client = StowClient(endpoint_from_config(kit.config, kit.data_dir, store.secrets))
    kit_id = kit.config["kit.id"] or "KIT"
    sent = documents = 0
    try:
        for _ in range(10_000):  # bounded: at most this many documents per call
            seq, head_hash = accounts.audit_synced(store)
            export = accounts.audit_export(store, seq, kit_id=kit_id, limit=AUDIT_SYNC_BATCH)
            if not export["events"]:
                break
            if list(export["start"]) != [seq, head_hash]:
                raise PermanentError(f"the audit trail no longer continues the copy the hospital holds "
                                     f"(event {seq} differs): run `fieldkit audit verify`")
            ds = audit_sr(export, kit_id=kit_id, issuer=kit.config.issuer_of_patient_id)
            uid = ds.SOPInstanceUID
            result = client.store([Part.from_bytes(uid, to_bytes(ds), ExplicitVRLittleEndian)])
            if uid not in result.stored:
                code, text = result.failed.get(uid, (None, "not listed as stored"))
                raise PermanentError(f"the hospital did not store the audit document: "
                                     f"{failure_text(code) if code is not None else text}")
            last = export["events"][-1]
            accounts.audit_mark_synced(store, last["seq"], last["hash"], uid)
            sent += len(export["events"])
            documents += 1
    finally:
        client.close()
    seq, _ = accounts.audit_synced(store)
    if sent:
        log.info("audit trail synced: %d events in %d documents, up to event %d", sent, documents, seq)
    return {"events": sent, "documents": documents, "synced_up_to": seq}


class AuditSync(Periodic):
    """Every `security.audit_sync_minutes`, send new audit events to the hospital (when one
    is configured and the kit is unlocked)."""

    def __init__(self, kit):
        self.kit = kit
        self.minutes = float(kit.config.get("security.audit_sync_minutes", 15) or 0)
        self.configured = bool(str(kit.config.get("hospital.url", "") or "").strip())
        super().__init__(self.minutes * 60, "audit-sync")

    def enabled(self) -> bool:
        return self.minutes > 0 and self.configured

    def tick(self) -> None:
        if self.kit.locked:
            return
        try:
            sync_audit_once(self.kit)
        except FieldkitError as exc:
            log.warning("audit sync postponed: %s", exc.message)


def start(kit) -> AuditSync:
    return AuditSync(kit)
