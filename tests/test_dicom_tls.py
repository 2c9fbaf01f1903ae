"""DICOM over TLS: a probe that trusts the kit's CA stores over an encrypted association;
one that does not trust it, or speaks plain TCP to the TLS port, stores nothing."""

from __future__ import annotations

import subprocess

import pytest
from pydicom.data import get_testdata_file

from front_attack import assert_aead_only
from kitproc import KitProcess, set_config


@pytest.fixture
def tls_kit(data_dir):
    set_config(data_dir, dicom__tls_port=0)
    proc = KitProcess(data_dir).start()
    yield proc
    proc.stop()


def _instances(kit) -> int:
    import json

    from kitproc import run_cli
    return json.loads(run_cli("status", "--data-dir", kit.data_dir, "--json").stdout)["instances"]


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
    assert _instances(tls_kit) == 1


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
    assert _instances(tls_kit) == 0
    assert tls_kit.get("/healthz").status_code == 200  # and the kit is unharmed


def test_tls12_offers_aead_suites_only(tls_kit):
    """The probes' TLS port is held to the same suites as HTTPS: no CBC, TLS 1.3 allowed."""
    assert_aead_only(tls_kit.info["dicom_tls_port"])


def test_tls_receiver_is_off_by_default(kit_server):
    assert kit_server.info.get("dicom_tls_port") is None
