"""The `fieldkit` command line. Every module in this package may export COMMANDS, a list
of click commands or groups; they are found and added here, so an area adds commands by
adding a module, without touching this file."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from ..errors import FieldkitError


class _Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FieldkitError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fieldkit")
def main():
    """fieldkit: an offline-first field kit for point-of-care ultrasound."""


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "control":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)


_discover()
