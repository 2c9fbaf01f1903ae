"""The loop the timed background services share (fieldkit.service.Periodic): it keeps going
after a bad round, waits what tick() asks, ends when tick() says so, and stop() ends it; and
a kit stops all its services at once."""

from __future__ import annotations

import threading

from fieldkit.service import Periodic, Service


class Counting(Periodic):
    def __init__(self, answers, interval=0.01, on=True):
        self.answers, self.on = list(answers), on
        self.ticks = 0
        self.done = threading.Event()
        super().__init__(interval, "counting")

    def enabled(self) -> bool:
        return self.on

    def tick(self):
        self.ticks += 1
        answer = self.answers.pop(0) if self.answers else False
        if not self.answers:
            self.done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog):
    service = Counting([RuntimeError("sensor gone"), None, 0.01, False])
    assert service.done.wait(15)
    service._thread.join(15)
    assert service.ticks == 4 and not service._thread.is_alive()  # False ended it
    assert "background service counting failed this round" in caplog.text
    service.stop()
    assert isinstance(service, Service)


def test_stop_ends_a_long_wait_at_once_and_a_disabled_service_never_ticks():
    slow = Counting([None], interval=3600)
    slow.stop()
    assert not slow._thread.is_alive() and slow.ticks == 0
    off = Counting([None], on=False)
    off._thread.join(15)
    assert not off._thread.is_alive() and off.ticks == 0
    off.stop()


def test_a_kit_stops_its_services_at_once_and_a_failing_stop_keeps_none_running(kit, caplog):
    both = threading.Barrier(2, timeout=10)  # one stop after the other would wait out the timeout
    stopped = []

    class WaitsForTheOther:
        def __init__(self, name):
            self.name = name

        def stop(self):
            both.wait()  # returns only once the other service's stop has begun too
            stopped.append(self.name)

    class Stuck:
        def stop(self):
            raise RuntimeError("stuck")

    kit.services = {"a": WaitsForTheOther("a"), "stuck": Stuck(), "b": WaitsForTheOther("b")}
    kit.stop_services()
    assert sorted(stopped) == ["a", "b"] and kit.services == {}
    assert "service stuck did not stop cleanly" in caplog.text
