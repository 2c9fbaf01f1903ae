"""Web front benchmark: a tablet's requests under attack, and STOW-RS with the front.

- A running `fieldkit serve`; a tablet asks for the study list (QIDO-RS, a fresh TLS
  connection each time, as a tablet waking up does) for a while alone, then while 100 idle
  TCP connections and 40 slow-header TLS clients (tests/front_attack.py) hold on: p50/p95
  of each and the ratio p95 under attack / p95 alone (target <= 2.0).
- The same attack against the kit's server stack in-process with a trivial app, cheroot
  alone (as the kit served before the front) and behind the front: answered requests and
  p95, side by side.
- STOW-RS of a 300-instance corpus into the kit and into a real Orthanc (bench_ingest's
  corpus and client), with where a kit request's time goes, and the body-only ceiling of
  cheroot alone and behind the front.

Run: python tests/bench/bench_front.py [--seconds S] [--instances N]. Prints ratio lines;
asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import requests  # noqa: E402
from bench_ingest import make_corpus, stow, stow_breakdown  # noqa: E402
from dicomweb_client.api import DICOMwebClient  # noqa: E402
from front_attack import Attack, tablet_polls  # noqa: E402

from fixtures.orthanc import start_orthanc  # noqa: E402
from kitproc import KitProcess, init_kit  # noqa: E402

TIMEOUT = 5.0  # a tablet request that takes longer counts as failed, at this value


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) > 1 else xs[0]


def describe(took: list[float]) -> str:
    failed = sum(1 for t in took if t >= TIMEOUT)
    return (f"{len(took) - failed}/{len(took)} answered, p50 {statistics.median(took) * 1000:.0f} ms, "
            f"p95 {p95(took) * 1000:.0f} ms")


def under_attack(port: int, url: str, ca: str, headers: dict, seconds: float) -> list[float]:
    with Attack(port, idle=100, slow=40, max_seconds=seconds + 60) as attack:
        # the attack in place (bounded: the old front may never let every attacker in)
        for _ in range(100):
            if attack.opened["idle"] >= 100 and attack.opened["slow"] >= 40:
                break
            attack.stopping.wait(0.1)
        return tablet_polls(url, ca, headers, seconds, timeout=TIMEOUT)


def stack(data_dir: Path, front: bool, body_only: bool = False):
    """The kit's server stack (cheroot, Flask, the kit's TLS adapter and certificate) with a
    trivial app, in this process: with the front, or cheroot alone. -> (server, port, thread)"""
    from cheroot import wsgi
    from flask import Flask, Response, request

    from fieldkit.kit import unlock_data_key
    from fieldkit.kit.serve import _tls_adapter
    from fieldkit.security.secrets import SecretBox
    from fieldkit.security.tls import SERVER_CERT, TLS_DIR, server_key_path
    from fieldkit.web.front import FrontServer

    app = Flask("bench")

    @app.get("/dicom-web/studies")
    def studies():
        return Response("[]", content_type="application/dicom+json")

    @app.post("/dicom-web/studies")
    def store():
        for _ in iter(lambda: request.stream.read(1 << 20), b""):
            pass
        return Response("{}", content_type="application/dicom+json")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if front:
        server = FrontServer(("127.0.0.1", port), app, handshake_timeout_s=5, header_timeout_s=10,
                             max_connections_per_address=32, max_connections=256, numthreads=32, timeout=30)
    else:
        server = wsgi.Server(("127.0.0.1", port), app, numthreads=32, timeout=30)
    server.error_log = lambda msg="", level=20, traceback=False: None  # clients cut off by the attack
    tls = data_dir / TLS_DIR
    with server_key_path(data_dir, SecretBox(unlock_data_key(data_dir))) as key:  # sealed by the data key
        server.ssl_adapter = _tls_adapter(str(tls / SERVER_CERT), key)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    return server, port, thread


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the tablet polls in each phase")
    ap.add_argument("--instances", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-front-"))
    kit = orthanc = None
    try:
        data_dir = init_kit(work / "kit")
        kit = KitProcess(data_dir).start()
        auth = {"Authorization": f"Bearer {kit.token('dicomweb-client')}"}
        url = kit.url + "/dicom-web/studies"

        alone = tablet_polls(url, kit.ca, auth, args.seconds, timeout=TIMEOUT)
        attacked = under_attack(kit.http_port, url, kit.ca, auth, args.seconds)
        print(f"kit, tablet alone:        {describe(alone)}")
        print(f"kit, tablet under attack: {describe(attacked)}")
        print(f"ratio tablet p95 under attack / alone = {p95(attacked) / p95(alone):.2f} (target <= 2.0)")

        for front in (False, True):
            server, port, thread = stack(data_dir, front)
            try:
                took = under_attack(port, f"https://127.0.0.1:{port}/dicom-web/studies", kit.ca, {},
                                    min(args.seconds, 15.0))
            finally:
                server.stop()
                thread.join(10)
            print(f"server stack, {'behind the front' if front else 'cheroot alone'}, under attack: {describe(took)}")

        n = args.instances
        stow_kit = make_corpus(work / "stow-kit", n)
        stow_orthanc = make_corpus(work / "stow-orthanc", n)
        orthanc = start_orthanc(work / "orthanc")
        session = requests.Session()
        session.verify, session.trust_env = kit.ca, False
        kit_client = DICOMwebClient(f"{kit.url}/dicom-web", session=session, headers=auth)
        plain = requests.Session()
        plain.trust_env = False
        spent: list[dict] = []
        t_kit = stow(kit_client, stow_kit, session=session, spent=spent)
        t_orthanc = stow(DICOMwebClient(orthanc.base_url, session=plain), stow_orthanc)
        print(f"STOW-RS: kit {n / t_kit:.1f} inst/s, Orthanc {n / t_orthanc:.1f} inst/s")
        print(stow_breakdown(spent))
        print(f"Orthanc STOW request: {t_orthanc / (n / 10) * 1000:.1f} ms")
        print(f"ratio stow kit/orthanc = {t_orthanc / t_kit:.2f} (target >= 1.5)")
        for front in (False, True):
            server, port, thread = stack(data_dir, front)
            try:
                ceiling_session = requests.Session()
                ceiling_session.verify, ceiling_session.trust_env = kit.ca, False
                t = stow(DICOMwebClient(f"https://127.0.0.1:{port}/dicom-web", session=ceiling_session), stow_kit)
            finally:
                server.stop()
                thread.join(10)
            print(f"body-only ceiling, {'behind the front' if front else 'cheroot alone'}: "
                  f"{t / (n / 10) * 1000:.1f} ms/request, {t_orthanc / t:.2f}x Orthanc")
    finally:
        if kit is not None:
            kit.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
