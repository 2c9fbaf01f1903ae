"""The board in a real Chromium with more patients than a page (`ui.board_page_size` 10,
25 patients): the first page in board order, "Show more (N more)" loads the rest, the
category filter and the search ask the kit and show the right cards, the counts on top
are the whole board's, and a live re-triage on a second tablet moves a card from beyond
the loaded page into the first page (and the counts with it)."""

from __future__ import annotations

import pytest

from fixtures.ui import TABLET, chromium, reload_under_worker, sign_in, start_ui_kit
from kitproc import set_config
from test_ui_board_live import api_session

pytestmark = pytest.mark.timeout(300)
WAIT = 20000
N = 25


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = start_ui_kit(tmp_path_factory.mktemp("pages"),
                       before_serve=lambda data_dir: set_config(data_dir, ui__board_page_size=10))
    s = api_session(kit)
    # green patients G-00..G-19 (G-00 waits longest), then five yellow ones
    for i in range(20):
        assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": f"G-{i:02d}", "triage": "green"},
                      timeout=30).status_code == 201
    for i in range(5):
        assert s.post(kit.url + "/api/v1/ui/patients", json={"tag": f"Y-{i}", "triage": "yellow"},
                      timeout=30).status_code == 201
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def browser(kit):
    with chromium(kit) as b:
        yield b


@pytest.fixture
def page(kit, browser):
    """A tablet signed in on the board (its own browser context, closed afterwards)."""
    ctx = browser.new_context(base_url=kit.url, viewport=TABLET, has_touch=True)
    try:
        page = ctx.new_page()
        sign_in(page)
        yield page
    finally:
        ctx.close()


def shown(page) -> list[str]:
    return page.eval_on_selector_all("#board li.card", "els => els.map(e => e.dataset.patientId)")


def wait_cards(page, expected: list[str]) -> None:
    page.wait_for_function("ids => JSON.stringify([...document.querySelectorAll('#board li.card')]"
                           ".map(e => e.dataset.patientId)) === JSON.stringify(ids)", arg=expected, timeout=WAIT)


def test_pages_filter_search_and_a_live_move_into_the_first_page(kit, page):
    first = [f"Y-{i}" for i in range(5)] + [f"G-{i:02d}" for i in range(5)]
    wait_cards(page, first)
    more = page.locator("#board-more")
    page.wait_for_function("() => document.querySelector('#board-more').textContent === 'Show more (15 more)'",
                           timeout=WAIT)
    assert page.inner_text("[data-count=green]") == "20" and page.inner_text("[data-count=yellow]") == "5"

    more.click()
    wait_cards(page, first + [f"G-{i:02d}" for i in range(5, 15)])
    page.wait_for_function("() => document.querySelector('#board-more').textContent === 'Show more (5 more)'",
                           timeout=WAIT)
    more.click()
    wait_cards(page, first + [f"G-{i:02d}" for i in range(5, 20)])
    assert more.is_hidden()

    # the category filter asks the kit: the yellow ones only, all on one page
    page.click("button.count[data-filter=yellow]")
    wait_cards(page, [f"Y-{i}" for i in range(5)])
    assert more.is_hidden()
    page.click("button.count[data-filter=yellow]")  # off again: the first page of the whole board
    wait_cards(page, first)

    # the search asks the kit: tags G-10..G-19 match "g-1"; a page of ten, none more
    page.fill("#board-search", "g-1")
    wait_cards(page, [f"G-{i}" for i in range(10, 20)])
    assert more.is_hidden()
    page.fill("#board-search", "")
    wait_cards(page, first)

    # G-19 (the last green, beyond the first page) is re-triaged red on another tablet:
    # it comes first on this board, live, and the counts follow
    s = api_session(kit)
    assert s.post(kit.url + "/api/v1/ui/patients/G-19/triage", json={"triage": "red"}, timeout=30).status_code == 200
    wait_cards(page, ["G-19"] + first)
    page.wait_for_function("() => document.querySelector('[data-count=red]').textContent === '1' && "
                           "document.querySelector('[data-count=green]').textContent === '19'", timeout=WAIT)
    page.wait_for_function("() => document.querySelector('#board-more').textContent === 'Show more (14 more)'",
                           timeout=WAIT)


def wait_held(page, held: list) -> bool:
    """Whether a routed request was held within 10 s (bounded)."""
    for _ in range(100):
        if held:
            return True
        page.wait_for_timeout(100)
    return bool(held)


def board_ids(kit, limit: int) -> list[str]:
    """The kit's own board order: the first `limit` cards' ids."""
    data = api_session(kit).get(kit.url + f"/api/v1/ui/board?limit={limit}", timeout=30).json()
    return [p["id"] for p in data["patients"] if not p.get("unassigned")]


def test_a_reload_while_a_page_loads_neither_drops_it_nor_the_pages_shown(kit, page):
    """The first page is loaded again when the service worker takes over or the live stream
    reconnects. A "Show more" answered after such a reload still adds its cards, and a
    reload keeps the cards the tablet had shown instead of going back to the first page."""
    held = []
    reload_under_worker(page)  # the worker's own takeover cannot then reload the board mid-test
    wait_cards(page, board_ids(kit, 10))
    page.route("**/api/v1/ui/board?after=*", lambda route: held.append(route))  # the next page waits here
    page.locator("#board-more").click()
    assert wait_held(page, held), "Show more asked the kit for nothing"
    with page.expect_response(lambda r: "/api/v1/ui/board" in r.url and "after=" not in r.url):
        page.evaluate("() => navigator.serviceWorker.dispatchEvent(new Event('controllerchange'))")
    held[0].continue_()
    page.unroute("**/api/v1/ui/board?after=*")
    wait_cards(page, board_ids(kit, 20))

    # a second reload keeps the twenty cards shown, in the kit's order
    with page.expect_response(lambda r: "/api/v1/ui/board" in r.url and "after=" not in r.url):
        page.evaluate("() => navigator.serviceWorker.dispatchEvent(new Event('controllerchange'))")
    page.wait_for_timeout(500)
    assert shown(page) == board_ids(kit, 20)
    assert page.inner_text("#board-more") == "Show more (5 more)"


def test_a_page_shown_while_a_reload_loads_is_kept_when_the_reload_answers(kit, page):
    """The other order: the first page is being loaded again (the stream reconnected) when
    "Show more" adds its cards. The reload's answer, asked before those cards were shown,
    must not take the tablet back to the first page."""
    held = []
    # under the worker already: its own takeover would start a reload of the same first page
    # before the route holds it, and the test's reload would join that one
    reload_under_worker(page)
    wait_cards(page, board_ids(kit, 10))
    first_page = lambda url: "/api/v1/ui/board" in url and "after=" not in url and "limit=" not in url  # noqa: E731
    # the reload waits here (the service worker fetches the first page: routed on the context)
    page.context.route(first_page, lambda route: held.append(route))
    page.evaluate("() => navigator.serviceWorker.dispatchEvent(new Event('controllerchange'))")
    assert wait_held(page, held), "the reload asked the kit for nothing"
    page.locator("#board-more").click()
    wait_cards(page, board_ids(kit, 20))
    with page.expect_response(lambda r: "/api/v1/ui/board" in r.url and "limit=20" in r.url):
        held[0].continue_()  # the stale first page answers; the kit is asked for all twenty
    page.context.unroute(first_page)
    page.wait_for_function("() => document.querySelector('#board-more').textContent === 'Show more (5 more)'",
                           timeout=WAIT)
    assert shown(page) == board_ids(kit, 20)


def test_a_tap_on_a_card_while_the_board_redraws_is_not_lost(kit, page):
    """A live update redraws the board while a finger is on a card: the card that stays in
    place is not taken out of the page, so the tap still opens the patient."""
    first = board_ids(kit, 10)
    wait_cards(page, first)
    box = page.locator(f"#board li.card[data-patient-id='{first[0]}'] a").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    # a redraw with nothing moved (the same sort asked again), as a live card change does
    page.evaluate("() => document.getElementById('board-sort').dispatchEvent(new Event('change'))")
    page.mouse.up()
    page.wait_for_url(f"**/patients/{first[0]}", timeout=WAIT)
