"""Shared fixtures: an initialised kit on a temp dir, its store, a running `fieldkit serve`,
and `need()` for real peers (dcmtk, Orthanc, Chromium).

Area fixtures live in tests/fixtures/<area>.py and are loaded here as plugins.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kitproc import PASSPHRASE, KitProcess, init_kit

pytest_plugins = sorted(f"fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py")
                        if not p.name.startswith("_"))

PEERS = {
    "storescu": "dcmtk (apt-get install dcmtk)",
    "echoscu": "dcmtk (apt-get install dcmtk)",
    "Orthanc": "orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb)",
    "chromium": "chromium (apt-get install chromium)",
    "systemd-analyze": "systemd (apt-get install systemd)",
    "node": "nodejs (apt-get install nodejs)",
    "swtpm": "swtpm (apt-get install swtpm swtpm-tools)",
    "tpm2_createprimary": "tpm2-tools (apt-get install tpm2-tools)",
    "dciodvfy": "dicom3tools (apt-get install dicom3tools)",
}


def need_peer(tool: str) -> str:
    """Path of a peer program; a missing peer fails the test under CI=true, else skips it."""
    path = shutil.which(tool) or (f"/usr/bin/{tool}" if os.path.exists(f"/usr/bin/{tool}") else None)
    if path:
        return path
    hint = PEERS.get(tool, tool)
    message = f"{tool} is not installed: install {hint} (make test does this when run as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def need():
    return need_peer


@pytest.fixture(scope="session")
def initialised_kit(tmp_path_factory) -> Path:
    """One `fieldkit init` per test process, which `data_dir` copies (init is the same for
    every test and took a second or more each time). A test that needs a kit with keys of
    its own beside it calls `init_kit` itself."""
    return init_kit(tmp_path_factory.mktemp("initialised") / "kit")


@pytest.fixture
def data_dir(tmp_path, initialised_kit) -> Path:
    """A freshly initialised kit (demo settings: any AE title accepted), with its secrets
    beside it as `init_kit` leaves them."""
    secrets = f".{initialised_kit.name}-secrets"
    shutil.copytree(initialised_kit.parent / secrets, tmp_path / secrets)
    return Path(shutil.copytree(initialised_kit, tmp_path / "kit"))


@pytest.fixture
def store(data_dir):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    yield kit.store
    kit.close()


@pytest.fixture
def kit(data_dir):
    """An opened Kit (no services, no server) for in-process tests."""
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    yield kit
    kit.close()


@pytest.fixture
def kit_server(data_dir):
    """A real `fieldkit serve` on loopback over HTTPS (random ports); stopped afterwards."""
    proc = KitProcess(data_dir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def passphrase() -> str:
    return PASSPHRASE
