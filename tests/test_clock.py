"""Setting the device clock while the kit runs: leases and retry delays are decided on
monotonic time, so a jump neither expires nor freezes them; the jump itself is detected,
logged and shown on the device page and in /api/v1/status."""

from __future__ import annotations

import logging

import pytest

from fieldkit.hardware.clock import ClockWatch
from fieldkit.records import KIND_INFER, KIND_SYNC
from fixtures.security import FakeClock

HOUR = 3600.0


@pytest.fixture
def clock(store):
    fake = FakeClock()
    store.queue.clock = fake
    return fake


@pytest.mark.parametrize("jump", [-HOUR, HOUR])
def test_a_lease_survives_a_wall_clock_jump(store, clock, jump):
    store.queue.enqueue(KIND_INFER, {"n": 1})
    row = store.queue.lease(KIND_INFER, lease_seconds=300)
    clock.jump_wall(jump)
    clock.advance(200)
    # not expired early: nobody else can take the row while its worker still holds it
    assert store.queue.lease(KIND_INFER, lease_seconds=300) is None
    assert store.queue.get(row.id).state == "leased"
    # not frozen: 300 s after it was taken (monotonic), the lease runs out and the row is offered again
    clock.advance(101)
    again = store.queue.lease(KIND_INFER, lease_seconds=300)
    assert again is not None and again.id == row.id and again.attempts == 2
    assert "lease expired" in again.last_error
    store.queue.ack(again.id)
    assert store.queue.get(row.id).state == "done"


@pytest.mark.parametrize("jump", [-HOUR, HOUR])
def test_a_30_second_sync_backoff_stays_30_seconds_across_a_jump(store, clock, jump):
    store.queue.enqueue(KIND_SYNC, {"n": 1})
    row = store.queue.lease(KIND_SYNC)
    store.queue.fail(row.id, "hospital unreachable", retry_in=30.0)
    persisted = store.queue.get(row.id).next_at
    assert persisted == pytest.approx(clock.wall() + 30.0)  # shown to people in wall time
    clock.jump_wall(jump)
    clock.advance(29)
    assert store.queue.lease(KIND_SYNC) is None  # not turned into 0 by a forward jump
    clock.advance(2)
    again = store.queue.lease(KIND_SYNC)  # nor into an hour by a backward one
    assert again is not None and again.id == row.id


def test_a_delay_persisted_before_a_restart_is_rebased_on_the_new_clock(store, clock):
    store.queue.enqueue(KIND_SYNC, {"n": 1})
    row = store.queue.lease(KIND_SYNC)
    store.queue.fail(row.id, "hospital unreachable", retry_in=60.0)
    # the next start reads next_at (wall time) from the store and turns it into a deadline
    # on its own monotonic clock
    from fieldkit.store.queue import Queue

    later = FakeClock(wall=clock.wall() + 20, mono=5.0)
    queue = Queue(store, clock=later)
    store.read(queue.load)
    store.queue = queue
    later.advance(39)
    assert store.queue.lease(KIND_SYNC) is None
    later.advance(2)
    assert store.queue.lease(KIND_SYNC).id == row.id


def test_jumps_are_detected_and_logged_small_drift_is_not(caplog):
    fake = FakeClock()
    watch = ClockWatch(fake)
    fake.advance(10)
    assert watch.check() is None
    fake.jump_wall(5)  # time sync slewing a few seconds is no jump
    assert watch.check() is None
    with caplog.at_level(logging.WARNING, logger="fieldkit.hardware.clock"):
        fake.advance(3)
        fake.jump_wall(-HOUR)
        jump = watch.check()
    assert jump == {"at": fake.wall(), "seconds": -HOUR}
    assert "jumped backwards by 3600 s" in caplog.text
    fake.jump_wall(2 * HOUR)
    assert watch.check()["seconds"] == 2 * HOUR
    assert watch.state()["last_jump"]["seconds"] == 2 * HOUR and len(watch.state()["jumps"]) == 2


def test_device_page_and_status_show_the_jump(kit, role_clients):
    fake = FakeClock()
    kit.clock_watch = ClockWatch(fake)
    admin = role_clients["admin"]
    before = admin.open("GET", "/api/v1/ui/device").json["clock"]
    assert before == {"jumps": [], "last_jump": None}
    fake.jump_wall(HOUR)
    kit.clock_watch.check()
    device = admin.open("GET", "/api/v1/ui/device").json["clock"]
    status = admin.open("GET", "/api/v1/status").json["clock"]
    assert device == status
    assert device["last_jump"] == {"at": fake.wall(), "seconds": HOUR}


def test_serve_watches_the_clock(kit_server):
    status = kit_server.get("/api/v1/status",
                            headers=kit_server.auth("admin")).json()
    assert "clock" in status["services"]
    assert status["clock"] == {"jumps": [], "last_jump": None}


def test_the_sync_planner_sees_what_lease_would_give_across_a_jump(store, clock):
    urgent = store.queue.enqueue(KIND_SYNC, {"n": 1}, priority=10)
    store.queue.enqueue(KIND_SYNC, {"n": 2}, priority=50)
    row = store.queue.lease(KIND_SYNC)
    assert row.id == urgent
    store.queue.fail(row.id, "hospital unreachable", retry_in=30.0)
    clock.jump_wall(HOUR)
    assert store.queue.most_urgent_ready(KIND_SYNC) == 50  # the urgent row still waits its 30 s
    clock.jump_wall(-2 * HOUR)
    clock.advance(31)
    assert store.queue.most_urgent_ready(KIND_SYNC) == 10
    assert store.queue.lease(KIND_SYNC).id == urgent


def test_the_device_page_says_whether_the_clock_jumped(ui_browser, ui_kit):
    import requests

    from fixtures.ui import ADMIN_PASSWORD, ADMIN_USER, new_context, sign_in

    ctx = new_context(ui_browser, ui_kit)
    try:
        page = ctx.new_page()
        sign_in(page, ADMIN_USER, ADMIN_PASSWORD)
        page.goto("/device")
        page.wait_for_function("() => document.getElementById('dv-clock').textContent !== '–'", timeout=60000)
        assert page.locator("#dv-clock").inner_text() == "steady since the kit started"

        # Setting this machine's clock is not for a test to do: the kit's real answer is
        # fetched and a jump added to it, so the page's own rendering is what is checked.
        cookies = {c["name"]: c["value"] for c in ctx.cookies()}

        def with_jump(route):
            body = requests.get(ui_kit.url + "/api/v1/ui/device", cookies=cookies, verify=ui_kit.ca,
                                headers={"Accept": "application/json"}, timeout=60).json()
            assert body["clock"] == {"jumps": [], "last_jump": None}
            jump = {"at": 1_800_000_000.0, "seconds": -HOUR}
            body["clock"] = {"jumps": [jump], "last_jump": jump}
            route.fulfill(json=body)

        page.route("**/api/v1/ui/device", with_jump)
        page.reload()
        page.wait_for_function("() => document.getElementById('dv-clock').textContent.startsWith('jumped')",
                               timeout=60000)
        text = page.locator("#dv-clock").inner_text()
        assert text.startswith("jumped backwards 1.0 h at ") and text.endswith("times recorded around it may be off")
    finally:
        ctx.close()
