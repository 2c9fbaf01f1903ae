"""The log redactor learns the kit's patients: a service of `serve` that tells
fieldkit.security.redact every patient's identifying values, so that they are masked in
any log line, whatever its shape."""

from __future__ import annotations

import logging
import queue
import threading

from ..events import FINDING_STORED, INSTANCE_CONFLICT, INSTANCE_STORED, PATIENT_MERGED, PATIENT_UPDATED
from ..security import redact
from ..store import patients

log = logging.getLogger(__name__)


class RedactLearner:
    """Background service: tells the log redactor every patient's name, kit ID, tag number,
    birth date and the probes' own IDs, at start and whenever a patient or capture event
    is published, so that they are masked in any log line, whatever its shape."""

    TOPICS = (PATIENT_UPDATED, PATIENT_MERGED, INSTANCE_STORED, INSTANCE_CONFLICT, FINDING_STORED)

    def __init__(self, kit):
        self.kit = kit
        self._events = kit.events.subscribe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redact-learner", daemon=True)
        self._thread.start()

    @staticmethod
    def _values(row: dict) -> list:
        out = [row.get("id"), row.get("tag"), row.get("name"), row.get("birth_date")]
        out += [alias[1] for alias in row.get("aliases") or [] if isinstance(alias, (list, tuple)) and len(alias) > 1]
        return [v for v in out if v]

    def _learn_all(self) -> None:
        rows = patients.list_patients(self.kit.store, include_merged=True)
        rows.sort(key=lambda r: r.get("updated") or 0)  # the newest are kept when the bound is hit
        # one call: each call compiles the pattern of every remembered value again (one call
        # per patient took minutes of CPU at the start of a kit with 10 000 patients)
        redact.remember(*(v for row in rows[-2000:] for v in self._values(row)))

    def _run(self) -> None:
        try:
            if not self.kit.locked:
                self._learn_all()
        except Exception:
            log.exception("could not preload patient values for log redaction")
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event.topic not in self.TOPICS or self.kit.locked:
                continue
            try:
                pid = event.data.get("patient_id")
                row = patients.get_patient(self.kit.store, pid, follow_merges=False) if pid else None
                if row:
                    redact.remember(*self._values(row))
            except Exception:
                log.exception("could not register a patient for log redaction")

    def stop(self) -> None:
        self._stop.set()
        self.kit.events.unsubscribe(self._events)
        self._thread.join(5)


def start(kit) -> RedactLearner:
    return RedactLearner(kit)
