"""`fieldkit users …`, `fieldkit token …`, `fieldkit audit …`, `fieldkit lock|unlock|erase`.

Commands that change the store go through the running kit when `serve` runs (control
socket), else open the store themselves: the same op functions run either way. The
actor recorded in the audit trail is "cli:<login name>", since whoever can reach the
owner-only socket or the data dir is the kit's operator.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

import click

from ..errors import BadInput, ConfigError, FieldkitError
from ..kit import load_config
from ..kit.control import call, run_op
from ..kit.lock import lock_kit, unlock_kit
from ..security import roles as R
from ..security.passwords import secret_policy
from ..store import accounts, dir_is_locked
from ..sync.audit import sync_audit_once
from .core import DATA_DIR, read_secret_file


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


# ----------------------------------------------------------------------------- control ops
# fn(kit, args, emit) -> JSON-able; registered in fieldkit.kit.registry.CONTROL_OPS

def op_users_add(kit, args, emit):
    return accounts.create_user(kit.store, args["name"], args["secret"], args["role"],
                                actor=args.get("actor", accounts.SYSTEM), actor_role="operator", **secret_policy(kit.config))


def op_users_list(kit, args, emit):
    return accounts.list_users(kit.store)


def op_users_disable(kit, args, emit):
    return accounts.set_disabled(kit.store, args["name"], bool(args.get("disabled", True)),
                                 actor=args.get("actor", accounts.SYSTEM), actor_role="operator")


def op_users_reset(kit, args, emit):
    return accounts.reset_secret(kit.store, args["name"], args["secret"], actor=args.get("actor", accounts.SYSTEM),
                                 actor_role="operator", **secret_policy(kit.config))


def op_users_unlock(kit, args, emit):
    return accounts.clear_lockout(kit.store, args["name"], actor=args.get("actor", accounts.SYSTEM),
                                  actor_role="operator")


def op_token_create(kit, args, emit):
    days = args.get("days")
    if days is None:
        days = kit.config.get("security.token_days", 365)
    expires = accounts.CLOCK.wall() + float(days) * 86400 if days else None
    token, info = accounts.create_token_info(kit.store, str(args["role"]), expires, args.get("label", ""),
                                             owner=args.get("owner", ""), actor=args.get("actor", accounts.SYSTEM),
                                             actor_role="operator")
    return dict(info, token=token)


def op_token_list(kit, args, emit):
    return accounts.list_tokens(kit.store)


def op_token_revoke(kit, args, emit):
    return accounts.revoke_token(kit.store, args["id"], actor=args.get("actor", accounts.SYSTEM), actor_role="operator")


def op_audit_verify(kit, args, emit):
    r = accounts.audit_verify(kit.store)
    return {"ok": r.ok, "count": r.count, "broken_seq": r.broken_seq, "message": r.message()}


def op_audit_export(kit, args, emit):
    return accounts.audit_export(kit.store, int(args.get("since", 0)), kit_id=kit.config["kit.id"])


def op_audit_sync(kit, args, emit):
    return sync_audit_once(kit)


def op_lock(kit, args, emit):
    return {"locked": True, "changed": lock_kit(kit, actor=args.get("actor", accounts.SYSTEM), role="operator")}


def op_unlock(kit, args, emit):
    return {"locked": False, "changed": unlock_kit(kit, args.get("passphrase", ""), remote="control socket")}


def op_erase(kit, args, emit):
    """Crypto-erase from inside the running kit: lock (drop the key), then destroy the
    wrapped keys on disk. The kit stays locked for good; stop it afterwards."""
    lock_kit(kit, actor=args.get("actor", accounts.SYSTEM), role="operator")
    kit.keyring.destroy()
    return {"erased": True}


# ----------------------------------------------------------------------------- helpers

def _read_new_secret(path: Path | None, name: str) -> str:
    secret = read_secret_file(path, "PIN/password")
    if secret is None:
        if not sys.stdin.isatty():
            raise BadInput("give the PIN/password with --password-file (no terminal to ask on)")
        secret = click.prompt(f"PIN or password for {name}", hide_input=True, confirmation_prompt=True)
    return secret


def _print_json(value) -> None:
    click.echo(json.dumps(value, indent=1, ensure_ascii=False))


def _when(t: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if t else "-"


# ----------------------------------------------------------------------------- users

@click.group()
def users():
    """People's accounts: clinician, triage, admin."""


@users.command("add")
@DATA_DIR
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(list(R.HUMAN_ROLES)), help="The person's role.")
@click.option("--password-file", type=click.Path(path_type=Path), help="File holding the PIN/password (else asked).")
def users_add(data_dir, name, role, password_file):
    """Add an account (PIN of digits or a password; hashed with Argon2id)."""
    secret = _read_new_secret(password_file, name)
    user = run_op(data_dir, "users.add", {"name": name, "secret": secret, "role": role, "actor": _actor()})
    click.echo(f"user {user['name']} ({user['role']}) added")


@users.command("list")
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_list(data_dir, as_json):
    """List accounts (never their secrets)."""
    rows = run_op(data_dir, "users.list", {})
    if as_json:
        return _print_json(rows)
    for u in rows:
        flags = " ".join(f for f, on in (("disabled", u["disabled"]), ("locked-out", u["locked"])) if on)
        click.echo(f"{u['name']:24} {u['role']:10} last sign-in {_when(u['last_login'])} {flags}".rstrip())
    if not rows:
        click.echo("no accounts yet: add one with `fieldkit users add`")


@users.command("disable")
@DATA_DIR
@click.argument("name")
@click.option("--enable", is_flag=True, help="Re-enable a disabled account instead.")
def users_disable(data_dir, name, enable):
    """Disable an account (its sessions and tokens stop working at once)."""
    u = run_op(data_dir, "users.disable", {"name": name, "disabled": not enable, "actor": _actor()})
    click.echo(f"user {u['name']} {'disabled' if u['disabled'] else 'enabled'}")


@users.command("reset")
@DATA_DIR
@click.argument("name")
@click.option("--password-file", type=click.Path(path_type=Path), help="File holding the new PIN/password.")
def users_reset(data_dir, name, password_file):
    """Set a new PIN/password (also ends a lockout)."""
    secret = _read_new_secret(password_file, name)
    u = run_op(data_dir, "users.reset", {"name": name, "secret": secret, "actor": _actor()})
    click.echo(f"user {u['name']}: new PIN/password set")


@users.command("unlock")
@DATA_DIR
@click.argument("name")
def users_unlock(data_dir, name):
    """End a lockout after too many wrong attempts."""
    u = run_op(data_dir, "users.unlock", {"name": name, "actor": _actor()})
    click.echo(f"user {u['name']}: lockout cleared")


@users.command("roles")
def users_roles():
    """Print which role holds which permission."""
    width = max(len(p) for p in R.PERMISSIONS)
    for permission, holders in R.matrix():
        click.echo(f"{permission:{width}}  {', '.join(holders)}")


# ----------------------------------------------------------------------------- tokens

@click.group()
def token():
    """Bearer tokens for API and DICOMweb clients (stored hashed)."""


@token.command("create")
@DATA_DIR
@click.option("--role", required=True, help=f"Machine role the token acts as ({', '.join(R.MACHINE_ROLES)}); "
              "people sign in with an account instead.")
@click.option("--label", default="", help="What the token is for (shown in `token list`).")
@click.option("--days", type=click.IntRange(0, 3650), default=None,
              help="Lifetime in days (default: setting security.token_days; 0: no expiry, with a warning).")
@click.option("--owner", default="", help="Account the token belongs to (disabling it revokes the token); "
              "default: you, the operator at the command line.")
def token_create(data_dir, role, label, days, owner):
    """Create a machine token and print it (shown once: the kit keeps only its hash)."""
    info = run_op(data_dir, "token.create", {"role": role, "label": label, "days": days, "owner": owner,
                                             "actor": _actor()})
    click.echo(f"token {info['id']} for role {info['role']}, owner {info['owner']}, expires "
               f"{_when(info['expires']) if info['expires'] else 'never'} (shown once; store it safely):", err=True)
    if info.get("warning"):
        click.echo(f"warning: {info['warning']}", err=True)
    click.echo(info["token"])


@token.command("list")
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(data_dir, as_json):
    """List tokens (id, role, label, state; never the token itself)."""
    rows = run_op(data_dir, "token.list", {})
    if as_json:
        return _print_json(rows)
    for t in rows:
        click.echo(f"{t['id']}  {t['role']:15} {t['state']:8} expires {_when(t['expires'])}  "
                   f"last used {_when(t['last_used'])}  owner {t['owner']}  {t['label']}")
    if not rows:
        click.echo("no tokens")


@token.command("revoke")
@DATA_DIR
@click.argument("token_id")
def token_revoke(data_dir, token_id):
    """Revoke a token by its id (from `token list`)."""
    t = run_op(data_dir, "token.revoke", {"id": token_id, "actor": _actor()})
    click.echo(f"token {t['id']} revoked")


# ----------------------------------------------------------------------------- audit

@click.group()
def audit():
    """The hash-chained audit trail."""


@audit.command("verify")
@DATA_DIR
def audit_verify(data_dir):
    """Check every link of the trail; exits 1 and names the first broken link if any."""
    r = run_op(data_dir, "audit.verify", {})
    click.echo(r["message"])
    if not r["ok"]:
        sys.exit(1)


@audit.command("sync")
@DATA_DIR
def audit_sync(data_dir):
    """Send the events the hospital has not confirmed yet, now (as audit SR documents by
    STOW-RS to hospital.url); `serve` also does this every security.audit_sync_minutes."""
    r = run_op(data_dir, "audit.sync", {})
    click.echo(f"{r['events']} events sent in {r['documents']} documents; the hospital holds the trail "
               f"up to event {r['synced_up_to']}")


@audit.command("export")
@DATA_DIR
@click.option("--since", type=click.IntRange(0), default=0, help="Only events after this sequence number.")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file (owner-only) instead of stdout.")
def audit_export(data_dir, since, out):
    """Export events as JSON (with the link they continue from, for the receiver to check).
    The export is not encrypted: it names users and patient record IDs."""
    doc = run_op(data_dir, "audit.export", {"since": since})
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    click.echo(f"{len(doc['events'])} events written to {out}", err=True)


# ----------------------------------------------------------------------------- lock / erase

@click.command()
@DATA_DIR
def lock(data_dir):
    """Lock the running kit: drop the data key from memory; it serves nothing until
    unlocked with the kit passphrase."""
    if not dir_is_locked(data_dir):
        raise FieldkitError(f"no kit is running on {data_dir}: the data key is only in memory while "
                            "`fieldkit serve` runs, so there is nothing to lock")
    r = call(data_dir, "lock", {"actor": _actor()})
    click.echo("kit locked" if r["changed"] else "kit was already locked")


@click.command()
@DATA_DIR
@click.option("--passphrase-file", type=click.Path(path_type=Path), help="File holding the kit passphrase (else asked).")
def unlock(data_dir, passphrase_file):
    """Unlock the running kit with the kit passphrase."""
    if not dir_is_locked(data_dir):
        raise FieldkitError(f"no kit is running on {data_dir}")
    passphrase = read_secret_file(passphrase_file, "passphrase") or click.prompt("Kit passphrase", hide_input=True)
    r = call(data_dir, "unlock", {"passphrase": passphrase})
    click.echo("kit unlocked" if r["changed"] else "kit was not locked")


@click.command()
@DATA_DIR
@click.option("--confirm", "confirm_id", help="The kit ID, to confirm without a prompt.")
def erase(data_dir, confirm_id):
    """Crypto-erase the kit: overwrite and delete the wrapped data key, the device key, the
    TLS private keys and the hospital secrets, so that everything stored becomes unreadable
    noise. Names every file it removed. There is no undo."""
    from .erase import erase_key_files, key_files

    data_dir = Path(data_dir)
    try:
        config = load_config(data_dir)
        kit_id = config["kit.id"]
    except ConfigError:
        config, kit_id = None, ""
    present = [str(p.relative_to(data_dir)) for p in key_files(data_dir, config)]
    if not present:
        raise FieldkitError(f"{data_dir} holds no kit keys (already erased, or not a kit)")
    expected = kit_id or data_dir.name
    if confirm_id is None:
        if not sys.stdin.isatty():
            raise BadInput(f"confirm with --confirm {expected} (no terminal to ask on)")
        click.echo(f"This destroys every patient record and image on kit {expected} for good.", err=True)
        confirm_id = click.prompt(f"Type the kit ID ({expected}) to erase it")
    if confirm_id != expected:
        raise BadInput("the kit ID does not match: nothing was erased")
    running = dir_is_locked(data_dir)
    if running:
        call(data_dir, "erase", {"actor": _actor()})  # the kit drops the key and destroys the keyring
    erase_key_files(data_dir, config)
    removed = [name for name in present if not (data_dir / name).exists()]
    click.echo("removed: " + ", ".join(removed))
    if running:
        click.echo("kit erased (the running kit is locked for good: stop it)")
    else:
        click.echo("kit erased: every key and secret is destroyed; the data left on disk is unreadable")


COMMANDS = [users, token, audit, lock, unlock, erase]
