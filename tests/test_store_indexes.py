"""The store's indexes answer like a scan of the table, through live writes, replay at
open, compaction and table drops; queries page before they copy; done queue rows leave
the table but stay counted."""

from __future__ import annotations

import random

import pytest

from fieldkit.errors import StorageFull
from fieldkit.records import DONE, FAILED, KIND_INFER, KIND_SYNC, T_INSTANCES, T_META, T_PATIENTS, T_QUEUE
from fieldkit.kit import open_kit
from fieldkit.store import INDEXED, instances, patients
from fieldkit.store.queue import ARCHIVE, KEEP_DONE
from fieldkit.sync.progress import status
from fixtures.catalogue import grow


def _scan_matches_index(store) -> None:
    """Every indexed field of every table: the index lists exactly the keys a scan finds."""
    def fn(db):
        storage = db.storage
        for table, fields in INDEXED.items():
            docs = storage.read().get(table, {})
            for field in fields:
                expect: dict = {}
                for key, doc in docs.items():
                    if isinstance(doc.get(field), (str, int, float, bool)):
                        expect.setdefault(doc[field], []).append(key)
                assert set(storage.values(table, field)) == set(expect), (table, field)
                for value, keys in expect.items():
                    assert storage.keys(table, field, value) == sorted(keys, key=int), (table, field, value)
    store.read(fn)


def test_random_changes_keep_the_indexes_equal_to_a_scan(data_dir):
    rng = random.Random(7)
    kit = open_kit(data_dir)
    store = kit.store
    for step in range(300):
        op = rng.random()

        def fn(db):
            t = db.table(T_INSTANCES)
            ids = [int(k) for k in db.storage.read().get(T_INSTANCES, {})]
            if op < 0.5 or not ids:
                t.insert({"sop_instance_uid": f"1.2.{step}", "study_instance_uid": f"1.3.{rng.randrange(8)}",
                          "series_instance_uid": f"1.4.{rng.randrange(12)}", "patient_id": f"P{rng.randrange(5)}"})
            elif op < 0.8:
                t.update({"patient_id": f"P{rng.randrange(5)}"}, doc_ids=rng.sample(ids, min(3, len(ids))))
            elif op < 0.95:
                t.remove(doc_ids=[rng.choice(ids)])
            else:  # a row losing an indexed field, or holding a list there: not indexed
                t.update({"study_instance_uid": rng.choice([None, ["a", "b"]])}, doc_ids=[rng.choice(ids)])
        store.write(fn)
        if step % 50 == 0:
            _scan_matches_index(store)
    _scan_matches_index(store)
    kit.close()

    kit = open_kit(data_dir)  # rebuilt by replaying the journal
    _scan_matches_index(kit.store)
    kit.store.compact()
    kit.close()
    kit = open_kit(data_dir)  # and from the compacted journal
    _scan_matches_index(kit.store)
    kit.store.write(lambda db: db.drop_table(T_INSTANCES))  # a whole-table replacement
    _scan_matches_index(kit.store)
    assert instances.instance_rows(kit.store) == []
    kit.close()


def test_catalogue_queries_answer_like_a_scan_and_page_before_copying(data_dir):
    kit = open_kit(data_dir)
    store = kit.store
    studies = grow(store, 6, per_patient=5)
    everything = store.read(lambda db: [dict(d) for d in db.table(T_INSTANCES).all()])
    assert len(everything) == 30
    pid = everything[7]["patient_id"]
    assert instances.instance_rows(store, patient_id=pid) == [r for r in everything if r["patient_id"] == pid]
    assert instances.instance_rows(store, study_uid=studies[2]) == \
        [r for r in everything if r["study_instance_uid"] == studies[2]]
    assert instances.instance_rows(store, offset=4, limit=3) == everything[4:7]
    assert instances.instance_rows(store, patient_id="nobody") == []

    found = instances.search_studies(store)
    assert [s["study_instance_uid"] for s in found] == studies[::-1]  # newest first
    assert [s["instances"] for s in found] == [5] * 6 and all(s["patient"]["id"] == s["patient_id"] for s in found)
    assert [s["study_instance_uid"] for s in instances.search_studies(store, offset=1, limit=2)] == studies[4:2:-1]
    assert [s["study_instance_uid"] for s in instances.search_studies(store, patient_id=pid)] == studies[1:2]
    only_one = instances.search_studies(store, match=lambda r, p: r["instance_number"] == "1")
    assert [s["instances"] for s in only_one] == [1] * 6

    # a merge moves the captures: the patient index follows
    other = everything[0]["patient_id"]
    patients.merge_patients(store, other, pid)
    assert len(instances.instance_rows(store, patient_id=pid)) == 10
    assert instances.instance_rows(store, patient_id=other) == []
    assert patients.merged_ids(store.db, pid) == [other]
    kit.close()


def test_done_queue_rows_are_archived_and_still_counted(data_dir):
    kit = open_kit(data_dir)
    store = kit.store
    q = store.queue
    total = KEEP_DONE + 40
    [q.enqueue(KIND_SYNC, {"patient_id": f"P{i}", "what": "triage"}, priority=50 - i % 7) for i in range(total)]
    q.enqueue(KIND_INFER, {"sop_instance_uid": "1.2.3"})
    assert [r.priority for r in q.first(KIND_SYNC, "ready", 5)] == [44, 44, 44, 44, 44]
    assert q.waiting_bytes(KIND_SYNC) == total * 2048
    first_created = q.oldest(KIND_SYNC)
    finished = []
    for n in range(total - 3):
        row = q.lease(KIND_SYNC)
        finished.append(row.id)
        if n == 0:
            q.fail(row.id, "refused", permanent=True)
            q.dismiss(row.id)
        else:
            q.ack(row.id)
    failed = q.lease(KIND_SYNC)
    q.fail(failed.id, "refused for good", permanent=True)

    def table_states(db):
        return [d["state"] for d in db.table(T_QUEUE).all() if d["kind"] == KIND_SYNC]
    states = store.read(table_states)
    assert states.count(DONE) == KEEP_DONE  # the older ones left the table
    counts = q.counts()[KIND_SYNC]
    assert counts == {"ready": 2, "leased": 0, "done": total - 3, "failed": 1}
    assert q.dismissed(KIND_SYNC) == 1 and q.waiting_bytes(KIND_SYNC) == 2 * 2048
    assert q.oldest(KIND_SYNC) > first_created
    st = status(store)
    assert st["counts"] == {"queued": 2, "sending": 0, "confirmed": total - 4, "quarantined": 1}
    assert st["queue_bytes"] == 2 * 2048
    assert [i["state"] for i in st["items"]][:3] == ["quarantined", "queued", "queued"]
    assert q.rows_by_id(finished[:2]) == []  # archived: only counted now
    assert [r.id for r in q.rows_by_id(finished[-2:])] == finished[-2:]  # the recent ones stay
    kit.close()

    kit = open_kit(data_dir)
    q = kit.store.queue
    assert q.counts()[KIND_SYNC] == counts and q.dismissed(KIND_SYNC) == 1
    assert status(kit.store)["counts"] == st["counts"]
    archive = kit.store.read(lambda db: [d for d in db.table(T_META).all() if d["name"] == ARCHIVE])
    assert archive[0][KIND_SYNC] == {"done": total - 4 - KEEP_DONE, "dismissed": 1}  # 1 + 36 beyond the 256
    kit.store.queue.retry(failed.id)
    assert kit.store.queue.counts()[KIND_SYNC][FAILED] == 0
    kit.close()


def test_live_rows_find_a_patients_sync_rows_for_re_triage(data_dir):
    kit = open_kit(data_dir)
    store = kit.store
    grow(store, 2, per_patient=3)
    pid = instances.instance_rows(store, limit=1)[0]["patient_id"]
    uids = [r["sop_instance_uid"] for r in instances.instance_rows(store, patient_id=pid)]
    rows = store.queue.live_rows(KIND_SYNC, uids)
    assert sorted(r.payload["sop_instance_uid"] for r in rows) == sorted(uids)
    from fieldkit.sync.planner import reprioritise_patient
    patients.set_triage(store, pid, "red")
    assert reprioritise_patient(store, pid) == 3
    assert {r.priority for r in store.queue.live_rows(KIND_SYNC, uids)} == {10}
    assert store.read(lambda db: db.storage.keys(T_PATIENTS, "id", pid)) != []
    assert instances.set_lung_zone(store, uids[0], "R1") == pid
    assert instances.get_instance(store, uids[0])["lung_zone"] == "R1"
    kit.close()


def _study_searches(store, accessions, dates) -> list[tuple]:
    """(filter, found through the indexes, found by a plain scan) for every filter tried."""
    out = []

    def plain(lo, hi, acc):
        def match(r, p):
            d = r.get("study_date") or ""
            return (acc is None or r.get("accession_number") == acc) and \
                (lo is None or (d and (not lo or d >= lo) and (not hi or d <= hi)))
        return match
    tries = [({"accession": a}, plain(None, None, a)) for a in accessions]
    tries += [({"study_dates": (lo, hi)}, plain(lo, hi, None)) for lo, hi in dates]
    tries += [({"accession": a, "study_dates": (lo, hi)}, plain(lo, hi, a)) for a, (lo, hi) in zip(accessions, dates)]
    for hints, match in tries:
        for page in ({}, {"limit": 3}, {"offset": 1, "limit": 2}):
            indexed = instances.search_studies(store, match=match, **hints, **page)
            scanned = instances.search_studies(store, match=match, **page)
            out.append((hints, page, indexed, scanned))
        # C-FIND's every-match summaries take the same hints
        out.append((hints, "C-FIND", instances.study_summaries(store, match=match, **hints),
                    instances.study_summaries(store, match=match)))
    return out


def _assert_searches_agree(store, accessions, dates) -> int:
    found = 0
    for hints, page, indexed, scanned in _study_searches(store, accessions, dates):
        assert indexed == scanned, (hints, page)
        found += len(indexed)
    return found


def test_study_filters_through_indexes_answer_like_a_scan(data_dir, monkeypatch):
    """QIDO's and C-FIND's AccessionNumber and StudyDate filters pick studies through the indexes: the
    same studies, in the same order, as testing every row - on a randomised store, after a
    merge and its undo, after a write rolled back on a full disk, and after reopening."""
    rng = random.Random(17)
    kit = open_kit(data_dir)
    store = kit.store
    grow(store, 4, per_patient=3)  # real captures and patients (AccessionNumber "A<PatientID>")
    accessions = ["AP00000", "AP00003", "ACC-3", "ACC-0", "nothing"]
    dates = [("20260301", "20260310"), ("", "20260105"), ("20260320", ""), ("20261204", "20261204"), ("2027", "")]
    clock = iter(range(10**6))

    def random_writes(n):
        for _ in range(n):
            def fn(db):
                t = db.table(T_INSTANCES)
                ids = [int(k) for k in db.storage.read().get(T_INSTANCES, {})]
                op = rng.random()
                if op < 0.6:
                    study = rng.randrange(15)
                    t.insert({"sop_instance_uid": f"1.2.{next(clock)}", "study_instance_uid": f"1.3.{study}",
                              "series_instance_uid": f"1.4.{study}", "patient_id": f"R{study % 5}",
                              "accession_number": rng.choice(["", f"ACC-{study % 4}"]),
                              "study_date": rng.choice(["", f"202603{rng.randrange(1, 31):02d}", "20260101"]),
                              "modality": "US", "received_at": 2e9 + next(clock)})  # after the real ones
                elif op < 0.85:
                    t.update({"accession_number": f"ACC-{rng.randrange(4)}",
                              "study_date": f"202603{rng.randrange(1, 31):02d}"}, doc_ids=[rng.choice(ids)])
                else:
                    t.remove(doc_ids=[rng.choice(ids)])
            store.write(fn)

    random_writes(150)
    assert _assert_searches_agree(store, accessions, dates) > 0
    _scan_matches_index(store)

    first, second = sorted({r["patient_id"] for r in instances.instance_rows(store) if r["patient_id"][0] != "R"})[:2]
    patients.merge_patients(store, first, second, undo_seconds=600)
    _assert_searches_agree(store, accessions, dates)
    patients.unmerge(store, first)
    _assert_searches_agree(store, accessions, dates)

    import fieldkit.store.journal as journal

    def full_disk(fd, data, offset):
        raise OSError(28, "No space left on device")
    before = _study_searches(store, accessions, dates)
    monkeypatch.setattr(journal.os, "pwrite", full_disk)
    with pytest.raises(StorageFull):
        random_writes(1)
    monkeypatch.undo()
    assert _study_searches(store, accessions, dates) == before  # the rolled-back write left no trace
    random_writes(50)
    after = _study_searches(store, accessions, dates)
    kit.close()

    kit = open_kit(data_dir)  # indexes rebuilt from the journal
    assert _study_searches(kit.store, accessions, dates) == after
    _assert_searches_agree(kit.store, accessions, dates)
    _scan_matches_index(kit.store)
    kit.close()
