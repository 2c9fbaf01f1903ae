"""The Modality Worklist provider (MWL SCP) on the kit's DICOM ports.

Handler contract (pynetdicom `evt.EVT_C_FIND`): a generator of (status, identifier) pairs,
one Pending per matching board patient, most urgent first, then Success. A query the kit
cannot answer gets one Failure with an ErrorComment; it never raises into pynetdicom.
Every patient on the board who is not deceased (and not merged away) is one scheduled
procedure step; see fieldkit.dicom.worklist for the items and the matching rules.

Probes ask the same question again and again (every time the sonographer opens the list),
and most patients have not changed since the last time: each patient's item, and each
answer to one query (same identifier bytes, same transfer syntax), is kept already encoded
until that patient's row changes, so a repeated query costs lookups, not pydicom work.
Those encoded answers are then written as ready-made messages (fieldkit.ingest.fast_find)
rather than passed one by one through pynetdicom's message machinery.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom import _handlers, evt
from pynetdicom.dsutils import decode, encode

from ..dicom import worklist as wl
from ..dicom.status import status as _status
from ..store import patients
from . import fast_find

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
MAX_CACHED_ANSWERS = 50_000  # ~ 25 query shapes x 2 000 patients, a few hundred bytes each

# pynetdicom would pretty-print every query and every answer (patient data) for its log.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

# It would also log one INFO line per answer (thousands per worklist query); the kit
# answers no C-GET/C-MOVE, the only other INFO lines of that logger.
logging.getLogger("pynetdicom.service_class").setLevel(logging.WARNING)

# The per-message debug dumps pynetdicom binds to every association cost more than
# the answer itself; an association that asks for the worklist drops them.
_DEBUG_DUMPS = ((evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
                (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler))


def _fingerprint(patient: dict, config) -> tuple:
    """Everything an item is made of: a change in any of it makes a new item."""
    return (tuple(str(patient.get(k) or "") for k in ("id", "triage", "created", "name", "tag", "birth_date", "sex"))
            + (config.issuer_of_patient_id, config["kit.uid_root"], config["worklist.procedure"]))


class _Cache:
    """Items per patient fingerprint; encoded answers per (fingerprint, query, syntax)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: dict[str, tuple[tuple, Dataset]] = {}
        self.answers: OrderedDict = OrderedDict()

    def item(self, patient: dict, config) -> tuple[tuple, Dataset]:
        mark = _fingerprint(patient, config)
        with self.lock:
            known = self.items.get(patient["id"])
        if known is not None and known[0] == mark:
            return known
        made = (mark, wl.item_for(patient, issuer=config.issuer_of_patient_id, uid_root=config["kit.uid_root"],
                                  procedure=config["worklist.procedure"]))
        with self.lock:
            self.items[patient["id"]] = made
        return made

    def answer(self, mark: tuple, item: Dataset, query: Dataset, query_key, syntax) -> tuple[bytes, Dataset] | None:
        """The answer of `item` to `query`, encoded and as a Dataset of those raw elements
        (None: no match). QueryError propagates."""
        key = (mark, query_key)
        with self.lock:
            if key in self.answers:
                self.answers.move_to_end(key)
                return self.answers[key]
        found = None
        if wl.matches(item, query):
            implicit, little = syntax
            data = encode(wl.response(item, query), implicit, little)
            if not data:
                raise ValueError("an answer pydicom cannot encode")
            # re-read as raw elements: pynetdicom's normal path writes those as they are
            found = (data, decode(BytesIO(data), implicit, little))
        with self.lock:
            self.answers[key] = found
            while len(self.answers) > MAX_CACHED_ANSWERS:
                self.answers.popitem(last=False)
        return found


# Keys are the content itself (fingerprint, query bytes), so one cache serves every kit.
_CACHE = _Cache()


def board(kit) -> list[dict]:
    """The board patients that are scheduled steps, most urgent first (red before yellow,
    then oldest first)."""
    return sorted((p for p in patients.list_patients(kit.store) if wl.scheduled(p)), key=wl.urgency)


def items(kit) -> list[Dataset]:
    """Every scheduled step, most urgent first."""
    return [_CACHE.item(p, kit.config)[1] for p in board(kit)]


def _syntax(event):
    """(implicit VR, little endian) of the association's context, or None (deflated: not cached)."""
    try:
        ts = event.context.transfer_syntax
        return None if ts.is_deflated else (ts.is_implicit_VR, ts.is_little_endian)
    except Exception:
        return None


def _query_key(event, syntax):
    try:
        raw = event.request.Identifier
        return (raw.getvalue(), syntax) if raw is not None and syntax is not None else None
    except Exception:
        return None


def handle_find(event, kit):
    """EVT_C_FIND for Modality Worklist Information Model - FIND."""
    for event_type, handler in _DEBUG_DUMPS:
        try:
            event.assoc.unbind(event_type, handler)
        except Exception:  # not bound (logging level "none"): nothing to drop
            pass
    try:
        query = event.identifier
        limit = int(kit.config["worklist.max_items"])
        syntax = _syntax(event)
        key = _query_key(event, syntax)
        cache = _CACHE
        found = []  # (encoded or None, Dataset)
        for patient in board(kit):
            mark, item = cache.item(patient, kit.config)
            if key is None:  # nothing to key the answer on: computed, not kept
                if wl.matches(item, query):
                    found.append((None, wl.response(item, query)))
            else:
                answer = cache.answer(mark, item, query, key, syntax)
                if answer is not None:
                    found.append(answer)
        answers = found[:limit]
    except wl.QueryError as exc:
        yield _status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    except Exception as exc:  # an identifier pydicom cannot decode, a bad value
        log.info("worklist query from %s refused: %s", event.assoc.requestor.ae_title, type(exc).__name__)
        yield _status(UNABLE_TO_PROCESS, f"cannot read the query: {type(exc).__name__}"), None
        return
    sent = None
    if key is not None and kit.config["worklist.lean_answers"]:  # all encoded: straight onto the wire
        sent = fast_find.send_pending(event, [data for data, _ in answers])
    if sent is None:  # the normal path: pynetdicom encodes each answer as a message
        for _, answer in answers:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, answer
    elif sent.cancelled:
        yield CANCEL, None
        return
    if len(found) > limit:
        yield _status(SUCCESS, f"{len(found) - limit} more items not sent; narrow the query"), None
    else:
        yield SUCCESS, None
