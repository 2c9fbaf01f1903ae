"""Frozen records that cross layer boundaries. Plain data, no behaviour.

Table names of the store live here too, so that every layer spells them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# TinyDB tables owned by the store facade
T_PATIENTS = "patients"
T_INSTANCES = "instances"
T_FINDINGS = "findings"
T_QUEUE = "queue"
T_USERS = "users"
T_TOKENS = "tokens"
T_META = "meta"

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
