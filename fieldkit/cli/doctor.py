"""`fieldkit doctor`: check the box and the kit, one line per check, each with what to do.

Exit status 0 when nothing failed (warnings allowed), 1 when any check failed. `--json`
prints the same checks as a JSON object for machines (fleet monitoring, provisioning).

Doctor never takes the data dir away from a running kit: when `fieldkit serve` holds the
lock, the store and the queue are read through the kit's control socket instead. Otherwise
doctor opens the store once (which authenticates every journal record): a store that does
not open fails the `store` check with the salvage command as the remedy, and the queue is
then not read. `--scrub` also reads and verifies every stored capture now.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import psutil

from ..config import CONFIG_FILE, Config
from ..errors import FieldkitError, KeyUnavailable, StoreCorrupt, short
from ..hardware import Reading, load_profile, probe_from_config, temperature_limit
from ..kit import RUN_FILE
from ..store import LOCK_FILE

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1 << 30

# The clock cannot be right if it is before this package was written.
EARLIEST_SANE = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
CERT_RENEW_DAYS = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str      # ok | warn | fail
    message: str     # what was found
    fix: str = ""    # what to do when it is not ok

    def line(self) -> str:
        text = f"[{self.status.upper():4}] {self.name}: {self.message}"
        return text + (f" -> {self.fix}" if self.fix and self.status != OK else "")


@dataclass
class Context:
    data_dir: Path
    config: Config
    reading: Reading
    profile: Any          # fieldkit.hardware.Profile | None
    profile_error: str
    kit_running: bool
    timeout: float
    scrub: bool = False   # --scrub: verify every stored capture now
    cache: dict = field(default_factory=dict)  # what the store said, read once for all checks


# -- the checks --------------------------------------------------------------------------

def check_profile(ctx: Context) -> Check:
    if ctx.profile is None:
        return Check("profile", FAIL, ctx.profile_error,
                     "set hardware.profile in fieldkit.toml to one of the files in hardware/")
    return Check("profile", OK, f"{ctx.profile.name} ({ctx.profile.title})")


def check_cpu(ctx: Context) -> Check:
    cores = ctx.reading.cpu_count or 0
    if ctx.profile is None:
        return Check("cpu", WARN, f"{cores} cores (no profile to compare with)")
    want = ctx.profile.cores
    if cores < want:
        return Check("cpu", FAIL, f"{cores} cores, the profile {ctx.profile.name} expects {want}",
                     "pick the hardware profile that matches this box (hardware.profile), or check the BIOS has all cores enabled")
    return Check("cpu", OK, f"{cores} cores (profile: {want})")


def check_memory(ctx: Context) -> Check:
    total = ctx.reading.memory_total_bytes or 0
    have = total / GIB
    if ctx.profile is None:
        return Check("memory", WARN, f"{have:.1f} GiB (no profile to compare with)")
    want = ctx.profile.memory_gb
    # Firmware and the GPU reserve some RAM: "4 GB" boxes report about 3.7 GiB.
    if have < want * 0.85:
        return Check("memory", FAIL, f"{have:.1f} GiB, the profile expects {want:g} GB",
                     "use a box with the profile's memory, or choose the matching hardware profile")
    available = psutil.virtual_memory().available / GIB
    if available < 0.5:
        return Check("memory", WARN, f"{have:.1f} GiB, only {available:.2f} GiB available",
                     "stop other programs on the box; the kit needs about 0.5 GiB free for a cine")
    return Check("memory", OK, f"{have:.1f} GiB, {available:.1f} GiB available (profile: {want:g} GB)")


def check_disk(ctx: Context) -> Check:
    free, total = ctx.reading.disk_free_bytes, ctx.reading.disk_total_bytes
    if free is None:
        return Check("disk", FAIL, f"cannot read free space of {ctx.data_dir}",
                     "check the data dir exists and its disk is mounted")
    min_free = (ctx.profile.min_free_disk_gb if ctx.profile else 10.0) * 1e9
    used_pct = f", {100 * (1 - free / total):.0f}% used" if total else ""
    if free < min_free:
        return Check("disk", FAIL, f"{free / 1e9:.1f} GB free{used_pct}, below the {min_free / 1e9:g} GB minimum",
                     "sync to the hospital and archive old studies, or fit a larger disk; the kit refuses new captures when full")
    try:
        flags = os.statvfs(ctx.data_dir).f_flag
    except OSError as exc:
        return Check("disk", FAIL, f"cannot stat {ctx.data_dir}: {exc.strerror}", "check the disk is mounted")
    if flags & os.ST_RDONLY:
        return Check("disk", FAIL, f"{ctx.data_dir} is on a read-only file system",
                     "the disk was remounted read-only after errors: run fsck from a rescue shell and replace the disk if it recurs")
    if not os.access(ctx.data_dir, os.W_OK):
        return Check("disk", FAIL, f"{ctx.data_dir} is not writable by this user",
                     "run doctor as the kit's service user (or root)")
    return Check("disk", OK, f"{free / 1e9:.1f} GB free{used_pct}")


def check_clock(ctx: Context) -> Check:
    now = dt.datetime.now(dt.timezone.utc)
    if now < EARLIEST_SANE:
        return Check("clock", FAIL, f"system time is {now:%Y-%m-%d %H:%M} UTC, which is in the past",
                     "the real-time clock battery may be flat: set the time (`date -s`) or let time sync run, then restart the kit")
    # A clock that went backwards since the last write would misorder studies and findings.
    newest = _newest_mtime(ctx.data_dir)
    if newest and newest - now.timestamp() > 300:
        return Check("clock", FAIL, f"system time is {(newest - now.timestamp()) / 60:.0f} minutes "
                     "before the newest file the kit wrote",
                     "the clock went backwards: set the correct time before taking new captures")
    synced = _ntp_synchronized()
    if synced is False:
        return Check("clock", WARN, f"{now:%Y-%m-%d %H:%M} UTC, not confirmed by time sync",
                     "normal without a network; otherwise check chrony/timesyncd (provisioning installs a template)")
    return Check("clock", OK, f"{now:%Y-%m-%d %H:%M} UTC" + (", synchronised" if synced else ""))


def check_battery(ctx: Context) -> Check:
    r = ctx.reading
    if r.battery_percent is None:
        return Check("battery", OK, "no battery sensor (mains powered, or the battery has no driver)")
    low = float(ctx.config["power.battery_low_percent"])
    state = {True: "on battery", False: "on mains", None: "power source unknown"}[r.on_battery]
    if r.on_battery is not False and r.battery_percent < low:
        return Check("battery", FAIL, f"{r.battery_percent:.0f}%, {state}, below the {low:g}% threshold "
                     "(the kit is sub-sampling cine and holding back bulk sync)",
                     "connect mains, a vehicle socket or solar, or swap the battery pack")
    return Check("battery", OK, f"{r.battery_percent:.0f}%, {state}")


def check_temperature(ctx: Context) -> Check:
    r = ctx.reading
    if r.temperature_c is None:
        return Check("temperature", OK, "no temperature sensor")
    limit = temperature_limit(ctx.config, ctx.profile)
    where = r.sources.get("temperature_c", "")
    if r.temperature_c >= limit:
        return Check("temperature", FAIL, f"{r.temperature_c:.0f} °C, at or above the {limit:g} °C limit "
                     "(inference for non-urgent patients is paused)",
                     "move the box into shade, clear its vents and fins, raise it off the ground")
    if r.temperature_c >= limit - 5:
        return Check("temperature", WARN, f"{r.temperature_c:.0f} °C, within 5 °C of the {limit:g} °C limit",
                     "improve ventilation before the kit starts pausing work")
    return Check("temperature", OK, f"{r.temperature_c:.0f} °C (limit {limit:g} °C{', ' + where if where else ''})")


def check_ports(ctx: Context) -> list[Check]:
    out = []
    # A running kit may have been started with other ports (--http-port): it records them.
    running = _run_info(ctx.data_dir) if ctx.kit_running else {}
    for name, setting in (("https port", "http.port"), ("dicom port", "dicom.port")):
        actual = running.get("http_port" if setting == "http.port" else "dicom_port")
        port = int(actual or ctx.config[setting])
        bind = ctx.config["http.bind"] if setting == "http.port" else ctx.config.get("dicom.bind", "0.0.0.0")
        free = _port_free(bind, port)
        if free:
            msg = f"{port} free" + (" (but the kit is running: is it listening elsewhere?)" if ctx.kit_running else "")
            out.append(Check(name, WARN if ctx.kit_running else OK, msg, "check http.bind and the ports in fieldkit.toml"))
        elif ctx.kit_running and _pid_listening(port) in (None, _kit_pid(ctx.data_dir)):
            out.append(Check(name, OK, f"{port} in use by the kit"))
        else:
            owner = _pid_listening(port)
            who = f"process {owner} ({_proc_name(owner)})" if owner else "another program"
            out.append(Check(name, FAIL, f"{port} is in use by {who}",
                             f"stop that program or change {setting} in fieldkit.toml"))
    return out


def _server_key(ctx: Context):
    """The server key: a sealed one is opened with the device key (or the TPM)."""
    from ..security.keys import Keyring
    from ..security.secrets import SecretBox
    from ..security.tls import SERVER_KEY_SEALED, TLS_DIR, load_server_key
    from ..security.tpm import sealer_for
    box = None
    if (ctx.data_dir / TLS_DIR / SERVER_KEY_SEALED).exists():
        box = SecretBox(Keyring(ctx.data_dir, sealer=sealer_for(ctx.config)).unlock_with_device_key())
    return load_server_key(ctx.data_dir, box)


def check_tls(ctx: Context) -> Check:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    tls = ctx.data_dir / "tls"
    try:
        ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
        chain = x509.load_pem_x509_certificates((tls / "server.pem").read_bytes())
        key = _server_key(ctx)
    except FileNotFoundError as exc:
        return Check("tls", FAIL, f"{exc.filename} is missing", "run `fieldkit provision` again (or `fieldkit init` on a new data dir)")
    except PermissionError as exc:
        return Check("tls", FAIL, f"cannot read {exc.filename}", "run doctor as the kit's service user or root")
    except ValueError as exc:
        return Check("tls", FAIL, f"a certificate or key in {tls} is unreadable ({exc})", "restore the tls folder from the kit's backup or re-provision")
    except FieldkitError as exc:  # a sealed server key that the device key (or TPM) cannot open
        return Check("tls", FAIL, f"the server key cannot be opened: {exc.message}", "check the kit's key (doctor's keys line)")
    cert = chain[0]
    now = dt.datetime.now(dt.timezone.utc)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return Check("tls", FAIL, "the server certificate was not issued by the kit's CA (tablets will refuse it)",
                     "re-issue the server certificate from the kit's CA")
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return Check("tls", FAIL, "server.key does not belong to server.pem", "restore the matching key or re-issue the certificate")
    for label, c in (("server certificate", cert), ("CA certificate", ca)):
        if c.not_valid_after_utc <= now:
            return Check("tls", FAIL, f"the {label} expired on {c.not_valid_after_utc:%Y-%m-%d}",
                         "check the clock first; then `fieldkit tls renew` for the server certificate "
                         "(a new kit CA means onboarding every tablet again)")
        if c.not_valid_before_utc > now:
            return Check("tls", FAIL, f"the {label} is not valid until {c.not_valid_before_utc:%Y-%m-%d}",
                         "the clock is wrong: set the time")
    days = (cert.not_valid_after_utc - now).days
    if days < CERT_RENEW_DAYS:
        return Check("tls", WARN, f"server certificate expires in {days} days",
                     "run `fieldkit tls renew` (same CA: tablets keep trusting the kit), then restart the kit")
    return Check("tls", OK, f"server certificate valid for {days} more days, issued by the kit's CA")


def check_models(ctx: Context) -> Check:
    try:
        problems, count, where = _verify_models(ctx)
    except Exception as exc:  # a broken bundle must be a doctor line, not a traceback
        return Check("models", FAIL, f"cannot verify the model bundles: {exc}",
                     "reinstall the model bundles from the release")
    if problems and all("not in inference.trusted_keys" in p for p in problems):
        # nothing is damaged: reinstalling would not help (a hospital's bundle dropped in before
        # its key was listed, or a kit whose fieldkit.toml predates a new release key)
        return Check("models", FAIL, "; ".join(problems),
                     "if you trust that key, add it to inference.trusted_keys; the kit will not load a model "
                     "signed by a key it does not trust")
    if problems:
        return Check("models", FAIL, "; ".join(problems),
                     "reinstall the model bundle from the release; the kit will not load a model whose hash or signature fails")
    if count == 0:
        return Check("models", WARN, f"no model bundles found{(' in ' + where) if where else ''}",
                     "install the model bundles; without them the kit stores and syncs but gives no findings")
    return Check("models", OK, f"{count} model bundle(s) verified" + (f" in {where}" if where else ""))


def check_hospital(ctx: Context) -> Check:
    """The sync client's own probe (a QIDO-RS query that asks for nothing): cheap, read-only,
    and it exercises the kit's endpoint exactly as the sync worker builds it."""
    from ..sync.client import HospitalTLSError, LinkDown, StowClient

    url = str(ctx.config.get("hospital.url", "") or "")
    if not url:
        return Check("hospital", WARN, "no hospital endpoint configured (hospital.url)",
                     "set hospital.url in fieldkit.toml so studies can be sent")
    try:
        client = StowClient(_hospital_endpoint(ctx))
    except (OSError, ValueError, FieldkitError) as exc:
        return Check("hospital", FAIL, f"the hospital credentials cannot be read: {getattr(exc, 'message', exc)}",
                     "check hospital.auth and the password/token/certificate files in fieldkit.toml")
    started = time.monotonic()
    try:
        status = client.probe()
    except HospitalTLSError as exc:
        return Check("hospital", FAIL, f"{_redact(url)}: TLS verification failed "
                     f"({short(exc.__context__ or exc, 160)})",
                     "set hospital.ca_bundle to the hospital's CA, or check the kit's clock")
    except LinkDown as exc:
        return Check("hospital", FAIL, f"{_redact(url)} does not answer ({_net_reason(exc.__context__ or exc, ctx.timeout)})",
                     "normal in the field: studies wait in the queue. Otherwise check the uplink, "
                     "hospital.url and the hospital's firewall")
    except FieldkitError as exc:
        status = getattr(exc, "status", None)
        if status in (401, 403, 407):
            return Check("hospital", FAIL, f"{_redact(url)} refuses the kit's credentials (HTTP {status})",
                         "check hospital.auth, hospital.username and the password or token file")
        if status is not None:
            return Check("hospital", FAIL, f"{_redact(url)} answered HTTP {status}",
                         "check hospital.url points to the DICOMweb root (e.g. .../dicom-web)" if status < 500
                         else "the hospital's server has a problem; tell its administrators")
        return Check("hospital", FAIL, f"{_redact(url)}: {exc.message}",
                     "check hospital.url points to the DICOMweb root (e.g. .../dicom-web)")
    finally:
        client.close()
    ms = (time.monotonic() - started) * 1000
    return Check("hospital", OK, f"{_redact(url)} answers (HTTP {status}, {ms:.0f} ms"
                 + (f", auth {ctx.config.get('hospital.auth')})" if ctx.config.get("hospital.auth", "none") != "none" else ")"))


def check_store(ctx: Context) -> Check:
    """The journal opens (every record authenticates) and no stored capture is known damaged;
    with --scrub every capture is read and verified now."""
    salvage = (f"stop the kit if it runs, then run `fieldkit store salvage --data-dir {ctx.data_dir}`: it keeps "
               "every record that still authenticates, names what was lost and keeps the damaged file aside")
    try:
        facts = _store_facts(ctx)
    except StoreCorrupt as exc:
        where = f"byte offset {exc.offset}" + (f", record {exc.seq}" if exc.seq is not None else "")
        return Check("store", FAIL, f"{exc.path} is damaged at {where}: {exc.reason}; the kit will not start", salvage)
    except KeyUnavailable as exc:
        return Check("store", WARN, f"cannot unlock the store to verify it: {exc}", "run doctor as the kit's service user")
    except FieldkitError as exc:
        return Check("store", FAIL, f"the store does not open: {exc}", "see the message; " + salvage)
    damaged = facts["damage"]
    if damaged:
        first = damaged[0]
        return Check("store", FAIL, f"{len(damaged)} stored capture(s) fail verification (first: SOP Instance UID "
                     f"{first['sop_instance_uid']}, {first['reason']})",
                     "send those captures again from the probe, or import them again: a re-sent copy repairs the "
                     "stored one (the device page lists them)")
    text = f"opens and verifies ({facts['patients']} patients, {facts['instances']} instances"
    if facts.get("checked") is not None:
        text += f", {facts['checked']} stored captures read and verified"
    return Check("store", OK, text + ")")


def check_queue(ctx: Context) -> Check:
    try:
        summary = _queue_summary(ctx)
    except (StoreCorrupt, KeyUnavailable):
        return Check("queue", WARN, "not read: the store did not open (see the store check)")
    except FieldkitError as exc:
        return Check("queue", WARN, f"cannot read the queue: {exc}", "start the kit, or run doctor as the service user")
    except Exception as exc:
        return Check("queue", WARN, f"cannot read the queue: {exc}", "start the kit, or run doctor as the service user")
    pending, failed, oldest = summary["pending"], summary["failed"], summary["oldest_unsent_age_s"]
    text = f"{pending} item(s) waiting to sync"
    if oldest is not None:
        text += f", oldest unsent {_age(oldest)}"
    if summary.get("infer_pending"):
        text += f"; {summary['infer_pending']} waiting for analysis"
    if failed:
        return Check("queue", WARN, text + f"; {failed} quarantined",
                     "open the Sync page: quarantined items show the hospital's reason and can be retried")
    if oldest is not None and oldest > 24 * 3600:
        return Check("queue", WARN, text, "nothing has reached the hospital for a day: check the uplink and the hospital line above")
    return Check("queue", OK, text)


CHECKS: list[Callable[[Context], Check | list[Check]]] = [
    check_profile, check_cpu, check_memory, check_disk, check_clock, check_battery,
    check_temperature, check_ports, check_tls, check_models, check_hospital, check_store, check_queue,
]


def run_checks(data_dir: Path, config: Config, timeout: float = 5.0, scrub: bool = False) -> list[Check]:
    data_dir = Path(data_dir)
    profile, profile_error = None, ""
    try:
        profile = load_profile(config=config)
    except FieldkitError as exc:
        profile_error = str(exc)
    reading = probe_from_config(config, data_dir, profile).read()
    ctx = Context(data_dir, config, reading, profile, profile_error, _kit_running(data_dir), timeout, scrub)
    out: list[Check] = []
    for check in CHECKS:
        try:
            result = check(ctx)
        except Exception as exc:  # one broken check must not hide the others
            result = Check(check.__name__.removeprefix("check_"), FAIL, f"the check itself failed: {exc!r}",
                           "report this as a bug")
        out.extend(result if isinstance(result, list) else [result])
    return out


# -- the command -------------------------------------------------------------------------

@click.command("doctor")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="FIELDKIT_DATA_DIR", help="The kit's data directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the hospital and the kit.")
@click.option("--scrub", is_flag=True, help="Also read and verify every stored capture now (takes a while).")
def doctor(data_dir: Path, as_json: bool, timeout: float, scrub: bool) -> None:
    """Check the box and the kit against its hardware profile; exit 1 if anything failed."""
    if not data_dir.is_dir():
        raise click.ClickException(f"data dir {data_dir} does not exist (run `fieldkit init` or `fieldkit provision`)")
    config = Config.load(data_dir / CONFIG_FILE)  # a bad setting: one message, exit 2
    checks = run_checks(data_dir, config, timeout, scrub)
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        for c in checks:
            click.echo(c.line())
        n_warn = sum(c.status == WARN for c in checks)
        click.echo(f"{len(failed)} failed, {n_warn} warning(s), {len(checks)} checks")
    raise SystemExit(1 if failed else 0)


COMMANDS = [doctor]


# -- helpers -----------------------------------------------------------------------------

def _kit_running(data_dir: Path) -> bool:
    try:
        from ..store import dir_is_locked
    except ImportError:
        return False
    return dir_is_locked(data_dir)


def _run_info(data_dir: Path) -> dict:
    try:
        info = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _kit_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _pid_listening(port: int) -> int | None:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        pass
    return None


def _proc_name(pid: int | None) -> str:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, TypeError):
        return "?"


def _newest_mtime(data_dir: Path) -> float | None:
    newest = None
    for sub in ("db", "."):
        try:
            for entry in os.scandir(data_dir / sub):
                if entry.is_file(follow_symlinks=False):
                    m = entry.stat().st_mtime
                    newest = m if newest is None else max(newest, m)
        except OSError:
            continue
    return newest


def _ntp_synchronized() -> bool | None:
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


def _hospital_endpoint(ctx: Context):
    """The endpoint the sync worker uses (hospital.* settings, sealed secrets opened in
    memory), with doctor's timeout."""
    from dataclasses import replace

    from ..sync.hospital import endpoint_from_config
    from .sync import open_secret_box
    ep = endpoint_from_config(ctx.config, ctx.data_dir, open_secret_box(ctx.data_dir))
    return replace(ep, connect_timeout=ctx.timeout, read_timeout=ctx.timeout)


def _net_reason(exc: BaseException, timeout: float) -> str:
    """'connection refused' rather than urllib3's nested retry text."""
    import requests
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    seen, node = set(), exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.strerror:
            return node.strerror.lower()
        if "Name or service not known" in str(node) or "nodename nor servname" in str(node):
            return "host name not found"
        inner = [a for a in getattr(node, "args", ()) if isinstance(a, BaseException)]
        node = node.__cause__ or node.__context__ or (inner[0] if inner else getattr(node, "reason", None))
        if not isinstance(node, BaseException):
            node = None
    return short(exc, 160)



def _resolve(ctx: Context, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ctx.data_dir / p


def _redact(url: str) -> str:
    """Never print credentials embedded in a URL."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _queue_summary(ctx: Context) -> dict[str, Any]:
    if ctx.kit_running:
        return _queue_from_kit(ctx)
    return summarise_rows(_store_facts(ctx)["queue_rows"], time.time())


def _store_facts(ctx: Context) -> dict[str, Any]:
    """Counts, queue rows and damage, read once: from the running kit, or by opening the
    store (which verifies every journal record). Raises what opening raised, every time."""
    if "facts" not in ctx.cache:
        try:
            ctx.cache["facts"] = _read_store(ctx)
        except FieldkitError as exc:
            ctx.cache["facts"] = exc
    facts = ctx.cache["facts"]
    if isinstance(facts, FieldkitError):
        raise facts
    return facts


def _read_store(ctx: Context) -> dict[str, Any]:
    from ..store.scrub import damage, scrub_all
    if ctx.kit_running:
        from ..kit.control import call
        checked = call(ctx.data_dir, "store.scrub", {})["checked"] if ctx.scrub else None
        status = call(ctx.data_dir, "status", {}, timeout=ctx.timeout)
        return {"patients": status.get("patients", 0), "instances": status.get("instances", 0),
                "damage": status.get("damage") or [], "checked": checked}
    from ..security.keys import Keyring
    from ..security.tpm import sealer_for
    from ..store import Store
    data_key = Keyring(ctx.data_dir, sealer=sealer_for(ctx.config)).unlock_with_device_key()
    store = Store.open(ctx.data_dir, data_key, ctx.config)
    try:
        checked = scrub_all(store)["checked"] if ctx.scrub else None
        counts = store.counts()
        return {"patients": counts["patients"], "instances": counts["instances"], "damage": damage(store),
                "queue_rows": store.queue.rows(), "checked": checked}
    finally:
        store.close()


def summarise_rows(rows, now: float) -> dict[str, Any]:
    waiting = [r for r in rows if r.kind == "sync" and r.state in ("ready", "leased")]
    oldest = min((r.created for r in waiting if r.created), default=None)
    return {
        "pending": len(waiting),
        "failed": sum(1 for r in rows if r.kind == "sync" and r.state == "failed"),
        "infer_pending": sum(1 for r in rows if r.kind == "infer" and r.state in ("ready", "leased")),
        "oldest_unsent_age_s": (now - oldest) if oldest else None,
    }


def _queue_from_kit(ctx: Context) -> dict[str, Any]:
    """Ask the running kit through its owner-only control socket, never opening the store."""
    from ..kit.control import call
    status = call(ctx.data_dir, "status", {}, timeout=ctx.timeout)
    queue = status.get("queue") or {}
    sync = queue.get("sync", {}) if isinstance(queue, dict) else {}
    infer = queue.get("infer", {}) if isinstance(queue, dict) else {}
    oldest = status.get("oldest_unsent_age_s")
    if oldest is None and status.get("oldest_unsent"):
        oldest = time.time() - float(status["oldest_unsent"])
    return {"pending": int(sync.get("ready", 0)) + int(sync.get("leased", 0)),
            "failed": int(sync.get("failed", 0)),
            "infer_pending": int(infer.get("ready", 0)) + int(infer.get("leased", 0)),
            "oldest_unsent_age_s": oldest}


def _verify_models(ctx: Context) -> tuple[list[str], int, str]:
    """(problems, bundles checked, where), using the inference package's own verifier (hash,
    signature under inference.trusted_keys, manifest fields) without loading any model."""
    from ..inference import bundle as B
    from ..inference.registry import model_dirs
    dirs = [d for d in model_dirs(ctx.config, ctx.data_dir) if Path(d).is_dir()]
    try:
        trusted = B.trusted_keys(list(ctx.config.get("inference.trusted_keys") or []))
    except ValueError as exc:
        return [f"inference.trusted_keys is unreadable ({exc})"], 0, ""
    problems, count = [], 0
    for path in B.discover(dirs):
        count += 1
        bundle = B.verify_bundle(B.read_bundle(path), trusted)
        if not bundle.ok:
            problems.append(f"model {bundle.name}: {bundle.status}")
    return problems, count, ", ".join(str(d) for d in dirs)
