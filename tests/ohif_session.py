"""Replay the OHIF v3 request sequence recorded in `tests/data/ohif_session.json` against a
DICOMweb server (the kit, or Orthanc for the benchmark), the way OHIF walks it: the study
list, then each study's series, each series' metadata and thumbnail, each palette LUT the
metadata points at, and every frame of every image. Series and instances are discovered
from the server's own answers, as a viewer does.

`replay` returns every exchange (request, URL, what it was about, the answer with its
bytes on the wire and decoded); tests check them, benchmarks count them.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin

import requests

SESSION = Path(__file__).parent / "data" / "ohif_session.json"
# palette colour LUT data (0028,1201-1203) and segmented LUT data (0028,1221-1223)
LUT_TAGS = ("00281201", "00281202", "00281203", "00281221", "00281222", "00281223")
# a browser's Accept-Encoding, less br (which the test client cannot decode)
ACCEPT_ENCODING = "gzip, deflate"


@dataclass
class Reply:
    status: int
    headers: requests.structures.CaseInsensitiveDict
    wire: bytes  # the body as sent, still content-encoded
    body: bytes  # the body decoded


@dataclass
class Exchange:
    request: dict  # the recorded request
    url: str
    about: dict = field(default_factory=dict)  # study, series, sop, frame, tag, item (metadata of the instance)
    reply: Reply | None = None
    seconds: float = 0.0  # from sending the request to the last byte of the answer


def requests_of_session() -> list[dict]:
    return json.loads(SESSION.read_text())["requests"]


def get(http: requests.Session, url: str, headers: dict) -> Reply:
    r = http.get(url, headers={**headers, "Accept-Encoding": ACCEPT_ENCODING}, timeout=120, stream=True)
    wire = r.raw.read(decode_content=False)
    encoding = r.headers.get("Content-Encoding", "")
    body = wire
    if encoding == "gzip":
        body = zlib.decompress(wire, 16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        body = zlib.decompress(wire)
    return Reply(r.status_code, r.headers, wire, body)


def _fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _first(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def replay(http: requests.Session, root: str, studies: list[str], filters: dict) -> list[Exchange]:
    """Every exchange of one session over `studies` (their UIDs, in the viewer's order).
    `filters`: values for the study list's query placeholders (patient_name, study_date, modality)."""
    recorded = requests_of_session()
    out: list[Exchange] = []

    def ask(each: str, values: dict, about: dict) -> list[Exchange]:
        done = []
        for req in (r for r in recorded if r["each"] == each):
            path = _fill(req["path"], values)
            query = {k: _fill(v, {**filters, **values}) for k, v in req["query"].items()}
            url = urljoin(root.rstrip("/") + "/", path.lstrip("/")) if not path.startswith("http") else path
            if query:
                url += "?" + urlencode(query, safe="*,")
            ex = Exchange(req, url, dict(about))
            t0 = time.perf_counter()
            ex.reply = get(http, url, req["headers"])
            ex.seconds = time.perf_counter() - t0
            out.append(ex)
            done.append(ex)
        return done

    def answer(exchanges: list[Exchange]) -> list[dict]:
        ok = [e for e in exchanges if e.reply.status == 200]
        return json.loads(ok[0].reply.body) if ok else []

    ask("session", {}, {})
    for study in studies:
        series_list = answer(ask("study", {"study": study}, {"study": study}))
        for s in series_list:
            series = _first(s, "0020000E")
            values = {"study": study, "series": series}
            items = answer(ask("series", values, values))
            for item in items:
                sop = _first(item, "00080018")
                here = {**values, "sop": sop}
                for tag in LUT_TAGS:
                    uri = (item.get(tag) or {}).get("BulkDataURI")
                    if uri:
                        ask("lut", {**here, "bulk": uri}, {**here, "tag": tag, "item": item})
                if "00280010" not in item:  # not an image: a viewer asks for no frames
                    continue
                frames = int(_first(item, "00280008") or 1)
                for frame in range(1, frames + 1):
                    ask("image frame", {**here, "frame": frame}, {**here, "frame": frame, "item": item})
    return out
