"""The probe-orientation marker on an ultrasound frame, when there is one.

Scanners draw a small mark (a dot, or the vendor's logo) beside one end of the imaging
area's near field, on the side of the probe's notch. With the display inverted top to
bottom (a scanner setting) the near field, and the mark beside it, are at the bottom of the
frame; mirrored left to right, the mark is on the right. The kit's models read views with
the near field at the top: the runner sets a clip whose mark is at the bottom upright
before they read it (`runner`), and says so. A left-right mirror changes nothing they
read. No mark found, or more than one: nothing is changed.

A mark here is a solid, even, roughly square bright patch (SOLID pixels to MAX_SIZE of the
width across, on the frame reduced to WORK_WIDTH), apart from everything else drawn and on
black along three of its sides at least (so not inside the imaging area, nor part of text),
lying within EDGE_BAND of the imaging area's height from its top or bottom edge, and no
further than NEAR of the frame's width to the side of that edge's lit extent.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

BRIGHT = 100  # luma of a mark's pixels (a coloured logo is darker in luma than white)
DARK = 24  # luma of the black around a mark
LIT = 8  # luma above which a pixel is part of the image (the imaging area, text, marks)
ROW_SHARE = 0.25  # a row of the imaging area is lit over at least this share of the width
MIN_AREA_ROWS = 0.3  # an imaging area spans at least this share of the frame's rows
EDGE_BAND = 0.2  # of the imaging area's height: how near its top or bottom edge a mark lies
NEAR = 0.12  # of the frame's width: how far to the side of that edge's lit extent
MAX_SIZE = 0.05  # of the frame's width: the largest mark
SOLID = 4  # pixels (at WORK_WIDTH at most): the side of the solid square a mark holds
OPEN_LIT = 0.5  # most share of a mark's surroundings (MAX_SIZE either side) that is lit (marks measured: at most 0.34)
MIN_FILL = 0.5  # a mark fills at least this share of its bounding box (a disc: 0.79)
MAX_ASPECT = 1.5  # a mark is about as tall as wide (a line of text is not)
MAX_SPREAD = 35  # most standard deviation of a mark's luma (drawn flat; averaged text is mottled)
SIDE_DARK = 0.8  # share of the pixels along a side of a mark that are black
MAX_BRIGHT = 0.6  # a frame with more than this share bright is saturated, not searched
WORK_WIDTH = 320  # frames are searched at this width (pixels)
MAX_CANDIDATES = 64  # bright patches looked at, at most (each is grown once)


def find(gray: np.ndarray) -> str | None:
    """The corner of the frame the marker is at ("top left", "top right", "bottom left",
    "bottom right"), or None: no marker, or no clear one. `gray`: (H, W) uint8 luma."""
    if gray.size == 0:
        return None
    gray = _working(gray)
    h, w = gray.shape
    lit = gray > LIT
    if (gray >= BRIGHT).mean() > MAX_BRIGHT:
        return None  # saturated: no mark stands out
    edges = _area_edges(lit)
    if edges is None:
        return None
    top, bottom, centre = edges
    band = max(2, round(EDGE_BAND * (bottom - top)))
    corners = set()
    near_edge = np.zeros(h, bool)
    near_edge[max(0, top - band):top + band + 1] = near_edge[max(0, bottom - band):bottom + band + 1] = True
    for cy, cx in _marks(gray, lit, near_edge):
        for edge, row, inner in (("top", top, slice(top, top + band + 1)),
                                 ("bottom", bottom, slice(max(0, bottom - band), bottom + 1))):
            if abs(cy - row) > band:
                continue
            # beside the edge: no further to the side than NEAR of the width from the
            # columns lit on most of the area's rows next to it (text lies on a few rows only)
            cols = np.flatnonzero(lit[inner].mean(axis=0) >= 0.5)
            if len(cols) and cols.min() - NEAR * w <= cx <= cols.max() + NEAR * w:
                corners.add(f"{edge} {'left' if cx < centre else 'right'}")
    return corners.pop() if len(corners) == 1 else None


def _working(gray: np.ndarray) -> np.ndarray:
    """The frame at WORK_WIDTH at most, box-averaged (a mark stays solid, text fades)."""
    if gray.shape[1] <= WORK_WIDTH:
        return gray
    small = (WORK_WIDTH, max(1, round(gray.shape[0] * WORK_WIDTH / gray.shape[1])))
    return np.asarray(Image.fromarray(gray).resize(small, Image.BOX))


def _area_edges(lit: np.ndarray):
    """(top row, bottom row, centre column) of the imaging area, or None when there is none.
    Its body is the rows lit over ROW_SHARE of the width; a sector narrows towards its
    apex, so each edge is followed on from the body along the centre columns while they
    stay lit."""
    h, w = lit.shape
    rows = np.flatnonzero(lit.sum(axis=1) >= ROW_SHARE * w)
    if len(rows) < MIN_AREA_ROWS * h:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    centre = float(np.nonzero(lit[rows])[1].mean())  # of the body's lit pixels
    half = max(2, round(0.03 * w))
    strip = lit[:, max(0, round(centre) - half):round(centre) + half + 1].mean(axis=1) >= 0.5
    while top > 0 and strip[top - 1]:
        top -= 1
    while bottom < h - 1 and strip[bottom + 1]:
        bottom += 1
    return top, bottom, centre


def _marks(gray: np.ndarray, lit: np.ndarray, rows: np.ndarray) -> list[tuple[float, float]]:
    """Centres (row, column) of the solid bright patches on black (at most three) that
    start on the given rows (a mask)."""
    h, w = gray.shape
    if h < SOLID or w < SOLID:
        return []
    bright = gray >= BRIGHT
    m = max(SOLID, round(MAX_SIZE * w))
    # where a solid SOLID x SOLID square starts (its top-left pixel)
    down = bright[:h - SOLID + 1].copy()
    for i in range(1, SOLID):
        down &= bright[i:h - SOLID + 1 + i]
    solid = down[:, :w - SOLID + 1].copy()
    for i in range(1, SOLID):
        solid &= down[:, i:w - SOLID + 1 + i]
    # inside the imaging area nearly everything round a patch is lit: skip it cheaply (the
    # lit share of the surroundings of the square's corner, m either side, by Pillow's box blur)
    lit_round = np.asarray(Image.fromarray(lit.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(m)))
    open_round = lit_round[:solid.shape[0], :solid.shape[1]] <= OPEN_LIT * 255
    ys, xs = np.nonzero(solid & open_round & rows[:solid.shape[0], None])
    found, seen = set(), np.zeros_like(bright)  # seen: only saves growing a patch again
    for y, x in list(zip(ys.tolist(), xs.tolist()))[: MAX_CANDIDATES * SOLID * SOLID]:
        if seen[y, x]:
            continue
        (y0, x0), patch = _grow(bright, y, x, SOLID, m)
        seen[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] |= patch
        # apart from everything else drawn: the lit pixels joined to it (its blurred rim)
        # stay within a mark's size, where the tip of a sector, or text, would not
        if max(patch.shape) <= m and max(_grow(lit, y, x, SOLID, m + 2)[1].shape) <= m + 2 \
                and _isolated(gray, y0, x0, patch):
            found.add((y0 + patch.shape[0] / 2, x0 + patch.shape[1] / 2))
            if len(found) > 2:
                break
    return sorted(found)


def _grow(bright: np.ndarray, y: int, x: int, k: int, m: int):
    """The connected patch of `bright` holding the k x k square at (y, x), as (top-left,
    mask), grown no further than m pixels beyond the square."""
    h, w = bright.shape
    y0, x0 = max(0, y - m), max(0, x - m)
    crop = bright[y0:min(h, y + k + m), x0:min(w, x + k + m)]
    blob = np.zeros_like(crop)
    blob[y - y0:y - y0 + k, x - x0:x - x0 + k] = True
    for _ in range(crop.size):  # a pixel a step, 4-connected, within the crop (each step adds one or ends)
        grown = blob.copy()
        grown[1:] |= blob[:-1]
        grown[:-1] |= blob[1:]
        grown[:, 1:] |= blob[:, :-1]
        grown[:, :-1] |= blob[:, 1:]
        grown &= crop
        if (grown == blob).all():
            break
        blob = grown
        if np.count_nonzero(blob.any(axis=1)) > m or np.count_nonzero(blob.any(axis=0)) > m:
            break  # already bigger than a mark: no need to grow it all
    rr, cc = np.nonzero(blob.any(axis=1))[0], np.nonzero(blob.any(axis=0))[0]
    patch = blob[rr[0]:rr[-1] + 1, cc[0]:cc[-1] + 1]
    return (y0 + int(rr[0]), x0 + int(cc[0])), patch


def _isolated(gray: np.ndarray, y0: int, x0: int, patch: np.ndarray) -> bool:
    """A solid patch on black: as tall as wide (within MAX_ASPECT), of one even brightness,
    filling its box, and the strips a quarter its size along
    at least three of the box's four sides are black (the fourth may face the imaging
    area, which scanners draw the mark close to)."""
    ph, pw = patch.shape
    if patch.mean() < MIN_FILL or max(ph, pw) > MAX_ASPECT * min(ph, pw):
        return False
    if gray[y0:y0 + ph, x0:x0 + pw][patch].std() > MAX_SPREAD:
        return False  # mottled: text, whose dots a smaller frame averages into patches
    r = max(2, max(ph, pw) // 4)
    a, b = y0 - 1, y0 + ph + 1  # a pixel left out all round: the mark's own blurred rim
    c, d = x0 - 1, x0 + pw + 1
    sides = (gray[max(0, a - r):max(0, a), x0:x0 + pw], gray[b:b + r, x0:x0 + pw],
             gray[y0:y0 + ph, max(0, c - r):max(0, c)], gray[y0:y0 + ph, d:d + r])
    # a side cut off by the frame's edge counts as black: nothing is drawn there
    return sum(1 for s in sides if s.size == 0 or np.mean(s <= DARK) >= SIDE_DARK) >= 3
