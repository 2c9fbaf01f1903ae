"""AI in plain words, in a real Chromium against a real `fieldkit serve` whose models run on
real captures pushed by storescu: a lung cine with a B-line pattern on a Minor patient shows
on the board as its B-line count (the simulated clip has 6) and is flagged as arguing for Delayed; a cardiac clip the models cannot
assess reads "No assessment: image not usable for ...", keeps the model's reason behind a
tap, and offers Acknowledge (recorded) instead of Accept/Reject."""

from __future__ import annotations

import pytest

from conftest import need_peer
from fixtures.ui import add_patient, capture_file, lung_file, new_context, push, shot, sign_in

pytestmark = pytest.mark.timeout(300)

PID = "AI-7"


def test_findings_in_plain_words_and_an_abstention_acknowledged(ui_browser, ui_kit, tmp_path):
    need_peer("storescu")
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    try:
        sign_in(page)
        assert add_patient(page, PID, 'green') == 201
        push(ui_kit, capture_file(tmp_path, patient_id=PID))
        push(ui_kit, lung_file(tmp_path, patient_id=PID, n_blines=6, seed=31), flag="-xs")

        page.goto("/")
        card = page.locator(f"li.card[data-patient-id='{PID}']")
        argues = card.locator(".argues")
        page.wait_for_function("el => el.textContent.length > 0", arg=argues.element_handle(timeout=20000), timeout=150000)
        words = card.locator(".fwords").text_content()
        # the board says the count the kit's finding holds; that count is near the simulated truth (6)
        detail = page.evaluate(f"fetch('/api/v1/ui/patients/{PID}').then(r => r.json())")
        lung = [f for c in detail["captures"] for f in c["findings"] if f.get("task") == "lung" and f.get("assessable")]
        counts = [(f.get("result") or {}).get("b_lines") for f in lung]
        assert len(counts) == 1 and 4 <= counts[0] <= 8, lung
        assert words == f"B-lines {counts[0]}", words
        assert argues.text_content() == f"◆ Finding suggests Delayed: {words}"
        assert card.get_attribute("data-triage") == "green"  # a prompt to look again, never set for anyone
        shot(page, "board-finding-in-words")

        page.goto(f"/patients/{PID}")
        abstained = page.locator("#findings li.finding[data-assessable=false]").first
        abstained.wait_for(timeout=20000)
        text = abstained.locator(".f-result").inner_text()
        assert text in ("No assessment: image not usable for lung", "No assessment: image not usable for FAST"), text
        assert abstained.locator(".f-accept").is_hidden() and abstained.locator(".f-reject").is_hidden()
        reason = abstained.locator(".f-reason")
        assert reason.is_hidden()  # the engineering words wait behind a tap
        abstained.locator(".f-why summary").tap()
        assert reason.is_visible() and reason.inner_text().strip()
        abstained.locator(".f-ack").tap()
        page.wait_for_function("() => document.querySelector('#findings li.finding[data-assessable=false] .f-state')"
                               ".textContent.startsWith('acknowledged by clin1')", timeout=20000)
        assert page.locator("#findings li.finding[data-assessable=false] .f-ack").first.get_attribute("aria-pressed") == "true"
        # the assessable one still asks for a verdict
        positive = page.locator("#findings li.finding[data-assessable=true]").first
        assert positive.locator(".f-accept").is_visible() and positive.locator(".f-ack").is_hidden()
        shot(page, "patient-abstention-acknowledged")
    finally:
        ctx.close()
