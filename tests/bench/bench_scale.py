"""Scale benchmark (measured, never asserted): does the kit stay as fast at 100 000
instance rows as at 1 000?

One kit grows to each size in turn (small generated US images, 10 captures per patient,
one study each, the patients triaged under their tag and the captures carrying it as
PatientID, put through the store API in-process, 500 per journal record; each batch's
jobs are then leased and acknowledged through the queue API, as the analysis and sync
workers would have done). Then a real `fieldkit serve` runs on it with:

- simulated tablets that do what the tablet pages do (board.js, patient.js, device.js,
  common.js `live()`): a board tablet loads the board's first page, opens the live stream
  with `board=1` from the page's `live_id` and from then on only takes the per-patient
  cards (`board.row`) the stream sends, loading the first page again only when the stream
  says it could not replay (`resumed: false` or `refetch`), as the page does; on one
  visit in three it also loads the next page ("Show more"), on one in four it searches
  for a tag (`q=`); it asks
  `/api/v1/status` on load and every 30 s (the disk banner). Now and then (every 20-40 s)
  it opens a patient's page (the patient, its own live stream, the patient again on an
  event naming them, 5-15 s there) and goes back to the board, which loads it again.
  One tablet in four has the device page open instead (`/api/v1/ui/device` every 10 s,
  its live stream open). A stream that ends (`ui.live_max_seconds`) reconnects with the
  last event id, as the browser does;
- a DICOMweb client running QIDO (one study's instances every 0.5 s);
- storescu as the probe sending 5 cines per association.

At every size it prints p95 latencies, the board cards received by the tablets, and the
probe's C-STORE rate; at the end one ratio line per figure (largest size ÷ smallest; when the
soak is longer than the other loads, the largest size over its first SCALE_SECONDS, with the
whole soak's figure beside it: what the probe stored meanwhile grows with time, not rows), QIDO
against a real Orthanc holding the same instances (measured side by side while both are
idle), and the serve RSS over a longer soak at the largest size.

    SCALE_SIZES=1000,10000,100000  sizes to grow to (cumulative, ascending)
    SCALE_SECONDS=60               load duration at each size
    SCALE_SOAK_SECONDS=120         load duration at the largest size (RSS sampled; the issue's figure is 600)
    SCALE_TABLETS=20
    SCALE_ORTHANC_MAX=10000        most instances loaded into Orthanc (0: no Orthanc)
    SCALE_PROBE=1                  0: no probe sends during the load (a leak check: nothing is stored,
                                   so the serve's memory should not grow at all)
    SCALE_DIR=                     keep the grown kit in this directory and reuse it on the next run
                                   (sizes it already holds are not grown again), so two versions
                                   of the code can be measured on the same rows: the kit is kept
                                   as grown to each size (`at-<size>`), and each load runs on a
                                   fresh copy of it, so the probe's captures of one run are not in
                                   the next

    python tests/bench/bench_scale.py   (part of `make bench`)
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import requests  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from fixtures.ui import capture_file, start_ui_kit  # noqa: E402
from kitproc import KitProcess  # noqa: E402
from test_ui_live import _signed_in  # noqa: E402

SIZES = [int(s) for s in os.environ.get("SCALE_SIZES", "1000,10000,100000").split(",")]
SECONDS = float(os.environ.get("SCALE_SECONDS", "60"))
SOAK_SECONDS = float(os.environ.get("SCALE_SOAK_SECONDS", "120"))
TABLETS = int(os.environ.get("SCALE_TABLETS", "20"))
ORTHANC_MAX = int(os.environ.get("SCALE_ORTHANC_MAX", "10000"))
PROBE = os.environ.get("SCALE_PROBE", "1") != "0"
KEEP_DIR = os.environ.get("SCALE_DIR", "")
PER_PATIENT = 10
BATCH = 500
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- the generated captures (synthetic images, no patient data) ----------------------------

def _template(n: int) -> bytes:
    p = n // PER_PATIENT
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE
    ds.SOPClassUID = US_IMAGE
    ds.SOPInstanceUID = f"2.25.77{n:09d}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = f"2.25.78{p:09d}"
    ds.SeriesInstanceUID = f"2.25.79{p:09d}"
    ds.PatientID = f"SCALE{p:06d}"
    ds.PatientName = f"Scale^{p:06d}"
    ds.AccessionNumber = f"ACC{p:06d}"
    ds.StudyDate = f"2026{1 + p % 12:02d}{1 + p % 28:02d}"
    ds.StudyID = "1"
    ds.Modality = "US"
    ds.SeriesNumber = 1
    ds.InstanceNumber = n % PER_PATIENT + 1
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_TEMPLATE = _template(0)


def capture(n: int) -> bytes:
    """Instance n: patient n // 10 (PatientID "SCALE<p>", the triage tag the kit knows them
    by), their one study, a 64×48 grey US frame. Deterministic, so the kit and Orthanc get
    the same objects. Every varying value has a fixed length, so a byte substitution in one
    encoded template makes it (pydicom per object is the slow part)."""
    p = n // PER_PATIENT
    out = _TEMPLATE
    for old, new in ((b"2.25.77000000000", f"2.25.77{n:09d}"), (b"2.25.78000000000", f"2.25.78{p:09d}"),
                     (b"2.25.79000000000", f"2.25.79{p:09d}"), (b"SCALE000000", f"SCALE{p:06d}"),
                     (b"Scale^000000", f"Scale^{p:06d}"), (b"ACC000000", f"ACC{p:06d}"),
                     (b"20260101", f"2026{1 + p % 12:02d}{1 + p % 28:02d}")):
        out = out.replace(old, new.encode())
    inum = str(n % PER_PATIENT + 1).encode()
    # InstanceNumber (IS, padded to even length): tag 0020,0013
    out = out.replace(b"\x20\x00\x13\x00IS\x02\x001 ", b"\x20\x00\x13\x00IS\x02\x00" + inum.ljust(2))
    return out


def finish_jobs(store) -> int:
    """Lease and acknowledge every ready job through the queue API, in one journal record
    (nested writes join the outer one), as the workers would have done one by one: done
    rows beyond the newest few leave the table and are only counted, as on a running kit."""
    from fieldkit.records import KINDS

    def fn(db):
        n = 0
        for kind in KINDS:
            while (row := store.queue.lease(kind, lease_seconds=60)) is not None:
                store.queue.ack(row.id)
                n += 1
        return n
    return store.write(fn)


def add_patients(store, start: int, stop: int) -> None:
    """The patients of instances start..stop-1 that are new, triaged on a tablet under their
    tag (one journal record): the captures then link to them by PatientID."""
    from fieldkit.records import TRIAGE_CATEGORIES
    from fieldkit.store import patients

    def fn(db):
        for p in range((start + PER_PATIENT - 1) // PER_PATIENT, (stop + PER_PATIENT - 1) // PER_PATIENT):
            patients.create_patient(store, tag=f"SCALE{p:06d}", triage=TRIAGE_CATEGORIES[p % 4])
    store.write(fn)


def grow(data_dir: Path, start: int, stop: int) -> float:
    """Put instances start..stop-1 through the store API, a batch (one journal record) at
    a time, their patients first; each batch's jobs are then finished, as on a kit that has been analysing and
    syncing all along. Returns seconds taken."""
    from fieldkit.kit import open_kit
    from fieldkit.dicom.prepare import prepare
    from fieldkit.store.instances import Batch

    t0 = time.perf_counter()
    thumb = prepare(capture(0)).thumbnail
    kit = open_kit(data_dir)
    try:
        for first in range(start, stop, BATCH):
            add_patients(kit.store, first, min(stop, first + BATCH))
            batch = Batch(kit.store, "import")
            for n in range(first, min(stop, first + BATCH)):
                # every frame is the same, so its preview is made once, not 100 000 times
                batch.add(dataclasses.replace(prepare(capture(n), thumbnail=False), thumbnail=thumb))
            batch.commit()
            finish_jobs(kit.store)
            if (first + BATCH) % 10000 == 0:
                print(f"    {first + BATCH} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        kit.close()
    return time.perf_counter() - t0


def load_orthanc(orthanc, start: int, stop: int) -> float:
    t0 = time.perf_counter()
    local = threading.local()

    def post(n: int) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        r = s.post(orthanc.rest_url + "/instances", data=capture(n), auth=orthanc.auth, timeout=60)
        r.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, range(start, stop)))
    return time.perf_counter() - t0


class LiveStream:
    """A tablet page's live stream (common.js `live()`): read in a thread; when the server
    ends it, it reconnects from the last event id, as the browser does. `resync` is set
    when the stream says it could not replay what was missed (the page refetches)."""

    def __init__(self, session: requests.Session, url: str, stop: threading.Event, board: bool = False,
                 last: str = "", on_event=None):
        self.session, self.url, self.stop, self.board = session, url, stop, board
        self.last, self.on_event = last, on_event
        self.rows = 0          # board cards received
        self.connected = False
        self.resync = threading.Event()
        self.closed = threading.Event()
        self.resp = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _attempt in range(1000):  # bounded: a stream lives minutes, a run at most an hour
            if self.stop.is_set() or self.closed.is_set():
                return
            params = {"board": "1"} if self.board else {}
            if self.last:
                params["last"] = self.last
            try:
                self.resp = self.session.get(self.url + "/api/v1/live", params=params, stream=True, timeout=(30, 60))
                if self.resp.status_code != 200:  # refused (busy): the page polls, then tries again
                    self.resync.set()
                    self.resp.close()
                    if self.stop.wait(5.0):
                        return
                    continue
                self.connected = True
                self._read(self.resp)
            except Exception:  # the stream broke, or the page closed it under the reader
                if self.closed.is_set():
                    return
            if self.stop.wait(2.0):  # the browser's retry delay
                return

    def _read(self, resp) -> None:
        topic, ident = None, None
        for line in resp.iter_lines(decode_unicode=True):
            if self.closed.is_set():
                return
            if line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("event: "):
                topic = line[7:]
            elif line.startswith("data: ") and topic:
                data = json.loads(line[6:])
                if ident:
                    self.last = ident
                if topic == "board.row":
                    self.rows += 1
                elif topic == "refetch" or (topic == "hello" and not data.get("resumed")):
                    self.resync.set()
                elif self.on_event is not None:
                    self.on_event(topic, data)
                topic, ident = None, None

    def close(self) -> None:
        self.closed.set()
        if self.resp is not None:
            self.resp.close()


# -- the load ------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def kit_ids(kit: KitProcess, size: int) -> tuple[list[str], list[str]]:
    """(kit patient ids, study UIDs) of the generated captures, as the kit's QIDO gives them."""
    token = kit.token("dicomweb-client")
    pids = []
    studies = [f"2.25.78{p:09d}" for p in range(size // PER_PATIENT)]
    for study in random.Random(1).sample(studies, min(20, len(studies))):
        r = requests.get(kit.url + f"/dicom-web/studies?StudyInstanceUID={study}", verify=kit.ca, timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"})
        r.raise_for_status()
        pids.append(r.json()[0]["00100020"]["Value"][0])
    return pids, studies


def qido_pair(kit: KitProcess, token: str, orthanc, studies: list[str], rounds: int = 30) -> dict:
    """QIDO one-study and a filtered study search, kit and Orthanc alternating, both idle."""
    rng = random.Random(2)
    kit_s, orth_s = requests.Session(), requests.Session()
    kit_s.verify, kit_s.trust_env, orth_s.trust_env = kit.ca, False, False
    kit_s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"})
    orth_s.headers["Accept"] = "application/dicom+json"
    orth_s.auth = orthanc.auth
    out = {"kit one-study": [], "orthanc one-study": [], "kit search": [], "orthanc search": []}
    for _ in range(rounds):
        study = rng.choice(studies)
        acc = "ACC" + study[-6:]
        for who, s, base in (("kit", kit_s, kit.url + "/dicom-web"), ("orthanc", orth_s, orthanc.base_url)):
            for what, path in (("one-study", f"/studies/{study}/instances"),
                               ("search", f"/studies?AccessionNumber={acc}&StudyDate=20260101-20261231")):
                t0 = time.perf_counter()
                r = s.get(base + path, timeout=60)
                dt = time.perf_counter() - t0
                if r.status_code == 200 and r.json():
                    out[f"{who} {what}"].append(dt)
    return out


def run_load(kit: KitProcess, tmp: Path, pids: list[str], studies: list[str], seconds: float,
             sample_rss: bool) -> dict:
    lat: dict[str, list[float]] = {"board": [], "board next": [], "board search": [], "patient": [], "status": [],
                                   "device": [], "qido": []}
    cards, resyncs, signin_retries = [0], [0], [0]  # board cards the streams brought; board refetches
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    streams: list[LiveStream] = []
    probe: list[tuple[int, float]] = []
    probe_first: list[tuple[int, float]] = []  # the associations that started in the first SECONDS
    # latencies of the requests that started in the first SECONDS of the load: the longer soak
    # compares with the other sizes over the same duration (what the probe stored meanwhile
    # grows with the duration, not with the rows)
    first: dict[str, list[float]] = {k: [] for k in ("board", "board next", "board search", "patient", "status",
                                                      "device", "qido")}
    began = time.monotonic()
    rss: list[tuple[float, float, int]] = []  # (seconds, MB, captures stored so far)
    token = kit.token("dicomweb-client")

    def timed(s: requests.Session, kind: str, url: str) -> dict | None:
        """A timed GET; its JSON (what the page uses), None when it failed."""
        early = time.monotonic() - began <= SECONDS
        t0 = time.perf_counter()
        try:
            r = s.get(url, timeout=120)
            ok, detail = r.status_code == 200, f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            r, ok, detail = None, False, type(exc).__name__
        dt = time.perf_counter() - t0
        with lock:
            if ok:
                lat[kind].append(dt)
                if early:
                    first[kind].append(dt)
            else:
                errors.append(f"{kind}: {detail}")
        return r.json() if ok else None

    def board_page(s: requests.Session, rng: random.Random) -> list[str]:
        """board.js: the board's first page, its stream from the page's live_id, the disk
        banner's status on load and every 30 s; sometimes the next page or a search; the
        first page again only when the stream cannot replay. Returns the patients shown
        (the cards a person may open)."""
        board = timed(s, "board", kit.url + "/api/v1/ui/board")
        timed(s, "status", kit.url + "/api/v1/status")
        shown = [p["id"] for p in (board or {}).get("patients", []) if not p.get("unassigned")]
        if board and board.get("next") and rng.random() < 1 / 3:
            page = timed(s, "board next", kit.url + "/api/v1/ui/board?after=" + board["next"])
            shown += [p["id"] for p in (page or {}).get("patients", []) if not p.get("unassigned")]
        if rng.random() < 1 / 4:
            found = timed(s, "board search", kit.url + f"/api/v1/ui/board?q={rng.choice(pids)}")
            shown += [p["id"] for p in (found or {}).get("patients", [])]
        st = LiveStream(s, kit.url, stop, board=True, last=(board or {}).get("live_id", ""))
        streams.append(st)
        until, banner = time.monotonic() + rng.uniform(20, 40), time.monotonic() + 30
        while not stop.wait(0.25) and time.monotonic() < until:
            if st.resync.is_set():
                st.resync.clear()
                board = timed(s, "board", kit.url + "/api/v1/ui/board") or board
                with lock:
                    resyncs[0] += 1
            if time.monotonic() >= banner:
                banner += 30
                timed(s, "status", kit.url + "/api/v1/status")
        st.close()
        with lock:
            cards[0] += st.rows
        return shown + pids

    def patient_page(s: requests.Session, rng: random.Random, pid: str) -> None:
        """patient.js: the patient, its stream; the patient again (200 ms later) on an event
        naming them; 5-15 s there."""
        changed = threading.Event()
        timed(s, "patient", kit.url + f"/api/v1/ui/patients/{pid}")
        st = LiveStream(s, kit.url, stop, on_event=lambda t, d: d.get("patient_id") == pid and changed.set())
        until = time.monotonic() + rng.uniform(5, 15)
        while not stop.wait(0.25) and time.monotonic() < until:
            if changed.is_set() or st.resync.is_set():
                changed.clear()
                st.resync.clear()
                stop.wait(0.2)
                timed(s, "patient", kit.url + f"/api/v1/ui/patients/{pid}")
        st.close()

    def device_page(s: requests.Session) -> None:
        """device.js: /api/v1/ui/device on load and every 10 s, its stream open."""
        st = LiveStream(s, kit.url, stop)
        streams.append(st)
        while not stop.is_set():
            timed(s, "device", kit.url + "/api/v1/ui/device")
            stop.wait(10.0)
        st.close()

    def tablet(n: int) -> None:
        s = None
        while s is None:  # a slow kit times sign-ins out: the tablet tries again, as a person would
            try:
                s = _signed_in(kit)
            except Exception:  # "busy with other sign-ins" (503), as a person would see it
                with lock:
                    signin_retries[0] += 1
                if stop.wait(2.0):
                    return
        rng = random.Random(n)
        if n % 4 == 0:
            device_page(s)
            return
        while not stop.is_set():
            on_board = board_page(s, rng)
            if not stop.is_set():
                patient_page(s, rng, rng.choice(on_board))

    def pacs() -> None:
        s = requests.Session()
        s.verify, s.trust_env = kit.ca, False
        s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"})
        rng = random.Random(3)
        while not stop.wait(0.5):
            timed(s, "qido", kit.url + f"/dicom-web/studies/{rng.choice(studies)}/instances")

    def prober() -> None:
        cines = [capture_file(tmp, patient_id=f"PROBE{k}", name=f"cine{k}.dcm") for k in range(5)]
        while not stop.is_set():
            for c in cines:  # fresh UIDs each round, so every C-STORE stores
                ds = pydicom.dcmread(c)
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(c, enforce_file_format=True)
            early = time.monotonic() - began <= SECONDS
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(["storescu", "-xy", "-aec", "FIELDKIT", "127.0.0.1", str(kit.dicom_port),
                                       *map(str, cines)], capture_output=True, text=True, timeout=300)
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            with lock:
                if ok:
                    probe.append((len(cines), time.perf_counter() - t0))
                    if early:
                        probe_first.append(probe[-1])
                else:
                    errors.append("storescu failed")
            stop.wait(1.0)

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.wait(5.0):
            with lock:
                stored = sum(n for n, _ in probe)
            rss.append((time.monotonic() - t0, rss_mb(kit.proc.pid), stored))

    threads = [threading.Thread(target=tablet, args=(n,), daemon=True) for n in range(TABLETS)]
    threads.append(threading.Thread(target=pacs, daemon=True))
    if PROBE:
        threads.append(threading.Thread(target=prober, daemon=True))
    if sample_rss:
        threads.append(threading.Thread(target=sampler, daemon=True))
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(330)
    held = sum(1 for st in streams if st.connected)
    sent = sum(n for n, _ in probe)
    rate = sent / sum(dt for _, dt in probe) if probe else float("nan")
    rate_first = (sum(n for n, _ in probe_first) / sum(dt for _, dt in probe_first)) if probe_first else float("nan")
    return {"lat": lat, "first": first, "rate_first": rate_first, "errors": errors, "held": held, "rate": rate,
            "sent": sent, "rss": rss,
            "cards": cards[0], "resyncs": resyncs[0], "opened": len(streams), "signin_retries": signin_retries[0],
            "hung": sum(t.is_alive() for t in threads)}


# -- the run -------------------------------------------------------------------------------

def _exit_on_sigterm(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so every process it started is stopped
    results: dict[int, dict] = {}
    qido: dict[int, dict] = {}
    soak: dict = {}
    orthanc = None

    def config(data_dir):
        from kitproc import set_config
        # the simulated tablets all connect from one loopback address
        set_config(data_dir, http__threads=TABLETS + 12, http__max_connections_per_address=4 * TABLETS + 32)

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(KEEP_DIR or tmp)
        grown = tmp / "rows-grown"  # how many rows the kept kit holds
        if KEEP_DIR and grown.exists():
            kit = KitProcess(tmp / "kit")
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            kit = start_ui_kit(tmp, before_serve=config)  # init + clinician account
            kit.stop()
            grown.write_text("0")
        try:
            if ORTHANC_MAX > 0:
                from fixtures.orthanc import start_orthanc
                try:
                    orthanc = start_orthanc(tmp / "orthanc", extra={"HttpThreadsCount": 4})
                except RuntimeError as exc:
                    print(f"no Orthanc comparison: {exc}")
            have = int(grown.read_text())
            grown_dir = kit.data_dir
            in_orthanc = 0
            for size in SIZES:
                kept = tmp / f"at-{size}"  # the kit as grown to this size (with SCALE_DIR)
                if not (KEEP_DIR and kept.exists()):
                    if size > have:
                        took = grow(grown_dir, have, size)
                        print(f"grew the kit {have} -> {size} instance rows in {took:.0f} s "
                              f"({(size - have) / took:.0f} rows/s, in-process store API)", flush=True)
                        have = size
                        grown.write_text(str(have))
                    elif size < have:
                        raise SystemExit(f"{KEEP_DIR} already holds {have} rows, more than {size}")
                    if KEEP_DIR:
                        subprocess.run(["cp", "-a", str(grown_dir), str(kept)], check=True)
                if orthanc is not None and in_orthanc < min(size, ORTHANC_MAX):
                    top = min(size, ORTHANC_MAX)
                    took = load_orthanc(orthanc, in_orthanc, top)
                    print(f"loaded Orthanc {in_orthanc} -> {top} instances in {took:.0f} s "
                          f"({(top - in_orthanc) / took:.0f}/s over REST)", flush=True)
                    in_orthanc = top
                run_dir = grown_dir
                if KEEP_DIR:  # a fresh copy of the kept rows for this load
                    run_dir = tmp / "run" / "kit"
                    subprocess.run(["rm", "-rf", str(run_dir.parent)], check=True)
                    run_dir.parent.mkdir()
                    subprocess.run(["cp", "-a", str(kept), str(run_dir)], check=True)
                kit = KitProcess(run_dir)
                t0 = time.perf_counter()
                kit.start(timeout=600)
                print(f"  serve started on {size} rows in {time.perf_counter() - t0:.1f} s; "
                      f"RSS {rss_mb(kit.proc.pid):.0f} MB", flush=True)
                try:
                    t0 = time.perf_counter()
                    _signed_in(kit).get(kit.url + "/api/v1/ui/board", timeout=600).raise_for_status()
                    print(f"  first board page {time.perf_counter() - t0:.1f} s after serve started "
                          "(the board is built once, at start)", flush=True)
                    pids, studies = kit_ids(kit, size)
                    if orthanc is not None and in_orthanc == size:
                        qido[size] = qido_pair(kit, kit.token("dicomweb-client"), orthanc, studies[:in_orthanc // PER_PATIENT])
                    last = size == SIZES[-1]
                    res = run_load(kit, tmp, pids, studies, SOAK_SECONDS if last else SECONDS, sample_rss=last)
                    res["rss_end"] = rss_mb(kit.proc.pid)
                    results[size] = res
                    report_size(size, res)
                    if size in qido:
                        report_qido(size, qido[size])
                    if last:
                        soak = res
                finally:
                    kit.stop(timeout=60)
        finally:
            kit.stop(timeout=60)
            if orthanc is not None:
                orthanc.stop(timeout=10)
    report_ratios(results, qido, soak)


def report_size(size: int, res: dict) -> None:
    lat = res["lat"]
    parts = [f"{k} p50 {pct(v, .5) * 1e3:.0f} p95 {pct(v, .95) * 1e3:.0f} ms (n={len(v)})" for k, v in lat.items()]
    print(f"  @ {size} rows, {TABLETS} tablets ({res['held']} of {res['opened']} board/device streams connected, "
          f"{res['cards']} board cards received, {res['resyncs']} board refetches, "
          f"{res['signin_retries']} sign-ins retried): " + "; ".join(parts))
    print(f"  probe: {res['sent']} cines, {res['rate']:.2f} C-STORE/s; serve RSS {res['rss_end']:.0f} MB; "
          f"errors {len(res['errors'])}" + (f" (first: {res['errors'][:3]})" if res["errors"] else "")
          + (f"; {res['hung']} load threads did not stop" if res["hung"] else "")
          + f"; load average {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)", flush=True)


def report_qido(size: int, q: dict) -> None:
    for what in ("one-study", "search"):
        k, o = statistics.median(q[f"kit {what}"] or [float("nan")]), statistics.median(q[f"orthanc {what}"] or [float("nan")])
        print(f"  QIDO {what} @ {size} (idle, alternating): kit median {k * 1e3:.1f} ms, Orthanc {o * 1e3:.1f} ms")


def report_ratios(results: dict, qido: dict, soak: dict) -> None:
    if not results:
        return
    lo, hi = min(results), max(results)
    # the largest size over the same first SECONDS as the others (its soak runs longer)
    longer = SOAK_SECONDS > SECONDS and len(results) > 1
    big = "first" if longer else "lat"
    print(f"== ratios, {hi} rows ÷ {lo} rows (targets from the issue)"
          + (f"; at {hi} rows over the soak's first {SECONDS:.0f} s, as long as the other sizes' loads" if longer else ""))
    for kind, name in (("board", "board first page"), ("board next", "board next page"),
                       ("board search", "board search"), ("patient", "patient page"), ("qido", "QIDO one-study"),
                       ("status", "/api/v1/status"), ("device", "device page")):
        a, b = pct(results[lo]["lat"][kind], .95), pct(results[hi][big][kind], .95)
        print(f"{name} p95 ratio {hi}/{lo}: {b / a:.2f} ({a * 1e3:.0f} -> {b * 1e3:.0f} ms; target <= 1.5)"
              + (f"; whole soak {pct(results[hi]['lat'][kind], .95) * 1e3:.0f} ms" if longer else ""))
    a, b = results[lo]["rate"], results[hi]["rate_first" if longer else "rate"]
    print(f"probe C-STORE rate ratio {hi}/{lo}: {b / a:.2f} ({a:.2f} -> {b:.2f} /s; target >= 0.9)"
          + (f"; whole soak {results[hi]['rate']:.2f} /s" if longer else ""))
    if qido:
        at = max(qido)
        q = qido[at]
        for what in ("one-study", "search"):
            k, o = statistics.median(q[f"kit {what}"] or [float("nan")]), statistics.median(q[f"orthanc {what}"] or [float("nan")])
            print(f"QIDO {what} speed kit/Orthanc at {at} instances: {o / k:.2f} (kit {k * 1e3:.1f} ms, "
                  f"Orthanc {o * 1e3:.1f} ms; target >= 1.0)" + ("" if at == hi else f" [Orthanc capped at {at}]"))
    if soak.get("rss"):
        samples = soak["rss"]
        end_t, end_mb, end_n = samples[-1]
        _, first_mb, first_n = next(s for s in samples if s[0] >= end_t / 2)
        added = end_n - first_n
        print(f"serve RSS after {end_t:.0f} s of load at {hi} rows: {end_mb:.0f} MB (target <= 500); "
              f"growth over the last half: {end_mb - first_mb:+.0f} MB (target 0), while the probe stored "
              f"{added} more captures (the catalogue grows by about 2.2 KB a row)")


if __name__ == "__main__":
    main()
