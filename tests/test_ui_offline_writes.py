"""The offline drill, in a real Chromium against a real `fieldkit serve`: with the browser
context offline, a triage team registers 5 patients and re-triages 2; the tablet shows
"7 to send" and each page it visits is itself, marked offline (or "not available
offline"); back online, all 7 changes reach the kit exactly once, in order, with the times
they were made. Two tablets that re-triaged one patient offline end with the later category,
both changes in the history, flagged. A queue altered on the tablet is refused and set
aside, never sent. A signed-out tablet keeps no patient and no queue.
"""

from __future__ import annotations

import time

import pytest

from kitproc import wait_until
from fixtures.ui import chromium, new_context, reload_under_worker, shot, sign_in, start_ui_kit

pytestmark = pytest.mark.timeout(300)
WAIT = 20000


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    k = start_ui_kit(tmp_path_factory.mktemp("ui-offline"))
    yield k
    k.stop()


@pytest.fixture(scope="module")
def browser(kit):
    with chromium(kit) as b:
        yield b


def kit_patient(kit, pid):
    r = kit.get(f"/api/v1/ui/patients/{pid}", headers=kit.auth("clinician"))
    return r.json() if r.status_code == 200 else None


def kit_board(kit):
    return kit.get("/api/v1/ui/board", headers=kit.auth("clinician")).json()


def ready_tablet(browser, kit):
    """A signed-in tablet whose service worker keeps the pages and which holds its queue key."""
    ctx = new_context(browser, kit)
    page = ctx.new_page()
    sign_in(page)
    reload_under_worker(page, WAIT)  # the worker keeps the board and the page shells
    page.wait_for_function("""async () => { const c = await caches.open('fieldkit-shell-v1');
        return !!(await c.match('/patients/new')) && !!(await c.match('/patients/__offline__'))
            && !!(await (await caches.open('fieldkit-data-v1')).match('/api/v1/ui/board')); }""", timeout=WAIT)
    page.wait_for_selector("body[data-offline=ready]", timeout=WAIT)
    return ctx, page


def to_send(page, n):
    if n == 0:  # the badge is hidden before the queue is read too: wait for the queue itself to empty
        page.wait_for_function("() => { const b = document.getElementById('offline-count'); return b && b.hidden; }",
                               timeout=WAIT)
        page.wait_for_function("""() => new Promise((resolve) => { const r = indexedDB.open('fieldkit-offline');
            r.onsuccess = () => { const db = r.result;
              if (!db.objectStoreNames.contains('queue')) { db.close(); resolve(true); return; }
              const q = db.transaction(['queue']).objectStore('queue').count();
              q.onsuccess = () => { db.close(); resolve(q.result === 0); }; };
            r.onerror = () => resolve(false); })""", timeout=WAIT)
    else:
        page.wait_for_function(f"() => (document.getElementById('offline-count') || {{}}).textContent === '{n} to send'",
                               timeout=WAIT)


def register(page, tag, triage):
    page.goto("/patients/new")
    page.wait_for_selector("#new-patient")
    page.fill("#tag", tag)
    page.check(f"input[name=triage][value={triage}]")
    page.click("#create")
    page.wait_for_url(lambda url: "/patients/new" not in url, timeout=WAIT)


def retriage(page, pid, from_cat, to_cat):
    page.goto(f"/patients/{pid}")
    page.wait_for_selector(f".tri-btn[data-triage={from_cat}][aria-pressed=true]", timeout=WAIT)
    page.click(f".tri-btn[data-triage={to_cat}]")
    page.wait_for_selector(f".tri-btn[data-triage={to_cat}][aria-pressed=true]", timeout=WAIT)


def test_offline_drill_five_registrations_two_retriages_arrive_once_in_order(browser, kit):
    ctx, page = ready_tablet(browser, kit)
    ctx.set_offline(True)
    tags = [f"DRILL-{i}" for i in range(1, 6)]
    made = []
    for i, tag in enumerate(tags):
        before = time.time()
        register(page, tag, "green" if i % 2 else "yellow")
        made.append((before, time.time()))
        to_send(page, i + 1)
    # the board (as kept) shows the patients waiting to be sent
    page.locator("li.card[data-patient-id='DRILL-5']").wait_for(timeout=WAIT)
    assert "Stale" in page.inner_text("#stale-banner")
    for pid, was in (("DRILL-2", "green"), ("DRILL-3", "yellow")):
        before = time.time()
        retriage(page, pid, was, "red")
        made.append((before, time.time()))
    to_send(page, 7)
    assert "Offline — as of" in page.inner_text("#offline-banner")
    shot(page, "offline-patient-page")
    # a page this tablet does not keep says so (never another page)
    page.goto("/sync")
    assert page.inner_text("h1") == "Not available offline"
    assert kit_board(kit)["total"] == 0  # nothing reached the kit yet

    ctx.set_offline(False)
    page.goto("/")
    to_send(page, 0)
    wait_until(lambda: len(kit_board(kit)["patients"]) >= len(tags), 20)  # bounded: the kit answers the replay
    board = kit_board(kit)
    assert sorted(p["id"] for p in board["patients"]) == tags
    entries = []
    for tag in tags:
        p = kit_patient(kit, tag)
        entries += [(h["received_at"], h["at"], tag, h["triage"]) for h in p["triage_history"]]
        assert p["review"] == []
    entries.sort()
    assert len(entries) == 7 and len({e[:2] for e in entries}) == 7  # each change exactly once
    # in the order they were made (the kit received them in that order), with the times they were made
    assert [(e[2], e[3]) for e in entries] == [(t, "green" if i % 2 else "yellow") for i, t in enumerate(tags)] + [
        ("DRILL-2", "red"), ("DRILL-3", "red")]
    for (received, at, *_), (before, after) in zip(entries, made):
        assert before - 1 <= at <= after + 1 < received + 1
    assert kit_patient(kit, "DRILL-2")["triage"] == "red"
    page.reload()  # a second visit sends nothing again
    page.wait_for_selector("body[data-offline=ready]", timeout=WAIT)
    assert sum(len(kit_patient(kit, t)["triage_history"]) for t in tags) == 7
    ctx.close()


def test_two_tablets_retriaging_one_patient_offline(browser, kit):
    r = kit.post("/api/v1/ui/patients", json={"tag": "BOTH-1", "triage": "green"}, headers=kit.auth("clinician"))
    assert r.status_code == 201
    (ctx_a, a), (ctx_b, b) = ready_tablet(browser, kit), ready_tablet(browser, kit)
    ctx_a.set_offline(True)
    ctx_b.set_offline(True)
    retriage(a, "BOTH-1", "green", "yellow")
    retriage(b, "BOTH-1", "green", "red")  # the later change
    to_send(a, 1)
    to_send(b, 1)
    ctx_b.set_offline(False)  # the later one arrives first (each page sends when it is back online)
    to_send(b, 0)
    ctx_a.set_offline(False)
    to_send(a, 0)
    a.wait_for_function("() => ((document.getElementById('offline-banner') || {}).textContent || '').includes('to review')",
                        timeout=WAIT)
    p = kit_patient(kit, "BOTH-1")
    assert p["triage"] == "red"
    assert [h["triage"] for h in p["triage_history"]] == ["green", "yellow", "red"]
    assert "re-triaged elsewhere" in p["review"][0]["reason"]
    ctx_a.close()
    ctx_b.close()


ALTER_QUEUE = """() => new Promise((resolve, reject) => {
  const req = indexedDB.open('fieldkit-offline');
  req.onsuccess = () => {
    const t = req.result.transaction(['queue'], 'readwrite');
    const q = t.objectStore('queue');
    q.getAll().onsuccess = (ev) => {
      const rec = ev.target.result[0];
      rec.ct[5] ^= 1;  // one bit of the ciphertext
      q.put(rec);
    };
    t.oncomplete = () => { req.result.close(); resolve(true); };
    t.onerror = () => reject(t.error);
  };
  req.onerror = () => reject(req.error);
})"""


def test_an_altered_queue_is_refused_and_set_aside(browser, kit):
    ctx, page = ready_tablet(browser, kit)
    ctx.set_offline(True)
    register(page, "ALTERED-1", "red")
    to_send(page, 1)
    page.evaluate(ALTER_QUEUE)
    ctx.set_offline(False)  # the page (the board, after the registration) tries to send when back online
    page.wait_for_function("() => ((document.getElementById('offline-banner') || {}).textContent || '').includes('could not be read')",
                           timeout=WAIT)
    to_send(page, 0)
    assert kit_patient(kit, "ALTERED-1") is None  # never sent
    aside = page.evaluate("""() => new Promise((resolve) => { const r = indexedDB.open('fieldkit-offline');
        r.onsuccess = () => { const q = r.result.transaction(['aside']).objectStore('aside').count();
          q.onsuccess = () => { r.result.close(); resolve(q.result); }; }; })""")
    assert aside == 1
    ctx.close()


def test_a_signed_out_tablet_shows_no_cached_patient_and_keeps_no_queue(browser, kit):
    r = kit.post("/api/v1/ui/patients", json={"tag": "GONE-1", "triage": "yellow"}, headers=kit.auth("clinician"))
    assert r.status_code == 201
    ctx, page = ready_tablet(browser, kit)
    page.locator("li.card[data-patient-id='GONE-1']").wait_for(timeout=WAIT)
    page.click("#logout-form button[type=submit]")
    page.wait_for_url(lambda url: "/login" in url, timeout=WAIT)
    assert page.evaluate("async () => (await indexedDB.databases()).map(d => d.name)") == []
    ctx.set_offline(True)
    for path in ("/", "/patients/GONE-1"):
        page.goto(path)
        assert page.inner_text("h1") == "Not available offline"
        assert "GONE-1" not in page.content()
    ctx.close()


def lock_and_unlock(kit):
    """The kit locked by an admin and unlocked again: every session ends."""
    import re

    import requests

    from kitproc import PASSPHRASE
    assert kit.post("/admin/lock", headers=kit.auth("admin")).status_code == 200
    s = requests.Session()
    page = s.get(kit.url + "/unlock", verify=kit.ca, timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = s.post(kit.url + "/unlock", data={"passphrase": PASSPHRASE, "csrf_token": csrf}, verify=kit.ca,
               allow_redirects=False, timeout=60)
    assert r.status_code in (200, 303), r.text
    kit.auth("clinician", again=True)


def test_a_tablet_whose_session_ended_shows_and_sends_nothing_until_the_person_signs_in(browser, kit):
    ctx, page = ready_tablet(browser, kit)
    ctx.set_offline(True)
    register(page, "LOCKED-1", "red")
    to_send(page, 1)
    lock_and_unlock(kit)
    ctx.set_offline(False)
    page.goto("/")  # the kit answers 401: the tablet forgets the key and goes to sign-in
    page.wait_for_url(lambda url: "/login" in url, timeout=WAIT)
    # the sign-in page forgets the key however the tablet came to it (here the kit's own
    # redirect of the navigation, which no page of the session sees)
    page.wait_for_function("""() => new Promise((resolve) => { const r = indexedDB.open('fieldkit-offline');
        r.onsuccess = () => { const q = r.result.transaction(['keys']).objectStore('keys').count();
          q.onsuccess = () => { r.result.close(); resolve(q.result === 0); }; }; })""", timeout=WAIT)
    ctx.set_offline(True)
    page.goto("/patients/LOCKED-1")  # the page shell is kept, the patient cannot be read
    page.wait_for_function("() => document.getElementById('error-banner').textContent.includes('Not available offline')",
                           timeout=WAIT)
    assert "LOCKED-1" not in page.inner_text("main")
    assert kit_patient(kit, "LOCKED-1") is None
    ctx.set_offline(False)
    sign_in(page)  # the same person again: what was kept is sent
    to_send(page, 0)
    wait_until(lambda: kit_patient(kit, "LOCKED-1") is not None, 20)
    assert kit_patient(kit, "LOCKED-1")["triage"] == "red"
    ctx.close()


def test_a_note_written_offline_arrives_with_its_time_and_identity_waits_for_the_kit(browser, kit):
    r = kit.post("/api/v1/ui/patients", json={"tag": "NOTE-1", "triage": "yellow"}, headers=kit.auth("clinician"))
    assert r.status_code == 201
    ctx, page = ready_tablet(browser, kit)
    page.locator("li.card[data-patient-id='NOTE-1']").wait_for(timeout=WAIT)
    ctx.set_offline(True)
    page.goto("/patients/NOTE-1")
    page.wait_for_selector(".tri-btn[data-triage=yellow][aria-pressed=true]", timeout=WAIT)
    page.fill("#d-age", "40")  # identity needs the kit: refused, nothing kept
    page.click("#details button[type=submit]")
    page.wait_for_function("() => document.getElementById('details-error').textContent.includes('need the kit')",
                           timeout=WAIT)
    page.fill("#d-age", "")
    before = time.time()
    page.fill("#d-note", "tourniquet right arm 14:32")
    page.click("#details button[type=submit]")
    to_send(page, 1)
    page.wait_for_function("() => document.getElementById('notes').textContent.includes('(to send)')", timeout=WAIT)
    after = time.time()
    ctx.set_offline(False)
    page.goto("/")
    to_send(page, 0)
    wait_until(lambda: (kit_patient(kit, "NOTE-1") or {}).get("notes"), 20)
    p = kit_patient(kit, "NOTE-1")
    said = page.evaluate("() => (document.getElementById('offline-banner') || {}).textContent || ''")
    assert [n["text"] for n in p["notes"]] == ["tourniquet right arm 14:32"] and p["age"] is None, said
    assert before - 1 <= p["notes"][0]["at"] <= after + 1
    ctx.close()
