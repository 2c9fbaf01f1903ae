"""Signed model bundles: what verifies loads; a changed byte, a bad signature, an unknown
key or a file that is not ONNX is refused with the reason, and the rest still loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fieldkit.config import Config
from fieldkit.inference import bundle as B
from fieldkit.inference.registry import BUILTIN_DIR, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_models_verify_under_the_default_key_and_are_small(registry):
    status = {r["task"]: r for r in registry.status()}
    assert set(status) == {"gate", "lung", "fast"}
    for task, row in status.items():
        assert row["ok"] and row["loaded"], row
        assert registry.get(task) is not None
    for onnx_file in BUILTIN_DIR.glob("*/*.onnx"):
        assert onnx_file.stat().st_size <= 5 * 1024 * 1024, onnx_file
    for manifest in BUILTIN_DIR.glob("*/manifest.json"):
        entry = json.loads(manifest.read_text())
        assert (manifest.parent / entry["model_card"]).is_file()
        assert entry["intended_views"] and entry["labels"] and entry["thresholds"]


def test_one_changed_byte_in_a_model_is_refused_and_the_others_still_load(model_copy):
    onnx_file = model_copy / "lung_bline" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    reg = Registry(Config(), dirs=[model_copy])
    status = {r["name"]: r for r in reg.status()}
    assert not status["lung-bline"]["ok"]
    assert "SHA-256 mismatch" in status["lung-bline"]["status"]
    assert reg.get("lung") is None
    assert reg.get("gate") is not None and reg.get("fast") is not None


def test_a_changed_manifest_breaks_the_signature(model_copy):
    path = model_copy / "fast_fluid" / "manifest.json"
    entry = json.loads(path.read_text())
    entry["thresholds"]["min_area_px"] = 10_000  # would silence every fluid finding
    path.write_text(json.dumps(entry))
    reg = Registry(Config(), dirs=[model_copy])
    row = next(r for r in reg.status() if r["name"] == "fast-fluid")
    assert not row["ok"] and "bad signature" in row["status"]
    assert reg.get("fast") is None and reg.get("gate") is not None


def test_a_bundle_signed_by_an_untrusted_key_is_refused(model_copy, signing_key):
    key, _ = signing_key
    B.sign_bundle(model_copy / "view_quality", key)  # valid signature, but nobody trusts this key
    reg = Registry(Config(), dirs=[model_copy])
    row = next(r for r in reg.status() if r["name"] == "view-quality")
    assert not row["ok"] and "not in inference.trusted_keys" in row["status"]


def test_a_forged_signature_under_the_trusted_key_id_is_refused(model_copy, signing_key):
    key, _ = signing_key
    entry = B.sign_bundle(model_copy / "view_quality", key)
    trusted_id = B.key_id(B.parse_public_key(Config()["inference.trusted_keys"][0]))
    entry["key_id"] = trusted_id  # claim the project's key; the signature cannot match
    entry["signature"] = ""
    entry["signature"] = __import__("base64").b64encode(key.sign(B.canonical(entry))).decode()
    (model_copy / "view_quality" / "manifest.json").write_text(json.dumps(entry))
    row = next(r for r in Registry(Config(), dirs=[model_copy]).status() if r["name"] == "view-quality")
    assert not row["ok"] and "bad signature" in row["status"]


def test_a_hospital_signed_bundle_loads_under_its_own_key(model_copy, signing_key):
    key, config = signing_key
    for d in B.discover([model_copy]):
        B.sign_bundle(d, key)
    reg = Registry(config, dirs=[model_copy])
    assert all(r["ok"] for r in reg.status()) and reg.get("lung") is not None
    # ...and the project's own bundles are no longer trusted by that kit
    assert Registry(config, dirs=[BUILTIN_DIR]).get("lung") is None


def test_a_signed_file_that_is_not_onnx_is_refused(model_copy, signing_key):
    key, config = signing_key
    (model_copy / "fast_fluid" / "model.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    for d in B.discover([model_copy]):
        B.sign_bundle(d, key)
    reg = Registry(config, dirs=[model_copy])
    row = next(r for r in reg.status() if r["name"] == "fast-fluid")
    assert not row["ok"] and "does not load" in row["status"]
    assert reg.get("gate") is not None


def test_an_unreadable_manifest_is_listed_as_refused(model_copy):
    (model_copy / "broken").mkdir()
    (model_copy / "broken" / "manifest.json").write_text("{not json")
    reg = Registry(Config(), dirs=[model_copy])
    row = next(r for r in reg.status() if r["name"] == "broken")
    assert not row["ok"] and "manifest unreadable" in row["status"]
    assert reg.get("lung") is not None


def test_cli_models_list_and_verify(model_copy, tmp_path):
    from fieldkit.cli import main
    runner = CliRunner()
    out = runner.invoke(main, ["models", "verify"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("verified") for line in lines), out.output
    out = runner.invoke(main, ["models", "list"])
    assert out.exit_code == 0 and "lung-bline" in out.output and "view-quality" in out.output

    onnx_file = model_copy / "view_quality" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\x00")
    out = runner.invoke(main, ["models", "verify", str(model_copy / "view_quality")])
    assert out.exit_code == 1 and "REFUSED" in out.output and "SHA-256 mismatch" in out.output


def test_cli_keygen_and_sign_make_a_bundle_the_kit_trusts(model_copy, tmp_path):
    from fieldkit.cli import main
    runner = CliRunner()
    key_file = tmp_path / "hospital.pem"
    out = runner.invoke(main, ["models", "keygen", str(key_file)])
    assert out.exit_code == 0, out.output
    public = out.output.strip()
    assert public.startswith("ed25519:") and (key_file.stat().st_mode & 0o777) == 0o600
    assert runner.invoke(main, ["models", "keygen", str(key_file)]).exit_code != 0  # never overwritten
    out = runner.invoke(main, ["models", "sign", str(model_copy / "lung_bline"), "--key", str(key_file)])
    assert out.exit_code == 0, out.output
    trusted = B.trusted_keys([public])
    assert B.verify_bundle(B.read_bundle(model_copy / "lung_bline"), trusted).ok


def test_random_manifests_are_refused_with_a_reason_never_a_crash(tmp_path):
    """Fuzz the manifest reader: whatever JSON a bundle holds, the registry names a reason."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)
    base = json.loads((BUILTIN_DIR / "lung_bline" / "manifest.json").read_text())
    onnx_bytes = (BUILTIN_DIR / "lung_bline" / "model.onnx").read_bytes()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(sorted(base)), values, st.booleans())
    def check(field, value, drop):
        d = tmp_path / "fuzz"
        d.mkdir(exist_ok=True)
        (d / "model.onnx").write_bytes(onnx_bytes)
        entry = dict(base)
        if drop:
            entry.pop(field)
        else:
            entry[field] = value
        (d / "manifest.json").write_text(json.dumps(entry))
        reg = Registry(Config(), dirs=[tmp_path])
        (row,) = reg.status()
        changed = drop or value != base[field]
        if changed and field not in ("metrics", "training", "summary", "size_bytes"):
            assert not row["ok"] or field in ("model_card",), (field, value, row)
        if not row["ok"]:
            assert row["status"].startswith("refused"), row

    check()


def test_a_refused_model_leaves_the_kit_working(kit, model_copy):
    """One tampered model: the kit still ingests, and the other models still report."""
    from fieldkit.hardware.policy import NORMAL
    from fieldkit.inference import findings, worker
    from fieldkit.store.instances import put_instance
    from fixtures.inference import dataset_bytes, lung_cine_dataset

    onnx_file = model_copy / "lung_bline" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    reg = Registry(Config(), dirs=[model_copy])
    assert reg.get("lung") is None and reg.get("gate") is not None
    ds, _ = lung_cine_dataset(n_frames=3, n_blines=3, seed=41)
    stored = put_instance(kit.store, dataset_bytes(ds), "upload")
    assert stored["status"] == "stored"
    out = worker.process(kit, reg, stored["sop_instance_uid"], NORMAL)
    assert out["outcome"] == "analysed"
    rows = findings.for_instance(kit.store, stored["sop_instance_uid"])
    assert [r["model"] for r in rows] == ["fast-fluid"]  # no finding from a model that was refused


@pytest.mark.parametrize("bundle,cut,named", [
    ("lung_bline", "| epochs |", "'epochs'"),
    ("lung_bline", "| reproduce |", "'reproduce'"),
    ("view_quality", "| wall time |", "'wall time'"),
    ("fast_fluid", "| ECE |", "'ECE'"),
    ("lung_bline", "## Mimic false positives", "section 'Mimic false positives'"),
    ("lung_bline", "## Counts by true count", "section 'Counts by true count'"),
    ("fast_fluid", "## Calibration", "section 'Calibration'"),
])
def test_verify_refuses_a_bundle_whose_card_lacks_a_field_and_names_it(model_copy, bundle, cut, named):
    """The card is not signed, so a signed bundle with a thin card still verifies its
    signature; `models verify` refuses it all the same, naming what the card lacks."""
    from fieldkit.cli import main
    card = model_copy / bundle / "MODEL_CARD.md"
    text = card.read_text()
    assert cut in text
    card.write_text("\n".join(line for line in text.splitlines() if not line.startswith(cut)) + "\n")
    out = CliRunner().invoke(main, ["models", "verify", str(model_copy / bundle)])
    assert out.exit_code == 1, out.output
    assert "REFUSED" in out.output and f"lacks {named}" in out.output, out.output
    others = [str(model_copy / b) for b in ("view_quality", "lung_bline", "fast_fluid") if b != bundle]
    assert CliRunner().invoke(main, ["models", "verify", *others]).exit_code == 0


def test_verify_refuses_a_bundle_without_its_card(model_copy):
    from fieldkit.cli import main
    (model_copy / "fast_fluid" / "MODEL_CARD.md").unlink()
    out = CliRunner().invoke(main, ["models", "verify", str(model_copy / "fast_fluid")])
    assert out.exit_code == 1 and "model card MODEL_CARD.md is missing" in out.output, out.output
