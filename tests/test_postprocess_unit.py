"""inference/postprocess.py by itself, on numbers worked out by hand and on drawn images:
a B-line from the pleura to the bottom is kept; a line that starts above the pleura, one
that fades, or no line at all is turned away with the reason a clinician reads."""

from __future__ import annotations

import numpy as np
import pytest

from fieldkit.inference import postprocess as post


def test_softmax_is_exp_over_sum_along_the_axis_and_stable_for_large_logits():
    p = post.softmax(np.array([0.0, np.log(3.0)]))
    np.testing.assert_allclose(p, [0.25, 0.75])
    big = post.softmax(np.array([[1000.0, 1000.0, 1000.0 - np.log(2.0)]]))
    np.testing.assert_allclose(big, [[0.4, 0.4, 0.2]])
    cols = post.softmax(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]), axis=0)
    np.testing.assert_allclose(cols, [[0.25, 0.5], [0.75, 0.5]])


def test_sigmoid_values_and_no_overflow_far_out():
    np.testing.assert_allclose(post.sigmoid(np.array([0.0, np.log(3.0), -np.log(3.0)])), [0.5, 0.75, 0.25])
    with np.errstate(over="raise"):
        far = post.sigmoid(np.array([-1000.0, 1000.0]))
    assert far[0] == pytest.approx(1 / (1 + np.exp(60))) and far[0] > 0
    assert far[1] == pytest.approx(1.0)
    assert post.sigmoid(np.array([-60.0]))[0] == post.sigmoid(np.array([-61.0]))[0]  # clipped at 60
    assert post.sigmoid(np.array([-59.0]))[0] > post.sigmoid(np.array([-60.0]))[0]  # not clipped before


def test_runs_are_half_open_and_honour_the_minimum_length():
    mask = [True, True, False, True, False, False, True, True, True]
    assert post.runs(mask) == [(0, 2), (3, 4), (6, 9)]
    assert post.runs(mask, min_len=2) == [(0, 2), (6, 9)]
    assert post.runs(mask, min_len=3) == [(6, 9)]
    assert post.runs([False, False]) == []
    assert post.runs([True]) == [(0, 1)]
    assert all(isinstance(v, int) for r in post.runs(np.array(mask)) for v in r)


def test_count_blines_counts_runs_at_or_above_the_threshold():
    probs = np.array([0.1, 0.5, 0.6, 0.2, 0.49, 0.9, 0.1])
    assert post.count_blines(probs, 0.5) == (2, [(1, 3), (5, 6)])
    assert post.count_blines(probs, 0.5, min_width=2) == (1, [(1, 3)])
    assert post.count_blines(probs, 0.95) == (0, [])


def test_touching_lines_are_counted_apart_where_their_evidence_dips():
    two = np.array([0.1, 0.9, 0.7, 0.8, 0.1])  # one run over the threshold, a dip of 0.1 inside
    assert post.count_blines(two, 0.5) == (1, [(1, 4)])
    assert post.count_blines(two, 0.5, dip=0.05) == (2, [(1, 2), (3, 4)])
    assert post.count_blines(two, 0.5, dip=0.15) == (1, [(1, 4)])  # too shallow a dip
    flat = np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.1])  # confluent: no dip, one run
    assert post.count_blines(flat, 0.5, dip=0.05) == (1, [(1, 5)])
    three = np.array([0.8, 0.6, 0.9, 0.6, 0.8])
    assert post.split_run(three, 0, 5, 0.05) == [(0, 1), (2, 3), (4, 5)]
    assert post.split_run(np.array([0.9, 0.8, 0.7]), 0, 3, 0.05) == [(0, 3)]  # falling edge: no minimum inside


def test_pleura_row_is_the_centre_of_the_likeliest_bin_in_input_pixels():
    logits = np.zeros(8)
    logits[2] = 5.0
    assert post.pleura_row(logits, 128) == pytest.approx((2 + 0.5) * 128 / 8)
    batch = np.zeros((1, 4))
    batch[0, 3] = 1.0
    assert post.pleura_row(batch, 64) == pytest.approx(3.5 * 16)


def test_fluid_mask_thresholds_the_probability_and_drops_the_channel():
    logits = np.array([[[-2.0, 0.0], [0.1, 3.0]]])
    mask = post.fluid_mask(logits, 0.5)
    assert mask.shape == (2, 2) and mask.dtype == bool
    assert mask.tolist() == [[False, True], [True, True]]
    assert post.fluid_mask(logits, 0.6).tolist() == [[False, False], [False, True]]


def test_dice_of_masks():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert post.dice(a, b) == pytest.approx(0.5)
    assert post.dice(a, a) == 1.0
    assert post.dice(a, ~a) == 0.0
    assert post.dice(np.zeros(4), np.zeros(4)) == 1.0  # nothing to find, nothing found
    assert post.dice([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.5)


def test_box_sums_and_counts_a_window_clipped_at_the_edges():
    s, n = post._box(np.array([[1.0, 2.0, 3.0, 4.0]]), -1, 1)
    assert s.tolist() == [[3.0, 6.0, 9.0, 7.0]]
    assert n.tolist() == [2, 3, 3, 2]
    s, n = post._box(np.array([[1.0, 2.0, 3.0]]), 0, 0)
    assert s.tolist() == [[1.0, 2.0, 3.0]] and n.tolist() == [1, 1, 1]


def test_line_maps_give_brightness_contrast_and_nan_outside_the_view():
    img = np.full((3, 40), 0.2)
    img[:, 20] = 0.8
    img[:, :3] = 0.0  # black: outside the field of view
    line, contrast = post.line_maps(img)
    assert line[1, 20] == pytest.approx((0.2 + 0.8 + 0.2) / 3)
    assert contrast[1, 20] == pytest.approx(line[1, 20] - 0.2, abs=1e-6)  # background kept as float32
    assert contrast[1, 30] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(contrast[1, 0]) and np.isnan(contrast[1, 1])


# --- B-line or mimic: drawn frames, 128 x 64, pleural line at row 40 ---

H, W, PLEURA, COLS = 128, 64, 40.0, (29.0, 33.0)


def frame(line_from: int | None = None, fade_to: int | None = None) -> np.ndarray:
    img = np.full((H, W), 0.2)
    img[38:42, :] = 0.8  # the pleural line
    if line_from is not None:
        rows = np.arange(line_from, H)
        level = np.full(len(rows), 0.7)
        if fade_to is not None:  # bright at the pleura, background by `fade_to`
            level = np.interp(rows, [42, fade_to], [0.7, 0.2])
        img[line_from:, 30:33] = np.maximum(img[line_from:, 30:33], level[:, None])
    return img


def test_a_line_from_the_pleura_to_the_bottom_is_a_b_line():
    assert post.bline_mimic(frame(line_from=42), COLS, PLEURA) == ""
    img = frame(line_from=42)
    assert post.bline_mimic(img, COLS, PLEURA, post.line_maps(img)) == ""  # same with maps given


def test_a_line_that_starts_above_the_pleura_is_an_e_line_or_needle():
    assert post.bline_mimic(frame(line_from=0), COLS, PLEURA) == \
        "starts above the pleural line (E-line or needle artefact)"


def test_a_line_that_fades_is_a_z_line_or_comet_tail():
    assert post.bline_mimic(frame(line_from=42, fade_to=80), COLS, PLEURA) == \
        "fades before the bottom of the image (Z-line or comet tail)"


def test_no_bright_line_under_the_scored_columns():
    assert post.bline_mimic(frame(), COLS, PLEURA) == "no bright line below the pleura"


# --- confluent lines: a band wider than a line's background bands, 128 x 128 ---

def band(top: int, bottom: int, fade_to: int | None = None, lo: int = 50, hi: int = 80) -> np.ndarray:
    img = 0.2 + 0.05 * np.random.default_rng(0).random((H, 128))
    img[38:42, :] = 0.8
    level = np.full(bottom - top, 0.7)
    if fade_to is not None:
        level = np.interp(np.arange(top, bottom), [42, fade_to], [0.7, 0.2])
    img[top:bottom, lo:hi] = np.maximum(img[top:bottom, lo:hi], level[:, None])
    return img


BAND = (50.0, 80.0)


def test_a_band_from_the_pleura_to_the_bottom_is_confluent_b_lines():
    assert post.bline_mimic(band(42, H), BAND, PLEURA) == ""
    assert post.bline_mimic(band(42, H, lo=0), (0.0, 80.0), PLEURA) == ""  # at the edge: one side only


def test_a_band_that_starts_above_the_pleura_or_fades_is_a_mimic():
    assert post.bline_mimic(band(0, H), BAND, PLEURA) == "starts above the pleural line (E-line or needle artefact)"
    assert post.bline_mimic(band(42, H, fade_to=80), BAND, PLEURA) == \
        "fades before the bottom of the image (Z-line or comet tail)"
    assert post.bline_mimic(band(42, 42), BAND, PLEURA) == "no bright band below the pleura"
    assert post.bline_mimic(band(42, H), BAND, H - 6.0) == ""  # too little below the pleura to judge


def test_a_run_eight_pixels_wide_is_judged_as_a_band():
    # the same drawn line, 8 pixels wide: a line's background bands (4-8 px out) would lie on it
    assert post.bline_mimic(band(42, H, lo=50, hi=58), (50.0, 58.0), PLEURA) == ""
    assert post.bline_mimic(band(42, H, lo=50, hi=57), (50.0, 57.0), PLEURA) == ""


PLEURA_LOGITS = np.eye(32)[10] * 10  # row bin 10: the pleura at row 42 of 128


def test_confluent_is_wide_evidence_over_a_band_from_the_pleura_to_the_bottom():
    k = post.confluent_bins(64)
    img = band(42, H, lo=40, hi=40 + 2 * k)
    prob = np.zeros(64)
    prob[20:20 + k] = 0.3  # a plateau under the B-line threshold counts: the model dips inside a band
    assert post.confluent(prob, img, 42.0) == (20, 20 + k)
    prob[20 + k - 1] = post.CONFLUENT_FLOOR - 0.01  # one column narrower: not a wide sector
    assert post.confluent(prob, img, 42.0) is None
    prob[20:20 + k] = 0.3
    assert post.confluent(prob, band(0, H, lo=40, hi=40 + 2 * k), 42.0) is None  # starts above: a mimic
    assert post.confluent(np.zeros(64), img, 42.0) is None


def test_the_confluent_width_is_a_share_of_the_image_whatever_the_models_column_bins():
    # a model with one bin per input column: the same band in pixels is twice as many bins
    assert post.confluent_bins(64) == 12 and post.confluent_bins(128) == 24
    img = band(42, H, lo=40, hi=40 + 24)
    prob = np.zeros(128)
    prob[40:64] = 0.3
    assert post.confluent(prob, img, 42.0) == (40, 64)
    prob[63] = 0  # 23 of 128 bins: under a fifth of the width
    assert post.confluent(prob, img, 42.0) is None


def test_a_confluent_band_makes_a_pattern_by_itself():
    th = {"bline": 0.5, "pattern_min_blines": 3}
    k = post.confluent_bins(64)
    img = band(42, H, lo=40, hi=40 + 2 * k)
    prob = np.zeros(64)
    prob[20:20 + k] = 0.9
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, th)
    assert fr["confluent"] is True and len(fr["runs"]) == 1 and fr["score"] > 0
    prob[20 + k - 1] = 0  # one column narrower: one wide line, no pattern
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, th)
    assert fr["confluent"] is False and fr["score"] < 0


def test_too_little_image_below_the_pleura_leaves_the_models_call():
    assert post.bline_mimic(frame(line_from=0), COLS, H - 6.0) == ""
    assert post.bline_mimic(frame(line_from=0), (W + 5.0, W + 9.0), PLEURA) == ""  # columns off the image


def test_dice_reads_any_non_zero_pixel_as_marked():
    # label images often mark with 255 or a class number, not 1
    assert post.dice(np.array([255, 0, 0], np.uint8), np.array([1, 0, 0])) == 1.0
    assert post.dice(np.array([1, 0, 2]), np.array([2, 0, 1], np.uint8)) == 1.0
    assert post.dice(np.array([0.5, 0.0]), np.array([1, 0])) == 1.0


def test_a_line_at_the_left_edge_is_followed_and_judged():
    img = frame()
    img[42:, 0:2] = 0.7  # a B-line hugging the image's left edge
    line, contrast = post.line_maps(img)
    track = post._track(line, contrast, 43, 0)
    assert [c for _, c, _ in track] == [0] * len(track) and len(track) == H - 43
    assert post.bline_mimic(img, (0.0, 2.0), PLEURA) == ""
    img[:38, 0:2] = 0.7  # the same line from the top of the image: an E-line
    assert post.bline_mimic(img, (0.0, 2.0), PLEURA) == "starts above the pleural line (E-line or needle artefact)"
    one = frame()
    one[:, 0] = 0.7  # one pixel wide, in the first column, from the top: still judged
    assert post.bline_mimic(one, (0.0, 1.0), PLEURA) == "starts above the pleural line (E-line or needle artefact)"


def test_softmax_normalises_each_row_on_its_own_scale():
    x = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0 + np.log(3.0)], [5.0, 5.0]])
    np.testing.assert_allclose(post.softmax(x), [[0.25, 0.75], [0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(post.softmax(x[:2].T, axis=0), [[0.25, 0.25], [0.75, 0.75]])


def test_runs_of_a_mask_given_as_numbers():
    assert post.runs(np.array([0, 2, 1, 0, 3])) == [(1, 3), (4, 5)]


def test_box_windows_beside_the_pixel_are_clipped_to_the_image():
    img = np.array([[1.0, 2.0, 3.0, 4.0]])
    s, n = post._box(img, 2, 3)  # the two pixels right of +2
    assert s.tolist() == [[7.0, 4.0, 0.0, 0.0]] and n.tolist() == [2, 1, 0, 0]
    s, n = post._box(img, -3, -2)  # the two pixels left of -2
    assert s.tolist() == [[0.0, 0.0, 1.0, 3.0]] and n.tolist() == [0, 0, 1, 2]


def test_contrast_of_an_even_background_is_zero_up_to_the_edges():
    _, contrast = post.line_maps(np.full((4, 30), 0.5))
    np.testing.assert_allclose(contrast, 0.0, atol=1e-6)


def test_contrast_is_measured_against_the_bands_four_to_eight_pixels_either_side():
    cols = np.arange(40, dtype=float)
    img = np.tile((cols / 40.0) ** 2 + 0.1, (3, 1))  # a background that curves: bands matter
    line, contrast = post.line_maps(img)
    for c in (10, 20, 30):
        bands = np.concatenate([img[1, c - 8:c - 3], img[1, c + 4:c + 9]])
        assert line[1, c] == pytest.approx(img[1, c - 1:c + 2].mean())
        assert contrast[1, c] == pytest.approx(line[1, c] - np.median(bands), abs=1e-6)


def track_image(step: int, width: int = 1) -> np.ndarray:
    img = np.full((20, 40), 0.2)
    img[:10, 20:20 + width] = 0.9
    img[10:, 20 + step:20 + step + width] = 0.9  # the line moves `step` columns at row 10
    return img


@pytest.mark.parametrize("step", [1, -1])
def test_a_track_follows_a_line_that_drifts_one_column(step):
    track = post._track(*post.line_maps(track_image(step, width=3)), 0, 21)
    assert [c for _, c, _ in track][-5:] == [21 + step] * 5


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("step", [2, -2, 3, -3])
def test_a_track_moves_at_most_one_column_a_row(step, width):
    track = post._track(*post.line_maps(track_image(step, width)), 0, 20 + width // 2)
    cols = [c for _, c, _ in track]
    assert len(cols) == 20 and all(abs(a - b) <= 1 for a, b in zip(cols, cols[1:])), cols


def test_a_track_does_not_jump_to_a_line_three_columns_to_the_right():
    track = post._track(*post.line_maps(track_image(3)), 0, 20)
    assert 23 not in {c for _, c, _ in track}


def test_a_track_ends_where_the_field_of_view_ends():
    img = track_image(0)
    img[15:, :] = 0.0  # black below row 15: outside the image sector
    track = post._track(*post.line_maps(img), 0, 20)
    assert [r for r, _, _ in track] == list(range(15))


def test_the_brightest_column_of_a_wide_run_is_the_one_followed():
    assert post.bline_mimic(frame(line_from=42), (22.0, 40.0), PLEURA) == ""


def test_eight_rows_below_the_pleura_are_enough_to_judge():
    short = frame(line_from=0)[:51]  # rows 43..50 below the pleura: eight
    assert post.bline_mimic(short, COLS, PLEURA) == "starts above the pleural line (E-line or needle artefact)"
    assert post.bline_mimic(short[:50], COLS, PLEURA) == ""  # seven: the model's call stands


def oblique(start_col: float, slope: float, from_row: int = 0) -> np.ndarray:
    """A line 3 pixels wide through (row 42, start_col) leaning `slope` columns a row, from
    `from_row` down."""
    img = frame()
    for r in range(from_row, H):
        c = int(round(start_col + slope * (r - 42)))
        if not 38 <= r < 42:
            img[r, max(0, c - 1):max(0, c + 2)] = 0.9
    return img


def test_an_oblique_e_line_is_followed_upwards_along_its_own_slope():
    img = oblique(20.0, 0.25)
    assert post.bline_mimic(img, (19.0, 22.0), PLEURA) == "starts above the pleural line (E-line or needle artefact)"
    below_only = oblique(20.0, 0.25, from_row=42)
    assert post.bline_mimic(below_only, (19.0, 22.0), PLEURA) == ""


def test_an_artefact_that_starts_just_above_the_pleura_is_seen():
    img = frame(line_from=42)
    img[22:38, 30:33] = 0.7  # from row 22 down, through the pleura: a needle's ring-down
    assert post.bline_mimic(img, COLS, PLEURA) == "starts above the pleural line (E-line or needle artefact)"


def test_a_line_whose_upward_path_leaves_the_image_is_judged_on_what_is_inside():
    img = oblique(60.0, -0.5, from_row=42)  # leans so that upwards it runs off the right edge
    assert post.bline_mimic(img, (59.0, 62.0), PLEURA) == ""


def test_the_m_mode_column_is_where_the_pleura_moves_most_of_the_columns_allowed():
    """Worked by hand: change at the pleura 1 over columns 10-19 and 0.2 elsewhere, a still
    chest wall; one lone column (30) changes more but its neighbours do not, so the 5-column
    average keeps it out; a column outside `where` (a rib, the other side) is never chosen."""
    lung = np.full(40, 0.2)
    lung[10:20] = 1.0
    lung[30] = 3.0  # one noisy column: 3/5 = 0.6 + 4 * 0.2/5 = 0.76 < 1 averaged
    wall = np.full(40, 0.1)
    everywhere = np.ones(40, bool)
    assert 12 <= post.m_mode_column(lung, wall, everywhere) <= 17  # inside the moving run, off its edges
    not_there = everywhere.copy()
    not_there[8:22] = False
    assert post.m_mode_column(lung, wall, not_there) not in range(8, 22)
    only_right = np.arange(40) >= 25
    assert 28 <= post.m_mode_column(lung, wall, only_right) <= 32  # the best allowed: a window holding it


def test_a_still_noiseless_wall_over_a_lung_that_hardly_changes_is_not_where_the_m_mode_goes():
    """Without the floor of half a grey level, a chest wall that does not change at all
    (no noise) would make any change below it look like infinite sliding: columns 0-9
    change by 0.003 below a wall that does not change (with the floor a ratio of 2.5),
    columns 20-29 by 0.6 below a wall that changes by 0.2 (a ratio of 3)."""
    lung = np.concatenate([np.full(10, 0.003), np.zeros(10), np.full(10, 0.6), np.zeros(10)])
    wall = np.concatenate([np.zeros(20), np.full(10, 0.2), np.zeros(10)])
    assert 20 <= post.m_mode_column(lung, wall, np.arange(40) < 30) < 30
