"""The hospital endpoint from the kit's settings; secrets come from files, never the TOML.

`hospital.password_file` / `hospital.token_file` name files (relative to the data dir)
with owner-only permissions; `fieldkit hospital set` writes them under secrets/.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fieldkit.errors import ConfigError

from .client import Endpoint

AUTH_MODES = ("none", "basic", "bearer", "client-cert")
SECRETS_DIR = "secrets"


def _resolve(data_dir: Path | None, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or data_dir is None else Path(data_dir) / p


def read_secret(data_dir: Path | None, name: str, what: str) -> str:
    if not name:
        raise ConfigError(f"hospital {what} file is not set (fieldkit hospital set --{what}-file …)")
    path = _resolve(data_dir, name)
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"hospital {what} file {path} is readable by others; chmod 600 it")
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"hospital {what} file {path} does not exist") from None


def write_secret(data_dir: Path, filename: str, value: str) -> str:
    """Store a secret owner-only under DIR/secrets/; returns the relative name for the TOML."""
    d = Path(data_dir) / SECRETS_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    path = d / filename
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value.strip() + "\n")
    os.chmod(path, 0o600)
    return f"{SECRETS_DIR}/{filename}"


def endpoint_from_config(config, data_dir: Path | None = None) -> Endpoint:
    url = str(config["hospital.url"] or "").strip()
    if not url:
        raise ConfigError("no hospital configured (fieldkit hospital set --url …)")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"hospital.url must start with https:// (or http:// on a trusted network): {url!r}")
    mode = str(config["hospital.auth"] or "none")
    if mode not in AUTH_MODES:
        raise ConfigError(f"hospital.auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    ep = Endpoint(url, auth_mode=mode,
                  connect_timeout=float(config["hospital.connect_timeout_seconds"]),
                  read_timeout=float(config["hospital.read_timeout_seconds"]))
    if mode == "basic":
        ep.username = str(config["hospital.username"])
        ep.password = read_secret(data_dir, config["hospital.password_file"], "password")
    elif mode == "bearer":
        ep.token = read_secret(data_dir, config["hospital.token_file"], "token")
    elif mode == "client-cert":
        if not config["hospital.client_cert"]:
            raise ConfigError("hospital.auth is client-cert but hospital.client_cert is not set")
        ep.client_cert = str(_resolve(data_dir, config["hospital.client_cert"]))
        ep.client_key = str(_resolve(data_dir, config["hospital.client_key"])) if config["hospital.client_key"] else ""
    if config["hospital.ca_bundle"]:
        ep.ca_bundle = str(_resolve(data_dir, config["hospital.ca_bundle"]))
    return ep
