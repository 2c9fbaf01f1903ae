"""The lung bundle's learned line check (`postprocess.line_check_prob`, fitted by
models/train/linecheck.py): what it measures on a line, that it decides for a line-wide run
when the bundle carries it (the rules still give the reason in words), that the kit and the
fitting script expand the measurements alike, and that a check fitted on other
measurements is refused."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from fieldkit.inference import postprocess as post

H, W = 100, 64
PLEURA = 40.0
COLS = (30.0, 33.0)
E_LINE = "starts above the pleural line (E-line or needle artefact)"


def frame(line_from: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = 0.2 + 0.01 * rng.standard_normal((H, W))
    img[38:42, :] = 0.8  # the pleural line
    if line_from is not None:
        img[line_from:, 30:33] = np.maximum(img[line_from:, 30:33], 0.7)
    return img


def constant_check(bias: float, threshold: float = 0.5) -> dict:
    """A check that says the same of every line: a B-line (bias > 0) or not."""
    n = len(post.LINE_FEATURES)
    return {"features": list(post.LINE_FEATURES), "mean": [0.0] * n, "scale": [1.0] * n,
            "weights": [0.0] * (n + n * (n + 1) // 2), "bias": bias, "threshold": threshold}


def peak_check() -> dict:
    """A check that hears only the model's peak: a B-line when it is within 0.1 of 1.0
    (logit 1 - ((peak - 1) / 0.1)^2)."""
    n = len(post.LINE_FEATURES)
    k = post.LINE_FEATURES.index("peak")
    check = constant_check(1.0)
    check["mean"][k], check["scale"][k] = 1.0, 0.1
    square = [(i, j) for i in range(n) for j in range(i, n)].index((k, k))  # its product with itself
    check["weights"][n + square] = -1.0
    return check


def features(img: np.ndarray) -> dict:
    maps = post.LineMaps(img)
    followed = post._follow(img, 30, 33, int(PLEURA), maps)
    return dict(zip(post.LINE_FEATURES, post.line_features(img, maps, int(PLEURA), 30, 33, 0.9, followed)))


def test_the_measurements_tell_a_line_from_the_pleura_from_one_through_the_chest_wall():
    b_line, e_line = features(frame(line_from=42)), features(frame(line_from=0))
    assert len(b_line) == len(post.LINE_FEATURES)
    for window in ("above_0.6_0.75", "above_0.75_0.9", "above_0.0_0.2"):
        assert abs(b_line[f"{window}_median"]) < 0.02 and b_line[f"{window}_bright"] == 0.0
        assert e_line[f"{window}_median"] > 0.3 and e_line[f"{window}_bright"] == 1.0
    assert b_line["near"] == pytest.approx(0.5, abs=0.03) and b_line["deep"] == pytest.approx(0.5, abs=0.03)
    assert b_line["width"] == 3 and b_line["pleura_depth"] == pytest.approx(0.4) and b_line["peak"] == 0.9
    # the pleura stands out above a B-line (which starts at it), not on an E-line running through it
    assert b_line["pleura_over_above"] > 0.5 > 0.3 > e_line["pleura_over_above"]


def test_the_chest_wall_averaged_along_a_line_shows_a_line_through_it_and_not_one_from_the_pleura():
    """The chest wall's profile across the track, averaged along it: a faint line running
    through the wall stands out by what it adds; a line from the pleura leaves it flat, and
    so does a wall that is black (out of view) where the track runs."""
    img = np.full((H, W), 0.3)
    img[38:42, :] = 0.8  # the pleural line
    b_line, e_line, dark = img.copy(), img.copy(), img.copy()
    b_line[42:, 30:33] += 0.4
    e_line[:, 30:33] += 0.04
    dark[:, 30:33] += 0.4
    dark[:36, 27:36] = 0.0  # the wall around the line out of view
    assert features(e_line)["above_profile"] == pytest.approx(0.04)
    assert features(b_line)["above_profile"] == pytest.approx(0.0)
    assert features(dark)["above_profile"] == 0.0


def _wall_with_a_line(h: int = 12, w: int = 40, col: int = 20) -> np.ndarray:
    """A chest wall of 0.3 with a line of 0.4 on `col` (its contrast 0.1), all in view."""
    img = np.full((h, w), 0.3)
    img[:, col] = 0.4
    return img


def test_the_averaged_wall_reads_the_line_within_a_pixel_of_its_track_against_its_sides():
    rows, cols = np.arange(2, 8), np.full((1, 12), 20)
    img = _wall_with_a_line()
    assert post._profile_contrast(img, rows, cols) == pytest.approx([0.1])
    img[:, 22] = 0.9  # two pixels off the track: neither the line nor its background
    img[:, 23] = 0.9
    assert post._profile_contrast(img, rows, cols) == pytest.approx([0.1])
    img[:, 21] = 0.6  # a pixel off: the line's peak
    assert post._profile_contrast(img, rows, cols) == pytest.approx([0.3])
    assert post._profile_contrast(img, rows[:2], cols) == pytest.approx([0.3])  # two rows are enough
    assert post._profile_contrast(img, rows[:1], cols) == [0.0]  # one is not


def test_the_averaged_wall_needs_the_track_in_view_on_two_rows_and_three_columns_beside_it():
    """Out of view is at or under IN_VIEW; the rows where the track itself is out of view
    are left out, and so is a line with too little in view to judge (0, no warning)."""
    rows, cols = np.arange(0, 6), np.full((1, 12), 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # columns no row shows must not warn
        img = _wall_with_a_line()
        img[1:6, 20] = post.IN_VIEW  # the track in view on row 0 only
        assert post._profile_contrast(img, rows, cols) == [0.0]
        img[1, 20] = 0.4  # ... and on row 1
        assert post._profile_contrast(img, rows, cols) == pytest.approx([0.1])
        sides = _wall_with_a_line()
        sides[:, :24] = post.IN_VIEW  # left of the track and the track's own columns dark...
        sides[:, 20] = 0.4  # ... but the track
        sides[:, 27:] = 0.0  # right: only offsets 4, 5 and 6 in view
        assert post._profile_contrast(sides, rows, cols) == pytest.approx([0.1])
        sides[:, 26] = 0.0  # two columns beside it: too few
        assert post._profile_contrast(sides, rows, cols) == [0.0]
        # each line is judged on its own columns, not on what the frame's other lines show
        both = post._profile_contrast(np.hstack([sides, _wall_with_a_line()]), rows,
                                      np.stack([np.full(12, 20), np.full(12, 60)]))
        assert both == pytest.approx([0.0, 0.1])


def test_a_check_that_accepts_keeps_what_the_rules_alone_turn_away():
    e_line = frame(line_from=0)
    assert post.bline_mimic(e_line, COLS, PLEURA) == E_LINE
    assert post.bline_mimic(e_line, COLS, PLEURA, check=constant_check(10.0)) == ""


def test_a_check_that_rejects_gives_the_rules_reason_or_says_it_is_not_shaped_like_a_b_line():
    assert post.bline_mimic(frame(line_from=0), COLS, PLEURA, check=constant_check(-10.0)) == E_LINE
    assert post.bline_mimic(frame(line_from=42), COLS, PLEURA) == ""
    assert post.bline_mimic(frame(line_from=42), COLS, PLEURA, check=constant_check(-10.0)) == post.NOT_SHAPED


def test_the_threshold_is_where_the_check_decides():
    b_line = frame(line_from=42)
    p = post.line_check_prob(np.zeros(len(post.LINE_FEATURES)), constant_check(0.4))  # sigmoid(0.4) = 0.599
    assert p == pytest.approx(0.5987, abs=1e-4)
    assert post.bline_mimic(b_line, COLS, PLEURA, check=constant_check(0.4, threshold=0.59)) == ""
    assert post.bline_mimic(b_line, COLS, PLEURA, check=constant_check(0.4, threshold=0.61)) == post.NOT_SHAPED


def test_the_check_hears_the_models_peak_and_a_run_without_one_is_one_the_model_is_sure_of():
    b_line = frame(line_from=42)
    assert post.bline_mimic(b_line, COLS, PLEURA, check=peak_check(), peak=0.95) == ""
    assert post.bline_mimic(b_line, COLS, PLEURA, check=peak_check(), peak=0.75) == post.NOT_SHAPED
    assert post.bline_mimic(b_line, COLS, PLEURA, check=peak_check()) == ""  # peak 1.0


def three_lines() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, column probabilities, pleural-row logits): three lines from the pleura, in bins
    5, 15 and 25 of 32, the model's peaks 0.95, 0.75 and 0.97; the pleura at row 39."""
    img = frame()
    for c in (10, 30, 50):
        img[42:, c:c + 3] = 0.7
    prob = np.zeros(32)
    prob[5], prob[15], prob[25] = 0.95, 0.75, 0.97
    return img, prob, np.eye(32)[12] * 10


def test_a_frame_is_judged_by_the_bundles_check_with_each_runs_own_peak():
    img, prob, pleura = three_lines()
    rules_only = post.lung_frame(prob, pleura, img, {"bline": 0.5})
    assert rules_only["runs"] == [(5, 6), (15, 16), (25, 26)]
    checked = post.lung_frame(prob, pleura, img, {"bline": 0.5, "line_check": peak_check()})
    assert checked["runs"] == [(5, 6), (25, 26)] and checked["mimics"] == [((15, 16), post.NOT_SHAPED)]


def test_in_a_frame_of_many_runs_a_borderline_line_is_kept_at_the_lower_threshold():
    """The same three lines: the middle one's check probability (peak 0.75: 0.0052) is under
    the check's threshold but over its threshold among many, which holds from 3 runs."""
    img, prob, pleura = three_lines()
    check = peak_check() | {"among_many": {"runs": 3, "threshold": 0.005}}
    assert post.line_check_problem(check) is None
    among_three = post.lung_frame(prob, pleura, img, {"bline": 0.5, "line_check": check})
    assert among_three["runs"] == [(5, 6), (15, 16), (25, 26)] and among_three["mimics"] == []
    check["among_many"]["runs"] = 4  # three runs are not many enough
    assert post.lung_frame(prob, pleura, img, {"bline": 0.5, "line_check": check})["runs"] == [(5, 6), (25, 26)]
    check["among_many"] = {"runs": 3, "threshold": 0.006}  # over the middle line's probability
    assert post.lung_frame(prob, pleura, img, {"bline": 0.5, "line_check": check})["runs"] == [(5, 6), (25, 26)]


def test_a_threshold_among_two_runs_or_as_high_as_the_checks_own_is_usable():
    check = constant_check(0.0, threshold=0.6)
    for many in ({"runs": 2, "threshold": 0.5}, {"runs": 3, "threshold": 0.6}):
        assert post.line_check_problem(check | {"among_many": many}) is None
    assert post.line_check_problem(check | {"among_many": {"runs": 3, "threshold": 0.7}}) == \
        "among_many needs runs (2 or more) and a threshold above 0 and no higher than the check's own"


def test_the_threshold_among_many_holds_from_its_number_of_runs():
    check = {"threshold": 0.9, "among_many": {"runs": 3, "threshold": 0.5}}
    assert [post.check_threshold(check, n) for n in (1, 2, 3, 4, 9)] == [0.9, 0.9, 0.5, 0.5, 0.5]
    assert post.check_threshold({"threshold": 0.9}, 9) == 0.9  # a check without one: the same for all
    line = frame(line_from=42)
    check = constant_check(0.0, threshold=0.6) | {"among_many": {"runs": 2, "threshold": 0.5}}  # probability 0.5
    assert post.bline_mimic(line, COLS, PLEURA, check=check) == post.NOT_SHAPED  # one run in the frame
    assert post.bline_mimic(line, COLS, PLEURA, check=check, among=2) == ""


def test_a_band_and_a_line_with_too_little_image_below_are_not_the_checks_to_judge():
    assert post.bline_mimic(frame(line_from=42), (28.0, 40.0), PLEURA, check=constant_check(-10.0)) != post.NOT_SHAPED
    assert post.bline_mimic(frame(line_from=0), COLS, H - 6.0, check=constant_check(-10.0)) == ""


def test_a_check_fitted_on_other_measurements_is_refused():
    check = constant_check(1.0)
    check["features"] = check["features"][:-1] + ["something else"]
    with pytest.raises(ValueError, match="^the bundle's line check was fitted on other line features than this kit measures$"):
        post.line_check_prob(np.zeros(len(post.LINE_FEATURES)), check)
    with pytest.raises(ValueError):
        post.bline_mimic(frame(line_from=42), COLS, PLEURA, check=check)


def test_the_fitted_check_learns_a_rule_of_products_and_the_kit_reads_it_as_fitted(evaluate):
    from fixtures.inference import load_train_module
    linecheck = load_train_module("linecheck")
    rng = np.random.default_rng(5)
    n = len(post.LINE_FEATURES)
    X = rng.standard_normal((8000, n)) * rng.uniform(0.1, 3, n) + rng.uniform(-1, 1, n)
    y = (X[:, 0] - X[:, 0].mean()) * (X[:, 4] - X[:, 4].mean()) > 0  # only a product tells them apart
    check = linecheck.fit(X[:6000], y[:6000])
    p = np.array([post.line_check_prob(f, check) for f in X[6000:]])
    assert np.mean((p >= 0.5) == y[6000:]) > 0.9
    check["threshold"] = linecheck.choose_threshold(check, X[6000:], y[6000:], keep=0.9)
    assert np.mean(p[y[6000:]] >= check["threshold"]) >= 0.9
    assert np.mean(p[y[6000:]] >= check["threshold"] + 0.01) < 0.9 or check["threshold"] == 0.99


@pytest.mark.parametrize("spoil, words", [
    (lambda c: c["features"].pop(), "other line features"),
    (lambda c: c["weights"].pop(), "weights must be 350 finite numbers"),
    (lambda c: c["mean"].__setitem__(0, float("nan")), "mean must be 25 finite numbers"),
    (lambda c: c["scale"].__setitem__(3, 0.0), "scale must be positive"),
    (lambda c: c.__setitem__("threshold", 1.5), "threshold between 0 and 1"),
    (lambda c: c.pop("bias"), "finite bias"),
    (lambda c: c.__setitem__("among_many", {"runs": 1, "threshold": 0.5}), "among_many needs runs (2 or more)"),
    (lambda c: c.__setitem__("among_many", {"runs": True, "threshold": 0.5}), "among_many needs runs"),
    (lambda c: c.__setitem__("among_many", {"runs": 3.0, "threshold": 0.5}), "among_many needs runs"),
    (lambda c: c.__setitem__("among_many", {"runs": 3, "threshold": c["threshold"] + 0.01}), "no higher than the check's own"),
    (lambda c: c.__setitem__("among_many", {"runs": 3, "threshold": 0.0}), "a threshold above 0"),
    (lambda c: c.__setitem__("among_many", {"runs": 3}), "among_many needs"),
    (lambda c: c.__setitem__("among_many", [3, 0.5]), "among_many needs"),
])
def test_a_bundle_whose_line_check_the_kit_cannot_use_is_refused_naming_it(model_copy, signing_key, spoil, words):
    """Signed by a trusted key, but the check would fail mid-analysis: refused at verification."""
    import json

    from fieldkit.inference import bundle as B
    key, config = signing_key
    path = model_copy / "lung_bline" / "manifest.json"
    entry = json.loads(path.read_text())
    spoil(entry["thresholds"]["line_check"])
    path.write_text(json.dumps(entry))
    B.sign_bundle(path.parent, key)
    trusted = B.trusted_keys(config["inference.trusted_keys"])
    bundle = B.verify_bundle(B.read_bundle(path.parent), trusted)
    assert not bundle.ok and "thresholds.line_check" in bundle.status and words in bundle.status
    assert post.line_check_problem(json.loads(path.read_text())["thresholds"]["line_check"])


def test_the_shipped_line_check_is_usable():
    import json

    from fieldkit.inference.registry import BUILTIN_DIR
    check = json.loads((BUILTIN_DIR / "lung_bline" / "manifest.json").read_text())["thresholds"]["line_check"]
    assert post.line_check_problem(check) is None
    assert post.line_check_problem([1, 2]) == "is not an object"


def test_the_shipped_check_keeps_nine_in_ten_true_lines_and_turns_mimics_away_on_fresh_frames(registry, evaluate):
    """The bundle's threshold was chosen to keep 90 % of true lines' runs (on the recipe's
    seed), and its threshold among many runs 99 % of those in frames of 3 runs or more; on
    a fresh seed they keep about as many, and turn away most E-line runs."""
    from fixtures.inference import load_train_module
    linecheck = load_train_module("linecheck")
    model = registry.get("lung")
    check = model.thresholds["line_check"]
    X, y, among = linecheck.line_runs(model.session, model.thresholds, linecheck.frames(730_000, 30, 0, 0))
    p = np.array([post.line_check_prob(f, check) for f in X])
    kept = p >= check["threshold"]
    print(f"true lines' runs kept: {kept[y].mean():.1%} of {y.sum()}")
    assert y.sum() > 500 and kept[y].mean() >= 0.86, f"true lines' runs kept: {kept[y].mean():.1%} of {y.sum()}"
    many = y & (among >= check["among_many"]["runs"])
    kept_among_many = np.mean(p[many] >= check["among_many"]["threshold"])
    print(f"... in frames of {check['among_many']['runs']} runs or more: {kept_among_many:.1%} of {many.sum()}")
    assert many.sum() > 400 and kept_among_many >= 0.97 and kept_among_many > kept[many].mean()
    rng = np.random.default_rng(730_001)
    sim = load_train_module("simulator")
    X, y, _ = linecheck.line_runs(model.session, model.thresholds,
                                  [sim.simulate_lung(rng, n_blines=0, mimic="e_line") for _ in range(240)])
    kept = np.array([post.line_check_prob(f, check) >= check["threshold"] for f in X])
    print(f"E-line runs kept: {kept.mean():.1%} of {len(X)}")
    assert len(X) > 40 and not y.any() and kept.mean() <= 0.25, f"E-line runs kept: {kept.mean():.1%} of {len(X)}"


def _oracle_features(img, maps, prow, lo, hi, peak, followed):
    """LINE_FEATURES written out row by row and pixel by pixel: an independent reading of
    what `line_features` says it measures, edges of the image included."""
    h, w = img.shape
    line, con = maps.line, maps.contrast
    start, below, slope = followed
    cb = [c for _, _, c in below]
    q = max(2, len(cb) // 4)
    out = [np.median(cb[:q]), np.median(cb[len(cb) - q:]), np.median(cb), min(cb), hi - lo, prow / h, slope]
    row0 = below[0][0]
    track = {}  # the line followed up through the chest wall, to 3 rows above the pleura
    for r in range(0, max(1, prow - 2)):
        c = min(w - 1, max(0, int(np.round(start + slope * (r - row0)))))
        track[r] = con[r, c]
    for a, b in post.ABOVE_WINDOWS:
        first = int(a * prow)
        last = max(first + 1, int(b * prow))
        vals = [track[r] for r in range(first, last) if r in track and not np.isnan(track[r])]
        out += [np.median(vals), np.mean([v > 0.03 for v in vals])] if vals else [0.0, 0.0]
    at = max(line[r, start] for r in range(max(0, prow - 2), min(h, prow + 3)))
    # over and under: 8 rows each, from 4 rows off the pleura; nothing when they do not all fit
    over = np.median([line[r, start] for r in range(max(0, prow - 12), prow - 4)]) if prow > 4 else 0.0
    under = np.median([line[r, start] for r in range(prow + 4, prow + 12)]) if prow + 12 < h else 0.0
    peaks = [max(img[r, c] for r in range(max(0, prow - 2), min(h, prow + 3))) for c in range(w)]
    shown = [v for v in peaks if v > post.IN_VIEW]
    out += [at - over, at - under, peaks[start] - np.median(shown) if shown else 0.0]
    first = int(0.3 * prow)
    rows = range(first, max(first + 1, prow - 4))  # the chest wall: one row at least
    wall = [img[r, c] for r in rows for c in range(w) if img[r, c] > post.IN_VIEW]
    beside = [img[r, c] for r in rows for c in range(max(0, start - 12), min(w, start + 13)) if img[r, c] > post.IN_VIEW]
    out += [np.median(beside) - np.median(wall) if beside and wall else 0.0, peak]
    # the chest wall just above the pleura averaged along the track, across it: the peak on
    # the line over the median beside it, over the rows where the track is in view
    def seen(r, c):
        return img[r, c] if 0 <= c < w and img[r, c] > post.IN_VIEW else np.nan
    rows = [r for r in range(int(post.ABOVE_FROM * prow), prow - post.ABOVE_GAP)
            if not np.isnan(seen(r, min(w - 1, max(0, int(np.round(start + slope * (r - row0)))))))]
    profile = {}
    for o in range(-post.SIDE[1], post.SIDE[1] + 1):
        vals = [seen(r, min(w - 1, max(0, int(np.round(start + slope * (r - row0))))) + o) for r in rows]
        vals = [v for v in vals if not np.isnan(v)]
        profile[o] = np.mean(vals) if vals else np.nan
    sides = [v for o, v in profile.items() if abs(o) >= post.SIDE[0] and not np.isnan(v)]
    on_line = [profile[o] for o in (-1, 0, 1) if not np.isnan(profile[o])]
    out += [max(on_line) - np.median(sides) if len(rows) >= 2 and len(sides) >= 3 else 0.0]
    return np.array(out, float)


@pytest.mark.parametrize("seed, prow, line_from, black_from", [(1, 40, 42, None), (2, 52, 10, 50), (3, 33, 0, 58)])
def test_the_measurements_are_what_they_say_row_by_row(seed, prow, line_from, black_from):
    """Textured frames (every band and window differs), a line from the pleura or through
    the chest wall, a slanted line, black outside the field of view on one side."""
    rng = np.random.default_rng(seed)
    h, w = 110, 80
    img = 0.15 + 0.25 * rng.random((h, w)) * np.linspace(0.5, 1.5, h)[:, None]
    img[prow - 1:prow + 2, :] += 0.5  # the pleural line
    for r in range(line_from, h):  # a line drifting one column every 8 rows
        c = 30 + (r - line_from) // 8
        img[r, c:c + 3] += 0.3 + 0.3 * np.sin(r / 5.0) ** 2
    if black_from is not None:
        img[:, black_from:] = 0.0
    img = np.clip(img, 0, 1)
    maps = post.LineMaps(img)
    a, b = 29 + (prow - line_from) // 8 if line_from < prow else 29, 34 + (prow - line_from) // 8 if line_from < prow else 34
    followed = post._follow(img, a, b, prow, maps)
    assert followed is not None
    got = post.line_features(img, maps, prow, a, b, 0.77, followed)
    want = _oracle_features(img, maps, prow, a, b, 0.77, followed)
    assert got.shape == (len(post.LINE_FEATURES),)
    for name, g, x in zip(post.LINE_FEATURES, got, want):
        assert g == pytest.approx(x, abs=1e-9), name


EDGE_H, EDGE_W = 60, 40


@pytest.mark.parametrize("prow, start, slope, black", [
    (2, 20, 0.0, None), (4, 20, 0.3, None), (5, 20, -0.3, None), (10, 20, 0.0, None),
    (30, 20, 2.0, None), (30, 20, -2.0, None), (30, 5, 0.0, None),
    (EDGE_H - 13, 20, 0.0, None), (EDGE_H - 12, 20, 0.0, None), (EDGE_H - 11, 20, 0.0, None),
    (1, 20, 0.0, None), (30, EDGE_W - 2, 0.0, None), (30, EDGE_W - 1, -0.4, None), (30, 2, 0.5, None),
    (30, 20, 0.0, "pleura"), (30, 20, 0.0, "beside")])
def test_the_measurements_hold_at_the_edges_of_the_image(prow, start, slope, black):
    """Any maps and any followed line (as `_follow` gives them): a pleura near the top or
    the bottom, a track that leaves the image on either side, a line near its edge, and
    black where the pleura or the chest wall beside the line would be."""
    rng = np.random.default_rng(prow * 100 + start + int(10 * slope))
    img = rng.uniform(0.05, 1.0, (EDGE_H, EDGE_W))
    line, con = rng.uniform(0, 1, (EDGE_H, EDGE_W)), rng.uniform(-0.2, 0.3, (EDGE_H, EDGE_W))
    con[prow // 3, :] = np.nan  # a row outside the field of view
    line[max(0, prow - 2), start] = 40.0  # the first row the pleura is measured on
    for r in (prow - 3, prow + 3):  # and just outside them
        if 0 <= r < EDGE_H:
            line[r, start] = 50.0
    if black == "pleura":
        img[prow - 2:prow + 3, :] = 0.0
    elif black == "beside":
        img[:, max(0, start - 12):start + 13] = 0.0
    below = [(prow + 3 + i, start, float(v)) for i, v in enumerate(rng.uniform(-0.1, 0.5, 9))]
    followed = (start, np.array(below), slope)
    # what line_features reads of a LineMaps (its frame: the first of a stack of one)
    maps = SimpleNamespace(line=line, lines=line[None], contrast=SimpleNamespace(at=lambda f, r, c: con[r, c]))
    got = post.line_features(img, maps, prow, start - 1, start + 2, 0.6, followed)
    want = _oracle_features(img, SimpleNamespace(line=line, contrast=con), prow, start - 1, start + 2, 0.6, followed)
    for name, g, x in zip(post.LINE_FEATURES, got, want):
        assert g == pytest.approx(x, abs=1e-9), name


def test_the_check_is_a_logistic_regression_over_the_measurements_and_their_products():
    rng = np.random.default_rng(4)
    n = len(post.LINE_FEATURES)
    check = {"features": list(post.LINE_FEATURES), "mean": rng.normal(0, 1, n).tolist(),
             "scale": rng.uniform(0.5, 2, n).tolist(), "weights": rng.normal(0, 0.05, n + n * (n + 1) // 2).tolist(),
             "bias": 0.3, "threshold": 0.5}
    f = rng.normal(0, 1, n)
    z = [(f[i] - check["mean"][i]) / check["scale"][i] for i in range(n)]
    terms = z + [z[i] * z[j] for i in range(n) for j in range(i, n)]
    logit = sum(wt * t for wt, t in zip(check["weights"], terms)) + check["bias"]
    assert post.line_check_prob(f, check) == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-12)


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0], [2.0, 9.0, 4.0, 7.0], [0.5] * 7])
def test_the_quick_median_is_the_median(values):
    assert post._median(np.array(values)) == np.median(values)


def test_what_is_wrong_with_a_check_is_said_and_a_usable_one_passes():
    good = constant_check(0.0)
    assert post.line_check_problem(good) is None
    bounds = "needs a finite bias and a threshold between 0 and 1"
    for key, value, words in [("threshold", 0.0, bounds), ("threshold", 1.0, bounds), ("threshold", True, bounds),
                              ("bias", float("inf"), bounds), ("bias", "1", bounds),
                              ("features", list(post.LINE_FEATURES)[::-1],
                               "was fitted on other line features than this kit measures "
                               "(it needs 25: near, deep, median_below, ...)"),
                              ("mean", [True] * len(post.LINE_FEATURES), "mean must be 25 finite numbers"),
                              ("scale", [1.0] * (len(post.LINE_FEATURES) + 1), "scale must be 25 finite numbers"),
                              ("scale", [-1.0] * len(post.LINE_FEATURES), "scale must be positive"),
                              ("weights", "0" * 350, "weights must be 350 finite numbers")]:
        check = dict(good, **{key: value})
        assert post.line_check_problem(check) == words, (key, value)
    assert post.line_check_problem(dict(good, threshold=0.999)) is None and post.line_check_problem(dict(good, bias=-3)) is None


def many_lines(seed: int) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    """(frame, pleural row, runs): a textured frame with five lines, some from the pleura,
    some through the chest wall, one at each edge, black beyond a convex probe's edge."""
    rng = np.random.default_rng(seed)
    h, w = 120, 96
    prow = int(rng.integers(30, 60))
    img = 0.1 + 0.2 * rng.random((h, w))
    img[prow - 1:prow + 2, :] += 0.3
    spans = []
    for c in (0, int(rng.integers(15, 35)), int(rng.integers(40, 60)), int(rng.integers(65, 85)), w - 3):
        top = prow if rng.random() < 0.6 else int(rng.integers(0, prow))
        drift = int(rng.integers(-1, 2))
        for r in range(top, h):
            cc = min(w - 3, max(0, c + drift * (r - top) // 10))
            img[r, cc:cc + 3] += 0.15 + 0.3 * rng.random()
        spans.append((max(0, c - 1), min(w, c + 4)))
    rows = np.arange(h)[:, None]
    img[(np.arange(w)[None, :] < (h - rows) // 8)] = 0.0  # black beyond the sector's left edge
    return np.clip(img, 0, 1), prow, spans


@pytest.mark.parametrize("seed", range(6))
def test_a_frames_lines_measured_together_are_each_measured_alone_to_the_bit(seed):
    """lung_frame measures and checks a frame's lines together (`lines_features`,
    `line_check_probs`, `line_mimics`): the same numbers and verdicts as one line at a time."""
    img, prow, spans = many_lines(seed)
    maps = post.LineMaps(img)
    followed = post._follow_lines(img, spans, prow, maps)
    for (lo, hi), f in zip(spans, followed):  # each line's start, track and slope
        one = post._follow(img, lo, hi, prow, maps)
        assert (f is None and one is None) or (f[0] == one[0] and np.array_equal(f[1], one[1]) and f[2] == one[2])
    span_peaks = [0.6 + 0.07 * i for i in range(len(spans))]
    judged = [(s, f, p) for s, f, p in zip(spans, followed, span_peaks) if f is not None]
    assert len(judged) >= 4
    together = post.lines_features(img, maps, prow, [s for s, _, _ in judged], [p for _, _, p in judged],
                                   [f for _, f, _ in judged])
    alone = np.array([post.line_features(img, maps, prow, lo, hi, p, f) for (lo, hi), f, p in judged])
    assert together.shape == (len(judged), len(post.LINE_FEATURES)) and np.array_equal(together, alone)
    check = peak_check()
    rng = np.random.default_rng(seed)
    check["weights"] = list(rng.normal(0, 0.05, len(check["weights"])))  # every measurement counts
    probs = post.line_check_probs(together, check)
    assert list(probs) == [post.line_check_prob(f, check) for f in alone]
    check["threshold"] = float(np.median(probs))  # some lines kept, some turned away with a reason
    alone_why = [post.bline_mimic(img, s, prow, None, check, p, 1) for s, p in zip(spans, span_peaks)]
    assert post.line_mimics(img, spans, prow, None, check, span_peaks, 1) == alone_why
    assert "" in alone_why and any(alone_why)
    assert post.line_mimics(img, spans, prow) == [post.bline_mimic(img, s, prow) for s in spans]
    # without peaks, each run's peak is 1.0; without a number of runs, the frame has one
    assert post.line_mimics(img, spans, prow, None, check) == \
        post.line_mimics(img, spans, prow, None, check, [1.0] * len(spans))
    many = check | {"among_many": {"runs": 2, "threshold": 0.0001}}
    assert post.line_mimics(img, spans, prow, None, many, span_peaks) == alone_why
    assert post.line_mimics(img, spans, prow, None, many, span_peaks, 2) != alone_why
    assert len(set(together[:, post.FEATURE_AT["pleura_over_row"]])) > 1  # each line its own


def model_outputs(img: np.ndarray, prow: int, spans, peak: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Column probabilities (a bin per pixel column) scoring these runs, and pleura-row
    logits (a bin per pixel row) putting the pleura at about prow."""
    h, w = img.shape
    probs = np.full(w, 0.01)
    for i, (lo, hi) in enumerate(spans):
        probs[lo:hi] = peak + 0.07 * i
    logits = np.zeros(h)
    logits[prow] = 6.0
    return probs, logits


def stack_of_frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames of every kind a batch may hold: textured frames of five lines with their
    pleura at different rows, one the model scores nothing on, one with a band as wide
    as confluent lines, one whose pleura lies too low to follow a line below it."""
    frames, probs, logits = [], [], []
    for seed in range(6):
        img, prow, spans = many_lines(seed)
        frames.append(img)
        for out, v in zip((probs, logits), model_outputs(img, prow, spans)):
            out.append(v)
    img, prow, _ = many_lines(7)
    frames += [img, img, img]
    for spans, row in (([], prow), ([(20, 50)], prow), ([(30, 34), (60, 64)], img.shape[0] - 6)):
        for out, v in zip((probs, logits), model_outputs(img, row, spans)):
            out.append(v)
    return np.stack(frames).astype(np.float32), np.stack(probs), np.stack(logits)


@pytest.mark.parametrize("check", [None, "peak", "every measurement"])
def test_frames_analysed_together_are_each_analysed_alone(check):
    """The kit analyses a batch of frames at once (`lung_frames`): each frame's runs,
    lines, mimics and their reasons, pleura, score and confluent band are those of the
    frame analysed alone, to the bit, whatever the batch holds beside it."""
    imgs, probs, logits = stack_of_frames()
    thresholds = {"bline": 0.5, "pattern_min_blines": 3}
    if check is not None:
        thresholds["line_check"] = peak_check()
    if check == "every measurement":
        rng = np.random.default_rng(1)
        thresholds["line_check"]["weights"] = list(rng.normal(0, 0.3, len(thresholds["line_check"]["weights"])))
        thresholds["line_check"]["bias"] = 0.0
        for cut in np.linspace(0.05, 0.95, 19):  # frames of five runs: where it keeps some and turns some away
            thresholds["line_check"]["among_many"] = {"runs": 5, "threshold": float(cut)}
            alone = [post.lung_frame(p, lg, img, thresholds) for p, lg, img in zip(probs, logits, imgs)]
            if any(f["mimics"] for f in alone[:6]):
                break
    alone = [post.lung_frame(p, lg, img, thresholds) for p, lg, img in zip(probs, logits, imgs)]
    assert post.lung_frames(probs, logits, imgs, thresholds) == alone
    for lo, hi in ((0, 3), (3, 9), (8, 9)):  # any batch: the same frames' results
        assert post.lung_frames(probs[lo:hi], logits[lo:hi], imgs[lo:hi], thresholds) == alone[lo:hi]
    assert post.lung_frames(probs[:0], logits[:0], imgs[:0], thresholds) == []
    kinds = [(f["b_lines"], len(f["mimics"]), f["confluent"]) for f in alone]
    assert len(set(kinds)) >= 3 and alone[6]["runs"] == alone[6]["mimics"] == []
    if check is not None:  # lines kept and lines turned away, with their reasons
        assert any(f["runs"] for f in alone) and any(f["mimics"] for f in alone[:6])


def test_lines_of_frames_measured_together_are_each_measured_in_their_own_frame():
    """`frames_features` over the lines of several frames at once (pleural rows apart, so
    their windows over the chest wall, their walls and their averaged rows differ in
    length): each line's measurements are those of its frame measured alone, to the bit."""
    imgs, prows, spans_of = [], [], []
    for seed in (0, 1, 4, 5):
        img, prow, spans = many_lines(seed)
        imgs.append(img)
        prows.append(prow)
        spans_of.append(spans)
    stack = np.stack(imgs)
    maps = post.LineMaps(stack)
    runs_at = [(f, prows[f], lo, hi) for f in range(len(imgs)) for lo, hi in spans_of[f]]
    followed = post._follow_frames(stack, runs_at, maps)
    kept = [(r, fo) for r, fo in zip(runs_at, followed) if fo is not None]
    assert len(set(prows)) == 4 and len(kept) >= 16
    together = post.frames_features(stack, maps, [f for (f, _, _, _), _ in kept], [p for (_, p, _, _), _ in kept],
                                    [(lo, hi) for (_, _, lo, hi), _ in kept], [0.7] * len(kept), [fo for _, fo in kept])
    alone = []
    for f, img in enumerate(imgs):
        mine = [((lo, hi), fo) for (g, _, lo, hi), fo in kept if g == f]
        one = post.LineMaps(img)
        alone.append(post.lines_features(img, one, prows[f], [sp for sp, _ in mine], [0.7] * len(mine),
                                         post._follow_lines(img, [sp for sp, _ in mine], prows[f], one)))
    assert np.array_equal(together, np.concatenate(alone))


def test_the_rules_read_the_chest_wall_only_where_the_line_s_own_direction_stays_in_the_image():
    """A line from the pleura at the left edge, slanting so that followed up it leaves the
    image: the rules read the chest wall on the rows where it is still in view, not on the
    other side of the frame (bright there)."""
    h, w, prow = 80, 40, 30
    img = np.full((h, w), 0.2)
    img[:prow - 3, w - 10:] = 0.9  # a bright chest wall at the right edge only
    img[prow - 1:prow + 2, :] = 0.6
    maps = post.LineMaps(img)
    below = np.array([(prow + 3 + i, 1 + i // 2, 0.3) for i in range(40)], float)  # bright to the bottom
    assert post._line_rules(img, maps, prow, 1, below, 0.5, 0) == ""
    # the same line upright reads that wall: it starts above the pleura
    assert post._line_rules(img, maps, prow, w - 5, below + [0, w - 6, 0], 0.0, 0).startswith("starts above")


def test_the_rules_need_four_rows_of_chest_wall_in_view_at_the_right_edge_too():
    """A line followed up the chest wall that leaves the image at the right edge after three
    rows: three rows are too few to say it starts above the pleura, however bright (the
    pixel past the edge, here bright, is not read)."""
    h, w, prow = 80, 40, 30
    img = np.full((h, w), 0.2)
    img[prow - 1:prow + 2, :] = 0.6
    top, start = prow + 3, w - 11
    for r in range(int(post.ABOVE_FROM * prow), prow - post.ABOVE_GAP):
        c = start + top - r  # slope -1: one column right a row up
        if c < w:
            img[r, c - 1:c + 2] = 0.9
    img[23, :2] = 0.9  # just past the right edge of row 22, where the line would be next
    maps = post.LineMaps(img)
    below = np.array([(top + i, start, 0.3) for i in range(40)], float)
    assert post._line_rules(img, maps, prow, start, below, -1.0, 0) == ""
    assert post._line_rules(img, maps, prow, start - 1, below, -1.0, 0).startswith("starts above")  # four rows


def test_a_pleural_row_asked_for_off_the_image_is_read_at_its_edge():
    img, prow, spans = many_lines(2)
    h = img.shape[0]
    for off, edge in ((-7.0, 0.0), (-0.6, 0.0), (h + 3.0, h - 1.0)):
        assert [post.bline_mimic(img, sp, off) for sp in spans] == [post.bline_mimic(img, sp, edge) for sp in spans]
    followed = post._judged(img, spans, -7.0, None, None, None, 1)[1]
    # from the top row: each line followed from 3 rows under it
    assert [f[1][0][0] for f in followed if f is not None] and all(f[1][0][0] == 3 for f in followed if f is not None)


def test_a_track_s_slope_is_the_exact_one_or_where_it_rounds_half_way_np_polyfits():
    """The line's slope is the exact least-squares slope rounded once. The columns the
    chest wall is read on follow it up from the track's first row; where one of them lies
    exactly half way between two pixels, the slope is np.polyfit's (`_slope`), whose last
    bit rounded it when the line check was fitted. Elsewhere both give the same columns."""
    from fractions import Fraction
    rng = np.random.default_rng(21)
    half_way = 0
    for _ in range(600):
        n = int(rng.integers(8, 17))
        rows = np.arange(40.0, 40.0 + n)
        cols = 60 + np.cumsum(rng.integers(-1, 2, n)).astype(float)
        got = post._slopes([rows], [cols], [38])[0]
        xs, ys = [Fraction(int(v)) for v in rows], [Fraction(int(v)) for v in cols]
        exact = (n * sum(x * y for x, y in zip(xs, ys)) - sum(xs) * sum(ys)) / (n * sum(x * x for x in xs) - sum(xs) ** 2)
        up = [exact * (r - 40) for r in range(38)]  # the column's offset on each row looked at
        if any(v - (v.numerator // v.denominator) == Fraction(1, 2) for v in up):
            half_way += 1
            assert got == post._slope(rows, cols)
        else:
            assert got == float(exact)
            polyfit = post._slope(rows, cols)
            assert np.array_equal(np.round(60 + got * (np.arange(38) - 40)), np.round(60 + polyfit * (np.arange(38) - 40)))
    assert half_way > 10  # both cases were tried
    assert list(post._slopes([], [], [])) == []


@pytest.mark.parametrize("case", ["wall_black", "beside_black", "shallow"])
def test_the_measurements_where_the_image_shows_little(case):
    """A chest wall all black, black only beside one line, a pleura six rows down (windows
    of one row): each line's measurements are still what they say, the wall's 0 when
    there is no wall to compare."""
    rng = np.random.default_rng(11)
    h, w = 110, 80
    prow = 6 if case == "shallow" else 40
    img = 0.1 + 0.3 * rng.random((h, w))
    img[prow - 1:prow + 2, :] += 0.3
    img[prow:, 8:11] += 0.35  # lines from the pleura at columns 8-10 and 50-52
    img[prow:, 50:53] += 0.3
    if case == "wall_black":
        img[:prow - 3, :] = 0.0
    if case == "beside_black":
        img[:prow - 3, :25] = 0.0
    maps = post.LineMaps(img)
    spans, peaks = [(7, 12), (49, 54)], [0.8, 0.9]
    followed = post._follow_lines(img, spans, prow, maps)
    got = post.lines_features(img, maps, prow, spans, peaks, followed)
    for row, (lo, hi), f, p in zip(got, spans, followed, peaks):
        for name, g, x in zip(post.LINE_FEATURES, row, _oracle_features(img, maps, prow, lo, hi, p, f)):
            assert g == pytest.approx(x, abs=1e-9), (name, case)
    beside = got[:, post.FEATURE_AT["wall_beside"]]
    assert {"wall_black": list(beside) == [0.0, 0.0], "beside_black": beside[0] == 0.0 != beside[1],
            "shallow": (beside != 0).all()}[case]


def test_medians_of_many_rows_are_each_rows_median():
    rng = np.random.default_rng(5)
    rows = [rng.random(n) for n in (1, 2, 3, 8, 17, 40)] + [np.array([0.3, 0.3, 0.1, 0.9])]
    assert list(post._medians(rows)) == [np.median(r) for r in rows]
    grid = rng.random((4, 9))
    grid[1, 3:] = np.nan  # nan is left out
    grid[2, :] = np.nan  # no value at all: nan
    got = post._medians(grid)
    assert got[0] == np.median(grid[0]) and got[1] == np.median(grid[1, :3]) and np.isnan(got[2])
    assert got[3] == np.median(grid[3])
    assert np.isnan(post._medians([np.array([]), np.array([])])).all()
    assert np.isnan(post._medians(np.zeros((3, 0)))).all()
    wide = rng.random((5, 40))  # rows long enough for a partial sort
    wide[1, 25:] = np.nan
    wide[2, :] = np.nan
    wide[3, 1::2] = np.nan
    got = post._medians(wide)
    assert [got[0], got[1], got[3], got[4]] == [np.median(wide[0]), np.median(wide[1, :25]), np.median(wide[3, ::2]),
                                                np.median(wide[4])] and np.isnan(got[2])
    kept = grid.copy()
    post._medians(grid)
    assert np.array_equal(grid, kept, equal_nan=True)  # the caller's rows are not sorted in place


def test_the_slope_is_np_polyfits_to_the_bit():
    rng = np.random.default_rng(9)
    for n in (8, 11, 16):
        for _ in range(200):
            rows = np.arange(40.0, 40.0 + n)
            cols = 60 + np.cumsum(rng.integers(-1, 2, n)).astype(float)
            assert post._slope(rows, cols) == float(np.polyfit(rows, cols, 1)[0])


def test_a_median_of_float32_pixels_is_taken_in_double_precision():
    """The model's input is float32: the two middle values are averaged as float64 (in
    float32, 1 + (1 + 2^-23) rounds to 2, and the median to 1)."""
    assert post._median(np.array([1.0, 1 + 2 ** -23], np.float32)) == 1 + 2 ** -24
    assert post._median(np.array([3, 1, 2, 4])) == 2.5
