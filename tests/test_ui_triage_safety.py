"""Time on the board and mis-taps on the patient page, in a real Chromium against a real
`fieldkit serve`:

- a card shows how long ago the patient was triaged and by whom, and that time ticks on
  the tablet without any request for the board;
- Deceased asks for a confirmation naming the patient (Cancel changes nothing); after
  confirming, the undo bar puts Immediate back, the history says "undo", and the board's
  Immediate count is back to what it was;
- Expectant asks too, and so does taking a patient out of Immediate.

Service workers are blocked so that every request the page makes is seen by the test.
"""

from __future__ import annotations

import re

import pytest

from fixtures.ui import CLINICIAN_USER, TABLET, shot, sign_in
from test_ui_board_live import BOARD_API, api_session, browser, kit  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(300)


def _tablet(browser, kit):  # noqa: F811
    ctx = browser.new_context(base_url=kit.url, viewport=TABLET, service_workers="block", has_touch=True)
    page = ctx.new_page()
    board_fetches = []
    page.on("request", lambda req: board_fetches.append(req.url) if req.url.split("?")[0].endswith(BOARD_API) else None)
    sign_in(page)
    return ctx, page, board_fetches


def test_time_since_triage_shows_who_and_ticks_without_asking_the_kit(kit, browser):  # noqa: F811
    s = api_session(kit)
    assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": "TT-1", "triage": "yellow"}, timeout=30).status_code == 201
    ctx, page, fetches = _tablet(browser, kit)
    try:
        card = page.locator("li.card[data-patient-id='TT-1']")
        card.wait_for(timeout=15000)
        since = card.locator(".since")
        first = since.text_content()
        assert re.fullmatch(r"triaged \d+ s ago", first), first
        assert card.locator(".tri-by").text_content() == f"by {CLINICIAN_USER}"
        n = len(fetches)
        page.wait_for_function("([el, before]) => el.textContent !== before", arg=[since.element_handle(), first],
                               timeout=5000)
        assert re.fullmatch(r"triaged \d+ s ago", since.text_content())
        assert len(fetches) == n  # ticked on the tablet: the board was not asked again
        shot(page, "board-time-since-triage")
    finally:
        ctx.close()


def _immediate_count(page) -> int:
    page.goto("/")
    page.wait_for_selector("li.card", timeout=15000)
    return int(page.locator("[data-count='red']").text_content())


def test_deceased_needs_a_confirmation_and_undo_restores_immediate(kit, browser):  # noqa: F811
    s = api_session(kit)
    assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": "MT-1", "triage": "red"}, timeout=30).status_code == 201
    ctx, page, _ = _tablet(browser, kit)
    try:
        reds = _immediate_count(page)
        assert reds >= 1
        page.goto("/patients/MT-1")
        pill = page.locator("#p-cat")
        page.wait_for_function("() => document.getElementById('p-cat').textContent === 'Immediate'", timeout=15000)
        dialog = page.locator("#triage-confirm")

        page.click(".tri-btn[data-triage='black']")
        dialog.wait_for(state="visible", timeout=5000)
        assert "Tag MT-1" in page.locator("#triage-confirm-question").text_content()
        assert page.locator("#triage-confirm-yes").text_content() == "Yes: Tag MT-1 is Deceased"
        shot(page, "triage-confirm-deceased")
        page.click("#triage-confirm-no")  # the mis-tap caught: nothing changes
        dialog.wait_for(state="hidden", timeout=5000)
        assert s.get(kit.url + "/api/v1/ui/patients/MT-1", timeout=30).json()["triage"] == "red"
        assert pill.text_content() == "Immediate"

        page.click(".tri-btn[data-triage='black']")
        page.click("#triage-confirm-yes")
        page.wait_for_function("() => document.getElementById('p-cat').textContent === 'Deceased'", timeout=10000)
        bar = page.locator("#undo-bar")
        bar.wait_for(state="visible", timeout=5000)
        assert page.locator("#undo-btn").text_content() == "Undo: back to Immediate"
        shot(page, "triage-undo-bar")
        page.click("#undo-btn")
        page.wait_for_function("() => document.getElementById('p-cat').textContent === 'Immediate'", timeout=10000)
        history = s.get(kit.url + "/api/v1/ui/patients/MT-1", timeout=30).json()["triage_history"]
        assert [(h["triage"], bool(h.get("undo"))) for h in history][-2:] == [("black", False), ("red", True)]
        page.wait_for_function("() => [...document.querySelectorAll('#history li')].some((li) => li.textContent.includes('(undo)'))",
                               timeout=10000)
        assert _immediate_count(page) == reds  # back in the Immediate count
    finally:
        ctx.close()


def test_expectant_and_leaving_immediate_ask_first(kit, browser):  # noqa: F811
    s = api_session(kit)
    assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": "MT-2", "triage": "yellow"}, timeout=30).status_code == 201
    ctx, page, _ = _tablet(browser, kit)
    try:
        page.goto("/patients/MT-2")
        page.wait_for_function("() => document.getElementById('p-cat').textContent === 'Delayed'", timeout=15000)
        dialog = page.locator("#triage-confirm")
        page.click(".tri-btn[data-triage='grey']")
        dialog.wait_for(state="visible", timeout=5000)
        assert page.locator("#triage-confirm-yes").text_content() == "Yes: Tag MT-2 is Expectant"
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=5000)
        assert s.get(kit.url + "/api/v1/ui/patients/MT-2", timeout=30).json()["triage"] == "yellow"

        page.click(".tri-btn[data-triage='red']")  # up to Immediate: one tap, with an undo
        page.wait_for_function("() => document.getElementById('p-cat').textContent === 'Immediate'", timeout=10000)
        page.locator("#undo-bar").wait_for(state="visible", timeout=10000)  # (shown just after the category)
        assert not dialog.is_visible()
        page.click(".tri-btn[data-triage='green']")  # out of Immediate: asks first
        dialog.wait_for(state="visible", timeout=5000)
        page.click("#triage-confirm-no")
        assert s.get(kit.url + "/api/v1/ui/patients/MT-2", timeout=30).json()["triage"] == "red"
    finally:
        ctx.close()
