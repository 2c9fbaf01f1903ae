"""Accounts, lockout, tokens and the audit chain against a real encrypted store."""

from __future__ import annotations

import pytest

from fieldkit.errors import BadInput, Conflict, NotFound
from fieldkit.security import passwords as pw
from fieldkit.security import roles
from fieldkit.security.tokens import looks_like_token, token_digest
from fieldkit.store import accounts


def test_create_user_stores_only_an_argon2id_hash(sec_store):
    user = accounts.create_user(sec_store, "Amina", "483920", roles.CLINICIAN)
    assert user["name"] == "Amina" and user["role"] == "clinician" and not user["disabled"]
    doc = sec_store.read(lambda db: db.table("users").all())[0]
    assert doc["hash"].startswith("$argon2id$")
    assert "483920" not in repr(doc)
    assert accounts.verify_login(sec_store, "amina", "483920").ok  # names are case-insensitive


@pytest.mark.parametrize("name", ["", "a b", "evil\x00", "bob\u202e", "zero\u200bwidth", "x" * 65, "<script>"])
def test_user_names_with_control_or_odd_characters_are_refused(sec_store, name):
    with pytest.raises(BadInput):
        accounts.create_user(sec_store, name, "483920", roles.TRIAGE)
    assert accounts.list_users(sec_store) == []


def test_unicode_letters_are_fine_and_duplicates_by_case_are_refused(sec_store):
    accounts.create_user(sec_store, "Zoë", "483920", roles.TRIAGE)
    with pytest.raises(Conflict):
        accounts.create_user(sec_store, "ZOË", "583920", roles.TRIAGE)
    assert [u["name"] for u in accounts.list_users(sec_store)] == ["Zoë"]


@pytest.mark.parametrize("secret", ["1234", "111111", "123456", "short", "password\x07x", ""])
def test_weak_or_malformed_secrets_are_refused(sec_store, secret):
    with pytest.raises(BadInput):
        accounts.create_user(sec_store, "bob", secret, roles.CLINICIAN)


def test_machine_roles_cannot_be_people(sec_store):
    with pytest.raises(BadInput, match="token"):
        accounts.create_user(sec_store, "probe1", "483920", roles.PROBE)


def test_wrong_secret_and_unknown_user_fail_the_same_way(sec_store):
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    a = accounts.verify_login(sec_store, "amina", "000000")
    b = accounts.verify_login(sec_store, "nobody", "483920")
    assert not a.ok and not b.ok and a.principal is None and b.principal is None


def _policy(**lockout):
    from fieldkit.security.signin import SigninPolicy
    return SigninPolicy(lockout=pw.LockoutPolicy(**lockout), address_per_minute=1000, account_per_minute=1000,
                        block_failures=1000)


def test_backoff_refuses_the_right_pin_until_it_ends(sec_store, fake_clock):
    lockout = _policy(free_failures=3, base_delay=30, max_delay=600)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    for _ in range(3):
        assert not accounts.verify_login(sec_store, "amina", "999999", policy=lockout).ok
    # the N+1th attempt, with the right PIN, is refused while the backoff runs
    r = accounts.verify_login(sec_store, "amina", "483920", policy=lockout)
    assert not r.ok and r.reason == "locked out" and 0 < r.retry_after <= 30
    fake_clock.advance(29)
    assert not accounts.verify_login(sec_store, "amina", "483920", policy=lockout).ok
    fake_clock.advance(2)
    assert accounts.verify_login(sec_store, "amina", "483920", policy=lockout).ok
    assert not accounts.get_user(sec_store, "amina")["locked"]


def test_backoff_doubles_and_is_capped(sec_store, fake_clock):
    lockout = _policy(free_failures=1, base_delay=10, max_delay=40)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    delays = []
    for _ in range(5):
        r = accounts.verify_login(sec_store, "amina", "999999", policy=lockout)
        delays.append(r.retry_after)
        fake_clock.advance(r.retry_after + 0.1)
    assert delays == [10, 20, 40, 40, 40]


def test_a_wall_clock_jump_does_not_end_a_backoff(sec_store, fake_clock):
    lockout = _policy(free_failures=1, base_delay=60, max_delay=60)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    accounts.verify_login(sec_store, "amina", "999999", policy=lockout)
    # the backoff runs on the monotonic clock: a jump of the device clock changes nothing
    fake_clock.jump_wall(+3600)
    assert accounts.verify_login(sec_store, "amina", "483920", policy=lockout).reason == "locked out"
    fake_clock.jump_wall(-365 * 86400)
    r = accounts.verify_login(sec_store, "amina", "483920", policy=lockout)
    assert r.reason == "locked out" and r.retry_after == pytest.approx(60)
    fake_clock.advance(61)
    assert accounts.verify_login(sec_store, "amina", "483920", policy=lockout).ok


def test_disabled_account_cannot_sign_in_and_last_admin_stays(sec_store):
    accounts.create_user(sec_store, "root1", "correct horse battery", roles.ADMIN)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    with pytest.raises(Conflict):
        accounts.set_disabled(sec_store, "root1", True)
    accounts.set_disabled(sec_store, "amina", True)
    assert accounts.verify_login(sec_store, "amina", "483920").reason == "account disabled"
    assert accounts.user_principal(sec_store, "amina") is None
    accounts.reset_secret(sec_store, "amina", "771935")
    accounts.set_disabled(sec_store, "amina", False)
    assert not accounts.verify_login(sec_store, "amina", "483920").ok
    assert accounts.verify_login(sec_store, "amina", "771935").ok
    with pytest.raises(NotFound):
        accounts.reset_secret(sec_store, "ghost", "771935")


def test_tokens_are_stored_hashed_scoped_expiring_and_revocable(sec_store, fake_clock):
    token = accounts.create_token(sec_store, roles.DICOMWEB_CLIENT, fake_clock.wall() + 3600, "viewer")
    assert looks_like_token(token)
    raw = repr(sec_store.read(lambda db: db.table("tokens").all()))
    assert token not in raw and token_digest(token) in raw
    p = accounts.verify_token(sec_store, token)
    assert p.role == "dicomweb-client" and p.kind == "token" and p.label == "viewer"
    assert accounts.verify_token(sec_store, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    fake_clock.advance(3601)
    assert accounts.verify_token(sec_store, token) is None
    assert accounts.list_tokens(sec_store)[0]["state"] == "expired"
    # a clock set back after expiry does not revive the token
    fake_clock.jump_wall(-86400)
    assert accounts.verify_token(sec_store, token) is None


def test_revoked_token_is_refused(sec_store):
    token = accounts.create_token(sec_store, roles.PROBE, None, "probe A")
    tid = accounts.list_tokens(sec_store)[0]["id"]
    assert accounts.verify_token(sec_store, token) is not None
    assert accounts.revoke_token(sec_store, tid)["state"] == "revoked"
    assert accounts.verify_token(sec_store, token) is None
    with pytest.raises(NotFound):
        accounts.revoke_token(sec_store, "nope")
    with pytest.raises(BadInput):
        accounts.create_token(sec_store, "superuser", None, "")


def test_disabling_the_owner_revokes_its_tokens_for_good(sec_store):
    accounts.create_user(sec_store, "root1", "correct horse battery", roles.ADMIN)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    token = accounts.create_token(sec_store, roles.PROBE, None, "amina's probe", owner="Amina")
    other = accounts.create_token(sec_store, roles.SYNC, None, "hospital", owner="root1")
    assert accounts.verify_token(sec_store, token) is not None
    accounts.set_disabled(sec_store, "amina", True)
    assert accounts.verify_token(sec_store, token) is None
    accounts.set_disabled(sec_store, "amina", False)  # re-enabling does not revive it
    assert accounts.verify_token(sec_store, token) is None
    states = {t["label"]: (t["state"], t["owner"]) for t in accounts.list_tokens(sec_store)}
    assert states == {"amina's probe": ("revoked", "amina"), "hospital": ("active", "root1")}
    assert accounts.verify_token(sec_store, other) is not None
    revoke = [e for e in accounts.audit_events(sec_store) if e["action"] == "token.revoke"]
    assert len(revoke) == 1 and revoke[0]["detail"]["reason"] == "owner disabled"


@pytest.mark.parametrize("role", roles.HUMAN_ROLES)
def test_a_token_for_a_persons_role_is_refused(sec_store, role):
    with pytest.raises(BadInput, match="people sign in with their own account"):
        accounts.create_token(sec_store, role, None, "automation")
    assert accounts.list_tokens(sec_store) == []


def test_every_token_has_an_owner_and_a_token_for_ever_is_flagged(sec_store, fake_clock):
    _, info = accounts.create_token_info(sec_store, roles.PROBE, None, "probe A", actor="cli:nurse")
    assert info["owner"] == "cli:nurse" and info["expires"] == 0 and "never expires" in info["warning"]
    _, info = accounts.create_token_info(sec_store, roles.PROBE, fake_clock.wall() + 60, "probe B")
    assert info["owner"] == "system" and "warning" not in info
    with pytest.raises(BadInput, match="not an enabled account"):
        accounts.create_token(sec_store, roles.PROBE, None, "x", owner="ghost")


def test_every_account_change_and_sign_in_is_audited_and_the_chain_verifies(sec_store):
    accounts.create_user(sec_store, "root1", "correct horse battery", roles.ADMIN)
    accounts.verify_login(sec_store, "root1", "wrong wrong wrong", remote="10.0.0.9")
    accounts.verify_login(sec_store, "root1", "correct horse battery")
    accounts.create_token(sec_store, roles.SYNC, None, "hospital")
    events = accounts.audit_events(sec_store)[1:]  # after the marker from which the trail is keyed
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("user.create", "ok"), ("login", "failed"), ("login", "ok"), ("token.create", "ok")]
    assert events[1]["actor"] == "root1" and events[1]["detail"]["remote"] == "10.0.0.9"
    assert all(k in events[0] for k in ("actor", "role", "time", "action", "object", "outcome", "prev", "hash"))
    assert "correct horse" not in repr(events) and "wrong wrong" not in repr(events)
    result = accounts.audit_verify(sec_store)
    assert result.ok and result.count == 5


def test_audit_survives_reopening_the_store(tmp_path):
    import os
    from fieldkit.config import Config
    from fieldkit.store import Store, write_format

    d = tmp_path / "kit"
    d.mkdir()
    write_format(d)
    key = os.urandom(32)
    s = Store.open(d, key, Config())
    accounts.create_user(s, "root1", "correct horse battery", roles.ADMIN)
    accounts.audit_append(s, actor="root1", role="admin", action="export", object="patient:P1")
    s.close()
    s = Store.open(d, key, Config())
    try:
        assert accounts.audit_verify(s).count == 3
        assert accounts.verify_login(s, "root1", "correct horse battery").ok
    finally:
        s.close()


def test_parallel_guesses_cannot_outrun_the_lockout(sec_store, fake_clock):
    from concurrent.futures import ThreadPoolExecutor

    lockout = _policy(free_failures=3, base_delay=60, max_delay=60)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    guesses = [f"{100000 + i}" for i in range(12)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda g: accounts.verify_login(sec_store, "amina", g, policy=lockout), guesses))
    reasons = [r.reason for r in results]
    assert reasons.count("wrong secret") <= 3, reasons
    assert reasons.count("locked out") >= len(guesses) - 3
    assert accounts.verify_login(sec_store, "amina", "483920", policy=lockout).reason == "locked out"
    assert accounts.audit_verify(sec_store).ok


def test_names_that_are_not_accounts_are_slowed_the_same_way(sec_store, fake_clock):
    """A lockout only for real accounts would tell an attacker which names exist."""
    lockout = _policy(free_failures=3, base_delay=30, max_delay=600)
    accounts.create_user(sec_store, "amina", "483920", roles.CLINICIAN)
    real = [accounts.verify_login(sec_store, "amina", "999999", policy=lockout) for _ in range(4)]
    ghost = [accounts.verify_login(sec_store, "nobody-here", "999999", policy=lockout) for _ in range(4)]
    assert [r.reason for r in real][-1] == [r.reason for r in ghost][-1] == "locked out"
    assert [r.retry_after > 0 for r in real] == [r.retry_after > 0 for r in ghost]
    fake_clock.advance(31)
    assert accounts.verify_login(sec_store, "nobody-here", "999999", policy=lockout).reason == "unknown user"
    accounts.flush_signin_audit(sec_store, flush_all=True)
    failures = [e for e in accounts.audit_events(sec_store) if e["action"].startswith("login")]
    # one event for the first failure of the address, one summary with the count of the rest
    assert [e["action"] for e in failures] == ["login", "login.failures"]
    assert failures[1]["detail"]["count"] == 8 and failures[1]["detail"]["accounts"] == "amina, nobody-here"
