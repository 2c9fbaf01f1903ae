"""The inference worker: a thread of `fieldkit serve` that drains `infer` jobs.

Contract, per job (payload {"sop_instance_uid"}):
- the job is leased, not taken: if the process dies mid-job, the lease expires (or is
  resumed at startup) and the job runs again;
- an input the models cannot judge is a *result* ("not assessable" with the reason) and
  the job is acknowledged; an object with no pixels (an SR) is skipped with the reason;
  only real errors (store, codec crash, bug) fail the job, with retries then quarantine;
- results land as: the overlay blob, the findings rows (replacing any from an earlier
  attempt), the SR (stored like any instance, so it goes onto the sync queue), then the
  ack. The SR's UID is derived from the source and the models, so the findings can name
  it before it exists, and a re-run after a crash finds it already stored instead of
  making a second one;
- when the power policy pauses non-urgent inference (hot box, critical battery), jobs of
  patients not tagged red are put back for later; the frame stride is applied always.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..events import FINDING_STORED, INFERENCE_SKIPPED, INSTANCE_STORED
from ..records import KIND_INFER
from . import findings, overlay, runner, sr
from .registry import Registry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
IDLE_SECONDS = 0.5
PAUSED_RETRY_SECONDS = 30.0
MAX_YIELD_SECONDS = 5.0


def _policy(kit):
    """The power policy now: from the kit's probe when one is wired, else the shared monitor."""
    from ..hardware import policy as hp
    probe = getattr(kit, "hardware", None)
    try:
        if probe is not None and hasattr(probe, "read"):
            return hp.decide(probe.read(), kit.config)
        return hp.current_policy(kit.config, kit.data_dir)
    except Exception:  # a flaky sensor must never stop inference
        log.warning("power policy unavailable; running at full speed")
        return hp.NORMAL


def process(kit, registry: Registry, sop_uid: str, policy=None) -> dict:
    """Analyse one stored instance and store its findings. Returns a short outcome dict."""
    from ..store.instances import get_instance, put_instance, read_dataset
    store, config = kit.store, kit.config
    row = get_instance(store, sop_uid)
    if row is None:
        return {"outcome": "skipped", "reason": f"instance {sop_uid} is not in the catalogue"}
    if row.get("purged_at") or not row.get("blob"):  # retention kept only a tombstone
        return {"outcome": "skipped", "reason": "pixel data purged after the hospital confirmed it; "
                f"retrieve it at {row.get('retrieve_url') or 'the hospital'}"}
    ds = read_dataset(store, sop_uid)
    policy = policy or _policy(kit)
    t0 = time.perf_counter()
    a = runner.analyse(ds, registry, frame_stride=policy.frame_stride, power_reasons=tuple(policy.reasons),
                       max_frames=int(config.get("inference.max_frames") or 120),
                       time_budget_s=float(config.get("inference.time_budget_seconds") or 60.0),
                       batch_size=int(config.get("inference.batch_size") or 16))
    if a.skipped:
        return {"outcome": "skipped", "reason": a.skipped}
    if not a.results:
        return {"outcome": "skipped", "reason": "no verified lung or FAST model is loaded"}
    for r in a.results:
        if r.task == "fast" and r.assessable:
            r.result["fluid_area_cm2"] = runner.area_cm2(ds, r.result["fluid_area_px"])
    overlay_addr = None
    if a.overlay_frame is not None:
        overlay_addr = store.blobs.put_bytes(overlay.render(a.overlay_frame, a.overlay)).addr
    # The SR's UID is known before it is built, so the findings (what the clinician waits
    # for) are stored first and the report follows; a crash in between re-runs the job.
    sr_uid = sr.report_uid(ds, a, uid_root=config.get("kit.uid_root") or "2.25")
    a.timing_ms["to_finding"] = round((time.perf_counter() - t0) * 1000, 1)
    rows = findings.rows_for(a, source=row, overlay=overlay_addr, sr_uid=sr_uid)
    findings.replace(store, sop_uid, rows)
    finding_at = time.perf_counter()
    store.events.publish(FINDING_STORED, sop_instance_uid=sop_uid, patient_id=row.get("patient_id", ""),
                         sr_sop_instance_uid=sr_uid)
    if get_instance(store, sr_uid) is None:
        sr_ds = sr.build_sr(ds, a, uid_root=config.get("kit.uid_root") or "2.25", kit_id=config.get("kit.id") or "")
        put_instance(store, sr_ds, "kit")
    return {"outcome": "analysed", "sr": sr_uid, "findings": [r["id"] for r in rows],
            "assessable": {r["task"]: r["assessable"] for r in rows},
            "finding_at": finding_at, "sr_at": time.perf_counter()}


class Worker:
    def __init__(self, kit, registry: Registry | None = None):
        self.kit = kit
        self.registry = registry or Registry(kit.config, kit.data_dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self.processed = 0
        self.last_error = ""
        self.yielded_seconds = 0.0
        self._arrivals = kit.events.subscribe()
        self._last_arrival = self._prev_arrival = -1e9

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.kit.events.unsubscribe(self._arrivals)

    def _yield_to_ingest(self) -> None:
        """While a probe is sending a burst, wait (bounded): inference shares the interpreter
        with the receiver, and the probe waits for each answer; findings catch up right after.
        A capture that comes on its own is analysed at once."""
        window = float(self.kit.config.get("inference.yield_to_ingest_ms") or 0) / 1000.0
        if window <= 0:
            return
        started = time.monotonic()
        while not self._stop.is_set():
            while True:  # note when the last two captures from outside the kit came
                try:
                    event = self._arrivals.get_nowait()
                except Exception:
                    break
                if event.topic == INSTANCE_STORED and event.data.get("source") != "kit":
                    self._prev_arrival, self._last_arrival = self._last_arrival, time.monotonic()
            quiet_for = time.monotonic() - self._last_arrival
            # one capture on its own is analysed at once; a stream of them is a burst
            in_burst = self._last_arrival - self._prev_arrival < window
            if quiet_for >= window or not in_burst or time.monotonic() - started >= MAX_YIELD_SECONDS:
                break
            self._stop.wait(window - quiet_for)
        self.yielded_seconds += time.monotonic() - started

    def status(self) -> dict:
        return {"running": self._thread.is_alive(), "processed": self.processed,
                "last_error": self.last_error, "yielded_to_ingest_s": round(self.yielded_seconds, 1),
                "models": self.registry.status()}

    def _loop(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # ingest keeps its core
        lease = float(self.kit.config.get("inference.lease_seconds") or 300)
        while not self._stop.is_set():
            try:
                job = self.kit.store.queue.lease(KIND_INFER, lease_seconds=lease)
            except Exception:
                log.exception("could not lease an infer job")
                self._stop.wait(5.0)
                continue
            if job is None:
                self._stop.wait(IDLE_SECONDS)
                continue
            self._yield_to_ingest()
            self._run(job)

    def _run(self, job) -> None:
        store = self.kit.store
        uid = str(job.payload.get("sop_instance_uid", ""))
        try:
            policy = _policy(self.kit)
            if policy.pause_non_urgent_inference and self._triage(uid) != "red":
                store.queue.fail(job.id, f"deferred: {policy.summary()}", retry_in=PAUSED_RETRY_SECONDS)
                return
            log.info("infer job %s: analysing (attempt %d)", job.id, job.attempts)
            outcome = process(self.kit, self.registry, uid, policy)
            if outcome["outcome"] == "skipped":
                log.info("infer job %s skipped: %s", job.id, outcome["reason"])
                store.events.publish(INFERENCE_SKIPPED, sop_instance_uid=uid, reason=outcome["reason"])
            store.queue.ack(job.id)
            self.processed += 1
        except Exception as exc:  # a real error: retry, then quarantine with the reason
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.exception("infer job %s failed (attempt %d)", job.id, job.attempts)
            try:
                # attempts also count power-policy deferrals: quarantine only after repeated real errors
                permanent = job.attempts >= MAX_ATTEMPTS and not job.last_error.startswith("deferred")
                store.queue.fail(job.id, self.last_error, permanent=permanent, retry_in=30.0 * min(job.attempts, 10))
            except Exception:
                log.exception("could not record the failure of infer job %s", job.id)

    def _triage(self, uid: str) -> str:
        from ..store.instances import get_instance
        from ..store.patients import get_patient
        pid = (get_instance(self.kit.store, uid) or {}).get("patient_id")
        return ((get_patient(self.kit.store, pid) if pid else None) or {}).get("triage", "none")


class _Off:
    def stop(self) -> None:
        pass

    def status(self) -> dict:
        return {"running": False, "reason": "inference.enabled is false"}


def start(kit):
    """SERVICES entry: the running inference worker (call .stop() to end it)."""
    if not kit.config.get("inference.enabled", True):
        return _Off()
    return Worker(kit).start()
