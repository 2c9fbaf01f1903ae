"""The Modality Worklist provider (MWL SCP) on the kit's DICOM ports.

Handler contract (pynetdicom `evt.EVT_C_FIND`): a generator of (status, identifier) pairs,
one Pending per matching board patient, most urgent first, then Success. A query the kit
cannot answer gets one Failure with an ErrorComment; it never raises into pynetdicom.
Every patient on the board who is not deceased (and not merged away) is one scheduled
procedure step; see fieldkit.dicom.worklist for the items and the matching rules.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from ..dicom import worklist as wl
from ..dicom.status import status as _status
from ..store import patients

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


def items(kit) -> list[Dataset]:
    """Every scheduled step, most urgent first (red before yellow, then oldest first)."""
    config = kit.config
    board = sorted((p for p in patients.list_patients(kit.store) if wl.scheduled(p)), key=wl.urgency)
    return [wl.item_for(p, issuer=config.issuer_of_patient_id, uid_root=config["kit.uid_root"],
                        procedure=config["worklist.procedure"]) for p in board]


def handle_find(event, kit):
    """EVT_C_FIND for Modality Worklist Information Model - FIND."""
    try:
        query = event.identifier
        limit = int(kit.config["worklist.max_items"])
        found = [item for item in items(kit) if wl.matches(item, query)]
        answers = [wl.response(item, query) for item in found[:limit]]
    except wl.QueryError as exc:
        yield _status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    except Exception as exc:  # an identifier pydicom cannot decode, a bad value
        log.info("worklist query from %s refused: %s", event.assoc.requestor.ae_title, type(exc).__name__)
        yield _status(UNABLE_TO_PROCESS, f"cannot read the query: {type(exc).__name__}"), None
        return
    for answer in answers:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, answer
    if len(found) > limit:
        yield _status(SUCCESS, f"{len(found) - limit} more items not sent; narrow the query"), None
    else:
        yield SUCCESS, None
