"""`fieldkit demo`: a demo kit with sample captures, served on loopback. Nothing to configure."""

from __future__ import annotations

from pathlib import Path

import click

from ..kit import CONFIG_FILE
from ..kit.control import run_op
from .core import init, serve

ROLE_DOES = {"admin": "accounts, settings, audit, export; does not triage",
             "clinician": "triages, examines, reviews findings, exports handovers",
             "triage": "registers and triages patients, records care, zone and disposition"}

DEMO_PASSPHRASE = "fieldkit demo passphrase"
DEMO_ADMIN = "demo"
DEMO_PASSWORD = "demo-password-2468"
# One account per person's role, so a newcomer can run a drill as each (demo only)
DEMO_ACCOUNTS = ((DEMO_ADMIN, "admin", DEMO_PASSWORD), ("demo-clinician", "clinician", "demo-clinician-1357"),
                 ("demo-triage", "triage", "demo-triage-8642"))

# Real ultrasound captures that ship inside pydicom's test data.
SAMPLES = ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm")


def sample_paths() -> list[Path]:
    from pydicom.data import get_testdata_file
    return [Path(p) for p in (get_testdata_file(name) for name in SAMPLES) if p]


@click.command()
@click.option("--data-dir", "data_dir", default="demo-data", type=click.Path(path_type=Path), show_default=True,
              help="Where the demo kit lives.")
@click.option("--http-port", type=int, default=8443, show_default=True, help="HTTPS port.")
@click.option("--dicom-port", type=int, default=11112, show_default=True, help="DICOM port.")
@click.option("--no-serve", is_flag=True, help="Only create the kit and load the samples.")
@click.pass_context
def demo(ctx, data_dir: Path, http_port: int, dicom_port: int, no_serve: bool):
    """Create (once) a demo kit with sample ultrasound captures, then serve it."""
    if not (data_dir / CONFIG_FILE).exists():
        secrets = data_dir.parent / f".{data_dir.name}-secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        (secrets / "passphrase").write_text(DEMO_PASSPHRASE + "\n")
        (secrets / "admin").write_text(DEMO_PASSWORD + "\n")
        ctx.invoke(init, data_dir=data_dir, passphrase_file=secrets / "passphrase", kit_id="DEMO",
                   admin_user=DEMO_ADMIN, admin_password_file=secrets / "admin", demo=True, hostnames=())
        for name, role, password in DEMO_ACCOUNTS[1:]:
            run_op(data_dir, "users.add", {"name": name, "secret": password, "role": role, "actor": "demo"})
    importer = ctx.parent.command.get_command(ctx, "import") if ctx.parent else None
    if importer is not None:
        ctx.invoke(importer, paths=tuple(sample_paths()), data_dir=data_dir)
    click.echo(f"demo kit passphrase: {DEMO_PASSPHRASE!r} (demo only: never use these on a real kit)")
    for name, role, password in DEMO_ACCOUNTS:
        click.echo(f"  sign in as {name!r} with password {password!r}: {role} ({ROLE_DOES[role]})")
    if not no_serve:
        ctx.invoke(serve, data_dir=data_dir, bind="127.0.0.1", http_port=http_port, dicom_port=dicom_port,
                   passphrase_file=None)


COMMANDS = [demo]
