"""highdicom's module table held compactly (fieldkit/dicom/standard_tables.py): the same
answers as highdicom's own table for every module, the same reports, and the full table
never parsed in a kit that installed the compact one."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldkit.dicom.standard_tables import TABLE_FILE, ModuleTable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text():
    return pkgutil.get_data("highdicom", TABLE_FILE).decode("utf-8")


def test_every_module_reads_back_as_highdicoms_file_holds_it(text):
    full = json.loads(text)  # the oracle: the file as any JSON reader sees it
    table = ModuleTable.from_json(text)
    assert list(table) == list(full) and len(table) == len(full) == 436
    for key, attrs in full.items():
        assert key in table
        assert table[key] == attrs, key
    assert "no-such-module" not in table
    with pytest.raises(KeyError):
        table["no-such-module"]
    # what makes it worth having: a few per cent of the JSON text, packed
    assert table.packed_bytes() < len(text) // 10


def test_a_module_asked_again_is_the_same_object_and_old_ones_are_let_go(text):
    table = ModuleTable.from_json(text)
    keys = list(table)
    first = table[keys[0]]
    assert table[keys[0]] is first  # highdicom may ask for the same module many times a report
    for key in keys[1:100]:
        table[key]
    again = table[keys[0]]
    assert again == first and again is not first  # decoded anew: only the recent ones are held


@pytest.mark.parametrize("bad", [
    "", "[]", '{"general-study": {"keyword": "x"}}', '{"general-study": [1, 2]', '{"a" [1]}',
    '{"a": [1],, "b": [2]}', '{1: [2]}',
])
def test_a_table_that_is_not_keyed_lists_is_refused_with_a_reason(bad):
    with pytest.raises(ValueError) as err:
        ModuleTable.from_json(bad)
    assert str(err.value)


def test_whitespace_and_formatting_of_the_file_do_not_matter():
    table = ModuleTable.from_json('\n{ "a" : [ {"keyword": "X", "path": [], "type": "1"} ] ,\n "b":[]\n}\n')
    assert dict(table) == {"a": [{"keyword": "X", "path": [], "type": "1"}], "b": []}
    assert dict(ModuleTable.from_json("{}")) == {}


REPORTS = r"""
import io, json, sys
import pydicom
from pydicom.data import get_testdata_file
sys.path.insert(0, "tests")
from fixtures.inference import PYDICOM_US_FILES, lung_cine_dataset
from fieldkit.config import Config
from fieldkit.inference.registry import Registry
from fieldkit.inference import runner, sr
from fieldkit.dicom import standard_tables
from highdicom import _standard_utils as standard

VARYING = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime"}

def report(ds, a):
    out = sr.build_sr(ds, a)
    def blank(d, elem):
        if elem.keyword in VARYING:
            elem.value = ""
    out.walk(blank)
    buf = io.BytesIO(); out.save_as(buf, enforce_file_format=True)
    return buf.getvalue().hex()

reg = Registry(Config(), data_dir=None)
cases = [lung_cine_dataset(n_frames=4, n_blines=3, seed=5)[0], pydicom.dcmread(get_testdata_file(PYDICOM_US_FILES[0]))]
cases = [(ds, runner.analyse(ds, reg)) for ds in cases]
full = [report(ds, a) for ds, a in cases]  # with highdicom's own table
original = standard.get_module_attribute_map
standard_tables.install()
compact = [report(ds, a) for ds, a in cases]
print(json.dumps({"full": full, "compact": compact, "full_table_parsed": original.cache_info().currsize}))
"""


def _reports() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", REPORTS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reports_are_byte_identical_with_the_compact_table_and_the_full_one_is_never_parsed():
    made = _reports()
    assert made["compact"] == made["full"]
    assert all(len(r) > 1000 for r in made["compact"])
    assert made["full_table_parsed"] == 0  # install() let go of the table the first reports parsed
