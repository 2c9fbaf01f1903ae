"""Who is asking (fieldkit.web.sessions), one function at a time inside a request of a bare
Flask app over a real store: bearer and Basic tokens, session expiry (idle, in all, a clock
gone backwards, the kit locked since), sign-in rotation and the session cap, sign-out, and
the CSRF tokens of sessions and of public forms. Fast enough for `make mutate` to run it
against every mutant of the module; the same rules through whole requests are in
tests/test_security_web.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io

import pytest
from flask import Flask, g

from fieldkit.security import roles as R
from fieldkit.store import accounts
from fieldkit.web import sessions
from fieldkit.web.sessions import PRE_COOKIE, SESSION_COOKIE

IDLE = 15 * 60  # http.session_idle_minutes
MAX_AGE = 12 * 3600  # security.session_max_hours


@pytest.fixture(scope="module")
def app(light_kit):
    app = Flask(__name__)
    app.extensions["fieldkit"] = light_kit
    accounts.create_user(light_kit.store, "s-clinician", "604817", R.CLINICIAN)
    return app


@pytest.fixture
def st(app, light_kit):
    state = sessions.kit_state(light_kit)
    state.sessions.clear()
    return state


def _principal(kit):
    return accounts.user_principal(kit.store, "s-clinician")


def _sign_in(app, kit, cookie: str | None = None) -> str:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    with app.test_request_context("/login", method="POST", headers=headers):
        return sessions.new_session(kit, _principal(kit))


def _lookup(app, kit, sid: str):
    with app.test_request_context("/", headers={"Cookie": f"{SESSION_COOKIE}={sid}"}):
        return sessions.session_lookup(kit, sessions.kit_state(kit))


def _bearer(header: str | None):
    with Flask(__name__).test_request_context("/", headers={"Authorization": header} if header is not None else {}):
        return sessions.bearer()


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


# ----------------------------------------------------------------------------- tokens

def test_a_bearer_or_basic_token_is_read_and_anything_else_is_a_failed_one():
    assert _bearer(None) is None  # no credentials at all: anonymous
    assert _bearer("") is None
    assert _bearer("Bearer fkt_abc ") == "fkt_abc"
    assert _bearer("bEARER fkt_abc") == "fkt_abc"
    assert _bearer(_basic("token:fkt_abc")) == "fkt_abc"
    assert _bearer("BASIC " + _basic("token:fkt_a:b")[6:]) == "fkt_a:b"  # only the first ":" splits
    assert _bearer(_basic("amina:fkt_abc")) == ""  # Basic is for tokens only
    assert _bearer("Basic not*base64") == ""
    good = _basic("token:fkt_abc")[6:]
    assert _bearer(f"Basic {good[:4]}*{good[4:]}") == ""  # not base64 (a lenient decoder would skip the "*")
    assert _bearer("Basic " + base64.b64encode(b"token:\xff\xfe").decode()) == ""  # not UTF-8
    assert _bearer("Digest fkt_abc") == ""
    assert _bearer("fkt_abc") == ""


# ----------------------------------------------------------------------------- sessions

def test_a_session_lives_while_used_and_ends_after_the_idle_time(fake_clock, app, light_kit, st):
    sid = _sign_in(app, light_kit)
    key, sess = _lookup(app, light_kit, sid)
    assert key == hashlib.sha256(sid.encode()).hexdigest() and (sess.user, sess.role) == ("s-clinician", R.CLINICIAN)
    fake_clock.advance(IDLE)
    assert _lookup(app, light_kit, sid) is not None  # exactly the idle time: still alive
    sess.last = fake_clock.mono()  # a request (the guard moves `last` on)
    fake_clock.advance(IDLE + 0.5)
    assert _lookup(app, light_kit, sid) is None
    assert key not in st.sessions  # dropped, not only refused
    fake_clock.advance(-IDLE)
    assert _lookup(app, light_kit, sid) is None  # and it does not come back


def test_a_session_ends_after_its_longest_life_even_when_used(fake_clock, app, light_kit, st):
    sid = _sign_in(app, light_kit)
    for _ in range(MAX_AGE // IDLE):
        fake_clock.advance(IDLE)
        _, sess = _lookup(app, light_kit, sid)
        sess.last = fake_clock.mono()
    assert _lookup(app, light_kit, sid) is not None  # exactly the longest life
    fake_clock.advance(1)
    assert _lookup(app, light_kit, sid) is None and not st.sessions


def test_the_longest_life_is_the_configured_one(fake_clock, app, light_kit, st):
    from fieldkit.config import Config

    configured = light_kit.config
    light_kit.config = Config({"security.session_max_hours": 0.5, "http.session_idle_minutes": 60})
    try:
        sid = _sign_in(app, light_kit)
        fake_clock.advance(1800)
        assert _lookup(app, light_kit, sid) is not None  # 30 minutes, idle for all of them: the idle limit is 60
        fake_clock.advance(1)
        assert _lookup(app, light_kit, sid) is None
    finally:
        light_kit.config = configured


def test_a_session_ends_when_the_clock_runs_backwards_or_the_kit_was_locked(fake_clock, app, light_kit, st):
    sid = _sign_in(app, light_kit)
    fake_clock.advance(-1)
    assert _lookup(app, light_kit, sid) is None and not st.sessions
    fake_clock.advance(1)
    sid = _sign_in(app, light_kit)
    light_kit.lock_state.generation += 1  # what a lock does
    try:
        assert _lookup(app, light_kit, sid) is None and not st.sessions
    finally:
        light_kit.lock_state.generation -= 1


def test_an_unknown_missing_or_oversized_cookie_is_no_session(app, light_kit, st):
    sid = _sign_in(app, light_kit)
    assert _lookup(app, light_kit, sid + "x") is None
    assert _lookup(app, light_kit, "") is None
    with app.test_request_context("/"):
        assert sessions.session_lookup(light_kit, st) is None
    long_sid = "a" * 129
    st.sessions[hashlib.sha256(long_sid.encode()).hexdigest()] = st.sessions[hashlib.sha256(sid.encode()).hexdigest()]
    assert _lookup(app, light_kit, long_sid) is None  # never even looked up
    assert _lookup(app, light_kit, "a" * 128) is None and _lookup(app, light_kit, sid) is not None
    longest = "b" * 128  # the longest id still looked up
    st.sessions[hashlib.sha256(longest.encode()).hexdigest()] = st.sessions[hashlib.sha256(sid.encode()).hexdigest()]
    assert _lookup(app, light_kit, longest) is not None


def test_signing_in_gives_a_fresh_id_and_drops_the_one_sent(fake_clock, app, light_kit, st):
    first = _sign_in(app, light_kit)
    fake_clock.advance(5)
    second = _sign_in(app, light_kit, cookie=first)
    assert second != first and len(second) >= 32
    assert _lookup(app, light_kit, first) is None and _lookup(app, light_kit, second) is not None
    assert len(st.sessions) == 1
    _, sess = _lookup(app, light_kit, second)
    assert sess.created == sess.last == fake_clock.mono() == light_kit.lock_state.last_human
    assert sess.generation == light_kit.lock_state.generation and len(sess.csrf) >= 32
    with app.test_request_context("/login", method="POST"):  # the id of the request's own session (the guard's)
        g.session_key = hashlib.sha256(second.encode()).hexdigest()
        third = sessions.new_session(light_kit, _principal(light_kit))
    assert _lookup(app, light_kit, second) is None and set(st.sessions) == {hashlib.sha256(third.encode()).hexdigest()}
    fourth = _sign_in(app, light_kit, cookie="expired-or-forged-session-id")  # nothing to drop: still signs in
    assert _lookup(app, light_kit, fourth) is not None and len(st.sessions) == 2


def test_the_session_cap_drops_the_least_recently_used(fake_clock, app, light_kit, st):
    sids = []
    for _ in range(sessions.MAX_SESSIONS):
        fake_clock.advance(0.001)
        sids.append(_sign_in(app, light_kit))
    _, first = _lookup(app, light_kit, sids[0])
    first.last = fake_clock.mono()  # the oldest session is in use: the second is now the least recent
    newest = _sign_in(app, light_kit)
    assert len(st.sessions) == sessions.MAX_SESSIONS
    assert _lookup(app, light_kit, sids[1]) is None
    assert _lookup(app, light_kit, sids[0]) is not None and _lookup(app, light_kit, newest) is not None


def test_signing_out_forgets_only_that_session(app, light_kit, st):
    mine, other = _sign_in(app, light_kit), _sign_in(app, light_kit)
    with app.test_request_context("/logout", method="POST"):
        g.session_key = hashlib.sha256(mine.encode()).hexdigest()
        sessions.end_session(light_kit)
    assert _lookup(app, light_kit, mine) is None and _lookup(app, light_kit, other) is not None
    with app.test_request_context("/logout", method="POST"):
        g.session_key = hashlib.sha256(mine.encode()).hexdigest()
        sessions.end_session(light_kit)  # already gone (a second tab signed out): nothing to forget
    with app.test_request_context("/logout", method="POST"):
        sessions.end_session(light_kit)  # no session: nothing to forget
    assert len(st.sessions) == 1


# ----------------------------------------------------------------------------- CSRF

def _csrf_ok(app, *, session=None, pre: str | None = None, header: str | None = None, **kw) -> bool:
    headers = {sessions.CSRF_HEADER: header} if header is not None else {}
    if pre is not None:
        headers["Cookie"] = f"{PRE_COOKIE}={pre}"
    with app.test_request_context("/", method="POST", headers=headers, **kw):
        if session is not None:
            g.session = session
        return sessions.csrf_ok()


def _pre_token(app, pre: str) -> str:
    with app.test_request_context("/", headers={"Cookie": f"{PRE_COOKIE}={pre}"}):
        return sessions.csrf_token()


def test_a_session_request_must_carry_its_own_csrf_token(app, light_kit, st):
    _, sess = _lookup(app, light_kit, _sign_in(app, light_kit))
    assert _csrf_ok(app, session=sess, header=sess.csrf)
    assert _csrf_ok(app, session=sess, data={"csrf_token": sess.csrf})  # a form's field
    assert _csrf_ok(app, session=sess, data={"csrf_token": sess.csrf, "f": (io.BytesIO(b"x"), "a.bin")})
    assert not _csrf_ok(app, session=sess, json={"csrf_token": sess.csrf})  # only a form or the header
    assert _csrf_ok(app, session=sess, header=sess.csrf, data={"note": "x"})  # a form sent by a script
    assert not _csrf_ok(app, session=sess, header="0" * 43, data={"csrf_token": sess.csrf})  # the header is read
    assert not _csrf_ok(app, session=sess)
    assert not _csrf_ok(app, session=sess, header="")
    assert not _csrf_ok(app, session=sess, header=sess.csrf[:-1])
    assert not _csrf_ok(app, session=sess, header=_pre_token(app, "p" * 40), pre="p" * 40)  # not the page's
    with app.test_request_context("/"):
        g.session = sess
        assert sessions.csrf_token() == sess.csrf


def test_a_public_form_carries_a_token_bound_to_its_pre_session_cookie(app, light_kit):
    pre = "p" * 40
    token = _pre_token(app, pre)
    assert token == hmac.new(sessions.kit_state(light_kit).pre_secret, pre.encode(), hashlib.sha256).hexdigest()
    assert _csrf_ok(app, pre=pre, header=token)
    assert _csrf_ok(app, pre=pre, data={"csrf_token": token})
    assert not _csrf_ok(app, pre=pre)
    assert not _csrf_ok(app, pre="q" * 40, header=token)  # another visitor's cookie
    assert not _csrf_ok(app, header=token)  # no cookie
    long_pre = "p" * 129  # too long to be one the kit gave: refused even with its right token
    assert not _csrf_ok(app, pre=long_pre, header=_pre_token(app, long_pre))
    secret = sessions.kit_state(light_kit).pre_secret
    assert not _csrf_ok(app, pre=long_pre, header=hmac.new(secret, long_pre.encode(), hashlib.sha256).hexdigest())
    assert _csrf_ok(app, pre="p" * 128, header=_pre_token(app, "p" * 128))


def test_a_page_without_a_usable_cookie_gets_a_new_one(app):
    with app.test_request_context("/"):
        token = sessions.csrf_token()
        fresh = g.pre_cookie
        assert len(fresh) >= 32 and sessions.csrf_token() == token  # one cookie per request
    assert _pre_token(app, fresh) == token
    with app.test_request_context("/", headers={"Cookie": f"{PRE_COOKIE}={'p' * 129}"}):
        sessions.csrf_token()
        assert g.pre_cookie != "p" * 129
    with app.test_request_context("/", headers={"Cookie": f"{PRE_COOKIE}={'p' * 128}"}):
        sessions.csrf_token()
        assert g.pre_cookie == "p" * 128
