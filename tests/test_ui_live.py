"""Live updates and the START rule, below the browser.

- START: the server's rule (ui_api.start_category) on every combination of answers, and
  the tablet's copy (static/js/start.js, run by node) agreeing with it on all of them.
- The SSE stream of a real `fieldkit serve`: events arrive as they happen, the number of
  streams is capped (429 + Retry-After beyond it), and a stream ends promptly when the
  server stops instead of holding the shutdown.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from fieldkit.web.live import format_event
from fieldkit.web.ui_api import START_QUESTIONS, start_category
from fixtures.ui import CLINICIAN_PASSWORD, CLINICIAN_USER, start_ui_kit
from kitproc import KitProcess, set_config, wait_until

START_JS = Path(__file__).resolve().parent.parent / "fieldkit" / "web" / "static" / "js" / "start.js"

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("answers, expected", [
    ({"walking": True}, "green"),
    ({"walking": False, "breathing": False, "breathing_after_airway": False}, "black"),
    ({"walking": False, "breathing": False, "breathing_after_airway": True}, "red"),
    ({"walking": False, "breathing": True, "rr_over_30": True}, "red"),
    ({"walking": False, "breathing": True, "rr_over_30": False, "perfusion_poor": True}, "red"),
    ({"walking": False, "breathing": True, "rr_over_30": False, "perfusion_poor": False, "obeys": False}, "red"),
    ({"walking": False, "breathing": True, "rr_over_30": False, "perfusion_poor": False, "obeys": True}, "yellow"),
    ({"walking": False, "breathing": True}, "none"),  # the path needs more answers
    ({}, "none"),
])
def test_start_rule(answers, expected):
    assert start_category(answers) == expected


def test_tablet_start_rule_matches_the_kit_on_every_combination(need):
    node = need("node")
    combos = [dict(zip(START_QUESTIONS, values)) for values in itertools.product((True, False, None),
                                                                                    repeat=len(START_QUESTIONS))]
    combos = [{k: v for k, v in c.items() if v is not None} for c in combos]
    script = (f"import {{ startCategory }} from {json.dumps(START_JS.as_uri())};\n"
              f"const combos = {json.dumps(combos)};\n"
              "console.log(JSON.stringify(combos.map((c) => startCategory(c).cat)));\n")
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    py = [start_category(c) for c in combos]
    assert len(js) == len(py) == 3 ** len(START_QUESTIONS)
    assert js == py


def test_sse_lines_cannot_be_forged_by_a_topic_or_data():
    text = format_event("patient.updated\n\nevent: x", {"patient_id": "A\n\ndata: evil"}, 7)
    lines = text.split("\n")
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    assert lines[0] == "id: 7" and lines[1].startswith("event: patient.updatedevent: x")
    assert json.loads(lines[2][len("data: "):]) == {"patient_id": "A\n\ndata: evil"}


def _signed_in(kit: KitProcess) -> requests.Session:
    s = requests.Session()
    s.verify = kit.ca
    s.trust_env = False
    page = s.get(kit.url + "/login", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = s.post(kit.url + "/login", data={"username": CLINICIAN_USER, "password": CLINICIAN_PASSWORD,
                                         "csrf_token": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.text
    s.headers["X-CSRF-Token"] = s.get(kit.url + "/api/v1/session", timeout=30).json()["csrf_token"]
    return s


class Stream:
    """A reader thread on one SSE stream, collecting (event, data) pairs."""

    def __init__(self, session: requests.Session, url: str):
        self.resp = session.get(url + "/api/v1/live", stream=True, timeout=(10, 60))
        self.events: list[tuple[str, dict]] = []
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.resp.status_code == 200:
            self.thread.start()

    def _read(self):
        event = None
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    self.events.append((event, json.loads(line[6:])))
                    event = None
        except Exception:
            pass
        finally:
            self.ended.set()

    def wait_for(self, topic: str, timeout: float = 15.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, data in list(self.events):
                if t == topic and all(data.get(k) == v for k, v in match.items()):
                    return data
            time.sleep(0.05)
        raise AssertionError(f"no {topic} {match} within {timeout}s; got {self.events}")


def test_stream_delivers_events_caps_streams_and_ends_on_stop(tmp_path):
    kit = start_ui_kit(tmp_path, before_serve=lambda data_dir: set_config(
        data_dir, ui__live_max_streams=2, ui__live_heartbeat_seconds=1))
    try:
        s = _signed_in(kit)
        a, b = Stream(s, kit.url), Stream(s, kit.url)
        assert a.resp.status_code == b.resp.status_code == 200
        assert a.resp.headers["Content-Type"].startswith("text/event-stream")
        a.wait_for("hello")
        # a third tablet is told to come back later (and polls meanwhile)
        c = s.get(kit.url + "/api/v1/live", stream=True, timeout=10)
        assert c.status_code == 429 and int(c.headers["Retry-After"]) > 0
        c.close()
        # a change made by another tablet reaches both open streams
        r = s.post(kit.url + "/api/v1/ui/patients", json={"tag": "L-1", "triage": "red"}, timeout=30)
        assert r.status_code == 201, r.text
        a.wait_for("patient.updated", patient_id="L-1")
        b.wait_for("patient.updated", patient_id="L-1")
        r = s.post(kit.url + "/api/v1/ui/patients/L-1/triage", json={"triage": "green"}, timeout=30)
        assert r.status_code == 200
        # the second change reaches the stream too (delivered a moment after the answer)
        assert wait_until(lambda: len([e for e in a.events if e == ("patient.updated", {"patient_id": "L-1"})]) >= 2,
                          15), a.events
        # a closed stream frees its slot (noticed at the next heartbeat)
        b.resp.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            d = s.get(kit.url + "/api/v1/live", stream=True, timeout=10)
            ok = d.status_code == 200
            d.close()
            if ok:
                break
            time.sleep(0.5)
        assert ok, "the slot of a closed stream was never given back"
        # stopping the kit ends the open stream promptly instead of waiting on it
        t0 = time.monotonic()
        kit.stop(timeout=20)
        stopped = time.monotonic() - t0
        assert a.ended.wait(5), "the stream was still open after the server stopped"
        assert stopped < 8, f"serve took {stopped:.1f}s to stop with a live stream open"
    finally:
        kit.kill()


def test_stream_needs_sign_in(tmp_path):
    kit = start_ui_kit(tmp_path)
    try:
        r = requests.get(kit.url + "/api/v1/live", verify=kit.ca, timeout=10, headers={"Accept": "text/event-stream"})
        assert r.status_code == 401
    finally:
        kit.stop()
