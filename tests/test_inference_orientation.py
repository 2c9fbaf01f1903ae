"""Views turned on the screen: the view gate must not pass a lung or FAST frame rotated a
quarter turn or upside down (the pleura or the near field no longer at the top), or the
clinical models would read it as if it were upright. Fresh seeds, used neither in training
nor for the card.
"""

from __future__ import annotations

import numpy as np
import pytest

from fieldkit.inference import runner
from fixtures.inference import frames_dataset, lung_cine_dataset

SEED = 730_000
FRAMES_PER_VIEW = 200  # per view, the three orientations mixed
# share of turned frames the gate still passes as a lung / FAST view, at most: the gate 1.1,
# trained with turned views as "other", passes none (measured 0 of 200 each; the gate 1.0
# passed 2.5-3.5 % of turned lung and 34-35 % of turned FAST frames)
BOUNDS = {"lung": 0.03, "fast": 0.03}


@pytest.mark.parametrize("view", ["lung", "fast"])
def test_turned_views_are_not_passed_as_views(registry, evaluate, view):
    gate = registry.get("gate")
    m = evaluate.misoriented_metrics(gate.session, gate.thresholds, n_per_view=FRAMES_PER_VIEW,
                                     seed=SEED + (view == "fast"))
    passed = m[f"misoriented_{view}_passed"]["value"]
    print(f"{view} turned on the screen: passed as a view on {passed:.1%} of {FRAMES_PER_VIEW} frames")
    assert passed <= BOUNDS[view], f"{view}: {passed:.1%} of turned frames pass the gate"


@pytest.mark.parametrize("view", ["lung", "fast"])
def test_turned_views_abstain_through_the_kit_and_upright_ones_do_not(registry, simulator, view):
    """What the clinician sees: the kit's whole path (gate, then its check of how the view
    reads turned) on single frames of each orientation and on upright frames of the same view,
    fresh seeds. The kit's own turn check stays for a bundle whose gate passes turned views
    (the gate 1.0 alone passed about 4 turned FAST frames in 10)."""
    rng = np.random.default_rng(SEED + 10 + (view == "fast"))
    n = 60  # per orientation
    for orientation in [*simulator.ORIENTATIONS, "upright"]:
        assessed, reasons = 0, set()
        for k in range(n):
            if orientation == "upright":
                image = (simulator.simulate_lung if view == "lung" else simulator.simulate_fast)(rng).image
            else:
                image = simulator.simulate_misoriented(rng, view, orientation).image
            r = next(r for r in runner.analyse(frames_dataset(image[None]), registry).results if r.task == view)
            assessed += r.assessable
            reasons.add(r.reason.split(" (")[0])
        print(f"{view} {orientation}: assessed {assessed}/{n}; reasons {sorted(reasons)}")
        if orientation == "upright":
            assert assessed >= 0.95 * n, (orientation, assessed)
        else:
            assert assessed <= 0.05 * n, (orientation, assessed, reasons)


def test_upright_views_still_pass(registry, evaluate):
    """The control: the same gate passes upright lung and FAST frames."""
    gate = registry.get("gate")
    m = evaluate.gate_metrics(gate.session, gate.thresholds, n_per_class=100, seed=SEED + 2)
    assert m["lung_sensitivity"]["value"] >= 0.9 and m["fast_sensitivity"]["value"] >= 0.9, m


@pytest.mark.parametrize("quarter_turns", [1, 2])
def test_a_turned_lung_clip_abstains_with_a_reason_in_words(registry, quarter_turns):
    ds, _ = lung_cine_dataset(n_frames=3, n_blines=3, seed=SEED + quarter_turns, quarter_turns=quarter_turns)
    lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
    assert not lung.assessable
    assert lung.reason.startswith(("not a lung view", "the lung view seems turned on the screen")), lung.reason
    upright, _ = lung_cine_dataset(n_frames=3, n_blines=3, seed=SEED + quarter_turns)
    assert next(r for r in runner.analyse(upright, registry).results if r.task == "lung").assessable


def test_the_simulator_turns_frames_as_asked(simulator):
    rng = np.random.default_rng(SEED)
    for orientation in simulator.ORIENTATIONS:
        s = simulator.simulate_misoriented(rng, "fast", orientation)
        assert s.gate == simulator.GATE_CLASSES.index("other") and s.params["orientation"] == orientation
    with pytest.raises(KeyError):
        simulator.simulate_misoriented(rng, "lung", "sideways")
