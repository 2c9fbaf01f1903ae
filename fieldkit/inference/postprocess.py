"""Model outputs -> numbers a clinician reads. Shared by the runner, training and tests."""

from __future__ import annotations

import functools
import warnings

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def runs(mask: np.ndarray, min_len: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D mask, at least min_len long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


SPLIT_DIP = 0.05  # evidence dipping this far below the peaks either side parts two lines


def split_run(col_prob: np.ndarray, a: int, b: int, dip: float) -> list[tuple[int, int]]:
    """[a, b) cut at each column where the evidence is a local minimum at least `dip` below
    the highest evidence on both sides of it: neighbouring B-lines whose evidence touches are
    still two lines (the columns of a minimum belong to neither)."""
    seg = np.asarray(col_prob[a:b], float)
    out, start = [], 0
    for i in range(1, len(seg) - 1):
        if i == start and seg[i] <= seg[i - 1]:  # a flat minimum goes on (its columns too
            start = i + 1  # belong to neither line; nothing of a line left of it to compare)
        elif seg[i] <= seg[i - 1] and seg[i] <= seg[i + 1] and \
                seg[i] <= min(seg[start:i].max(), seg[i + 1:].max()) - dip:
            out.append((a + start, a + i))
            start = i + 1
    out.append((a + start, b))
    return out


def count_blines(col_prob: np.ndarray, threshold: float, min_width: int = 1,
                 dip: float | None = None) -> tuple[int, list]:
    """One frame's per-column B-line probabilities -> (count, [start, end) column runs);
    with dip, runs are cut where their evidence dips (split_run)."""
    r = runs(col_prob >= threshold, min_width)
    if dip is not None:
        r = [p for a, b in r for p in split_run(col_prob, a, b, dip)]
    return len(r), r


def pleura_row(row_logits: np.ndarray, input_rows: int) -> float:
    """Row (in model-input pixels) of the pleural line from the per-row-bin logits."""
    bins = row_logits.shape[-1]
    p = softmax(row_logits)
    return float((np.argmax(p) + 0.5) * input_rows / bins)


def pleura_rows(row_logits: np.ndarray, input_rows: int) -> list[float]:
    """`pleura_row` of each frame's logits ((frames, bins)), taken at once."""
    bins = row_logits.shape[1]
    p = softmax(row_logits)
    return ((np.argmax(p, axis=1) + 0.5) * input_rows / bins).tolist()


def fluid_mask(fluid_logits: np.ndarray, threshold: float) -> np.ndarray:
    """(1, h, w) or (h, w) logits -> bool mask."""
    return sigmoid(np.squeeze(fluid_logits)) >= threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


# A B-line (consensus definition) arises from the pleural line and reaches the bottom of
# the screen without fading. The lung model scores columns at the pleura; these checks
# follow each scored column in the image itself and turn away vertical artefacts that do
# not: E-lines and needle ring-down start above the pleura, Z-lines and comet tails fade.
LINE_HALF = 1  # half-width (input pixels) of the line sampled along its track
SIDE = (4, 8)  # background band either side of the line (input pixels from its centre)
IN_VIEW = 0.02  # below this the image is black: outside the field of view
MIN_CONTRAST = 0.04  # a line brighter than its surroundings by less is no line
FADE_RATIO = 0.45  # deep contrast below this share of the contrast near the pleura: it fades
ABOVE_RATIO = 0.12  # median contrast over the chest wall above this share of the one below: starts above
ABOVE_MIN = 0.03  # ... and above this: chest-wall speckle alone stays under it
ABOVE_FROM, ABOVE_GAP = 0.65, 4  # the chest wall looked at: from 2/3 of the pleura's row to 4 rows
# above it, where every E-line and needle ring-down passes (they start higher or lower up)


def wall_rows(prow: int) -> np.ndarray:
    """The rows of chest wall the mimic rules and the averaged wall look at above a pleura
    at row prow (ABOVE_FROM, ABOVE_GAP); none when it lies too high."""
    return np.arange(max(0, int(ABOVE_FROM * prow)), max(0, prow - ABOVE_GAP))


# Confluent B-lines (white lung): one band of evidence over a wide sector. Measured just under
# the pleura, where a convex probe's sector is narrow and a band has not yet fanned out.
CONFLUENT_SHARE = 0.25  # B-line evidence over at least this share of the field of view's width
# at the pleura (confluent bands span 30-55 % of it; the image's width would ask a convex
# probe's band for more than it has there)
CONFLUENT_FLOOR = 0.1  # ... all at or above this: lines merged over a wide sector ("confluent",
# white lung), which the model scores as a plateau with dips, not as separate peaks
CONFLUENT_EVEN = 0.9  # ... and evenly bright under the pleura: its dimmest tenth of columns at
# least this share of its median (close separate lines leave dark gaps the model bridges)
EVEN_TRIM = 0.3  # the band's outer 30 % either side is left out (its edges fall off like a line's)
EVEN_ROWS = 16  # rows under the pleura looked at (before a convex probe's band fans out)
BAND_ABOVE = 0.05  # the band over the chest wall brighter than the wall beside it by more than this
BAND_ABOVE_RATIO = 0.5  # ... and than this share of its contrast under the pleura: it starts above
ABOVE_BAND = (0.3, 0.9)  # the chest wall looked at, as shares of the pleura's row (a convex probe's
# pleura rises towards the sides: rows just above its centre may cross it)
BAND_SIDE = 10  # a run wider than a line: its background is this many input pixels either side of it


def _box(img: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the sum and count of img[..., row, col+lo : col+hi+1] (clipped at the
    edges; img: one frame or a stack of them): differences of the row's running sums (in
    img's own precision, as the line check was fitted), taken in float64. Written into one
    array, not through a padded copy: arrays of a few frames are fresh memory the system
    has to map page by page, which cost more than the sums themselves."""
    w = img.shape[-1]
    run = np.cumsum(img, axis=-1)  # run[..., k]: the first k + 1 pixels
    cols = np.arange(w)
    a, b = np.clip(cols + lo, 0, w), np.clip(cols + hi + 1, 0, w)  # the window [a, b)
    out = np.empty(img.shape)
    j0, j1 = min(w, max(0, 1 - lo)), max(0, min(w, w - hi))  # columns whose window is not clipped (nor at 0)
    if j1 > j0:
        np.subtract(run[..., j0 + hi:j1 + hi], run[..., j0 + lo - 1:j1 + lo - 1], out=out[..., j0:j1], dtype=np.float64)
    for j in [*range(j0), *range(max(j0, j1), w)]:  # the columns near the edges
        np.subtract(run[..., b[j] - 1] if b[j] else 0.0, run[..., a[j] - 1] if a[j] else 0.0,
                    out=out[..., j], dtype=np.float64)
    return out, np.maximum(b - a, 0)


def _gather(stack: np.ndarray, frames, rows, cols) -> np.ndarray:
    """stack[frames, rows, cols] (index arrays broadcast together) through one flat index:
    numpy's gather over three index arrays costs a few times more."""
    _, h, w = stack.shape
    return np.ascontiguousarray(stack).reshape(-1).take((frames * h + rows) * w + cols)


SIDE_OFFSETS = np.concatenate([np.arange(-SIDE[1], -SIDE[0] + 1), np.arange(SIDE[0], SIDE[1] + 1)])


class SideContrast:
    """The line's contrast, indexed like an (h, w) array ([rows, cols], scalars or arrays;
    [frames, rows, cols] for a stack of frames, and `at` for either): its brightness minus
    the median of the background bands either side (a median: a neighbouring line in one
    band does not lift it; nan outside the field of view). Computed only where asked: a
    frame's lines need a few hundred of its pixels, and the medians of all of them cost
    more than the rest of the frame's post-processing."""

    def __init__(self, img: np.ndarray, line: np.ndarray):
        self._frames = img.ndim == 3
        self.line = line if self._frames else line[None]
        self._img = img if self._frames else img[None]

    def __getitem__(self, where):
        return self.at(*where) if self._frames else self.at(0, *where)

    def at(self, frames, rows, cols) -> np.ndarray:
        """The contrast at (frames, rows, cols) (rows and cols alike in shape; frames one
        frame or one for each)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        frames = np.broadcast_to(frames, rows.shape)
        line = _gather(self.line, frames, rows, cols)
        w = self._img.shape[2]
        at = cols.reshape(-1, 1) + SIDE_OFFSETS
        # the background in float32, the model's input (nan off the edge: sorted last)
        sides = _gather(self._img, frames.reshape(-1, 1), rows.reshape(-1, 1), np.clip(at, 0, w - 1)).astype(np.float32, copy=False)
        off = (at < 0) | (at >= w)
        sides[off] = np.nan
        sides.sort(axis=1)
        n = np.maximum(sides.shape[1] - off.sum(axis=1), 1)  # the median of the values present (an image has no nan)
        i = np.arange(len(sides))
        side = (0.5 * (sides[i, (n - 1) // 2] + sides[i, n // 2])).reshape(line.shape)
        return np.where(line < IN_VIEW, np.nan, line - side)


class LineMaps:
    """A frame's line brightness per pixel (`line`: the mean over the line's width), its
    contrast (`contrast`, a SideContrast) and the way a track goes from each pixel to the
    next row, computed once per frame so that following a line costs a lookup per row.
    Made for a stack of frames at once (frames, h, w), `line` is a stack too and every
    lookup names its frame; `lines` is always the stack (one frame: a stack of one)."""

    def __init__(self, img: np.ndarray):
        s, n = _box(img, -LINE_HALF, LINE_HALF)
        s /= np.maximum(n, 1)
        self.line = s
        self.lines = s if img.ndim == 3 else s[None]
        self.contrast = SideContrast(img, s)
        self._step = _steps(self.lines)

    def track(self, row0: int, col0: int) -> np.ndarray:
        """(n, 3): (row, column, contrast) down a near-vertical line from (row0 >= 0, col0)
        to the bottom of the field of view; the column may drift one pixel per row (lines
        fan out on a convex or phased probe)."""
        return self.tracks(row0, [col0])[0]

    def tracks(self, row0, cols0, frames=None) -> list[np.ndarray]:
        """`track` from row0 (one for all, or one for each) for each of the columns cols0 (in
        frames: one for each, for a stack; frame 0 when None), their contrast looked up at once."""
        row0 = [row0] * len(cols0) if np.ndim(row0) == 0 else row0
        frames = [0] * len(cols0) if frames is None else frames
        h = self._step.shape[1]
        steps = memoryview(self._step)  # lookups one pixel at a time: far cheaper than numpy's
        cols, starts, lengths = [], [], []
        for f, r0, col in zip(frames, row0, cols0):
            starts.append(len(cols))
            for r in range(r0, h):
                col += steps[f, r, col]
                cols.append(col)
            lengths.append(len(cols) - starts[-1])
        rows = np.concatenate([np.arange(r0, r0 + n) for r0, n in zip(row0, lengths)] + [np.zeros(0, int)])
        at = np.repeat(np.asarray(frames, np.intp), lengths)
        con = self.contrast.at(at, rows, np.array(cols, np.intp))
        out = np.column_stack([rows, cols, con]) if len(con) else np.zeros((0, 3))
        # the first pixel out of the field of view ends a track
        gone = np.flatnonzero(np.isnan(con))
        starts, lengths = np.array(starts, np.intp), np.array(lengths, np.intp)
        first = gone[np.minimum(np.searchsorted(gone, starts), len(gone) - 1)] if len(gone) else starts + lengths
        ends = np.where((first >= starts) & (first < starts + lengths), first, starts + lengths)
        return [out[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def _steps(line: np.ndarray) -> np.ndarray:
    """Per pixel of a stack of line maps, the column step (-1, 0, 1) a track takes to the
    next row: to the brightest of the columns c-1, c, c+1 (the first of equals, as
    np.argmax picks it; nothing lies beyond the image's edges)."""
    step = np.zeros(line.shape, np.int8)
    if line.shape[-1] < 2:
        return step
    left, mid, right = line[..., :-2], line[..., 1:-1], line[..., 2:]
    to_left = (left >= mid) & (left >= right)
    step[..., 1:-1] = (mid < right) & ~to_left
    step[..., 1:-1] -= to_left
    step[..., 0] = line[..., 0] < line[..., 1]
    step[..., -1] = -(line[..., -2] >= line[..., -1]).astype(np.int8)
    return step


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """np.polyfit(x, y, 1)[0], the same steps (to the bit) without its checks: the scaled
    Vandermonde matrix and np.linalg.lstsq (x: at least two values)."""
    lhs = np.column_stack([x, np.ones_like(x)])  # np.vander(x, 2)
    scale = np.sqrt((lhs * lhs).sum(axis=0))
    # lstsq's default rcond is np.polyfit's: len(x) times the float's eps
    return float(np.linalg.lstsq(lhs / scale, y)[0][0] / scale[0])


def _slopes(xs, ys, rows_up) -> np.ndarray:
    """The slope of each line (xs, ys: the rows and columns of its track's first rows,
    whole numbers, two rows at least), for following it up through the rows 0 to
    rows_up - 1 (one for each): the exact least-squares slope, from sums that are exact in
    floating point, rounded once. Where the line's exact column on one of those rows lies
    exactly half way between two pixels, the slope is `_slope`'s, whose last bit decided the
    rounding there when the line check was fitted; the columns it gives elsewhere are the
    same either way (an exact column is at least 1/(2 x the sums' denominator) from half way)."""
    n = np.array([len(x) for x in xs], np.int64)
    x, y = np.zeros((len(xs), int(n.max(initial=0))), np.int64), np.zeros((len(xs), int(n.max(initial=0))), np.int64)
    for i, (a, b) in enumerate(zip(xs, ys)):
        x[i, :len(a)], y[i, :len(b)] = a, b
    sx, sy = x.sum(axis=1), y.sum(axis=1)
    num, den = n * (x * y).sum(axis=1) - sx * sy, n * (x * x).sum(axis=1) - sx * sx
    out = num / den
    rows = np.arange(max(rows_up, default=0))
    d = rows - x[:, :1]  # from the track's first row to each row looked at
    half = (2 * num[:, None] * d % (2 * den[:, None]) == den[:, None]) & (rows < np.array(rows_up)[:, None])
    for i in np.flatnonzero(half.any(axis=1)).tolist():
        out[i] = _slope(np.asarray(xs[i], float), np.asarray(ys[i], float))
    return out


def _follow(img: np.ndarray, lo: int, hi: int, prow: int, maps: LineMaps) -> tuple[int, np.ndarray, float] | None:
    """The line a run of columns [lo, hi) scored (`_follow_lines` for one run)."""
    return _follow_lines(img, [(lo, hi)], prow, maps)[0]


def _follow_lines(img: np.ndarray, spans, prow: int, maps: LineMaps) -> list:
    """For each run of columns [lo, hi) in spans, the line it scored: its brightest column
    just under the pleura, its track from there to the bottom (`LineMaps.track`) and its
    slope (columns per row); None when too little image lies below the pleura to judge."""
    return _follow_frames(img[None], [(0, prow, lo, hi) for lo, hi in spans], maps)


def _follow_frames(imgs: np.ndarray, runs_at, maps: LineMaps) -> list:
    """`_follow_lines` for runs in a stack of frames: runs_at holds (frame, pleura row, lo,
    hi) for each, maps are the stack's."""
    h = imgs.shape[1]
    profiles = {}  # per frame: the band under the pleura's mean per column (None: too little image)
    for f, prow, _, _ in runs_at:
        if f not in profiles:
            r0 = prow + 3  # under the pleural line's own echo
            profiles[f] = imgs[f, r0:r0 + 8].mean(axis=0) if h - r0 >= 8 else None
    starts = [lo + int(np.argmax(profiles[f][lo:hi])) if profiles[f] is not None and hi > lo else None
              for f, _, lo, hi in runs_at]  # its brightest column under the pleura (None: off the image)
    at = [i for i, c in enumerate(starts) if c is not None]
    below = maps.tracks([runs_at[i][1] + 3 for i in at], [starts[i] for i in at], [runs_at[i][0] for i in at])
    kept = [(i, b) for i, b in zip(at, below) if len(b) >= 8]  # the others leave the field of view
    slopes = _slopes([b[:16, 0] for _, b in kept], [b[:16, 1] for _, b in kept],
                     [max(1, runs_at[i][1] - 2) for i, _ in kept])  # the rows `frames_features` looks at
    out = [None] * len(runs_at)
    for (i, b), slope in zip(kept, slopes.tolist()):
        out[i] = (starts[i], b, slope)
    return out


def bline_mimic(img: np.ndarray, cols: tuple[float, float], pleura_row: float, maps=None,
                check: dict | None = None, peak: float = 1.0, among: int = 1) -> str:
    """Why a run of columns the model scored as a B-line is not one, or "" when it is one.

    img: one frame as the model saw it ((H, W) float, 0-1); cols ([start, end)) and
    pleura_row in the same pixels; maps: the frame's `LineMaps` when already made (once a
    frame, shared by all its lines). check: the bundle's learned line check
    (`line_check_prob`), which decides for a line-wide run (peak: the model's highest
    column probability in it; among: how many runs the model scored in the frame, see
    `check_threshold`); the rules below still give the reason in words, and decide alone
    without a check."""
    return line_mimics(img, [cols], pleura_row, maps, check, [peak], among)[0]


def line_mimics(img: np.ndarray, cols, pleura_row: float, maps=None, check: dict | None = None,
                peaks=None, among: int = 1) -> list[str]:
    """`bline_mimic` for each of a frame's runs (cols: their [start, end) columns; peaks:
    the model's peak in each), the frame's lines measured and checked together."""
    return _judged(img, cols, pleura_row, maps, check, peaks, among)[0]


def _judged(img: np.ndarray, cols, pleura_row: float, maps, check: dict | None, peaks,
            among: int) -> tuple[list[str], list]:
    """`line_mimics`, and each run's `_follow_lines` result (None: a band, or not followed)."""
    return _judged_frames(img[None], [cols], [pleura_row], maps, check, [peaks], [among])[0]


def _judged_frames(imgs: np.ndarray, cols, pleura_rows, maps, check: dict | None, peaks,
                   among) -> list[tuple[list[str], list]]:
    """`_judged` for each frame of a stack (cols, pleura_rows, peaks, among: one for each
    frame; maps: the stack's, or None), the lines of all its frames followed, measured and
    checked together."""
    # the model's pleura lies in the image; a row asked for off it is read at its edge
    prows = [min(imgs.shape[1] - 1, max(0, int(round(p)))) for p in pleura_rows]
    spans = [[run_pixels(c, imgs.shape[2]) for c in frame_cols] for frame_cols in cols]
    peaks = [[1.0] * len(s) if p is None else p for s, p in zip(spans, peaks)]
    why = [[_band_mimic(img, lo, hi, prow) if is_band(lo, hi) else "" for lo, hi in s]
           for img, s, prow in zip(imgs, spans, prows)]
    per_run = [[None] * len(s) for s in spans]
    lines = [(f, i) for f, s in enumerate(spans) for i, (lo, hi) in enumerate(s) if not is_band(lo, hi)]
    if not lines:
        return list(zip(why, per_run))
    maps = maps if maps is not None else LineMaps(imgs)
    followed = _follow_frames(imgs, [(f, prows[f], *spans[f][i]) for f, i in lines], maps)
    for (f, i), fo in zip(lines, followed):
        per_run[f][i] = fo
    # too little image below the pleura to judge: leave the model's call ("")
    judged = [(f, i, fo) for (f, i), fo in zip(lines, followed) if fo is not None]
    kept = [False] * len(judged)
    if check is not None and judged:
        probs = line_check_probs(frames_features(imgs, maps, [f for f, _, _ in judged], [prows[f] for f, _, _ in judged],
                                                 [spans[f][i] for f, i, _ in judged], [peaks[f][i] for f, i, _ in judged],
                                                 [fo for _, _, fo in judged]), check)
        kept = [p >= check_threshold(check, among[f]) for (f, _, _), p in zip(judged, probs)]
    for (f, i, fo), keep in zip(judged, kept):
        if not keep:  # the reason in words (and the verdict without a check)
            why[f][i] = _line_rules(imgs[f], maps, prows[f], *fo, frame=f) or (NOT_SHAPED if check is not None else "")
    return list(zip(why, per_run))


def check_threshold(check: dict, among: int) -> float:
    """The line check's threshold for a run in a frame where the model scored `among` runs:
    its `among_many` threshold when there are at least that many. B-lines come in numbers,
    an E-line or a needle alone (almost no mimic frame has three runs), so in a frame of
    many lines a borderline one is kept: at the one threshold for all, one true line in
    ten was turned away, and frames of 5-8 lines were counted short."""
    many = check.get("among_many")
    if many and among >= int(many["runs"]):
        return float(many["threshold"])
    return float(check["threshold"])


def run_pixels(cols: tuple[float, float], width: int) -> tuple[int, int]:
    """A run's columns [start, end) in input pixels as whole pixels inside the image (at least one)."""
    lo = max(0, int(cols[0]))
    return lo, min(width, max(int(cols[0]) + 1, int(np.ceil(cols[1]))))


def is_band(lo: int, hi: int) -> bool:
    """Wider than a line: its background bands would lie on it, so it is judged as a band."""
    return hi - lo >= 2 * SIDE[0]


NOT_SHAPED = "not shaped like a B-line from the pleural line to the bottom (line check)"


def _line_rules(img: np.ndarray, maps: LineMaps, prow: int, start: int, below: np.ndarray, slope: float,
                frame: int) -> str:
    """The hand-set rules on a followed line (see `_verdict`; img: its frame, maps: the
    stack's, frame: its place in the stack)."""
    w = img.shape[1]
    q = max(2, len(below) // 4)
    contrast = below[:, 2]
    near, deep = float(np.median(contrast[:q])), float(np.median(contrast[-q:]))
    if near < MIN_CONTRAST:
        return "no bright line below the pleura"
    # above the pleura, follow the line's own direction (no search: a search finds speckle)
    r = wall_rows(prow)
    c = np.round(start + slope * (r - below[0][0])).astype(int)
    ok = (c >= 0) & (c < w)
    above = maps.contrast.at(frame, r[ok], c[ok])
    return _verdict(above[~np.isnan(above)], near, deep)


# The learned line check: a logistic regression over these measurements of a followed line
# and their pairwise products, fitted by models/train/linecheck.py on simulated frames (true
# B-lines against the mimics) and carried, signed, in the lung bundle's thresholds.
ABOVE_WINDOWS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.75), (0.75, 0.9), (0.9, 1.0))
ABOVE_BRIGHT = 0.03  # a row of the line above the pleura this much brighter than beside it is "bright"
LINE_FEATURES = (("near", "deep", "median_below", "min_below", "width", "pleura_depth", "slope")
                 + tuple(f"above_{a}_{b}_{k}" for a, b in ABOVE_WINDOWS for k in ("median", "bright"))
                 + ("pleura_over_above", "pleura_over_below", "pleura_over_row", "wall_beside", "peak",
                    "above_profile"))
FEATURE_AT = {name: i for i, name in enumerate(LINE_FEATURES)}
ABOVE_AT = {k: [FEATURE_AT[f"above_{a}_{b}_{k}"] for a, b in ABOVE_WINDOWS] for k in ("median", "bright")}


def line_features(img: np.ndarray, maps: LineMaps, prow: int, lo: int, hi: int, peak: float, followed) -> np.ndarray:
    """LINE_FEATURES of one followed line (`lines_features` for one line)."""
    return lines_features(img, maps, prow, [(lo, hi)], [peak], [followed])[0]


def lines_features(img: np.ndarray, maps: LineMaps, prow: int, spans, peaks, followed) -> np.ndarray:
    """(lines, LINE_FEATURES) of a frame's followed lines (`frames_features` for one frame)."""
    return frames_features(img[None], maps, [0] * len(followed), [prow] * len(followed), spans, peaks, followed)


def frames_features(imgs: np.ndarray, maps: LineMaps, frames, prows, spans, peaks, followed) -> np.ndarray:
    """(lines, LINE_FEATURES) of followed lines in a stack of frames (`_follow_frames`'
    results; for each line its frame, its frame's pleural row, its run's [lo, hi) columns
    and the model's peak; maps: the stack's): each line's contrast just under the pleura, at
    the bottom and along the way; its width, depth and slope; its contrast over the chest
    wall in ABOVE_WINDOWS (shares of the pleura's row: the median, and the share of bright
    rows); how far the pleura stands out on the line (B-lines start at it, E-lines run
    through it) and along the pleural row; the chest wall beside the line against the whole
    wall (emphysema darkens it); the model's own peak; the chest wall just above the pleura
    averaged along the line's track (`_profile_contrast`). Lines of several frames are
    measured together: rows a line's frame does not look at are nan (no value) or left out."""
    _, h, w = imgs.shape
    n, line = len(followed), maps.lines
    fr, prow = np.asarray(frames), np.asarray(prows)
    starts = np.array([f[0] for f in followed])
    slopes = np.array([f[2] for f in followed])
    below = [f[1][:, 2] for f in followed]
    quarter = [max(2, len(cb) // 4) for cb in below]
    looked = np.maximum(1, prow - 2)  # rows looked at above the pleura, to 3 rows above it
    r_all = np.arange(looked.max())
    top = np.array([fo[1][0][0] for fo in followed])[:, None]  # the track's first row
    cols = np.clip(np.round(starts[:, None] + slopes[:, None] * (r_all - top)).astype(int), 0, w - 1)
    # the line followed up through the chest wall; a last column of nan stands for "no row"
    above = np.full((n, len(r_all) + 1), np.nan)
    above[:, :-1] = maps.contrast.at(fr[:, None], np.broadcast_to(r_all, cols.shape), cols)
    # each window's rows as columns of `above` (padded with the nan column), all lines at once
    first = np.minimum((np.array(ABOVE_WINDOWS)[:, 0] * prow[:, None]).astype(int), looked[:, None])
    last = np.minimum(np.maximum(first + 1, (np.array(ABOVE_WINDOWS)[:, 1] * prow[:, None]).astype(int)), looked[:, None])
    at = first[:, :, None] + np.arange((last - first).max())
    at = np.where(at < last[:, :, None], at, len(r_all))
    windows = np.take_along_axis(above[:, None, :], at, 2)  # (lines, windows, rows)
    # the chest wall: its median in each frame, and beside each line (12 columns either
    # side), nan where it is out of view
    wall_from = (0.3 * prow).astype(int)
    wall_to = np.maximum(wall_from + 1, prow - 4)
    wall_median = {}
    for k, a, b in zip(fr.tolist(), wall_from.tolist(), wall_to.tolist()):
        if k not in wall_median:
            wall = imgs[k, a:b]
            inside = wall[wall > IN_VIEW]
            wall_median[k] = _median(inside) if len(inside) else np.nan
    rows = wall_from[:, None] + np.arange((wall_to - wall_from).max())  # (the last row: h - 5 at most)
    near_cols = starts[:, None, None] + np.arange(-12, 13)
    beside = _gather(imgs, fr[:, None, None], rows[:, :, None], np.clip(near_cols, 0, w - 1))
    beside = np.where((beside > IN_VIEW) & (rows < wall_to[:, None])[:, :, None] & (near_cols >= 0) & (near_cols < w),
                      beside, np.nan)
    # the medians of all lines sorted together, in groups of like length: below the pleura
    # (near, deep, all) and over the chest wall in each window
    near, deep, along = _medians([cb[:q] for cb, q in zip(below, quarter)] + [cb[-q:] for cb, q in zip(below, quarter)]
                                 + below).reshape(3, n)
    in_windows = _medians(windows.reshape(n * len(ABOVE_WINDOWS), -1)).reshape(n, len(ABOVE_WINDOWS))
    f = np.empty((n, len(LINE_FEATURES)))  # column FEATURE_AT[name]: that measurement
    # the first seven measurements, in LINE_FEATURES' order
    f[:, :7] = np.column_stack([near, deep, along, [cb.min() for cb in below], [hi - lo for lo, hi in spans],
                                prow / h, slopes])
    shown = np.maximum(np.count_nonzero(~np.isnan(windows), axis=2), 1)
    f[:, ABOVE_AT["median"]] = in_windows  # nan (0 below) when no row is in view
    f[:, ABOVE_AT["bright"]] = np.count_nonzero(windows > ABOVE_BRIGHT, axis=2) / shown
    # the line on the pleura (a followed line has rows under it), 8 rows over it and under it
    # (a followed line's pleura lies 11 rows above the bottom at least; a row above the
    # top is read as the top row, which is read anyway)
    on_pleura = _gather(line, fr[:, None], np.maximum(prow[:, None] + np.arange(-2, 3), 0), starts[:, None]).max(axis=1)
    over_rows = prow[:, None] + np.arange(-12, -4)
    over = _gather(line, fr[:, None], np.maximum(over_rows, 0), starts[:, None])
    over = np.where(prow > 4, _medians(np.where(over_rows >= 0, over, np.nan)), 0.0)
    under_rows = np.minimum(prow[:, None] + np.arange(4, 12), h - 1)
    under = np.where(prow + 12 < h, _medians(_gather(line, fr[:, None], under_rows, starts[:, None])), 0.0)
    f[:, FEATURE_AT["pleura_over_above"]], f[:, FEATURE_AT["pleura_over_below"]] = on_pleura - over, on_pleura - under
    # the pleural row: its brightest pixel per column, on the line against its median in view
    on_row = np.empty(n)
    for k, p in set(zip(fr.tolist(), prow.tolist())):
        peak_of = imgs[k, max(0, p - 2):p + 3].max(axis=0)
        shown = peak_of > IN_VIEW
        mine = fr == k
        on_row[mine] = peak_of[starts[mine]] - _median(peak_of[shown]) if shown.any() else 0.0
    f[:, FEATURE_AT["pleura_over_row"]] = on_row
    # a line with no wall in view beside it: nan, 0 below
    f[:, FEATURE_AT["wall_beside"]] = _medians(beside.reshape(n, -1)) - np.array([wall_median[k] for k in fr.tolist()])
    f[:, FEATURE_AT["peak"]] = peaks
    f[:, FEATURE_AT["above_profile"]] = _profile_contrasts(imgs, fr, [wall_rows(p) for p in prow.tolist()], cols)
    return np.nan_to_num(f)


PROFILE_OFFSETS = np.arange(-SIDE[1], SIDE[1] + 1)  # columns across a track, from its centre
PROFILE_SIDES = np.flatnonzero(np.abs(PROFILE_OFFSETS) >= SIDE[0])  # ... in its background bands


def _profile_contrast(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per line (cols: its track's column on every row from the top, (lines, >= rows)), the
    image across its track averaged over `rows` (the rows where the track is in view): the
    profile's peak within a pixel of the track over the median of its background bands
    (SIDE). A line that runs through those rows adds up along them while speckle averages
    out, so an E-line or a needle shows there even where no row of it stands out; 0 with
    fewer than two rows or three background columns in view (`_profile_contrasts` for one frame)."""
    return _profile_contrasts(img[None], np.zeros(len(cols), np.intp), [rows] * len(cols), cols)


def _profile_contrasts(imgs: np.ndarray, frames: np.ndarray, rows, cols: np.ndarray) -> np.ndarray:
    """`_profile_contrast` of lines in a stack of frames (for each line its frame and its rows)."""
    lengths = np.array([len(r) for r in rows])
    at = np.zeros((len(rows), int(lengths.max(initial=0))), np.intp)  # each line's rows (0: none)
    for i, r in enumerate(rows):
        at[i, :len(r)] = r
    counted = np.arange(at.shape[1]) < lengths[:, None]
    across = np.take_along_axis(cols, at, 1)[:, :, None] + PROFILE_OFFSETS
    win = _gather(imgs, frames[:, None, None], at[:, :, None], np.clip(across, 0, imgs.shape[2] - 1))
    used = (win > IN_VIEW) & counted[:, :, None] & (across >= 0) & (across < imgs.shape[2])  # in view...
    used &= used[:, :, SIDE[1], None]  # ... on a row where the track itself is in view
    shown = used.sum(axis=1)
    profile = np.divide((win * used).sum(axis=1), shown, out=np.full(shown.shape, np.nan),
                        where=shown > 0)  # (lines, columns), nan where no row shows
    peak = np.fmax.reduce(profile[:, SIDE[1] - 1:SIDE[1] + 2], axis=1)
    sides = profile.take(PROFILE_SIDES, axis=1)
    enough = (shown[:, SIDE[1]] >= 2) & (np.count_nonzero(shown.take(PROFILE_SIDES, axis=1), axis=1) >= 3)
    return np.where(enough, peak - _medians(sides), 0.0)


def _medians(rows) -> np.ndarray:
    """`_median` of each of a list of 1-D arrays, or of each row of a 2-D array (nan left
    out), taken together; nan where there is no value."""
    if isinstance(rows, np.ndarray):
        a = rows
    else:
        a = np.full((len(rows), max(map(len, rows))), np.nan)
        for i, r in enumerate(rows):
            a[i, :len(r)] = r
    if not a.shape[1]:
        return np.full(len(a), np.nan)
    n = np.count_nonzero(~np.isnan(a), axis=1)  # a row without a value picks nan
    lo, hi = np.maximum((n - 1) // 2, 0), n // 2
    # the middle values put in place (nan last) by a full sort: a partial one at every row's
    # own middle places (up to two per row) costs more. Sorted in their own precision (the
    # image's float32 sorts faster), the two middle values are added in float64.
    a = np.sort(a, axis=1)
    i = np.arange(len(a))
    return (a[i, lo].astype(np.float64) + a[i, hi]) / 2


def _median(a) -> float:
    """np.median of an array (not nan) without its overhead: the middle value(s) picked by a
    partial sort (the chest wall's median is over thousands of pixels)."""
    a = np.asarray(a, float).ravel()
    lo, hi = (len(a) - 1) // 2, len(a) // 2
    a = np.partition(a, (lo, hi))
    return float((a[lo] + a[hi]) / 2)


def line_check_problem(check) -> str | None:
    """What is wrong with a bundle's `thresholds.line_check` (None: the kit can use it), so a
    bundle whose check the kit would fail on is refused when it is verified, not mid-analysis."""
    n = len(LINE_FEATURES)
    if not isinstance(check, dict):
        return "is not an object"
    if check.get("features") != list(LINE_FEATURES):
        return f"was fitted on other line features than this kit measures (it needs {n}: {', '.join(LINE_FEATURES[:3])}, ...)"
    sizes = {"mean": n, "scale": n, "weights": n + n * (n + 1) // 2}
    for key, size in sizes.items():
        v = check.get(key)
        if not (isinstance(v, list) and len(v) == size and all(_finite(x) for x in v)):
            return f"{key} must be {size} finite numbers"
    if not all(x > 0 for x in check["scale"]):
        return "scale must be positive"
    if not (_finite(check.get("bias")) and _finite(check.get("threshold")) and 0 < check["threshold"] < 1):
        return "needs a finite bias and a threshold between 0 and 1"
    many = check.get("among_many")
    if many is not None and not (isinstance(many, dict) and isinstance(many.get("runs"), int)
                                 and not isinstance(many["runs"], bool) and many["runs"] >= 2
                                 and _finite(many.get("threshold")) and 0 < many["threshold"] <= check["threshold"]):
        return "among_many needs runs (2 or more) and a threshold above 0 and no higher than the check's own"
    return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


@functools.lru_cache(maxsize=4)
def _upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    """np.triu_indices(n), made once: the check asks for it on every line."""
    return np.triu_indices(n)


def line_check_prob(features: np.ndarray, check: dict) -> float:
    """The learned line check's probability that a followed line is a B-line."""
    return float(line_check_probs([features], check)[0])


def line_check_probs(features: np.ndarray, check: dict) -> np.ndarray:
    """line_check_prob for each row of (lines, LINE_FEATURES)."""
    if tuple(check["features"]) != LINE_FEATURES:
        raise ValueError("the bundle's line check was fitted on other line features than this kit measures")
    z = (np.asarray(features, float) - np.asarray(check["mean"])) / np.asarray(check["scale"])
    i, j = _upper(z.shape[1])
    quad = np.concatenate([z, z[:, i] * z[:, j]], axis=1)
    weights = np.asarray(check["weights"])
    # one dot product per line, as for a line alone (a matrix product may sum in another order)
    return np.array([float(sigmoid(q @ weights + float(check["bias"]))) for q in quad])


def _verdict(above: np.ndarray, near: float, deep: float) -> str:
    """What a bright vertical stripe is not, by its contrast above the pleura (`above`), just
    below it (`near`) and at the bottom (`deep`): "" when it may be a B-line."""
    if len(above) >= 4 and float(np.median(above)) > max(ABOVE_MIN, ABOVE_RATIO * near):
        return "starts above the pleural line (E-line or needle artefact)"
    if deep < FADE_RATIO * near:
        return "fades before the bottom of the image (Z-line or comet tail)"
    return ""


def _band_mimic(img: np.ndarray, lo: int, hi: int, prow: int) -> str:
    """bline_mimic for a band wider than a line's background bands (confluent lines): the
    band's brightness over the background either side of it, row by row."""
    h, w = img.shape
    inner = img[:, lo:hi]
    outer = np.concatenate([img[:, max(0, lo - BAND_SIDE):max(0, lo - 2)], img[:, min(w, hi + 2):min(w, hi + BAND_SIDE)]], 1)
    inner = np.where(inner < IN_VIEW, np.nan, inner)
    outer = np.where(outer < IN_VIEW, np.nan, outer)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows outside the field of view: all nan
        con = np.nanmean(inner, 1) - np.nanmedian(outer, 1) if outer.shape[1] else np.nanmean(inner, 1)
    below = con[min(h - 1, prow + 3):]
    below = below[~np.isnan(below)]
    if len(below) < 8:
        return ""
    q = max(2, len(below) // 4)
    near, deep = float(np.median(below[:q])), float(np.median(below[-q:]))
    if near < MIN_CONTRAST:
        return "no bright band below the pleura"
    above = con[wall_rows(prow)]
    return _verdict(above[~np.isnan(above)], near, deep)


def view_width(img: np.ndarray, row: int) -> int:
    """Pixels from the first to the last one in the field of view on this row (the image's
    width when the row shows nothing)."""
    shown = np.flatnonzero(img[min(img.shape[0] - 1, max(0, row))] > IN_VIEW)
    return int(shown[-1] - shown[0] + 1) if len(shown) else img.shape[1]


def confluent_bins(bins: int, img: np.ndarray, prow: int) -> int:
    """The narrowest confluent band, in column bins of a model with this many bins (the
    pleura at pixel row prow)."""
    return max(3, int(round(CONFLUENT_SHARE * view_width(img, prow + 3) * bins / img.shape[1])))


def confluent_band_problem(img: np.ndarray, lo: int, hi: int, prow: int) -> str:
    """Why pixels [lo, hi) are not one band of confluent B-lines from the pleura ("" when they
    are): not brighter than the lung beside it just under the pleura, not evenly
    bright there, or as bright over the chest wall above the pleura (a sheet of subcutaneous
    air or a wide artefact from the probe)."""
    w = img.shape[1]
    under = img[prow + 3:prow + 3 + EVEN_ROWS]  # under the pleural line's own echo
    if len(under) < EVEN_ROWS // 2:
        return "too little image below the pleura to judge"
    inside = np.zeros(w, bool)
    inside[lo:hi] = True
    rest = under[:, ~inside]
    rest = rest[rest > IN_VIEW]
    # against the rest's darker quarter: the lung beside the band (another bright artefact may lie there too)
    contrast = float(under[:, inside].mean()) - float(np.percentile(rest, 25)) if len(rest) else 1.0
    if contrast < MIN_CONTRAST:
        return "no bright band below the pleura"
    trim = int(round(EVEN_TRIM * (hi - lo)))
    cols = under[:, lo + trim:hi - trim].mean(axis=0)
    if len(cols) >= 3 and float(np.percentile(cols, 10)) < CONFLUENT_EVEN * _median(cols):
        return "separate lines with dark gaps between them, not one band"
    above = []  # over the chest wall: the band against the wall beside it, row by row
    for row in img[int(ABOVE_BAND[0] * prow):int(ABOVE_BAND[1] * prow)]:
        shown = row > IN_VIEW
        beside = row[~inside & shown]
        if len(beside) > 4 and shown[lo:hi].any():
            above.append(float(row[lo:hi][shown[lo:hi]].mean()) - _median(beside))
    if len(above) >= 4 and _median(above) > max(BAND_ABOVE, BAND_ABOVE_RATIO * contrast):
        return "starts above the pleural line (E-line or needle artefact)"
    return ""


def confluent(col_prob: np.ndarray, img: np.ndarray, pleura_row: float) -> tuple[int, int] | None:
    """Lines merged over a wide sector: the first run of evidence >= CONFLUENT_FLOOR over at
    least CONFLUENT_SHARE of the field of view at the pleura that is one band of B-lines by
    the image (`confluent_band_problem`); None when there is none. Columns in bins of col_prob."""
    bins = col_prob.shape[0]
    prow = int(round(pleura_row))
    for a, b in runs(np.asarray(col_prob) >= CONFLUENT_FLOOR, confluent_bins(bins, img, prow)):
        lo, hi = run_pixels((a * img.shape[1] / bins, b * img.shape[1] / bins), img.shape[1])
        if not confluent_band_problem(img, lo, hi, prow):
            return a, b
    return None


# Close B-lines: on a convex probe's narrow sector, lines a few pixels apart at the pleura
# fall in one of the model's column bins, or in two without a dip between them, and are
# scored as one line. They fan out below the pleura: a few rows down the track, two lines
# are two peaks of brightness across it.
FAN_DEPTH = 8  # rows below the start of a line's track where it is looked across
FAN_ROWS = 6  # ... over this many rows (the profile across the track, averaged along it)
FAN_HALF = 6  # pixels either side of the track (never past half way to the next line's track)
FAN_DIP = 0.1  # two peaks are two lines when the profile between them dips this far below the lower


def fan_lines(img: np.ndarray, followed) -> list[int]:
    """How many lines each of a frame's accepted line-wide runs holds (at least one):
    `followed` are their `_follow_lines` results, left to right (None: not followed; one)."""
    return _fan_frames(img[None], [followed])[0]


def _fan_frames(imgs: np.ndarray, followed) -> list[list[int]]:
    """`fan_lines` for each frame of a stack (followed: each frame's), looked across at once."""
    w = imgs.shape[2]
    # the tracks long enough to look across, from FAN_DEPTH rows down
    seen = [(k, i) for k, frame in enumerate(followed) for i, f in enumerate(frame)
            if f is not None and len(f[1]) >= FAN_DEPTH + FAN_ROWS]
    out = [[1] * len(frame) for frame in followed]
    if not seen:
        return out
    tracks = np.stack([followed[k][i][1][FAN_DEPTH:FAN_DEPTH + FAN_ROWS, :2] for k, i in seen]).astype(int)
    frames = np.array([k for k, _ in seen])
    gaps = (tracks[None, :, 0, 1] - tracks[:, None, 0, 1]) / 2  # half way to each other track
    order = np.arange(len(seen))
    same = frames[:, None] == frames[None, :]  # ... of its own frame, to its left and to its right
    lows = np.where(same & (order[None, :] < order[:, None]), gaps, -FAN_HALF).max(axis=1)  # (its own column: the
    highs = np.where(same & (order[None, :] > order[:, None]), gaps, FAN_HALF).min(axis=1)  # bound, when no other)
    inside = (tracks[:, :, 1].min(axis=1) >= FAN_HALF) & (tracks[:, :, 1].max(axis=1) + FAN_HALF < w)
    offsets = np.arange(-FAN_HALF, FAN_HALF + 1)
    looked = np.flatnonzero(inside)  # the others lie too near the image's edge to look across
    # the profile across each track, averaged along it
    across = _gather(imgs, frames[looked, None, None], tracks[looked, :, :1], tracks[looked, :, 1:] + offsets).mean(axis=1)
    for t, profile in zip(looked.tolist(), across):
        k, i = seen[t]
        out[k][i] = max(1, sum(1 for j in _peaks(profile, FAN_DIP) if lows[t] < j - FAN_HALF < highs[t]))
    return out


def _peaks(profile: np.ndarray, dip: float) -> list[int]:
    """The local maxima of a profile that stand apart: a peak joins the one before it (the
    higher of the two stays) unless the profile between them dips `dip` below the lower."""
    v = profile.tolist()
    kept: list[int] = []
    for i in range(1, len(v) - 1):
        if not (v[i] > v[i - 1] and v[i] >= v[i + 1]):
            continue
        if kept and min(v[kept[-1]:i + 1]) > min(v[kept[-1]], v[i]) - dip:
            if v[i] > v[kept[-1]]:
                kept[-1] = i
        else:
            kept.append(i)
    return kept


# --------------------------------------------------------------------- finding scores
# A finding's probability comes from one score per frame, a logit that is >= 0 exactly when
# the frame shows the finding by the model's thresholds (the score and the call agree).
# Calibration maps the score to the probability the kit shows (Platt scaling:
# sigmoid(a * score + b), fitted on held-out simulated data; the bundle's signed
# `calibration` field). The thresholds were chosen for the call, not for even odds, so a
# frame just under the threshold may still have a probability above 50 %.

def logit(p, eps: float = 1e-6):
    p = np.clip(np.asarray(p, float), eps, 1 - eps)
    return np.log(p / (1 - p))


def lung_frame(col_prob: np.ndarray, pleura_logits: np.ndarray, img: np.ndarray, thresholds: dict) -> dict:
    """One frame of the lung model: accepted B-line runs ("runs"), how many lines each
    holds ("lines": close lines scored as one run are told apart where they fan out,
    `fan_lines`) and the frame's B-line count ("b_lines", their sum), mimics turned away
    (with why), the pleural row and the frame's pattern score (input pixels; columns in bins).

    The score is the logit of the k-th strongest B-line (k = pattern_min_blines): the
    accepted runs' peaks, once per line they hold (a confluent band, see `confluent`,
    stands for k lines), then any weaker bumps of evidence below the threshold."""
    return lung_frames(col_prob[None], pleura_logits[None], img[None], thresholds)[0]


def lung_frames(col_probs: np.ndarray, pleura_logits: np.ndarray, imgs: np.ndarray, thresholds: dict) -> list[dict]:
    """`lung_frame` of each frame of a stack ((frames, h, w); the model's outputs on them),
    the same results as one frame at a time: their lines are followed, measured and checked
    together, which costs a frame far less than on its own."""
    th = float(thresholds["bline"])
    k = int(thresholds.get("pattern_min_blines", 3))
    in_h, in_w = imgs.shape[1:]
    found = [count_blines(col_prob, th, dip=SPLIT_DIP)[1] for col_prob in col_probs]
    prows = pleura_rows(pleura_logits, in_h)
    to_px = in_w / col_probs.shape[1]
    judged = _judged_frames(imgs, [[(a * to_px, b * to_px) for a, b in f] for f in found], prows, None,
                            thresholds.get("line_check"),
                            [[float(p[a:b].max()) for a, b in f] for p, f in zip(col_probs, found)],
                            [len(f) for f in found])
    # close lines the model scored as one run are told apart where they fan out (a band
    # wider than a line counts as one here: confluent lines are judged below)
    in_runs = _fan_frames(imgs, [[f for f, y in zip(followed, why) if not y] for why, followed in judged])
    out, kth = [], []
    for col_prob, img, frame_found, prow, (why, _), in_run in zip(col_probs, imgs, found, prows, judged, in_runs):
        accepted = [r for r, y in zip(frame_found, why) if not y]
        band = confluent(col_prob, img, prow)
        # a confluent band stands for k lines: it is a pattern by itself
        peaks = [float(col_prob[a:b].max()) for (a, b), n in zip(accepted, in_run) for _ in range(n)]
        if band:
            peaks += [max(th, float(col_prob[band[0]:band[1]].max()))] * k
        peaks.sort(reverse=True)
        weak = col_prob.copy()
        for a, b in frame_found:
            weak[a:b] = 0  # the strong runs are counted above (or turned away as mimics)
        bumps = sorted((float(weak[a:b].max()) for a, b in runs(weak >= 0.02)), reverse=True)
        kth.append((peaks + [min(v, th - 1e-6) for v in bumps] + [0.0] * k)[k - 1])
        out.append({"runs": accepted, "lines": in_run, "b_lines": sum(in_run),
                    "mimics": [(r, y) for r, y in zip(frame_found, why) if y], "pleura_row": prow,
                    "confluent": band is not None})
    for frame, score in zip(out, (logit(kth) - logit(th)).tolist()):
        frame["score"] = score
    return out


def fluid_score(fluid_logits: np.ndarray, thresholds: dict) -> float:
    """A frame's free-fluid score: the logit of its min_area_px-th most likely fluid pixel
    (>= 0 exactly when at least min_area_px pixels pass the pixel threshold)."""
    v = np.sort(np.ravel(fluid_logits))[::-1]
    k = max(1, int(thresholds["min_area_px"]))
    return float(v[min(k, v.size) - 1] - logit(float(thresholds["pixel"])))


def clip_score(scores, share: float) -> tuple[float, int]:
    """(score, index of its frame): the score at the given upper share of frames, e.g. 0.3:
    the frame that 30 % of the clip's frames reach or exceed (robust to one noisy frame)."""
    s = np.asarray(scores, float)
    order = np.argsort(-s, kind="stable")
    i = int(order[max(1, int(np.ceil(share * len(s)))) - 1])
    return float(s[i]), i


def view_calibrated(p: np.ndarray, calibration: dict | None) -> np.ndarray:
    """The gate's class probabilities as shown: with a fitted temperature t in the bundle's
    `calibration`, softmax(logits / t), formed from the probabilities themselves (p ** (1/t),
    renormalised: the same thing); unchanged without one. The gate decides on its own
    probabilities (its min_prob was chosen on them); only what is shown is rescaled."""
    if not calibration or calibration.get("method") != "temperature":
        return p
    q = np.power(np.clip(np.asarray(p, float), 1e-12, 1.0), 1.0 / float(calibration["t"]))
    return q / q.sum(axis=-1, keepdims=True)


def calibration_problem(calibration) -> str | None:
    """What is wrong with a bundle's `calibration` (None: the kit can use it or there is none)."""
    if calibration is None:
        return None
    if not isinstance(calibration, dict):
        return "is not an object"
    method = calibration.get("method")
    if method == "temperature" and not (_finite(calibration.get("t")) and calibration["t"] > 0):
        return "needs a positive finite temperature t"
    if method == "platt" and not (_finite(calibration.get("a")) and _finite(calibration.get("b"))):
        return "needs finite a and b"
    if method not in ("none", "platt", "temperature"):
        return f"method {str(method)[:40]!r} is not none, platt or temperature"
    return None


def calibrated(score: float, calibration: dict | None) -> float | None:
    """The probability of the finding from its score; None without a fitted calibration
    (Platt scaling: a gate's temperature is no finding's calibration)."""
    if not calibration or calibration.get("method", "platt") != "platt":
        return None
    return float(sigmoid(np.asarray(calibration["a"] * score + calibration["b"], float)))


# --------------------------------------------------------------------- lung sliding
# With the lung sliding, the pleural line and the lung just below it change from frame to
# frame (its granular texture shifts, its speckle shimmers) while the chest wall above stays
# still: the cine's version of the M-mode seashore sign. Without sliding (air between the
# pleurae: a pneumothorax cannot be excluded) the band below changes no more than the band
# above, which only electronic noise changes. When the band above changes too, the probe
# moved and nothing can be said. Rows in model-input pixels; thresholds chosen on simulated
# clips of one seed and measured on another (models/train/sliding.py).
SLIDING_MIN_FRAMES = 4  # fewer lung frames than this: too little motion to judge
SLIDING_GAP = 3  # rows between the pleural row and the chest-wall band (the line's own blur)
SLIDING_ABOVE = 12  # rows of chest wall looked at above the pleura
SLIDING_BELOW = (-2, 6)  # rows around and just below the pleural row that move with the lung
PLEURA_MIN_CONF = 0.9  # the lung model's pleural-row probability within one bin of its peak
PLEURA_SPREAD = 6.0  # the model's pleural rows spread more than this (IQR): it is not one line
PLEURA_VISIBLE = 1.15  # a column shows the pleura when it is this much brighter than the wall above
PLEURA_MIN_SHARE = 0.05  # share of the width in view that must show it (not all rib shadow)
SLIDING_MOVED = 0.1  # the chest wall changes by more than this share of its brightness: probe moved
CHANGE_FLOOR = 0.5 / 255  # frame-to-frame change (0-1 scale) below which a band is still
SLIDING_PRESENT = 0.47  # score (log ratio of change below to above) at and over which it slides
SLIDING_ABSENT = 0.34  # ... under which nothing slides; between the two the kit cannot tell
POINT_SIDE = 0.25  # a lung point: sliding on one side of a line, none on the other, each side
# at least this share of the columns where the pleura shows ...
POINT_STILL = 0.23  # ... and the still side's score under this while the other's is "present"
M_MODE_SMOOTH = 5  # columns averaged when choosing where the page's M-mode strip is taken
M_MODE_MIDDLE = 60  # ... from the middle this percentage of the columns in view


def pleura_confidence(row_logits: np.ndarray) -> float:
    """How sure the lung model is of the pleural row: its probability within one row bin of
    the most likely one (a line seen gives a sharp peak; no line, a spread)."""
    return float(pleura_confidences(np.asarray(row_logits)[None])[0])


def pleura_confidences(row_logits: np.ndarray) -> np.ndarray:
    """`pleura_confidence` of each frame's logits ((frames, bins)), taken at once: the three
    bins summed left to right, a bin beyond either end counted as 0 (the same sum)."""
    p = softmax(np.asarray(row_logits, float))
    a = np.argmax(p, axis=1)
    padded = np.pad(p, ((0, 0), (1, 1)))
    i = np.arange(len(p))
    return padded[i, a] + padded[i, a + 1] + padded[i, a + 2]


def lung_sliding(frames: np.ndarray, pleura_logits: np.ndarray, frame_numbers) -> dict:
    """Lung sliding over a clip's lung frames: {"status": present | absent | not
    assessable, "reason" (words), "reason_code" (single_frame, too_few_frames, no_pleura,
    probe_moved, partial: sliding on one side of a line only, uncertain; "" when judged),
    "score" (log ratio of the frame-to-frame change in the band at and just below the
    pleura to that in the chest wall above: >= SLIDING_PRESENT slides, < SLIDING_ABSENT
    does not), "sides" (the scores of the two sides of the width's most different split),
    "chest_wall_change" (its change over its brightness), "frames" (1-based, the frames
    used), "pleura_row" (input pixels), "columns" (input pixels: where an M-mode line sees
    sliding best where the pleura shows; one per side of the split for "partial", none when
    no pleura shows)}.

    frames: (N, H, W) float as the lung model saw them (0-1); pleura_logits: (N, bins) the
    lung model's pleural-row logits for them."""
    frames = np.asarray(frames, np.float32)
    out = {"frames": [int(f) for f in frame_numbers], "score": None, "pleura_row": None, "columns": []}

    def abstain(code: str, reason: str) -> dict:
        return out | {"status": "not assessable", "reason_code": code, "reason": reason}

    n = len(frames)
    if n < 2:
        return abstain("single_frame", "a single frame: lung sliding needs motion (a cine)")
    if n < SLIDING_MIN_FRAMES:
        return abstain("too_few_frames", f"{n} lung frames: at least {SLIDING_MIN_FRAMES} are needed "
                                         "to judge lung sliding")
    h = frames.shape[1]
    rows = np.array(pleura_rows(pleura_logits, h))
    conf = float(np.median(pleura_confidences(pleura_logits)))
    q1, q3 = np.percentile(rows, [25, 75])
    prow = int(round(float(np.median(rows))))
    out["pleura_row"] = prow
    if conf < PLEURA_MIN_CONF or q3 - q1 > PLEURA_SPREAD or prow - SLIDING_GAP - 4 < 0 \
            or prow + SLIDING_BELOW[1] > h:
        return abstain("no_pleura", "no clear pleural line found")
    # only the rows of the chest-wall band and of the band at the pleura are looked at
    # (one block of rows: the first starts above the second)
    top = max(0, prow - SLIDING_GAP - SLIDING_ABOVE)
    frames = frames[:, top:prow + SLIDING_BELOW[1]]
    above = slice(0, prow - SLIDING_GAP - top)
    below = slice(prow + SLIDING_BELOW[0] - top, prow + SLIDING_BELOW[1] - top)
    mean = frames.mean(0)
    wall = mean[above].mean(0)
    in_view = wall > IN_VIEW
    visible = in_view & (mean[below].max(0) > PLEURA_VISIBLE * wall)  # columns not under a rib
    if visible.sum() < PLEURA_MIN_SHARE * max(1, in_view.sum()):
        return abstain("no_pleura", "no pleural line seen where the model places it (rib shadows, or no image)")
    change = np.abs(np.diff(frames, axis=0)).mean(0)
    lung_cols, wall_cols = change[below].mean(0), change[above].mean(0)
    # an M-mode line where the whole chest-wall band is in view and in the middle of the view,
    # where the model's one row is the pleura's (a convex probe's pleura is an arc, higher at
    # the sides); when no such column shows the pleura, any that does
    cols = np.flatnonzero(in_view)
    lo, hi = np.percentile(cols, [50 - M_MODE_MIDDLE / 2, 50 + M_MODE_MIDDLE / 2])
    good = (mean[above].min(0) > IN_VIEW) & (np.arange(len(in_view)) >= lo) & (np.arange(len(in_view)) <= hi)

    def m_mode_at(where: np.ndarray) -> int:
        return m_mode_column(lung_cols, wall_cols, where & good if (where & good).any() else where)
    out["columns"] = [m_mode_at(visible)]
    wall_change = float(change[above][:, visible].mean())
    moved = wall_change / max(float(wall[visible].mean()), 1e-6)
    out["chest_wall_change"] = round(moved, 4)
    if moved > SLIDING_MOVED:
        return abstain("probe_moved", "the probe moved: the chest wall changes between frames")
    lung_change = float(change[below][:, visible].mean())
    # the floor (half a grey level) keeps two still, noiseless bands at a ratio of about 1
    score = float(np.log((lung_change + CHANGE_FLOOR) / (wall_change + CHANGE_FLOOR)))
    out["score"] = round(score, 3)
    out["sides"], split = _split_scores(change[below][:, visible].mean(0), change[above][:, visible].mean(0))
    if score >= SLIDING_ABSENT and out["sides"] and min(out["sides"]) < POINT_STILL \
            and max(out["sides"]) >= SLIDING_PRESENT:
        # sliding on one side of a line only: the edge of a pneumothorax (a lung point)
        # may lie here, so the clip must not read "present"; an M-mode line on each side
        line = int(np.flatnonzero(visible)[split])  # the first column right of the split
        left = visible & (np.arange(len(visible)) < line)
        out["columns"] = [m_mode_at(side) for side in (left, visible & ~left)]
        return abstain("partial", "the lung slides in part of the view only (a lung point?): "
                                  "pneumothorax not excluded")
    if score >= SLIDING_PRESENT:
        return out | {"status": "present", "reason_code": "", "reason":
                      "the pleural line and the lung below it move between frames, the chest wall does not"}
    if score >= SLIDING_ABSENT:
        return abstain("uncertain", "the lung below the pleural line moves a little more than the chest wall: "
                                    "too little to tell whether it slides")
    return out | {"status": "absent", "reason_code": "", "reason":
                  "nothing below the pleural line moves more than the still chest wall above it"}


def m_mode_column(lung: np.ndarray, wall: np.ndarray, where: np.ndarray) -> int:
    """Of the columns `where` the pleura shows, the one whose band at the pleura changes most
    over the chest wall above it (per column frame-to-frame change `lung`, `wall`; averaged
    over M_MODE_SMOOTH neighbours, so a lone noisy column does not win): where an M-mode
    line sees sliding best, so a barcode there means none slides where the pleura shows.
    (Rib caps pass the brightness test for the pleura; they never slide.)"""
    k = np.ones(M_MODE_SMOOTH) / M_MODE_SMOOTH
    # the floor (half a grey level), as for the score: a still, noiseless wall is no sliding
    ratio = (np.convolve(lung, k, "same") + CHANGE_FLOOR) / (np.convolve(wall, k, "same") + CHANGE_FLOOR)
    return int(np.argmax(np.where(where, ratio, -np.inf)))


def _split_scores(lung: np.ndarray, wall: np.ndarray) -> tuple[list[float], int]:
    """The two sides' scores where the width splits into the most different halves (each
    at least POINT_SIDE of the columns), and the number of columns left of that split:
    per column frame-to-frame change at the pleura (`lung`) and in the chest wall (`wall`)."""
    n = len(lung)
    lo = max(1, int(np.ceil(POINT_SIDE * n)))
    if n - lo < lo:
        return [], 0
    cl, cw = np.cumsum(lung), np.cumsum(wall)
    k = np.arange(lo, n - lo + 1)
    left = np.log((cl[k - 1] / k + CHANGE_FLOOR) / (cw[k - 1] / k + CHANGE_FLOOR))
    right = np.log(((cl[-1] - cl[k - 1]) / (n - k) + CHANGE_FLOOR) / ((cw[-1] - cw[k - 1]) / (n - k) + CHANGE_FLOOR))
    i = int(np.argmax(np.abs(left - right)))
    return [round(float(left[i]), 3), round(float(right[i]), 3)], int(k[i])
