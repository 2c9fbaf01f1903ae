"""Inference keeps up: infer rows red first and newest first, results of several jobs stored
in one durable write that a SIGKILL cannot split, and a red patient's finding arriving
while a probe keeps sending (ingest delays inference only for a bounded time)."""

from __future__ import annotations

import threading
import time

from fieldkit.inference import findings, worker
from fieldkit.records import KIND_INFER, KIND_SYNC
from fieldkit.store import patients as pstore
from fieldkit.store.instances import get_instance, put_instance
from fixtures.dcmtk import store_responses, storescu
from fixtures.inference import dataset_bytes, lung_cine_dataset
from kitproc import KitProcess, set_config, wait_until


def _capture(seed: int, patient_id: str = "", frames: int = 1):
    ds, _ = lung_cine_dataset(n_frames=frames, n_blines=seed % 4, seed=seed, size=(120, 160))
    if patient_id:
        ds.PatientID = patient_id
    return ds


def test_infer_queue_leases_red_patients_first_then_the_newest_capture(kit):
    pstore.create_patient(kit.store, tag="R1", triage="red")
    pstore.create_patient(kit.store, tag="Y1", triage="yellow")
    order = []  # (label, sop uid) in the order received
    for n, (label, pid) in enumerate([("none-old", ""), ("red-old", "R1"), ("yellow-old", "Y1"),
                                       ("none-new", ""), ("red-new", "R1"), ("yellow-new", "Y1")]):
        uid = put_instance(kit.store, dataset_bytes(_capture(100 + n, pid)), "dimse")["sop_instance_uid"]
        order.append((label, uid))
        time.sleep(0.01)  # distinct arrival times
    label_of = {uid: label for label, uid in order}
    leased = []
    while (job := kit.store.queue.lease(KIND_INFER)) is not None:
        leased.append(label_of[job.payload["sop_instance_uid"]])
    assert leased == ["red-new", "red-old", "yellow-new", "yellow-old", "none-new", "none-old"]


def test_a_patient_tagged_red_after_the_scan_is_analysed_first(kit):
    first = put_instance(kit.store, dataset_bytes(_capture(130, "PROBE-A")), "dimse")
    later = put_instance(kit.store, dataset_bytes(_capture(131, "PROBE-B")), "dimse")
    assert first["patient_id"] != later["patient_id"]
    pstore.set_triage(kit.store, first["patient_id"], "red")
    job = kit.store.queue.lease(KIND_INFER)
    assert job.payload["sop_instance_uid"] == first["sop_instance_uid"]


def test_a_deferred_red_job_still_goes_before_newer_ordinary_ones(kit):
    """Put back (power policy) and ready again: its place is by triage and capture time."""
    pstore.create_patient(kit.store, tag="R2", triage="red")
    red = put_instance(kit.store, dataset_bytes(_capture(120, "R2")), "dimse")["sop_instance_uid"]
    job = kit.store.queue.lease(KIND_INFER)
    assert job.payload["sop_instance_uid"] == red
    kit.store.queue.fail(job.id, "deferred: test", retry_in=0.0)
    newer = put_instance(kit.store, dataset_bytes(_capture(121)), "dimse")["sop_instance_uid"]
    first, second = kit.store.queue.lease(KIND_INFER), kit.store.queue.lease(KIND_INFER)
    assert [first.payload["sop_instance_uid"], second.payload["sop_instance_uid"]] == [red, newer]


def test_a_group_of_jobs_is_stored_and_acknowledged_in_one_journal_record(kit, registry):
    uids = [put_instance(kit.store, dataset_bytes(_capture(140 + n)), "dimse")["sop_instance_uid"]
            for n in range(5)]
    jobs = [kit.store.queue.lease(KIND_INFER) for _ in uids]
    done = [worker.analyse(kit, registry, job.payload["sop_instance_uid"], job=job) for job in jobs]
    before = kit.store.journal_bytes
    appended = []
    real_append = kit.store._journal.append
    kit.store._journal.append = lambda record: appended.append(record) or real_append(record)
    worker.commit(kit, done)
    assert len(appended) == 1 and kit.store.journal_bytes > before
    assert kit.store.queue.counts()[KIND_INFER]["done"] == 5
    for uid in uids:
        rows = findings.for_instance(kit.store, uid)
        assert sorted(r["task"] for r in rows) == ["fast", "lung"]
        assert get_instance(kit.store, rows[0]["sr_sop_instance_uid"]) is not None


def test_worker_yields_to_a_burst_for_a_bounded_time_and_keeps_analysing(kit, registry):
    """A continuous burst no longer stops inference: the worker yields at most
    inference.max_ingest_delay_seconds at a time, then works, while the probe keeps sending."""
    kit.config = kit.config.with_overrides(inference__max_ingest_delay_seconds=1.0)
    stop_burst = threading.Event()
    sent = [0]

    def burst():
        seed = 200
        while not stop_burst.is_set():
            put_instance(kit.store, dataset_bytes(_capture(seed)), "dimse")
            seed += 1
            sent[0] += 1
            time.sleep(0.02)

    sender = threading.Thread(target=burst)
    w = worker.Worker(kit, registry).start()
    sender.start()
    try:
        analysed = wait_until(lambda: kit.store.queue.counts()[KIND_INFER]["done"] >= 3, timeout=90)
        still_sending = sender.is_alive() and not stop_burst.is_set()
        sent_before = sent[0]
        assert wait_until(lambda: sent[0] > sent_before, timeout=10), "the probe stopped sending"
    finally:
        stop_burst.set()
        sender.join(30)
        w.stop()
    assert analysed and still_sending, w.status()
    assert w.status()["yielded_to_ingest_s"] > 0  # it did give way to the probe


def _api(kit_proc, headers):
    return lambda path: kit_proc.get(path, headers=headers)


def test_sigkill_mid_group_then_restart_leaves_exactly_one_finding_set_per_capture(data_dir, need, tmp_path):
    need("storescu")
    n = 40
    files = []
    for i in range(n):
        path = tmp_path / f"c{i}.dcm"
        _capture(300 + i).save_as(path, enforce_file_format=True)
        files.append(path)
    # the probe's captures are acknowledged first (inference off), so the kill lands in work
    set_config(data_dir, inference__enabled=False)
    kit = KitProcess(data_dir).start()
    try:
        proc = storescu(kit.dicom_port, files)
        assert store_responses(proc) == ["Success"] * n, proc.stdout + proc.stderr
    finally:
        kit.stop()

    set_config(data_dir, inference__enabled=True, inference__commit_group=8)
    kit = KitProcess(data_dir).start()
    try:
        get = _api(kit, kit.auth("admin"))  # sessions end with the process

        seen = [{}]

        def mid_group():  # a group stored, and the next one leased and under way
            seen[0] = get("/api/v1/status").json()["queue"][KIND_INFER]
            return seen[0].get("done", 0) >= 1 and seen[0].get("leased", 0) >= 1
        assert wait_until(mid_group, timeout=120, step=0.02), kit.log()
    finally:
        kit.kill()
    assert seen[0]["done"] < 2 * n, "every job (n findings, n reports) finished before the kill"
    kit = KitProcess(data_dir)
    logged_before = kit.log_path.stat().st_size
    kit.start()
    try:
        get = _api(kit, kit.auth("admin"))  # sessions end with the process
        # n finding jobs, then n report jobs (the SRs)
        assert wait_until(lambda: get("/api/v1/status").json()["queue"][KIND_INFER]["done"] == 2 * n,
                          timeout=300), kit.log()
        with open(kit.log_path, "rb") as fh:
            fh.seek(logged_before)
            restart_log = fh.read().decode(errors="replace")
        assert "resumed" in restart_log, "the kill did not fall inside a group of leased jobs"
    finally:
        kit.stop()

    from fieldkit.kit import open_kit
    store_kit = open_kit(data_dir)
    try:
        store = store_kit.store
        images = [r for r in store.read(lambda db: db.table("instances").all()) if r.get("modality") != "SR"]
        assert len(images) == n
        all_rows = findings.all_findings(store)
        srs = {r["sr_sop_instance_uid"] for r in all_rows}
        for row in images:
            mine = [r for r in all_rows if r["sop_instance_uid"] == row["sop_instance_uid"]]
            assert sorted(r["task"] for r in mine) == ["fast", "lung"], row["sop_instance_uid"]
            assert len({r["sr_sop_instance_uid"] for r in mine}) == 1
        assert len(srs) == n and all(get_instance(store, uid) is not None for uid in srs)
        sr_sync = [r for r in store.queue.rows(kind=KIND_SYNC) if r.payload.get("sop_instance_uid") in srs]
        assert len(sr_sync) == n  # each report queued for the hospital once
        assert len(all_rows) == 2 * n
    finally:
        store_kit.close()


def test_a_red_finding_arrives_while_a_probe_keeps_sending(data_dir, need, tmp_path):
    need("storescu")
    from fieldkit.kit import open_kit
    opened = open_kit(data_dir)
    try:
        pstore.create_patient(opened.store, tag="R7", triage="red")  # tagged at the scene, then scanned
    finally:
        opened.close()
    kit_server = KitProcess(data_dir).start()
    try:
        _red_finding_during_burst(kit_server, tmp_path)
    finally:
        kit_server.stop()


def _red_finding_during_burst(kit_server, tmp_path):
    get = _api(kit_server, kit_server.auth("admin"))
    burst = []
    for i in range(40):
        path = tmp_path / f"b{i}.dcm"
        _capture(400 + i, frames=4).save_as(path, enforce_file_format=True)
        burst.append(path)
    red = tmp_path / "red.dcm"
    _capture(499, "R7").save_as(red, enforce_file_format=True)

    stop = threading.Event()
    rounds = [0]

    def probe():  # a probe sending without pause, association after association
        while not stop.is_set() and rounds[0] < 50:
            storescu(kit_server.dicom_port, burst, timeout=300)
            rounds[0] += 1

    sender = threading.Thread(target=probe)
    sender.start()
    try:
        assert wait_until(lambda: get("/api/v1/status").json()["instances"] >= 20, timeout=120), kit_server.log()
        proc = storescu(kit_server.dicom_port, [red])
        acknowledged = time.monotonic()
        assert store_responses(proc) == ["Success"], proc.stdout + proc.stderr

        def red_finding():
            caps = get("/api/v1/ui/patients/R7").json()["captures"]
            return bool(caps and caps[0]["findings"])
        arrived = wait_until(red_finding, timeout=60, step=0.1)
        latency = time.monotonic() - acknowledged
        probe_still_sending = sender.is_alive()
    finally:
        stop.set()
        sender.join(300)
    assert arrived, kit_server.log()
    assert probe_still_sending, "the burst ended before the finding came"
    assert latency <= 10.0, f"red capture-to-finding {latency:.1f} s during ingest"

