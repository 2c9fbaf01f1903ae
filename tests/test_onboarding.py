"""Tablet onboarding page: public, a QR code that decodes to the kit's URL and CA fingerprint."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import requests
import zxingcpp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from PIL import Image

from fieldkit.config import Config, render_toml


def ca_fingerprint_hex(data_dir) -> str:
    cert = x509.load_pem_x509_certificate((data_dir / "tls" / "ca.pem").read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def decode_qr(png: bytes) -> str:
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    # the decoder may report the same symbol twice; what matters is one payload
    texts = {r.text for r in results}
    assert len(texts) == 1, f"expected one QR payload, found {sorted(texts)}"
    assert results[0].format == zxingcpp.BarcodeFormat.QRCode
    return results[0].text


def test_onboarding_is_public_and_its_qr_decodes_to_url_and_fingerprint(kit_server):
    ca = kit_server.ca
    page = requests.get(kit_server.url + "/onboarding", verify=ca, timeout=10)  # no sign-in
    assert page.status_code == 200
    assert "Android" in page.text and "iPad" in page.text and "Certificate Trust Settings" in page.text
    fp_hex = ca_fingerprint_hex(kit_server.data_dir)
    fp_colons = ":".join(fp_hex[i:i + 2] for i in range(0, len(fp_hex), 2))
    shown = page.text.replace("<br>", ":").replace("::", ":")
    assert fp_colons in shown

    png = requests.get(kit_server.url + "/onboarding/qr.png", verify=ca, timeout=10)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    payload = decode_qr(png.content)
    # the page was opened at https://127.0.0.1:PORT/, so that is the kit URL it carries
    assert payload == f"{kit_server.url}/onboarding/ca.pem#sha256={fp_hex}"

    svg = requests.get(kit_server.url + "/onboarding/qr.svg", verify=ca, timeout=10)
    assert svg.headers["Content-Type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.content).tag == "{http://www.w3.org/2000/svg}svg"

    # the link in the QR code downloads the very CA the kit's certificate chains to
    pem = requests.get(payload.split("#")[0], verify=ca, timeout=10)
    assert pem.status_code == 200
    assert pem.content == (kit_server.data_dir / "tls" / "ca.pem").read_bytes()
    der = requests.get(kit_server.url + "/onboarding/ca.crt", verify=ca, timeout=10)
    assert der.headers["Content-Type"] == "application/x-x509-ca-cert"
    assert x509.load_der_x509_certificate(der.content).fingerprint(hashes.SHA256()).hex().upper() == fp_hex


def test_configured_kit_url_goes_into_the_qr_and_nothing_private_is_shown(data_dir):
    from fieldkit.kit import open_kit
    from fieldkit.web import create_app
    path = data_dir / "fieldkit.toml"
    values = Config.load(path).as_dict()
    values["onboarding.kit_url"] = "https://fieldkit.lan:8443"
    path.write_text(render_toml(values))
    kit = open_kit(data_dir)
    try:
        kit.store.write(lambda db: db.table("patients").insert({"patient_id": "T-0001", "name": "DOE^JANE"}))
        client = create_app(kit, testing=True).test_client()
        page = client.get("/onboarding", base_url="https://127.0.0.1:9999")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "DOE" not in text and "T-0001" not in text
        assert "https://fieldkit.lan:8443/" in text
        png = client.get("/onboarding/qr.png", base_url="https://127.0.0.1:9999")
        assert decode_qr(png.data) == f"https://fieldkit.lan:8443/onboarding/ca.pem#sha256={ca_fingerprint_hex(data_dir)}"
        assert "Set-Cookie" not in page.headers or "fk_session" not in page.headers["Set-Cookie"]
    finally:
        kit.close()
