"""`fieldkit models list|verify|keygen|sign`: the model bundles this kit would load, and
the tools a hospital uses to sign its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import Config
from ..inference import bundle as B
from ..inference.registry import Registry, model_dirs


def _config(data_dir: Path | None) -> Config:
    if data_dir is None:
        return Config()
    from ..kit import load_config
    return load_config(data_dir)


DATA_DIR = click.option("--data-dir", "data_dir", type=click.Path(path_type=Path),
                        help="The kit's data directory (its fieldkit.toml and DIR/models); default settings without it.")


@click.group()
def models():
    """Signed ONNX model bundles: list, verify, make a signing key, sign a bundle."""


@models.command("list")
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_models(data_dir, as_json):
    """Every bundle found, whether it verified and loaded, and why not."""
    config = _config(data_dir)
    reg = Registry(config, data_dir)
    rows = reg.status()
    if as_json:
        click.echo(json.dumps({"dirs": [str(d) for d in reg.dirs], "models": rows}, indent=1))
        return
    if reg.key_problem:
        click.echo(f"warning: {reg.key_problem}", err=True)
    if not rows:
        click.echo("no model bundles found in: " + ", ".join(str(d) for d in model_dirs(config, data_dir)))
    for r in rows:
        mark = "ok " if r["loaded"] else "-- "
        click.echo(f"{mark}{r['name']:14} {r['version']:8} {r['task']:5} {r['sha256'][:12]:12}  {r['status']}")


@models.command("verify")
@DATA_DIR
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
def verify(data_dir, bundles):
    """Check hash and signature of every bundle (or the given bundle dirs); exit 1 if any is refused."""
    config = _config(data_dir)
    if bundles:
        trusted = B.trusted_keys(list(config.get("inference.trusted_keys") or []))
        found = [B.verify_bundle(B.read_bundle(p), trusted) for p in bundles]
    else:
        found = Registry(config, data_dir).bundles
    rows = []
    for b in found:
        # a verified bundle whose card does not tell everything is refused here, by name
        card = B.card_problems(b) if b.ok else []
        rows.append({"name": b.name, "ok": b.ok and not card,
                     "status": f"refused: {'; '.join(card)}" if card else b.status})
    for r in rows:
        click.echo(f"{'verified' if r['ok'] else 'REFUSED '}  {r['name']}: {r['status']}")
    if not rows:
        click.echo("no model bundles found")
    sys.exit(0 if rows and all(r["ok"] for r in rows) else 1)


@models.command("keygen")
@click.argument("key_file", type=click.Path(path_type=Path))
def keygen(key_file):
    """Make an Ed25519 signing key (owner-only file) and print the public key for
    `inference.trusted_keys`. Keep the private key off the kit."""
    key = B.new_private_key()
    try:
        B.save_private_key(key, key_file)
    except FileExistsError:
        raise click.ClickException(f"{key_file} exists; refusing to overwrite a signing key")
    click.echo(B.public_key_text(key.public_key()))


@models.command("sign")
@click.argument("bundle_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Ed25519 private key (PEM) made by `fieldkit models keygen`.")
def sign(bundle_dir, key_file):
    """Fill in the SHA-256 and signature of BUNDLE_DIR/manifest.json."""
    try:
        entry = B.sign_bundle(bundle_dir, B.load_private_key(key_file))
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"cannot sign {bundle_dir}: {exc}")
    click.echo(f"signed {entry['name']} {entry['version']} sha256 {entry['sha256']} key {entry['key_id']}")


COMMANDS = [models]
