"""The probe-orientation marker, honoured when present (`inference.marker`, `runner`).

Scanners draw a mark beside one end of the imaging area's near field. With the display
inverted top to bottom (a scanner setting) the mark is at the bottom: the kit then reads the
clip set upright, says so, and gives everything it draws or measures in rows back as the
image shows. Without a mark an inverted clip abstains as before (the gate's own turn check:
tests/test_inference_orientation.py). The vendor files pydicom ships and the kit's whole
path (the marker drawn as `simulator.add_orientation_marker`); detection rates on fresh
simulated frames: tests/test_marker_rates.py. Measured on these seeds: see README,
"Orientation marker"."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydicom.data import get_testdata_file

from fieldkit.dicom.frames import decode_frames
from fieldkit.inference import marker, overlay, runner
from fieldkit.inference.preprocess import to_gray
from fixtures.inference import PYDICOM_US_FILES, frames_dataset, lung_cine_dataset

SEED = 760_000
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def _gray(rgb: np.ndarray) -> np.ndarray:
    return to_gray(rgb[None])[0]


@pytest.mark.parametrize("name", PYDICOM_US_FILES)
def test_the_vendor_files_pydicom_ships(name):
    """The SonoSite cardiac view's green dot is its marker (top right: the cardiac
    convention); no file shows one at the bottom (all are shown upright)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    frames = decode_frames(ds, list(range(min(3, int(ds.get("NumberOfFrames", 1) or 1)))))
    found = [marker.find(_gray(f)) for f in frames]
    if name == "examples_ybr_color.dcm":
        assert found == ["top right"] * len(frames)
    assert not any(f and f.startswith("bottom") for f in found), found


def _disc(img: np.ndarray, cy: int, cx: int, r: int = 7) -> np.ndarray:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 235
    return img


def test_two_marks_or_a_mark_at_the_side_are_no_marker(simulator):
    rng = np.random.default_rng(SEED + 2)
    geom = simulator.random_geometry(rng, "linear", (240, 320))
    img = simulator.add_orientation_marker(simulator.simulate_lung(rng, geom=geom).image.copy(), geom)
    assert marker.find(_gray(img)) == "top left"
    both = np.maximum(img, simulator.as_shown(img, "bottom left"))  # a mark at the top and the bottom
    assert marker.find(_gray(both)) is None
    side = np.zeros_like(img)
    side[:, 60:260] = img[:, 60:260]  # the imaging area alone, then a mark half way down its side
    assert marker.find(_gray(_disc(side, 120, 40))) is None


@pytest.mark.parametrize("shape,value", [((0, 0), 0), ((1, 1), 255), ((1, 400), 255), ((400, 1), 0),
                                         ((240, 320), 0), ((240, 320), 255), ((64, 64), 128)])
def test_blank_saturated_and_degenerate_frames(shape, value):
    assert marker.find(np.full(shape, value, np.uint8)) is None


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 300), st.integers(1, 300))))
def test_any_frame_gives_a_corner_or_none(gray):
    assert marker.find(gray) in (None, *CORNERS)


# ------------------------------------------------------------------ through the kit's path

def _lung(a):
    return next(r for r in a.results if r.task == "lung")


def _tinted(png: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return rgb[:, :, 1] - rgb[:, :, 0] > 40  # the frame is grey; the B-line bands are green


@pytest.mark.parametrize("probe", ["convex", "linear"])
@pytest.mark.parametrize("corner", ["bottom left", "bottom right"])
def test_an_inverted_clip_with_its_marker_is_read_set_upright_and_shown_as_stored(registry, probe, corner):
    upright = runner.analyse(lung_cine_dataset(n_frames=4, n_blines=4, seed=11, probe=probe, marker="top left")[0],
                             registry)
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=11, probe=probe, marker=corner)
    a = runner.analyse(ds, registry)
    up, lung = _lung(upright), _lung(a)
    assert up.assessable and lung.assessable, lung.reason
    assert a.orientation_marker == corner and a.turned_upright
    assert lung.result["orientation_marker"] == corner
    assert lung.result["turned_upright"] == "read set upright: the orientation marker shows the image inverted top to bottom"
    if corner == "bottom left":  # the same frames, only inverted: the same reading
        assert lung.result["b_line_counts"] == up.result["b_line_counts"]
    assert lung.result["pattern"] == up.result["pattern"] == "B-line pattern"
    h = ds.Rows
    assert lung.result["pleural_line_row"] == h - 1 - up.result["pleural_line_row"]  # rows as the image shows
    in_h = registry.get("lung").entry["input"]["shape"][2]
    s_up, s_inv = up.result["sliding"], lung.result["sliding"]
    assert s_inv["pleura_row"] == in_h - 1 - s_up["pleura_row"]  # the sliding check's, in the model's rows
    if s_up["m_mode"]:
        assert s_inv["m_mode"]["pleura_row"] == h - 1 - s_up["m_mode"]["pleura_row"]
        assert s_inv["m_mode"]["columns"] == s_up["m_mode"]["columns"] or corner == "bottom right"
    assert [f["pleura_row"] for f in lung.result["frames"]] == [h - 1 - f["pleura_row"] for f in up.result["frames"]]
    # the overlay matches the stored, inverted frame: bands over the lung, which lies above
    # the pleura here, none over the chest wall below it
    png = overlay.render(a.overlay_frame, a.overlay)
    stored = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.NumberOfFrames, h, ds.Columns, 3)
    i = lung.frames.index(a.overlay["frame"])
    assert np.array_equal(a.overlay_frame, stored[i])
    tinted, row = _tinted(png), lung.result["pleural_line_row"]
    assert tinted[row - 30].sum() >= 4 * 3 and not tinted[row + 8: h - 8].any()


def test_the_marker_is_not_looked_for_when_turned_off(registry):
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=11, marker="bottom left")
    a = runner.analyse(ds, registry, read_marker=False)
    assert a.orientation_marker is None and not a.turned_upright and not _lung(a).assessable
    up = runner.analyse(lung_cine_dataset(n_frames=4, n_blines=4, seed=11, marker="top left")[0], registry,
                        read_marker=False)
    assert up.orientation_marker is None and _lung(up).assessable and "orientation_marker" not in _lung(up).result


def test_an_inverted_clip_without_a_marker_still_abstains(registry):
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=11)
    frames = np.frombuffer(ds.PixelData, np.uint8).reshape(4, ds.Rows, ds.Columns, 3)
    a = runner.analyse(frames_dataset(np.ascontiguousarray(frames[:, ::-1])), registry)
    assert a.orientation_marker is None and not _lung(a).assessable


def test_a_stray_mark_at_the_bottom_of_an_upright_clip_makes_it_abstain_not_misread(registry):
    """Set upright by a mark that is not the marker, an upright view reads turned: the gate's
    own turn check stops it, and the reason names the marker."""
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=12, probe="linear")
    frames = np.frombuffer(ds.PixelData, np.uint8).reshape(4, ds.Rows, ds.Columns, 3).copy()
    rows, cols = np.nonzero(frames[0].max(axis=2) > 8)
    bottom = int(np.percentile(rows, 99.5))
    left = int(np.percentile(cols[rows > bottom - 20], 1))
    for f in frames:
        f[bottom - 30:, :left - 1] = 0  # vendor text cleared where the stray mark goes
        _disc(f, bottom - 8, left - 12)
    a = runner.analyse(frames_dataset(frames), registry)
    assert a.orientation_marker == "bottom left"
    lung = _lung(a)
    assert not lung.assessable
    # the gate's own words first, then why it read the clip set upright
    assert lung.reason.startswith(("the lung view seems turned on the screen", "not a lung view")), lung.reason
    assert lung.reason.endswith("as its orientation marker (bottom left of the image) asks"), lung.reason
    # the frame shown with the finding is the clip's as stored (in grey), not as the gate read it
    assert np.array_equal(a.overlay_frame[:, :, 0], _gray(frames[len(frames) // 2]))


def test_an_inverted_fast_frame_with_its_marker_reads_as_upright(registry, simulator):
    rng = np.random.default_rng(SEED + 3)
    geom = simulator.random_geometry(rng, "convex", (240, 320))
    s = simulator.simulate_fast(rng, fluid=True, geom=geom)
    img = simulator.add_orientation_marker(s.image.copy(), geom)
    upright = runner.analyse(frames_dataset(img[None]), registry)
    up = next(r for r in upright.results if r.task == "fast")
    a = runner.analyse(frames_dataset(simulator.as_shown(img, "bottom left")[None]), registry)
    assert np.array_equal(a.overlay["mask"], np.asarray(upright.overlay["mask"])[::-1])  # turned back
    fast = next(r for r in a.results if r.task == "fast")
    assert up.assessable and fast.assessable and up.result["fluid_present"] and fast.result["fluid_present"]
    assert fast.result["fluid_area_px"] == up.result["fluid_area_px"]
    # the red fluid tint lies over the fluid as the stored (inverted) frame shows it
    rgb = np.asarray(Image.open(io.BytesIO(overlay.render(a.overlay_frame, a.overlay))).convert("RGB")).astype(int)
    red = rgb[:, :, 0] - rgb[:, :, 1] > 40
    truth = s.fluid_mask[::-1]
    assert red[truth].mean() > 0.5 and red[truth].mean() > 5 * red[~truth].mean()


@pytest.mark.parametrize("view", ["lung", "fast"])
def test_through_the_kit_inverted_frames_with_a_marker_read_as_upright_ones(registry, simulator, view):
    """What the clinician sees, on fresh single frames: shown inverted (marker bottom left)
    or inverted and mirrored (bottom right), each frame gives the call the same frame gives
    upright; inverted without a marker, it abstains (the gate's turn check, as before)."""
    rng = np.random.default_rng(SEED + 10 + (view == "fast"))
    n = 40
    same = {"bottom left": 0, "bottom right": 0}
    unmarked_assessed = 0

    def call(image):
        r = next(r for r in runner.analyse(frames_dataset(image[None]), registry).results if r.task == view)
        return (r.result["pattern"] if view == "lung" else r.result["fluid_present"]) if r.assessable else None

    for i in range(n):
        geom = simulator.random_geometry(rng, "convex" if view == "fast" or i % 2 else "linear")
        s = (simulator.simulate_lung if view == "lung" else simulator.simulate_fast)(rng, geom=geom)
        marked = simulator.add_orientation_marker(s.image.copy(), geom)
        upright = call(marked)
        for corner in same:
            same[corner] += upright is not None and call(simulator.as_shown(marked, corner)) == upright
        unmarked_assessed += call(np.ascontiguousarray(s.image[::-1])) is not None
    print(f"{view}: same call as upright {same} of {n}; inverted without a marker assessed {unmarked_assessed}")
    assert min(same.values()) >= 0.9 * n, same
    assert unmarked_assessed <= 0.05 * n


def test_a_long_inverted_clip_re_decoded_in_part_is_set_upright_throughout(registry):
    """Frames no longer held are decoded again for the lung model: they too are set upright
    (40 frames, batches of 4: the first frames are dropped from memory after the gate)."""
    upright = runner.analyse(lung_cine_dataset(n_frames=40, n_blines=4, seed=13, marker="top left")[0], registry,
                             batch_size=4)
    up = _lung(upright)
    ds, _ = lung_cine_dataset(n_frames=40, n_blines=4, seed=13, marker="bottom left")
    for decode in (None, runner._decode):  # luma frames (the kit's fast path) and RGB ones
        a = runner.analyse(ds, registry, batch_size=4, decode=decode)
        lung = _lung(a)
        # each frame gated once, set upright
        assert a.gate["per_frame"] == upright.gate["per_frame"] and a.frames_analysed == 40
        assert up.assessable and lung.assessable
        assert lung.result["b_line_counts"] == up.result["b_line_counts"]
        assert [f["pleura_row"] for f in lung.result["frames"]] == \
            [ds.Rows - 1 - f["pleura_row"] for f in up.result["frames"]]


def test_the_marker_is_read_once_on_the_first_frame_however_many_batches(registry, monkeypatch):
    """The marker does not move within a clip: it is read on the first frame only, so a
    later batch whose first frame hides it cannot set part of the clip back."""
    ds, _ = lung_cine_dataset(n_frames=24, n_blines=4, seed=11, marker="bottom left")
    first = to_gray(decode_frames(ds, [0]))[0]
    seen = []
    real = marker.find

    def find(gray):
        seen.append(gray)
        return real(gray) if len(seen) == 1 else None  # any later frame would read no marker

    monkeypatch.setattr(marker, "find", find)
    a = runner.analyse(ds, registry, batch_size=4)
    assert len(seen) == 1 and np.array_equal(seen[0], first)
    assert a.orientation_marker == "bottom left" and a.turned_upright and _lung(a).assessable
