"""Signing out of a tablet leaves no patient data in the browser: a stolen tablet that was
signed out gives up neither the cached board nor the cached board page nor a form draft.

A real Chromium with the service worker in control caches the board (the offline copy),
then the clinician signs out; the test reads every Cache Storage entry, localStorage,
sessionStorage and the IndexedDB list from the page and finds no patient tag.
"""

from __future__ import annotations

import pytest

from conftest import need_peer
from fixtures.ui import launch_chromium, new_context, reload_under_worker, sign_in, start_ui_kit

pytestmark = pytest.mark.timeout(240)
TAG = "SIGNOUT-4711"

# Everything the origin keeps in the browser, as text: each cached response, both storages.
BROWSER_STORAGE = """async () => {
  const found = [];
  for (const name of await caches.keys()) {
    const cache = await caches.open(name);
    for (const req of await cache.keys()) {
      const res = await cache.match(req);
      found.push({where: name + " " + new URL(req.url).pathname, text: await res.text()});
    }
  }
  for (const [where, store] of [["localStorage", localStorage], ["sessionStorage", sessionStorage]]) {
    for (let i = 0; i < store.length; i++) {
      const key = store.key(i);
      found.push({where: where + " " + key, text: key + " " + store.getItem(key)});
    }
  }
  const dbs = indexedDB.databases ? await indexedDB.databases() : [];
  for (const db of dbs) found.push({where: "indexedDB " + db.name, text: db.name});
  return found;
}"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = start_ui_kit(tmp_path_factory.mktemp("signout"))
    yield kit
    kit.stop()


def test_sign_out_leaves_no_patient_data_in_the_browser(kit):
    need_peer("chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch_chromium(p, kit.data_dir)
        ctx = new_context(browser, kit)
        page = ctx.new_page()
        try:
            sign_in(page)
            page.goto("/patients/new")
            page.fill("#tag", TAG)
            page.check("input[name=triage][value=red]")
            page.click("#create")
            page.locator(f"li.card[data-patient-id='{TAG}']").wait_for(timeout=15000)
            reload_under_worker(page)  # the worker keeps the board page and the board data
            page.locator(f"li.card[data-patient-id='{TAG}']").wait_for(timeout=15000)
            # a half-typed new patient, kept as a draft for a sign-in round trip
            page.goto("/patients/new")
            page.fill("#tag", TAG + "-DRAFT")
            page.evaluate("() => import('/static/js/common.js').then(m => m.saveDrafts())")
            page.goto("/")
            page.locator(f"li.card[data-patient-id='{TAG}']").wait_for(timeout=15000)

            def holding():
                return [e["where"] for e in page.evaluate(BROWSER_STORAGE) if TAG in e["text"]]
            before = holding()
            assert any("fieldkit-data" in w for w in before), before  # the offline copy was really there

            page.click("#logout-form button[type=submit]")
            page.wait_for_url(lambda url: "/login" in url, timeout=15000)
            assert holding() == []
            page.reload()  # and nothing comes back with the sign-in page's own worker start
            page.wait_for_selector("#username")
            assert holding() == []
        finally:
            ctx.close()
            browser.close()
