"""The sync planner (sync/planner.py): batches, and re-triage moving queued rows."""

from __future__ import annotations

from fieldkit.records import sync_priority
from fieldkit.sync import planner
from fixtures.sync import add_to_store, corpus


def _item(prio, size, created=0.0, alone=False):
    from fieldkit.records import QueueRow
    row = QueueRow(id=f"r{prio}-{size}-{created}", kind="sync", priority=prio, state="leased", attempts=1,
                   next_at=0, created=created)
    return planner.Item(row, planner.BULK, size, alone=alone)


def test_batches_take_small_ones_in_order_and_big_ones_alone():
    small = [_item(10, 100_000, i) for i in range(6)]
    batch = planner.form_batch(small, max_bytes=350_000, max_count=32)
    assert [i.row.created for i in batch] == [0, 1, 2]
    big = _item(5, 5_000_000)
    assert planner.form_batch(small + [big], 350_000, 32) == [big]
    # never skip past the most urgent item to fill a batch
    mixed = [_item(10, 100_000, 0), _item(11, 400_000, 1), _item(12, 1000, 2)]
    assert [i.size for i in planner.form_batch(mixed, 350_000, 32)] == [100_000]


def test_retriage_reprioritises_queued_rows(kit):
    items = corpus("T-0501")[:2]
    rows = add_to_store(kit.store, items, triage="green")
    kit.store.queue.enqueue("sync", {"patient_id": "T-0501", "what": "triage"},
                            priority=sync_priority("green", "triage"))
    from fieldkit.store.patients import set_triage
    set_triage(kit.store, "T-0501", "red")
    assert planner.reprioritise_patient(kit.store, "T-0501") == 3
    prios = sorted(r.priority for r in kit.store.queue.rows("sync"))
    assert prios == [sync_priority("red", "triage"), sync_priority("red", "image"), sync_priority("red", "image")]
    assert kit.store.queue.get(rows[0]).priority == sync_priority("red", "image")
