"""Who is asking: sessions, bearer tokens and CSRF (the guard in `guard.py` uses them).

- A bearer token (`Authorization: Bearer fkt_…`, or HTTP Basic with user name "token" and
  the token as password, for DICOMweb clients that only speak Basic). No CSRF check: a
  token is never sent by a browser on its own.
- Else a session cookie `__Host-fk_session` (Secure, HttpOnly, SameSite=Strict), issued
  at sign-in (a fresh id every time: no fixation), expired after
  `http.session_idle_minutes` idle and `security.session_max_hours` in all, dropped at
  sign-out and when the kit locks. Sessions live in memory only: a restart signs
  everybody out.

CSRF: every POST/PUT/PATCH/DELETE made with a session must carry the session's CSRF token,
as the form field `csrf_token` or the header `X-CSRF-Token` (for fetch). Templates get it
from `csrf_token()`; scripts from `<meta name="csrf-token">` or GET /api/v1/session.
Public forms (sign-in, unlock) carry a token bound to a pre-session cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import weakref
from dataclasses import dataclass, field

from flask import current_app, g, request

from ..security import tokens as _tokens
from ..store import accounts

SESSION_COOKIE = "__Host-fk_session"
PRE_COOKIE = "__Host-fk_pre"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_SESSIONS = 1000


@dataclass
class Session:
    user: str
    role: str
    csrf: str
    created: float  # monotonic
    last: float  # monotonic
    generation: int


@dataclass
class KitState:
    """In-memory web state of one running kit: sessions, the CSRF secret, denial counts.
    Its lock is the kit's lock state's (fieldkit.kit.lock): locking the kit signs everybody out."""

    lock: threading.RLock
    sessions: dict = field(default_factory=dict)  # sha256(session id) -> Session
    recent_views: dict = field(default_factory=dict)  # (actor, path) -> monotonic time of the last "view" event
    pre_secret: bytes = field(default_factory=lambda: os.urandom(32))
    denials: list = field(default_factory=lambda: [0.0, 0, 0])  # window start, count, suppressed
    signin_flushed: float = 0.0  # monotonic time sign-in failure summaries were last written


_states: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def kit_state(kit) -> KitState:
    with _states_lock:
        st = _states.get(kit)
        if st is None:
            st = KitState(lock=kit.lock_state.lock)
            kit.lock_state.on_lock.append(st.sessions.clear)
            _states[kit] = st
        return st


def current_kit():
    return current_app.extensions["fieldkit"]


def mono() -> float:
    return accounts.CLOCK.mono()


def current_principal() -> accounts.Principal | None:
    """The person or token behind this request (None when anonymous)."""
    return getattr(g, "principal", None)


# ----------------------------------------------------------------------------- bearer, session

def bearer() -> str | None:
    """The token presented (None: no Authorization header; "": one we do not accept)."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            user, _, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        return secret if user == "token" else ""
    return ""  # an Authorization header we do not accept is a failed authentication


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


def session_lookup(kit, st: KitState) -> tuple[str, Session] | None:
    """The live session of the request's cookie (key, session), or None; drops an expired one."""
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid or len(sid) > 128:
        return None
    key = _digest(sid)
    cfg = kit.config
    idle = float(cfg["http.session_idle_minutes"]) * 60
    max_age = float(cfg.get("security.session_max_hours", 12)) * 3600
    with st.lock:
        # read under the lock: a parallel request of the same session may have moved `last`
        # on after our read, and `now < last` would then look like a clock gone backwards
        now = mono()
        sess = st.sessions.get(key)
        if sess is None:
            return None
        if sess.generation != kit.lock_state.generation or now - sess.last > idle or now - sess.created > max_age \
                or now < sess.last:
            del st.sessions[key]
            return None
        return key, sess


def new_session(kit, principal) -> str:
    """A fresh session id for a person who just signed in (the old one, if any, is dropped)."""
    st = kit_state(kit)
    sid = _tokens.new_secret()
    now = mono()
    with st.lock:
        old = getattr(g, "session_key", None) or (_digest(request.cookies[SESSION_COOKIE])
                                                   if request.cookies.get(SESSION_COOKIE) else None)
        if old:
            st.sessions.pop(old, None)  # rotate: the pre-sign-in id never becomes a session
        if len(st.sessions) >= MAX_SESSIONS:
            oldest = min(st.sessions, key=lambda k: st.sessions[k].last)
            del st.sessions[oldest]
        st.sessions[_digest(sid)] = Session(principal.name, principal.role, _tokens.new_secret(), now, now,
                                            kit.lock_state.generation)
        kit.lock_state.last_human = now
    return sid


def end_session(kit) -> None:
    """Forgets the request's session (sign-out)."""
    st = kit_state(kit)
    key = getattr(g, "session_key", None)
    if key:
        with st.lock:
            st.sessions.pop(key, None)


# ----------------------------------------------------------------------------- CSRF

def csrf_token() -> str:
    """The token a form or fetch must send back (session token, or the pre-session one)."""
    sess = getattr(g, "session", None)
    if sess is not None:
        return sess.csrf
    return _pre_token()


def _pre_token() -> str:
    pre = getattr(g, "pre_cookie", None) or request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) > 128:
        pre = _tokens.new_secret()
    g.pre_cookie = pre
    st = kit_state(current_kit())
    return hmac.new(st.pre_secret, pre.encode(), hashlib.sha256).hexdigest()


def _sent_csrf() -> str:
    value = request.headers.get(CSRF_HEADER)
    if value is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = request.form.get(CSRF_FIELD)
    return value or ""


def csrf_ok() -> bool:
    sent = _sent_csrf()
    if not sent:
        return False
    sess = getattr(g, "session", None)
    if sess is not None:
        return _tokens.same(sent, sess.csrf)
    pre = request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) > 128:
        return False
    st = kit_state(current_kit())
    return _tokens.same(sent, hmac.new(st.pre_secret, pre.encode(), hashlib.sha256).hexdigest())
