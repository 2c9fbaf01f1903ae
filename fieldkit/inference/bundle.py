"""Signed model bundles: a directory holding `manifest.json`, the `.onnx` file it names and
a model card.

The manifest entry says everything the runner needs (input, preprocessing, outputs,
labels, thresholds, intended views) plus the file's SHA-256 and an Ed25519 signature over
the canonical JSON of the entry without its "signature" field. The hash is inside the
signed entry, so the signature covers the model file as well as what the kit is told
about it. A bundle loads only when the hash matches and the signature verifies under one
of the kit's trusted keys (config `inference.trusted_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST = "manifest.json"
MAX_MODEL_BYTES = 64 * 1024 * 1024
REQUIRED = ("name", "version", "task", "file", "sha256", "input", "preprocessing", "outputs",
            "labels", "thresholds", "intended_views", "model_card", "key_id", "signature")
TASKS = ("gate", "lung", "fast")
TYPES = {"name": str, "version": str, "task": str, "file": str, "sha256": str, "input": dict,
         "preprocessing": dict, "outputs": dict, "labels": list, "thresholds": dict,
         "intended_views": list, "model_card": str, "key_id": str, "signature": str}


class BundleError(Exception):
    """A bundle that must not be loaded; the message says why, for `fieldkit models list`."""


@dataclass
class Bundle:
    path: Path  # bundle directory
    entry: dict
    ok: bool = False
    status: str = "unverified"
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.entry.get("name", self.path.name))

    @property
    def model_path(self) -> Path:
        return self.path / str(self.entry.get("file", ""))


# ------------------------------------------------------------------------------ keys

def public_key_text(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """'ed25519:<base64 of the 32 raw bytes>' -> key; ValueError naming the bad value."""
    prefix, _, b64 = str(text).partition(":")
    try:
        if prefix != "ed25519":
            raise ValueError
        raw = base64.b64decode(b64, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError(f"trusted key {text!r} is not 'ed25519:<base64 of 32 bytes>'") from None


def key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path, passphrase: bytes | None = None) -> None:
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:  # never overwrite a signing key
        f.write(pem)
    path.chmod(0o600)


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


# -------------------------------------------------------------------------- manifest

def canonical(entry: dict) -> bytes:
    """The bytes that are signed: the entry without its signature, as canonical JSON."""
    body = {k: v for k, v in entry.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sign_bundle(bundle_dir: Path, key: Ed25519PrivateKey) -> dict:
    """Fill in sha256, size, key_id and signature of `bundle_dir/manifest.json` in place."""
    path = Path(bundle_dir) / MANIFEST
    entry = json.loads(path.read_text(encoding="utf-8"))
    model = Path(bundle_dir) / entry["file"]
    entry["sha256"] = sha256_file(model)
    entry["size_bytes"] = model.stat().st_size
    entry["key_id"] = key_id(key.public_key())
    entry["signature"] = ""
    entry["signature"] = base64.b64encode(key.sign(canonical(entry))).decode("ascii")
    path.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return entry


def read_bundle(bundle_dir: Path) -> Bundle:
    path = Path(bundle_dir) / MANIFEST
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        b = Bundle(Path(bundle_dir), {"name": Path(bundle_dir).name})
        b.status = f"refused: manifest unreadable ({exc})"
        b.problems.append(b.status)
        return b
    return Bundle(Path(bundle_dir), entry)


def verify_bundle(bundle: Bundle, trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    """Check fields, file hash and signature; sets bundle.ok and a one-line status."""
    if bundle.problems:
        return bundle
    e = bundle.entry
    missing = [k for k in REQUIRED if k not in e]
    if missing:
        return _refuse(bundle, f"manifest lacks {', '.join(missing)}")
    wrong = [k for k, t in TYPES.items() if not isinstance(e[k], t)]
    if wrong:
        return _refuse(bundle, f"manifest field(s) of the wrong type: {', '.join(wrong)}")
    shape = e["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[1:])):
        return _refuse(bundle, f"manifest input.shape {shape!r} is not [N, C, H, W]")
    if e["task"] not in TASKS:
        return _refuse(bundle, f"unknown task {e['task']!r} (known: {', '.join(TASKS)})")
    from fieldkit.inference.postprocess import calibration_problem, line_check_problem
    if "line_check" in e["thresholds"]:
        problem = line_check_problem(e["thresholds"]["line_check"])
        if problem:
            return _refuse(bundle, f"manifest thresholds.line_check {problem}")
    problem = calibration_problem(e.get("calibration"))
    if problem:
        return _refuse(bundle, f"manifest calibration {problem}")
    model = bundle.model_path
    if Path(e["file"]).is_absolute() or ".." in Path(e["file"]).parts:
        return _refuse(bundle, f"model file {e['file']!r} must be inside the bundle")
    if not model.is_file():
        return _refuse(bundle, f"model file {e['file']} is missing")
    if model.stat().st_size > MAX_MODEL_BYTES:
        return _refuse(bundle, f"model file is larger than {MAX_MODEL_BYTES // 2**20} MiB")
    digest = sha256_file(model)
    if digest != e["sha256"]:
        return _refuse(bundle, f"SHA-256 mismatch: file is {digest[:12]}…, manifest says {str(e['sha256'])[:12]}…")
    pub = trusted.get(e["key_id"])
    if pub is None:
        return _refuse(bundle, f"signed by key {e['key_id']}, which is not in inference.trusted_keys")
    try:
        pub.verify(base64.b64decode(e["signature"], validate=True), canonical(e))
    except (InvalidSignature, ValueError, TypeError):
        return _refuse(bundle, "bad signature (manifest or model changed after signing, or wrong key)")
    bundle.ok, bundle.status = True, "verified"
    return bundle


# What a model card must tell (models/train/cards.py writes it): each field is a table row
# or a section heading of the card. `fieldkit models verify` refuses a card without one.
CARD_ROWS = ("training set size", "epochs", "loss", "seeds", "test set size", "reproduce", "wall time", "ECE")
CARD_SECTIONS = {"lung": ("Mimic false positives", "Counts by true count")}
CARD_ANY = ("Calibration", "Held-out simulated test metrics")


def card_problems(bundle: Bundle) -> list[str]:
    """The fields the bundle's model card lacks, each named (empty: the card tells everything)."""
    name = str(bundle.entry.get("model_card") or "")
    path = bundle.path / name
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
        return [f"model card {name or '(none named)'} is missing"]
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("|") and line.count("|") > 2}
    heads = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}
    missing = [f"'{r}'" for r in CARD_ROWS if r not in rows]
    missing += [f"section '{h}'" for h in CARD_ANY + CARD_SECTIONS.get(str(bundle.entry.get("task")), ()) if h not in heads]
    return [f"model card {name} lacks {m}" for m in missing]


def _refuse(bundle: Bundle, why: str) -> Bundle:
    bundle.ok = False
    bundle.status = f"refused: {why}"
    bundle.problems.append(why)
    return bundle


def trusted_keys(texts: list[str]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for t in texts:
        pub = parse_public_key(t)
        keys[key_id(pub)] = pub
    return keys


def discover(dirs: list[Path]) -> list[Path]:
    """Bundle directories (those holding a manifest.json) directly under each dir, sorted."""
    found = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            found += sorted(p.parent for p in d.glob(f"*/{MANIFEST}"))
    return found
