"""store/queue.py on a real encrypted store (opened directly, no kit around it) with a clock
the test moves: the order jobs come out in, leases, retries and what a person sees; a
reopened store gives every row back as it was, crash leases ready again."""

from __future__ import annotations

import errno
import os

import pytest

from fieldkit import fsio
from fieldkit.config import Config
from fieldkit.errors import BadInput, NotFound, StorageFull
from fieldkit.records import DONE, FAILED, KIND_INFER, KIND_SYNC, LEASED, READY, T_QUEUE
from fieldkit.store import Store, write_format
from fieldkit.store import queue as queue_module
from fieldkit.store.queue import UPDATE_BYTES, Queue
from fixtures.security import FakeClock

KEY = os.urandom(32)


class Kit:
    """A store on disk whose queue runs on a clock the test moves; `reopen()` is a restart."""

    def __init__(self, path):
        self.path, self.clock = path, FakeClock()
        path.mkdir()
        write_format(path)
        self.store = None
        self.reopen()

    def reopen(self):
        if self.store is not None:
            self.store.close()
        self.store = Store.open(self.path, KEY, Config())
        self.resumed = self.store.resumed_leases  # reset by the store's own load at open
        q = Queue(self.store, clock=self.clock)
        self.store.read(q.load)
        self.store.queue = q
        return q

    @property
    def q(self) -> Queue:
        return self.store.queue


@pytest.fixture
def kit(tmp_path):
    k = Kit(tmp_path / "kit")
    yield k
    k.store.close()


def test_urgent_first_then_oldest_first_for_sync_and_newest_first_for_infer(kit):
    q, clock = kit.q, kit.clock
    ids = {}
    for name, prio in (("s-a", 50), ("s-b", 50), ("s-urgent", 10), ("s-late", 90)):
        ids[name] = q.enqueue(KIND_SYNC, {"n": name}, priority=prio)
        clock.advance(1)
    for name in ("i-old", "i-new"):
        ids[name] = q.enqueue(KIND_INFER, {"n": name})
        clock.advance(1)
    assert q.most_urgent_ready(KIND_SYNC) == 10
    assert [q.lease(KIND_SYNC).payload["n"] for _ in range(4)] == ["s-urgent", "s-a", "s-b", "s-late"]
    assert q.lease(KIND_SYNC) is None and q.most_urgent_ready(KIND_SYNC) is None
    assert [q.lease(KIND_INFER).payload["n"] for _ in range(2)] == ["i-new", "i-old"]


def test_a_lease_counts_the_attempt_and_records_wall_times(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {"patient_id": "P1"})
    row = q.lease(KIND_SYNC, lease_seconds=120)
    assert (row.id, row.state, row.attempts) == (row_id, LEASED, 1)
    assert row.lease_until == pytest.approx(clock.wall() + 120, abs=1e-3)
    assert row.created == pytest.approx(clock.wall(), abs=1e-3)
    assert q.counts()[KIND_SYNC] == {"ready": 0, "leased": 1, "done": 0, "failed": 0}
    q.ack(row_id)
    done = q.get(row_id)
    assert done.state == DONE and done.lease_until == 0.0
    assert q.counts()[KIND_SYNC] == {"ready": 0, "leased": 0, "done": 1, "failed": 0}
    q.ack(row_id)  # a second ack changes nothing
    assert q.counts()[KIND_SYNC]["done"] == 1


def test_an_expired_lease_comes_back_on_the_monotonic_clock_only(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_INFER, {})
    q.lease(KIND_INFER, lease_seconds=60)
    clock._wall += 3600  # the device clock is set forward: the lease does not expire
    assert q.lease(KIND_INFER) is None
    clock._mono += 59.9
    assert q.lease(KIND_INFER) is None
    clock._mono += 0.1
    again = q.lease(KIND_INFER)
    assert again.id == row_id and again.attempts == 2
    assert again.last_error == "lease expired (worker stopped or stuck)"


def test_an_acked_row_is_not_reclaimed_when_its_old_lease_runs_out(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_INFER, {})
    q.lease(KIND_INFER, lease_seconds=10)
    q.ack(row_id)
    clock.advance(11)
    assert q.lease(KIND_INFER) is None and q.get(row_id).state == DONE


def test_a_failure_waits_its_retry_delay_then_comes_back(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"})
    q.lease(KIND_SYNC)
    q.fail(row_id, "link down", retry_in=30)
    row = q.get(row_id)
    assert row.state == READY and row.last_error == "link down"
    assert row.next_at == pytest.approx(clock.wall() + 30, abs=1e-3)
    assert q.lease(KIND_SYNC) is None and q.most_urgent_ready(KIND_SYNC) is None
    assert [r.id for r in q.first(KIND_SYNC, READY, 5)] == [row_id]  # listed, though delayed
    clock._wall -= 7200  # a clock set back does not stretch the wait
    clock._mono += 29
    assert q.lease(KIND_SYNC) is None
    clock._mono += 1
    assert q.most_urgent_ready(KIND_SYNC) == 50
    assert q.lease(KIND_SYNC).attempts == 2


def test_permanent_failure_stays_until_a_person_retries_or_dismisses_it(kit):
    q = kit.q
    row_id = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2")
    q.lease(KIND_SYNC)
    q.fail(row_id, "refused: " + "x" * 3000, permanent=True)
    row = q.get(row_id)
    assert row.state == FAILED and len(row.last_error) == 2000
    assert q.lease(KIND_SYNC) is None
    assert [r.id for r in q.first(KIND_SYNC, FAILED, 5)] == [row_id]
    assert q.counts()[KIND_SYNC]["failed"] == 1
    with pytest.raises(BadInput, match="is ready, not failed"):
        q.retry(q.enqueue(KIND_INFER, {}))
    q.retry(row_id)
    again = q.lease(KIND_SYNC)
    assert again.id == row_id and again.attempts == 1  # a person's retry starts the count anew
    q.fail(row_id, "still refused", permanent=True)
    q.dismiss(row_id, "wrong patient")
    row = q.get(row_id)
    assert row.state == DONE and q.dismissed(KIND_SYNC) == 1
    assert q.first(KIND_SYNC, DONE, 5) == []  # dismissed rows are not "recently done"
    assert q.live_id(KIND_SYNC, "1.2") is None
    with pytest.raises(BadInput, match="is done, not failed"):
        q.retry(row_id)
    with pytest.raises(BadInput, match="is done, not failed"):
        q.dismiss(row_id)


def test_fail_and_ack_of_a_row_not_leased_change_nothing(kit):
    q = kit.q
    row_id = q.enqueue(KIND_SYNC, {})
    q.fail(row_id, "x", permanent=True)
    q.ack(row_id)
    assert q.get(row_id).state == READY and q.get(row_id).last_error == ""
    with pytest.raises(NotFound, match="no queue row nope"):
        q.ack("nope")


def test_one_live_row_per_key_until_it_is_done(kit):
    q = kit.q
    first = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2")
    assert q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2") == first
    assert q.enqueue(KIND_INFER, {"sop_instance_uid": "1.2"}, key="1.2") != first  # per kind
    assert q.enqueue(KIND_SYNC, {}, key="") != q.enqueue(KIND_SYNC, {}, key="")  # no key: no dedupe
    assert q.live_id(KIND_SYNC, "1.2") == first
    q.lease(KIND_SYNC)
    assert q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2") == first  # leased is live
    q.ack(first)
    assert q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2") != first


def test_unknown_kind_is_refused(kit):
    with pytest.raises(BadInput, match="unknown queue kind 'mail'"):
        kit.q.enqueue("mail", {})


def test_cancel_withdraws_only_rows_nobody_started(kit):
    q = kit.q
    a = q.enqueue(KIND_SYNC, {"patient_id": "P1"}, delay=60)
    b = q.enqueue(KIND_SYNC, {"patient_id": "P2"})
    assert q.cancel(a, "patient merged") is True
    assert q.get(a).state == DONE
    assert q.lease(KIND_SYNC).id == b
    assert q.cancel(b, "too late") is False and q.get(b).state == LEASED
    assert q.dismissed(KIND_SYNC) == 1


def test_reprioritising_moves_a_ready_row_and_keeps_a_leased_one_leased(kit):
    q = kit.q
    a = q.enqueue(KIND_SYNC, {"n": "a"}, priority=50)
    b = q.enqueue(KIND_SYNC, {"n": "b"}, priority=60)
    q.set_priority(b, 5)
    q.set_priority(a, 50)  # unchanged
    assert q.priorities([a, b, "gone"]) == {a: 50, b: 5}
    assert q.most_urgent_ready(KIND_SYNC) == 5
    leased = q.lease(KIND_SYNC)
    assert leased.id == b
    q.set_priority(b, 1)
    assert q.get(b).state == LEASED and q.get(b).priority == 1
    assert q.lease(KIND_SYNC).id == a and q.lease(KIND_SYNC) is None


def test_waiting_bytes_and_the_oldest_waiting_row(kit):
    q, clock = kit.q, kit.clock
    assert q.oldest(KIND_SYNC) is None and q.waiting_bytes(KIND_SYNC) == 0
    first = q.enqueue(KIND_SYNC, {"patient_id": "P1"})
    t0 = clock.wall()
    clock.advance(10)
    second = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2.3"})  # not in the catalogue: 0 bytes
    assert q.waiting_bytes(KIND_SYNC) == UPDATE_BYTES
    assert q.oldest(KIND_SYNC) == pytest.approx(t0, abs=1e-3)
    q.lease(KIND_SYNC)
    assert q.oldest(KIND_SYNC) == pytest.approx(t0, abs=1e-3)  # leased still waits
    q.ack(first)
    assert q.oldest(KIND_SYNC) == pytest.approx(t0 + 10, abs=1e-3)
    assert q.waiting_bytes(KIND_SYNC) == 0
    q.lease(KIND_SYNC)
    q.fail(second, "refused", permanent=True)
    assert q.oldest(KIND_SYNC) is None


def test_live_rows_by_instance_or_patient(kit):
    q = kit.q
    img = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, key="1.2")
    upd = q.enqueue(KIND_SYNC, {"patient_id": "P1", "what": "triage"})
    other = q.enqueue(KIND_SYNC, {"patient_id": "P9"}, key="1.3")  # a key that is not its subject
    assert {r.id for r in q.live_rows(KIND_SYNC, ["1.2", "P1"])} == {img, upd}
    assert q.live_rows(KIND_SYNC, ["1.3"]) == []
    assert [r.id for r in q.live_rows(KIND_SYNC, ["P9"])] == [other]
    assert q.live_rows(KIND_INFER, ["1.2"]) == []
    q.lease(KIND_SYNC)
    q.ack(img)
    assert [r.id for r in q.live_rows(KIND_SYNC, ["1.2", "P1"])] == [upd]


def test_first_lists_ready_by_urgency_done_newest_first_and_leased(kit):
    q, clock = kit.q, kit.clock
    ids = [q.enqueue(KIND_SYNC, {"n": i}, priority=50 - i) for i in range(5)]
    delayed = q.enqueue(KIND_SYNC, {"n": "later"}, priority=0, delay=60)
    assert [r.payload["n"] for r in q.first(KIND_SYNC, READY, 3)] == [4, 3, 2]
    assert [r.payload["n"] for r in q.first(KIND_SYNC, READY, 10)] == [4, 3, 2, 1, 0, "later"]
    for _ in range(2):
        row = q.lease(KIND_SYNC)
        clock.advance(1)
        q.ack(row.id)
    assert [r.payload["n"] for r in q.first(KIND_SYNC, DONE, 10)] == [3, 4]
    assert [r.payload["n"] for r in q.first(KIND_SYNC, DONE, 1)] == [3]
    leased = q.lease(KIND_SYNC)
    assert [r.id for r in q.first(KIND_SYNC, LEASED, 5)] == [leased.id]
    assert q.first(KIND_SYNC, LEASED, 0) == []
    assert delayed in {r.id for r in q.rows(KIND_SYNC, READY)} and ids[0] in {r.id for r in q.rows(state=READY)}
    assert {r.kind for r in q.rows()} == {KIND_SYNC}


def test_old_done_rows_leave_the_table_but_stay_counted(kit, monkeypatch):
    monkeypatch.setattr(queue_module, "KEEP_DONE", 3)
    q = kit.q
    ids = [q.enqueue(KIND_INFER, {"n": i}) for i in range(5)]
    for _ in ids:
        q.ack(q.lease(KIND_INFER).id)
    failed = q.enqueue(KIND_INFER, {"n": "f"})
    q.lease(KIND_INFER)
    q.fail(failed, "bad", permanent=True)
    q.dismiss(failed)
    assert q.counts()[KIND_INFER]["done"] == 6
    assert len(q.rows(KIND_INFER)) == 3 and len(q.rows_by_id(ids + [failed])) == 3
    assert q.dismissed(KIND_INFER) == 1
    q = kit.reopen()  # the archive is in the store: the counts survive a restart
    assert q.counts()[KIND_INFER] == {"ready": 0, "leased": 0, "done": 6, "failed": 0}
    assert q.dismissed(KIND_INFER) == 1


def test_a_restart_gives_every_row_back_and_crash_leases_are_ready_again(kit):
    q, clock = kit.q, kit.clock
    ready = q.enqueue(KIND_SYNC, {"patient_id": "P1"}, priority=20, key="P1")
    leased = q.enqueue(KIND_SYNC, {"patient_id": "P2"}, priority=10)
    delayed = q.enqueue(KIND_SYNC, {"patient_id": "P3"}, priority=5)
    failed = q.enqueue(KIND_INFER, {"n": "f"})
    clock.advance(1)  # infer rows come newest first: "d" is leased first
    done = q.enqueue(KIND_INFER, {"n": "d"})
    q.lease(KIND_SYNC)  # P3 (most urgent)
    q.fail(delayed, "link down", retry_in=100)
    assert q.lease(KIND_SYNC).id == leased
    q.ack(q.lease(KIND_INFER).id)  # newest first: "d"
    q.lease(KIND_INFER)
    q.fail(failed, "broken", permanent=True)
    q = kit.reopen()  # as if the process died here
    assert kit.resumed == 1
    assert q.counts() == {KIND_SYNC: {"ready": 3, "leased": 0, "done": 0, "failed": 0},
                          KIND_INFER: {"ready": 0, "leased": 0, "done": 1, "failed": 1}}
    assert q.live_id(KIND_SYNC, "P1") == ready and q.get(done).state == DONE
    assert [r.id for r in q.first(KIND_INFER, FAILED, 5)] == [failed]
    order = [q.lease(KIND_SYNC) for _ in range(3)]
    assert [r.id if r else None for r in order] == [leased, ready, None]  # the delayed one still waits
    assert order[0].attempts == 2
    clock.advance(100)
    assert q.lease(KIND_SYNC).id == delayed
    q = kit.reopen()
    assert kit.resumed == 3  # the journal still says leased until a row changes again


def test_the_most_urgent_priority_skips_rows_reprioritised_or_gone(kit):
    q = kit.q
    a = q.enqueue(KIND_SYNC, {"n": "a"}, priority=50)
    q.enqueue(KIND_SYNC, {"n": "b"}, priority=60)
    q.set_priority(a, 70)  # its old place at 50 is stale now
    assert q.most_urgent_ready(KIND_SYNC) == 60
    assert q.most_urgent_ready(KIND_SYNC) == 60  # asking again changes nothing
    assert [q.lease(KIND_SYNC).payload["n"] for _ in range(2)] == ["b", "a"]
    c = q.enqueue(KIND_SYNC, {"n": "c"}, priority=5)
    assert q.cancel(c, "merged")
    assert q.most_urgent_ready(KIND_SYNC) is None  # a cancelled row is not waiting


def test_what_a_failure_and_a_retry_write_into_the_row(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    q.lease(KIND_SYNC, lease_seconds=100)
    q.fail(row_id, "e" * 2500, retry_in=50)
    row = q.get(row_id)
    assert row.lease_until == 0.0 and len(row.last_error) == 2000
    assert row.updated == pytest.approx(clock.wall(), abs=1e-3)
    clock.advance(50)
    q.lease(KIND_SYNC)
    q.fail(row_id, "refused", permanent=True)
    failed = q.get(row_id)
    assert failed.lease_until == 0.0 and failed.state == FAILED
    clock.advance(1000)
    q.retry(row_id)
    again = q.get(row_id)
    assert again.next_at == pytest.approx(clock.wall(), abs=1e-3) and again.attempts == 0
    assert q.most_urgent_ready(KIND_SYNC) == 50  # due at once, not at some earlier deadline


def test_a_cancel_reason_is_kept_short(kit):
    q = kit.q
    row_id = q.enqueue(KIND_SYNC, {})
    q.cancel(row_id, "r" * 3000)
    doc = kit.store.read(lambda db: db.table(T_QUEUE).get(doc_id=q._doc_ids[row_id]))
    assert doc["dismissed"] == ("cancelled: " + "r" * 3000)[:2000]


def test_listings_honour_their_limit_and_both_filters(kit):
    q = kit.q
    for i in range(3):
        row_id = q.enqueue(KIND_SYNC, {"n": i})
        q.lease(KIND_SYNC)
        q.fail(row_id, "no", permanent=True)
    q.enqueue(KIND_INFER, {"n": "i"})
    assert len(q.first(KIND_SYNC, FAILED, 2)) == 2
    assert [r.kind for r in q.rows(KIND_INFER, READY)] == [KIND_INFER]
    assert q.rows(KIND_INFER, FAILED) == [] and q.rows(KIND_SYNC, READY) == []


def test_rows_asked_for_by_an_unknown_id_are_not_other_rows(kit):
    q = kit.q
    first = q.enqueue(KIND_SYNC, {"n": "first"})  # the table's document 1
    assert q.rows_by_id(["no-such-row"]) == [] and q.priorities(["no-such-row"]) == {}
    assert [r.id for r in q.rows_by_id([first, "no-such-row"])] == [first]


def test_a_finished_update_is_no_longer_live_for_its_patient(kit):
    q = kit.q
    upd = q.enqueue(KIND_SYNC, {"patient_id": "P1", "what": "triage"})
    assert [r.id for r in q.live_rows(KIND_SYNC, ["P1"])] == [upd]
    q.lease(KIND_SYNC)
    q.ack(upd)
    assert q.live_rows(KIND_SYNC, ["P1"]) == []


def test_every_dismissal_counts_and_archived_ones_still_count_as_dismissed(kit, monkeypatch):
    monkeypatch.setattr(queue_module, "KEEP_DONE", 2)
    q = kit.q
    for _ in range(2):
        row_id = q.enqueue(KIND_SYNC, {})
        q.lease(KIND_SYNC)
        q.fail(row_id, "refused", permanent=True)
        q.dismiss(row_id)
    assert q.dismissed(KIND_SYNC) == 2
    for _ in range(3):  # newer done rows push the dismissed ones out of the table
        q.enqueue(KIND_SYNC, {})
        q.ack(q.lease(KIND_SYNC).id)
    assert len(q.rows(KIND_SYNC)) == 2
    q = kit.reopen()
    assert q.dismissed(KIND_SYNC) == 2 and q.counts()[KIND_SYNC]["done"] == 5


def test_waiting_bytes_count_the_stored_size_of_each_instance_waiting(kit):
    from pathlib import Path

    from fieldkit.store import instances
    from fixtures.dcmtk import pydicom_file

    data = Path(pydicom_file("examples_rgb_color.dcm")).read_bytes()
    stored = instances.put_instance(kit.store, data, "stow")
    uid, size = stored["sop_instance_uid"], stored["instance"]["size"]
    assert size > 0
    q = kit.q  # the kit's own queue indexed the sync row put_instance queued
    before = q.waiting_bytes(KIND_SYNC)
    row_id = q.enqueue(KIND_SYNC, {"sop_instance_uid": uid}, priority=1)
    assert q.waiting_bytes(KIND_SYNC) == before + size
    q.enqueue(KIND_SYNC, {"patient_id": "P1"})
    assert q.waiting_bytes(KIND_SYNC) == before + size + UPDATE_BYTES
    leased = q.lease(KIND_SYNC)
    assert leased.id == row_id and q.waiting_bytes(KIND_SYNC) == before + size + UPDATE_BYTES
    q.ack(row_id)
    assert q.waiting_bytes(KIND_SYNC) == before + UPDATE_BYTES
    q = kit.reopen()  # counted again from the rows at the next start
    assert q.waiting_bytes(KIND_SYNC) == before + UPDATE_BYTES


def test_an_expired_lease_behind_a_finished_one_is_still_reclaimed(kit):
    q, clock = kit.q, kit.clock
    a = q.enqueue(KIND_SYNC, {"n": "a"}, priority=1)
    b = q.enqueue(KIND_SYNC, {"n": "b"}, priority=2)
    assert q.lease(KIND_SYNC, lease_seconds=10).id == a
    assert q.lease(KIND_SYNC, lease_seconds=20).id == b
    q.ack(a)
    clock.advance(21)
    again = q.lease(KIND_SYNC)
    assert again.id == b and again.attempts == 2 and q.get(a).state == DONE
    assert q.counts()[KIND_SYNC] == {"ready": 0, "leased": 1, "done": 1, "failed": 0}


def test_an_archived_rows_old_place_in_line_is_skipped(kit, monkeypatch):
    """A row re-prioritised, then done and archived, leaves its old heap place behind: it
    must read as gone, not as some other row of the table (here the delayed one)."""
    monkeypatch.setattr(queue_module, "KEEP_DONE", 1)
    q = kit.q
    waiting = q.enqueue(KIND_SYNC, {"n": "waiting"}, priority=90, delay=60)  # the table's document 1
    moved = q.enqueue(KIND_SYNC, {"n": "moved"}, priority=90)
    q.set_priority(moved, 10)  # its place at 90 is stale now
    q.ack(q.lease(KIND_SYNC).id)
    q.enqueue(KIND_SYNC, {"n": "next"}, priority=5)
    q.ack(q.lease(KIND_SYNC).id)  # "moved" leaves the table
    assert q.rows_by_id([moved]) == []
    assert [r.id for r in q.first(KIND_SYNC, READY, 1)] == [waiting]
    assert q.most_urgent_ready(KIND_SYNC) is None  # the only ready row still waits its delay
    assert q.lease(KIND_SYNC) is None


def test_a_leased_row_is_not_listed_as_ready_through_its_old_place(kit):
    q = kit.q
    row_id = q.enqueue(KIND_SYNC, {"n": "a"}, priority=50)
    q.set_priority(row_id, 10)
    assert q.lease(KIND_SYNC).id == row_id
    assert q.first(KIND_SYNC, READY, 5) == []
    assert [r.id for r in q.first(KIND_SYNC, LEASED, 5)] == [row_id]


def test_a_failure_without_a_delay_comes_back_after_30_seconds(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    q.lease(KIND_SYNC)
    q.fail(row_id, "link down")
    assert q.get(row_id).next_at == pytest.approx(clock.wall() + 30, abs=1e-3)
    clock.advance(29.9)
    assert q.lease(KIND_SYNC) is None
    clock.advance(0.1)
    assert q.lease(KIND_SYNC).id == row_id


def test_a_new_row_reads_as_not_yet_tried_and_waits_its_delay(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {"patient_id": "P1"}, priority="7", delay=60)
    row = q.get(row_id)
    assert (row.state, row.priority, row.attempts, row.last_error, row.lease_until, row.key) == (READY, 7, 0, "", 0.0, "")
    assert row.next_at == pytest.approx(clock.wall() + 60, abs=1e-3) and row.created == row.updated
    clock._wall += 3600  # the device clock set forward does not shorten the wait
    clock._mono += 59.9
    assert q.lease(KIND_SYNC) is None
    clock._mono += 0.1
    assert q.lease(KIND_SYNC).id == row_id


def test_an_expired_lease_is_returned_when_a_worker_of_any_kind_asks(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    q.lease(KIND_SYNC, lease_seconds=10)
    clock.advance(10)
    assert q.lease(KIND_INFER) is None
    row = q.get(row_id)
    assert (row.state, row.lease_until) == (READY, 0.0)
    assert row.last_error == "lease expired (worker stopped or stuck)"
    assert q.counts()[KIND_SYNC] == {"ready": 1, "leased": 0, "done": 0, "failed": 0}
    assert q.most_urgent_ready(KIND_SYNC) == 50


def test_after_a_restart_the_index_reads_as_before(kit, monkeypatch):
    """Everything kept in memory is rebuilt from the rows: order, recent history, live rows
    by key and subject, and the archive keeps dropping the oldest done rows."""
    monkeypatch.setattr(queue_module, "KEEP_DONE", 2)
    q, clock = kit.q, kit.clock
    first_queued = q.enqueue(KIND_SYNC, {"n": 0}, priority=2)
    q.enqueue(KIND_SYNC, {"n": 1}, priority=1)
    done = []
    for _ in range(2):  # finished in another order than queued
        done.append(q.lease(KIND_SYNC).id)
        q.ack(done[-1])
        clock.advance(1)
    assert done[1] == first_queued
    crashed = q.enqueue(KIND_SYNC, {"patient_id": "P2"}, priority=3)
    q.lease(KIND_SYNC)
    keyed = q.enqueue(KIND_SYNC, {"sop_instance_uid": "1.2"}, priority=5, key="1.2")
    update = q.enqueue(KIND_SYNC, {"patient_id": "P1"}, priority=4)
    infer_old = q.enqueue(KIND_INFER, {"n": "old"})
    clock.advance(1)
    infer_new = q.enqueue(KIND_INFER, {"n": "new"})
    q = kit.reopen()
    reset = q.get(crashed)
    assert (reset.state, reset.lease_until, reset.attempts) == (READY, 0.0, 1)
    assert [r.id for r in q.first(KIND_SYNC, DONE, 5)] == [done[1], done[0]]  # newest first
    assert q.live_id(KIND_SYNC, "1.2") == keyed
    assert {r.id for r in q.live_rows(KIND_SYNC, ["1.2", "P1", "P2"])} == {keyed, update, crashed}
    assert q.oldest(KIND_SYNC) == pytest.approx(q.get(crashed).created, abs=1e-3)
    assert q.waiting_bytes(KIND_SYNC) == 2 * UPDATE_BYTES  # "1.2" is not in the catalogue
    assert [q.lease(KIND_SYNC).id for _ in range(3)] == [crashed, update, keyed]
    assert [q.lease(KIND_INFER).id for _ in range(2)] == [infer_new, infer_old]
    q.ack(crashed)  # a third done row: the oldest leaves the table, still counted
    assert q.rows_by_id(done) == [q.get(done[1])]
    assert q.counts()[KIND_SYNC]["done"] == 3


def _waiting_row_with_an_old_place(q):
    """(r, z): r waits 30 s for its retry at priority 50 with an old place at 50 left in the
    ready heap; z is ready at 90."""
    r = q.enqueue(KIND_SYNC, {"n": "r"}, priority=50)
    q.set_priority(r, 10)
    assert q.lease(KIND_SYNC).id == r  # its old place at 50 stays behind in the heap
    q.fail(r, "PACS busy", retry_in=30)
    q.set_priority(r, 50)  # back to 50 while it waits: the old place matches it again
    return r, q.enqueue(KIND_SYNC, {"n": "z"}, priority=90)


def test_a_row_waiting_its_retry_is_not_the_most_urgent_through_an_old_place(kit):
    q, clock = kit.q, kit.clock
    r, z = _waiting_row_with_an_old_place(q)
    assert q.most_urgent_ready(KIND_SYNC) == 90  # r is not due for 30 s
    assert q.most_urgent_ready(KIND_SYNC) == 90
    assert q.lease(KIND_SYNC).id == z
    assert q.most_urgent_ready(KIND_SYNC) is None
    clock.advance(31)
    assert q.most_urgent_ready(KIND_SYNC) == 50
    assert q.lease(KIND_SYNC).id == r


def test_a_lease_does_not_hand_out_a_row_still_waiting_its_retry_through_an_old_place(kit):
    q, clock = kit.q, kit.clock
    r, z = _waiting_row_with_an_old_place(q)
    assert q.lease(KIND_SYNC).id == z  # r is not due for 30 s
    assert q.lease(KIND_SYNC) is None
    clock.advance(31)
    row = q.lease(KIND_SYNC)
    assert row.id == r and row.attempts == 2


def test_a_lease_without_a_length_lasts_five_minutes(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    assert q.lease(KIND_SYNC).lease_until == pytest.approx(clock.wall() + 300, abs=1e-3)
    clock.advance(299.9)
    assert q.lease(KIND_SYNC) is None
    clock.advance(0.1)
    assert q.lease(KIND_SYNC).id == row_id


def test_a_lease_alone_passes_over_old_places_in_line(kit):
    """lease() finds stale heap places itself (nothing asked most_urgent_ready() first): a row
    moved away from its place, and a row moved back to a priority it had before."""
    q = kit.q
    a = q.enqueue(KIND_SYNC, {"n": "a"}, priority=50)
    b = q.enqueue(KIND_SYNC, {"n": "b"}, priority=60)
    q.set_priority(a, 70)  # its place at 50 is stale now, in front of b
    assert q.lease(KIND_SYNC).id == b
    assert q.lease(KIND_SYNC).id == a
    r = q.enqueue(KIND_SYNC, {"n": "r"}, priority=50)
    q.set_priority(r, 10)
    q.set_priority(r, 50)  # two places at 50 now: the row is handed out once
    row = q.lease(KIND_SYNC)
    assert (row.id, row.attempts) == (r, 1)
    assert q.lease(KIND_SYNC) is None
    assert q.get(r).attempts == 1


def test_a_lease_alone_skips_an_archived_rows_old_place_in_line(kit, monkeypatch):
    """As test_an_archived_rows_old_place_in_line_is_skipped, with lease() the first to meet
    the old place: it must not read the delayed row (document 1) in its stead."""
    monkeypatch.setattr(queue_module, "KEEP_DONE", 1)
    q, clock = kit.q, kit.clock
    waiting = q.enqueue(KIND_SYNC, {"n": "waiting"}, priority=90, delay=60)  # the table's document 1
    moved = q.enqueue(KIND_SYNC, {"n": "moved"}, priority=90)
    q.set_priority(moved, 10)
    q.ack(q.lease(KIND_SYNC).id)
    q.enqueue(KIND_SYNC, {"n": "next"}, priority=5)
    q.ack(q.lease(KIND_SYNC).id)  # "moved" leaves the table
    assert q.lease(KIND_SYNC) is None
    clock.advance(60)
    assert q.lease(KIND_SYNC).id == waiting


def test_a_delayed_row_cancelled_and_archived_before_its_time_never_comes_back(kit, monkeypatch):
    monkeypatch.setattr(queue_module, "KEEP_DONE", 1)
    q, clock = kit.q, kit.clock
    gone = q.enqueue(KIND_SYNC, {"n": "gone"}, delay=60)
    assert q.cancel(gone, "patient merged")
    q.enqueue(KIND_SYNC, {"n": "other"})
    q.ack(q.lease(KIND_SYNC).id)  # the cancelled row leaves the table
    assert q.rows_by_id([gone]) == []
    clock.advance(60)
    assert q.lease(KIND_SYNC) is None and q.most_urgent_ready(KIND_SYNC) is None


def test_dismissed_rows_in_the_table_all_count_after_a_restart(kit):
    q = kit.q
    for _ in range(2):
        row_id = q.enqueue(KIND_SYNC, {})
        q.lease(KIND_SYNC)
        q.fail(row_id, "refused", permanent=True)
        q.dismiss(row_id)
    q = kit.reopen()
    assert q.dismissed(KIND_SYNC) == 2 and q.counts()[KIND_SYNC]["done"] == 2


def test_a_lease_taken_before_a_refused_write_still_runs_out(kit, monkeypatch):
    """A write refused for a full disk puts memory back as the journal has it (the queue's
    index is rebuilt): a row leased before it stays leased until its lease runs out."""
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {"n": "a"})
    q.lease(KIND_SYNC, lease_seconds=60)

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(fsio, "pwrite", full_disk)
        with pytest.raises(StorageFull, match="disk full"):
            q.enqueue(KIND_SYNC, {"n": "lost"})
    assert q.counts()[KIND_SYNC] == {"ready": 0, "leased": 1, "done": 0, "failed": 0}
    clock.advance(59.9)
    assert q.lease(KIND_SYNC) is None
    clock.advance(0.1)
    again = q.lease(KIND_SYNC)
    assert again.id == row_id and again.attempts == 2


def test_an_expired_lease_is_ready_at_once_though_the_device_clock_was_set_back(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    q.lease(KIND_SYNC, lease_seconds=60)
    clock.jump_wall(-3600)
    clock.advance(60)
    again = q.lease(KIND_SYNC)
    assert again.id == row_id and again.attempts == 2


def test_reprioritising_a_row_waiting_its_retry_keeps_its_wait_though_the_clock_was_set_back(kit):
    q, clock = kit.q, kit.clock
    row_id = q.enqueue(KIND_SYNC, {})
    q.lease(KIND_SYNC)
    q.fail(row_id, "link down", retry_in=30)
    clock.jump_wall(-3600)
    q.set_priority(row_id, 10)
    clock.advance(29.9)
    assert q.lease(KIND_SYNC) is None
    clock.advance(0.1)
    assert q.lease(KIND_SYNC).id == row_id


def test_only_rows_failed_now_are_listed_as_failed(kit):
    q = kit.q
    done, leased, failed = (q.enqueue(KIND_SYNC, {"n": n}, priority=p) for n, p in (("d", 1), ("l", 2), ("f", 3)))
    q.ack(q.lease(KIND_SYNC).id)
    assert q.lease(KIND_SYNC).id == leased
    assert q.lease(KIND_SYNC).id == failed
    q.fail(failed, "refused", permanent=True)
    assert [r.id for r in q.first(KIND_SYNC, FAILED, 5)] == [failed]
    q.retry(failed)
    assert q.first(KIND_SYNC, FAILED, 5) == []
    q.lease(KIND_SYNC)
    q.fail(failed, "refused again", permanent=True)
    assert [r.id for r in q.first(KIND_SYNC, FAILED, 5)] == [failed]
    q.dismiss(failed)
    assert q.first(KIND_SYNC, FAILED, 5) == []
    assert q.get(done).state == DONE


def test_after_a_restart_recent_history_is_in_the_order_rows_finished(kit):
    """Queued first, finished last: the done list is ordered by the time each row changed
    last (its `updated`), which every change stamps."""
    q, clock = kit.q, kit.clock
    early = q.enqueue(KIND_SYNC, {"n": "early"}, priority=2)
    clock.advance(1)
    late = q.enqueue(KIND_SYNC, {"n": "late"}, priority=1)
    clock.advance(1)
    assert q.lease(KIND_SYNC).id == late
    q.ack(late)
    clock.advance(1)
    assert q.lease(KIND_SYNC).id == early
    clock.advance(1)
    q.ack(early)
    assert q.get(early).updated == pytest.approx(clock.wall(), abs=1e-3)
    q = kit.reopen()
    assert [r.id for r in q.first(KIND_SYNC, DONE, 5)] == [early, late]
