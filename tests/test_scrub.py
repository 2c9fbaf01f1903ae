"""A damaged blob is found by the background scrub (status, device page, doctor), refused
clearly by WADO-RS, and repaired by the probe sending the same capture again."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest

from fieldkit.kit import open_kit
from fieldkit.store import instances, scrub
from fixtures.dcmtk import pydicom_file, store_responses, storescu
from kitproc import KitProcess, run_cli, set_config, wait_until


def _doctor(data_dir, *extra) -> tuple[int, dict]:
    out = run_cli("doctor", "--data-dir", data_dir, "--json", "--timeout", "2", *extra, check=False, timeout=300)
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def _flip_blob(data_dir, sop_uid: str) -> str:
    kit = open_kit(data_dir)
    try:
        addr = instances.get_instance(kit.store, sop_uid)["blob"]
        path = kit.store.blobs.path(addr)
    finally:
        kit.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return addr


def _device_page_lists(kit, uid: str) -> None:
    """What an admin sees on the tablet's device page (headless Chromium)."""
    from playwright.sync_api import sync_playwright

    from fixtures.ui import ADMIN_PASSWORD, ADMIN_USER, launch_chromium, new_context, sign_in
    with sync_playwright() as p:
        browser = launch_chromium(p, kit.data_dir)
        try:
            page = new_context(browser, kit).new_page()
            sign_in(page, ADMIN_USER, ADMIN_PASSWORD)
            page.goto("/device")
            page.wait_for_selector("#dv-damage li", timeout=20000)
            assert uid in page.locator("#dv-damage").inner_text()
            assert page.locator("#dv-damage-panel").is_visible()
            assert "1 damaged" in page.locator("#dv-scrub").inner_text()
        finally:
            browser.close()


def test_damaged_blob_is_found_by_the_scrub_refused_by_wado_and_repaired_by_a_resend(data_dir, need):
    need("storescu")
    need("chromium")
    capture = pydicom_file("examples_rgb_color.dcm")
    original = pydicom.dcmread(capture)
    uid = original.SOPInstanceUID
    set_config(data_dir, store__scrub_days=0.0001)  # a pass every ~9 s
    kit = KitProcess(data_dir).start()
    try:
        assert store_responses(storescu(kit.dicom_port, [capture])) == ["Success"]
    finally:
        kit.stop()
    addr = _flip_blob(data_dir, uid)

    kit = KitProcess(data_dir).start()
    try:
        auth = kit.auth("admin")
        client = {"Authorization": f"Bearer {kit.token('dicomweb-client')}"}

        def damage():
            return kit.get("/api/v1/status", headers=auth).json().get("damage") or []

        # the background scrub finds it: status and the device page name blob and instance
        assert wait_until(lambda: damage(), timeout=90, step=0.5), kit.log()
        found = damage()
        assert [(d["blob"], d["sop_instance_uid"]) for d in found] == [(addr, uid)]
        device = kit.get("/api/v1/ui/device", headers=auth).json()
        assert [d["sop_instance_uid"] for d in device["damage"]] == [uid]
        assert device["scrub"]["running"] is True
        _device_page_lists(kit, uid)

        # WADO-RS says what is wrong and what to do, instead of sending broken bytes
        wado = kit.get(f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
                       f"/instances/{uid}", headers=client)
        assert wado.status_code == 500
        assert "send the capture again" in wado.text

        # doctor fails on it while the kit runs
        code, checks = _doctor(data_dir)
        assert code == 1 and checks["store"]["status"] == "fail" and uid in checks["store"]["message"]

        # the probe sends the same capture again: repaired, answered as a success
        assert store_responses(storescu(kit.dicom_port, [capture])) == ["Success"]
        assert damage() == []
        wado = kit.get(f"/dicom-web/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
                       f"/instances/{uid}", headers={**client, "Accept": 'multipart/related; type="application/dicom"'})
        assert wado.status_code == 200
        part = wado.content.split(b"\r\n\r\n", 1)[1]
        got = pydicom.dcmread(io.BytesIO(part))
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)

        # an on-demand full scrub through the running kit: nothing left
        code, checks = _doctor(data_dir, "--scrub")
        assert checks["store"]["status"] == "ok" and "stored captures read and verified" in checks["store"]["message"]
    finally:
        kit.stop()
    # the damaged file was set aside, not deleted
    assert len(list((data_dir / "blobs" / "damaged").iterdir())) == 1


def test_doctor_scrub_finds_damage_with_the_kit_stopped(data_dir):
    kit = open_kit(data_dir)
    try:
        result = instances.put_instance(kit.store, open(pydicom_file("examples_palette.dcm"), "rb").read(), "upload")
        uid = result["sop_instance_uid"]
    finally:
        kit.close()
    code, checks = _doctor(data_dir)
    assert checks["store"]["status"] == "ok"
    _flip_blob(data_dir, uid)
    code, checks = _doctor(data_dir)
    assert checks["store"]["status"] == "ok"  # not read yet: the scrub is what finds it
    code, checks = _doctor(data_dir, "--scrub")
    assert code == 1 and checks["store"]["status"] == "fail" and uid in checks["store"]["message"]
    assert "send those captures again" in checks["store"]["fix"]


def test_resend_through_the_store_api_repairs_a_missing_blob(store):
    data = open(pydicom_file("examples_rgb_color.dcm"), "rb").read()
    first = instances.put_instance(store, data, "upload")
    addr = first["instance"]["blob"]
    store.blobs.path(addr).unlink()
    assert scrub.scrub_all(store)["damaged"][0]["reason"] == "the blob file is missing"
    again = instances.put_instance(store, data, "upload")
    assert again["status"] == "stored" and "replaced" in again["message"]
    assert scrub.damage(store) == []
    np.testing.assert_array_equal(instances.read_dataset(store, first["sop_instance_uid"]).pixel_array,
                                  pydicom.dcmread(pydicom_file("examples_rgb_color.dcm")).pixel_array)
    # and a third identical send is a plain duplicate
    assert instances.put_instance(store, data, "upload")["status"] == "duplicate"
    assert len(instances.instance_rows(store)) == 1


def test_scrub_waits_while_the_power_policy_is_not_full_speed(kit):
    from fieldkit.hardware.probe import FakeProbe
    kit.store.blobs.put_bytes(b"x")  # not a capture: nothing to scrub is fine, the gate is what is tested
    worker = scrub.Scrubber(kit, period_s=0.5)
    kit.hardware = FakeProbe(battery_percent=5, on_battery=True)
    assert worker._power_ok() is False
    kit.hardware = FakeProbe(temperature_c=99.0)
    assert worker._power_ok() is False
    kit.hardware = FakeProbe(battery_percent=90, on_battery=False, temperature_c=40.0)
    assert worker._power_ok() is True


@pytest.mark.parametrize("days", [0, 0.0])
def test_scrub_off_when_days_is_zero(kit, days):
    kit.config = type(kit.config)({**kit.config.as_dict(), "store.scrub_days": days})
    service = scrub.start(kit)
    assert service.status()["running"] is False
    service.stop()


def test_a_stopped_check_decides_nothing(store):
    data = open(pydicom_file("examples_rgb_color.dcm"), "rb").read()
    row = instances.put_instance(store, data, "upload")["instance"]
    scrub.record_damage(store, row["sop_instance_uid"], row["blob"], "found earlier")
    with pytest.raises(scrub.Stopped):
        scrub.check(store, row["sop_instance_uid"], row["blob"], pause=lambda: True)
    assert [d["reason"] for d in scrub.damage(store)] == ["found earlier"]  # not cleared by a stop
    assert scrub.check(store, row["sop_instance_uid"], row["blob"]) is None  # whole: cleared
    assert scrub.damage(store) == []
