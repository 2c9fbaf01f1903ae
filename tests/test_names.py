"""Person names as people read them, from the PN values probes send (PS3.5 6.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from fieldkit.dicom.names import MAX_SHOWN, format_person_name


@pytest.mark.parametrize("pn, shown", [
    ("OB^^^^", "OB"),                                   # a probe's preset, empty components
    ("CompressedSamples^US1", "CompressedSamples, US1"),  # pydicom's own test file
    ("PLA", "PLA"),
    ("Doe^Jane", "Doe, Jane"),
    ("Doe^John^Quincy^Dr^Jr", "Doe, Dr John Quincy, Jr"),
    ("^Jane", "Jane"),                                  # no family name
    ("^^^^", ""), ("^", ""), ("=", ""), ("", ""), (None, ""),
    ("  Doe ^  Jane  Ann ", "Doe, Jane Ann"),           # padding and doubled spaces
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou (山田, 太郎 / やまだ, たろう)"),  # ideographic groups
    ("=山田^太郎", "山田, 太郎"),                           # only the ideographic group
    ("Wang^XiaoDong=王^小東=", "Wang, XiaoDong (王, 小東)"),
    ("Doe^Jane\\Roe^Richard", "Doe, Jane; Roe, Richard"),  # two values
    ("Rae Example", "Rae Example"),                     # typed by a person: left as typed
    ("Doe^Jane^^^^Extra", "Doe, Jane Extra"),           # more than five components: nothing lost
    ("Doe\x00^Jane\r\n", "Doe, Jane"),                  # control characters dropped
])
def test_person_names(pn, shown):
    assert format_person_name(pn) == shown


@given(st.text(max_size=400))
def test_any_text_gives_a_short_name_without_pn_delimiters(text):
    shown = format_person_name(text)
    assert len(shown) <= MAX_SHOWN
    assert "^" not in shown and "=" not in shown and "\\" not in shown
    assert shown == shown.strip() and all(c.isprintable() for c in shown)
