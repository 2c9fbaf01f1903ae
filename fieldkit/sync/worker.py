"""The sync worker: leases `sync` queue rows and sends them to the hospital by STOW-RS.

`start(kit)` runs it as threads of `fieldkit serve` (two lanes, see planner.py);
`SyncWorker.run_once()` is `fieldkit sync --once`. An instance is confirmed, and its
queue row acknowledged, in one store write, and only when the hospital's response lists
it in ReferencedSOPSequence. A SIGKILL at any instant therefore leaves the row leased (it
is resumed at the next open) or done; a resumed instance that may already have reached
the hospital is first looked up with QIDO, then re-sent if missing. Re-sending is
harmless (same SOP Instance UID) and is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

from fieldkit.errors import ConfigError, PermanentError, TransientError
from fieldkit.events import SYNC_CONFIRMED, SYNC_QUARANTINED
from fieldkit.records import sync_priority
from fieldkit.store.instances import get_instance, set_sync_state
from fieldkit.store.patients import correct_hospital_copy

from . import progress as pg
from .client import (HospitalConfigError, LinkDown, Part, RateLimiter,
                     RequestRefused, StowClient, StowResult, is_transient_failure)
from .hospital import endpoint_from_config
from .link import Backoff, probe
from .planner import BULK, EXPRESS, Item, Pool
from .retention import purge_expired

log = logging.getLogger(__name__)

QIDO_BEFORE_RESEND_BYTES = 32 * 1024   # below this a re-send costs less than asking
UNKNOWN_LIMIT = 3                       # times a hospital may ignore one instance sent alone
RETENTION_INTERVAL = 3600.0
POWER_INTERVAL = 10.0


@dataclass
class Prepared:
    item: Item
    part: Part
    uid: str
    wire_syntax: str = ""
    transcoded: bool = False
    resend: bool = False


def _update_instance(store, uid: str, **fields) -> None:
    set_sync_state(store, uid, **fields)


def in_windows(windows: list[str], now: dt.datetime | None = None) -> bool:
    """True when `now` (local) is inside one of the "HH:MM-HH:MM" windows (or none set)."""
    if not windows:
        return True
    now = now or dt.datetime.now()
    minute = now.hour * 60 + now.minute
    for w in windows:
        try:
            a, b = str(w).split("-")
            start = int(a.split(":")[0]) * 60 + int(a.split(":")[1])
            end = int(b.split(":")[0]) * 60 + int(b.split(":")[1])
        except (ValueError, IndexError):
            raise ConfigError(f"sync.windows entry {w!r} is not HH:MM-HH:MM") from None
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return False


class SyncWorker:
    def __init__(self, store, config, data_dir=None, *, endpoint=None, poll: float = 0.25,
                 kit_id: str = "", issuer: str = "", power_policy=None):
        from fieldkit.dicom.transcode import target_syntaxes

        self.store = store
        self.config = config
        self.endpoint = endpoint or endpoint_from_config(config, data_dir, store.secrets)
        kbps = int(config["sync.bandwidth_kbps"] or 0)
        self.limiter = RateLimiter(kbps * 1000 / 8 if kbps > 0 else None)
        self.backoff = Backoff(base=1.0, cap=float(config["sync.backoff_max_seconds"]))
        self.live = pg.Live()
        self.pool = Pool(store, max_bytes=int(config["sync.batch_max_kb"]) * 1024,
                         max_count=int(config["sync.batch_max_count"]))
        self.pool.on_bad_row = lambda row, reason: self._quarantine_row(row.id, "", reason)
        self.syntaxes = target_syntaxes(str(config["sync.transcode"]))
        self.refused_syntaxes: set[str] = set()
        self.poll = poll
        self.kit_id = kit_id or str(config["kit.id"] or "")
        self.issuer = issuer or config.issuer_of_patient_id
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unknown: dict[str, int] = {}
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._once = False
        self._last_purge = 0.0
        self.power_policy = power_policy
        self._power_checked = -POWER_INTERVAL
        self._power_defer = False

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> "SyncWorker":
        for lane in (EXPRESS, BULK):
            t = threading.Thread(target=self._lane, args=(lane,), name=f"sync-{lane}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self.pool.release_all("returned to the queue: sync stopped")

    def run_once(self, timeout: float | None = None) -> dict:
        """Send everything that can go now; return when the queue has nothing due, the link
        fails, or `timeout` passes. Returns the sync status."""
        self._once = True
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.stop()
        return pg.status(self.store, self)

    def status(self) -> dict:
        return pg.status(self.store, self)

    # ---- the lanes ---------------------------------------------------------------------
    def _may_send(self, lane: str) -> tuple[bool, str]:
        if not in_windows(list(self.config["sync.windows"] or [])):
            return False, "outside the configured sync windows"
        if lane == BULK and self.config["sync.metered"] and not self.config["sync.allow_images"]:
            return False, "metered link: images wait until allowed"
        return True, ""

    def _drained(self) -> bool:
        """Nothing in flight and nothing that may go now (for --once)."""
        with self._flight_lock:
            busy = self._in_flight
        if busy:
            return False
        limit = self._power_limit()
        with self.pool.lock:
            eligible = [i for i in self.pool.items.values()
                        if not (i.lane == BULK and limit is not None and i.priority > limit)]
            full = len(self.pool) >= self.pool.lookahead_count
        if eligible:
            return False
        return full or self.pool._min_ready_priority() is None

    def _lane(self, lane: str) -> None:
        client = StowClient(self.endpoint, limiter=self.limiter)
        try:
            while not self._stop.is_set():
                ok, why = self._may_send(lane)
                if not ok:
                    if self._once and (lane == BULK or self._drained()):
                        return
                    self._stop.wait(self.poll * 4)
                    continue
                wait = self.backoff.remaining()
                if wait > 0:
                    if self._once:
                        return
                    self._stop.wait(min(wait, 1.0))
                    continue
                if not self.live.link_up:
                    up, reason = probe(self.endpoint.base_url, timeout=min(3.0, self.endpoint.connect_timeout))
                    if not up:
                        self._link_down(reason)
                        continue
                self._maybe_purge()
                limit = self._power_limit() if lane == BULK else None
                with self._flight_lock:
                    batch = self.pool.take(lane, max_priority=limit)
                    self._in_flight += 1 if batch else 0
                if not batch:
                    if self._once and self._drained():
                        return
                    self._stop.wait(self.poll)
                    continue
                try:
                    self._send(client, lane, batch)
                finally:
                    with self._flight_lock:
                        self._in_flight -= 1
        except Exception:  # a bug must not kill sync silently; rows stay leased → resumed
            log.exception("sync lane %s stopped by an unexpected error", lane)
            self.live.last_error = f"sync {lane} lane stopped by an internal error (see log)"
        finally:
            client.close()

    def _power_limit(self) -> int | None:
        """While the power policy defers bulk sync (low battery, hot box), only red-tagged
        patients' images go. Read at most every POWER_INTERVAL seconds."""
        if self.power_policy is None:
            return None
        now = time.monotonic()
        if now - self._power_checked >= POWER_INTERVAL:
            self._power_checked = now
            try:
                self._power_defer = bool(getattr(self.power_policy(), "defer_bulk_sync", False))
            except Exception:  # a flaky sensor must never stop sync
                self._power_defer = False
        return sync_priority("red", "image") if self._power_defer else None

    def _link_down(self, reason: str, at_least: float = 0.0) -> float:
        delay = self.backoff.failure(at_least)
        with self.live.lock:
            self.live.link_up = False
            self.live.link = f"{reason}; next try in {delay:.0f}s"
        log.info("hospital link: %s", self.live.link)
        return delay

    def _maybe_purge(self) -> None:
        days = int(self.config["sync.retention_days"] or 0)
        if days <= 0 or time.monotonic() - self._last_purge < RETENTION_INTERVAL:
            return
        self._last_purge = time.monotonic()
        try:
            purge_expired(self.store, days)
        except Exception:
            log.exception("retention purge failed; will try again later")

    # ---- one request -------------------------------------------------------------------
    def _prepare(self, client: StowClient, item: Item) -> Prepared | None:
        row = item.row
        if item.instance is None:  # triage / identity / merge update, or a review
            from .updates import document_for
            data, uid = document_for(self.store, dict(row.payload or {}), row.created or time.time(),
                                     self.issuer, self.kit_id)
            return Prepared(item, Part.from_bytes(uid, data), uid)
        uid = item.uid
        doc = get_instance(self.store, uid)
        if doc is None:
            self._quarantine_row(row.id, "", f"instance {uid} is no longer in the kit's catalogue")
            return None
        item.instance = doc
        if doc.get("sync_state") == pg.CONFIRMED:
            self.store.queue.ack(row.id)
            return None
        resend = doc.get("sync_state") == pg.SENDING
        size = int(doc.get("size") or 0)
        if resend and size >= QIDO_BEFORE_RESEND_BYTES and not doc.get("correction"):
            # (a correction's old copy has the same UID: finding it says nothing)
            url = client.find_instance(uid)  # TransientError propagates: whole batch waits
            if url is not None:
                self._confirm(Prepared(item, Part(uid, 0, lambda: []), uid), url, asked=True)
                return None
        addr = doc.get("blob")
        if not addr or not self.store.blobs.exists(addr):
            self._quarantine_row(row.id, uid, "the stored DICOM file is missing (purged or damaged)")
            return None
        ts = str(doc.get("transfer_syntax") or "")
        restamped = self._restamp_if_moved(doc, addr)
        if restamped is not None:  # merged into another patient since it was stored
            return Prepared(item, Part.from_bytes(uid, restamped), uid, ts, False, resend)
        syntaxes = tuple(s for s in self.syntaxes if s not in self.refused_syntaxes)
        if syntaxes and doc.get("sync_wire") != "original":
            from fieldkit.dicom.transcode import transcode, worth_trying
            if worth_trying(ts, size):
                data = self.store.blobs.get_bytes(addr)
                out = transcode(data, syntaxes)
                if out is not None:
                    return Prepared(item, Part.from_bytes(uid, out[0]), uid, out[1], True, resend)
                return Prepared(item, Part.from_bytes(uid, data), uid, ts, False, resend)
        part = Part(uid, size, lambda: self.store.blobs.iter_chunks(addr))
        return Prepared(item, part, uid, ts, False, resend)

    def _restamp_if_moved(self, doc: dict, addr: str) -> bytes | None:
        """The stored bytes carry the PatientID of the time of capture; after a merge the
        catalogue names another patient, and the hospital must get the current one."""
        import io
        import pydicom
        first = next(iter(self.store.blobs.iter_chunks(addr)), b"")
        try:
            head = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True)
            if str(head.get("PatientID", "")) == str(doc.get("patient_id", "")):
                return None
        except Exception:  # header larger than a chunk, or odd: check on the full object
            pass
        from fieldkit.dicom.identity import stamp
        from fieldkit.dicom.encode import encode_part10
        ds = pydicom.dcmread(io.BytesIO(self.store.blobs.get_bytes(addr)))
        if not stamp(ds, str(doc.get("patient_id", "")), self.issuer):
            return None
        wrong = str((doc.get("correction") or {}).get("from") or "")
        if wrong and "OtherPatientIDsSequence" in ds:  # filed there in error: not another ID of this patient
            keep = [o for o in ds.OtherPatientIDsSequence if str(o.get("PatientID", "")) != wrong]
            if keep:
                ds.OtherPatientIDsSequence = keep
            else:
                del ds.OtherPatientIDsSequence
        return encode_part10(ds)

    def _send(self, client: StowClient, lane: str, batch: list[Item]) -> None:
        prepared: list[Prepared] = []
        try:
            for item in batch:
                try:
                    p = self._prepare(client, item)
                except PermanentError as exc:
                    self._quarantine_row(item.row.id, item.uid, str(exc))
                    continue
                if p is not None:
                    prepared.append(p)
        except TransientError as exc:  # a QIDO look-up failed: nothing was sent
            self._transient([Prepared(i, Part(i.uid, 0, lambda: []), i.uid) for i in batch
                             if not self._row_settled(i.row.id)], exc)
            return
        if not prepared:
            return
        if any(p.resend for p in prepared):
            self.store.write(lambda db: pg.bump_stats(
                db, resent_instances=sum(1 for p in prepared if p.resend)))
        for p in prepared:
            if p.item.instance is not None:
                _update_instance(self.store, p.uid, sync_state=pg.SENDING, sync_wire_syntax=p.wire_syntax)
            self.live.begin(p.uid, p.part.size, lane)
        try:
            result = client.store([p.part for p in prepared], on_progress=self.live.progress)
        except RequestRefused as exc:
            self._account_bytes(prepared)
            self._refused(client, prepared, exc)
        except TransientError as exc:
            self._account_bytes(prepared)
            self._transient(prepared, exc)
        else:
            self._account_bytes(prepared)
            self._apply(client, result, prepared)
        finally:
            for p in prepared:
                self.live.end(p.uid)

    def _row_settled(self, row_id: str) -> bool:
        try:
            return self.store.queue.get(row_id).state != "leased"
        except Exception:
            return True

    def _account_bytes(self, prepared: list[Prepared]) -> None:
        with self.live.lock:
            sent = sum(self.live.sending.get(p.uid, {}).get("done", 0) for p in prepared)
        resent = sum(self.live.sending.get(p.uid, {}).get("done", 0) for p in prepared if p.resend)
        self.store.write(lambda db: pg.bump_stats(db, sent_bytes=sent, resent_bytes=resent))

    # ---- outcomes ----------------------------------------------------------------------
    def _transient(self, prepared: list[Prepared], exc: TransientError) -> None:
        retry_after = getattr(exc, "retry_after", None) or 0.0
        if isinstance(exc, (LinkDown, HospitalConfigError)):
            delay = self._link_down(str(exc), retry_after)
        else:
            delay = self.backoff.failure(retry_after)
            with self.live.lock:
                self.live.link = f"{exc}; next try in {delay:.0f}s"
        self.live.last_error = str(exc)
        for p in prepared:
            self.store.queue.fail(p.item.row.id, str(exc), retry_in=delay)

    def _link_ok(self) -> None:
        self.backoff.success()
        with self.live.lock:
            self.live.link_up = True
            self.live.link = "link up"

    def _apply(self, client: StowClient, result: StowResult, prepared: list[Prepared]) -> None:
        self._link_ok()
        single = len(prepared) == 1
        for p in prepared:
            uid = p.uid
            if uid in result.stored:
                self._confirm(p, result.stored[uid])
            elif uid in result.failed:
                code, text = result.failed[uid]
                if is_transient_failure(code):
                    self.store.queue.fail(p.item.row.id, f"hospital: {text}", retry_in=self.backoff.failure())
                elif p.transcoded:
                    self._fall_back_to_original(p, f"hospital refused {p.wire_syntax}: {text}")
                else:
                    self._quarantine_row(p.item.row.id, uid, f"hospital refused it: {text}")
            elif not single:
                self._send_alone(p, f"hospital answered HTTP {result.status} without mentioning it")
            else:
                self._unknown_single(client, p, f"hospital answered HTTP {result.status} without mentioning it")

    def _refused(self, client: StowClient, prepared: list[Prepared], exc: RequestRefused) -> None:
        self._link_ok()
        if len(prepared) > 1:
            for p in prepared:
                self._send_alone(p, str(exc))
            return
        p = prepared[0]
        if self._already_there(client, p):
            return
        if p.transcoded:
            self._fall_back_to_original(p, str(exc))
        else:
            self._quarantine_row(p.item.row.id, p.uid, str(exc))

    def _already_there(self, client: StowClient, p: Prepared) -> bool:
        try:
            url = client.find_instance(p.uid)
        except TransientError:
            return False
        if url is None:
            return False
        self._confirm(p, url, asked=True)
        return True

    def _unknown_single(self, client: StowClient, p: Prepared, reason: str) -> None:
        if self._already_there(client, p):
            return
        n = self._unknown.get(p.uid, 0) + 1
        self._unknown[p.uid] = n
        if p.transcoded:
            self._fall_back_to_original(p, reason)
        elif n >= UNKNOWN_LIMIT:
            self._quarantine_row(p.item.row.id, p.uid, f"{reason} ({n} times)")
        else:
            self.store.queue.fail(p.item.row.id, reason, retry_in=self.backoff.failure())

    def _send_alone(self, p: Prepared, reason: str) -> None:
        if p.item.instance is not None:
            _update_instance(self.store, p.uid, sync_alone=True)
        self.store.queue.fail(p.item.row.id, f"{reason}; will be sent on its own", retry_in=0.0)

    def _fall_back_to_original(self, p: Prepared, reason: str) -> None:
        if p.wire_syntax:
            self.refused_syntaxes.add(p.wire_syntax)
        _update_instance(self.store, p.uid, sync_wire="original", sync_alone=True)
        self.store.queue.fail(p.item.row.id, f"{reason}; re-sending in the original syntax", retry_in=0.0)

    def _confirm(self, p: Prepared, retrieve_url: str, asked: bool = False) -> None:
        now = time.time()
        size = int((p.item.instance or {}).get("size") or p.part.size)

        def fn(db):
            if p.item.instance is not None:
                sent_as = str(p.item.instance.get("patient_id") or "")
                set_sync_state(self.store, p.uid, sync_state=pg.CONFIRMED, confirmed_at=now,
                               retrieve_url=retrieve_url or "", sync_reason="", sync_alone=False,
                               confirmed_patient_id=sent_as, correction=None)
            pg.bump_stats(db, confirmed=1, confirmed_bytes=size, found_by_qido=1 if asked else 0,
                          confirmed_wire_bytes=0 if asked else p.part.size, first_confirmed_at=now)
            self.store.queue.ack(p.item.row.id)
            if p.item.instance is not None:  # moved to another patient while on its way: correct it
                correct_hospital_copy(db, self.store, p.uid)  # (after the ack: its row is free again)
        self.store.write(fn)
        self._unknown.pop(p.uid, None)
        self.store.events.publish(SYNC_CONFIRMED, sop_instance_uid=p.uid,
                                  patient_id=(p.item.instance or {}).get("patient_id")
                                  or p.item.row.payload.get("patient_id", ""))

    def _quarantine_row(self, row_id: str, uid: str, reason: str) -> None:
        def fn(db):
            if uid:
                set_sync_state(self.store, uid, sync_state=pg.QUARANTINED, sync_reason=reason)
            pg.bump_stats(db, quarantined=1)
            self.store.queue.fail(row_id, reason, permanent=True)
        self.store.write(fn)
        log.warning("sync: quarantined %s: %s", row_id, reason)
        self.store.events.publish(SYNC_QUARANTINED, row_id=row_id, sop_instance_uid=uid, reason=reason)


class Idle:
    """What `start` returns when sync is off or not configured: says why, stops at once."""

    def __init__(self, reason: str):
        self.reason = reason
        self.live = pg.Live()
        self.live.link = reason

    def stop(self) -> None:
        pass


def _power_policy_of(kit):
    if not kit.config.get("power.enabled", True):
        return None

    def policy():
        from fieldkit.hardware import policy as hp
        probe = getattr(kit, "hardware", None)
        if probe is not None and hasattr(probe, "read"):
            return hp.decide(probe.read(), kit.config)
        return hp.current_policy(kit.config, kit.data_dir)
    return policy


def start(kit):
    """Service entry for `fieldkit serve` (kit.registry.SERVICES)."""
    config = kit.config
    if not config["sync.enabled"]:
        return Idle("sync is disabled (sync.enabled = false)")
    if not config["hospital.url"]:
        return Idle("no hospital configured (fieldkit hospital set --url …)")
    try:
        worker = SyncWorker(kit.store, config, kit.data_dir, power_policy=_power_policy_of(kit))
    except ConfigError as exc:
        log.error("sync not started: %s", exc)
        return Idle(f"sync not started: {exc}")
    return worker.start()
