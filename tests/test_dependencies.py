"""What the kit installs: no GPL/AGPL code in the default install of an Apache-2.0 appliance,
and a hashed lock file that pins every runtime dependency (used by provisioning)."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "provisioning" / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# Strong copyleft: GPL and AGPL in any spelling; LGPL (dynamic linking) is fine.
COPYLEFT = re.compile(r"\bA?GPL|GNU (Affero )?General Public License", re.IGNORECASE)


def runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def runtime_closure() -> dict[str, md.Distribution]:
    """Every distribution the default install pulls in (pyproject's dependencies and theirs,
    with environment markers evaluated for this Python), by canonical name."""
    found: dict[str, md.Distribution] = {}
    todo = [(r, "") for r in runtime_requirements()]
    while todo:
        req, extra = todo.pop()
        env = {**default_environment(), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        wanted_extras = sorted(req.extras)
        key_seen = name in found
        if not key_seen:
            try:
                found[name] = md.distribution(req.name)
            except md.PackageNotFoundError:
                raise AssertionError(f"{req.name} (needed by the default install) is not installed") from None
        if key_seen and not wanted_extras:
            continue
        for text in found[name].requires or []:
            sub = Requirement(text)
            for e in [""] + wanted_extras:
                todo.append((sub, e))
    return found


def licence_of(dist: md.Distribution) -> str:
    """The licence a distribution declares: its SPDX expression, else its licence
    classifiers, else the first line of its License field."""
    meta = dist.metadata
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    return (meta.get("License") or "").strip().splitlines()[0] if (meta.get("License") or "").strip() else ""


def test_the_copyleft_check_tells_gpl_from_lgpl():
    for text in ("GPL V3.0", "GPL-3.0-or-later", "AGPL-3.0-only",
                 "GNU General Public License v3 (GPLv3)", "GNU Affero General Public License v3"):
        assert COPYLEFT.search(text), text
    for text in ("MIT", "BSD-3-Clause", "Apache-2.0", "LGPL-2.1-or-later", "MPL-2.0 AND MIT",
                 "GNU Lesser General Public License v2 or later (LGPLv2+)"):
        assert not COPYLEFT.search(text), text


def test_no_gpl_or_agpl_in_the_default_install():
    closure = runtime_closure()
    assert "imagecodecs" in closure and "pylibjpeg-libjpeg" not in closure
    licences = {name: licence_of(dist) for name, dist in sorted(closure.items())}
    unknown = [name for name, text in licences.items() if not text]
    copyleft = {name: text for name, text in licences.items() if COPYLEFT.search(text)}
    table = "\n".join(f"  {name} {dist.version}: {licences[name]}" for name, dist in sorted(closure.items()))
    assert copyleft == {}, f"GPL/AGPL in the default install:\n{table}"
    assert unknown == [], f"no licence declared:\n{table}"


def parse_lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) from a pip-compile/uv style lock file."""
    text = LOCK.read_text(encoding="utf-8")
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.sub(r"\\\n", " ", text).splitlines():
        line = block.split("#", 1)[0].strip() if not block.lstrip().startswith("--hash") else block.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"{spec!r} is not pinned with =="
        entries[canonicalize_name(req.name)] = (pins[0].version, [o.strip() for o in options])
    return entries


def test_the_lock_file_pins_and_hashes_every_runtime_dependency():
    entries = parse_lock()
    assert entries, "provisioning/requirements.lock is empty"
    unhashed = [name for name, (_, hashes) in entries.items()
                if not hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)]
    assert unhashed == []
    # every direct dependency, pinned to a version pyproject allows
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in entries, f"{req.name} is a runtime dependency but not in the lock file"
        assert req.specifier.contains(entries[name][0], prereleases=True), \
            f"lock pins {req.name}=={entries[name][0]}, outside pyproject's {req.specifier}"
    # and everything they pull in here (this platform's markers), so --require-hashes succeeds
    missing = sorted(set(runtime_closure()) - set(entries))
    assert missing == [], f"in the default install but not in the lock file: {missing}"
    # the GPL decoder and the test tools stay out
    assert "pylibjpeg-libjpeg" not in entries and "pytest" not in entries


def test_provisioning_installs_from_the_lock_with_hashes():
    from fieldkit.provision.steps import pip_install_commands

    python = Path("/opt/fieldkit/venv/bin/python")
    deps, kit = pip_install_commands(python, REPO, None)
    assert deps == [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "-r", str(LOCK)]
    assert kit[-3:] == ["--upgrade", "--no-deps", str(REPO)]  # nothing resolved outside the lock
    offline = pip_install_commands(python, REPO, Path("/media/usb/wheels"))
    assert all(c[5:8] == ["--no-index", "--find-links", "/media/usb/wheels"] for c in offline)
    install_sh = (REPO / "provisioning" / "install.sh").read_text(encoding="utf-8")
    assert 'pip_install --require-hashes -r "$HERE/provisioning/requirements.lock"' in install_sh
    assert 'pip_install --upgrade --no-deps "$HERE"' in install_sh
