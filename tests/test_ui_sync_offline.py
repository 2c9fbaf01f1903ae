"""The sync page watching progress reach "confirmed" against a real Orthanc, then the kit
stopped: a reload shows the service worker's copy of the board, marked stale.

One kit configured with a real Orthanc (DICOMweb plugin) as the hospital; one Chromium.
The last test stops the kit, so it runs last in this module.
"""

from __future__ import annotations

import pytest

from conftest import need_peer
from fixtures.orthanc import dicomweb_plugin, orthanc_binary, start_orthanc
from fixtures.ui import (capture_file, launch_chromium, new_context, push, reload_under_worker, shot, sign_in,
                         start_ui_kit)
from kitproc import run_cli, set_config

pytestmark = pytest.mark.timeout(300)
TAG = "T-200"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    if not (orthanc_binary() and dicomweb_plugin()):
        need_peer("Orthanc")
    handle = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def synced_kit(tmp_path_factory, hospital):
    def configure(data_dir):
        run_cli("hospital", "set", "--data-dir", data_dir, "--url", hospital.base_url)
        set_config(data_dir, sync__backoff_max_seconds=1.0)
    kit = start_ui_kit(tmp_path_factory.mktemp("ui-sync"), before_serve=configure)
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def page(synced_kit):
    need_peer("chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch_chromium(p, synced_kit.data_dir)
        ctx = new_context(browser, synced_kit)
        pg = ctx.new_page()
        sign_in(pg)
        yield pg
        ctx.close()
        browser.close()


def test_sync_page_watches_progress_reach_confirmed(page, synced_kit, hospital, tmp_path):
    need_peer("storescu")
    page.goto("/patients/new")
    page.fill("#tag", TAG)
    page.check("input[name=triage][value=red]")
    page.click("#create")
    page.locator(f"li.card[data-patient-id='{TAG}']").wait_for(timeout=20000)
    page.goto("/sync")
    page.wait_for_selector("#s-counts:not(:empty)")
    before = hospital.instance_count()
    push(synced_kit, capture_file(tmp_path, patient_id=TAG))
    # the page follows without reload: items appear, then everything is confirmed
    page.wait_for_selector("#s-items li.sync-item", timeout=30000)
    page.wait_for_function("""() => { const items = [...document.querySelectorAll('#s-items li.sync-item')];
        return items.length >= 2 && items.every(li => li.dataset.state === 'confirmed')
            && document.getElementById('s-progress').value === 1; }""", timeout=120000)
    assert "0 queued" in page.inner_text("#s-counts") and "0 quarantined" in page.inner_text("#s-counts")
    assert page.get_attribute("#s-link", "data-up") == "true"
    shot(page, "sync-confirmed")
    assert hospital.instance_count() > before  # the hospital really holds them
    page.goto("/")
    card = page.locator(f"li.card[data-patient-id='{TAG}'] .sync-badge")
    card.wait_for()
    page.wait_for_function(f"""() => document.querySelector("li.card[data-patient-id='{TAG}'] .sync-badge")
        .dataset.sync === 'confirmed'""", timeout=60000)


def test_reload_with_kit_stopped_shows_cached_board_marked_stale(page, synced_kit):
    page.goto("/")
    reload_under_worker(page)  # the worker keeps the page and the board
    page.locator(f"li.card[data-patient-id='{TAG}']").wait_for(timeout=20000)
    assert page.locator("#stale-banner").is_hidden()
    synced_kit.stop()
    assert synced_kit.proc.poll() is not None
    page.reload()
    banner = page.locator("#stale-banner")
    banner.wait_for(state="visible", timeout=15000)
    assert "Stale" in banner.inner_text() and "cannot be reached" in banner.inner_text()
    card = page.locator(f"li.card[data-patient-id='{TAG}']")
    card.wait_for(timeout=20000)
    assert card.get_attribute("data-triage") == "red"
    assert page.inner_text("[data-count=red]") == "1"
    shot(page, "board-offline-stale")
