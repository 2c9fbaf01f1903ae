"""Sync through a misbehaving link (tests/proxy.py) to a real Orthanc: slow, stalled,
cut mid-body, 503/429, a permanent refusal; and priority on a slow link."""

from __future__ import annotations

import json
import time

import pytest

from kitproc import wait_until

from fieldkit.records import T_INSTANCES, sync_priority
from fieldkit.sync.worker import SyncWorker
from fixtures.sync import add_to_store, corpus, finding_sr, sync_config
from proxy import Proxy


@pytest.fixture
def proxy(orthanc):
    p = Proxy(orthanc.http_port)
    yield p
    p.stop()




def catalogue(store):
    return {d["sop_instance_uid"]: dict(d) for d in store.read(lambda db: db.table(T_INSTANCES).all())}


def test_slow_link_cuts_503_429_and_a_stall_still_end_all_confirmed_once(kit, orthanc, proxy):
    items = corpus("T-0301", copies=3)
    add_to_store(kit.store, items)
    proxy.rate = 400_000
    proxy.cut_after = [50_000, 120_000, 10_000]
    proxy.respond_with = [(503, b"busy", {"Retry-After": "1"}), (429, b"slow down", {})]
    cfg = sync_config(kit.config, proxy.url(), sync__batch_max_kb=300,
                      hospital__read_timeout_seconds=2.0)
    worker = SyncWorker(kit.store, cfg, kit.data_dir, poll=0.05).start()
    try:
        # a stall in the middle: the kit times out and comes back
        assert wait_until(lambda: worker.status()["counts"]["confirmed"] >= 2, 60)
        proxy.stalled.set()
        time.sleep(3)
        proxy.stalled.clear()
        assert wait_until(lambda: worker.status()["counts"]["confirmed"] == len(items), 120), worker.status()
    finally:
        worker.stop()
    assert proxy.cuts >= 3
    assert orthanc.instance_count() == len(items)
    st = worker.status()
    assert st["counts"]["quarantined"] == 0
    assert st["sent_bytes"] > st["confirmed_wire_bytes"]  # cut bytes were counted as waste
    assert all(d["sync_state"] == "confirmed" for d in catalogue(kit.store).values())


def _failed_sop_body(uid: str, code: int) -> bytes:
    return json.dumps({"00081198": {"vr": "SQ", "Value": [{
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.6.1"]},
        "00081155": {"vr": "UI", "Value": [uid]},
        "00081197": {"vr": "US", "Value": [code]}}]}}).encode()


def test_permanent_refusal_quarantines_that_one_and_the_rest_go_through(kit, orthanc, proxy):
    items = corpus("T-0302")
    add_to_store(kit.store, items)
    victim = str(items[2][1].SOPInstanceUID)

    def intercept(head, body):
        if victim.encode() in body:
            return 400, _failed_sop_body(victim, 0xA900), {"Content-Type": "application/dicom+json"}
        return None

    proxy.intercept = intercept
    worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir)
    st = worker.run_once(timeout=60)
    assert st["counts"]["confirmed"] == 3 and st["counts"]["quarantined"] == 1
    bad = [i for i in st["items"] if i["state"] == "quarantined"][0]
    assert bad["sop_instance_uid"] == victim
    assert "data set does not match SOP class" in bad["reason"] and "0xA900" in bad["reason"]
    doc = catalogue(kit.store)[victim]
    assert doc["sync_state"] == "quarantined" and "0xA900" in doc["sync_reason"]
    assert kit.store.blobs.exists(doc["blob"])  # never deleted
    assert orthanc.instance_count() == 3
    row = [r for r in kit.store.queue.rows("sync") if r.payload.get("sop_instance_uid") == victim][0]
    assert row.state == "failed"


def test_garbage_answer_and_custom_400_body_lose_nothing(kit, orthanc, proxy):
    items = corpus("T-0303")[:2]
    add_to_store(kit.store, items)
    proxy.respond_with = [(200, b"<html>captive portal</html>", {"Content-Type": "text/html"}),
                          (400, b"Bad request: we do not like you", {"Content-Type": "text/plain"})]
    worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir, poll=0.05).start()
    try:
        assert wait_until(lambda: worker.status()["counts"]["confirmed"]
                          + worker.status()["counts"]["quarantined"] == 2, 60)
    finally:
        worker.stop()
    st = worker.status()
    # the HTML page was a transient "not a STOW-RS response"; the plain 400 made the batch
    # split, and each instance alone then went through
    assert st["counts"]["confirmed"] == 2, st
    assert orthanc.instance_count() == 2


def test_new_red_finding_overtakes_queued_images_on_a_slow_link(kit, orthanc, proxy):
    # ~50 MB of images for a green patient, then a red finding arrives
    items = corpus("T-0304", copies=56)
    add_to_store(kit.store, items, triage="green")
    proxy.rate = 1_500_000
    worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir, poll=0.05)
    takes: list[tuple[float, list[str]]] = []  # (when a lane began to take, what it took)
    take = worker.pool.take

    def recording_take(lane, max_priority=None):
        began = time.monotonic()
        batch = take(lane, max_priority)
        if batch:
            takes.append((began, [i.uid for i in batch]))
        return batch

    worker.pool.take = recording_take
    worker.start()
    try:
        assert wait_until(lambda: worker.status()["counts"]["confirmed"] >= 4, 60)
        red_study = str(corpus("T-0399")[0][1].StudyInstanceUID)
        data, sr = finding_sr("T-0399", red_study, "pneumothorax: present")
        rows = add_to_store(kit.store, [(data, sr)], triage="red")
        queued_at = time.monotonic()
        assert kit.store.queue.get(rows[0]).priority == sync_priority("red", "finding")
        uid = str(sr.SOPInstanceUID)
        assert wait_until(lambda: catalogue(kit.store)[uid].get("sync_state") == "confirmed", 30)
    finally:
        worker.stop()
    cat = catalogue(kit.store)
    red_at = cat[uid]["confirmed_at"]
    # the express lane took the finding at its next look, not after the bulk lane's next batch
    red_taken = [began for began, uids in takes if uid in uids]
    assert len(red_taken) == 1 and red_taken[0] - queued_at < 1.0, (red_taken, queued_at)
    # the lanes run side by side: a batch the bulk lane had already taken by then may finish
    # first; nothing it took after that may
    taken_before = {u for began, uids in takes if began < red_taken[0] for u in uids}
    overtaken = [u for u, d in cat.items() if u != uid and d.get("confirmed_at", 1e18) < red_at
                 and u not in taken_before]
    assert overtaken == []
    assert sum(1 for d in cat.values() if d.get("sync_state") != "confirmed") > 100  # most still queued


def _forward(port: int, head: bytes, body: bytes) -> tuple[int, bytes, dict]:
    """Send one intercepted request on to the hospital and return its answer."""
    import http.client

    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers.pop("Content-Length", None)
    headers.pop("Accept-Encoding", None)  # a plain body, so the test can rewrite it
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), {"Content-Type": resp.getheader("Content-Type", "")}
    finally:
        conn.close()


def test_a_200_that_leaves_an_instance_out_never_confirms_it(kit, orthanc, proxy):
    """A PACS that drops one instance but still answers 200 for the request: the instance it
    does not list is not confirmed (so retention never purges it), the rest are."""
    items = corpus("T-0305")
    add_to_store(kit.store, items)
    victim = str(items[1][1].SOPInstanceUID)
    stripped = []

    def intercept(head, body):
        if not head.startswith(b"POST") or victim.encode() not in body:
            return None
        status, answer, headers = _forward(orthanc.http_port, head, body)
        doc = json.loads(answer)
        listed = doc.get("00081199", {}).get("Value", [])
        kept = [item for item in listed if item["00081155"]["Value"][0] != victim]
        assert len(kept) == len(listed) - 1, "the hospital should have listed the instance"
        doc["00081199"]["Value"] = kept
        for oid in orthanc.rest("/instances"):  # the PACS drops it after answering
            if orthanc.rest(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"] == victim:
                orthanc.rest(f"/instances/{oid}", method="DELETE")
        stripped.append(status)
        return 200, json.dumps(doc).encode(), headers

    proxy.intercept = intercept
    worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir, poll=0.05).start()
    try:
        assert wait_until(lambda: worker.status()["counts"]["confirmed"] == len(items) - 1
                          and catalogue(kit.store)[victim]["sync_state"] == "quarantined", 90)
    finally:
        worker.stop()
    assert stripped and set(stripped) == {200}
    cat = catalogue(kit.store)
    assert cat[victim]["sync_state"] != "confirmed" and not cat[victim].get("confirmed_at")
    assert "without mentioning it" in cat[victim]["sync_reason"]
    assert all(cat[str(ds.SOPInstanceUID)]["sync_state"] == "confirmed" for _, ds in items
               if str(ds.SOPInstanceUID) != victim)
    assert orthanc.instance_count() == len(items) - 1
