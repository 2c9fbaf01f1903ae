"""A clip's lung summary is not the maximum of noisy frames: the call, its probability and
its count come from the frame that 30 % of the gate-confident frames reach or exceed, and
the finding names that frame."""

from __future__ import annotations

import numpy as np
import pytest

from fieldkit.inference import postprocess as post
from fieldkit.inference import runner
from fixtures.inference import lung_cine_dataset


def test_clip_score_is_the_frame_a_share_of_frames_reach():
    s = [-3.0] * 9 + [5.0]
    score, i = post.clip_score(s, 0.3)
    assert score == -3.0 and i != 9  # one bright frame of ten does not make the clip
    s = [-3.0] * 7 + [5.0, 4.0, 6.0]
    assert post.clip_score(s, 0.3) == (4.0, 8)  # three of ten do; the weakest of them speaks
    assert post.clip_score([2.0], 0.3) == (2.0, 0)


def _mixed_cine(with_lines: list[int], n: int = 10):
    """A lung cine of n frames without B-lines, frames `with_lines` (0-based) swapped for
    frames of a cine with 6 B-lines of the same size and probe."""
    ds, _ = lung_cine_dataset(n_frames=n, n_blines=0, seed=41, probe="linear")
    other, _ = lung_cine_dataset(n_frames=n, n_blines=6, seed=42, probe="linear")
    a = np.frombuffer(ds.PixelData, np.uint8).reshape(n, ds.Rows, ds.Columns, 3).copy()
    b = np.frombuffer(other.PixelData, np.uint8).reshape(n, ds.Rows, ds.Columns, 3)
    a[with_lines] = b[with_lines]
    ds.PixelData = a.tobytes()
    return ds


@pytest.mark.parametrize("with_lines,pattern", [([4], "A-line pattern"), ([1, 4, 7, 8], "B-line pattern")])
def test_one_noisy_frame_does_not_make_a_b_line_clip(registry, with_lines, pattern):
    lung = next(r for r in runner.analyse(_mixed_cine(with_lines), registry).results if r.task == "lung")
    assert lung.assessable, lung.reason
    counts = lung.result["b_line_counts"]
    assert max(counts) >= 3  # the frames with B-lines are seen...
    assert lung.result["pattern"] == pattern, counts  # ...but the clip speaks only when enough frames do
    summary = lung.result["summary_frame"]
    assert (summary - 1 in with_lines) == (pattern == "B-line pattern")
    assert lung.result["b_lines"] == counts[lung.frames.index(summary)]
    assert (lung.finding_probability > 0.5) == (pattern == "B-line pattern")
