"""How many probes the DIMSE receiver takes at once (`dicom.max_associations`), and that a
slot comes back when an association ends or goes silent."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from fieldkit.ingest import dimse
from fieldkit.store import instances
from fixtures.dcmtk import captures, store_responses, storescu


@pytest.fixture(autouse=True)
def _dcmtk(need):
    need("storescu")


def _receiver(kit, **overrides):
    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=True,
                                           **overrides)
    return dimse.start(kit)


def _hold(port, n, source="127.0.0.2"):
    """n established associations that stay open until released, from another address
    than the probes' (each address has its own connection cap)."""
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", port, ae_title="FIELDKIT", bind_address=(source, 0)) for _ in range(n)]
    return ae, held


def _wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_twelve_probes_at_once_all_store(kit, tmp_path):
    receiver = _receiver(kit)
    try:
        files = captures(tmp_path / "c", 36)
        procs = [subprocess.Popen(["storescu", "-v", "-aet", f"PROBE{i}", "-aec", "FIELDKIT", "127.0.0.1",
                                   str(receiver.port), *map(str, files[i * 3:(i + 1) * 3])],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(12)]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out
            assert "Association Rejected" not in out
        assert len(instances.instance_rows(kit.store)) == 36
    finally:
        receiver.stop()


def test_one_beyond_the_limit_is_refused_then_stores_when_a_slot_frees(kit, tmp_path):
    receiver = _receiver(kit)  # default: 16
    assert kit.config["dicom.max_associations"] == 16
    (capture,) = captures(tmp_path / "c", 1)
    ae, held = _hold(receiver.port, 16)
    try:
        assert all(a.is_established for a in held)
        refused = storescu(receiver.port, [capture])
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr
        assert instances.instance_rows(kit.store) == []
    finally:
        for a in held:
            a.release()
        ae.shutdown()
    try:
        # the released slots are free again (their threads end a moment after A-RELEASE)
        stored = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stored = storescu(receiver.port, [capture])
            if stored.returncode == 0:
                break
            time.sleep(0.2)
        assert store_responses(stored) == ["Success"], stored.stdout + stored.stderr
        assert len(instances.instance_rows(kit.store)) == 1
    finally:
        receiver.stop()


def test_silent_connections_do_not_hold_a_slot_forever(kit, tmp_path):
    receiver = _receiver(kit, dicom__max_associations=1, dicom__idle_timeout_s=2, dicom__associate_timeout_s=1)
    (capture,) = captures(tmp_path / "c", 1)
    bare = socket.create_connection(("127.0.0.1", receiver.port))  # says nothing at all: holds no slot
    ae, (silent,) = _hold(receiver.port, 1)                         # associates, then says nothing
    try:
        assert silent.is_established
        refused = storescu(receiver.port, [capture])
        assert "Association Rejected" in refused.stdout + refused.stderr
        # both silent peers are dropped by the kit, which frees the slot
        bare.settimeout(10)
        assert bare.recv(1) == b""
        assert _wait_until(lambda: silent.is_aborted, 10)
        stored = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = storescu(receiver.port, [capture])
            if stored.returncode == 0:
                break
            time.sleep(0.2)
        assert store_responses(stored) == ["Success"], stored.stdout + stored.stderr
    finally:
        bare.close()
        ae.shutdown()
        receiver.stop()


def test_a_silent_connection_to_the_tls_port_does_not_block_other_probes(kit, tmp_path, need):
    from fieldkit.ingest import dimse_tls

    echoscu = need("echoscu")
    kit.config = kit.config.with_overrides(dicom__tls_port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=True,
                                           dicom__idle_timeout_s=2)
    receiver = dimse_tls.start(kit)
    bare = socket.create_connection(("127.0.0.1", receiver.port))  # no TLS handshake, nothing
    try:
        echo = subprocess.run([echoscu, "+tla", "+cf", str(kit.data_dir / "tls" / "ca.pem"), "-to", "10",
                               "-aec", "FIELDKIT", "127.0.0.1", str(receiver.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        bare.settimeout(10)
        assert bare.recv(1) == b""  # and the silent one is dropped
    finally:
        bare.close()
        receiver.stop()


def test_associations_send_without_nagle_delay_both_ways(kit):
    """DIMSE sends small PDUs back to back (a pending status, then the final one); without
    TCP_NODELAY the second waits for the peer's delayed ACK (about 40 ms on Linux), which
    made every C-FIND and C-MOVE slower than Orthanc's (dcmtk sets it)."""
    receiver = _receiver(kit)
    ae = held = None
    try:
        ae, held = _hold(receiver.port, 1)
        assert held[0].is_established
        accepted = [a for a in receiver._server.ae.active_associations if a.requestor.ae_title == "HOLDER"]
        assert len(accepted) == 1
        assert accepted[0].dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # an association the kit asks for (a C-MOVE's to its destination)
        own = dimse.make_ae(kit.config)
        own.add_requested_context(Verification)
        assoc = own.associate("127.0.0.1", receiver.port, ae_title="FIELDKIT")
        try:
            assert assoc.is_established
            assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
    finally:
        for a in held or []:
            a.release()
        receiver.stop()
