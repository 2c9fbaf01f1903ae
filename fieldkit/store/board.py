"""The triage board: one card per live patient, each computed from that patient's own rows
and kept, in board order, until that patient changes (layer 2).

Every write that changes what a card shows publishes an event naming the patient (or one
of their captures) once it has committed. The board reads the event bus's history
(fieldkit.events) before answering and recomputes the cards of the patients those events
name, moving them in the order, so the whole board costs one computation per patient
once, each change costs O(that patient), and a page costs the page: the tablets load
the board a page at a time and the live stream sends the changed cards.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import itertools
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass

from ..dicom.names import format_person_name
from ..errors import BadInput
from ..events import (Event, FINDING_STORED, INSTANCE_CONFLICT, INSTANCE_STORED, PATIENT_MERGED, PATIENT_UPDATED,
                      SYNC_CONFIRMED, SYNC_QUARANTINED)
from ..records import T_PATIENTS, TRIAGE_CATEGORIES
from . import care, finding_words, findings
from . import instances as catalogue
from . import patients as pstore


log = logging.getLogger(__name__)

# Topics after which a patient's card may look different; the others leave it as it was
BOARD_TOPICS = frozenset({INSTANCE_STORED, INSTANCE_CONFLICT, FINDING_STORED, PATIENT_UPDATED, PATIENT_MERGED,
                          SYNC_CONFIRMED, SYNC_QUARANTINED})
NOT_CAPTURES = ("SR", "DOC")  # the kit's own reports and documents (a handover sheet) are no captures
PUBLIC_FIELDS = ("id", "tag", "name", "birth_date", "sex", "age", "triage", "created", "updated")
# Tray captures a holder's card carries, the oldest (the tray shows the oldest first; the
# card counts the rest in `tray_total`): a probe that sends under one unknown ID all day
# would otherwise make every event about it carry, and every tablet receive, thousands.
TRAY_MAX = 100


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
                tray=[tray_item(r) for r in heapq.nsmallest(TRAY_MAX, images, key=lambda r: r.get("received_at") or 0)]
                if unassigned else [],
                tray_total=len(images) if unassigned else 0)
    card.update(care.card_fields(p))  # zone, disposition, interventions
    card.update(finding_words.card_fields(card["triage"], insts, fnds))  # positive findings in words
    return card


def compute_row(store, patient_id: str, patient: dict | None = None) -> tuple[dict | None, int]:
    """The board card of one patient from their own rows, and how many rows it read;
    None for a patient who is not on the board (unknown, or merged into another)."""
    p = patient if patient is not None else pstore.get_patient(store, patient_id, follow_merges=False)
    if p is None or p.get("merged_into"):
        return None, 1
    insts = catalogue.rows_as_held(store, patient_id)
    fnds = findings_of(store, patient_id)
    return _card(p, insts, fnds), 1 + len(insts) + len(fnds)


def compute_rows(store, patients: list[dict]) -> tuple[dict[str, dict], int]:
    """The cards of many patients at once (a cold board), one patient after the other from
    their rows as held: copying every catalogue row at once (100 000 at a time) peaked at
    ~1 KB a row, and the cards made meanwhile pinned that heap."""
    cards, read = {}, len(patients)
    for p in patients:
        if p.get("merged_into"):
            continue
        cards[p["id"]], n = compute_row(store, p["id"], p)
        read += n - 1
    return cards, read


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


def _place(pid: str, card: dict) -> tuple:
    """Where a card stands inside its category (ties broken by patient id, so every card has one place)."""
    return (sort_key(card)[1], pid)


def _haystack(card: dict) -> str:
    """What a board search by tag, ID or name looks in (lower case)."""
    return "\n".join(str(v).lower() for v in (card["id"], card.get("tag"), card.get("name"), card.get("display_name"),
                                               *(card.get("tags") or [])) if v)


def encode_cursor(card: dict) -> str:
    """The opaque position after `card` in board order (`page_json(after=...)`)."""
    raw = json.dumps([card["triage"], sort_key(card)[1], card["id"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, tuple]:
    """(category, place) of a cursor `encode_cursor` made; BadInput for anything else."""
    try:
        if len(text) > 400:
            raise ValueError
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode())
        category, at, pid = raw
        if category not in TRIAGE_CATEGORIES or not isinstance(pid, str) or isinstance(at, bool) \
                or not isinstance(at, (int, float)) or at != at:
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        raise BadInput("after is not a board position this kit gave") from None
    return category, (at, pid)


@dataclass
class Stats:
    computed: int = 0    # rows computed (cache misses)
    rows_read: int = 0   # patient, instance and finding rows those computations read
    cleared: int = 0     # times the whole board was computed again (first use, or the bus history had moved on)


class BoardRows:
    """The board of one store: every live patient's card, kept in board order per category
    (a sorted list each) with the category counts, the tray's holders and each card's
    JSON. An event naming a patient recomputes that patient's card and moves it in the
    order, so a page of the board costs the page, not the number of patients."""

    def __init__(self, store):
        self.store = store
        self.stats = Stats()
        self._lock = threading.Lock()  # one updater and reader of the index at a time
        self._built = False
        self._cursor = store.events.last_seq
        self._seen = 0  # patient rows (merged ones too) when the board was built or last changed
        self._cards: dict[str, dict] = {}  # pid -> card of everyone on the board
        self._order: dict[str, list[tuple]] = {c: [] for c in TRIAGE_CATEGORIES}  # category -> sorted places
        self._holders: dict[str, int] = {}  # pid -> captures waiting in the tray (unassigned records)
        self._hay: dict[str, str] = {}
        self._json: dict[str, str] = {}  # pid -> the card's JSON, made when first sent

    # -- keeping the index -------------------------------------------------------------

    def _drop(self, pid: str) -> None:
        card = self._cards.pop(pid, None)
        self._hay.pop(pid, None)
        self._json.pop(pid, None)
        if card is None:
            return
        if self._holders.pop(pid, None) is None:
            places = self._order[card["triage"]]
            i = bisect.bisect_left(places, _place(pid, card))
            if i < len(places) and places[i][1] == pid:
                del places[i]

    def _put(self, pid: str, card: dict | None) -> None:
        self._drop(pid)
        if card is None:
            return
        self._cards[pid] = card
        self._hay[pid] = _haystack(card)
        if card["unassigned"]:  # its captures wait in the tray; it is no card of the board
            self._holders[pid] = card["tray_total"]
        else:
            bisect.insort(self._order[card["triage"]], _place(pid, card))

    def _patient_rows(self) -> int:
        return self.store.read(lambda db: len(db.storage.read().get(T_PATIENTS, {})))

    def _build(self) -> None:
        bus = self.store.events
        cursor = bus.last_seq  # taken first: what happens while we compute is applied again
        patients = _live_patients(self.store)
        seen = self._patient_rows()
        cards, read = compute_rows(self.store, patients)
        self._cards, self._holders, self._hay, self._json = {}, {}, {}, {}
        self._order = {c: [] for c in TRIAGE_CATEGORIES}
        for pid, card in cards.items():
            self._put(pid, card)
        self._built, self._cursor, self._seen = True, cursor, seen
        self.stats.computed += len(cards)
        self.stats.rows_read += read
        self.stats.cleared += 1

    def _catch_up(self) -> None:
        """Apply what the event bus says changed since the last look (under self._lock)."""
        if not self._built:
            self._build()
            return
        events = self.store.events.since(self._cursor)
        if events is None:  # more happened than the history keeps: start over
            self._build()
            return
        if events:
            for pid in dict.fromkeys(pid for e in events for pid in concerned(self.store, e)):
                card, read = compute_row(self.store, pid)
                self._put(pid, card)
                self.stats.computed += 1
                self.stats.rows_read += read
            self._cursor = events[-1].seq
            self._seen = self._patient_rows()
        elif self._patient_rows() != self._seen:  # a patient row written without an event
            self._build()

    # -- reading -----------------------------------------------------------------------

    def row(self, pid: str) -> dict | None:
        """The card of patient `pid` as it is now, None when they are not on the board."""
        with self._lock:
            self._catch_up()
            card = self._cards.get(pid)
        return dict(card) if card is not None else None

    def _summary(self) -> dict:
        counts = {c: len(self._order[c]) for c in TRIAGE_CATEGORIES}
        return {"counts": counts, "total": len(self._cards), "at": time.time(),
                "unassigned": sum(self._holders.values())}

    def summary(self) -> dict:
        """Counts per category, total of patients and unassigned captures of the whole board."""
        with self._lock:
            self._catch_up()
            return self._summary()

    def board(self) -> dict:
        """The whole board: every live patient's card, counts per category (for the exports:
        the tablets load it a page at a time, `page()`)."""
        with self._lock:
            self._catch_up()
            cards = sorted(self._cards.items(), key=lambda pc: (sort_key(pc[1]), pc[0]))
            summary = self._summary()
        return {"patients": [dict(card) for _, card in cards], **summary}

    def _tray(self, most: int) -> list[dict]:
        """The holders of the oldest `most` tray captures (the tray shows the oldest first),
        each card carrying only those of its captures."""
        oldest = sorted(((item.get("received_at") or 0, item["uid"], pid)
                         for pid in self._holders for item in self._cards[pid]["tray"]))[:most]
        keep = {uid for _, uid, _ in oldest}
        return [dict(self._cards[pid], tray=[i for i in self._cards[pid]["tray"] if i["uid"] in keep])
                for pid in dict.fromkeys(pid for _, _, pid in oldest)]

    def _page(self, limit: int, after: str | None, triage: str | None, q: str) -> tuple[list[str], int]:
        """The patient ids of one page in board order, and how many more match after it."""
        start = decode_cursor(after) if after else None
        needle = q.strip().lower()
        out: list[str] = []
        more = 0
        order = sorted(TRIAGE_CATEGORIES, key=lambda c: sort_key({"triage": c})[0])
        for category in order:
            if triage and category != triage:
                continue
            places = self._order[category]
            first = 0
            if start is not None:
                if sort_key({"triage": category})[0] < sort_key({"triage": start[0]})[0]:
                    continue
                if category == start[0]:
                    first = bisect.bisect_right(places, start[1])
            if not needle:  # counted, not walked
                take = places[first:first + max(0, limit - len(out))]
                out.extend(pid for _, pid in take)
                more += len(places) - first - len(take)
                continue
            for _, pid in itertools.islice(places, first, None):  # a search looks at every card once
                if needle in self._hay[pid]:
                    if len(out) < limit:
                        out.append(pid)
                    else:
                        more += 1
        return out, more

    def page_json(self, limit: int, after: str | None = None, triage: str | None = None, q: str = "",
                  tray_max: int = 100, **extra) -> str:
        """One page of the board as JSON text: up to `limit` cards in board order after the
        cursor `after` (of one category, `triage`; matching a search `q` by tag, ID or name),
        with `more` (cards matching after this page) and `next` (the cursor for them, or
        null), on the first page the holders of the oldest `tray_max` tray captures (cards
        with `unassigned`, carrying only those captures),
        and the whole board's counts, total and unassigned captures. Each card's JSON is kept
        until the card changes."""
        if triage is not None and triage not in TRIAGE_CATEGORIES:
            raise BadInput(f"triage must be one of {', '.join(TRIAGE_CATEGORIES)}")
        with self._lock:
            self._catch_up()
            pids, more = self._page(limit, after, triage, q)
            parts = []
            for pid in pids:
                text = self._json.get(pid)
                if text is None:
                    text = self._json[pid] = _encode(self._cards[pid])
                parts.append(text)
            if after is None:
                parts += [_encode(card) for card in self._tray(tray_max)]
            tail = {**self._summary(), "more": more,
                    "next": encode_cursor(self._cards[pids[-1]]) if more and pids else None, **extra}
        return '{"patients":[' + ",".join(parts) + "]," + _encode(tail)[1:]


def _encode(obj) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"), sort_keys=True)


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


class _Warming:
    """The board being built in the background when `serve` starts (a SERVICES entry)."""

    def __init__(self, store):
        self.thread = threading.Thread(target=self._run, args=(store,), name="board-warm", daemon=True)

    @staticmethod
    def _run(store) -> None:
        try:
            rows_for(store).summary()
        except Exception:  # the kit stopped or locked meanwhile: the first page builds it then
            log.debug("board not built at start", exc_info=True)

    def stop(self) -> None:
        self.thread.join(timeout=1.0)


def start(kit) -> _Warming:
    """SERVICES entry: build the board (every card, in order) once when `serve` starts, so
    the first tablet to open the board gets a page instead of waiting for 10 000 cards."""
    warming = _Warming(kit.store)
    warming.thread.start()
    return warming
