"""The orientation-marker search (`inference.marker`) on hand-built frames: each rule that
tells a marker from everything else at its limits. A frame here is black with a grey
imaging area (lit, not bright) and marks drawn where a test puts them. The simulated and
vendor frames, and the kit's path: tests/test_inference_marker.py."""

from __future__ import annotations

import numpy as np
import pytest

from fieldkit.inference import marker as M

H, W = 240, 320
AREA = (40, 200, 100, 220)  # rows top..bottom, columns left..right (inclusive)


def frame(area=AREA, grey=60, h=H, w=W) -> np.ndarray:
    g = np.zeros((h, w), np.uint8)
    r0, r1, c0, c1 = area
    g[r0:r1 + 1, c0:c1 + 1] = grey
    return g


def mark(g, top, left, height=8, width=None, value=235):
    g[top:top + height, left:left + (width or height)] = value
    return g


# the area's top is row 40, its bottom row 200; a fifth of its height is 32 rows
@pytest.mark.parametrize("top,left,corner", [
    (30, 80, "top left"), (30, 232, "top right"), (203, 80, "bottom left"), (203, 232, "bottom right"),
])
def test_a_mark_beside_each_end_of_the_near_field(top, left, corner):
    assert M.find(mark(frame(), top, left)) == corner


def test_no_mark_and_marks_at_both_ends_say_nothing():
    assert M.find(frame()) is None
    assert M.find(mark(mark(frame(), 30, 80), 203, 80)) is None  # top and bottom
    assert M.find(mark(mark(frame(), 30, 80), 30, 232)) is None  # left and right


def test_three_marks_are_no_marker_even_at_one_corner():
    g = mark(mark(mark(frame(), 30, 80), 12, 60), 20, 40)
    assert len(M._marks(g, g > M.LIT, np.ones(H, bool))) == 3
    assert M.find(mark(frame(), 30, 80)) == "top left"


@pytest.mark.parametrize("value,found", [(M.BRIGHT, True), (M.BRIGHT - 1, False)])
def test_a_mark_is_bright(value, found):
    assert (M.find(mark(frame(), 30, 80, value=value)) == "top left") is found


@pytest.mark.parametrize("side,found", [(M.SOLID, True), (M.SOLID - 1, False), (16, True), (17, False)])
def test_a_mark_holds_a_solid_square_and_is_no_bigger_than_a_twentieth_of_the_width(side, found):
    assert round(M.MAX_SIZE * W) == 16
    assert (M.find(mark(frame(), 22, 70, height=side)) == "top left") is found


@pytest.mark.parametrize("height,width,found", [(6, 9, True), (9, 6, True), (6, 10, False), (10, 6, False)])
def test_a_mark_is_about_as_tall_as_wide(height, width, found):
    assert (M.find(mark(frame(), 28, 76, height=height, width=width)) == "top left") is found


def test_a_mark_fills_its_box():
    g = mark(frame(), 24, 74, height=12)
    g[28:36, 78:86] = 0  # a square ring: it fills 1 - 64/144 = 0.56 of its box
    assert M.find(g) == "top left"
    g[27:37, 77:87] = 0  # ... and now 0.31 (an outline is no mark), solid corners still 4 wide
    g[24:28, 74:78] = 235
    assert M.find(g) is None


@pytest.mark.parametrize("low,found", [(180, True), (100, False)])
def test_a_mark_is_of_one_even_brightness(low, found):
    g = mark(frame(), 26, 76, height=10)
    g[26:36:2, 76:86] = low  # every other row darker: 235/180 spreads 27.5, 235/100 67.5
    assert (M.find(g) == "top left") is found


@pytest.mark.parametrize("value,found", [(M.DARK, True), (M.DARK + 1, False)])
def test_black_on_three_sides(value, found):
    g = mark(frame(), 30, 80)
    g[30:38, 77:79] = value  # the strip along the left side
    g[27:29, 80:88] = value  # ... and along the top: two sides left black
    assert (M.find(g) == "top left") is found
    g[27:29, 80:88] = 0  # one side not black is allowed (the imaging area may be near)
    assert M.find(g) == "top left"


def test_a_side_cut_off_by_the_frame_counts_as_black():
    g = frame(area=(10, 200, 100, 220))
    assert M.find(mark(g, 0, 80)) == "top left"  # its top side is the frame's edge


def test_a_mark_joined_to_the_imaging_area_is_part_of_it():
    g = mark(frame(), 30, 80)
    assert M.find(g) == "top left"
    g[33:35, 88:100] = 40  # a lit bridge, not bright: the mark is now the area's tip
    assert M.find(g) is None


@pytest.mark.parametrize("top,found", [(40 - 32 - 4, True), (40 - 32 - 5, False), (40 + 32 - 4, True),
                                       (40 + 32 - 3, False)])
def test_within_a_fifth_of_the_area_s_height_of_its_edge(top, found):
    # the mark's centre is its top + 4 here; the band is 32 rows either side of row 40
    g = frame()
    g[:, 88:100] = 0
    assert (M.find(mark(g, top, 70)) == "top left") is found


@pytest.mark.parametrize("left,found", [(62 - 4, True), (61 - 4, False)])
def test_beside_the_edge_no_further_than_an_eighth_of_the_width(left, found):
    # the area's columns start at 100; 0.12 of 320 is 38.4: a centre at column 61.6 or more
    assert (M.find(mark(frame(), 30, left)) == "top left") is found


def test_left_and_right_are_of_the_imaging_area_not_of_the_frame():
    g = frame(area=(40, 200, 200, 300))  # the area's centre is column 250
    assert M.find(mark(g, 30, 170)) == "top left"  # right of the frame's middle, left of the area's


def test_the_edge_of_a_sector_is_followed_up_to_its_apex():
    g = np.zeros((H, W), np.uint8)
    for r in range(20, 220):  # a sector from an apex at row 20, 60 degrees wide
        half = int((r - 20) * 0.58)
        g[r, 160 - half:160 + half + 1] = 70
    top, bottom, centre = M._area_edges(g > M.LIT)
    # the body (a quarter of the width lit) starts at row 89; the edge is followed up the
    # centre columns (3 % of the width either side) while half of them are lit
    assert (g[89] > M.LIT).sum() >= 80 > (g[88] > M.LIT).sum()
    assert top == 29 and bottom == 219 and centre == pytest.approx(160, abs=0.5)
    assert M.find(mark(g, 14, 140, height=6)) == "top left"  # beside the apex, far above the wide rows


@pytest.mark.parametrize("rows,width,found", [(72, 80, True), (71, 80, False), (160, 80, True), (160, 79, False)])
def test_an_imaging_area_is_a_third_of_the_rows_and_a_quarter_of_the_width(rows, width, found):
    # 0.3 of 240 rows is 72; 0.25 of 320 columns is 80
    g = frame(area=(40, 40 + rows - 1, 100, 100 + width - 1))
    assert (M.find(mark(g, 30, 80)) == "top left") is found


def test_a_saturated_frame_is_not_searched():
    g = mark(frame(area=(20, 235, 60, 300), grey=120), 10, 40)  # the area bright: 68 % of the frame
    assert (g >= M.BRIGHT).mean() > M.MAX_BRIGHT and M.find(g) is None
    g = mark(frame(area=(20, 235, 60, 300), grey=60), 10, 40)  # the same, not bright: searched
    assert M.find(g) == "top left"


def test_a_wide_frame_is_searched_at_the_working_width():
    g = np.repeat(np.repeat(mark(frame(), 30, 80), 2, axis=0), 2, axis=1)  # 480 x 640
    assert M.find(g) == "top left"
    g = np.repeat(np.repeat(mark(frame(), 203, 232), 2, axis=0), 2, axis=1)
    assert M.find(g) == "bottom right"


def test_the_lit_columns_next_to_the_edge_count_only_on_most_rows():
    g = mark(frame(), 30, 20)  # 80 columns left of the area: too far
    assert M.find(g) is None
    g[40:50, 30:100] = 60  # text on a few of the rows next to the edge does not widen it
    assert M.find(g) is None


@pytest.mark.parametrize("shape", [(0, 0), (3, 3), (4, 4), (5, 5), (240, 4), (4, 320)])
def test_frames_too_small_to_hold_a_mark(shape):
    assert M.find(np.full(shape, 200, np.uint8)) is None
    assert M._marks(np.full(shape, 200, np.uint8), np.ones(shape, bool), np.ones(shape[0], bool)) == []


def test_grow_stops_at_the_crop_and_keeps_the_square():
    bright = np.zeros((40, 40), bool)
    bright[10:14, 10:14] = True
    (y0, x0), patch = M._grow(bright, 10, 10, 4, 8)
    assert (y0, x0) == (10, 10) and patch.shape == (4, 4) and patch.all()
    bright[:, :] = True  # everything bright: it stops once bigger than m, never past the crop
    (y0, x0), patch = M._grow(bright, 10, 10, 4, 8)
    assert 2 <= y0 < 10 and 2 <= x0 < 10 and 8 < patch.shape[0] <= 4 + 2 * 8
    bright[:, :] = False
    bright[10:14, 10:30] = True  # a bar: grown along it until wider than m
    (y0, x0), patch = M._grow(bright, 10, 10, 4, 8)
    assert (y0, x0) == (10, 10) and patch.shape == (4, 9)
    bright[:, :] = False
    bright[10:14, 10:14] = True
    bright[15, 10] = True  # a bright pixel a row apart is not part of the patch
    bright[10, 16] = True
    (y0, x0), patch = M._grow(bright, 10, 10, 4, 8)
    assert (y0, x0) == (10, 10) and patch.shape == (4, 4)
    bright[14, 10] = True  # joined below: grown into it
    assert M._grow(bright, 10, 10, 4, 8)[1].shape == (6, 4)


# ------------------------------------------------------------- a mark's own rules, exactly

def _patch(size=8, y0=16, x0=16, h=48, w=48, value=235):
    gray = np.zeros((h, w), np.uint8)
    gray[y0:y0 + size, x0:x0 + size] = value
    return gray, np.ones((size, size), bool)


def _line(gray, side, offset, y0, x0, size, value=200):
    """A bright line along one side of the patch, `offset` pixels out from it (1: touching)."""
    if side == "top":
        gray[y0 - offset, x0:x0 + size] = value
    elif side == "bottom":
        gray[y0 + size - 1 + offset, x0:x0 + size] = value
    elif side == "left":
        gray[y0:y0 + size, x0 - offset] = value
    else:
        gray[y0:y0 + size, x0 + size - 1 + offset] = value


OTHER = {"top": "left", "bottom": "right", "left": "bottom", "right": "top"}


@pytest.mark.parametrize("size", [8, 12])  # strips 2 and 3 pixels wide (a quarter of the size, at least 2)
@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_each_side_s_strip_lies_a_pixel_out_and_a_quarter_of_the_size_wide(side, size):
    r = max(2, size // 4)
    for offset in range(1, r + 4):
        gray, patch = _patch(size)
        for o in range(1, r + 2):  # another side taken up: this one decides
            _line(gray, OTHER[side], o, 16, 16, size)
        _line(gray, side, offset, 16, 16, size)
        in_strip = 2 <= offset <= r + 1  # the pixel touching the mark is its rim, left out
        assert M._isolated(gray, 16, 16, patch) is (not in_strip), (side, size, offset)


@pytest.mark.parametrize("side", ["top", "left"])
def test_a_side_at_the_frame_s_edge(side):
    """Touching the frame's edge, a side has no pixels and counts as black; a pixel or two
    from it, the strip holds what is there."""
    for start, bright_edge, want in ((0, False, True), (2, False, True), (2, True, False), (3, True, False),
                                     (4, True, True)):
        y0, x0 = (start, 16) if side == "top" else (16, start)
        gray, patch = _patch(8, y0, x0)
        for o in range(1, 4):  # the other side taken up
            _line(gray, OTHER[side], o, y0, x0, 8)
        if bright_edge:  # the frame's first row (column) bright
            if side == "top":
                gray[0, x0:x0 + 8] = 200
            else:
                gray[y0:y0 + 8, 0] = 200
        assert M._isolated(gray, y0, x0, patch) is want, (side, start, bright_edge)


def test_a_side_black_on_four_fifths_of_its_strip_counts_as_black():
    gray, patch = _patch(10)  # strips 2 x 10 = 20 pixels
    for o in range(1, 4):
        _line(gray, "left", o, 16, 16, 10)
    gray[14, 16:20] = 200  # 4 of the top strip's 20 pixels bright: 80 % black
    assert M._isolated(gray, 16, 16, patch)
    gray[13, 16] = 200  # 5 of 20: 75 % black
    assert not M._isolated(gray, 16, 16, patch)


def test_a_mark_that_half_fills_its_box_and_one_that_does_not():
    gray, patch = _patch(8)
    patch[:, 4:] = False  # exactly half
    gray[16:24, 20:24] = 0
    assert M._isolated(gray, 16, 16, patch)
    patch[0, 0] = False
    assert not M._isolated(gray, 16, 16, patch)


def test_a_mark_spread_up_to_its_limit_and_past_it():
    gray, patch = _patch(8)
    gray[16:24:2, 16:24] = 235 - 2 * M.MAX_SPREAD  # two even halves: spread exactly MAX_SPREAD
    assert M._isolated(gray, 16, 16, patch)
    gray[16:24:2, 16:24] = 235 - 2 * M.MAX_SPREAD - 2
    assert not M._isolated(gray, 16, 16, patch)


@pytest.mark.parametrize("h,w,want", [(8, 12, True), (8, 13, False), (12, 8, True), (13, 8, False)])
def test_a_mark_as_tall_as_wide_within_one_and_a_half(h, w, want):
    gray = np.zeros((48, 48), np.uint8)
    gray[16:16 + h, 16:16 + w] = 235
    assert M._isolated(gray, 16, 16, np.ones((h, w), bool)) is want


def test_a_mark_with_a_thin_tail_is_bigger_than_a_mark():
    """16 pixels is the largest mark at 320 wide; one with a tail beyond it is more than a
    mark, however thin the tail (it is not cut where growing would reach 16)."""
    g = mark(frame(), 14, 60, height=16)
    assert M.find(g) == "top left"
    g[20, 76:82] = 235
    assert M.find(g) is None


@pytest.mark.parametrize("stem,followed", [((0, 1, 2), True), ((1, 2, 3), False), ((-2, -1, 0), True),
                                           ((-3, -2, -1), False)])
def test_the_edge_is_followed_along_the_centre_columns_while_half_of_them_are_lit(stem, followed):
    """64 pixels wide: the centre strip is 2 columns either side of the centre (5 columns):
    3 of them lit is more than half, 2 is not."""
    g = np.zeros((64, 64), np.uint8)
    g[20:61, 16:48] = 70  # the body: half the width
    top, _, centre = M._area_edges(g > M.LIT)
    assert (top, round(centre)) == (20, 32)  # 31.5 rounds to 32
    for dc in stem:
        g[8:20, 32 + dc] = 70  # a stem above the body, three columns wide
    top, _, _ = M._area_edges(g > M.LIT)
    assert top == (8 if followed else 20)


def test_an_area_from_the_frame_s_top_row_to_its_bottom_row():
    g = np.zeros((120, 160), np.uint8)
    g[:, 40:120] = 70
    assert M._area_edges(g > M.LIT) == (0, 119, 79.5)


def test_the_centre_is_of_the_body_s_lit_pixels():
    g = np.zeros((120, 160), np.uint8)
    g[20:100, 40:100] = 70
    g[20:100, 140:150] = 70  # a lit stripe off to the right pulls the centre towards it
    assert M._area_edges(g > M.LIT)[2] == pytest.approx((sum(range(40, 100)) + sum(range(140, 150))) / 70)


def test_grow_stops_once_taller_than_a_mark():
    bright = np.zeros((40, 40), bool)
    bright[4:36, 10:14] = True  # a bar down the frame
    (y0, x0), patch = M._grow(bright, 10, 10, 4, 8)
    assert patch.shape == (10, 4) and (y0, x0) == (7, 10)  # 2 rows a step, both ways: 4, 6, 8, 10


@pytest.mark.parametrize("shape", [(2, 50), (3, 50), (50, 2), (50, 3)])
def test_too_few_rows_or_columns_for_a_solid_square(shape):
    g = np.full(shape, 235, np.uint8)
    assert M._marks(g, g > M.LIT, np.ones(shape[0], bool)) == []


@pytest.mark.parametrize("shape,at", [((4, 40), (0, 18)), ((40, 4), (18, 0))])
def test_a_frame_just_big_enough_for_a_solid_square(shape, at):
    g = np.zeros(shape, np.uint8)
    g[at[0]:at[0] + 4, at[1]:at[1] + 4] = 235
    assert M._marks(g, g > M.LIT, np.ones(shape[0], bool)) == [(at[0] + 2, at[1] + 2)]


@pytest.mark.parametrize("dark", ["rows", "columns"])
def test_a_mark_barred_so_that_no_four_pixels_in_a_row_are_bright_holds_no_solid_square(dark):
    # 6 x 7 with two dark bars: runs of one and two bright lines, no four in a row
    if dark == "rows":
        g = mark(frame(), 28, 76, height=7, width=6)
        g[29, 76:82] = g[32, 76:82] = 0
    else:
        g = mark(frame(), 28, 76, height=6, width=7)
        g[28:34, 77] = g[28:34, 80] = 0
    assert M.find(g) is None
    assert M._marks(g, g > M.LIT, np.ones(H, bool)) == []


def test_the_area_s_edges_are_its_first_and_last_rows_lit_over_a_quarter_of_the_width():
    g = np.zeros((240, 320), np.uint8)
    g[40:201, 100:220] = 60
    g[40, 150:171] = g[200, 150:171] = 0  # the first and last rows dark in the centre (a rib's shadow)
    assert M._area_edges(g > M.LIT)[:2] == (40, 200)


@pytest.mark.parametrize("body,stem,edge,want", [
    ((20, 61), range(9, 20), 0, 9), ((20, 61), range(0, 20), 0, 0),  # an odd stem above; one up to row 0
    ((10, 41), range(41, 52), 1, 51), ((10, 41), range(41, 64), 1, 63),  # the same below
])
def test_a_stem_is_followed_to_its_end_up_to_the_frame_s_edge(body, stem, edge, want):
    g = np.zeros((64, 64), np.uint8)
    g[body[0]:body[1], 16:48] = 70
    for r in stem:
        g[r, 31:34] = 70
    assert M._area_edges(g > M.LIT)[edge] == want


@pytest.mark.parametrize("rim,found", [(1, True), (2, False)])
def test_a_mark_s_blurred_rim_may_be_a_pixel_wide(rim, found):
    g = frame()
    g[30 - rim:30 + 16 + rim, 60 - rim:60 + 16 + rim] = 50  # lit, not bright: a blurred edge
    g = mark(g, 30, 60, height=16)
    assert (M.find(g) == "top left") is found


def test_a_mark_s_centre_is_its_box_s_centre():
    g = mark(frame(), 28, 76, height=6, width=9)
    assert M._marks(g, g > M.LIT, np.ones(H, bool)) == [(31.0, 80.5)]


def test_no_more_than_three_marks_are_looked_for():
    g = frame()
    for left in (10, 30, 50, 70):
        mark(g, 30, left)
    assert len(M._marks(g, g > M.LIT, np.ones(H, bool))) == 3


def test_patches_whose_surroundings_are_more_than_half_lit_are_not_looked_at():
    """The cheap skip of patches inside the imaging area: a 4 x 4 mark (one place for the
    solid square) whose surroundings (16 pixels either side of the square's corner, Pillow's
    box blur) are lit to 127/255 is looked at; to 128/255, more than half, it is not."""
    from PIL import Image, ImageFilter

    def blurred(g):
        lit = (g > M.LIT).astype(np.uint8) * 255
        return int(np.asarray(Image.fromarray(lit).filter(ImageFilter.BoxBlur(16)))[30, 80])

    base = mark(frame(), 30, 80, height=4)
    # lit pixels added one at a time, clear of the mark: columns 64-75, then rows 14-25
    spots = [(r, c) for c in range(64, 76) for r in range(14, 47)] + \
            [(r, c) for r in range(14, 26) for c in range(76, 97)]
    seen = {}
    g = base.copy()
    for r, c in spots:
        g[r, c] = 40  # lit, not bright, not touching the mark
        seen.setdefault(blurred(g), g.copy())
    assert 127 in seen and 128 in seen
    assert M.find(seen[127]) == "top left"
    assert M.find(seen[128]) is None


def test_a_wide_frame_is_box_averaged_to_the_working_width():
    g = np.zeros((480, 640), np.uint8)
    g[101, 201] = 200  # one pixel: a quarter of it in the working frame's pixel
    small = M._working(g)
    assert small.shape == (240, 320) and small[50, 100] == 50 and small.sum() == 50
    assert M._working(g[:, :320]) is not None and M._working(g[:, :320]).shape == (480, 320)


@pytest.mark.parametrize("grey,found", [(M.LIT, False), (M.LIT + 1, True)])
def test_an_imaging_area_is_lit_above_the_darkest_greys(grey, found):
    assert (M.find(mark(frame(grey=grey), 30, 80)) == "top left") is found


@pytest.mark.parametrize("grey", [M.BRIGHT, M.BRIGHT + 20])
def test_a_frame_bright_at_the_limit_of_a_mark_counts_as_saturated(grey):
    g = mark(frame(area=(20, 235, 60, 300), grey=grey), 10, 40)
    assert M.find(g) is None


def test_a_frame_bright_on_exactly_three_fifths_is_still_searched():
    g = frame(area=(20, 203, 60, 309), grey=120)  # 184 x 250 = 46 000 bright pixels
    mark(g, 8, 40)  # 64 more
    g[238, 0:16] = 120  # and 16: 46 080 of 76 800, exactly 0.6
    assert (g >= M.BRIGHT).mean() == M.MAX_BRIGHT
    assert M.find(g) == "top left"
    g[238, 16] = 120
    assert M.find(g) is None


def test_a_mark_exactly_at_the_area_s_centre_is_on_its_right():
    g = frame(area=(40, 200, 40, 280))  # centre column 160
    g[20:28, 156:164] = 235  # a mark centred on column 160, above the area's middle
    assert M._area_edges(g > M.LIT)[2] == 160.0
    assert M.find(g) == "top right"
