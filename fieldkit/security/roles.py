"""Roles and the permissions each one holds.

People sign in as clinician, triage or admin. Machines authenticate with bearer tokens
scoped to a machine role: a handheld probe that uploads over HTTP, a third-party DICOMweb
client, or the hospital-side sync service.

Routes declare the permission they need (see `fieldkit.web.auth`); a role either holds it
or is refused. The vocabulary is deliberately small so that a reviewer can read the whole
matrix at once (`fieldkit users roles` prints it).
"""

from __future__ import annotations

# Human roles
CLINICIAN = "clinician"
TRIAGE = "triage"
ADMIN = "admin"
HUMAN_ROLES = (CLINICIAN, TRIAGE, ADMIN)

# Machine roles (bearer tokens only, never a browser session)
PROBE = "probe"
DICOMWEB_CLIENT = "dicomweb-client"
SYNC = "sync"
MACHINE_ROLES = (PROBE, DICOMWEB_CLIENT, SYNC)

ROLES = HUMAN_ROLES + MACHINE_ROLES

# Pseudo-permissions used in route tables
PUBLIC = "public"  # anyone, signed in or not (sign-in page, health check, static assets)
AUTHENTICATED = "authenticated"  # any signed-in person or any valid token

# Permissions: "<area>.<verb>"
PATIENTS_READ = "patients.read"  # see patients, studies, images, findings
PATIENTS_WRITE = "patients.write"  # edit identity, notes, merge records
TRIAGE_WRITE = "triage.write"  # set a triage category or tag number
CARE_WRITE = "care.write"  # record notes, age, sex, interventions, zone and disposition
FINDINGS_WRITE = "findings.write"  # confirm, reject or sign a finding
INGEST_UPLOAD = "ingest.upload"  # upload captures over HTTP (tablet or probe)
DICOMWEB_READ = "dicomweb.read"  # QIDO-RS / WADO-RS
DICOMWEB_WRITE = "dicomweb.write"  # STOW-RS
EXPORT = "export"  # export a study or patient off the kit
QUEUE_READ = "queue.read"  # see the inference/sync queues and their failures
QUEUE_MANAGE = "queue.manage"  # retry or dismiss a failed queue row
STATUS_READ = "status.read"  # kit status, battery, counts (no patient data)
USERS_MANAGE = "users.manage"  # add, disable, reset accounts; create/revoke tokens
AUDIT_READ = "audit.read"  # read, verify and export the audit trail
KIT_LOCK = "kit.lock"  # lock the kit (drop the data key from memory)
SETTINGS_MANAGE = "settings.manage"  # change kit settings, models, sync target

PERMISSIONS = (
    PATIENTS_READ, PATIENTS_WRITE, TRIAGE_WRITE, CARE_WRITE, FINDINGS_WRITE, INGEST_UPLOAD,
    DICOMWEB_READ, DICOMWEB_WRITE, EXPORT, QUEUE_READ, QUEUE_MANAGE, STATUS_READ,
    USERS_MANAGE, AUDIT_READ, KIT_LOCK, SETTINGS_MANAGE,
)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    # A clinician examines, documents and exports; also sees the queues to know what reached the hospital.
    CLINICIAN: frozenset({
        PATIENTS_READ, PATIENTS_WRITE, TRIAGE_WRITE, CARE_WRITE, FINDINGS_WRITE, INGEST_UPLOAD,
        DICOMWEB_READ, EXPORT, QUEUE_READ, STATUS_READ,
    }),
    # A triage officer registers and tags patients, records what was done and where they are
    # (notes, age, sex, interventions, zone, disposition) and captures images; does not
    # change a name, merge records, sign findings or export.
    TRIAGE: frozenset({
        PATIENTS_READ, TRIAGE_WRITE, CARE_WRITE, INGEST_UPLOAD, QUEUE_READ, STATUS_READ,
    }),
    # The admin runs the kit: accounts, tokens, audit, queues, settings. In a field team the
    # admin is often also a clinician, so reading patients is allowed (and audited).
    ADMIN: frozenset({
        PATIENTS_READ, QUEUE_READ, QUEUE_MANAGE, STATUS_READ, USERS_MANAGE, AUDIT_READ,
        KIT_LOCK, SETTINGS_MANAGE, EXPORT,
    }),
    # A probe (or a capture app) only pushes images.
    PROBE: frozenset({INGEST_UPLOAD, DICOMWEB_WRITE}),
    # A third-party DICOMweb client (a viewer, a PACS) reads and writes studies.
    DICOMWEB_CLIENT: frozenset({DICOMWEB_READ, DICOMWEB_WRITE}),
    # The hospital-side sync service checks status and collects the audit trail.
    SYNC: frozenset({STATUS_READ, QUEUE_READ, AUDIT_READ}),
}


def is_role(role: str) -> bool:
    return role in ROLE_PERMISSIONS


def is_human(role: str) -> bool:
    return role in HUMAN_ROLES


def has_permission(role: str | None, permission: str) -> bool:
    """True when `role` may use a route that needs `permission`.

    PUBLIC is open to everyone; AUTHENTICATED to any known role. An unknown permission
    is refused for everyone (a typo in a route table must not open the route)."""
    if permission == PUBLIC:
        return True
    if role is None or role not in ROLE_PERMISSIONS:
        return False
    if permission == AUTHENTICATED:
        return True
    return permission in ROLE_PERMISSIONS[role]


def is_known_permission(permission: str) -> bool:
    return permission in PERMISSIONS or permission in (PUBLIC, AUTHENTICATED)


def matrix() -> list[tuple[str, list[str]]]:
    """(permission, [roles holding it]) rows, for documentation and `fieldkit users roles`."""
    return [(p, [r for r in ROLES if p in ROLE_PERMISSIONS[r]]) for p in PERMISSIONS]
