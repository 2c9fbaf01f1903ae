"""The orientation-marker search (`inference.marker`) on fresh simulated frames: the
simulator's marker (`simulator.add_orientation_marker`) found at every corner and never at
a wrong one, and no marker found where none is drawn. The vendor files and the kit's path:
tests/test_inference_marker.py; each rule at its limits: tests/test_marker_unit.py."""

from __future__ import annotations

import numpy as np

from fieldkit.inference import marker
from fieldkit.inference.preprocess import to_gray

SEED = 760_000
PER_PROBE = 40  # fresh frames per probe kind, each shown with its marker at every corner
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def _gray(rgb: np.ndarray) -> np.ndarray:
    return to_gray(rgb[None])[0]


def test_the_marker_is_found_at_every_corner_and_never_at_a_wrong_one(simulator):
    rng = np.random.default_rng(SEED)
    for kind in ("convex", "linear", "phased"):
        found = dict.fromkeys(CORNERS, 0)
        for i in range(PER_PROBE):
            geom = simulator.random_geometry(rng, kind)
            s = (simulator.simulate_lung if i % 2 else simulator.simulate_fast)(rng, geom=geom)
            marked = simulator.add_orientation_marker(s.image.copy(), geom)
            for corner in CORNERS:
                got = marker.find(_gray(simulator.as_shown(marked, corner)))
                assert got in (None, corner), f"{kind}: a marker shown {corner} was found {got}"
                found[corner] += got == corner
        print(kind, found)
        assert min(found.values()) >= 0.95 * PER_PROBE, (kind, found)


def test_no_marker_is_found_where_none_is_drawn(simulator):
    """Vendor text, depth scales, the colour bar of a Doppler view, the tip of a sector, a
    bright pleura or diaphragm, saturated and noisy frames: none is a marker."""
    rng = np.random.default_rng(SEED + 1)
    makers = {name: (lambda r, k=k: simulator.simulate_gate(r, k)) for k, name in enumerate(simulator.GATE_CLASSES)}
    makers["turned"] = simulator.simulate_misoriented
    makers["mimic"] = lambda r: simulator.simulate_lung(r, n_blines=0, mimic=simulator.MIMICS[r.integers(8)])
    makers["confluent"] = lambda r: simulator.simulate_lung(r, confluent=True)
    for name, make in makers.items():
        found = [marker.find(_gray(make(rng).image)) for _ in range(60)]
        assert not any(found), (name, [f for f in found if f])
