"""Every README promise has a test: tests/README_PROMISES.md maps each promise (a phrase
quoted from README.md) to the test that proves it. This file checks the map - each phrase is
still in the README and each named test still exists - and holds the tests for promises that
had none (exit code 7, the anonymous-denial cap, sign-in answers that do not tell which
names exist, the transcode size ratios)."""

from __future__ import annotations

import ast
import io
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from kitproc import FIELDKIT

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).resolve().parent / "README_PROMISES.md"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


def promise_rows() -> list[tuple[str, str]]:
    """(README phrase, "tests/file.py::test_name") for every row of the table."""
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`tests/"):
            rows.append((cells[1][1:-1] if cells[1].startswith('"') else cells[1], cells[2].strip("`")))
    return rows


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test")}


def test_every_listed_promise_is_in_the_readme_and_its_test_exists():
    rows = promise_rows()
    assert len(rows) >= 40, "the promise table lost its rows"
    readme = _flat((ROOT / "README.md").read_text())
    missing_phrase = [p for p, _ in rows if _flat(p) not in readme]
    assert not missing_phrase, f"README no longer says (update README_PROMISES.md): {missing_phrase}"
    missing_test = []
    for _, ref in rows:
        file, _, name = ref.partition("::")
        path = ROOT / file
        if not path.is_file() or name not in _test_names(path):
            missing_test.append(ref)
    assert not missing_test, f"tests named in README_PROMISES.md that do not exist: {missing_test}"


def test_the_readme_does_not_contradict_itself_on_unknown_user_names():
    readme = _flat((ROOT / "README.md").read_text())
    assert "A name that is not an account costs and is limited the same way" in readme
    assert "unknown user name is never locked out" not in readme


def test_the_mutation_tool_lists_modules_whose_tests_exist():
    """`make mutate` (tests/mutation/run.py) runs each promise module with its own tests:
    every module and test file it names exists, and every listed equivalent has a reason."""
    import tomllib

    modules = tomllib.loads((ROOT / "tests/mutation/modules.toml").read_text())["module"]
    paths = [m["path"] for m in modules]
    for required in ("fieldkit/store/journal.py", "fieldkit/store/blobs.py", "fieldkit/store/queue.py",
                     "fieldkit/security/keys.py", "fieldkit/security/crypto.py", "fieldkit/dicom/identity.py",
                     "fieldkit/sync/client.py", "fieldkit/web/guard.py", "fieldkit/inference/postprocess.py",
                     "fieldkit/inference/runner.py"):
        assert required in paths
    for m in modules:
        assert (ROOT / m["path"]).is_file(), m["path"]
        assert m["tests"], m
        for t in m["tests"]:  # a file, or one test of it (file::name)
            file, _, test = t.partition("::")
            assert (ROOT / file).is_file(), t
            assert not test or re.search(rf"^def {re.escape(test)}\(", (ROOT / file).read_text(), re.M), t
        source = (ROOT / m["path"]).read_text()
        for f in m.get("functions", []):  # x_<name> for a function, xǁ<Class>ǁ<method>, as mutmut names them
            if f.startswith("xǁ"):
                cls, method = f.removeprefix("xǁ").split("ǁ")
                assert re.search(rf"^class {re.escape(cls)}\b", source, re.M), (m["path"], f)
                if method != "*":
                    assert re.search(rf"^\s+def {re.escape(method)}\(", source, re.M), (m["path"], f)
            else:
                assert re.search(rf"^\s*def {re.escape(f.removeprefix('x_'))}\(", source, re.M), (m["path"], f)
    for line in (ROOT / "tests/mutation/equivalent.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            assert "__mutmut_" in name and len(reason.split()) >= 3, line


def test_the_mutation_tool_runs_every_mutant_but_the_listed_equivalents():
    """Listed equivalents are left out of the score and not run: the globs handed to mutmut
    for a function named in full match each of its mutant numbers except the listed ones."""
    import fnmatch
    import importlib.util
    import tomllib

    spec = importlib.util.spec_from_file_location("mutation_run", ROOT / "tests/mutation/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    listed = set(run.equivalents())
    modules = tomllib.loads((ROOT / "tests/mutation/modules.toml").read_text())["module"]
    functions = [f"{m['path'].removesuffix('.py').replace('/', '.')}.{f}" for m in modules for f in m.get("functions", [])]
    skipped = 0
    for function in functions:
        globs = run._without_equivalents(function)
        if "*" in function:
            assert globs == [f"{function}__mutmut_*"]
            continue
        for n in range(1, 3000):
            name = f"{function}__mutmut_{n}"
            assert any(fnmatch.fnmatchcase(name, g) for g in globs) == (name not in listed), name
            skipped += name in listed
    assert skipped > 20  # the journal's and the runner's listed mutants among them


# ----------------------------------------------------------------- promises that had no test

def test_a_data_dir_in_use_exits_7_with_the_reason(store, data_dir):
    # `store` holds the data dir's lock, as a running kit does
    proc = subprocess.run(FIELDKIT + ["serve", "--data-dir", str(data_dir), "--http-port", "0", "--dicom-port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "in use by another fieldkit process" in proc.stderr and "Traceback" not in proc.stderr


def test_anonymous_denials_are_recorded_up_to_120_a_minute_then_summarised(kit, monkeypatch):
    from fieldkit.store import accounts
    from fieldkit.web import create_app, sessions

    now = [1000.0]
    monkeypatch.setattr(sessions, "mono", lambda: now[0])
    client = create_app(kit, testing=True).test_client()

    def denials():
        return [e for e in accounts.audit_events(kit.store)
                if e["outcome"] == "denied" and e["object"] == "GET /api/v1/status"]

    for _ in range(130):
        assert client.get("/api/v1/status", base_url="https://kit.local").status_code == 401
    assert len(denials()) == 120
    now[0] += 61
    client.get("/api/v1/status", base_url="https://kit.local")
    recorded = denials()
    assert len(recorded) == 121
    assert recorded[-1]["detail"]["suppressed_in_last_minute"] == 10


def test_sign_in_answers_do_not_tell_which_names_exist(kit, fake_clock):
    from fieldkit.security import roles
    from fieldkit.store import accounts
    from fieldkit.web import create_app
    from fixtures.security import HTTPS, csrf_from

    accounts.create_user(kit.store, "amina", "483920", roles.CLINICIAN)
    app = create_app(kit, testing=True)

    def attempts(name: str, address: str) -> list[tuple[int, str]]:
        client = app.test_client()
        seen = []
        for _ in range(8):
            page = client.get("/login", base_url=HTTPS, environ_base={"REMOTE_ADDR": address})
            r = client.post("/login", base_url=HTTPS, environ_base={"REMOTE_ADDR": address},
                            data={"username": name, "password": "000000", "csrf_token": csrf_from(page.text)})
            text = re.sub(r"\d+ seconds", "N seconds", r.get_data(as_text=True)).replace(name, "NAME")
            text = re.sub(r'value="[0-9a-f]{32,}"', 'value="TOKEN"', text)  # a fresh CSRF token each page
            seen.append((r.status_code, text))
        return seen

    real = attempts("amina", "10.0.0.1")
    fake_clock.advance(3600)  # the kit-wide budget of failing addresses refills
    ghost = attempts("nobody-here", "10.0.0.2")
    assert [s for s, _ in real] == [s for s, _ in ghost]
    assert {s for s, _ in real} == {401, 429}  # wrong, then slowed: for both alike
    assert [t for _, t in real] == [t for _, t in ghost]  # the pages read the same, word for word


@pytest.mark.parametrize("name, syntax, readme_ratio", [
    ("examples_rgb_color.dcm", "jpeg-ls", 0.38), ("examples_palette.dcm", "jpeg-ls", 0.07),
    ("examples_rgb_color.dcm", "jpeg2000", 0.46), ("examples_palette.dcm", "jpeg2000", 0.12),
    ("examples_rgb_color.dcm", "rle", 0.56), ("examples_palette.dcm", "rle", 0.14),
])
def test_lossless_transcoding_shrinks_the_sample_files_as_the_readme_says(name, syntax, readme_ratio):
    import numpy as np

    from fieldkit.dicom.transcode import CHOICES, transcode
    from fixtures.dcmtk import pydicom_file

    original = Path(pydicom_file(name)).read_bytes()
    out = transcode(original, (CHOICES[syntax],))
    assert out is not None, f"{name} was not transcoded to {syntax}"
    data, ts = out
    assert ts == CHOICES[syntax]
    assert abs(len(data) / len(original) - readme_ratio) <= 0.02, len(data) / len(original)
    again, before = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(original))
    assert str(again.SOPInstanceUID) == str(before.SOPInstanceUID)
    assert np.array_equal(again.pixel_array, before.pixel_array)  # lossless, pixel for pixel
