"""Frozen records that cross layer boundaries. Plain data, no behaviour.

Table names of the store live here too, so that every layer spells them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

# TinyDB tables owned by the store facade
T_PATIENTS = "patients"
T_INSTANCES = "instances"
T_FINDINGS = "findings"
T_QUEUE = "queue"
T_USERS = "users"
T_TOKENS = "tokens"
T_META = "meta"
T_PROBES = "probes"
T_DAMAGE = "damage"  # blobs the scrub (or a read) found damaged or missing, until repaired
T_OFFLINE = "offline_changes"  # changes a tablet made offline and replayed: applied once, by their id

# Queue vocabulary
KIND_INFER = "infer"
KIND_SYNC = "sync"
KINDS = (KIND_INFER, KIND_SYNC)
READY, LEASED, DONE, FAILED = "ready", "leased", "done", "failed"
STATES = (READY, LEASED, DONE, FAILED)

# Priorities: lower runs first. Red-tagged work and findings jump the line.
PRIORITY_URGENT = 10
PRIORITY_HIGH = 30
PRIORITY_NORMAL = 50
PRIORITY_BULK = 90


@dataclass(frozen=True)
class QueueRow:
    id: str  # our own id, never a TinyDB doc id (those are reused)
    kind: str
    priority: int
    state: str
    attempts: int
    next_at: float
    payload: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""
    key: str = ""  # idempotency key: one live row per (kind, key)
    created: float = 0.0
    updated: float = 0.0
    lease_until: float = 0.0

    @classmethod
    def from_doc(cls, doc: dict) -> "QueueRow":
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class InstanceRow(TypedDict, total=False):
    """A catalogue row (`instances` table): what the kit looks up and lists about a stored
    object. The object itself is the encrypted blob `blob`; its preview is `thumbnail`."""
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str              # the kit patient (merges rewrite it)
    modality: str
    study_date: str
    transfer_syntax: str
    frames: int
    rows: int
    columns: int
    frame_time_ms: float | None
    blob: str                    # "" once purged by retention
    size: int
    thumbnail: str
    source: str                  # dimse | stow | upload | import | kit
    from_picture: bool
    conflict: bool
    conflicts: list[dict]        # other copies received under the same UID
    received_at: float
    decode_error: str
    digest: str
    # descriptive text QIDO-RS answers with (dicom.prepare.descriptive)
    study_time: str
    accession_number: str
    study_description: str
    study_id: str
    referring_physician: str
    series_number: str
    series_description: str
    instance_number: str
    photometric_interpretation: str
    manufacturer: str
    body_part: str               # BodyPartExamined
    institution_name: str
    # sync and retention
    sync_state: str              # queued | sending | confirmed | quarantined
    sync_reason: str
    confirmed_at: float
    retrieve_url: str
    purged_at: float
    lung_zone: str
    linked_by: str               # why it is on its patient (fieldkit.store.patients BY_*), or "assigned"
    calling_ae: str              # the probe (calling AE title) that sent it over DIMSE


class PatientRow(TypedDict, total=False):
    """A kit patient (`patients` table); see fieldkit.store.patients."""
    id: str                      # the triage tag number, N-XXXXXX (registered tagless), U-XXXXXX (capture)
    tag: str | None
    name: str
    birth_date: str
    sex: str
    age: str
    triage: str
    triage_history: list[dict]
    merged_into: str | None
    created: float
    updated: float
    aliases: list[list[str]]     # (issuer, PatientID) pairs probes used
    notes: list[dict]
    origin: str                  # person | capture (a capture nobody could link made it)
    name_confirmed: dict | None  # {"by", "at"}: a person confirmed a name a probe supplied


class FindingRow(TypedDict, total=False):
    """A model's result on one instance (`findings` table); see fieldkit.store.findings."""
    id: str                      # sha256(sop uid, model name)[:24]
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    task: str
    model: str
    model_version: str
    model_sha256: str
    view: str
    quality: Any
    assessable: bool
    reason: str
    view_probability: float      # gate's probability of the view (older rows: "confidence")
    finding_probability: float | None  # probability of the finding itself; None: not calibrated
    result: Any
    overlay: str | None
    sr_sop_instance_uid: str | None
    frames_analysed: int
    frames_total: int
    frames: list
    subsampled: dict
    gate: dict
    timing_ms: dict
    created: float
    review: dict
    review_history: list[dict]


def is_purged(row: dict) -> bool:
    """Retention kept only a tombstone of this instance: the hospital has the object (it
    confirmed it), the kit no longer holds its bytes."""
    return bool(row.get("purged_at")) or not row.get("blob")


def view_probability(row: dict) -> float:
    """The gate's view probability of a finding row; rows stored before it had its own
    name called it "confidence" (it was the same figure)."""
    return float(row.get("view_probability", row.get("confidence")) or 0.0)


# Triage categories (START, plus SALT's expectant) and how urgent each is for sync.
TRIAGE_CATEGORIES = ("red", "yellow", "green", "black", "grey", "none")
_TRIAGE_RANK = {"red": 0, "yellow": 20, "none": 30, "green": 40, "grey": 50, "black": 60}


def sync_priority(triage: str, what: str) -> int:
    """Priority of a sync row: red before yellow before green; within a category,
    triage/identity updates, then findings, then images (lower number goes first)."""
    offset = {"triage": 0, "finding": 5, "image": 10}.get(what, 10)
    return _TRIAGE_RANK.get(triage or "none", 30) + offset


def infer_priority(triage: str) -> int:
    """Priority of an infer row: red before yellow before green (the queue leases the
    newest capture first within one priority)."""
    return _TRIAGE_RANK.get(triage or "none", 30)
