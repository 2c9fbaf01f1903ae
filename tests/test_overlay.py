"""The overlay image's B-line bands (`overlay.render`, `overlay.bands`): a run of columns
holding several close lines is drawn as that many bands side by side, so that the bands on
screen agree with the count the finding gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fieldkit.inference.overlay import bands, render


@pytest.mark.parametrize("c0,c1,n,w,want", [
    (10, 19, 1, 320, [(10, 20)]),  # one line: the run's own columns, last one included
    (10, 19, 2, 320, [(10, 15), (16, 20)]),  # a pixel left between the two
    (10, 19, 3, 320, [(10, 13), (14, 16), (17, 20)]),
    (10, 11, 2, 320, [(9, 10), (11, 12)]),  # too narrow for two: widened about its centre
    (0, 0, 3, 320, [(0, 1), (2, 3), (4, 5)]),  # ... but not past the left edge
    (319, 319, 2, 320, [(317, 318), (319, 320)]),  # ... nor the right one
    (-5, 400, 1, 320, [(0, 320)]),  # columns outside the image are clipped to it
    (10, 19, 0, 320, [(10, 20)]),  # a run always holds at least one line
])
def test_bands_of_a_run(c0, c1, n, w, want):
    assert bands(c0, c1, n, w) == want


@settings(max_examples=300, deadline=None)
@given(st.integers(-20, 340), st.integers(0, 60), st.integers(1, 8), st.integers(20, 640))
def test_bands_are_as_many_as_the_lines_apart_and_inside(c0, width, n, w):
    got = bands(c0, c0 + width, n, w)
    if w >= 2 * n - 1:
        assert len(got) == n
    for (a, b), (a2, _) in zip(got, got[1:]):
        assert a < b < a2  # each at least a pixel wide, a pixel apart
    assert all(0 <= a < b <= w for a, b in got)


def _row_tint(png: bytes, row: int) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return rgb[row, :, 1] - rgb[row, :, 0] > 40


def test_render_draws_a_two_line_run_as_two_bands_below_the_pleura():
    frame = np.full((120, 160, 3), 100, np.uint8)
    ov = {"kind": "lung", "pleura_row": 30, "columns": [[20, 29], [60, 64]], "lines_in_columns": [2, 1]}
    png = render(frame, ov)
    tinted = _row_tint(png, 80)
    assert np.flatnonzero(tinted).tolist() == list(range(20, 25)) + list(range(26, 30)) + list(range(60, 65))
    assert not _row_tint(png, 20).any()  # nothing drawn above the pleura
    # without the lines per run (findings from before they were counted): one band a run
    old = render(frame, {k: v for k, v in ov.items() if k != "lines_in_columns"})
    assert np.flatnonzero(_row_tint(old, 80)).tolist() == list(range(20, 30)) + list(range(60, 65))
