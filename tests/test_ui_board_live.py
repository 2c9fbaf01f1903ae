"""The board in a real Chromium is fetched once, then patched from the live stream.

- A capture pushed by storescu for one patient and a re-triage made on a second tablet
  change the first tablet's cards in place (the same elements), and the first tablet
  makes no request for the whole board after its first load.
- The stream drops (the kit ends it, and the tablet's reconnects fail for a while) and
  changes happen meanwhile: on reconnecting, the tablet resumes from its last event id
  and catches up without fetching the whole board.

Streams are made to end every few seconds (`ui.live_max_seconds`), so every test here
also crosses reconnects. Service workers are blocked so that every request the page
makes is seen by the test.
"""

from __future__ import annotations

import re

import pytest
import requests

from conftest import need_peer
from fixtures.ui import (chromium, CLINICIAN_PASSWORD, CLINICIAN_USER, TABLET, capture_file, push, sign_in,
                         start_ui_kit)
from kitproc import set_config

pytestmark = pytest.mark.timeout(300)
BOARD_API = "/api/v1/ui/board"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = start_ui_kit(tmp_path_factory.mktemp("board"),
                       before_serve=lambda data_dir: set_config(data_dir, ui__live_max_seconds=6))
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def browser(kit):
    with chromium(kit) as b:
        yield b


def api_session(kit) -> requests.Session:
    s = requests.Session()
    s.verify, s.trust_env = kit.ca, False
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(kit.url + "/login", timeout=30).text).group(1)
    r = s.post(kit.url + "/login", data={"username": CLINICIAN_USER, "password": CLINICIAN_PASSWORD,
                                         "csrf_token": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.text
    s.headers["X-CSRF-Token"] = s.get(kit.url + "/api/v1/session", timeout=30).json()["csrf_token"]
    return s


class BoardTablet:
    """A signed-in tablet on the board, counting its requests for the whole board."""

    def __init__(self, browser, kit):
        self.ctx = browser.new_context(base_url=kit.url, viewport=TABLET, service_workers="block", has_touch=True)
        self.page = self.ctx.new_page()
        self.board_fetches = 0
        self.live_requests = []
        self.page.on("request", self._seen)
        sign_in(self.page)
        self.page.wait_for_selector("li.card", timeout=15000)
        self.wait_live()

    def _seen(self, req):
        path = req.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        if "/" + path == BOARD_API:
            self.board_fetches += 1
        elif "/" + path == "/api/v1/live":
            self.live_requests.append(req)

    def wait_live(self):
        self.page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'",
                                    timeout=15000)

    def wait_reconnected(self, n: int, timeout_ms: int = 20000):
        """Until the page has opened its `n`th live stream and hears it."""
        for _ in range(timeout_ms // 100):
            if len(self.live_requests) >= n:
                return self.wait_live()
            self.page.wait_for_timeout(100)
        raise AssertionError(f"only {len(self.live_requests)} live streams opened, waited for {n}")

    def card(self, pid):
        return self.page.locator(f"li.card[data-patient-id='{pid}']")

    def close(self):
        self.ctx.close()


def test_board_rows_change_in_place_and_the_board_is_never_fetched_again(kit, browser, tmp_path):
    need_peer("storescu")
    s = api_session(kit)
    for tag, tri in (("BL-1", "yellow"), ("BL-2", "green"), ("BL-3", "green")):
        assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": tag, "triage": tri}, timeout=30).status_code == 201
    first = BoardTablet(browser, kit)
    try:
        assert first.board_fetches == 1
        held = {pid: first.card(pid).element_handle() for pid in ("BL-1", "BL-2")}
        assert first.card("BL-1").locator(".caps").inner_text() == "0 captures"

        # the probe stores a capture for BL-1
        push(kit, capture_file(tmp_path, patient_id="BL-1"))
        first.page.wait_for_function("e => e.querySelector('.caps').textContent === '1 capture'", arg=held["BL-1"],
                                     timeout=20000)

        # a second tablet re-triages BL-2 from its patient page
        second = browser.new_context(base_url=kit.url, viewport=TABLET, service_workers="block", has_touch=True)
        other = second.new_page()
        sign_in(other, next_path="/patients/BL-2")
        other.click("button.tri-btn[data-triage=red]")
        other.wait_for_selector("button.tri-btn[data-triage=red][aria-pressed=true]")
        second.close()
        first.page.wait_for_function("e => e.dataset.triage === 'red' && e.isConnected", arg=held["BL-2"],
                                     timeout=15000)
        assert first.page.locator("[data-count=red]").inner_text() == "1"
        # most urgent first: the re-triaged card moved to the top, as the same element
        assert first.page.evaluate("e => document.querySelector('#board li') === e", held["BL-2"])

        # after the stream ended and was resumed (streams last 6 s here), changes still arrive
        first.wait_reconnected(len(first.live_requests) + 1)
        s.post(kit.url + "/api/v1/ui/patients/BL-3/triage", json={"triage": "yellow"}, timeout=30)
        first.card("BL-3").and_(first.page.locator("[data-triage=yellow]")).wait_for(timeout=15000)
        assert first.board_fetches == 1, "the whole board was fetched again after an event"
    finally:
        first.close()


def test_after_the_stream_drops_the_tablet_catches_up_without_a_board_fetch(kit, browser):
    s = api_session(kit)
    assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": "RC-1", "triage": "green"}, timeout=30).status_code == 201
    tablet = BoardTablet(browser, kit)
    try:
        assert tablet.board_fetches == 1
        failed = []
        tablet.page.on("requestfailed", lambda r: failed.append(r) if "/api/v1/live" in r.url else None)
        # the kit ends the stream within 6 s; the tablet's reconnects fail until the route is lifted
        tablet.page.route("**/api/v1/live*", lambda route: route.abort("internetdisconnected"))
        tablet.page.wait_for_function("() => document.getElementById('live-state').dataset.state !== 'live'",
                                      timeout=20000)
        deadline_polls = 0
        while not failed and deadline_polls < 100:
            tablet.page.wait_for_timeout(100)
            deadline_polls += 1
        assert failed, "the tablet never tried to reconnect"
        for tri in ("yellow", "red"):  # a few events while the tablet is away
            assert s.post(kit.url + "/api/v1/ui/patients/RC-1/triage", json={"triage": tri},
                          timeout=30).status_code == 200
        assert s.post(kit.url + "/api/v1/ui/patients/RC-1/details", json={"name": "Rae Example"},
                      timeout=30).status_code == 200
        before = len(tablet.live_requests)
        tablet.page.unroute("**/api/v1/live*")
        card = tablet.card("RC-1")
        card.and_(tablet.page.locator("[data-triage=red]")).wait_for(timeout=20000)
        assert card.locator(".pname").inner_text() == "Rae Example"
        resumed = tablet.live_requests[before:]
        assert resumed and any(r.headers.get("last-event-id") or "last=" in r.url for r in resumed)
        assert tablet.board_fetches == 1, "the tablet fetched the whole board to catch up"
    finally:
        tablet.close()
