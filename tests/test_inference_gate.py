"""The view/quality gate decides, frame by frame, whether the clinical models may speak.
Its outputs are injected here (below, just at and above the manifest's `min_prob`), so the
oracle is the threshold itself, not the gate model's opinion of a simulated image."""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest

from fieldkit.inference import postprocess as post
from fieldkit.inference import runner
from fixtures.inference import lung_cine_dataset

N_FRAMES = 8


def _view_shown(gate, probs: np.ndarray, label: str) -> float:
    """The view probability the kit shows for these gate probabilities (its signed temperature)."""
    return float(post.view_calibrated(probs, gate.entry["calibration"])[gate.entry["labels"].index(label)])


class _InjectedGate:
    """The real gate's bundle and identity, with chosen per-frame probabilities."""

    def __init__(self, real, probs: np.ndarray):
        self._real, self._probs = real, probs

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        # logits whose softmax is exactly the wanted row (up to float rounding)
        return [np.log(np.repeat(self._probs[None, :], len(x), axis=0))]


class _PerFrameGate(_InjectedGate):
    """The real gate's bundle and identity, answering each frame its own row, in the order the
    frames are first seen. A frame turned on the screen gets its frame's row: this gate reads a
    view the same however turned, so the kit's check of a view's orientation (which asks the
    gate about turned frames) finds nothing to say."""

    def __init__(self, real, rows: list[np.ndarray]):
        super().__init__(real, rows[0])
        self._rows, self._seen = rows, {}

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        out = []
        for frame in x:  # (1, H, W): the same key for the frame and its quarter and half turns
            key = min(np.ascontiguousarray(np.rot90(frame, k, axes=(1, 2))).tobytes() for k in range(4))
            if key not in self._seen:
                self._seen[key] = self._rows[len(self._seen)]
            out.append(self._seen[key])
        return [np.log(np.stack(out))]


def _sure_and_unsure(gate) -> tuple[np.ndarray, np.ndarray]:
    """Probability rows for a lung frame 0.1 above and 0.1 below the gate's own threshold."""
    min_prob, labels = float(gate.thresholds["min_prob"]), gate.entry["labels"]
    return _lung_probs(labels, min_prob + 0.1), _lung_probs(labels, min_prob - 0.1)


class _Registry:
    def __init__(self, real, gate):
        self._real, self._gate = real, gate

    def get(self, task):
        return self._gate if task == "gate" else self._real.get(task)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _lung_probs(labels: list[str], p_lung: float) -> np.ndarray:
    rest = (1.0 - p_lung) / (len(labels) - 1)
    return np.array([p_lung if name == "lung" else rest for name in labels], dtype=np.float64)


def _lung_cine():
    ds, truth = lung_cine_dataset(n_frames=N_FRAMES, n_blines=4, seed=5)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue())), truth


@pytest.mark.parametrize("offset, assessable", [(-0.05, False), (-0.001, False), (0.001, True), (0.05, True)])
def test_lung_speaks_only_on_frames_the_gate_was_sure_of(registry, offset, assessable):
    gate = registry.get("gate")
    min_prob = float(gate.thresholds["min_prob"])
    labels = gate.entry["labels"]
    p_lung = min_prob + offset
    assert int(np.argmax(_lung_probs(labels, p_lung))) == labels.index("lung")  # lung is the best class
    ds, truth = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, _lung_probs(labels, p_lung))))
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable is assessable, lung.reason
    if assessable:
        # the view probability is the gate's mean probability of the view on the frames used
        # (as shown: its signed temperature); the finding's own probability comes from the lung
        # model, whatever the gate's figure
        assert lung.view_probability == pytest.approx(_view_shown(gate, _lung_probs(labels, p_lung), "lung"), abs=1e-3)
        assert lung.finding_probability is not None and lung.finding_probability > 0.9
        assert np.median(lung.result["b_line_counts"]) == pytest.approx(len(truth[0].bline_cols), abs=1)
    else:
        assert "uncertain" in lung.reason and f"p>={min_prob:g}" in lung.reason
        assert "b_line_counts" not in lung.result
    assert a.gate["counts"] == ({"lung": N_FRAMES} if assessable else {"uncertain": N_FRAMES})


def test_half_sure_frames_are_not_enough(registry):
    """Half the frames above the threshold is below the required view share: abstain."""
    gate = registry.get("gate")
    sure, unsure = _sure_and_unsure(gate)
    frames = [sure if i % 3 == 0 else unsure for i in range(N_FRAMES)]  # 3 of 8 sure

    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, frames)))
    lung = next(r for r in a.results if r.task == "lung")
    assert not lung.assessable
    assert a.gate["counts"] == {"lung": 3, "uncertain": 5}


def test_an_abstention_names_the_view_and_every_label_count_most_frequent_first(registry):
    """What a clinician reads when the gate abstains: the view wanted, each label's share of
    the frames (most frequent first) and the threshold."""
    gate = registry.get("gate")
    min_prob = float(gate.thresholds["min_prob"])
    sure, unsure = _sure_and_unsure(gate)
    per_frame = [sure if i % 3 == 0 else unsure for i in range(N_FRAMES)]  # 3 of 8 sure

    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, per_frame)))
    reasons = {r.task: r.reason for r in a.results}
    gate_says = f"view/quality gate per frame: uncertain 5/8, lung 3/8; threshold p>={min_prob:g}"
    assert reasons["lung"] == f"not a lung view of usable quality ({gate_says})"
    assert reasons["fast"] == f"not a FAST (abdominal) view of usable quality ({gate_says})"


def test_the_gate_time_is_recorded(registry):
    """timing_ms["gate"] is the time spent in the gate model over every batch."""
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    delay, calls = 0.2, []

    class SlowGate(_InjectedGate):
        def run(self, x):
            calls.append(len(x))
            time.sleep(delay)  # a gate that takes a known time per batch
            return super().run(x)

    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, SlowGate(gate, _lung_probs(labels, 0.9))), batch_size=4)
    # two batches of 4 frames, and the check of the view's orientation: three of the first
    # batch's lung frames, each turned three ways
    assert calls == [4, 3 * runner.TURN_CHECK_FRAMES, 4]
    assert len(calls) * delay * 1000 <= a.timing_ms["gate"] <= a.timing_ms["total"]
    # frames read at 0.99 cannot read better turned by the margin: not looked at turned
    calls.clear()
    a = runner.analyse(ds, _Registry(registry, SlowGate(gate, _lung_probs(labels, 0.99))), batch_size=4)
    assert calls == [4, 4]
    assert len(calls) * delay * 1000 <= a.timing_ms["gate"] <= a.timing_ms["total"]


class _GateWithThresholds(_InjectedGate):
    """An injected gate whose manifest states another `min_prob`, or none."""

    def __init__(self, real, probs, thresholds: dict):
        super().__init__(real, probs)
        self.thresholds = thresholds


@pytest.mark.parametrize("thresholds, p_lung, assessable", [
    ({"min_prob": 0.8}, 0.75, False), ({"min_prob": 0.8}, 0.85, True),  # the manifest's own threshold
    ({}, 0.55, False), ({}, 0.65, True),  # none stated: 0.6
])
def test_the_threshold_is_the_gate_manifests_own(registry, thresholds, p_lung, assessable):
    gate = registry.get("gate")
    probs = _lung_probs(gate.entry["labels"], p_lung)
    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _GateWithThresholds(gate, probs, thresholds)))
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable is assessable, lung.reason
    if not assessable:
        assert f"p>={thresholds.get('min_prob', 0.6):g}" in lung.reason


def test_a_frame_exactly_at_the_threshold_is_decided(registry):
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    certain = np.array([1.0 if name == "lung" else 0.0 for name in labels])  # softmax gives exactly 1.0
    ds, _ = _lung_cine()
    with np.errstate(divide="ignore"):  # log(0): the other classes' logits are -inf
        a = runner.analyse(ds, _Registry(registry, _GateWithThresholds(gate, certain, {"min_prob": 1.0})))
    assert a.gate["counts"] == {"lung": N_FRAMES}
    assert next(r for r in a.results if r.task == "lung").assessable


def test_the_view_is_the_gates_most_frequent_label(registry):
    """5 of 8 frames surely lung, 3 uncertain: the view is lung (not the label that sorts last)."""
    gate = registry.get("gate")
    sure, unsure = _sure_and_unsure(gate)
    per_frame = [unsure if i % 3 == 0 else sure for i in range(N_FRAMES)]  # 5 of 8 sure

    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, per_frame)))
    assert a.gate["counts"] == {"lung": 5, "uncertain": 3}
    assert a.view == "lung"
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable and lung.view == "lung"


def _sure_of(labels: list[str], label: str, p: float) -> np.ndarray:
    rest = (1.0 - p) / (len(labels) - 1)
    return np.array([p if name == label else rest for name in labels], dtype=np.float64)


def test_the_view_and_quality_follow_the_gates_label(registry):
    """Every frame surely one label: lung/fast/other is the view; anything else is no view
    ("unknown"), and a poor-quality label is the quality."""
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    ds, _ = _lung_cine()
    for label in labels:
        a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, _sure_of(labels, label, 0.95))))
        assert a.view == (label if label in ("lung", "fast", "other") else "unknown"), label
        poor = label in ("no_contact", "too_dark", "saturated")
        assert a.quality == (label if poor else "good"), label
    unsure = _sure_of(labels, "lung", float(gate.thresholds["min_prob"]) - 0.1)
    a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, unsure)))
    assert (a.view, a.quality) == ("unknown", "good")


def test_the_gates_record_names_each_frame_its_label_probability_and_the_model(registry):
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, _sure_of(labels, "lung", 0.8123456))))
    assert a.gate["per_frame"] == [{"frame": f, "label": "lung", "p": 0.812} for f in range(1, N_FRAMES + 1)]
    assert a.gate["model"] == {"name": gate.name, "version": gate.version, "sha256": gate.sha256}


@pytest.mark.parametrize("per_label, quality", [
    ({"no_contact": 5, "too_dark": 3}, "no_contact"),  # the most frequent poor label
    ({"saturated": 3, "too_dark": 1, "lung": 4}, "saturated"),  # poor on half the frames: poor
    ({"too_dark": 3, "lung": 5}, "good"),  # poor on fewer than half
])
def test_the_quality_is_the_most_frequent_poor_label_on_half_the_frames_or_more(registry, per_label, quality):
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    rows = [_sure_of(labels, label, 0.95) for label, n in per_label.items() for _ in range(n)]
    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, rows)))
    assert a.gate["counts"] == dict(sorted(per_label.items()))
    assert a.quality == quality


def test_half_the_frames_in_view_is_enough_and_the_result_names_them(registry):
    """VIEW_SHARE (half) of the frames surely lung: the lung model speaks, on those frames only."""
    gate = registry.get("gate")
    min_prob = float(gate.thresholds["min_prob"])
    sure, unsure = _sure_and_unsure(gate)
    rows = [sure if i % 2 else unsure for i in range(N_FRAMES)]  # frames 2, 4, 6, 8 sure
    ds, _ = _lung_cine()
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, rows)))
    lung, fast = (next(r for r in a.results if r.task == t) for t in ("lung", "fast"))
    assert lung.assessable and lung.frames == [2, 4, 6, 8] and lung.result["view_share"] == 0.5
    assert (lung.reason, lung.view, lung.quality) == ("", "lung", "good")
    assert lung.view_probability == pytest.approx(_view_shown(gate, sure, "lung"), abs=1e-3)
    assert [f["frame"] for f in lung.result["frames"]] == [2, 4, 6, 8]  # each frame's B-lines, named
    assert not fast.assessable and fast.result == {"view_share": 0.0} and fast.view_probability == 0.0
    assert (fast.view, fast.quality, fast.frames) == ("lung", "good", list(range(1, N_FRAMES + 1)))
    assert 0 < a.timing_ms["lung"] <= a.timing_ms["total"] and "fast" not in a.timing_ms


def test_each_stage_time_is_recorded_in_milliseconds_to_a_tenth(registry, monkeypatch):
    """A clock the test moves: decoding takes 10 000 s, the gate 20 000 s and the lung model
    40 000 s (they never overlap); each figure is that, in ms, to 0.1 ms, plus the real time
    spent. No check of the view's orientation: it runs on the model thread while this one
    analyses the lung frames, so on one clock for both its time would count twice."""
    monkeypatch.setattr(runner, "TURN_CHECK_FRAMES", 0)
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    real = time.perf_counter
    offset = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    def decode(ds, idx):
        offset[0] += 10_000
        return runner._decode(ds, idx)

    class TimedGate(_InjectedGate):
        def run(self, x):
            offset[0] += 20_000
            return super().run(x)

    class TimedLung:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        def run(self, x):
            offset[0] += 40_000
            return self._real.run(x)

    class Timed(_Registry):
        def get(self, task):
            return TimedLung(self._real.get(task)) if task == "lung" else super().get(task)

    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=5)
    a = runner.analyse(ds, Timed(registry, TimedGate(gate, _lung_probs(labels, 0.99))), decode=decode)
    assert next(r for r in a.results if r.task == "lung").assessable
    for stage, ms in (("decode_preprocess", 10_000_000), ("gate", 20_000_000), ("lung", 40_000_000),
                      ("total", 70_000_000)):
        got = a.timing_ms[stage]
        assert isinstance(got, float) and round(got, 1) == got, (stage, got)
        assert ms <= got < ms + 5_000, (stage, got)  # a scale error of 0.1 % would add 10 000+ ms


def test_a_single_frame_in_view_is_all_of_the_frames(registry):
    gate = registry.get("gate")
    ds, _ = lung_cine_dataset(n_frames=1, n_blines=4, seed=5)
    a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, _lung_probs(gate.entry["labels"], 0.99))))
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable and lung.frames == [1] and lung.result["view_share"] == 1.0


@pytest.mark.parametrize("n_frames, sure, share", [(6, 2, 0.333), (7, 5, 0.714)])
def test_the_view_share_is_given_to_three_places(registry, n_frames, sure, share):
    gate = registry.get("gate")
    min_prob = float(gate.thresholds["min_prob"])
    labels = gate.entry["labels"]
    rows = [_lung_probs(labels, min_prob + (0.1 if i < sure else -0.1)) for i in range(n_frames)]
    ds, _ = lung_cine_dataset(n_frames=n_frames, n_blines=4, seed=5)
    a = runner.analyse(ds, _Registry(registry, _PerFrameGate(gate, rows)))
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.result["view_share"] == share


def _shown(ds, frame_index: int) -> np.ndarray:
    """The picture the kit shows for a frame (0-based): its luma, as RGB."""
    from fieldkit.inference.decode import luma_frames
    gray, _ = luma_frames(ds, [frame_index], None)
    return np.repeat(gray[0][:, :, None], 3, axis=2)


def test_the_frame_shown_is_the_findings_frame_or_else_the_middle_one(registry):
    gate = registry.get("gate")
    labels = gate.entry["labels"]
    ds, _ = _lung_cine()
    probs = _sure_of(labels, "lung", 0.8123456)
    spoke = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, probs)))
    lung = next(r for r in spoke.results if r.task == "lung")
    assert lung.assessable and lung.view_probability == round(_view_shown(gate, probs, "lung"), 3)  # to 3 places
    summary = lung.result["summary_frame"]
    assert np.array_equal(spoke.overlay_frame, _shown(ds, summary - 1))
    unsure = _lung_probs(labels, float(gate.thresholds["min_prob"]) - 0.1)
    silent = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, unsure)))
    assert not any(r.assessable for r in silent.results)
    assert np.array_equal(silent.overlay_frame, _shown(ds, N_FRAMES // 2))
    assert summary - 1 != N_FRAMES // 2  # so the two cases show different frames


def test_a_long_cine_nobody_spoke_on_shows_a_frame_still_in_memory(registry):
    """80 frames, 4 a batch: only the last 32 stay in memory, so the middle one is gone and
    the first frame still held (0-based 48) is shown, a picture, not a model input."""
    gate = registry.get("gate")
    unsure = _lung_probs(gate.entry["labels"], float(gate.thresholds["min_prob"]) - 0.1)
    ds, _ = lung_cine_dataset(n_frames=80, n_blines=4, seed=5)
    a = runner.analyse(ds, _Registry(registry, _InjectedGate(gate, unsure)), batch_size=4)
    assert not any(r.assessable for r in a.results)
    assert np.array_equal(a.overlay_frame, _shown(ds, 48))
