"""Frames the models were never made for abstain, through the kit's analysis path, with a
reason in words: an M-mode strip, horizontal or vertical stripes (the input check), and
blank, saturated or colour-Doppler frames (the view gate and the colour check). Simulated
B-mode views are not turned away by the input check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fieldkit.inference import runner
from fieldkit.inference.preprocess import not_b_mode, preprocess
from fixtures.inference import lung_cine_dataset

SPEC = {"colour": "luma-bt601", "size": [128, 128], "resample": "bilinear", "scale": 1 / 255, "layout": "NCHW"}


def _dataset(frames: np.ndarray):
    """A multi-frame ultrasound object carrying these RGB frames."""
    ds, _ = lung_cine_dataset(n_frames=len(frames), n_blines=0, seed=1)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    return ds


def _m_mode(simulator, seed: int, n: int = 3) -> np.ndarray:
    """M-mode strips: one scan line of a simulated lung over time, granular in time below
    the pleura (the "seashore" of a sliding lung)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = simulator.simulate_lung(rng, geom=simulator.random_geometry(rng, "linear", (240, 320))).image
        strip = np.repeat(img[:, 160:161, :], 320, axis=1).astype(float)
        below = int(0.3 * 240)
        strip[below:] *= rng.uniform(0.6, 1.4, (240 - below, 320, 1))
        out.append(np.clip(strip, 0, 255))
    return np.stack(out).astype(np.uint8)


def _stripes(axis: int, n: int = 3) -> np.ndarray:
    band = ((np.arange(320 if axis == 1 else 240) // 8) % 2 * 200 + 30).astype(np.uint8)
    shape = (n, 1, 320, 3) if axis == 1 else (n, 240, 1, 3)
    frames = np.broadcast_to(band.reshape((1, 1, 320, 1) if axis == 1 else (1, 240, 1, 1)), shape)
    return np.ascontiguousarray(np.broadcast_to(frames, (n, 240, 320, 3)))


def _reasons(registry, frames) -> dict:
    a = runner.analyse(_dataset(frames), registry)
    return {r.task: (r.assessable, r.reason) for r in a.results}


@pytest.mark.parametrize("kind,words", [
    ("m_mode", "M-mode strip"),
    ("horizontal", "every row is about the same across the image"),
    ("vertical", "vertical stripes"),
])
def test_frames_that_are_not_b_mode_abstain_with_the_reason(registry, simulator, kind, words):
    frames = {"m_mode": lambda: _m_mode(simulator, 31), "horizontal": lambda: _stripes(0),
              "vertical": lambda: _stripes(1)}[kind]()
    got = _reasons(registry, frames)
    assert set(got) == {"lung", "fast"}
    for task, (assessable, reason) in got.items():
        assert not assessable and words in reason and "not a B-mode image" in reason, (task, reason)
        assert "on 3 of 3 frames" in reason


@pytest.mark.parametrize("value,words", [(0, "too_dark"), (255, "saturated")])
def test_blank_and_saturated_frames_abstain_with_the_gate_reason(registry, value, words):
    for assessable, reason in _reasons(registry, np.full((2, 240, 320, 3), value, np.uint8)).values():
        assert not assessable and words in reason, reason


def test_colour_doppler_abstains_with_the_reason(registry, simulator):
    rng = np.random.default_rng(5)
    geom = simulator.random_geometry(rng, "linear", (240, 320))
    frames = np.stack([simulator.simulate_fast(rng, geom=geom).image for _ in range(2)])
    for f in frames:
        simulator.add_colour_doppler(rng, f, geom)  # draws the flow box into the frame
    for assessable, reason in _reasons(registry, frames).values():
        assert not assessable and "colour-flow Doppler" in reason, reason


def test_the_input_check_does_not_turn_away_b_mode_views(simulator):
    """Fresh simulated lung, FAST and other views (every probe), none taken for a strip."""
    rng = np.random.default_rng(96_001)
    images = ([simulator.simulate_lung(rng).image for _ in range(120)]
              + [simulator.simulate_fast(rng).image for _ in range(80)]
              + [simulator.simulate_other(rng).image for _ in range(80)])
    x = np.concatenate([preprocess(im[None], SPEC) for im in images])
    turned = [w for w in not_b_mode(x) if w]
    assert not turned, f"{len(turned)} of {len(x)} B-mode frames turned away: {turned[:3]}"


def test_a_m_mode_strip_is_told_apart_from_a_lung_frame(simulator):
    x = preprocess(_m_mode(simulator, 32, n=6), SPEC)
    assert all("M-mode" in w for w in not_b_mode(x))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.just(1), st.integers(9, 40), st.integers(9, 40)),
              elements=st.floats(0, 1, width=32)))
def test_the_input_check_answers_for_any_frame(x):
    out = not_b_mode(x)
    assert len(out) == len(x) and all(isinstance(w, str) for w in out)
