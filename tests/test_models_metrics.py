"""The reference models still do what their model cards say, on freshly simulated data.

Each test simulates a new held-out set (its own seeds, never used in training or for the
card), recomputes the headline metrics with onnxruntime (no torch), and fails when a fresh
point estimate is below the lower end of the card's 95 % interval (what the cards promise),
or under a floor no reference model may go under. The fresh sets are at least as large as
the card's own (250 per gate class, 300 FAST frames; 5 400 lung frames, three times the
card's 1 800): a fresh point estimate falls under the card's lower bound by chance alone on
about 8 % of honest cards when the two sets are the same size, about 4.5 % at three times.
"""

from __future__ import annotations

import json
import re

import pytest

from fieldkit.inference.registry import BUILTIN_DIR


def _card(name):
    entry = json.loads((BUILTIN_DIR / name / "manifest.json").read_text())
    return entry, (BUILTIN_DIR / name / entry["model_card"]).read_text()


def _check(fresh: dict, card: dict, names, floor: float):
    for name in names:
        got, want = fresh[name], card[name]
        assert got["value"] >= want["ci95"][0], f"{name}: fresh {got} is below the card's {want}"
        assert got["value"] >= floor, f"{name}: fresh {got['value']} is under the floor {floor}"


def _card_shows(text: str, metrics: dict):
    for name, m in metrics.items():
        row = re.search(rf"\| {name} \| ([0-9.]+)", text)
        assert row and float(row.group(1)) == pytest.approx(m["value"], abs=5e-4), name
    assert "Not validated on patients; not for diagnosis" in text


def test_view_quality_gate_matches_its_card(registry, evaluate):
    entry, text = _card("view_quality")
    model = registry.get("gate")
    fresh = evaluate.gate_metrics(model.session, entry["thresholds"], n_per_class=250, seed=91_001)
    # white lung (confluent lines) is a lung view too: the gate 1.0 passed 11.5 % of it
    fresh |= evaluate.white_lung_metrics(model.session, entry["thresholds"], n=400, seed=91_005)
    _check(fresh, entry["metrics"], ["accuracy", "lung_specificity", "fast_specificity",
                                     "lung_sensitivity", "fast_sensitivity", "poor_quality_sensitivity",
                                     "white_lung_passed"], 0.85)
    _card_shows(text, entry["metrics"])


def test_lung_bline_model_matches_its_card(registry, evaluate):
    entry, text = _card("lung_bline")
    model = registry.get("lung")
    fresh = evaluate.lung_metrics(model.session, entry["thresholds"], n=5400, seed=92_001)
    _check(fresh, entry["metrics"], ["bline_pattern_sensitivity", "bline_pattern_specificity",
                                     "bline_count_within_1"], 0.7)
    # pleural line position (lower is better): a few large misses dominate the mean error, so
    # the card's figure comes from 2400 frames (calibrate.py) and a fresh set's interval must
    # reach down into it
    assert fresh["pleura_row_mae_px"]["ci95"][0] <= entry["metrics"]["pleura_row_mae_px"]["ci95"][1]
    _card_shows(text, entry["metrics"])


def test_fast_fluid_model_matches_its_card(registry, evaluate):
    entry, text = _card("fast_fluid")
    model = registry.get("fast")
    fresh = evaluate.fast_metrics(model.session, entry["thresholds"], n=300, seed=93_001)
    _check(fresh, entry["metrics"], ["fluid_sensitivity", "fluid_specificity", "fluid_dice_positive"], 0.6)
    _card_shows(text, entry["metrics"])
