"""Accounts, bearer tokens and the audit trail, kept in the store.

Everything here lives in the store's encrypted journal (TinyDB tables), so it is
encrypted and authenticated at rest like patient data:

- `users`: one document per person: name, case-folded key, role, Argon2id hash,
  disabled flag, lockout state, timestamps. Never a plaintext secret.
- `tokens`: one document per bearer token: id, SHA-256 digest, role, label, owner,
  expiry, revocation. The plaintext is returned once by `create_token` and never stored.
- `audit`: the hash-chained events (see `fieldkit.security.audit`), and `audit_head`:
  the (seq, hash, at) of the last one, which catches a truncated tail.

The latest audit time doubles as a high-water mark of the clock: expiry checks use
max(wall clock, last audit time), so a device clock that jumps backwards cannot revive an
expired token.

Argon2 verification (~0.1 s) happens outside the store lock, in the Argon2 queue
(`security.passwords.Argon2Gate`); who may try and how often is `security.signin`'s rule,
held in memory per kit (`signin_guard`).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from tinydb import Query

from ..errors import BadInput, Conflict, NotFound
from ..records import T_TOKENS, T_USERS
from ..security import audit as _audit
from ..security import passwords as pw
from ..security import roles as _roles
from ..security import tokens as _tokens
from ..security.signin import SigninGuard, SigninPolicy

T_AUDIT = "audit"
T_AUDIT_HEAD = "audit_head"
T_AUDIT_SYNC = "audit_sync"  # the last event the hospital confirmed

SYSTEM = "system"  # actor for the kit itself and for the command line without a user

CLOCK: pw.Clock = pw.SYSTEM_CLOCK  # replaced in tests to move time without sleeping


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a person (kind "user") or a token (kind "token")."""

    kind: str
    name: str  # user name, or "token:<id>"
    role: str
    id: str = ""  # token id, or the user key
    label: str = ""

    @property
    def actor(self) -> str:
        return self.name


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    principal: Principal | None = None
    reason: str = ""  # for the audit trail; the person only sees a generic message
    retry_after: float = 0.0  # seconds until the lockout ends


# ----------------------------------------------------------------------------- time

def _now(store, clock: pw.Clock | None = None) -> float:
    """Wall time, never earlier than the latest audit event (a clock that went back)."""
    wall = (clock or CLOCK).wall()
    head = store.read(lambda db: db.table(T_AUDIT_HEAD).get(doc_id=1))
    return max(wall, float(head["at"])) if head else wall


# ----------------------------------------------------------------------------- users

def _public_user(doc: dict, store=None) -> dict:
    locked_from = signin_guard(store).locked_addresses(doc["key"]) if store is not None else 0
    return {
        "name": doc["name"], "role": doc["role"], "disabled": bool(doc.get("disabled")),
        "created": doc.get("created", 0.0), "last_login": doc.get("last_login", 0.0),
        "locked": bool(locked_from), "locked_addresses": locked_from,
        "language": doc.get("language", ""),
    }


def create_user(store, name: str, secret: str, role: str, *, actor: str = SYSTEM,
                actor_role: str = "", min_pin: int = 6, min_password: int = 10) -> dict:
    """Create a person's account. Refuses a bad name, a weak secret, a machine role and a
    name already taken (case-insensitively). Returns the account without its hash."""
    name = pw.check_username(name)
    if role not in _roles.HUMAN_ROLES:
        raise BadInput(f"role {role!r} is not a role for a person (choose from {', '.join(_roles.HUMAN_ROLES)}; "
                       "machines get a token: `fieldkit token create --role ROLE`)")
    secret = pw.check_secret(secret, min_pin=min_pin, min_password=min_password)
    key = pw.username_key(name)
    hashed = pw.hash_secret(secret, store.pepper)  # slow: outside the store lock
    now = CLOCK.wall()
    doc = {"name": name, "key": key, "role": role, "hash": hashed, "peppered": True, "disabled": False,
           "created": now, "updated": now, "last_login": 0.0, "lockout": pw.Lockout.success()}

    def tx(db):
        users = db.table(T_USERS)
        if users.get(Query().key == key) is not None:
            raise Conflict(f"a user named {name!r} already exists")
        users.insert(doc)
        _append(db, store.audit_key, now, actor, actor_role, "user.create", name, _audit.OK, {"role": role})

    store.write(tx)
    return _public_user(doc)


def get_user(store, name: str) -> dict | None:
    key = pw.username_key(name) if isinstance(name, str) else ""
    doc = store.read(lambda db: db.table(T_USERS).get(Query().key == key))
    return _public_user(doc, store) if doc else None


def list_users(store) -> list[dict]:
    docs = store.read(lambda db: db.table(T_USERS).all())
    return sorted((_public_user(d, store) for d in docs), key=lambda u: u["name"].casefold())


def count_admins(store) -> int:
    return sum(1 for u in list_users(store) if u["role"] == _roles.ADMIN and not u["disabled"])


def _update_user(store, name: str, changes_fn, action: str, actor: str, actor_role: str,
                 detail: dict | None = None) -> dict:
    key = pw.username_key(name) if isinstance(name, str) else ""
    now = CLOCK.wall()
    out: dict = {}

    def tx(db):
        users = db.table(T_USERS)
        doc = users.get(Query().key == key)
        if doc is None:
            raise NotFound(f"no user named {name!r}")
        changes = changes_fn(dict(doc), db)
        changes["updated"] = now
        users.update(changes, doc_ids=[doc.doc_id])
        out.update(dict(doc, **changes))
        _append(db, store.audit_key, now, actor, actor_role, action, doc["name"], _audit.OK, detail)

    store.write(tx)
    return _public_user(out)


def set_disabled(store, name: str, disabled: bool, *, actor: str = SYSTEM, actor_role: str = "") -> dict:
    """Disable (or re-enable) an account. The last enabled admin cannot be disabled.
    Disabling revokes the tokens the account owns (re-enabling does not revive them)."""
    def changes(doc, db):
        if disabled and doc["role"] == _roles.ADMIN and not doc.get("disabled"):
            admins = [d for d in db.table(T_USERS).all() if d["role"] == _roles.ADMIN and not d.get("disabled")]
            if len(admins) <= 1:
                raise Conflict("refusing to disable the last enabled admin (add another admin first)")
        if disabled:
            now = CLOCK.wall()
            tokens = db.table(T_TOKENS)
            for t in tokens.all():
                owned = t.get("owner_key") == doc["key"] or (not t.get("owner_key") and t.get("owner")
                                                             and pw.username_key(t["owner"]) == doc["key"])
                if owned and not t.get("revoked"):
                    tokens.update({"revoked": now}, doc_ids=[t.doc_id])
                    _append(db, store.audit_key, now, actor, actor_role, "token.revoke", f"token:{t['id']}",
                            _audit.OK, {"reason": "owner disabled", "owner": doc["name"]})
        return {"disabled": bool(disabled)}

    return _update_user(store, name, changes, "user.disable" if disabled else "user.enable", actor, actor_role)


def reset_secret(store, name: str, secret: str, *, actor: str = SYSTEM, actor_role: str = "",
                 min_pin: int = 6, min_password: int = 10) -> dict:
    """Set a new PIN/password; also clears the lockout."""
    secret = pw.check_secret(secret, min_pin=min_pin, min_password=min_password)
    hashed = pw.hash_secret(secret, store.pepper)
    signin_guard(store).clear_account(pw.username_key(name) if isinstance(name, str) else "")
    return _update_user(store, name, lambda doc, db: {"hash": hashed, "peppered": True,
                                                       "lockout": pw.Lockout.success()},
                        "user.reset", actor, actor_role)


def clear_lockout(store, name: str, *, actor: str = SYSTEM, actor_role: str = "") -> dict:
    signin_guard(store).clear_account(pw.username_key(name) if isinstance(name, str) else "")
    return _update_user(store, name, lambda doc, db: {"lockout": pw.Lockout.success()},
                        "user.unlock", actor, actor_role)


def set_language(store, name: str, language: str, *, actor: str = SYSTEM, actor_role: str = "") -> dict:
    """A person's language for the tablet UI ("" to follow the tablet). The caller checks
    that the language is one the UI speaks; this only refuses what is not a language tag."""
    if not isinstance(language, str) or len(language) > 16 or not all(c.isalnum() or c in "-_" for c in language):
        raise BadInput("language must be a language tag such as 'fr' (or empty to follow the tablet)")
    return _update_user(store, name, lambda doc, db: {"language": language}, "user.language", actor, actor_role,
                        {"language": language})


def language_of(store, name: str) -> str:
    """A person's chosen UI language, or "" when they chose none (or there is no such account)."""
    key = pw.username_key(name) if isinstance(name, str) else ""
    doc = store.read(lambda db: db.table(T_USERS).get(Query().key == key))
    return (doc or {}).get("language", "")


_guards: "weakref.WeakKeyDictionary[Any, SigninGuard]" = weakref.WeakKeyDictionary()
_guards_lock = threading.Lock()


def signin_guard(store, policy: SigninPolicy | None = None) -> SigninGuard:
    """The sign-in limits of the kit that owns `store` (made with `policy` at first use)."""
    with _guards_lock:
        guard = _guards.get(store)
        if guard is None:
            guard = _guards[store] = SigninGuard(policy, CLOCK)
        return guard


def flush_signin_audit(store, *, flush_all: bool = False) -> int:
    """Write the summaries of the sign-in failure windows that ended; returns how many."""
    rows = signin_guard(store).due(flush_all)
    for row in rows:
        audit_append(store, actor=row["remote"] or "?", role="", action="login.failures", object="login",
                     outcome=_audit.FAILED, detail=row)
    return len(rows)


def verify_login(store, name: str, secret: str, *, remote: str = "", policy: SigninPolicy | None = None) -> LoginResult:
    """Check a sign-in. Successes are audited one by one, failures in compacted form (the
    first of an address at once, the rest as a summary per window). An address that keeps
    guessing is delayed, then blocked; the account itself is never locked for everyone."""
    guard = signin_guard(store, policy)
    flush_signin_audit(store)
    if not isinstance(name, str) or not isinstance(secret, str) or len(name) > 4 * pw.MAX_NAME_LENGTH:
        return _refused(store, guard, remote, "?", "", "malformed")
    key = pw.username_key(name)
    typed = pw.normalize_login_secret(secret)
    shown_name = name if len(name) <= pw.MAX_NAME_LENGTH else name[:pw.MAX_NAME_LENGTH] + "…"
    admission = guard.admit(remote, key)
    if not admission.ok:
        return _refused(store, guard, remote, shown_name, "", admission.reason, admission.retry_after)
    doc = None
    try:
        doc = store.read(lambda db: db.table(T_USERS).get(Query().key == key))
        if doc is None:
            pw.burn_verify(typed, admission.priority)  # an unknown name costs what a wrong PIN costs
            good = False
        else:
            # hashes made before the pepper verify as they are, and are rehashed with it below
            good = pw.verify_secret(doc["hash"], typed, store.pepper if doc.get("peppered") else None,
                                    priority=admission.priority)
    except pw.Busy:
        guard.done(remote, key)
        return _refused(store, guard, remote, shown_name, doc["role"] if doc else "", "busy", 1.0)
    except BaseException:
        guard.done(remote, key)  # the attempt is over: it no longer counts as under way
        raise
    if not good:
        delay = guard.failed(remote, key)
        return _refused(store, guard, remote, shown_name, doc["role"] if doc else "",
                        "unknown user" if doc is None else "wrong secret", delay)
    if doc.get("disabled"):
        guard.done(remote, key)
        return _refused(store, guard, remote, doc["name"], doc["role"], "account disabled")
    guard.succeeded(remote, key)
    now = CLOCK.wall()
    changes: dict[str, Any] = {"lockout": pw.Lockout.success(), "last_login": now}
    if pw.needs_rehash(doc["hash"]) or not doc.get("peppered"):
        changes["hash"] = pw.hash_secret(typed, store.pepper)
        changes["peppered"] = True

    def ok_tx(db):
        db.table(T_USERS).update(changes, Query().key == key)
        _append(db, store.audit_key, now, doc["name"], doc["role"], "login", doc["name"], _audit.OK,
                {"remote": remote})

    store.write(ok_tx)
    return LoginResult(True, Principal("user", doc["name"], doc["role"], id=key))


def _refused(store, guard: SigninGuard, remote: str, shown_name: str, role: str, reason: str,
             retry_after: float = 0.0) -> LoginResult:
    """A refused sign-in: audited at once when it is the first of its address in the
    window, else counted into that window's summary."""
    if guard.note(remote, shown_name, reason):
        outcome = _audit.FAILED if reason in ("wrong secret", "unknown user", "malformed") else _audit.DENIED
        detail = {"reason": reason, "remote": remote}
        if retry_after:
            detail["retry_after"] = round(retry_after, 1)
        audit_append(store, actor=shown_name, role=role, action="login", object=shown_name if role else "",
                     outcome=outcome, detail=detail)
    return LoginResult(False, reason=reason, retry_after=retry_after)


def user_principal(store, name: str) -> Principal | None:
    """The current principal for a signed-in name, or None if the account is gone or
    disabled (a session of a disabled user stops working at its next request)."""
    key = pw.username_key(name)
    doc = store.read(lambda db: db.table(T_USERS).get(Query().key == key))
    if doc is None or doc.get("disabled"):
        return None
    return Principal("user", doc["name"], doc["role"], id=key)


# ----------------------------------------------------------------------------- tokens

def _public_token(doc: dict, now: float | None = None) -> dict:
    now = CLOCK.wall() if now is None else now
    expires = float(doc.get("expires") or 0.0)
    state = "revoked" if doc.get("revoked") else ("expired" if expires and now >= expires else "active")
    return {"id": doc["id"], "role": doc["role"], "label": doc.get("label", ""), "owner": doc.get("owner", "") or "?",
            "created": doc.get("created", 0.0), "expires": expires, "revoked": float(doc.get("revoked") or 0.0),
            "last_used": float(doc.get("last_used") or 0.0), "state": state}


def create_token(store, role: str, expires: float | None = None, label: str = "", *,
                 owner: str = "", actor: str = SYSTEM, actor_role: str = "") -> str:
    """Create a bearer token scoped to a machine `role`; `expires` is an absolute time
    (seconds since the epoch) or None for no expiry. Returns the plaintext token: shown
    once, never stored."""
    token, _info = create_token_info(store, role, expires, label, owner=owner, actor=actor, actor_role=actor_role)
    return token


def create_token_info(store, role: str, expires: float | None = None, label: str = "", *,
                      owner: str = "", actor: str = SYSTEM, actor_role: str = "") -> tuple[str, dict]:
    """Every token has an owner: the account it belongs to (disabling the account revokes
    it), else the operator who made it (`actor`, e.g. "cli:root"). A token that never
    expires comes back with a "warning" in its info."""
    if role in _roles.HUMAN_ROLES:
        raise BadInput(f"role {role!r} is a role for a person: people sign in with their own account "
                       "(`fieldkit users add`); tokens are for machines "
                       f"(choose from {', '.join(_roles.MACHINE_ROLES)})")
    if not _roles.is_role(role):
        raise BadInput(f"unknown role {role!r} (choose from {', '.join(_roles.MACHINE_ROLES)})")
    label = str(label or "")
    if len(label) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise BadInput("the token label must be at most 128 printable characters")
    now = CLOCK.wall()
    if expires is not None and float(expires) <= now:
        raise BadInput("the token's expiry is in the past")
    owner_key = ""
    if owner:
        owner_doc = store.read(lambda db: db.table(T_USERS).get(Query().key == pw.username_key(str(owner))))
        if owner_doc is None or owner_doc.get("disabled"):
            raise BadInput(f"the owner {str(owner)[:64]!r} is not an enabled account (see `fieldkit users list`)")
        owner, owner_key = owner_doc["name"], owner_doc["key"]
    else:
        owner = str(actor or SYSTEM)
    token = _tokens.new_token()
    doc = {"id": _tokens.new_id(), "digest": _tokens.token_digest(token), "role": role, "label": label,
           "owner": owner, "owner_key": owner_key, "created": now, "expires": float(expires or 0.0),
           "revoked": 0.0, "last_used": 0.0}

    def tx(db):
        db.table(T_TOKENS).insert(doc)
        _append(db, store.audit_key, now, actor, actor_role, "token.create", f"token:{doc['id']}", _audit.OK,
                {"role": role, "label": label, "owner": owner, "expires": doc["expires"]})

    store.write(tx)
    info = _public_token(doc, now)
    if not doc["expires"]:
        info["warning"] = (f"token {doc['id']} never expires: revoke it (`fieldkit token revoke {doc['id']}`) "
                           "when the machine leaves service")
    return token, info


_last_used_flush: dict[str, float] = {}


def verify_token(store, token: str, *, remote: str = "", audit_failure: bool = True) -> Principal | None:
    """The principal for a bearer token, or None when it is unknown, revoked or expired
    (or its owner's account is disabled). Failures are audited."""
    if not isinstance(token, str) or not _tokens.looks_like_token(token):
        if audit_failure:
            audit_append(store, actor="?", role="", action="token.use", outcome=_audit.FAILED,
                         detail={"reason": "malformed token", "remote": remote})
        return None
    digest = _tokens.token_digest(token)
    doc = store.read(lambda db: db.table(T_TOKENS).get(Query().digest == digest))
    reason = ""
    if doc is None:
        reason = "unknown token"
    elif doc.get("revoked"):
        reason = "revoked token"
    else:
        expires = float(doc.get("expires") or 0.0)
        if expires and _now(store) >= expires:
            reason = "expired token"
        elif doc.get("owner_key") or (doc.get("owner") and ":" not in doc["owner"] and doc["owner"] != SYSTEM):
            owner_key = doc.get("owner_key") or pw.username_key(doc["owner"])
            owner = store.read(lambda db: db.table(T_USERS).get(Query().key == owner_key))
            if owner is None or owner.get("disabled"):
                reason = "token owner disabled"
    if reason:
        if audit_failure:
            audit_append(store, actor=f"token:{doc['id']}" if doc else "?", role=doc["role"] if doc else "",
                         action="token.use", outcome=_audit.FAILED, detail={"reason": reason, "remote": remote})
        return None
    now = CLOCK.wall()
    if now - _last_used_flush.get(doc["id"], 0.0) > 600:  # bounded writes: "last used" to ten minutes
        _last_used_flush[doc["id"]] = now
        store.write(lambda db: db.table(T_TOKENS).update({"last_used": now}, Query().id == doc["id"]))
    return Principal("token", f"token:{doc['id']}", doc["role"], id=doc["id"], label=doc.get("label", ""))


def list_tokens(store) -> list[dict]:
    now = _now(store)
    docs = store.read(lambda db: db.table(T_TOKENS).all())
    return sorted((_public_token(d, now) for d in docs), key=lambda t: t["created"])


def revoke_token(store, token_id: str, *, actor: str = SYSTEM, actor_role: str = "") -> dict:
    now = CLOCK.wall()
    out: dict = {}

    def tx(db):
        table = db.table(T_TOKENS)
        doc = table.get(Query().id == str(token_id))
        if doc is None:
            raise NotFound(f"no token with id {token_id!r} (see `fieldkit token list`)")
        if not doc.get("revoked"):
            table.update({"revoked": now}, doc_ids=[doc.doc_id])
            _append(db, store.audit_key, now, actor, actor_role, "token.revoke", f"token:{doc['id']}", _audit.OK, None)
        out.update(table.get(doc_id=doc.doc_id))

    store.write(tx)
    return _public_token(out, now)


# ----------------------------------------------------------------------------- audit

def _append(db, key: bytes, at: float, actor: str, role: str, action: str, obj: str, outcome: str,
            detail: dict | str | None) -> dict:
    """Append one event inside an open store transaction (the store lock orders the chain).
    `key` is the store's audit key. A new trail starts with the marker event; an older one
    got it when it was migrated (`start_keyed_trail`). A trail found unkeyed later was
    re-chained by someone else: it is not marked again (verify names it)."""
    head = db.table(T_AUDIT_HEAD).get(doc_id=1)
    prev = {"seq": head["seq"], "hash": head["hash"], "at": head["at"]} if head else None
    if prev is None:
        prev = _marker(db, None, key, at)
    event = _insert_event(db, prev, key, at, actor, role, action, obj, outcome, detail)
    _set_head(db, key, event, max(at, prev["at"]))
    return event


def _marker(db, prev, key, at) -> dict:
    return _insert_event(db, prev, key, at, SYSTEM, "", _audit.MARKER, "audit", _audit.OK,
                         {"note": "from here on every event is keyed (HMAC-SHA256)",
                          "unkeyed_events": prev["seq"] if prev else 0})


def _set_head(db, key, event, at) -> None:
    head_table = db.table(T_AUDIT_HEAD)
    new_head = {"seq": event["seq"], "hash": event["hash"], "at": at,
                "mac": _audit.head_mac(key, event["seq"], event["hash"])}
    if head_table.get(doc_id=1):
        head_table.update(new_head, doc_ids=[1])
    else:
        head_table.insert(new_head)


def start_keyed_trail(db, key: bytes) -> None:
    """Data format 2 -> 3: an older (SHA-256) trail gets the marker from which every event
    is keyed; its events stay as they were and still verify up to it."""
    head = db.table(T_AUDIT_HEAD).get(doc_id=1)
    if head is None:
        return  # an empty trail starts with the marker at its first event
    prev = {"seq": head["seq"], "hash": head["hash"], "at": head["at"]}
    at = max(CLOCK.wall(), float(head["at"]))
    marker = _marker(db, prev, key, at)
    _set_head(db, key, marker, at)


def _insert_event(db, prev, key, at, actor, role, action, obj, outcome, detail) -> dict:
    event = _audit.make_event(prev, at=at, actor=actor, role=role, action=action, object=obj,
                              outcome=outcome, detail=detail, key=key)
    db.table(T_AUDIT).insert(event)
    return dict(event, at=max(at, float(prev["at"])) if prev else at)


def audit_append(store, *, actor: str, role: str = "", action: str, object: str = "",
                 outcome: str = _audit.OK, detail: dict | str | None = None, at: float | None = None) -> dict:
    """Append an event to the trail (durable when this returns)."""
    at = CLOCK.wall() if at is None else at
    box: dict = {}
    store.write(lambda db: box.update(_append(db, store.audit_key, at, actor, role, action, object, outcome, detail)))
    return box


def audit_events(store, since_seq: int = 0, limit: int | None = None) -> list[dict]:
    """Events with seq > since_seq, in chain order (stored order)."""
    def q(db):
        evs = [dict(e) for e in db.table(T_AUDIT).all() if int(e.get("seq", 0) or 0) > since_seq] \
            if since_seq else [dict(e) for e in db.table(T_AUDIT).all()]
        return evs[:limit] if limit else evs
    return store.read(q)


def audit_head(store) -> tuple[int, str] | None:
    head = store.read(lambda db: db.table(T_AUDIT_HEAD).get(doc_id=1))
    return (int(head["seq"]), head["hash"]) if head else None


def audit_verify(store) -> _audit.VerifyResult:
    """Every link and every keyed hash, under the kit's key, and the recorded head's tag."""
    events, head = store.read(lambda db: ([dict(e) for e in db.table(T_AUDIT).all()],
                                          db.table(T_AUDIT_HEAD).get(doc_id=1)))
    expected = (int(head["seq"]), head["hash"]) if head else None
    result = _audit.verify_chain(events, expected_head=expected, key=store.audit_key, require_keyed=True)
    if result.ok and events and not head:
        return _audit.VerifyResult(False, result.count, int(events[-1]["seq"]), "the recorded head of the trail is gone")
    if result.ok and head and not _tokens.same(str(head.get("mac", "")),
                                              _audit.head_mac(store.audit_key, head["seq"], head["hash"])):
        return _audit.VerifyResult(False, result.count, int(head["seq"]),
                                   "the recorded head of the trail was changed without the kit's key")
    return result


def audit_export(store, since_seq: int = 0, *, kit_id: str = "", limit: int | None = None) -> dict:
    """A JSON document of the events after `since_seq` (at most `limit`), with the link it
    continues from, so the receiver can check it against the head of its previous export."""
    events = audit_events(store, since_seq, limit)
    start = None
    if since_seq:
        prev = store.read(lambda db: db.table(T_AUDIT).get(Query().seq == since_seq))
        start = [since_seq, prev["hash"]] if prev else None
    head = audit_head(store)
    return {"format": "fieldkit-audit/1", "kit": kit_id, "exported": CLOCK.wall(),
            "start": start if start else [0, _audit.GENESIS], "head": list(head) if head else None,
            "events": events}


def audit_config(store, values: dict) -> dict | None:
    """Record the settings the kit runs with: the first time a baseline, afterwards one
    `config.change` event naming what changed since the last open (the file is edited by
    hand, by `hospital set` or by provisioning: the kit notices at its next open). Also
    Returns the event written, if any. (Settings hold no secret: secrets live in files
    the settings name.)"""
    def shown(value):
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    now = [(str(k), shown(v)) for k, v in sorted(values.items())]
    box: dict = {}

    def tx(db):
        from . import meta
        seen = meta.get(db, "config_seen")
        old = dict(seen["values"]) if seen else None
        if old is None:
            box.update(_append(db, store.audit_key, CLOCK.wall(), SYSTEM, "", "config.baseline", "config",
                               _audit.OK, {"settings": len(now)}))
        else:
            new = dict(now)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                detail = {"changed": ", ".join(changed)[:400]}
                detail.update({k: f"{old.get(k)!r} -> {new.get(k)!r}" for k in changed[:14]})
                box.update(_append(db, store.audit_key, CLOCK.wall(), SYSTEM, "", "config.change", "config",
                                   _audit.OK, detail))
            else:
                return
        meta.put(db, "config_seen", {"values": [list(p) for p in now]})

    store.write(tx)
    return box or None


def audit_synced(store) -> tuple[int, str]:
    """(seq, hash) of the last event the hospital confirmed; (0, GENESIS) before the first."""
    doc = store.read(lambda db: db.table(T_AUDIT_SYNC).get(doc_id=1))
    return (int(doc["seq"]), doc["hash"]) if doc else (0, _audit.GENESIS)


def audit_anchor(store) -> dict:
    """Where the trail is anchored at the hospital (for the device page): the last event
    the hospital confirmed (seq, keyed hash, when) and the kit's own head."""
    doc = store.read(lambda db: db.table(T_AUDIT_SYNC).get(doc_id=1))
    head = audit_head(store)
    return {"seq": int(doc["seq"]) if doc else 0, "hash": doc["hash"] if doc else "",
            "at": float(doc.get("at") or 0.0) if doc else 0.0, "head_seq": head[0] if head else 0}


def audit_mark_synced(store, seq: int, hash_: str, sop_instance_uid: str = "") -> None:
    """Record that the hospital stored the events up to `seq` (never moves backwards)."""
    def tx(db):
        table = db.table(T_AUDIT_SYNC)
        doc = table.get(doc_id=1)
        new = {"seq": int(seq), "hash": hash_, "at": CLOCK.wall(), "sop_instance_uid": sop_instance_uid}
        if doc is None:
            table.insert(new)
        elif int(doc["seq"]) < int(seq):
            table.update(new, doc_ids=[1])

    store.write(tx)
