"""The hospital endpoint from the kit's settings; secrets come from files, never the TOML.

`hospital.password_file` / `hospital.token_file` / `hospital.client_key` name files
(relative to the data dir). `fieldkit hospital set` writes them under secrets/ sealed by
the data key (security/secrets.py); the sync client opens them in memory only. A plaintext
file the settings name inside the data dir (a kit from before sealing, or one written by
hand) is sealed in place at the kit's next open (`seal_plain_secrets`); a plaintext file
outside the data dir is the operator's own and is read as it is.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from urllib.parse import urlsplit

from fieldkit.errors import BadInput, ConfigError
from fieldkit.security.secrets import MemoryFile, SecretBox, is_sealed, within

from .client import Endpoint

AUTH_MODES = ("none", "basic", "bearer", "client-cert")
SECRETS_DIR = "secrets"
# setting naming a secret file -> the file `hospital set` writes under secrets/
SECRET_FILES = {"hospital.password_file": "hospital-password", "hospital.token_file": "hospital-token",
                "hospital.client_key": "hospital-client-key"}


def _resolve(data_dir: Path | None, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or data_dir is None else Path(data_dir) / p


def read_secret(data_dir: Path | None, name: str, what: str, secrets: SecretBox | None) -> bytes:
    """The secret a setting names: unsealed in memory, or a plaintext file's bytes."""
    if not name:
        raise ConfigError(f"hospital {what} file is not set (fieldkit hospital set --{what}-file …)")
    path = _resolve(data_dir, name)
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"hospital {what} file {path} is readable by others; chmod 600 it")
        if is_sealed(path):
            if secrets is None:
                raise ConfigError(f"hospital {what} file {path} is sealed by the data key: unlock the kit first")
            return secrets.open(path)
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"hospital {what} file {path} does not exist") from None


def write_secret(data_dir: Path, secrets: SecretBox, setting: str, value: bytes) -> str:
    """Seal a secret under DIR/secrets/ (owner-only); returns the relative name for the TOML."""
    filename = SECRET_FILES[setting]
    secrets.seal(Path(data_dir) / SECRETS_DIR / filename, value)
    return f"{SECRETS_DIR}/{filename}"


def seal_plain_secrets(data_dir: Path, secrets: SecretBox, config) -> list[str]:
    """Seal every plaintext secret file inside the data dir (those the settings name, and
    the ones `hospital set` writes under secrets/), overwriting the plaintext. Returns the
    files sealed. (The client certificate beside them is public and stays as it is.)"""
    data_dir = Path(data_dir)
    paths = [_resolve(data_dir, str(config[s])) for s in SECRET_FILES if config[s]]
    paths += [data_dir / SECRETS_DIR / name for name in SECRET_FILES.values()]
    sealed = []
    for path in dict.fromkeys(paths):
        if path.is_file() and not path.is_symlink() and within(data_dir, path) and not is_sealed(path):
            secrets.seal(path, path.read_bytes())
            sealed.append(str(path.relative_to(data_dir)))
    return sealed


def secret_files(data_dir: Path, config) -> list[Path]:
    """Every hospital secret file of the data dir (for `erase`): secrets/ and the files the
    settings name inside the data dir."""
    data_dir = Path(data_dir)
    out = [p for p in (data_dir / SECRETS_DIR).rglob("*") if p.is_file()] if (data_dir / SECRETS_DIR).is_dir() else []
    if config is not None:
        for setting in SECRET_FILES:
            path = _resolve(data_dir, str(config[setting] or ""))
            if config[setting] and within(data_dir, path) and path.is_file():
                out.append(path)
    return list(dict.fromkeys(out))


def check_url(url: str, allow_plain_http: bool = False) -> str | None:
    """Refuse a hospital URL with credentials in it (without repeating them) or plain http://
    to a host other than this machine unless allowed; returns a warning for allowed plain http."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        raise BadInput("the hospital URL is not a valid URL (e.g. https://pacs.example/dicom-web)") from None
    if "@" in parts.netloc:
        raise BadInput("the hospital URL must not carry credentials (user:password@host): nothing was saved; "
                       "give the user with --username and the password with --password-file, which the kit "
                       "keeps sealed")
    if parts.scheme not in ("http", "https") or not host:
        raise BadInput("the hospital URL must start with https:// and name a host (e.g. https://pacs.example/dicom-web)")
    if parts.scheme == "http" and not _loopback(host):
        if not allow_plain_http:
            raise BadInput(f"http:// would send studies and credentials unencrypted to {host}: use https://, "
                           "or add --allow-plain-http if the network to the hospital is trusted")
        return f"warning: studies and credentials go unencrypted over http:// to {host}"
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def endpoint_from_config(config, data_dir: Path | None = None, secrets: SecretBox | None = None) -> Endpoint:
    """The endpoint the settings describe; `secrets` opens the sealed credential files."""
    url = str(config["hospital.url"] or "").strip()
    if not url:
        raise ConfigError("no hospital configured (fieldkit hospital set --url …)")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"hospital.url must start with https:// (or http:// on a trusted network): {url!r}")
    if "@" in urlsplit(url).netloc:  # a hand-edited TOML: never send (or show) those credentials
        raise ConfigError("hospital.url carries credentials (user:password@host): remove them and use "
                          "`fieldkit hospital set --username … --password-file …`")
    mode = str(config["hospital.auth"] or "none")
    if mode not in AUTH_MODES:
        raise ConfigError(f"hospital.auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    ep = Endpoint(url, auth_mode=mode,
                  connect_timeout=float(config["hospital.connect_timeout_seconds"]),
                  read_timeout=float(config["hospital.read_timeout_seconds"]))
    if mode == "basic":
        ep.username = str(config["hospital.username"])
        ep.password = _text(read_secret(data_dir, config["hospital.password_file"], "password", secrets))
    elif mode == "bearer":
        ep.token = _text(read_secret(data_dir, config["hospital.token_file"], "token", secrets))
    elif mode == "client-cert":
        if not config["hospital.client_cert"]:
            raise ConfigError("hospital.auth is client-cert but hospital.client_cert is not set")
        ep.client_cert = str(_resolve(data_dir, config["hospital.client_cert"]))
        if config["hospital.client_key"]:
            path = _resolve(data_dir, config["hospital.client_key"])
            if is_sealed(path):  # handed to ssl as an in-memory file, kept open with the endpoint
                key = MemoryFile(read_secret(data_dir, config["hospital.client_key"], "client-key", secrets))
                ep.keep = (key,)
                ep.client_key = key.path
            else:
                ep.client_key = str(path)
    if config["hospital.ca_bundle"]:
        ep.ca_bundle = str(_resolve(data_dir, config["hospital.ca_bundle"]))
    return ep


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError("a hospital secret file is not UTF-8 text") from None
