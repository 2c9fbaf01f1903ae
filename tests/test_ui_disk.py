"""The board's disk banner and the device page's storage line, in a real Chromium: a kit
whose disk is under the warn mark says so, and says what to do."""

from __future__ import annotations

import pytest

from fixtures.ui import new_context, sign_in, start_ui_kit
from kitproc import set_config

pytestmark = pytest.mark.timeout(300)


def test_low_disk_banner_on_the_board_and_advice_on_the_device_page(tmp_path):
    from conftest import need_peer
    need_peer("chromium")
    from playwright.sync_api import sync_playwright

    from fixtures.ui import launch_chromium

    # every real disk is under a warn mark of 1 EiB, and over a refuse mark of 0
    kit = start_ui_kit(tmp_path, before_serve=lambda d: set_config(d, store__warn_free_mb=1 << 40,
                                                                    store__refuse_free_mb=0))
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p, kit.data_dir)
            ctx = new_context(browser, kit)
            page = ctx.new_page()
            sign_in(page)
            page.wait_for_selector("#disk-banner:not([hidden])", timeout=20000)
            banner = page.locator("#disk-banner")
            assert banner.get_attribute("data-level") == "low"
            assert "sync to the hospital" in banner.inner_text()
            page.goto("/device")
            page.wait_for_function("() => document.getElementById('dv-space').textContent.includes('disk space is low')")
            assert page.locator("#dv-space").get_attribute("data-level") == "low"
            ctx.close()
            browser.close()
    finally:
        kit.stop()
