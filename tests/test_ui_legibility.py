"""Layout and legibility in a real Chromium against a real `fieldkit serve`.

Contrasts are computed from the browser's computed styles, day and night: every category's
card stands out from the page (>= 3:1 at its edge) and its text reads (>= 4.5:1); the
category is the largest text on the card and has a shape of its own (not colour alone);
night chrome is dimmer than the cards. axe-core finds no serious or critical problem on the
board, a patient page and the New-patient page at 1024x768, 800x1280 and 390x844, day and
night. On a phone the header is one row and the primary action is in view; a tag-only card
does not repeat empty lines; the live indicator tells the truth on a page without a stream.
"""

from __future__ import annotations

import pytest

from fixtures.ui import add_patient, axe_violations, new_context, shot, sign_in

pytestmark = pytest.mark.timeout(300)

WAIT = 20000
CATS = ["red", "yellow", "green", "grey", "black", "none"]
VIEWPORTS = {"1024x768": {"width": 1024, "height": 768}, "800x1280": {"width": 800, "height": 1280},
             "390x844": {"width": 390, "height": 844}}
PHONE = VIEWPORTS["390x844"]

# WCAG relative luminance and contrast of computed colours (rgb()/rgba() strings)
CONTRAST_JS = """
() => {
  const rgb = (s) => { const m = s.match(/rgba?\\(([^)]+)\\)/); const v = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
                       return { r: v[0], g: v[1], b: v[2], a: v.length > 3 ? v[3] : 1 }; };
  const lum = (c) => { const f = (x) => { x /= 255; return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; };
                       return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const page = rgb(getComputedStyle(document.body).backgroundColor);
  const out = {};
  document.querySelectorAll("#board li.card").forEach((li) => {
    const cs = getComputedStyle(li);
    let fill = rgb(cs.backgroundColor);
    if (fill.a === 0) fill = page;
    const edge = parseFloat(cs.borderTopWidth) >= 2 ? rgb(cs.borderTopColor) : fill;
    const label = li.querySelector(".cat-label");
    const texts = [...li.querySelectorAll(".card-link span")].filter((e) => e.offsetParent && e.children.length === 0
      && e.textContent.trim());
    const textRatios = texts.map((e) => {
      let bg = rgb(getComputedStyle(e).backgroundColor);
      if (bg.a === 0) bg = fill;
      return [e.className, ratio(rgb(getComputedStyle(e).color), bg)];
    });
    const sizes = texts.filter((e) => e !== label).map((e) => parseFloat(getComputedStyle(e).fontSize));
    out[li.dataset.triage] = {
      edge_ratio: ratio(edge, page), text_ratios: textRatios,
      label_size: parseFloat(getComputedStyle(label).fontSize), other_max: Math.max(0, ...sizes),
      shape: getComputedStyle(label, "::before").content,
      fill: getComputedStyle(li).backgroundColor, edge_colour: cs.borderTopColor, fill_lum: lum(fill),
      text: li.innerText,
    };
  });
  const header = document.querySelector("header.top");
  out.__chrome = { header_lum: lum(rgb(getComputedStyle(header).backgroundColor)),
                   primary_lum: lum(rgb(getComputedStyle(document.querySelector(".board-tools .btn.primary")).backgroundColor)) };
  return out;
}
"""


@pytest.fixture(scope="module")
def ids(ui_browser, ui_kit):
    """One tag-only patient per category, registered through the API as a tablet does."""
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    sign_in(page)
    for cat in CATS:
        assert add_patient(page, 'L-' + cat, cat) == 201
    ctx.close()
    return {cat: f"L-{cat}" for cat in CATS}


def tablet(ui_browser, ui_kit, viewport, theme):
    ctx = new_context(ui_browser, ui_kit, viewport=viewport)
    ctx.add_init_script(f"localStorage.setItem('fieldkit.theme', '{theme}')")
    page = ctx.new_page()
    sign_in(page)
    return ctx, page


def board_ready(page):
    page.goto("/")
    page.wait_for_function(f"() => document.querySelectorAll('#board li.card').length >= {len(CATS)} && "
                           "document.querySelector(\"li.card[data-patient-id='L-red'] .cat-label\").textContent === 'Immediate'",
                           timeout=WAIT)


@pytest.mark.parametrize("theme", ["day", "night"])
def test_every_category_stands_out_and_reads(ui_browser, ui_kit, ids, theme):
    ctx, page = tablet(ui_browser, ui_kit, VIEWPORTS["1024x768"], theme)
    try:
        board_ready(page)
        assert page.evaluate("document.documentElement.dataset.theme") == theme
        got = page.evaluate(CONTRAST_JS)
        shot(page, f"legibility-board-{theme}")
        for cat in CATS:
            c = got[cat]
            assert c["edge_ratio"] >= 3.0, (theme, cat, c)
            assert c["text_ratios"] and all(r >= 4.5 for _, r in c["text_ratios"]), (theme, cat, c["text_ratios"])
            assert c["label_size"] > c["other_max"], (theme, cat, c)  # the category is the largest text
            assert c["shape"] not in ("none", "normal", ""), (theme, cat)
            # a tag-only card says only what it knows
            for empty in ("Unidentified", "0 captures", "no captures"):
                assert empty not in c["text"], (theme, cat, c["text"])
        assert len({got[c]["shape"] for c in CATS}) == len(CATS)  # a shape of its own each
        assert len({(got[c]["fill"], got[c]["edge_colour"]) for c in CATS}) == len(CATS)
        if theme == "night":  # dimmed chrome: the header and buttons are not the brightest things
            filled = [got[c]["fill_lum"] for c in ("red", "yellow", "green", "grey")]
            assert got["__chrome"]["header_lum"] < min(filled)
            assert got["__chrome"]["primary_lum"] <= max(filled)
    finally:
        ctx.close()


@pytest.mark.parametrize("theme", ["day", "night"])
@pytest.mark.parametrize("size", list(VIEWPORTS))
def test_axe_finds_nothing_serious(ui_browser, ui_kit, ids, size, theme):
    ctx, page = tablet(ui_browser, ui_kit, VIEWPORTS[size], theme)
    try:
        board_ready(page)
        problems = {"board": axe_violations(page)}
        page.goto("/patients/L-red")
        page.wait_for_function("() => document.getElementById('p-title').textContent === 'Tag L-red' && "
                               "document.querySelector('.p-head').classList.contains('tri-red')", timeout=WAIT)
        problems["patient"] = axe_violations(page)
        page.goto("/patients/new")
        page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'", timeout=WAIT)
        problems["new"] = axe_violations(page)
        assert not any(problems.values()), problems
    finally:
        ctx.close()


def test_patient_page_header_band_in_the_category_colour(ui_browser, ui_kit, ids):
    ctx, page = tablet(ui_browser, ui_kit, VIEWPORTS["800x1280"], "day")
    try:
        board_ready(page)
        card = {c: page.locator(f"li.card[data-patient-id='L-{c}']").evaluate("e => getComputedStyle(e).backgroundColor")
                for c in ("red", "green")}
        for cat in ("red", "green"):
            page.goto(f"/patients/L-{cat}")
            page.wait_for_function(f"() => document.querySelector('.p-head').classList.contains('tri-{cat}')", timeout=WAIT)
            assert page.locator(".p-head").evaluate("e => getComputedStyle(e).backgroundColor") == card[cat]
        shot(page, "patient-band-green")
        assert page.locator("header.top").bounding_box()["height"] <= 64  # one row on a portrait tablet too
    finally:
        ctx.close()


def test_phone_header_is_one_row_and_the_primary_action_is_in_view(ui_browser, ui_kit, ids):
    ctx, page = tablet(ui_browser, ui_kit, PHONE, "day")
    try:
        board_ready(page)

        def fits(selector):
            box = page.locator(selector).bounding_box()
            return box and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5 \
                and box["y"] + box["height"] <= PHONE["height"]

        header = page.locator("header.top").bounding_box()
        assert header["height"] <= 64, header  # one row of 48 px controls
        middles = page.evaluate("[...document.querySelectorAll('header.top nav a, header.top .tools > *')]"
                                ".filter((e) => e.offsetParent).map((e) => { const r = e.getBoundingClientRect(); return Math.round(r.top + r.height / 2); })")
        assert len(middles) >= 7 and max(middles) - min(middles) <= 8, middles  # side by side, not wrapped
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert fits("header.top a[href='/patients/new']")
        assert page.locator("#theme-toggle").evaluate("e => e.getBoundingClientRect().width") >= 44  # still a glove target
        shot(page, "phone-board")
        page.goto("/patients/new")
        page.wait_for_selector("#create-next")
        assert fits("#create-next") and fits("#tag")  # Add is in view before any scrolling
        shot(page, "phone-new-patient")
        # sign-out and night mode keep their names for a screen reader, though shown as icons
        assert page.get_by_role("button", name="Night mode").count() == 1
        assert page.get_by_role("button", name="Sign out").count() == 1
    finally:
        ctx.close()


def test_live_indicator_tells_the_truth_on_a_page_without_a_stream(ui_browser, ui_kit, ids):
    ctx, page = tablet(ui_browser, ui_kit, VIEWPORTS["800x1280"], "day")
    try:
        page.goto("/patients/new")
        page.wait_for_function("() => document.getElementById('live-state').textContent === 'kit reachable'", timeout=WAIT)
        ctx.set_offline(True)
        page.wait_for_function("() => document.getElementById('live-state').textContent === 'kit unreachable'", timeout=WAIT)
        assert page.get_attribute("#live-state", "data-state") == "down"
        ctx.set_offline(False)
        page.wait_for_function("() => document.getElementById('live-state').textContent === 'kit reachable'", timeout=WAIT)
    finally:
        ctx.close()
