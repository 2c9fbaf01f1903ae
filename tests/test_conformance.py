"""CONFORMANCE.md stays true: its tables are read and compared with the code they describe
(the receiver's Application Entity, status constants, DICOMweb routes and query keys,
private codes, settings), and a real dcmtk association shows that a transfer syntax the
statement lists as refused is refused while an accepted one is accepted."""

from __future__ import annotations

import importlib
import re
import ssl
from pathlib import Path

import pytest
from flask import Flask
from pydicom.uid import UID

from fieldkit import config as fk_config
from fieldkit.dicom import uids
from fieldkit.ingest import commitment, dimse, qr, worklist
from fieldkit.ingest.dimse import make_ae
from fieldkit.store import instances
from fixtures.dcmtk import pydicom_file, store_responses, storescu

STATEMENT = Path(__file__).resolve().parent.parent / "CONFORMANCE.md"
VERIFICATION = "1.2.840.10008.1.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
COMMITMENT_PUSH = "1.2.840.10008.1.20.1"


def _sections() -> list[tuple[str, list[str]]]:
    """(heading, lines) for every heading of the statement, down to the next heading."""
    out: list[tuple[str, list[str]]] = []
    for line in STATEMENT.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            out.append((line.lstrip("#").strip(), []))
        elif out:
            out[-1][1].append(line)
    return out


def _tables(heading: str) -> list[list[dict[str, str]]]:
    """The tables of the section whose heading contains `heading` (exactly one section)."""
    found = [lines for title, lines in _sections() if heading in title]
    assert len(found) == 1, f"the statement has {len(found)} sections named like {heading!r}"
    tables, rows, header = [], [], None
    for line in found[0] + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells)))
        elif header is not None:
            tables.append(rows)
            rows, header = [], None
    assert tables, f"no table under {heading!r}"
    return tables


def _table(heading: str) -> list[dict[str, str]]:
    tables = _tables(heading)
    assert len(tables) == 1, f"{len(tables)} tables under {heading!r}"
    return tables[0]


def _code(cell: str) -> str:
    """The text in backticks of a cell."""
    m = re.search(r"`([^`]+)`", cell)
    assert m, f"no `value` in {cell!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def contexts() -> dict[str, set[str]]:
    """What the receiver's AE, built as the kit builds it, accepts: SOP class -> syntaxes."""
    ae = make_ae(fk_config.Config({"dicom.allow_any_ae": True}))
    return {str(cx.abstract_syntax): {str(ts) for ts in cx.transfer_syntax} for cx in ae.supported_contexts}


def test_sop_classes_are_exactly_those_the_receiver_accepts(contexts):
    rows = _table("3.2 SOP classes")
    stated = {_code(r["UID"]): r for r in rows}
    assert len(stated) == len(rows), "a SOP class is listed twice"
    assert set(stated) == set(contexts)
    for uid, row in stated.items():
        assert row["Role"].startswith("SCP"), uid
        if uid in uids.ACCEPTED_SOP_CLASSES:
            assert row["SOP Class"] == uids.ACCEPTED_SOP_CLASSES[uid]
        else:
            assert UID(uid).name.removesuffix(" SOP Class") in row["SOP Class"], uid


def test_transfer_syntaxes_per_sop_class_match_the_receiver(contexts):
    storage_rows = _table("Transfer syntaxes accepted for the storage SOP classes")
    storage = [_code(r["UID"]) for r in storage_rows]
    for row in storage_rows:  # a name pydicom knows is the name stated
        uid = _code(row["UID"])
        if UID(uid).name != uid:
            assert row["Transfer Syntax"] == uids.transfer_syntax_name(uid), uid
    others = {_code(r["UID"]) for r in _table("for Verification, Modality Worklist and Storage Commitment")}
    refused = {_code(r["UID"]) for r in _table("Transfer syntaxes refused")}
    assert len(storage) == len(set(storage)), "a transfer syntax is listed twice"
    # the statement says the kit picks the first of the table's order that was proposed
    ae = make_ae(fk_config.Config({"dicom.allow_any_ae": True}))
    us_image = next(cx for cx in ae.supported_contexts if cx.abstract_syntax == uids.US_IMAGE)
    assert [str(ts) for ts in us_image.transfer_syntax] == storage
    for sop_class, syntaxes in contexts.items():
        if sop_class in (VERIFICATION, WORKLIST_FIND, COMMITMENT_PUSH, *qr.SOP_CLASSES):
            assert syntaxes == others, sop_class
        else:
            assert syntaxes == set(storage), sop_class
        assert not syntaxes & refused, sop_class
    assert refused, "the statement names no refused transfer syntax to check"


def test_receiver_limits_stated_are_the_ones_set():
    ae = make_ae(fk_config.Config())
    text = STATEMENT.read_text(encoding="utf-8")
    pdu = re.search(r"Maximum PDU length received: (\d+) MiB", text)
    assert pdu and int(pdu.group(1)) << 20 == ae.maximum_pdu_size
    timeout = re.search(r"DIMSE timeout: (\d+) s", text)
    assert timeout and int(timeout.group(1)) == ae.dimse_timeout
    assert ae.require_called_aet is True  # "The called AE title must be dicom.ae_title"


_NOT_STATUSES = {"REQUEST_COMMIT", "ALL_COMMITTED", "SOME_FAILED", "MAX_CACHED_ANSWERS",
                 "REPORT_TRIES", "WELL_KNOWN_INSTANCE", "LOCKED_COMMENT", "CALLING_NOT_ALLOWED"}


def test_status_codes_listed_are_the_ones_the_services_return():
    rows = _table("3.6 Status codes returned")
    listed = set()
    for row in rows:
        module_name, _, name = _code(row["Constant"]).rpartition(".")
        module = importlib.import_module(f"fieldkit.{module_name}")
        assert getattr(module, name) == int(row["Status"], 16), row
        listed.add((module.__name__, name))
    for module in (dimse, worklist, commitment, qr):
        for name, value in vars(module).items():
            if name.isupper() and type(value) is int and name not in _NOT_STATUSES:
                assert (module.__name__, name) in listed, f"{module.__name__}.{name} is not in the statement"


def test_settings_named_exist_and_every_receiver_setting_is_named():
    text = STATEMENT.read_text(encoding="utf-8")
    sections = {name.split(".")[0] for name in fk_config.SETTINGS}
    audit_actions = {a for module in (dimse, qr)
                     for a in re.findall(r'action="([a-z._]+)"', Path(module.__file__).read_text(encoding="utf-8"))}
    audit_actions |= {dimse.StoreTally.ACTION, qr.QRTally.ACTION}  # the per-association summaries
    named = {m for m in re.findall(r"`([a-z_]+\.[a-z_]+)`", text)
             if m.split(".")[0] in sections and m not in audit_actions}
    assert named, "the statement names no settings"
    assert named <= set(fk_config.SETTINGS), named - set(fk_config.SETTINGS)
    receiver = {name for name in fk_config.SETTINGS if name.startswith("dicom.")}
    assert receiver <= named, receiver - named


def test_dicomweb_resources_are_exactly_the_routes_served():
    from fieldkit.web import dicomweb, wado_uri

    app = Flask(__name__)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(wado_uri.bp)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("dicomweb.", "wado_uri.")):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            served |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    stated = {(r["Method"], _code(r["Path"])) for r in _table("4.1 Resources")}
    assert stated == served


def test_qido_keys_are_exactly_the_ones_matched():
    from fieldkit.web import dicomweb

    stated = {r["Level"]: set(re.findall(r"`([A-Za-z]+)`", r["Supported matching keys"]))
              for r in _table("4.3 QIDO-RS")}
    assert stated == {"Study": dicomweb._STUDY_KEYS, "Series": dicomweb._SERIES_KEYS,
                      "Instance": dicomweb._INSTANCE_KEYS}


def _private_codes_in_code() -> dict[str, str]:
    from highdicom.sr import CodedConcept

    from fieldkit.dicom import worklist as wl
    from fieldkit.inference import sr
    from fieldkit.security import audit_dicom
    from fieldkit.sync import updates

    codes = {c.value: c.meaning for c in vars(sr).values()
             if isinstance(c, CodedConcept) and c.scheme_designator == sr.SCHEME}
    codes.update({v[0]: v[1] for v in (audit_dicom.TITLE, audit_dicom.EVENTS, audit_dicom.HEAD)})
    codes.update({value: meaning for meaning, value in updates._CODES.items()})
    # the two document titles are written where the documents are built
    source = Path(updates.__file__).read_text(encoding="utf-8")
    codes.update(dict(re.findall(r'(?:_code|CodedConcept)\("(FK-[A-Z-]+)", "99FIELDKIT", "([^"]+)"\)', source)))
    assert wl.PROCEDURE_CODE[1] == sr.SCHEME == audit_dicom.SCHEME
    codes[wl.PROCEDURE_CODE[0]] = None  # its meaning is the worklist.procedure setting
    return codes


def test_private_codes_are_exactly_the_ones_written():
    stated = {_code(r["Code value"]): r["Code meaning"] for r in _table("5.2 Private codes")}
    written = _private_codes_in_code()
    assert set(stated) == set(written)
    for value, meaning in written.items():
        if meaning is not None:
            assert stated[value] == meaning, value


def test_tls_profile_stated_is_the_one_applied():
    from fieldkit.security.tls import harden_tls

    ctx = harden_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)
    text = STATEMENT.read_text(encoding="utf-8")
    assert "TLS 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305" in text
    assert all("GCM" in c["name"] or "CHACHA20" in c["name"] for c in tls12)


def _profile(tmp_path: Path, syntax: str) -> Path:
    """A storescu configuration proposing US Image Storage with `syntax` only."""
    cfg = tmp_path / f"{syntax}.cfg"
    cfg.write_text("[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = " + syntax + "\n\n"
                   "[[PresentationContexts]]\n[OnlyPC]\nPresentationContext1 = " + uids.US_IMAGE + "\\Only\n\n"
                   "[[Profiles]]\n[Only]\nPresentationContexts = OnlyPC\n")
    return cfg


def test_a_refused_transfer_syntax_is_refused_by_the_running_receiver(dimse_kit, tmp_path, need):
    need("storescu")
    port = dimse_kit.receiver.port
    # an accepted syntax through the same path is accepted and stored, so the refusals below mean something
    ok = storescu(port, [pydicom_file("examples_rgb_color.dcm")], "-xf", str(_profile(tmp_path, uids.EXPLICIT_LE)), "Only")
    assert ok.returncode == 0, ok.stderr
    assert store_responses(ok) == ["Success"]
    held = len(instances.instance_rows(dimse_kit.store))
    assert held == 1
    for row in _table("Transfer syntaxes refused"):
        syntax = _code(row["UID"])
        proc = storescu(port, [pydicom_file("examples_rgb_color.dcm")], "-d", "-xf", str(_profile(tmp_path, syntax)),
                        "Only")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, syntax
        # one context proposed (with only this syntax), and the kit's answer names why it is refused
        assert out.count("(Proposed)") == 1 and "(Transfer Syntaxes Not Supported)" in out, syntax
        assert store_responses(proc) == []
    assert len(instances.instance_rows(dimse_kit.store)) == held


def test_the_kit_picks_the_first_of_its_order_among_the_syntaxes_proposed(dimse_kit):
    from pynetdicom import AE

    storage = [_code(r["UID"]) for r in _table("Transfer syntaxes accepted for the storage SOP classes")]
    later, earlier = storage[1], storage[0]  # proposed in the opposite order to the kit's
    probe = AE(ae_title="PROBE")
    probe.acse_timeout = probe.network_timeout = 10
    probe.add_requested_context(uids.US_IMAGE, [later, earlier, uids.JPEG_BASELINE])
    assoc = probe.associate("127.0.0.1", dimse_kit.receiver.port, ae_title=dimse_kit.config["dicom.ae_title"])
    try:
        assert assoc.is_established
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [earlier]
    finally:
        assoc.release()
