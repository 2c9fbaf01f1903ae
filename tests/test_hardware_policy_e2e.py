"""The power/heat policy on a running `fieldkit serve`: the only fake is the sensor file.

Captures are stored and triaged before the kit starts (as a kit restarted after a power cut
finds them); the kit's own power service and inference worker then act on what the fake
battery/temperature file says, and the store is inspected after the kit has stopped.
"""

from __future__ import annotations

import json
import time

from fieldkit.config import Config, render_toml
from fieldkit.inference import findings
from fieldkit.records import KIND_INFER
from fieldkit.kit import open_kit
from fieldkit.store.instances import put_instance
from fieldkit.store.patients import set_triage
from fixtures.inference import dataset_bytes, lung_cine_dataset
from kitproc import KitProcess, run_cli, wait_until


def configure(data_dir, fake_power) -> None:
    path = data_dir / "fieldkit.toml"
    values = Config.load(path).as_dict()
    values.update(fake_power.settings)
    values["sync.enabled"] = False  # no hospital in these tests
    path.write_text(render_toml(values))


def store_cine(kit, patient: str, n_frames: int, seed: int) -> dict:
    ds, _ = lung_cine_dataset(n_frames=n_frames, n_blines=3, seed=seed)
    ds.PatientID, ds.PatientName = patient, f"TEST^{patient}"
    return put_instance(kit.store, dataset_bytes(ds), "upload")


def wait_for_findings(data_dir, at_least: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = json.loads(run_cli("status", "--json", "--data-dir", data_dir).stdout)
        if status.get("findings", 0) >= at_least:
            return status
        infer = status.get("queue", {}).get(KIND_INFER, {})
        if infer.get("done", 0) and not infer.get("ready", 0) and not infer.get("leased", 0) \
                and status.get("findings", 0) < at_least:
            raise AssertionError(f"the jobs finished without {at_least} findings: {status}")
        time.sleep(0.5)
    raise AssertionError(f"fewer than {at_least} findings after {timeout} s: {status}")


def test_low_battery_subsamples_the_cine_and_the_finding_says_so(data_dir, fake_power):
    configure(data_dir, fake_power)
    fake_power.set(battery_percent=18, on_battery=True, temperature_c=40)
    kit = open_kit(data_dir)
    try:
        uid = store_cine(kit, "LOWBATT-1", n_frames=8, seed=41)["sop_instance_uid"]
    finally:
        kit.close()

    server = KitProcess(data_dir).start()
    try:
        wait_for_findings(data_dir, 1)  # at least the lung finding for the one cine
    finally:
        server.stop()
    assert "power policy: battery low" in server.log_path.read_text(errors="replace")

    kit = open_kit(data_dir)
    try:
        lung = next(r for r in findings.for_instance(kit.store, uid) if r["task"] == "lung")
    finally:
        kit.close()
    assert lung["frames_total"] == 8 and lung["frames_analysed"] == 4
    assert lung["subsampled"]["value"] is True
    why = " ".join(lung["subsampled"]["why"])
    assert "every 2" in why and "battery low (18% < 25%)" in why


def test_hot_box_runs_the_red_patient_and_holds_the_green_one(data_dir, fake_power):
    configure(data_dir, fake_power)
    fake_power.set(battery_percent=95, on_battery=False, temperature_c=92)  # generic profile: 80 °C
    kit = open_kit(data_dir)
    try:
        green = store_cine(kit, "GREEN-1", n_frames=4, seed=42)
        red = store_cine(kit, "RED-1", n_frames=4, seed=43)
        set_triage(kit.store, green["patient_id"], "green")
        set_triage(kit.store, red["patient_id"], "red")
    finally:
        kit.close()

    server = KitProcess(data_dir).start()
    try:
        wait_for_findings(data_dir, 1)
        # the green job has been looked at and put back (it waits 30 s before the next look)
        assert wait_until(lambda: "deferred for" in server.log_path.read_text(errors="replace"), 30), \
            server.log_path.read_text(errors="replace")[-3000:]
    finally:
        server.stop()
    assert "power policy: hot" in server.log_path.read_text(errors="replace")

    kit = open_kit(data_dir)
    try:
        assert "lung" in {r["task"] for r in findings.for_instance(kit.store, red["sop_instance_uid"])}
        assert findings.for_instance(kit.store, green["sop_instance_uid"]) == []
        waiting = [r for r in kit.store.queue.rows(kind=KIND_INFER)
                   if r.payload.get("sop_instance_uid") == green["sop_instance_uid"]]
    finally:
        kit.close()
    assert len(waiting) == 1 and waiting[0].state == "ready"
    assert "deferred" in waiting[0].last_error and "hot (92 °C >= 80 °C)" in waiting[0].last_error
