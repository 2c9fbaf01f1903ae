"""Turning a Debian box into a kit (`fieldkit provision`, in cli/provision.py): the answers
file's schema (answers.py), the steps that make the box match it (steps.py) and the checks of
the systemd unit (systemd.py)."""

from __future__ import annotations

from ..errors import FieldkitError


class ProvisionError(FieldkitError):
    """What `fieldkit provision` says when it cannot go on (nothing half-written)."""

    exit_code = 2
