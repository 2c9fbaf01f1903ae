"""Tablet onboarding: how a tablet comes to trust the kit's HTTPS (public, nothing private).

GET /onboarding            the page: a QR code, the CA fingerprint, steps for Android and iPadOS
GET /onboarding/qr.svg     the QR code (also .png), rendered on the kit by segno: no CDN
GET /onboarding/ca.pem     the kit's CA certificate, PEM (also ca.crt, DER, for Android/iOS installers)

The QR code holds one URL: the CA download link on the kit's address, with the CA's
SHA-256 fingerprint in the fragment, e.g.
`https://fieldkit.lan:8443/onboarding/ca.pem#sha256=D2D5…BA`. Scanning it fetches the CA;
the fingerprint lets the person installing it compare it with what the tablet shows.
Only the CA certificate (public by nature) and the kit's address are shown: no patient,
no account, no finding. The page reads no store, so it answers while the kit is locked.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask import Blueprint, Response, render_template, request

from ..errors import NotFound
from . import kit_of

bp = Blueprint("onboarding", __name__)

ROUTE_PERMISSIONS = {
    "onboarding.page": "public",
    "onboarding.qr_svg": "public",
    "onboarding.qr_png": "public",
    "onboarding.ca_pem": "public",
    "onboarding.ca_der": "public",
    "onboarding.css": "public",
}


def ca_path() -> Path:
    return kit_of().data_dir / "tls" / "ca.pem"


@lru_cache(maxsize=4)
def _load_ca(path: str, mtime: float) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def ca_certificate() -> x509.Certificate:
    path = ca_path()
    try:
        return _load_ca(str(path), path.stat().st_mtime)
    except FileNotFoundError:
        raise NotFound("this kit has no CA certificate (run `fieldkit init`)") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as Android and iPadOS show it (AA:BB:…)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def kit_url() -> str:
    """The address tablets use: `onboarding.kit_url` when set (provisioning sets it to the
    kit's name on its own Wi-Fi), else the address this page was opened with."""
    configured = str(kit_of().config.get("onboarding.kit_url", "") or "").strip()
    if configured:
        return configured.rstrip("/") + "/"
    parts = urlsplit(request.host_url)
    return f"https://{parts.netloc}/"


def qr_payload() -> str:
    fp = fingerprint(ca_certificate()).replace(":", "")
    return f"{kit_url()}onboarding/ca.pem#sha256={fp}"


@lru_cache(maxsize=8)
def _qr(payload: str, kind: str) -> bytes:
    import segno
    qr = segno.make(payload, error="m", micro=False)
    buf = io.BytesIO()
    if kind == "svg":
        qr.save(buf, kind="svg", scale=6, border=4, dark="#000", light="#fff", xmldecl=False,
                svgns=True, title="Scan to trust this kit")
    else:
        qr.save(buf, kind="png", scale=8, border=4)
    return buf.getvalue()


_NO_STORE = {"Cache-Control": "no-store"}


@bp.get("/onboarding")
def page():
    cert = ca_certificate()
    fp = fingerprint(cert)
    return render_template(
        "onboarding.html", kit_url=kit_url(), payload=qr_payload(), fingerprint=fp,
        fingerprint_groups=[fp[i:i + 24].rstrip(":") for i in range(0, len(fp), 24)],
        kit_id=kit_of().config["kit.id"], not_after=cert.not_valid_after_utc,
        ca_name=cert.subject.rfc4514_string())


@bp.get("/onboarding/qr.svg")
def qr_svg():
    return Response(_qr(qr_payload(), "svg"), mimetype="image/svg+xml", headers=_NO_STORE)


@bp.get("/onboarding/qr.png")
def qr_png():
    return Response(_qr(qr_payload(), "png"), mimetype="image/png", headers=_NO_STORE)


@bp.get("/onboarding/ca.pem")
def ca_pem():
    data = ca_certificate().public_bytes(serialization.Encoding.PEM)
    return Response(data, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": 'attachment; filename="fieldkit-ca.pem"'})


@bp.get("/onboarding/ca.crt")
def ca_der():
    # DER with this type is what Android's and iPadOS's certificate installers expect
    data = ca_certificate().public_bytes(serialization.Encoding.DER)
    return Response(data, mimetype="application/x-x509-ca-cert",
                    headers={"Content-Disposition": 'attachment; filename="fieldkit-ca.crt"'})


CSS = """
body{font:18px/1.5 system-ui,sans-serif;margin:0;background:#fff;color:#111}
main{max-width:46rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.25rem;margin-top:1.5rem}
.qr{display:block;width:min(80vw,320px);height:auto;margin:1rem auto;border:1px solid #ccc;image-rendering:pixelated}
.fp{font:1.05rem/1.6 ui-monospace,monospace;background:#f3f3f3;padding:.5rem;border-radius:.3rem;word-break:break-all}
a.button{display:inline-block;min-height:48px;padding:.7rem 1.2rem;margin:.3rem .3rem .3rem 0;background:#08703a;color:#fff;
text-decoration:none;border-radius:.4rem;font-weight:600}
ol li{margin:.4rem 0}.note{color:#444;font-size:.95rem}
"""


@bp.get("/onboarding/onboarding.css")
def css():
    return Response(CSS, mimetype="text/css", headers={"Cache-Control": "max-age=3600"})
