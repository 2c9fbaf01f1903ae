"""inference/postprocess.py by itself, on numbers worked out by hand and on drawn images:
a B-line from the pleura to the bottom is kept; a line that starts above the pleura, one
that fades, or no line at all is turned away with the reason a clinician reads."""

from __future__ import annotations

import warnings

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


def test_a_flat_minimum_parts_two_lines_and_belongs_to_neither():
    # two or three equal columns at the bottom of the dip (model outputs are often equal)
    assert post.count_blines(np.array([0.1, 0.9, 0.7, 0.7, 0.9, 0.1]), 0.5, dip=0.05) == (2, [(1, 2), (4, 5)])
    assert post.split_run(np.array([0.9, 0.7, 0.7, 0.7, 0.8]), 0, 5, 0.05) == [(0, 1), (4, 5)]
    assert post.split_run(np.array([0.9, 0.7, 0.7, 0.8, 0.9]), 0, 5, 0.05) == [(0, 1), (3, 5)]
    assert post.split_run(np.array([0.9, 0.88, 0.88, 0.9]), 0, 4, 0.05) == [(0, 4)]  # too shallow: one line


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


def maps_of(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LineMaps as two whole arrays (the kit computes the contrast only where it is asked)."""
    maps = post.LineMaps(img)
    return maps.line, maps.contrast[tuple(np.indices(img.shape))]


def test_the_line_maps_give_brightness_contrast_and_nan_outside_the_view():
    img = np.full((3, 40), 0.2)
    img[:, 20] = 0.8
    img[:, :3] = 0.0  # black: outside the field of view
    line, contrast = maps_of(img)
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
    assert post.bline_mimic(img, COLS, PLEURA, post.LineMaps(img)) == ""  # same with maps given


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
    img = band(42, H, lo=30, hi=100)
    k = post.confluent_bins(64, img, 42)
    assert k == 16  # a quarter of the 128 pixels in view at the pleura, in bins of 2 pixels
    prob = np.zeros(64)
    prob[20:20 + k] = 0.3  # a plateau under the B-line threshold counts: the model dips inside a band
    assert post.confluent(prob, img, 42.0) == (20, 20 + k)
    prob[20 + k - 1] = post.CONFLUENT_FLOOR - 0.01  # one column narrower: not a wide sector
    assert post.confluent(prob, img, 42.0) is None
    prob[20:20 + k] = 0.3
    assert post.confluent(prob, band(0, H, lo=30, hi=100), 42.0) is None  # starts above: a mimic
    assert post.confluent(np.zeros(64), img, 42.0) is None


def test_the_confluent_width_is_a_share_of_the_field_of_view_at_the_pleura():
    """A convex probe's sector is narrow just under the pleura: the band is measured against
    the width in view there, not the image's, whatever the model's column bins."""
    img = band(42, H, lo=40, hi=80)
    img[:, :32] = 0.0  # black outside a 64-pixel-wide field of view
    img[:, 96:] = 0.0
    assert post.view_width(img, 45) == 64 and post.view_width(np.zeros((8, 8)), 4) == 8
    assert post.confluent_bins(64, img, 42) == 8 and post.confluent_bins(128, img, 42) == 16
    prob = np.zeros(128)
    prob[44:60] = 0.3  # 16 of 128 bins: a quarter of the view, though an eighth of the image
    assert post.confluent(prob, img, 42.0) == (44, 60)
    prob[59] = 0  # 15 bins: under a quarter of the view
    assert post.confluent(prob, img, 42.0) is None


def test_separate_lines_with_dark_gaps_are_not_one_band():
    """Close separate B-lines the model's evidence bridges are counted as lines, not called
    confluent: under the pleura the image is dark between them."""
    img = band(42, H, lo=30, hi=100)
    for gap in range(36, 96, 8):
        img[42:, gap:gap + 3] = 0.2
    assert post.confluent_band_problem(img, 30, 100, 40) == "separate lines with dark gaps between them, not one band"
    prob = np.zeros(64)
    prob[15:50] = 0.4
    assert post.confluent(prob, img, 42.0) is None
    assert post.confluent(prob, band(42, H, lo=30, hi=100), 42.0) == (15, 50)


def test_a_wide_band_no_brighter_than_the_rest_under_the_pleura_is_not_confluent():
    img = band(42, 42)  # nothing drawn under the pleura
    assert post.confluent_band_problem(img, 30, 100, 40) == "no bright band below the pleura"
    assert post.confluent_band_problem(band(0, H, lo=30, hi=100), 30, 100, 40) == \
        "starts above the pleural line (E-line or needle artefact)"
    assert post.confluent_band_problem(band(42, H, lo=30, hi=100), 30, 100, 40) == ""


def test_a_confluent_band_makes_a_pattern_by_itself():
    th = {"bline": 0.5, "pattern_min_blines": 3}
    img = band(42, H, lo=40, hi=72)  # a quarter of the view: 16 bins
    k = post.confluent_bins(64, img, 42)
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
    assert post.bline_mimic(frame(line_from=0), (float(W), W + 2.0), PLEURA) == ""  # from its very edge


def test_dice_reads_any_non_zero_pixel_as_marked():
    # label images often mark with 255 or a class number, not 1
    assert post.dice(np.array([255, 0, 0], np.uint8), np.array([1, 0, 0])) == 1.0
    assert post.dice(np.array([1, 0, 2]), np.array([2, 0, 1], np.uint8)) == 1.0
    assert post.dice(np.array([0.5, 0.0]), np.array([1, 0])) == 1.0


def test_a_line_at_the_left_edge_is_followed_and_judged():
    img = frame()
    img[42:, 0:2] = 0.7  # a B-line hugging the image's left edge
    track = post.LineMaps(img).track(43, 0)
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
    _, contrast = maps_of(np.full((4, 30), 0.5))
    np.testing.assert_allclose(contrast, 0.0, atol=1e-6)


def test_contrast_is_measured_against_the_bands_four_to_eight_pixels_either_side():
    cols = np.arange(40, dtype=float)
    img = np.tile((cols / 40.0) ** 2 + 0.1, (3, 1))  # a background that curves: bands matter
    line, contrast = maps_of(img)
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
    track = post.LineMaps(track_image(step, width=3)).track(0, 21)
    assert [c for _, c, _ in track][-5:] == [21 + step] * 5


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("step", [2, -2, 3, -3])
def test_a_track_moves_at_most_one_column_a_row(step, width):
    track = post.LineMaps(track_image(step, width)).track(0, 20 + width // 2)
    cols = [c for _, c, _ in track]
    assert len(cols) == 20 and all(abs(a - b) <= 1 for a, b in zip(cols, cols[1:])), cols


def test_a_track_does_not_jump_to_a_line_three_columns_to_the_right():
    track = post.LineMaps(track_image(3)).track(0, 20)
    assert 23 not in {c for _, c, _ in track}


def test_a_track_ends_where_the_field_of_view_ends():
    img = track_image(0)
    img[15:, :] = 0.0  # black below row 15: outside the image sector
    track = post.LineMaps(img).track(0, 20)
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


# --- the finding scores: clip summary, free fluid, calibration ---

def test_the_clip_score_is_the_one_the_given_share_of_frames_reach():
    scores = [0.1, 0.5, -0.3, 0.9, 0.2]
    assert post.clip_score(scores, 0.3) == (0.5, 1)  # 30 % of 5 frames: 1.5, so the 2nd best
    assert post.clip_score(scores, 0.2) == (0.9, 3)  # 20 %: exactly one frame, the best
    assert post.clip_score(scores, 0.4) == (0.5, 1)  # 40 %: exactly two frames
    assert post.clip_score(scores, 0.41) == (0.2, 4)  # a little over two frames: the third
    assert post.clip_score(scores, 1.0) == (-0.3, 2)  # every frame: the lowest
    assert post.clip_score(scores, 0.0) == (0.9, 3)  # no share at all still names one frame
    assert post.clip_score([0.7], 0.3) == (0.7, 0)


def test_the_clip_score_names_the_first_of_equal_frames():
    assert post.clip_score([0.2, 0.6, 0.6, 0.6], 0.5) == (0.6, 2)  # 2nd best of three equal: frame 2
    score, i = post.clip_score(np.array([1, 3], np.int64), 0.5)
    assert (score, i) == (3.0, 1) and type(score) is float and type(i) is int


def test_the_fluid_score_is_the_logit_of_the_min_area_th_pixel_over_the_pixel_threshold():
    logits = np.array([[[0.5, -1.0, 2.0], [1.5, -3.0, 0.0]]])  # (1, h, w) as the model gives it
    assert post.fluid_score(logits, {"min_area_px": 3, "pixel": 0.5}) == pytest.approx(0.5)  # 3rd most likely
    assert post.fluid_score(logits, {"min_area_px": 1, "pixel": 0.75}) == pytest.approx(2.0 - np.log(3.0))
    assert post.fluid_score(logits, {"min_area_px": 2, "pixel": 0.25}) == pytest.approx(1.5 + np.log(3.0))
    assert post.fluid_score(logits, {"min_area_px": 0, "pixel": 0.5}) == pytest.approx(2.0)  # at least one pixel
    assert post.fluid_score(logits, {"min_area_px": 99, "pixel": 0.5}) == pytest.approx(-3.0)  # all of a small image
    assert post.fluid_score(logits, {"min_area_px": "6", "pixel": "0.5"}) == pytest.approx(-3.0)  # as a manifest may hold
    assert type(post.fluid_score(logits, {"min_area_px": 3, "pixel": 0.5})) is float


def test_the_fluid_score_is_non_negative_exactly_when_enough_pixels_pass():
    logits = np.full((4, 4), -5.0)
    logits[0, :3] = 1.0  # three pixels over a 0.5 threshold
    th = {"pixel": 0.5}
    assert post.fluid_score(logits, th | {"min_area_px": 3}) >= 0
    assert post.fluid_score(logits, th | {"min_area_px": 4}) < 0
    mask_area = post.fluid_mask(logits, 0.5).sum()
    assert mask_area == 3


def test_calibrated_is_platt_scaling_of_the_score():
    assert post.calibrated(0.0, {"a": 1.0, "b": np.log(3.0)}) == pytest.approx(0.75)
    assert post.calibrated(2.0, {"a": -0.5, "b": 1.0}) == pytest.approx(0.5)  # -0.5 * 2 + 1 = 0
    assert post.calibrated(1.0, {"a": 2.0, "b": 0.0}) == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert post.calibrated(-1.0, {"a": 2.0, "b": 0.5}) == pytest.approx(1 / (1 + np.exp(1.5)))
    assert type(post.calibrated(1.0, {"a": 2.0, "b": 0.0})) is float


def test_calibrated_is_none_without_a_fitted_calibration():
    assert post.calibrated(1.0, None) is None
    assert post.calibrated(1.0, {}) is None
    assert post.calibrated(1.0, {"method": "none", "ece": 0.04}) is None  # measured, not fitted
    assert post.calibrated(1.0, {"method": "temperature", "t": 0.5}) is None  # a gate's, not a finding's
    assert post.calibrated(1.0, {"method": "platt", "a": 2.0, "b": 0.0}) == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_a_temperature_sharpens_or_softens_the_gate_probabilities_and_keeps_their_order():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    sharp = post.view_calibrated(p, {"method": "temperature", "t": 0.5})
    # softmax(log p / t) is p ** (1/t) renormalised
    assert sharp[0] == pytest.approx(np.array([0.49, 0.04, 0.01]) / 0.54)
    assert np.allclose(sharp.sum(1), 1) and (sharp.argmax(1) == p.argmax(1)).all() and sharp[0, 0] > 0.7
    soft = post.view_calibrated(p, {"method": "temperature", "t": 2.0})
    assert soft[0, 0] < 0.7 and (soft.argmax(1) == p.argmax(1)).all()
    assert post.view_calibrated(p, {"method": "temperature", "t": 1.0}) == pytest.approx(p)
    assert post.view_calibrated(p, None) is p and post.view_calibrated(p, {"method": "none"}) is p


# --- lung sliding: drawn cines, 64 x 40, the lung model's pleural row in 32 row bins ---

SH, SW, SBINS = 64, 40, 32
FLOOR = 0.5 / 255  # half a grey level: the change a still, noiseless band is given


def rows_logits(bins_per_frame, n_bins: int = SBINS) -> np.ndarray:
    """Pleural-row logits with one sure peak per frame (row = (bin + 0.5) * 64 / 32 = 2 bin + 1)."""
    out = np.full((len(bins_per_frame), n_bins), -20.0)
    out[np.arange(len(bins_per_frame)), bins_per_frame] = 20.0
    return out


def cine(n: int = 8, prow: int = 31, lung=0.02, wall_step: float = 0.0, wall=0.3, pleura=0.6) -> np.ndarray:
    """n frames: a chest wall of brightness `wall`, the band at and below the pleura (rows
    prow-2 .. prow+5) of `pleura`; from one frame to the next that band changes by `lung` (per
    column when an array) and the rows above it by `wall_step`, nothing else changes."""
    img = np.broadcast_to(np.asarray(wall, float), (SH, SW)).copy()
    img[prow - 2:prow + 6] = np.broadcast_to(np.asarray(pleura, float), (8, SW))
    frames = np.repeat(img[None], n, 0)
    odd = np.arange(n) % 2 == 1
    frames[odd, prow - 2:prow + 6] += np.broadcast_to(np.asarray(lung, float), (8, SW))
    frames[odd, :prow - 2] += wall_step
    return frames


def slide(frames, bins=None, frame_numbers=None) -> dict:
    n = len(frames)
    bins = [15] * n if bins is None else bins  # row 31
    return post.lung_sliding(frames, rows_logits(bins), range(1, n + 1) if frame_numbers is None else frame_numbers)


def log_ratio(lung: float, wall: float) -> float:
    """The documented score: log of the change below over the change above, each floored."""
    return float(np.log((lung + FLOOR) / (wall + FLOOR)))


SLIDES = "the pleural line and the lung below it move between frames, the chest wall does not"
STILL = "nothing below the pleural line moves more than the still chest wall above it"
UNCERTAIN = ("the lung below the pleural line moves a little more than the chest wall: "
             "too little to tell whether it slides")
NO_LINE = "no clear pleural line found"
NOT_SEEN = "no pleural line seen where the model places it (rib shadows, or no image)"


def test_a_lung_that_moves_under_a_still_chest_wall_slides():
    lung = np.full(SW, 0.02)
    lung[20:25] = 0.03  # where it moves most: the M-mode line goes to the middle of these
    got = slide(cine(lung=lung))
    assert got["status"] == "present" and got["reason_code"] == "" and got["reason"] == SLIDES
    assert got["score"] == pytest.approx(log_ratio((35 * 0.02 + 5 * 0.03) / 40, 0.0), abs=1e-3)
    assert got["pleura_row"] == 31 and got["columns"] == [22]
    assert got["chest_wall_change"] == 0.0
    # the most different halves: columns 0-19 against 20-39, which hold the stronger motion
    assert got["sides"] == [pytest.approx(log_ratio(0.02, 0), abs=1e-3), pytest.approx(log_ratio(0.0225, 0), abs=1e-3)]
    assert got["frames"] == list(range(1, 9))


def test_a_still_lung_under_a_still_chest_wall_does_not_slide():
    got = slide(cine(lung=0.0))
    assert got["status"] == "absent" and got["reason_code"] == "" and got["reason"] == STILL
    assert got["score"] == 0.0 and got["pleura_row"] == 31 and len(got["columns"]) == 1
    assert 8 <= got["columns"][0] <= 31  # in the middle of the view


def test_noise_alike_above_and_below_is_no_sliding():
    got = slide(cine(lung=0.004, wall_step=0.004))
    assert got["status"] == "absent" and got["score"] == 0.0
    assert got["chest_wall_change"] == pytest.approx(0.004 / 0.302, abs=1e-4)


@pytest.mark.parametrize("target,status", [(0.33, "absent"), (0.35, "not assessable"), (0.46, "not assessable"),
                                           (0.48, "present")])
def test_the_score_thresholds_part_present_uncertain_and_absent(target, status):
    lung = FLOOR * (np.exp(target) - 1)  # a still wall: the score is log(1 + lung / floor)
    got = slide(cine(lung=lung))
    assert got["score"] == pytest.approx(target, abs=2e-3) and got["status"] == status, got
    if status == "not assessable":
        assert got["reason_code"] == "uncertain" and got["reason"] == UNCERTAIN


def test_the_score_is_the_log_ratio_of_the_change_below_to_the_change_above():
    got = slide(cine(lung=0.05, wall_step=0.01))
    assert got["status"] == "present"
    assert got["score"] == pytest.approx(log_ratio(0.05, 0.01), abs=1e-3)
    assert got["chest_wall_change"] == pytest.approx(0.01 / 0.305, abs=1e-4)


def test_a_single_frame_or_too_few_frames_are_not_assessable():
    one = slide(cine(n=1, lung=0.0))
    assert one["status"] == "not assessable" and one["reason_code"] == "single_frame"
    assert one["reason"] == "a single frame: lung sliding needs motion (a cine)"
    assert one["score"] is None and one["pleura_row"] is None and one["columns"] == [] and one["frames"] == [1]
    for n in (2, 3):
        few = slide(cine(n=n))
        assert few["status"] == "not assessable" and few["reason_code"] == "too_few_frames", few
        assert few["reason"] == f"{n} lung frames: at least 4 are needed to judge lung sliding"
        assert few["score"] is None and few["pleura_row"] is None and few["columns"] == []
    four = slide(cine(n=4))
    assert four["status"] == "present" and four["frames"] == [1, 2, 3, 4]


def test_the_frames_are_reported_as_plain_numbers():
    got = slide(cine(n=4, lung=0.0), frame_numbers=np.array([3, 5, 7, 9], np.int64))
    assert got["frames"] == [3, 5, 7, 9] and all(type(f) is int for f in got["frames"])
    assert type(got["pleura_row"]) is int and all(type(c) is int for c in got["columns"])


def test_no_sure_pleural_row_is_not_assessable():
    flat = post.lung_sliding(cine(), np.zeros((8, SBINS)), range(1, 9))
    assert flat["status"] == "not assessable" and flat["reason_code"] == "no_pleura" and flat["reason"] == NO_LINE
    assert flat["score"] is None and flat["columns"] == []
    assert flat["pleura_row"] == 1  # the likeliest bin (the first of equals), kept for the page


def conf_logits(share_outside: float) -> np.ndarray:
    """Row logits whose probability within one bin of the peak (bins 15, 16) is
    2 / (2 + share_outside): bin 17, outside, holds the rest."""
    lg = np.full(SBINS, -np.inf)
    lg[15:17] = 0.0
    lg[17] = np.log(share_outside) if share_outside else -np.inf
    return lg


def test_the_pleura_must_be_at_least_90_percent_sure():
    at, sure = conf_logits(0.5), conf_logits(0.0)  # 0.8 and 1.0: a median of exactly 0.9
    assert post.pleura_confidence(at) == pytest.approx(0.8) and post.pleura_confidence(sure) == 1.0
    got = post.lung_sliding(cine(), np.array([at, sure] * 4), range(1, 9))
    assert got["status"] == "present" and got["pleura_row"] == 31, got
    under = conf_logits(2 / 9 + 1e-9)  # a hair under 0.9 in every frame
    assert post.pleura_confidence(under) < 0.9
    got = post.lung_sliding(cine(), np.array([under] * 8), range(1, 9))
    assert got["reason_code"] == "no_pleura" and got["reason"] == NO_LINE, got
    got = post.lung_sliding(cine(), np.array([under, sure] * 4), range(1, 9))  # the median: just over 0.9
    assert got["status"] == "present", got


def test_pleural_rows_that_spread_more_than_six_rows_are_no_line():
    # 5 frames: the quartiles are the 2nd and 4th rows; bins 14 .. 17 are rows 29 .. 35
    spread6 = slide(cine(n=5), bins=[14, 14, 15, 17, 17])  # rows 29, 29, 31, 35, 35: 6 apart
    assert spread6["status"] == "present" and spread6["pleura_row"] == 31, spread6
    spread8 = slide(cine(n=5), bins=[14, 14, 15, 18, 18])  # rows 29 .. 37: 8 apart
    assert spread8["reason_code"] == "no_pleura" and spread8["reason"] == NO_LINE, spread8
    assert spread8["pleura_row"] == 31  # the median row


def test_the_pleural_row_must_leave_room_for_the_chest_wall_above_and_the_band_below():
    # the chest wall needs rows above prow - 3 - 4: a pleura at row 7 is the highest judged
    top = slide(cine(prow=7), bins=[3] * 8)  # row 7
    assert top["status"] == "present" and top["pleura_row"] == 7, top
    high = slide(cine(prow=7), bins=[2, 3] * 4)  # rows 5 and 7: the median row 6
    assert high["pleura_row"] == 6 and high["reason"] == NO_LINE, high
    # the band below reaches prow + 6: a pleura at row 58 of 64 is the lowest judged
    low = slide(cine(prow=58), bins=[28, 29] * 4)  # rows 57 and 59: the median row 58
    assert low["pleura_row"] == 58 and low["status"] == "present", low
    lower = slide(cine(prow=58), bins=[29] * 8)  # row 59
    assert lower["pleura_row"] == 59 and lower["reason"] == NO_LINE, lower


def test_the_pleural_row_is_the_median_of_the_frames_rows():
    got = slide(cine(), bins=[14, 15, 15, 16, 15, 15, 14, 16])  # rows 29, 31, 33: median 31
    assert got["pleura_row"] == 31 and got["status"] == "present"


def test_no_column_brighter_at_the_pleura_than_above_is_not_assessable():
    got = slide(cine(pleura=0.3, lung=0.02))  # the band at the pleura no brighter than the wall
    assert got["status"] == "not assessable" and got["reason_code"] == "no_pleura" and got["reason"] == NOT_SEEN
    assert got["score"] is None and got["columns"] == [] and got["pleura_row"] == 31
    black = slide(np.zeros((8, SH, SW)))  # no image at all
    assert black["reason"] == NOT_SEEN


def test_two_columns_of_forty_showing_the_pleura_are_enough():
    pleura = np.full(SW, 0.3)  # rib shadows: the pleura is not seen ...
    pleura[[10, 30]] = 0.6  # ... but in two columns: 5 % of 40
    got = slide(cine(pleura=pleura, lung=0.02))
    assert got["status"] == "present", got
    assert got["columns"] in ([10], [30])
    pleura[30] = 0.3  # one column: under 5 %
    got = slide(cine(pleura=pleura, lung=0.02))
    assert got["reason"] == NOT_SEEN, got


def test_the_pleura_must_be_more_than_1_15_times_as_bright_as_the_wall():
    pleura = np.full(SW, 0.5)  # rib shadows (as bright as the wall) ...
    pleura[[10, 30]] = np.float32(1.15) * np.float32(0.5)  # ... and two columns exactly 1.15 times
    got = slide(cine(pleura=pleura, wall=0.5, lung=0.0))
    assert got["reason"] == NOT_SEEN, got
    pleura[[10, 30]] = 0.58  # a little more
    got = slide(cine(pleura=pleura, wall=0.5, lung=0.0))
    assert got["status"] == "absent", got


def test_only_columns_in_view_can_show_the_pleura():
    wall = np.full(SW, 0.3)
    wall[:20] = 0.0  # the left half outside the field of view above the pleura ...
    pleura = np.full(SW, 0.3)
    pleura[:20] = 0.6  # ... bright at the pleura there (no chest wall to compare); a rib shadow elsewhere
    got = slide(cine(wall=wall, pleura=pleura))
    assert got["reason"] == NOT_SEEN, got


def test_a_chest_wall_that_changes_by_more_than_a_tenth_means_the_probe_moved():
    # wall 0.59375 and 0.65625 in turn: a mean of 0.625 and a change of 0.0625, exactly a tenth
    at = slide(cine(wall=0.59375, wall_step=0.0625, pleura=0.5, lung=0.5))
    assert at["chest_wall_change"] == 0.1 and at["status"] == "present", at
    assert at["score"] == pytest.approx(log_ratio(0.5, 0.0625), abs=1e-3)
    moved = slide(cine(wall=0.59375, wall_step=0.125, pleura=0.6, lung=0.5))  # 0.125 / 0.65625
    assert moved["status"] == "not assessable" and moved["reason_code"] == "probe_moved"
    assert moved["reason"] == "the probe moved: the chest wall changes between frames"
    assert moved["chest_wall_change"] == round(0.125 / 0.65625, 4) and moved["score"] is None
    assert len(moved["columns"]) == 1  # where the page's M-mode strip is taken, all the same


def test_the_chest_wall_change_is_measured_where_the_pleura_shows():
    """Rib shadows (wall as bright as the pleura band, so no pleura seen) whose wall changes a
    lot do not make the probe look moved: only columns that show the pleura count."""
    wall = np.full(SW, 0.3)
    pleura = np.full(SW, 0.6)
    pleura[20:] = 0.3  # right half: rib shadow
    frames = cine(wall=wall, pleura=pleura, lung=0.02)
    frames[1::2, :29, 20:] += 0.2  # the wall over the ribs flickers
    got = slide(frames)
    assert got["status"] == "present" and got["chest_wall_change"] == 0.0, got
    assert got["score"] == pytest.approx(log_ratio(0.02, 0.0), abs=1e-3)


def test_the_m_mode_line_is_taken_in_the_middle_of_the_view_where_the_chest_wall_is_whole():
    lung = np.full(SW, 0.01)
    lung[2:7] = 0.05  # moves most near the edge of the view (columns 0-7 are outside the middle 60 %)
    lung[12:17] = 0.03  # ... then here, under chest wall that is partly out of view
    lung[24:29] = 0.02  # ... and here, in the middle under a whole chest wall
    frames = cine(lung=lung)
    frames[:, 16:20, 10:19] = 0.0  # the top of the chest-wall band is black over columns 10-18
    got = slide(frames)
    assert got["status"] == "present" and got["columns"] == [26], got


def test_the_m_mode_line_goes_anywhere_the_pleura_shows_when_the_middle_shows_none():
    lung = np.full(SW, 0.02)
    lung[2:7] = 0.04
    pleura = np.full(SW, 0.3)
    pleura[:8] = 0.6  # the pleura shows only left of the middle 60 % of the view
    got = slide(cine(lung=lung, pleura=pleura))
    assert got["status"] == "present" and got["columns"] == [4], got


def test_the_middle_of_the_view_is_the_middle_of_the_columns_in_view():
    """The view is columns 20-39 (black left of them): its middle 60 % is columns 23.8-35.2,
    not 7.8-31.2 as it would be of the whole width."""
    wall = np.full(SW, 0.3)
    wall[:20] = 0.0
    lung = np.full(SW, 0.02)
    lung[21:26] = 0.04  # moves most around column 23, just left of the middle
    assert slide(cine(lung=lung, wall=wall))["columns"] == [24]  # the nearest allowed column
    lung = np.full(SW, 0.02)
    lung[34:39] = 0.04  # around column 36, just right of it
    assert slide(cine(lung=lung, wall=wall))["columns"] == [35]


def test_sliding_on_one_side_of_a_line_only_is_a_possible_lung_point():
    lung = np.zeros(SW)
    lung[:20] = 0.02  # the left half slides, the right half does not
    lung[12:17] = 0.03  # most around column 14
    got = slide(cine(lung=lung))
    assert got["status"] == "not assessable" and got["reason_code"] == "partial", got
    assert got["reason"] == "the lung slides in part of the view only (a lung point?): pneumothorax not excluded"
    assert got["sides"] == [pytest.approx(log_ratio(0.0225, 0), abs=1e-3), 0.0]
    assert got["score"] == pytest.approx(log_ratio(0.45 / 40, 0), abs=1e-3)
    # an M-mode line on each side: where the left moves most, and the right's best (its
    # first column, whose 5-column average still holds two moving columns)
    assert got["columns"] == [14, 20]


def test_a_lung_point_is_found_among_the_columns_that_show_the_pleura():
    lung = np.zeros(SW)
    lung[30:] = 0.02  # the right side slides: columns 30-39
    pleura = np.full(SW, 0.6)
    pleura[:20] = 0.3  # columns 0-19 a rib shadow: the pleura shows in 20-39, split at 30
    got = slide(cine(lung=lung, pleura=pleura))
    assert got["reason_code"] == "partial", got
    assert got["sides"] == [0.0, pytest.approx(log_ratio(0.02, 0), abs=1e-3)]
    assert got["columns"][1] >= 30 and 20 <= got["columns"][0] < 30


def test_a_clip_that_hardly_moves_as_a_whole_is_absent_even_with_one_sliding_side():
    lung = np.zeros(SW)
    lung[:20] = FLOOR * (np.exp(0.5) - 1)  # the left side's score 0.5; the clip's about 0.28
    got = slide(cine(lung=lung))
    assert got["sides"] == [pytest.approx(0.5, abs=2e-3), 0.0]
    assert got["score"] == pytest.approx(np.log(1 + (np.exp(0.5) - 1) / 2), abs=2e-3)
    assert got["status"] == "absent" and len(got["columns"]) == 1, got


def test_two_sides_that_both_slide_are_sliding_however_unequal():
    lung = np.full(SW, FLOOR * (np.exp(0.3) - 1))  # the right side's score 0.3: it slides a little
    lung[:20] = 0.02
    got = slide(cine(lung=lung))
    assert got["sides"][1] == pytest.approx(0.3, abs=2e-3) and got["status"] == "present", got
    lung[20:] = FLOOR * (np.exp(0.2) - 1)  # 0.2: under the still side's 0.23
    assert slide(cine(lung=lung))["reason_code"] == "partial"


def test_an_unequal_clip_whose_better_side_does_not_reach_present_is_uncertain():
    lung = np.full(SW, 0.25 * FLOOR)  # right: log 1.25 = 0.22, still
    lung[:20] = 0.58 * FLOOR  # left: log 1.58 = 0.46, not quite "present"; the clip: log 1.415 = 0.35
    got = slide(cine(lung=lung))
    assert got["sides"] == [pytest.approx(np.log(1.58), abs=2e-3), pytest.approx(np.log(1.25), abs=2e-3)]
    assert got["score"] == pytest.approx(np.log(1.415), abs=2e-3)
    assert got["reason_code"] == "uncertain", got


def test_one_column_showing_the_pleura_has_no_two_sides():
    pleura = np.full(SW, 0.3)
    pleura[10] = 0.6  # the pleura in one column of 20 in view: 5 %
    wall = np.full(SW, 0.3)
    wall[20:] = 0.0
    got = slide(cine(pleura=pleura, wall=wall))
    assert got["status"] == "present" and got["sides"] == [] and got["columns"] == [10], got


def test_the_split_scores_are_the_two_most_different_sides_worked_by_hand():
    # 4 columns: splits after 1, 2 or 3 columns; the change at the pleura 1, 1, 0, 0 under a still wall
    f = FLOOR
    sides, split = post._split_scores(np.array([1.0, 1.0, 0.0, 0.0]), np.zeros(4))
    assert split == 2 and sides == [round(np.log((1 + f) / f), 3), 0.0]
    # the wall changes too: the scores are log ratios per side
    sides, split = post._split_scores(np.array([0.0, 0.0, 0.0, 0.3]), np.array([0.1, 0.1, 0.1, 0.1]))
    assert split == 3
    assert sides == [round(np.log(f / (0.1 + f)), 3), round(np.log((0.3 + f) / (0.1 + f)), 3)]


def test_each_side_of_the_split_holds_at_least_a_quarter_of_the_columns():
    # only the first column moves: the best split would be after it, but a side needs 2 of 8
    lung = np.zeros(8)
    lung[0] = 0.8
    sides, split = post._split_scores(lung, np.zeros(8))
    assert split == 2 and sides == [round(np.log((0.4 + FLOOR) / FLOOR), 3), 0.0]
    lung = np.zeros(8)
    lung[7] = 0.8  # the last column: split before the last two
    sides, split = post._split_scores(lung, np.zeros(8))
    assert split == 6 and sides == [0.0, round(np.log((0.4 + FLOOR) / FLOOR), 3)]
    # 9 columns: a quarter is 2.25, so 3 columns a side
    lung = np.zeros(9)
    lung[0] = 0.9
    sides, split = post._split_scores(lung, np.zeros(9))
    assert split == 3 and sides == [round(np.log((0.3 + FLOOR) / FLOOR), 3), 0.0]


def test_too_few_columns_for_two_sides_give_no_split():
    assert post._split_scores(np.array([0.5]), np.array([0.0])) == ([], 0)
    sides, split = post._split_scores(np.array([0.5, 0.0]), np.zeros(2))  # two: one column a side
    assert split == 1 and sides == [round(np.log((0.5 + FLOOR) / FLOOR), 3), 0.0]
    sides, split = post._split_scores(np.array([0.0, 0.0, 0.6]), np.zeros(3))
    assert split == 2 and sides == [0.0, round(np.log((0.6 + FLOOR) / FLOOR), 3)]


def test_the_split_scores_are_plain_numbers():
    sides, split = post._split_scores(np.array([1.0, 1.0, 0.0, 0.0]), np.zeros(4))
    assert all(type(v) is float for v in sides) and type(split) is int


def test_the_pleura_confidence_is_the_probability_within_one_bin_of_the_peak():
    # probabilities 1/8, 2/8, 4/8, 1/8 (logits the logs of 1, 2, 4, 1)
    assert post.pleura_confidence(np.log([1.0, 2.0, 4.0, 1.0])) == pytest.approx(7 / 8)
    assert post.pleura_confidence(np.log([4.0, 2.0, 1.0, 1.0])) == pytest.approx(6 / 8)  # peak at the first bin
    assert post.pleura_confidence(np.log([1.0, 1.0, 2.0, 4.0])) == pytest.approx(6 / 8)  # at the last
    assert post.pleura_confidence(np.log([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == pytest.approx(2 / 6)  # the first of equals
    assert post.pleura_confidence([0.0, 30.0, 0.0]) == pytest.approx(1.0)
    assert type(post.pleura_confidence(np.log([1.0, 2.0]))) is float


# --- one lung frame's score: drawn frames 128 x 64 scored in 32 column bins (2 pixels a bin) ---

def lines(px, wide=(), from_row: int = 42) -> np.ndarray:
    """A frame with 3-pixel B-lines starting at the given columns and bands [a, b), from
    `from_row` (the pleura at rows 38-41) to the bottom."""
    img = np.full((H, W), 0.2)
    img[38:42] = 0.8
    for c in px:
        img[from_row:, c:c + 3] = 0.7
    for a, b in wide:
        img[from_row:, a:b] = 0.7
    return img


def evidence(**bins) -> np.ndarray:
    prob = np.zeros(32)
    for b, p in bins.items():
        prob[int(b[1:])] = p
    return prob


def test_the_frame_score_is_the_logit_of_the_k_th_strongest_line_over_the_threshold():
    img = lines([8, 24, 40, 56])  # bins 4, 12, 20, 28
    prob = evidence(b4=0.9, b12=0.8, b20=0.7, b28=0.65)
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.6})  # k: 3 lines when not given
    assert fr["runs"] == [(4, 5), (12, 13), (20, 21), (28, 29)] and fr["mimics"] == []
    assert fr["score"] == pytest.approx(np.log(0.7 / 0.3) - np.log(0.6 / 0.4))
    assert fr["pleura_row"] == pytest.approx(42.0) and fr["confluent"] is False
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.6, "pattern_min_blines": 2})
    assert fr["score"] == pytest.approx(np.log(0.8 / 0.2) - np.log(0.6 / 0.4))


def test_a_mimic_is_kept_apart_with_its_reason_and_does_not_count():
    img = lines([8, 24])
    img[:38, 40:43] = 0.7  # bin 20: a line from the top of the image, through the pleura
    img[42:, 40:43] = 0.7
    prob = evidence(b4=0.9, b12=0.8, b20=0.95)
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5, "pattern_min_blines": 2})
    assert fr["runs"] == [(4, 5), (12, 13)]
    assert fr["mimics"] == [((20, 21), "starts above the pleural line (E-line or needle artefact)")]
    assert fr["score"] == pytest.approx(np.log(0.8 / 0.2))  # the 2nd accepted line; the mimic's 0.95 is no line


def test_with_fewer_lines_than_a_pattern_the_score_is_the_strongest_weak_bump():
    """No line over the threshold: the k-th strongest bump of evidence under it (the bumps from
    0.02 up, the rest counted as no evidence)."""
    img = lines([])
    prob = evidence(b4=0.3, b12=0.2, b20=0.1, b28=0.02)
    th = {"bline": 0.5, "pattern_min_blines": 4}
    assert post.lung_frame(prob, PLEURA_LOGITS, img, th)["score"] == pytest.approx(np.log(0.02 / 0.98))
    th = {"bline": 0.5, "pattern_min_blines": 2}
    assert post.lung_frame(prob, PLEURA_LOGITS, img, th)["score"] == pytest.approx(np.log(0.2 / 0.8))
    prob[28] = 0.019  # under 0.02: no bump, no evidence (clipped at 1e-6)
    th = {"bline": 0.5, "pattern_min_blines": 4}
    assert post.lung_frame(prob, PLEURA_LOGITS, img, th)["score"] == pytest.approx(np.log(1e-6 / (1 - 1e-6)))


def test_lines_found_are_not_counted_again_as_bumps():
    img = lines([8, 24])
    prob = evidence(b4=0.9, b12=0.8)
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5, "pattern_min_blines": 3})
    assert len(fr["runs"]) == 2 and fr["score"] == pytest.approx(np.log(1e-6 / (1 - 1e-6)))


def test_the_dip_between_two_touching_lines_is_no_third_line():
    """Evidence 0.9, 0.7, 0.9: two lines parted by a dip that is itself over the threshold; the
    dip counts as a bump just under the threshold, so two lines stay short of a 3-line pattern."""
    img = lines([], wide=[(20, 26)])
    prob = evidence(b10=0.9, b11=0.7, b12=0.9)
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5, "pattern_min_blines": 3})
    assert fr["runs"] == [(10, 11), (12, 13)]
    assert -1e-4 < fr["score"] < 0


def test_a_confluent_band_adds_k_lines_to_the_stronger_ones():
    img = lines([4, 12, 20], wide=[(36, 52)])  # three lines (bins 2, 6, 10) and a band (bins 18-25)
    prob = evidence(b2=0.95, b6=0.95, b10=0.95)
    prob[18:26] = 0.6
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5, "pattern_min_blines": 3})
    assert fr["confluent"] is True and fr["runs"] == [(2, 3), (6, 7), (10, 11), (18, 26)]
    assert fr["score"] == pytest.approx(np.log(0.95 / 0.05))


# --- the verdict's thresholds, at their edges ---

E_LINE = "starts above the pleural line (E-line or needle artefact)"
FADES = "fades before the bottom of the image (Z-line or comet tail)"


def test_a_line_starts_above_when_four_rows_above_show_it_over_an_eighth_of_its_contrast_below():
    assert post._verdict(np.full(4, 0.2), 0.5, 0.5) == E_LINE
    assert post._verdict(np.full(3, 0.2), 0.5, 0.5) == ""  # three rows above: too few to say
    assert post._verdict(np.full(4, 0.06), 0.5, 0.5) == ""  # exactly 0.12 of the 0.5 below: not over it
    assert post._verdict(np.full(4, 0.061), 0.5, 0.5) == E_LINE
    assert post._verdict(np.array([0.0, 0.0, 0.2, 0.2, 0.2]), 0.5, 0.5) == E_LINE  # the median over 0.06
    assert post._verdict(np.array([0.0, 0.0, 0.0, 0.2, 0.2]), 0.5, 0.5) == ""


def test_a_faint_line_needs_more_than_chest_wall_speckle_above_to_start_above():
    # 0.12 of a faint line's 0.1 is 0.012; speckle reaches 0.03, so that is the bar
    assert post._verdict(np.full(4, 0.03), 0.1, 0.1) == ""
    assert post._verdict(np.full(4, 0.031), 0.1, 0.1) == E_LINE


def test_a_line_fades_when_its_deep_contrast_is_under_45_percent_of_the_near_one():
    assert post._verdict(np.zeros(4), 0.5, 0.225) == ""  # exactly 45 %
    assert post._verdict(np.zeros(4), 0.5, 0.2249) == FADES
    assert post._verdict(np.zeros(4), 0.5, 0.6) == ""


# --- a band (8 pixels or wider): its background, row by row, either side of it ---

NO_BAND = "no bright band below the pleura"


def plain(h: int = H, w: int = 128, bg: float = 0.2, pleura: bool = True) -> np.ndarray:
    img = np.full((h, w), bg)
    if pleura:
        img[38:42] = 0.8
    return img


def beside(left: float, right: float) -> np.ndarray:
    """A faint band (columns 50-59, 0.33) whose background is `left` on one side and `right`
    on the other, with a bright edge (0.9) in the two columns next to it, which are no
    background."""
    img = plain()
    img[42:, :48] = left
    img[42:, 48:50] = img[42:, 60:62] = 0.9
    img[42:, 50:60] = 0.33
    img[42:, 62:] = right
    return img


def test_the_background_of_a_band_is_the_median_of_both_sides_leaving_out_its_edges():
    # 0.1 on one side, 0.3 on the other: a background of 0.2, so the band stands 0.13 over it
    assert post.bline_mimic(beside(0.1, 0.3), (50.0, 60.0), PLEURA) == ""
    assert post.bline_mimic(beside(0.3, 0.1), (50.0, 60.0), PLEURA) == ""
    # one side alone, or either edge counted as background, would read 0.3 and no band
    assert post.bline_mimic(beside(0.3, 0.3), (50.0, 60.0), PLEURA) == NO_BAND


def test_a_band_near_the_left_edge_takes_its_background_from_the_first_column_on():
    img = plain()
    img[42:, 0] = 0.2
    img[42:, 1:3] = 0.1
    img[42:, 3:5] = img[42:, 13:15] = 0.9  # the band's edges
    img[42:, 5:13] = 0.33  # the band, columns 5-12
    img[42:, 15:18] = 0.1
    img[42:, 18:23] = 0.7  # background columns 0-2 and 15-22: 0.1 x 5, 0.2, 0.7 x 5, a median of 0.2
    assert post.bline_mimic(img, (5.0, 13.0), PLEURA) == ""
    img[42:, 0] = 0.7  # the first column brighter: the median is 0.7, over the band
    assert post.bline_mimic(img, (5.0, 13.0), PLEURA) == NO_BAND


def test_a_band_cut_by_the_edge_of_the_sector_is_judged_on_what_is_in_view():
    img = plain()
    img[42:, 50:80] = 0.7
    img[90:, 65:] = 0.0  # deep down, the right half of the band and its right side are outside the image
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == ""
    img[90:, 65:80] = 0.02  # as dim as the image gets but in view: the band fades there
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == FADES


def test_a_band_whose_one_side_is_outside_the_image_is_compared_with_the_other_side():
    img = plain()
    img[:, 82:] = 0.0  # right of the band: outside the sector
    img[42:, 50:80] = 0.23  # 0.03 over the background on its left: too faint
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == NO_BAND
    img = plain()
    img[42:, 82:] = 0.02  # the right side in view, as dim as can be: background of 0.11
    img[42:, 50:80] = 0.23
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == ""


def test_a_band_the_width_of_the_image_is_judged_by_its_brightness_alone():
    img = plain(w=64, bg=0.05)
    img[42:] = np.interp(np.arange(42, H), [42, 80], [0.7, 0.2])[:, None]  # bright under the pleura, then dim
    assert post.bline_mimic(img, (0.0, 64.0), PLEURA) == FADES
    img[42:] = 0.7
    assert post.bline_mimic(img, (0.0, 64.0), PLEURA) == ""


def test_a_band_is_compared_with_its_background_row_by_row():
    img = plain()
    bg = np.interp(np.arange(42, H), [42, H - 1], [0.4, 0.15])  # the image darkens with depth
    img[42:] = bg[:, None]
    img[42:, 50:80] = (bg + 0.2)[:, None]  # the band stays 0.2 over it all the way down
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == ""


def test_eight_rows_below_the_pleura_are_enough_to_judge_a_band():
    img = plain()
    img[:, 50:80] = 0.7  # from the top: starts above
    img[38:42] = 0.8
    assert post.bline_mimic(img[:51], (50.0, 80.0), PLEURA) == E_LINE  # rows 43-50
    assert post.bline_mimic(img[:50], (50.0, 80.0), PLEURA) == ""


def band_rows(contrast, bg: float = 0.2) -> np.ndarray:
    """A band (columns 20-27) whose contrast over the background in row 43 + i is contrast[i],
    in an image that ends with the last of them; nothing above the pleura."""
    img = plain(h=43 + len(contrast), w=64, bg=bg)
    img[43:, 20:28] = bg + np.asarray(contrast, float)[:, None]
    return img


def test_near_is_the_median_of_the_first_quarter_of_the_rows_below_at_least_two():
    # 8 rows: the first two (0.3 and 0) make near 0.15; the third (0.01) is not in it
    assert post.bline_mimic(band_rows([0.3, 0.0, 0.01] + [0.1] * 5), (20.0, 28.0), PLEURA) == ""
    # 12 rows: the first three, a median of 0.01: too faint
    assert post.bline_mimic(band_rows([0.3, 0.0, 0.01] + [0.1] * 9), (20.0, 28.0), PLEURA) == NO_BAND


def test_deep_is_the_median_of_the_last_quarter_of_the_rows_below():
    assert post.bline_mimic(band_rows([0.3] * 12 + [0.05] * 4), (20.0, 28.0), PLEURA) == FADES
    assert post.bline_mimic(band_rows([0.3] * 12 + [0.05, 0.05, 0.3, 0.3]), (20.0, 28.0), PLEURA) == ""  # a median of 0.175


def test_a_band_exactly_at_the_minimum_contrast_is_bright_enough():
    # 0.08 over 0.04: exactly 0.04 in binary too
    assert post.bline_mimic(band_rows([0.04] * 8, bg=0.04), (20.0, 28.0), PLEURA) == ""
    assert post.bline_mimic(band_rows([0.039] * 8, bg=0.04), (20.0, 28.0), PLEURA) == NO_BAND


def test_what_lies_near_the_skin_is_not_looked_at_for_a_start_above_the_pleura():
    img = plain()
    img[:21, 50:80] = 0.7  # bright in the top 20 rows (above 2/3 of the pleura's depth) ...
    img[42:, 50:80] = 0.7  # ... and from the pleura down
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == ""
    img[:36, 50:80] = 0.7  # down to 4 rows above the pleura: an E-line
    assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == E_LINE


@pytest.mark.parametrize("cols", [(50.0, 80.0), (50.0, 53.0)], ids=["band", "line"])
def test_the_rows_just_above_the_pleura_are_its_blur_not_a_start_above(cols):
    img = plain(pleura=False)
    img[8:, int(cols[0]):int(cols[1])] = 0.7  # from 4 rows above the pleura's row 12 down
    assert post.bline_mimic(img, cols, 12.0) == ""
    img[:8, int(cols[0]):int(cols[1])] = 0.7  # from the top
    img = np.vstack([plain(h=20, pleura=False), img])  # the pleura 20 rows lower: room above to see it
    assert post.bline_mimic(img, cols, 32.0) == E_LINE


def test_judging_a_frame_whose_bottom_is_outside_the_image_raises_no_warning():
    img = plain()
    img[42:, 50:80] = 0.7
    img[100:] = 0.0  # the bottom rows black: no image, nothing to average there
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be an error here (and noise in the kit's log)
        assert post.bline_mimic(img, (50.0, 80.0), PLEURA) == ""
        assert post.bline_mimic(img, (50.0, 53.0), PLEURA) == ""


# --- which column of a run is followed, and how a run's width decides line or band ---

def test_an_eight_pixel_run_is_judged_as_a_band_over_its_whole_width():
    """An 8-pixel stripe from the pleura down with an E-line in its last column: the band's
    mean over its width shows the E-line above the pleura (a line check would follow the
    stripe's first column and miss it)."""
    img = frame()
    img[42:, 30:38] = 0.7
    img[:38, 37] = 0.9  # the E-line
    assert post.bline_mimic(img, (30.0, 38.0), PLEURA) == E_LINE
    # a run that ends before the E-line's column is 7 pixels wide: a line, followed from its first column
    assert post.bline_mimic(img, (30.0, 37.0), PLEURA) == ""


def test_the_column_followed_is_the_brightest_in_rows_3_to_10_below_the_pleura():
    """A run over two things: a short blob and a faint line (3 pixels each) that reaches the
    bottom. What is followed is the one brighter on average in rows 43-50 (the pleura at 40):
    the blob turns the run away, the line keeps it."""
    def run(blob_rows, blob_cols, line_cols):
        img = frame()
        img[42:, line_cols] = 0.25
        img[blob_rows, blob_cols] = 1.0
        return post.bline_mimic(img, (30.0, 37.0), PLEURA)
    assert run(slice(37, 43), slice(30, 33), slice(34, 37)) == ""  # a blob in the pleural line (rows 37-42): the line wins
    assert run(slice(43, 44), slice(30, 33), slice(34, 37)) == "no bright line below the pleura"  # row 43 counts
    assert run(slice(51, 52), slice(30, 33), slice(34, 37)) == ""  # row 51 does not


def test_a_single_column_run_follows_that_column():
    """A one-column run between a fading line two columns left of it and a B-line three
    columns right, its right neighbour a little brighter: the track starts at the run's own
    column and takes the fading line."""
    img = frame()
    img[42:, 28] = np.interp(np.arange(42, H), [42, 80], [0.7, 0.2])  # fades
    img[42:, 33] = 0.7
    img[43:51, 31] = 0.21
    assert post.bline_mimic(img, (30.0, 31.0), PLEURA) == FADES


def test_near_and_deep_of_a_line_are_the_first_and_last_quarter_of_its_track():
    short = frame()[:51]  # rows 43-50 below the pleura: 8, so a quarter is 2
    short[43:51, 30:33] = (0.2 + np.array([0.3, 0.0, 0.01] + [0.1] * 5))[:, None]
    assert post.bline_mimic(short, COLS, PLEURA) == ""  # near: the median of 0.3 and 0
    twelve = frame()[:55]  # 12 rows below: a quarter is 3, and the third (0.01) makes near too faint
    twelve[43:55, 30:33] = (0.2 + np.array([0.3, 0.0, 0.01] + [0.1] * 9))[:, None]
    assert post.bline_mimic(twelve, COLS, PLEURA) == "no bright line below the pleura"
    ends = frame()
    ends[42:106, 30:33] = 0.7  # bright from the pleura to row 105, then nothing to the bottom (127)
    assert post.bline_mimic(ends, COLS, PLEURA) == FADES


def test_an_oblique_line_is_followed_upwards_from_its_start_column():
    """A line leaning one column a row below the pleura (3 pixels wide, the brightest column
    in rows 43-50 is 21) whose continuation above it, one pixel wide, lies one column right
    of the slope through column 21 at row 43: within the line's width of that path, so seen
    (an E-line); two columns further left of it, it is not."""
    def img(shift):
        im = np.full((H, 128), 0.2)
        im[38:42] = 0.8
        for r in range(0, H):
            c = 20 + (r - 43)
            if r >= 42:
                im[r, c - 1:c + 2] = 0.9
            elif r < 36 and c + shift >= 0:
                im[r, c + shift] = 0.6
        return im
    assert post.bline_mimic(img(2), (19.0, 22.0), PLEURA) == E_LINE
    assert post.bline_mimic(img(-1), (19.0, 22.0), PLEURA) == ""


def test_evidence_exactly_at_the_confluent_floor_counts():
    img = band(42, H, lo=30, hi=100)
    k = post.confluent_bins(64, img, 42)
    prob = np.zeros(64)
    prob[20:20 + k] = post.CONFLUENT_FLOOR
    assert post.confluent(prob, img, 42.0) == (20, 20 + k)


def test_the_confluent_band_is_judged_at_its_own_pixels():
    """32 bins over 64 pixels: bins 12-30 are pixels 24-61. A needle's reverberation left of
    it (pixels 4-19, from the top) lies outside the band, and a line over the chest wall on
    its first pixel (24) is too narrow to make the band a mimic; judged at other pixels
    they would."""
    img = frame()
    img[42:, 24:62] = 0.7
    img[:, 4:20] = 0.7
    img[38:42] = 0.8
    prob = np.zeros(32)
    prob[12:31] = 0.5
    assert post.confluent(prob, img, 40.0) == (12, 31)
    img[:38, 24] = 0.9
    assert post.confluent(prob, img, 40.0) == (12, 31)
    img[:, 4:20] = 0.2
    img[38:42] = 0.8
    img[:38, 24:40] = 0.9  # a wide part of it over the chest wall: a mimic
    assert post.confluent(prob, img, 40.0) is None


def test_of_equal_scores_the_clip_names_the_earliest_frame():
    # 17 frames (more than a sort keeps in order by chance): five at 2, six at 1, six at 0
    s = [2, 1, 1, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 1, 2, 2, 1]
    assert post.clip_score(s, 0.2) == (2.0, 14)  # 3.4 frames: the 4th of the 2s (frames 0, 9, 11, 14, 15)
    assert post.clip_score(s, 0.3) == (1.0, 1)  # 5.1: the 6th, the first of the 1s
    assert post.clip_score(s, 0.6) == (1.0, 16)  # 10.2: the 11th, the last of the 1s


def test_a_certain_frame_still_has_a_finite_score():
    assert post.logit(1.0) == pytest.approx(np.log((1 - 1e-6) / 1e-6))
    assert post.logit(0.0) == pytest.approx(-np.log((1 - 1e-6) / 1e-6))
    assert post.logit(0.75) == pytest.approx(np.log(3.0))


def test_contrast_with_one_background_pixel_or_an_odd_number_of_them():
    _, c = maps_of(np.array([[0.5, 0.5, 0.5, 0.5, 0.3]]))
    assert c[0, 0] == pytest.approx(0.5 - 0.3, abs=1e-6)  # its one background pixel, 4 columns right
    img = np.array([[0.5] * 6 + [0.1, 0.2, 0.3, 0.4, 0.9] + [0.5] * 5])
    _, c = maps_of(img)
    assert c[0, 2] == pytest.approx(0.5 - 0.3, abs=1e-6)  # columns 6-10 only: their median, 0.3


def test_a_pixel_exactly_at_the_in_view_level_is_in_view():
    line, c = maps_of(np.full((1, 20), post.IN_VIEW))
    assert line[0, 0] == post.IN_VIEW and not np.isnan(c[0, 0])


def test_split_run_cuts_only_at_a_minimum_at_least_the_dip_below_both_sides():
    # a column rising again after a cut is the next line's, even below the left peak
    assert post.split_run(np.array([0.9, 0.6, 0.7, 0.8, 0.95]), 0, 5, 0.05) == [(0, 1), (2, 5)]
    # a falling column is no minimum, however far under the peaks
    assert post.split_run(np.array([0.9, 0.8, 0.6, 0.9]), 0, 4, 0.05) == [(0, 2), (3, 4)]
    # exactly the dip below (in binary too): cut
    assert post.split_run(np.array([1.0, 0.75, 1.0]), 0, 3, 0.25) == [(0, 1), (2, 3)]
    assert post.split_run(np.array([1.0, 0.8, 1.0]), 0, 3, 0.25) == [(0, 3)]


def test_the_m_mode_column_weighs_the_pleuras_change_against_the_walls():
    """Worked by hand (floor F): columns 0-9 change 3 F at the pleura under a still wall, a
    ratio (3F + F) / F = 4; columns 10-19 change 0.7 + 2.5 F under a wall changing 0.2, a
    ratio 3.5 although both change far more: the first place is where the M-mode goes."""
    lung = np.concatenate([np.full(10, 3 * FLOOR), np.full(10, 0.7 + 2.5 * FLOOR)])
    wall = np.concatenate([np.zeros(10), np.full(10, 0.2)])
    assert 2 <= post.m_mode_column(lung, wall, np.ones(20, bool)) <= 7


def test_a_wide_run_is_judged_at_its_own_pixels_in_a_frame():
    """32 bins over 64 pixels: a run of bins 15-18 is pixels 30-37, a band whose last column
    carries an E-line above the pleura."""
    img = frame()
    img[42:, 30:38] = 0.7
    img[:38, 37] = 0.9
    prob = np.zeros(32)
    prob[15:19] = 0.9
    fr = post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5})
    assert fr["runs"] == [] and fr["mimics"] == [((15, 19), E_LINE)]


def test_the_spread_of_the_pleural_rows_is_their_interquartile_range_up_to_six():
    # 4 frames, quartiles by linear interpolation: rows 5, 31, 31, 31 spread 31 - 24.5 = 6.5
    assert slide(cine(n=4), bins=[2, 15, 15, 15])["reason"] == NO_LINE
    # rows 31, 31, 31, 55: 37 - 31 = 6, at the bar
    assert slide(cine(n=4), bins=[15, 15, 15, 27])["status"] == "present"


def test_the_chest_wall_compared_is_the_12_rows_above_the_pleura():
    frames = cine()
    frames[1::2, :16] += 0.2  # rows 0-15 (near the skin, the gel) flicker; rows 16-27 are still
    got = slide(frames)
    assert got["status"] == "present" and got["chest_wall_change"] == 0.0, got


def test_a_high_pleura_compares_the_chest_wall_from_the_first_row():
    frames = cine(prow=7)
    frames[1::2, 0] += 0.4  # the top row changes: a quarter of the wall rows 0-3
    got = slide(frames, bins=[3] * 8)
    assert got["reason_code"] == "probe_moved", got
    assert got["chest_wall_change"] == pytest.approx(0.1 / 0.35, abs=1e-4)


def test_the_pleural_line_itself_moving_is_sliding():
    frames = cine(lung=0.0)
    frames[1::2, 29:33] += 0.02  # rows 29-32 (the pleural row 31 and the rows around it) only
    got = slide(frames)
    assert got["status"] == "present", got
    assert got["score"] == pytest.approx(log_ratio(0.01, 0.0), abs=1e-3)  # half the band's rows


def test_a_chest_wall_exactly_at_the_in_view_level_is_out_of_view():
    wall = np.full(SW, 0.3)
    wall[:20] = post.IN_VIEW
    pleura = np.full(SW, 0.3)  # a rib shadow where the wall is in view ...
    pleura[:20] = 0.6  # ... and the pleura bright where it is not
    # 4 frames and a pleura at row 7 (4 wall rows): the wall's mean is exactly the level
    assert slide(cine(n=4, prow=7, wall=wall, pleura=pleura), bins=[3] * 4)["reason"] == NOT_SEEN
    wall[:20] = 0.03
    assert slide(cine(n=4, prow=7, wall=wall, pleura=pleura), bins=[3] * 4)["status"] == "present"


@pytest.mark.parametrize("view,moving,column", [
    (slice(0, 40), slice(4, 9), 8),  # 40 columns in view: the middle is 7.8-31.2
    (slice(13, 40), slice(33, 38), 33),  # 27 (13-39): 18.2-33.8
    (slice(4, 40), slice(7, 12), 11),  # 36 (4-39): exactly 11-32, both ends allowed
    (slice(4, 40), slice(32, 37), 32),
])
def test_the_m_mode_line_stays_within_the_middle_60_percent_of_the_view(view, moving, column):
    wall = np.zeros(SW)
    wall[view] = 0.3
    lung = np.full(SW, 0.02)
    lung[moving] = 0.04
    got = slide(cine(wall=wall, lung=lung))
    assert got["status"] == "present" and got["columns"] == [column], got


def test_a_chest_wall_band_whose_top_is_at_the_in_view_level_is_not_whole():
    lung = np.full(SW, 0.01)
    lung[12:17] = 0.03
    lung[24:29] = 0.02
    frames = cine(n=4, lung=lung)  # 4 frames: their mean is exactly the level
    frames[:, 16:20, 10:19] = post.IN_VIEW
    assert slide(frames)["columns"] == [26]
    frames[:, 16:20, 10:19] = 0.03  # dim but in view: the best place, column 14, is allowed
    assert slide(frames)["columns"] == [14]


def test_the_score_is_reported_to_three_decimals():
    lung = np.full(SW, 0.02)
    lung[20:25] = 0.03
    assert slide(cine(lung=lung))["score"] == 2.471  # log(1 + 0.02125 / F) = 2.47127


def test_a_side_that_slides_as_little_as_0_23_is_not_still():
    lung = np.full(SW, FLOOR * (np.exp(0.23) - 1))
    lung[:20] = 0.02
    got = slide(cine(lung=lung))
    assert got["sides"][1] == 0.23 and got["status"] == "present", got


def test_a_side_that_reaches_0_47_slides_for_the_lung_point():
    lung = np.full(SW, FLOOR * (np.exp(0.2) - 1))  # right 0.2: still
    lung[:20] = FLOOR * (np.exp(0.47) - 1)  # left 0.47: slides; the clip 0.344
    got = slide(cine(lung=lung))
    assert got["sides"] == [0.47, 0.2] and got["reason_code"] == "partial", got


# --- the bundle's calibration, the gate's temperature and the field of view ---

@pytest.mark.parametrize("calibration, problem", [
    (None, None),
    ({"method": "none", "ece": 0.04}, None),
    ({"method": "platt", "a": 0.5, "b": -1}, None),
    ({"method": "temperature", "t": 0.57}, None),
    ("platt", "is not an object"),
    ([0.5, 1.0], "is not an object"),
    ({"method": "temperature"}, "needs a positive finite temperature t"),
    ({"method": "temperature", "t": 0}, "needs a positive finite temperature t"),
    ({"method": "temperature", "t": -0.5}, "needs a positive finite temperature t"),
    ({"method": "temperature", "t": float("nan")}, "needs a positive finite temperature t"),
    ({"method": "temperature", "t": "0.5"}, "needs a positive finite temperature t"),
    ({"method": "temperature", "t": True}, "needs a positive finite temperature t"),
    ({"method": "platt", "b": 0.0}, "needs finite a and b"),
    ({"method": "platt", "a": 1.0}, "needs finite a and b"),
    ({"method": "platt", "a": float("inf"), "b": 0.0}, "needs finite a and b"),
    ({"method": "platt", "a": 1.0, "b": None}, "needs finite a and b"),
    ({"method": "isotonic"}, "method 'isotonic' is not none, platt or temperature"),
    ({}, "method 'None' is not none, platt or temperature"),
    ({"method": "x" * 50}, f"method {'x' * 40!r} is not none, platt or temperature"),
])
def test_calibration_problem_names_what_the_kit_could_not_use(calibration, problem):
    assert post.calibration_problem(calibration) == problem


def test_a_temperature_leaves_certain_classes_certain_and_reads_a_written_number():
    p = np.array([[1.0, 0.0, 0.0]])
    q = post.view_calibrated(p, {"method": "temperature", "t": 0.5})
    assert np.isfinite(q).all() and q[0, 0] == pytest.approx(1.0) and q[0, 1] < 1e-20
    # a temperature written as text in a hand-edited manifest is read as the number
    assert post.view_calibrated(np.array([0.6, 0.4]), {"method": "temperature", "t": "0.5"}) == \
        pytest.approx(np.array([0.36, 0.16]) / 0.52)
    assert post.view_calibrated(p, {"method": "platt", "a": 1, "b": 0}) is p  # a finding's, not the gate's


def test_the_width_in_view_is_from_the_first_to_the_last_pixel_shown_on_the_row():
    img = np.zeros((10, 20))
    img[4, 5] = img[4, 12] = 0.5  # a dark gap between them is still inside the view
    img[9, 2:18] = 0.5
    assert post.view_width(img, 4) == 8
    assert post.view_width(img, 3) == 20  # nothing shown on the row: the image's width
    assert post.view_width(img, 50) == 16 and post.view_width(img, -3) == 20  # rows outside: the nearest row
    img[0, 19] = post.IN_VIEW  # not above the black level: outside the view
    img[0, 1] = 0.03
    assert post.view_width(img, 0) == 1


def test_the_narrowest_confluent_band_is_measured_three_rows_under_the_pleura_and_is_three_bins_at_least():
    img = np.zeros((64, 128))
    img[40:, 32:96] = 0.5  # 64 pixels in view from row 40 down
    assert post.confluent_bins(64, img, 37) == 8  # row 40: a quarter of 64 pixels is 16, 8 bins
    assert post.confluent_bins(64, img, 36) == 16  # row 39 shows nothing: a quarter of the image's 128
    img[:40, 60:66] = 0.5
    assert post.confluent_bins(64, img, 30) == 3  # 6 pixels in view: a quarter is under 3 bins
    assert post.confluent_bins(128, img, 37) == 16


def _white(lo: int = 30, hi: int = 100) -> np.ndarray:
    """A clean white-lung frame, 128 x 128: wall 0.2, pleura at rows 38-41, a band from row 42."""
    img = np.full((H, 128), 0.2)
    img[38:42] = 0.8
    img[42:, lo:hi] = 0.7
    return img


GAPS = "separate lines with dark gaps between them, not one band"


def test_evenness_is_judged_on_sixteen_rows_under_the_pleura_and_the_bands_middle_columns():
    assert post.confluent_band_problem(_white(), 30, 100, 40) == ""
    img = _white()
    img[43 + 16:, 60:64] = 0.2  # a gap only deeper than the 16 rows looked at (rows 43-58)
    assert post.confluent_band_problem(img, 30, 100, 40) == ""
    img[43 + 8:, 60:64] = 0.2  # ... and over half of them
    assert post.confluent_band_problem(img, 30, 100, 40) == GAPS
    img = _white()
    img[42:, 45:48] = 0.2  # in the band's outer 30 % (columns 30-50): its edge, not a gap
    assert post.confluent_band_problem(img, 30, 100, 40) == ""
    img[42:, 52:55] = 0.2  # in its middle (columns 51-78)
    assert post.confluent_band_problem(img, 30, 100, 40) == GAPS


def test_over_the_chest_wall_the_band_is_looked_at_from_30_to_90_percent_of_the_pleuras_depth():
    above = "starts above the pleural line (E-line or needle artefact)"
    for rows, why in ((slice(0, 12), ""), (slice(12, 36), above), (slice(36, 38), "")):
        img = _white()
        img[rows, 30:100] = 0.7  # rows 12-35 are 30-90 % of the pleura's row 40
        assert post.confluent_band_problem(img, 30, 100, 40) == why, rows
    img = _white()
    img[12:15, 30:100] = 0.7  # three rows bright: the median of 24 rows is not
    assert post.confluent_band_problem(img, 30, 100, 40) == ""


def test_a_band_over_the_chest_wall_must_stand_out_by_half_its_contrast_under_the_pleura():
    # under the pleura the band is 0.5 over the lung beside it: over the wall 0.2 is not enough, 0.3 is
    for level, why in ((0.4, ""), (0.5, "starts above the pleural line (E-line or needle artefact)")):
        img = _white()
        img[12:36, 30:100] = level
        assert post.confluent_band_problem(img, 30, 100, 40) == why, level
    img = np.full((H, 128), 0.2)
    img[38:42] = 0.8
    img[42:, 30:100] = 0.26  # a faint band (0.06): over the wall 0.04 stays under the 0.05 floor
    img[12:36, 30:100] = 0.24
    assert post.confluent_band_problem(img, 30, 100, 40) == ""
    img[12:36, 30:100] = 0.26  # 0.06 over the wall: above
    assert post.confluent_band_problem(img, 30, 100, 40).startswith("starts above")
    narrow = _white(2, 126)  # the wall beside the band is four pixels wide: not judged
    narrow[12:36, 2:126] = 0.7
    assert post.confluent_band_problem(narrow, 2, 126, 40) == ""
    narrow = _white(2, 125)  # five: judged
    narrow[12:36, 2:125] = 0.7
    assert post.confluent_band_problem(narrow, 2, 125, 40).startswith("starts above")


@pytest.mark.parametrize("cols, want", [((5.0, 5.0), (5, 6)), ((5.4, 5.6), (5, 6)), ((2.5, 7.2), (2, 8)),
                                        ((-1.0, 3.0), (0, 3)), ((60.5, 70.0), (60, 64))])
def test_a_run_is_whole_pixels_inside_the_image_and_at_least_one(cols, want):
    assert post.run_pixels(cols, 64) == want


def test_a_band_is_judged_against_the_darker_quarter_of_the_lung_beside_it_on_sixteen_rows():
    """The lung beside the band ramps from 0.1 to 0.9, so its quantiles lie apart; the band's
    first row under the pleural echo (row 43) carries a tenth of the contrast it needs."""
    img = np.full((H, 128), 0.2)
    img[38:42] = 0.8
    img[42:, :] = np.linspace(0.1, 0.9, 128)  # the lung beside the band
    darker_quarter = float(np.percentile(np.concatenate([img[43:59, :30], img[43:59, 100:]], axis=1), 25))
    for over, why in ((0.0401, ""), (0.039, "no bright band below the pleura"), (0.035, "no bright band below the pleura")):
        img[42:, 30:100] = darker_quarter + 0.035
        img[43, 30:100] += 16 * (over - 0.035)  # rows 43-58 average `over` above the quarter
        assert post.confluent_band_problem(img, 30, 100, 40) == why, over


def test_a_band_over_the_whole_field_of_view_is_one_band():
    img = _white(0, 128)
    assert post.confluent_band_problem(img, 0, 128, 40) == ""


def test_a_pleura_too_near_the_bottom_leaves_nothing_to_judge():
    img = np.full((H, 128), 0.2)
    img[115:119] = 0.8  # the pleura at row 117 of 128
    img[119:, 30:100] = 0.7
    assert post.confluent_band_problem(img, 30, 100, H - 11) == ""  # 8 rows under its echo (120-127)
    assert post.confluent_band_problem(img, 30, 100, H - 10) == "too little image below the pleura to judge"


def test_three_middle_columns_are_enough_to_see_a_gap():
    img = _white(40, 47)  # 7 columns: 2 trimmed each side, columns 42-44 judged
    assert post.confluent_band_problem(img, 40, 47, 40) == ""
    img[42:, 44] = 0.3
    assert post.confluent_band_problem(img, 40, 47, 40) == GAPS


def test_over_the_chest_wall_four_rows_in_view_are_enough_and_the_skin_is_not_looked_at():
    above = "starts above the pleural line (E-line or needle artefact)"
    img = _white()
    img[:38, :] = 0.0  # the chest wall out of view ...
    img[20:24, :] = 0.2  # ... but four rows
    img[20:24, 30:100] = 0.7
    assert post.confluent_band_problem(img, 30, 100, 40) == above
    img[23, :] = 0.0  # three
    assert post.confluent_band_problem(img, 30, 100, 40) == ""
    img = _white()
    img[12:38, :] = 0.0  # from 30 % of the pleura's depth out of view; the skin above it bright over the band
    img[0:12, 30:100] = 0.7
    assert post.confluent_band_problem(img, 30, 100, 40) == ""


def test_a_line_is_followed_only_with_eight_rows_under_the_pleural_echo():
    img = np.full((H, W), 0.2)
    img[:, 30:33] = 0.7
    maps = post.LineMaps(img)
    followed = post._follow(img, 29, 34, H - 11, maps)  # rows 120-127
    assert followed is not None and followed[0] in (30, 31, 32) and len(followed[1]) == 8
    assert post._follow(img, 29, 34, H - 10, maps) is None


def _track_row_by_row(img: np.ndarray, row0: int, col0: int) -> list[tuple[int, int]]:
    """A track written out row by row: from each row's column, the brightest line pixel of
    the three around it (the first of equals), until the line leaves the field of view."""
    line, _ = maps_of(img)
    h, w = img.shape
    col, out = col0, []
    for row in range(row0, h):
        near = [c for c in (col - 1, col, col + 1) if 0 <= c < w]
        col = max(near, key=lambda c: (line[row, c], -c))
        if line[row, col] < post.IN_VIEW:
            break
        out.append((row, col))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_track_is_the_brightest_neighbour_row_by_row_on_any_image(seed):
    """Speckle with ties (a coarse grey scale), lines at the edges, black patches: the
    track the kit looks up from its per-frame steps is the one followed row by row, and
    its contrast is the contrast map's."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 6, (40, 24)) / 5.0  # few grey levels: many equal neighbours
    img[:, 0] = 0.9  # a line hugging the left edge
    img[25 + seed:, 10:] = 0.0  # black below a row on the right: outside the view
    _, contrast = maps_of(img)
    maps = post.LineMaps(img)
    for col0 in (0, 5, 12, 23):
        got = maps.track(3, col0)
        want = _track_row_by_row(img, 3, col0)
        assert [(int(r), int(c)) for r, c, _ in got] == want
        assert [c for _, _, c in got] == [contrast[r, c] for r, c in want]


def test_the_contrast_asked_pixel_by_pixel_is_the_median_of_the_bands_present():
    rng = np.random.default_rng(7)
    img = rng.uniform(0.0, 1.0, (6, 20)).astype(np.float32)
    img[2, 5:9] = 0.0  # black pixels: out of the view, nan contrast
    line, contrast = maps_of(img)
    for r in range(6):
        for c in range(20):
            bands = [img[r, k] for k in range(c - 8, c + 9) if 4 <= abs(k - c) and 0 <= k < 20]
            want = np.nan if line[r, c] < post.IN_VIEW else line[r, c] - np.median(bands)
            assert contrast[r, c] == pytest.approx(want, abs=1e-6, nan_ok=True), (r, c)
    one = post.LineMaps(img).contrast[4, 11]  # one pixel asked alone: the same number
    assert one == contrast[4, 11]


def test_a_track_at_the_edge_ends_where_the_image_turns_black_and_never_wraps_round():
    img = np.full((12, 20), 0.5)
    img[5:, :3] = 0.0  # black from row 5 at the left edge; the right edge stays bright
    track = post.LineMaps(img).track(0, 0)
    assert [(int(r), int(c)) for r, c, _ in track] == [(r, 0) for r in range(5)]
    assert post.LineMaps(img).track(12, 0).shape == (0, 3)  # from below the image: nothing to follow


def test_tracks_followed_together_are_each_the_track_followed_alone():
    """A frame's lines are followed at once: each still ends where its own column leaves the
    field of view, whichever of them goes first."""
    img = np.full((14, 24), 0.5)
    img[5:, :3] = 0.0  # the left edge black from row 5
    img[9:, 10:17] = 0.0  # and a patch from row 9 (a flat image: tracks drift left a column a row)
    maps = post.LineMaps(img)
    together = maps.tracks(0, [12, 0, 23])
    assert [len(t) for t in together] == [14, 5, 9]
    for col, t in zip([12, 0, 23], together):
        assert np.array_equal(t, maps.track(0, col))


def test_a_stack_of_frames_has_each_frames_maps_and_tracks():
    """LineMaps of several frames at once (the kit's batches): each frame's line brightness,
    contrast and tracks are those of the frame alone, to the bit, and every lookup names
    its frame."""
    rng = np.random.default_rng(8)
    imgs = (0.1 + 0.8 * rng.random((3, 30, 26))).astype(np.float32)
    imgs[1, :, :4] = 0.0  # one frame black along its left edge
    stack = post.LineMaps(imgs)
    assert stack.line.shape == stack.lines.shape == imgs.shape
    rows, cols = np.indices(imgs.shape[1:])
    for f, img in enumerate(imgs):
        alone = post.LineMaps(img)
        assert np.array_equal(stack.lines[f], alone.line) and alone.lines.shape == (1, *img.shape)
        assert np.array_equal(stack.contrast[f, rows, cols], alone.contrast[rows, cols], equal_nan=True)
        assert np.array_equal(stack.contrast.at(f, rows, cols), alone.contrast.at(0, rows, cols), equal_nan=True)
        for r0, c0 in ((0, 0), (3, 13), (10, 25)):
            assert np.array_equal(stack.tracks([r0], [c0], [f])[0], alone.track(r0, c0))
    # tracks of several frames, from rows of their own, followed at once
    together = stack.tracks([2, 9, 0], [5, 20, 1], [2, 0, 1])
    assert all(np.array_equal(t, post.LineMaps(imgs[f]).track(r0, c0))
               for t, (f, r0, c0) in zip(together, [(2, 2, 5), (0, 9, 20), (1, 0, 1)]))
    s, n = post._box(imgs, -1, 1)
    assert all(np.array_equal(s[f], post._box(img, -1, 1)[0]) for f, img in enumerate(imgs))


@pytest.mark.parametrize("w", [1, 2, 3, 7])
def test_a_track_steps_to_the_brightest_of_the_three_columns_below_the_first_of_equals(w):
    rng = np.random.default_rng(w)
    line = rng.integers(0, 3, (2, 5, w)).astype(float)  # many ties
    want = np.zeros(line.shape, int)
    for f, r, c in np.ndindex(line.shape):
        near = [line[f, r, c - 1] if c > 0 else -np.inf, line[f, r, c], line[f, r, c + 1] if c + 1 < w else -np.inf]
        want[f, r, c] = int(np.argmax(near)) - 1
    assert np.array_equal(post._steps(line), want)


def test_pixels_of_a_stack_are_gathered_as_numpy_indexes_them():
    stack = np.arange(2 * 5 * 7, dtype=float).reshape(2, 5, 7)
    frames, rows, cols = np.array([[1], [0]]), np.array([[4], [2]]), np.array([[0, 6, 3], [1, 1, 5]])
    assert np.array_equal(post._gather(stack, frames, rows, cols), stack[frames, rows, cols])
    assert post._gather(stack[:, :, ::2], 1, 3, 2) == stack[1, 3, 4]  # a view, not a copy


# --- close lines in one run: told apart where they fan out (postprocess.fan_lines) ---

def test_peaks_stand_apart_only_across_a_dip():
    assert post._peaks(np.array([0.2, 0.7, 0.2, 0.2, 0.7, 0.2]), 0.1) == [1, 4]
    # a dip of less than FAN_DIP below the lower peak: one peak, the higher one
    assert post._peaks(np.array([0.2, 0.6, 0.55, 0.7, 0.2]), 0.1) == [3]
    assert post._peaks(np.array([0.2, 0.7, 0.65, 0.6, 0.2]), 0.1) == [1]
    # exactly FAN_DIP below: two
    assert post._peaks(np.array([0.2, 0.6, 0.5, 0.7, 0.2]), 0.1) == [1, 3]
    # a plateau is one peak (its first column); no interior maximum, none
    assert post._peaks(np.array([0.2, 0.7, 0.7, 0.2]), 0.1) == [1]
    assert post._peaks(np.array([0.1, 0.2, 0.3, 0.4]), 0.1) == []
    assert post._peaks(np.array([0.7, 0.7, 0.2, 0.7, 0.2]), 0.1) == [3]  # flat from the start: no peak
    assert post._peaks(np.array([0.7, 0.2, 0.2, 0.5]), 0.1) == []  # the ends are no peaks
    assert post._peaks(np.array([0.9, 0.2, 0.5, 0.4]), 0.1) == [2]
    assert post._peaks(np.array([0.2, 0.7, 0.65, 0.7, 0.2]), 0.1) == [1]  # of equal peaks joined, the first


def _counted(img, prob, **th):
    return post.lung_frame(prob, PLEURA_LOGITS, img, {"bline": 0.5, **th})


def test_two_close_lines_the_model_scores_as_one_run_are_counted_as_two():
    img = lines([])
    img[42:, 28] = img[42:, 31] = 0.7  # two 1-pixel lines, 3 pixels apart: bins 14 and 15
    prob = evidence(b14=0.9, b15=0.9)  # one run of two bins, no dip between them
    fr = _counted(img, prob, pattern_min_blines=2)
    assert fr["runs"] == [(14, 16)] and fr["lines"] == [2] and fr["b_lines"] == 2
    assert fr["score"] == pytest.approx(np.log(0.9 / 0.1))  # the run stands for two lines of a pattern
    img[42:, 31] = 0.2  # one line: one
    fr = _counted(img, prob, pattern_min_blines=2)
    assert fr["lines"] == [1] and fr["b_lines"] == 1 and fr["score"] < 0


def test_a_line_that_merely_widens_is_one_line():
    img = lines([])
    img[42:, 28:32] = 0.7
    img[42:, 29:31] = 0.65  # a dip of 0.05 in a 4-pixel line: speckle, not two lines
    assert _counted(img, evidence(b14=0.9, b15=0.9))["lines"] == [1]


def test_the_next_line_is_not_counted_twice():
    """Two runs 4 pixels apart: looking across each track stops half way to the other, so
    each holds one line (without that limit each would see both: four)."""
    img = lines([])
    img[42:, 28] = img[42:, 32] = 0.7
    fr = _counted(img, evidence(b14=0.9, b16=0.9))
    assert fr["runs"] == [(14, 15), (16, 17)] and fr["lines"] == [1, 1] and fr["b_lines"] == 2


def test_lines_that_fan_out_below_the_pleura_are_told_apart_there():
    """Lines of a convex probe's narrow sector touch at the pleura and part below it."""
    img = lines([])
    for r in range(42, H):
        spread = (r - 42) // 4
        img[r, 29 - spread // 2] = img[r, 30 + spread // 2] = 0.7
    fr = _counted(img, evidence(b14=0.9, b15=0.9))
    assert fr["runs"] == [(14, 16)] and fr["lines"] == [2]


def test_a_run_too_near_the_edge_to_look_across_is_one_line():
    img = lines([])
    img[42:, 1] = img[42:, 4] = 0.7  # bins 0 and 2, within FAN_HALF of the image's edge
    fr = _counted(img, evidence(b0=0.9, b1=0.9, b2=0.9))
    assert fr["runs"] == [(0, 3)] and fr["lines"] == [1]
    assert post.fan_lines(img, [None]) == [1]  # a run that was not followed: one line
    assert post.fan_lines(img, []) == []


def _track(cols, row0: int = 45) -> tuple:
    """A followed line as `_follow_lines` gives it: (start, (row, column, contrast) per row,
    slope), down the given columns (one per row; an int: straight down 30 rows)."""
    cols = [cols] * 30 if isinstance(cols, int) else list(cols)
    rows = row0 + np.arange(len(cols))
    return cols[0], np.column_stack([rows, cols, np.zeros(len(cols))]).astype(float), 0.0


def _bright(*cols) -> np.ndarray:
    img = np.full((H, W), 0.2)
    for c in cols:
        img[:, c] = 0.7
    return img


DEEP = post.FAN_DEPTH + post.FAN_ROWS  # rows a track needs to be looked across


def test_a_track_is_looked_across_from_fan_depth_for_fan_rows():
    img = _bright(30, 32)  # a second line two pixels right of the track
    assert post.fan_lines(img, [_track([30] * DEEP)]) == [2]  # just long enough
    assert post.fan_lines(img, [_track([30] * (DEEP - 1))]) == [1]  # one row short: not looked across
    img = _bright(30)
    img[45 + post.FAN_DEPTH:45 + DEEP, 32] = 0.7  # the second line only in the rows looked at
    assert post.fan_lines(img, [_track(30)]) == [2]
    img = _bright(30)
    img[45:45 + post.FAN_DEPTH, 32] = img[45 + DEEP:, 32] = 0.7  # ... and only outside them
    assert post.fan_lines(img, [_track(30)]) == [1]


def test_looking_across_reads_fan_half_pixels_either_side_and_no_further():
    """A line 4 pixels right of the track, and a brighter stripe just past FAN_HALF pixels
    with no dip between: read FAN_HALF pixels across, the line 4 pixels over is a line of
    its own (read one pixel further, the stripe would swallow it)."""
    img = _bright(30)
    img[:, 34], img[:, 35], img[:, 36] = 0.8, 0.75, 0.85  # 4, 5 and 6 pixels over
    assert post.FAN_HALF == 6 and post.fan_lines(img, [_track(30)]) == [2]


def test_looking_across_stops_half_way_to_the_neighbouring_tracks():
    img = _bright(30, 32, 28)
    # neighbours 5 pixels away: half way is 2.5, so the lines 2 pixels either side count
    assert post.fan_lines(img, [_track(25), _track(30), _track(35)])[1] == 3
    # 4 pixels away: half way is 2, and a line exactly there belongs to neither track
    assert post.fan_lines(img, [_track(26), _track(30), _track(34)])[1] == 1
    assert post.fan_lines(img, [_track(26), _track(30)])[1] == 2  # the line right of it
    assert post.fan_lines(img, [_track(30), _track(34)])[0] == 2  # the line left of it
    # half way is taken where the neighbour's track is first looked across
    moved = [35] * post.FAN_DEPTH + [35] + [34] * 21
    assert post.fan_lines(img, [_track(30), _track(moved)])[0] == 3
    # ... and so is the track's own column: here 30, then 29 (its lines 0 and 3 pixels across
    # it), half way to a neighbour at 36 is 3: the line 3 pixels across belongs to neither
    img = np.full((H, W), 0.2)
    first = 45 + post.FAN_DEPTH
    img[first, [30, 33]] = 0.7
    img[first + 1:, [29, 32]] = 0.7
    own = [30] * (post.FAN_DEPTH + 1) + [29] * 21
    assert post.fan_lines(img, [_track(own), _track(36)])[0] == 1
    assert post.fan_lines(img, [_track(own), _track(37)])[0] == 2


def test_tracks_near_either_edge_are_one_line_and_do_not_stop_the_others():
    w = W
    img = _bright(post.FAN_HALF, post.FAN_HALF + 2, 30, 32, w - 1 - post.FAN_HALF, w - 3 - post.FAN_HALF)
    assert post.fan_lines(img, [_track(post.FAN_HALF), _track(30)]) == [2, 2]  # just inside on the left
    assert post.fan_lines(img, [_track(post.FAN_HALF - 1), _track(30)]) == [1, 2]  # too near: one line
    assert post.fan_lines(img, [_track(w - 1 - post.FAN_HALF)]) == [2]  # just inside on the right
    assert post.fan_lines(img, [_track(30), _track(w - post.FAN_HALF)]) == [2, 1]
    drifting = [30] * post.FAN_DEPTH + list(range(30, 30 - post.FAN_ROWS, -1)) + [25] * 20
    assert post.fan_lines(_bright(30, 32), [_track(drifting)]) == [1]  # leaves the lines: none stands apart
    assert post.fan_lines(img, [None, _track(30), None]) == [1, 2, 1]


@pytest.mark.parametrize("w", [8, 3])  # a column inside (w 8), and one at the right edge (w 3)
def test_box_windows_are_float64_differences_of_the_rows_running_sums(w):
    # the running sums stay in the image's float32; their difference 2**24 - 0.5 is no
    # float32, so a window summed in float32 would read 2**24
    img = np.zeros((1, w), np.float32)
    img[0, :2] = 0.5, 2.0 ** 24
    run = np.cumsum(img, axis=-1)
    s, _ = post._box(img, -1, 1)
    want = [float(run[0, min(j + 1, w - 1)]) - (float(run[0, j - 2]) if j >= 2 else 0.0) for j in range(w)]
    assert s[0].tolist() == want and s[0, 2] == 2.0 ** 24 - 0.5


def test_the_background_median_is_taken_in_float32_like_the_model_input():
    # the bands either side of column 8: five pixels of 2**-24, five of 1; their median,
    # (2**-24 + 1) / 2 in float32, is 0.5 (in float64 it would be 0.5 + 2**-25)
    img = np.zeros((1, 17), np.float32)
    img[0, :5], img[0, 7:10], img[0, 12:] = 1.0, 1.0, 2.0 ** -24
    maps = post.LineMaps(img)
    assert maps.line[0, 8] == 1.0 and maps.contrast[0, 8] == 0.5


def test_a_track_ending_on_its_last_row_ends_there_when_followed_with_others():
    """The first pixel out of the view of the last track followed is the last one found:
    it still ends that track, not the one before it."""
    img = np.full((14, 24), 0.5)
    img[5:, :3] = 0.0  # the left edge black from row 5
    img[13, 5:] = 0.0  # and the bottom row from column 5 (flat: tracks drift left a column a row)
    maps = post.LineMaps(img)
    together = maps.tracks(0, [0, 23])
    assert [len(t) for t in together] == [5, 13]
    for col, t in zip([0, 23], together):
        assert np.array_equal(t, maps.track(0, col))


@pytest.mark.parametrize("prow, up", [(20, 18), (3, 1), (2, 1)])
def test_a_followed_line_checks_half_way_columns_on_the_rows_its_features_read(monkeypatch, prow, up):
    # the rows above the pleura the slope is followed up through: 0 to 3 rows above the
    # pleura (at least the top row), those `frames_features` reads
    seen = []
    slopes = post._slopes
    monkeypatch.setattr(post, "_slopes", lambda xs, ys, rows_up: seen.append(list(rows_up)) or slopes(xs, ys, rows_up))
    img = np.full((40, 32), 0.3)
    img[:, 15:18] = 0.9
    followed = post._follow_frames(img[None], [(0, prow, 14, 19)], post.LineMaps(img[None]))
    assert followed[0] is not None and seen == [[up]]
