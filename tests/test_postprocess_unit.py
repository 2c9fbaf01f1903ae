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
