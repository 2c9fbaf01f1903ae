"""The triage board: one row per live patient, each computed from that patient's own rows
and cached until that patient changes (layer 2).

Every write that changes what a card shows publishes an event naming the patient (or one
of their captures) once it has committed. The cache reads the event bus's history
(fieldkit.events) before answering and drops the rows of the patients those events name,
so the whole board costs one computation per patient once, and then each change costs
O(that patient): the live stream sends the changed rows, never the whole board.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from dataclasses import dataclass

from ..dicom.names import format_person_name
from ..events import (Event, FINDING_STORED, INSTANCE_CONFLICT, INSTANCE_STORED, PATIENT_MERGED, PATIENT_UPDATED,
                      SYNC_CONFIRMED, SYNC_QUARANTINED)
from ..records import T_PATIENTS, TRIAGE_CATEGORIES
from . import care, finding_words, findings
from . import instances as catalogue
from . import patients as pstore


# Topics after which a patient's card may look different; the others leave it as it was
BOARD_TOPICS = frozenset({INSTANCE_STORED, INSTANCE_CONFLICT, FINDING_STORED, PATIENT_UPDATED, PATIENT_MERGED,
                          SYNC_CONFIRMED, SYNC_QUARANTINED})
BULK_FROM = 16  # more rows missing than this: computed in one pass over the tables
NOT_CAPTURES = ("SR", "DOC")  # the kit's own reports and documents (a handover sheet) are no captures
PUBLIC_FIELDS = ("id", "tag", "name", "birth_date", "sex", "age", "triage", "created", "updated")


def public_patient(p: dict) -> dict:
    return {k: p.get(k) for k in PUBLIC_FIELDS}


def sync_badge(states: list[str]) -> str:
    if not states:
        return "none"
    if "quarantined" in states:
        return "quarantined"
    if all(s == "confirmed" for s in states):
        return "confirmed"
    if "sending" in states:
        return "sending"
    return "queued"


def triage_of(row: dict) -> str:
    return row.get("triage") if row.get("triage") in TRIAGE_CATEGORIES else "none"


def findings_of(store, patient_id: str) -> list[dict]:
    """A patient's findings (through the findings' by-patient index)."""
    return findings.for_patient(store, patient_id)


def tray_item(r: dict) -> dict:
    """An unassigned capture as the board's tray shows it (no name: the probe's is not trusted)."""
    return {"uid": r["sop_instance_uid"], "received_at": r.get("received_at"), "probe": r.get("calling_ae") or "",
            "frames": r.get("frames") or 1, "has_thumbnail": bool(r.get("thumbnail")) and bool(r.get("blob"))}


def _card(p: dict, insts: list[dict], fnds: list[dict]) -> dict:
    card = public_patient(p)
    images = [r for r in insts if str(r.get("modality") or "") not in NOT_CAPTURES]
    unassigned = pstore.is_unassigned(p)
    card.update(triage=triage_of(p),
                captures=len(images),
                findings=sum(1 for f in fnds if f.get("assessable")),
                sync=sync_badge([str(r.get("sync_state") or "queued") for r in insts]),
                last_capture=max((float(r.get("received_at") or 0) for r in insts), default=0.0),
                identified=bool(p.get("name")),
                **pstore.triage_times(p),
                tags=pstore.all_tags(p),  # merged tags too: a search by any of them finds the survivor
                display_name=format_person_name(p.get("name")), name_from_probe=pstore.name_from_probe(p),
                # a record only a capture made: its captures wait in the tray, it is no patient card
                unassigned=unassigned,
                tray=[tray_item(r) for r in sorted(images, key=lambda r: r.get("received_at") or 0)]
                if unassigned else [])
    card.update(care.card_fields(p))  # zone, disposition, interventions
    card.update(finding_words.card_fields(card["triage"], insts, fnds))  # positive findings in words
    return card


def compute_row(store, patient_id: str, patient: dict | None = None) -> tuple[dict | None, int]:
    """The board card of one patient from their own rows, and how many rows it read;
    None for a patient who is not on the board (unknown, or merged into another)."""
    p = patient if patient is not None else pstore.get_patient(store, patient_id, follow_merges=False)
    if p is None or p.get("merged_into"):
        return None, 1
    insts = catalogue.instance_rows(store, patient_id=patient_id)
    fnds = findings_of(store, patient_id)
    return _card(p, insts, fnds), 1 + len(insts) + len(fnds)


def compute_rows(store, patients: list[dict]) -> tuple[dict[str, dict], int]:
    """The cards of many patients at once (a cold board): one pass over the instance and
    finding rows instead of one lookup per patient."""
    wanted = {p["id"]: p for p in patients if not p.get("merged_into")}
    insts: dict[str, list[dict]] = {pid: [] for pid in wanted}
    found: dict[str, list[dict]] = {pid: [] for pid in wanted}
    all_insts = catalogue.instance_rows(store)
    all_findings = findings.all_findings(store)
    for r in all_insts:
        insts.get(r.get("patient_id"), []).append(r)
    for f in all_findings:
        found.get(f.get("patient_id"), []).append(f)
    cards = {pid: _card(p, insts[pid], found[pid]) for pid, p in wanted.items()}
    return cards, len(patients) + len(all_insts) + len(all_findings)


def concerned(store, event: Event) -> list[str]:
    """The patients whose card `event` may change (the merged one too, who leaves the board)."""
    if event.topic not in BOARD_TOPICS:
        return []
    data = event.data
    pids = [str(data[k]) for k in ("patient_id", "merged") if data.get(k)]
    if not pids and data.get("sop_instance_uid"):
        row = catalogue.get_instance(store, str(data["sop_instance_uid"]))
        if row and row.get("patient_id"):
            pids.append(row["patient_id"])
    return list(dict.fromkeys(pids))


def sort_key(card: dict):
    """Most urgent category first; inside one, who has waited longest (oldest triage) first."""
    return (TRIAGE_CATEGORIES.index(card["triage"]) if card["triage"] != "none" else 4.5,
            card.get("triaged_at") or card.get("created") or 0)


@dataclass
class Stats:
    computed: int = 0    # rows computed (cache misses)
    rows_read: int = 0   # patient, instance and finding rows those computations read
    cleared: int = 0     # times the whole cache was dropped (the bus history had moved on)


class BoardRows:
    """Per-patient board rows of one store, cached and dropped when the patient changes."""

    def __init__(self, store):
        self.store = store
        self.stats = Stats()
        self._lock = threading.Lock()
        self._catching_up = threading.Lock()
        self._rows: dict[str, dict | None] = {}
        self._encoded: dict[str, tuple[dict, str]] = {}  # pid -> (card, its JSON), for board_json
        self._cursor = store.events.last_seq
        self._generation = 0  # bumped when rows are dropped: a computation begun before is not kept

    def _catch_up(self) -> None:
        bus = self.store.events
        with self._catching_up:  # one reader at a time, so no reader answers before its events are applied
            events = bus.since(self._cursor)
            if events is None:  # more happened than the history keeps: start over
                with self._lock:
                    self._rows.clear()
                    self._cursor = bus.last_seq
                    self._generation += 1
                    self.stats.cleared += 1
                return
            if not events:
                return
            stale = [pid for e in events for pid in concerned(self.store, e)]
            with self._lock:
                for pid in stale:
                    self._rows.pop(pid, None)
                self._cursor = events[-1].seq
                if stale:
                    self._generation += 1

    def _get(self, pid: str, patient: dict | None = None) -> dict | None:
        with self._lock:
            if pid in self._rows:
                return self._rows[pid]
            generation = self._generation
        row, read = compute_row(self.store, pid, patient)
        with self._lock:
            self.stats.computed += 1
            self.stats.rows_read += read
            if self._generation == generation:
                self._rows[pid] = row
        return row

    def row(self, pid: str) -> dict | None:
        """The card of patient `pid` as it is now, None when they are not on the board."""
        self._catch_up()
        row = self._get(pid)
        return dict(row) if row is not None else None

    def _sorted_cards(self) -> list[tuple[str, dict]]:
        """(patient id, cached card) of every live patient, in board order (not copies)."""
        self._catch_up()
        patients = _live_patients(self.store)
        with self._lock:
            missing = [p for p in patients if p["id"] not in self._rows]
            generation = self._generation
        if len(missing) > BULK_FROM:
            cards, read = compute_rows(self.store, missing)
            with self._lock:
                self.stats.computed += len(cards)
                self.stats.rows_read += read
                if self._generation == generation:
                    self._rows.update(cards)
        else:
            cards = {}
        out, late = [], []
        with self._lock:  # once for the whole board, not once per card
            for p in patients:
                card = cards.get(p["id"]) or self._rows.get(p["id"], _MISSING)
                if card is _MISSING:
                    late.append(p)
                elif card is not None:
                    out.append((p["id"], card))
        for p in late:
            card = self._get(p["id"], p)
            if card is not None:
                out.append((p["id"], card))
        out.sort(key=lambda pc: sort_key(pc[1]))
        return out

    @staticmethod
    def _summary(cards: list[tuple[str, dict]]) -> dict:
        counts = {c: 0 for c in TRIAGE_CATEGORIES}
        unassigned = 0
        for _, card in cards:
            if card["unassigned"]:
                unassigned += len(card["tray"])
            else:
                counts[card["triage"]] += 1
        return {"counts": counts, "total": len(cards), "at": time.time(), "unassigned": unassigned}

    def board(self) -> dict:
        """The whole board: every live patient's card, counts per category."""
        cards = self._sorted_cards()
        return {"patients": [dict(card) for _, card in cards], **self._summary(cards)}

    def board_json(self, **extra) -> str:
        """`board()` (and `extra`) as JSON text, joined from each card's JSON, which is kept
        with the card until the card changes: a board of 10 000 patients is neither copied
        nor encoded again for every tablet that loads it."""
        cards = self._sorted_cards()
        known, fresh, parts = self._encoded, {}, []
        for pid, card in cards:
            held = known.get(pid)
            if held is None or held[0] is not card:  # a card is replaced, never changed in place
                held = (card, _encode(card))
            fresh[pid] = held
            parts.append(held[1])
        self._encoded = fresh  # patients who left the board leave it too
        tail = _encode({**self._summary(cards), **extra})
        return '{"patients":[' + ",".join(parts) + "]" + ("," + tail[1:] if len(tail) > 2 else "}")


def _encode(obj) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"), sort_keys=True)


_MISSING = object()


def _live_patients(store) -> list[dict]:
    """The rows of every patient on the board (not merged away), read in place: a write
    replaces a row, never changes it, so they are read without copying 10 000 of them."""
    return store.read(lambda db: [p for p in db.storage.read().get(T_PATIENTS, {}).values()
                                  if not p.get("merged_into")])


_caches_lock = threading.Lock()
_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def rows_for(store) -> BoardRows:
    """The one board cache of `store` (made on first use)."""
    with _caches_lock:
        rows = _caches.get(store)
        if rows is None:
            rows = _caches[store] = BoardRows(store)
        return rows
