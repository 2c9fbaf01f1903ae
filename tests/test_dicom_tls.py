"""DICOM over TLS: a probe that trusts the kit's CA stores over an encrypted association;
one that does not trust it, or speaks plain TCP to the TLS port, stores nothing."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from pydicom.data import get_testdata_file

from fixtures.dcmtk import store_responses, storescu
from front_attack import assert_aead_only
from kitproc import KitProcess, set_config


@pytest.fixture
def tls_kit(data_dir):
    set_config(data_dir, dicom__tls_port=0)
    proc = KitProcess(data_dir).start()
    yield proc
    proc.stop()


def _received(kit) -> list[str]:
    """SOP Instance UIDs the kit holds from outside (not the SRs it makes of its findings)."""
    r = kit.get("/dicom-web/instances", headers={**kit.auth("dicomweb-client"), "Accept": "application/dicom+json"})
    assert r.status_code in (200, 204), r.text
    rows = r.json() if r.status_code == 200 else []
    return [row["00080018"]["Value"][0] for row in rows if row.get("00080060", {}).get("Value") != ["SR"]]


def test_store_over_tls_with_the_kits_ca(tls_kit, need):
    storescu, echoscu = need("storescu"), need("echoscu")
    port = tls_kit.info["dicom_tls_port"]
    assert isinstance(port, int) and port != tls_kit.dicom_port
    tls = ["+tla", "+cf", tls_kit.ca]
    echo = subprocess.run([echoscu, *tls, "-aec", "FIELDKIT", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run([storescu, *tls, "-aec", "FIELDKIT", "127.0.0.1", str(port),
                            get_testdata_file("examples_rgb_color.dcm")], capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    assert _received(tls_kit) == [pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm")).SOPInstanceUID]


def test_untrusted_or_plain_clients_store_nothing(tls_kit, need):
    storescu = need("storescu")
    port = str(tls_kit.info["dicom_tls_port"])
    sample = get_testdata_file("examples_rgb_color.dcm")
    # a client with no trust in the kit's CA refuses the handshake
    untrusted = subprocess.run([storescu, "+tla", "-aec", "FIELDKIT", "127.0.0.1", port, sample],
                               capture_output=True, text=True, timeout=60)
    assert untrusted.returncode != 0
    # plain DICOM to the TLS port gets no association
    plain = subprocess.run([storescu, "-to", "10", "-ta", "10", "-aec", "FIELDKIT", "127.0.0.1", port, sample],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    assert _received(tls_kit) == []
    assert tls_kit.get("/healthz").status_code == 200  # and the kit is unharmed


def test_tls12_offers_aead_suites_only(tls_kit):
    """The probes' TLS port is held to the same suites as HTTPS: no CBC, TLS 1.3 allowed."""
    assert_aead_only(tls_kit.info["dicom_tls_port"])


def test_tls_receiver_is_off_by_default(kit_server):
    assert kit_server.info.get("dicom_tls_port") is None


def test_a_kit_locked_while_running_answers_tls_probes_locked_then_stores(kit, passphrase, need):
    """The server key is sealed by the data key; a kit locked after it started has dropped
    that key, yet its TLS receiver (restarted for the locked state) still completes the
    handshake and answers C-STORE 'locked', then stores once unlocked."""
    from fieldkit.store import instances
    from fieldkit.kit.lock import lock_kit, unlock_kit

    need("storescu")
    kit.config = kit.config.with_overrides(dicom__tls_port=0, dicom__bind="127.0.0.1")
    kit.start_services(["dicom-tls"])
    sample = get_testdata_file("examples_rgb_color.dcm")

    def send():  # -d: the response's comment is printed too
        return storescu(kit.dicom_tls_port, [sample], "-d", "+tla", "+cf", str(kit.data_dir / "tls" / "ca.pem"),
                        timeout=60)

    try:
        assert lock_kit(kit)
        assert "dicom-tls" in kit.locked_services
        locked = send()
        assert store_responses(locked) == ["Refused: Out of resources"], locked.stdout + locked.stderr
        assert "kit locked: an admin must unlock it" in locked.stdout + locked.stderr
        assert unlock_kit(kit, passphrase)
        stored = send()
        assert stored.returncode == 0 and store_responses(stored) == ["Success"], stored.stdout + stored.stderr
        assert instances.get_instance(kit.store, pydicom.dcmread(sample).SOPInstanceUID) is not None
    finally:
        kit.stop_services()
