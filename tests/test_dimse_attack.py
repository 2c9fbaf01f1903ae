"""The DICOM receiver under attack from the kit's own network, with real sockets on loopback:
idle connections neither lock probes out nor stay; one address cannot open more than its
share; a wrong called AE title is refused with its reason and audited; `--bind` covers
DICOM; an object over `dicom.max_object_mb` is refused while it streams, without the kit's
memory growing by its size and without a plaintext file."""

from __future__ import annotations

import io
import socket
import subprocess
import tempfile
import threading
import time

import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from fieldkit.config import Config
from fieldkit.dicom.uids import US_MULTIFRAME
from fieldkit.ingest import dimse
from fieldkit.store import accounts, instances
from fixtures.dcmtk import captures, pydicom_file, store_responses, storescu
from kitproc import KitProcess, set_config, wait_until
from test_canary import _encodings, _files_containing
from test_dimse_associations import _receiver

CANARY = "ZZSTREAMCANARY^Asdfghjkl"


@pytest.fixture(autouse=True)
def _dcmtk(need):
    need("storescu")


def _idle(port, source):
    """A TCP connection that never sends anything."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _closed_by_peer(sock, timeout):
    """True when the kit closes `sock` within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_fifty_idle_connections_do_not_stop_probes_and_are_closed_after_the_deadline(kit, tmp_path):
    receiver = _receiver(kit, dicom__associate_timeout_s=3)
    idle = []
    try:
        # 50 silent sockets from 10 addresses (5 each), opened before the probe sends
        idle = [_idle(receiver.port, f"127.0.0.{2 + i % 10}") for i in range(50)]
        assert wait_until(lambda: sum(receiver.open_connections().values()) == 50, 5)
        files = captures(tmp_path / "c", 8)
        for batch in (files[:4], files[4:]):
            sent = storescu(receiver.port, batch, "-xe", timeout=60)
            assert store_responses(sent) == ["Success"] * 4, sent.stdout + sent.stderr
        assert len(instances.instance_rows(kit.store)) == 8
        # every silent socket is closed by the kit ...
        for s in idle:
            assert _closed_by_peer(s, 10)
        assert wait_until(lambda: receiver.open_connections() == {}, 5)
        # ... at the associate deadline (3 s here), not later
        late = _idle(receiver.port, "127.0.0.2")
        opened = time.monotonic()
        assert _closed_by_peer(late, 10)
        assert 2.5 < time.monotonic() - opened < 6
        late.close()
    finally:
        for s in idle:
            s.close()
        receiver.stop()


def test_one_address_cannot_open_more_than_its_share(kit, tmp_path):
    receiver = _receiver(kit, dicom__max_connections_per_address=3, dicom__associate_timeout_s=6)
    held = []
    try:
        held = [_idle(receiver.port, "127.0.0.3") for _ in range(3)]
        assert wait_until(lambda: receiver.open_connections().get("127.0.0.3") == 3, 5)
        extra = _idle(receiver.port, "127.0.0.3")
        assert _closed_by_peer(extra, 2)  # at once, not after the 6 s deadline
        extra.close()
        for s in held:  # the first three are still open
            s.settimeout(0.2)
            with pytest.raises(socket.timeout):
                s.recv(1)
        # another address (a probe) is not affected
        (capture,) = captures(tmp_path / "c", 1)
        sent = storescu(receiver.port, [capture], "-xe", timeout=60)
        assert store_responses(sent) == ["Success"], sent.stdout + sent.stderr
        # the silent ones are closed at the deadline, which gives their places back
        assert all(_closed_by_peer(s, 10) for s in held)
        assert wait_until(lambda: "127.0.0.3" not in receiver.open_connections(), 5)
        held += [_idle(receiver.port, "127.0.0.3") for _ in range(3)]
        assert wait_until(lambda: receiver.open_connections().get("127.0.0.3") == 3, 5)
        assert not any(_closed_by_peer(s, 0.2) for s in held[-3:])
        # stopping the receiver does not wait for idle connections to time out
        stopping = time.monotonic()
        receiver.stop()
        assert time.monotonic() - stopping < 2
    finally:
        for s in held:
            s.close()
        receiver.stop()


def test_a_wrong_called_ae_title_is_refused_with_its_reason_and_audited(kit, tmp_path):
    receiver = _receiver(kit)
    try:
        (capture,) = captures(tmp_path / "c", 1)
        for _ in range(2):
            refused = storescu(receiver.port, [capture], "-xe", aec="NOTTHEKIT", timeout=60)
            out = refused.stdout + refused.stderr
            assert refused.returncode != 0
            assert "Association Rejected" in out and "Called AE Title Not Recognized" in out, out
        assert instances.instance_rows(kit.store) == []
        audited = [e for e in accounts.audit_events(kit.store) if e["action"] == "dicom.association.refused"]
        assert len(audited) == 1  # the first is audited, the repeat counted
        assert audited[0]["detail"]["reason"] == "called AE title not recognised"
        assert audited[0]["actor"] == "dicom:PROBE"
        assert receiver.refused.list() == []  # not a caller an admin could let in
        sent = storescu(receiver.port, [capture], "-xe", timeout=60)
        assert store_responses(sent) == ["Success"]
        # the association's stores are audited once, when it ends
        assert wait_until(lambda: [e for e in accounts.audit_events(kit.store) if e["action"] == "dicom.store"], 10)
        (summary,) = [e for e in accounts.audit_events(kit.store) if e["action"] == "dicom.store"]
        assert summary["actor"] == "dicom:PROBE" and summary["object"] == "127.0.0.1"
        sent_bytes = capture.stat().st_size  # the data set, without the file meta header
        assert summary["detail"]["stored"] == 1 and 0.9 * sent_bytes < summary["detail"]["bytes"] < sent_bytes
    finally:
        receiver.stop()


def test_bind_covers_dicom_and_dicom_tls_and_a_demo_kit_binds_loopback(data_dir):
    assert Config.load(data_dir / "fieldkit.toml")["dicom.bind"] == "127.0.0.1"  # init --demo
    set_config(data_dir, dicom__bind="0.0.0.0", dicom__tls_port=0)
    kit = KitProcess(data_dir).start()  # --bind 127.0.0.1
    try:
        listening = {c.laddr for c in psutil.net_connections(kind="inet")
                     if c.pid == kit.proc.pid and c.status == psutil.CONN_LISTEN}
        ports = {a.port for a in listening}
        assert {kit.dicom_port, kit.info["dicom_tls_port"], kit.http_port} <= ports, listening
        assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    finally:
        kit.stop()


def _cine(frames: int, name: str = "") -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if name:
        ds.PatientName = name
    ds.PixelData = bytes(ds.PixelData) * frames
    return ds


def _send(port, ds):
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(US_MULTIFRAME, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()
        ae.shutdown()


class _PeakRss:
    """The highest RSS of a process, sampled every 20 ms while in the with block."""

    def __init__(self, pid):
        self._proc = psutil.Process(pid)
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def test_an_object_over_the_limit_is_refused_while_it_streams_without_memory_or_plaintext(data_dir):
    set_config(data_dir, dicom__max_object_mb=16, inference__enabled=False)  # only the receiver grows
    started = time.time()
    kit = KitProcess(data_dir).start()
    try:
        small = _cine(2)
        assert _send(kit.dicom_port, small).Status == 0x0000  # warm up the receiver
        big = _cine(300, CANARY)  # ~69 MB, over the 16 MiB limit
        size = len(big.PixelData)
        with _PeakRss(kit.proc.pid) as rss:
            status = _send(kit.dicom_port, big)
        assert status.Status == 0xA700, status
        assert "16 MiB limit" in status.ErrorComment
        grew = rss.peak - rss.start
        assert grew < size * 0.5, f"kit RSS grew {grew / 1e6:.0f} MB for a {size / 1e6:.0f} MB object"
        # under the limit but spooled (over 4 MiB): stored, and never in clear on disk
        middle = _cine(50, CANARY)  # ~12 MB
        assert _send(kit.dicom_port, middle).Status == 0x0000
        # neither in the data dir nor a temp file (pynetdicom's own chunked receive would
        # have written a plaintext one there)
        needles = _encodings(CANARY)
        assert _files_containing(data_dir, needles, started) == []
        assert _files_containing(tempfile.gettempdir(), needles, started) == []
    finally:
        kit.stop()
    with io.open(kit.log_path, errors="replace") as fh:
        assert "Traceback" not in fh.read()


def test_a_stalled_tls_handshake_is_closed_at_the_deadline(kit, need):
    from fieldkit.ingest import dimse_tls

    echoscu = need("echoscu")
    kit.config = kit.config.with_overrides(dicom__tls_port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=True,
                                           dicom__associate_timeout_s=2)
    receiver = dimse_tls.start(kit)
    stalled = _idle(receiver.port, "127.0.0.4")
    try:
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        echo = subprocess.run([echoscu, "+tla", "+cf", str(kit.data_dir / "tls" / "ca.pem"), "-to", "10",
                               "-aec", "FIELDKIT", "127.0.0.1", str(receiver.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert _closed_by_peer(stalled, 8)
        assert time.monotonic() - started < 8
        assert wait_until(lambda: "127.0.0.4" not in receiver.open_connections(), 5)
    finally:
        stalled.close()
        receiver.stop()


def test_a_damaged_large_object_is_refused_with_a_status_not_a_crash(kit):
    """A cine cut short (its frames do not fill NumberOfFrames) over the 4 MiB memory
    threshold: read back from the spool, refused with a status and a reason."""
    receiver = _receiver(kit)
    try:
        ds = _cine(40)  # ~9 MB
        ds.NumberOfFrames = 50
        status = _send(receiver.port, ds)
        assert status.Status in (0xC000, 0xA900), status
        assert status.ErrorComment
        assert instances.instance_rows(kit.store) == []
        good = _cine(40)
        assert _send(receiver.port, good).Status == 0x0000
        assert instances.get_instance(kit.store, str(good.SOPInstanceUID))["frames"] == 40
    finally:
        receiver.stop()


def test_fuzzed_large_objects_get_a_status_each_and_the_receiver_keeps_working(kit, tmp_path, monkeypatch, caplog):
    """Mutated cines over the memory threshold, sent as raw bytes (pynetdicom's chunked
    send, so the damage reaches the kit as it is): every one gets a DIMSE status, none an
    internal error, and a good object still stores afterwards."""
    import random

    from pynetdicom import _config
    from pynetdicom.dsutils import split_dataset

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    receiver = _receiver(kit)
    rng = random.Random(14)
    base = tmp_path / "base.dcm"
    _cine(25).save_as(base, enforce_file_format=True)  # ~5.8 MB
    _, offset = split_dataset(base)
    raw = base.read_bytes()
    try:
        for i in range(12):
            data = bytearray(raw)
            kind = i % 3
            if kind == 0:  # flipped bytes in the header part of the data set
                for _ in range(30):
                    data[rng.randrange(offset, offset + 4096)] ^= rng.randrange(1, 256)
            elif kind == 1:  # cut short anywhere
                del data[rng.randrange(offset + 8, len(data) - 1):]
            else:  # a huge length where an element's length was
                pos = rng.randrange(offset, offset + 2048)
                data[pos:pos + 4] = b"\xff\xff\xff\x7f"
            path = tmp_path / f"fuzz{i}.dcm"
            path.write_bytes(bytes(data))
            ae = AE(ae_title="PROBE")
            ae.add_requested_context(US_MULTIFRAME, "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="FIELDKIT")
            try:
                status = assoc.send_c_store(path)
            finally:
                assoc.release()
                ae.shutdown()
            assert "Status" in status, f"no answer to mutation {i}"
            assert status.Status != dimse.PROCESSING_FAILURE, (i, status)
        assert "failed unexpectedly" not in caplog.text
        good = _cine(25)
        assert _send(receiver.port, good).Status == 0x0000
    finally:
        receiver.stop()


def test_a_stalled_or_oversized_pdu_before_any_association_is_closed(kit):
    """No AE title needed for either: an A-ASSOCIATE-RQ that stops half way is closed at the
    associate deadline, and one that declares 4 GiB is closed without being buffered."""
    import struct

    receiver = _receiver(kit, dicom__associate_timeout_s=2)
    stalled = _idle(receiver.port, "127.0.0.5")
    huge = _idle(receiver.port, "127.0.0.6")
    try:
        stalled.sendall(struct.pack(">BBL", 1, 0, 1000) + b"x" * 10)
        started = time.monotonic()
        assert _closed_by_peer(stalled, 8)
        assert time.monotonic() - started < 4
        huge.sendall(struct.pack(">BBL", 1, 0, 0xFFFFFFF0))
        sent = 0
        with pytest.raises(OSError):  # broken pipe or reset once the kit has closed it
            while sent < 256 << 20:
                huge.sendall(bytes(1 << 20))
                sent += 1 << 20
        assert sent < 32 << 20, f"the kit read {sent >> 20} MiB of a PDU it cannot take"
        assert wait_until(lambda: receiver.open_connections() == {}, 5)
    finally:
        stalled.close()
        huge.close()
        receiver.stop()
