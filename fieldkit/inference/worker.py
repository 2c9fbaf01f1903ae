"""The inference worker: a thread of `fieldkit serve` that drains `infer` jobs.

Contract, per job (payload {"sop_instance_uid"}, plus "report": true for a report job):
- the job is leased, not taken: if the process dies mid-job, the lease expires (or is
  resumed at startup) and the job runs again;
- an input the models cannot judge is a *result* ("not assessable" with the reason) and
  the job is acknowledged; an object with no pixels (an SR) is skipped with the reason;
  only real errors (store, codec crash, bug) fail the job, with retries then quarantine;
- results land as: the overlay blob (fsynced first), then in ONE journal record the
  findings rows (replacing any from an earlier attempt), a report job for the SR and the
  ack. Jobs are stored in groups (`inference.commit_group`, none held back more than
  GROUP_SECONDS): one fsync for the group, all of it or none of it after a crash;
- the SR (for the hospital, which gets it at the next sync) is built by its report job,
  queued after every finding job (it costs several times what the finding does), from
  the findings rows, and stored like any instance, so it goes onto the sync queue. Its
  UID is derived from the source and the models, so the findings name it before it
  exists, and a re-run after a crash finds it already stored instead of making a second;
- jobs are leased red patients first, newest capture first (store.queue's order); while
  a probe sends a burst the worker yields, but at most
  `inference.max_ingest_delay_seconds` at a time;
- when the power policy pauses non-urgent inference (hot box, critical battery), jobs of
  patients not tagged red are put back for later; the frame stride is applied always.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from ..events import FINDING_STORED, INFERENCE_SKIPPED, INSTANCE_STORED
from ..records import KIND_INFER, PRIORITY_BULK, is_purged, view_probability
from . import findings, overlay, runner, sr
from .registry import Registry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
IDLE_SECONDS = 0.5
PAUSED_RETRY_SECONDS = 30.0
GROUP_SECONDS = 0.25  # longest a finding waits for the rest of its commit group
# Reports (SRs) are for the hospital, which gets them at the next sync; building one costs
# several times what the finding does, so report jobs run after every finding job
PRIORITY_REPORT = PRIORITY_BULK


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


class Done:
    """One analysed job whose results are not stored yet (see commit)."""

    def __init__(self, job, sop_uid: str, outcome: dict, source: dict | None = None, rows=()):
        self.job, self.sop_uid, self.outcome = job, sop_uid, outcome
        self.source, self.rows = source, list(rows)
        self.sr_ds = None  # the SR to store with the findings
        self.report_later = False  # or: queue a report job for it


def analyse(kit, registry: Registry, sop_uid: str, policy=None, blobs=None, job=None, report: bool = True) -> Done:
    """Analyse one stored instance: its findings rows, ready for `commit`. The overlay goes
    into `blobs` (a blob batch, durable after its wait) or is stored at once. The SR is
    built now with `report`, else `commit` queues a report job for it."""
    from ..store.instances import get_instance, read_dataset
    store, config = kit.store, kit.config
    row = get_instance(store, sop_uid)
    if row is None:
        return Done(job, sop_uid, {"outcome": "skipped", "reason": f"instance {sop_uid} is not in the catalogue"})
    if is_purged(row):  # retention kept only a tombstone
        return Done(job, sop_uid, {"outcome": "skipped", "reason": "pixel data purged after the hospital "
                                   f"confirmed it; retrieve it at {row.get('retrieve_url') or 'the hospital'}"})
    ds = read_dataset(store, sop_uid)
    policy = policy or _policy(kit)
    t0 = time.perf_counter()
    a = runner.analyse(ds, registry, frame_stride=policy.frame_stride, power_reasons=tuple(policy.reasons),
                       max_frames=int(config.get("inference.max_frames") or 120),
                       time_budget_s=float(config.get("inference.time_budget_seconds") or 60.0),
                       batch_size=int(config.get("inference.batch_size") or 16),
                       read_marker=bool(config.get("inference.orientation_marker", True)))
    if a.skipped:
        return Done(job, sop_uid, {"outcome": "skipped", "reason": a.skipped})
    if not a.results:
        return Done(job, sop_uid, {"outcome": "skipped", "reason": "no verified lung or FAST model is loaded"})
    for r in a.results:
        if r.task == "fast" and r.assessable:
            r.result["fluid_area_cm2"] = runner.area_cm2(ds, r.result["fluid_area_px"])
    overlay_addr = None
    if a.overlay_frame is not None:
        png = overlay.render(a.overlay_frame, a.overlay)
        overlay_addr = (blobs or store.blobs).put_bytes(png).addr
    # The SR's UID is known before it is built, so the findings can name it; a re-run
    # after a crash finds the report already stored instead of making a second one.
    uid_root = config.get("kit.uid_root") or "2.25"
    sr_uid = sr.report_uid(ds, a, uid_root=uid_root)
    a.timing_ms["to_finding"] = round((time.perf_counter() - t0) * 1000, 1)
    rows = findings.rows_for(a, source=row, overlay=overlay_addr, sr_uid=sr_uid)
    outcome = {"outcome": "analysed", "sr": sr_uid, "findings": [r["id"] for r in rows],
               "assessable": {r["task"]: r["assessable"] for r in rows}}
    done = Done(job, sop_uid, outcome, row, rows)
    if get_instance(store, sr_uid) is None:
        if report:
            done.sr_ds = sr.build_sr(ds, a, uid_root=uid_root, kit_id=config.get("kit.id") or "")
        else:
            done.report_later = True
    return done


def build_report(kit, sop_uid: str, job=None) -> Done:
    """A report job: the SR of findings already stored, built from their rows (the
    findings name the SR's UID; nothing to do when it is stored already or the findings
    were replaced by a run of other models)."""
    from ..store.instances import get_instance, read_dataset
    store, config = kit.store, kit.config
    rows = sorted(findings.for_instance(store, sop_uid), key=lambda r: runner.CLINICAL.index(r["task"])
                  if r["task"] in runner.CLINICAL else len(runner.CLINICAL))
    done = Done(job, sop_uid, {"outcome": "reported", "sr": rows[0]["sr_sop_instance_uid"] if rows else None})
    if not rows or get_instance(store, rows[0]["sr_sop_instance_uid"]) is not None:
        return done
    ds = read_dataset(store, sop_uid, stop_before_pixels=True)  # the report needs the header only
    a = _analysis_of(rows)
    uid_root = config.get("kit.uid_root") or "2.25"
    if sr.report_uid(ds, a, uid_root=uid_root) == rows[0]["sr_sop_instance_uid"]:
        done.sr_ds = sr.build_sr(ds, a, uid_root=uid_root, kit_id=config.get("kit.id") or "")
    return done


def _analysis_of(rows: list[dict]) -> runner.Analysis:
    """What an SR needs of an analysis, read back from its findings rows."""
    first = rows[0]
    a = runner.Analysis(frames_total=first.get("frames_total") or 0, frames_analysed=first.get("frames_analysed") or 0,
                        view=first.get("view") or "unknown", quality=first.get("quality") or "unknown")
    a.frame_numbers = sorted({f for r in rows for f in r.get("frames") or []})
    a.results = [runner.Result(r["task"],
                               {"name": r["model"], "version": r["model_version"], "sha256": r["model_sha256"]},
                               bool(r["assessable"]), r.get("reason") or "", view_probability(r),
                               dict(r.get("result") or {}), r.get("view") or "", r.get("quality") or "",
                               list(r.get("frames") or []), r.get("finding_probability")) for r in rows]
    return a


def commit(kit, done: list[Done], blobs=None) -> None:
    """Store the results of several jobs and acknowledge them in ONE durable store.write:
    one fsync for the group, and a crash keeps all of it or none of it (a job whose
    results are lost was not acknowledged either, so it runs again; findings are replaced
    and the SR's UID is derived, so a re-run never reports twice)."""
    from ..store.instances import Batch
    store = kit.store
    if blobs is not None:
        blobs.wait()  # the overlays are on disk before any finding names them
    reports = Batch(store, "kit")
    for d in done:
        if d.sr_ds is not None:
            reports.add(d.sr_ds)

    def fn(db):
        for d in done:
            if d.rows:
                findings.replace(store, d.sop_uid, d.rows)
            if d.report_later:  # after every finding job: reports wait for idle time
                store.queue.enqueue(KIND_INFER, {"sop_instance_uid": d.sop_uid, "report": True},
                                    priority=PRIORITY_REPORT, key=f"report:{d.sop_uid}")
        reports.commit()
        for d in done:
            if d.job is not None:
                store.queue.ack(d.job.id)

    store.write(fn)
    stored_at = time.perf_counter()
    for d in done:
        d.outcome.update(finding_at=stored_at, sr_at=stored_at)
        if d.outcome["outcome"] == "analysed":
            store.events.publish(FINDING_STORED, sop_instance_uid=d.sop_uid,
                                 patient_id=(d.source or {}).get("patient_id", ""), sr_sop_instance_uid=d.outcome["sr"])
        elif d.outcome["outcome"] == "skipped":
            store.events.publish(INFERENCE_SKIPPED, sop_instance_uid=d.sop_uid, reason=d.outcome["reason"])


def process(kit, registry: Registry, sop_uid: str, policy=None) -> dict:
    """Analyse one stored instance and store its findings and SR. Returns a short outcome dict."""
    done = analyse(kit, registry, sop_uid, policy)
    commit(kit, [done])
    return done.outcome


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
        self._worked_since = -1e9  # when the worker last came back from yielding to ingest

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.kit.events.unsubscribe(self._arrivals)

    def _note_arrivals(self, wait: float = 0.0) -> bool:
        """Record when captures from outside the kit came; with `wait`, block until one
        comes (or the time is up). True when a capture came."""
        came = False
        while True:
            try:
                event = self._arrivals.get(timeout=wait) if wait > 0 and not came else self._arrivals.get_nowait()
            except queue.Empty:
                return came
            if event.topic == INSTANCE_STORED and event.data.get("source") != "kit":
                self._prev_arrival, self._last_arrival = self._last_arrival, time.monotonic()
                came = True

    def _yield_to_ingest(self) -> None:
        """While a probe is sending a burst, wait: inference shares the interpreter with the
        receiver, and the probe waits for each answer. The wait is bounded: at most
        `inference.max_ingest_delay_seconds`, after which the worker runs at least as long
        before it yields again, so findings (red patients first) keep coming during a
        continuous import. A capture that comes on its own is analysed at once."""
        window, bound = self._yield_limits()
        if window <= 0 or bound <= 0 or time.monotonic() - self._worked_since < bound:
            return
        started = time.monotonic()
        while not self._stop.is_set():
            self._note_arrivals()
            now = time.monotonic()
            quiet_for = now - self._last_arrival
            # one capture on its own is analysed at once; a stream of them is a burst
            in_burst = self._last_arrival - self._prev_arrival < window
            if quiet_for >= window or not in_burst:
                break
            if now - started >= bound:
                break
            self._stop.wait(min(window - quiet_for, bound - (now - started)))
        waited = time.monotonic() - started
        if waited > 0.01:
            self.yielded_seconds += waited
            self._worked_since = time.monotonic()

    def _yield_limits(self) -> tuple[float, float]:
        """(burst window, longest wait) in seconds."""
        return (float(self.kit.config.get("inference.yield_to_ingest_ms") or 0) / 1000.0,
                float(self.kit.config.get("inference.max_ingest_delay_seconds") or 0))

    def _may_yield(self) -> bool:
        """True when the next _yield_to_ingest may wait (a burst is under way)."""
        window, bound = self._yield_limits()
        self._note_arrivals()
        return (window > 0 and bound > 0 and time.monotonic() - self._worked_since >= bound
                and self._last_arrival - self._prev_arrival < window
                and time.monotonic() - self._last_arrival < window)

    def status(self) -> dict:
        return {"running": self._thread.is_alive(), "processed": self.processed,
                "last_error": self.last_error, "yielded_to_ingest_s": round(self.yielded_seconds, 1),
                "models": self.registry.status()}

    def _loop(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # ingest keeps its core
        lease = float(self.kit.config.get("inference.lease_seconds") or 300)
        group_size = max(1, int(self.kit.config.get("inference.commit_group") or 1))
        done: list[Done] = []
        blobs = None
        first_at = 0.0
        while not self._stop.is_set():
            if done and self._may_yield():  # results never wait out a yield
                self._commit(done, blobs)
                done, blobs = [], None
            self._yield_to_ingest()
            try:
                job = self.kit.store.queue.lease(KIND_INFER, lease_seconds=lease)
            except Exception:
                log.exception("could not lease an infer job")
                self._stop.wait(5.0)
                continue
            if job is not None:
                if not done:
                    blobs, first_at = self.kit.store.blobs.batch(), time.monotonic()
                d = self._run(job, blobs)
                if d is not None:
                    done.append(d)
            # results wait for company only briefly: a group is stored when full, when the
            # queue is empty, or after GROUP_SECONDS
            if done and (job is None or len(done) >= group_size or time.monotonic() - first_at >= GROUP_SECONDS):
                self._commit(done, blobs)
                done, blobs = [], None
            if job is None:
                self._note_arrivals(wait=IDLE_SECONDS)  # a new capture wakes the worker at once
        if done:
            self._commit(done, blobs)

    def _run(self, job, blobs=None) -> Done | None:
        """Analyse one leased job; None when it was deferred or failed (already recorded)."""
        store = self.kit.store
        uid = str(job.payload.get("sop_instance_uid", ""))
        try:
            policy = _policy(self.kit)
            if policy.pause_non_urgent_inference and self._triage(uid) != "red":
                store.queue.fail(job.id, f"deferred: {policy.summary()}", retry_in=PAUSED_RETRY_SECONDS)
                log.info("infer job %s deferred for %.0f s: %s", job.id, PAUSED_RETRY_SECONDS, policy.summary())
                return None
            if job.payload.get("report"):
                return build_report(self.kit, uid, job=job)
            log.info("infer job %s: analysing (attempt %d)", job.id, job.attempts)
            d = analyse(self.kit, self.registry, uid, policy, blobs=blobs, job=job, report=False)
            if d.outcome["outcome"] == "skipped":
                log.info("infer job %s skipped: %s", job.id, d.outcome["reason"])
            return d
        except Exception as exc:  # a real error: retry, then quarantine with the reason
            self._failed(job, exc)
            return None

    def _commit(self, done: list[Done], blobs) -> None:
        try:
            if blobs is not None:
                blobs.wait()  # the overlays are on disk before any finding names them
        except Exception as exc:
            for d in done:
                self._failed(d.job, exc)
            return
        try:
            commit(self.kit, done)
            self.processed += len(done)
        except Exception as exc:
            if len(done) == 1:
                self._failed(done[0].job, exc)
                return
            for d in done:  # one bad job (an SR refused) must not hold back the others
                self._commit([d], None)

    def _failed(self, job, exc: Exception) -> None:
        store = self.kit.store
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
