"""The audit trail travels to a real Orthanc (DICOMweb STOW-RS) as SR documents, each
continuing the previous one."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests

from fieldkit.errors import PermanentError
from fieldkit.security import audit as A
from fieldkit.security.audit_dicom import read_audit_head, read_audit_sr
from fieldkit.store import accounts

from fixtures.sync import sync_config


def _documents(orthanc):
    """Every audit document the hospital holds, read back from Orthanc's own files."""
    docs = []
    for iid in orthanc.rest("/instances"):
        r = requests.get(f"{orthanc.rest_url}/instances/{iid}/file", auth=orthanc.auth, timeout=30)
        r.raise_for_status()
        docs.append(read_audit_sr(pydicom.dcmread(io.BytesIO(r.content))))
    return sorted(docs, key=lambda d: d["events"][0]["seq"])


def _heads(orthanc):
    """The chain heads the hospital holds, in order."""
    heads = []
    for iid in orthanc.rest("/instances"):
        r = requests.get(f"{orthanc.rest_url}/instances/{iid}/file", auth=orthanc.auth, timeout=30)
        r.raise_for_status()
        heads.append(read_audit_head(pydicom.dcmread(io.BytesIO(r.content))))
    return sorted(heads)


def test_audit_trail_reaches_the_hospital_and_continues(data_dir, orthanc):
    from fieldkit.sync.audit import sync_audit_once
    from fieldkit.kit import load_config, open_kit

    kit = open_kit(data_dir, config=sync_config(load_config(data_dir), orthanc.base_url))
    try:
        for i in range(3):
            accounts.audit_append(kit.store, actor="amina", role="clinician", action="view", object=f"patient:P{i}")
        first = sync_audit_once(kit)
        assert first["documents"] == 1 and first["events"] >= 3
        assert sync_audit_once(kit)["documents"] == 0  # nothing new: nothing sent
        accounts.audit_append(kit.store, actor="amina", role="clinician", action="export", object="patient:P1")
        second = sync_audit_once(kit)
        assert second["documents"] == 1 and second["events"] == 1
        docs = _documents(orthanc)
        assert len(docs) == 2
        # the hospital's check: the first starts at the beginning, the second continues it
        r1 = A.verify_chain(docs[0]["events"], start=tuple(docs[0]["start"]))
        assert r1.ok and tuple(docs[0]["start"]) == (0, A.GENESIS)
        r2 = A.verify_chain(docs[1]["events"], start=r1.head)
        assert r2.ok and r2.head == accounts.audit_head(kit.store)
        assert docs[1]["events"][-1]["action"] == "export"

        # each document carries the chain head it ends at, the anchor the hospital keeps
        assert _heads(orthanc)[-1] == accounts.audit_synced(kit.store) == r2.head

        # history the hospital already holds is rewritten on the kit, even with the kit's
        # own key (a thief who runs the kit): the next sync refuses
        synced_seq, _ = accounts.audit_synced(kit.store)

        def edit(db):
            t = db.table(accounts.T_AUDIT)
            doc = t.get(lambda e: e["seq"] == synced_seq)
            forged = dict(doc, actor="mallory")
            forged["hash"] = A.event_hash(forged, kit.store.audit_key)
            t.update({"actor": "mallory", "hash": forged["hash"]}, doc_ids=[doc.doc_id])

        kit.store.write(edit)
        accounts.audit_append(kit.store, actor="amina", role="clinician", action="view", object="patient:P2")
        with pytest.raises(PermanentError, match="no longer continues"):
            sync_audit_once(kit)
        assert len(_documents(orthanc)) == 2
    finally:
        kit.close()
