"""Write models/<name>/MODEL_CARD.md from each signed manifest (metrics, thresholds,
training facts) plus what the model answered on the real ultrasound files in pydicom.

    python models/train/cards.py            # after train.py; needs no torch

The cards are documentation: they are not signed, the numbers in them come from the
signed manifest, and the tests recompute those numbers on fresh simulated data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fieldkit.inference import postprocess as post  # noqa: E402

REAL_FILES = {
    "examples_ybr_color.dcm": "SonoSite 30-frame cine, apical cardiac view (JPEG baseline, YBR_FULL_422)",
    "examples_rgb_color.dcm": "lymph node with colour Doppler, single frame (RGB)",
    "examples_palette.dcm": "obstetric convex frame, mostly dark (PALETTE COLOR)",
    "examples_jpeg2k.dcm": "lymph node with colour Doppler, single frame (JPEG 2000 lossless, YBR_RCT)",
    "ExplVR_BigEnd.dcm": "60x80 RGB ultrasound thumbnail (explicit VR big endian)",
}

SIMULATOR = """\
Training and test images come from `models/train/simulator.py` (numpy only, seeded): an
echogenicity map in the beam domain (160 depth samples x 128 scan lines), multiplied by
fully developed speckle (intensity of a complex Gaussian field smoothed by a 2-sample axial
x 3-line lateral PSF), attenuated by exp(-a*depth) with a = 1.0-2.5 after TGC, log-compressed
to a 45-60 dB dynamic range with -4..+4 dB gain, and scan-converted to a 240x320, 256x256,
300x400 or 480x640 display for a convex (probe radius 12-30 % of the height, 56-80 deg
sector), phased (72-90 deg) or linear probe, with vendor-style text clutter in the margins.
Lung: chest wall with 1-3 fascia lines, pleural line at 18-40 % depth with a granular
"sliding" texture, 0-2 ribs (bright cap, full shadow), A-lines at multiples of the pleural
depth (fading 0.7x each), 0-8 B-lines (width 0.8-2.5 % of the sector, at least 4 %
apart, never under a rib) that erase the A-lines, or confluent B-lines (one band over 30-55 %
of the sector), consolidation in 15 % of frames; B-line mimics (E-lines, needle ring-down,
Z-lines, shadows, instrument reverberation, a dead element, subcutaneous emphysema).
{lung_training}
FAST: RUQ/LUQ (liver or spleen parenchyma, kidney with cortex and bright sinus,
diaphragm) or pelvis (bladder with posterior enhancement, bowel rings); free fluid in half
the frames as an anechoic crescent around the kidney (thickness 6-25 % of depth) or a
sharp-cornered triangle behind the bladder. Other views: apical cardiac (phased),
soft-tissue masses, vessels, thyroid with trachea, obstetric sac, muscle over bone, a third
of them with a colour-Doppler box. Quality: no contact (face reverberations only), too
dark (-45..-30 dB gain) and saturated (+25..+40 dB gain)."""


def _fmt(m: dict) -> str:
    v = m.get("value")
    if v is None:
        return "n/a"
    ci = m.get("ci95")
    if ci and ci[0] is not None:
        return f"{v:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f}, n={m['n']})"
    return f"{v:.3f} (n={m['n']})"


def real_file_answers() -> list[str]:
    import pydicom
    from pydicom.data import get_testdata_file

    from fieldkit.config import Config
    from fieldkit.inference import runner
    from fieldkit.inference.registry import Registry
    reg = Registry(Config())
    lines = []
    for name, what in REAL_FILES.items():
        a = runner.analyse(pydicom.dcmread(get_testdata_file(name)), reg)
        res = "; ".join(f"{r.task}: {'assessable' if r.assessable else 'not assessable'}"
                        + (f" ({r.reason})" if r.reason else "") for r in a.results)
        lines.append(f"- `{name}` ({what}): gate per frame {a.gate.get('counts', {})}; {res}")
    return lines


def speed(bundle_dir: Path, entry: dict) -> str:
    """Bare onnxruntime time per frame on this machine: one thread, batches of 16."""
    import time

    import numpy as np
    import onnxruntime as ort

    from fieldkit.inference.registry import session_options
    sess = ort.InferenceSession(str(bundle_dir / entry["file"]), sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((16, 1, *entry["preprocessing"]["size"]), dtype=np.float32)
    sess.run(None, {"image": x})
    best = min(_timed(lambda: sess.run(None, {"image": x})) for _ in range(7))
    return (f"{best / 16 * 1000:.2f} ms per frame ({16 / best:.0f} frames/s) with one onnxruntime thread, "
            f"batches of 16, measured on the development machine (2 shared cores) when this card was written")


def _timed(fn) -> float:
    import time
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


MIMIC_NAMES = {"e_line": "E-lines (start above the pleura)", "needle": "needle with ring-down",
               "z_line": "Z-lines / comet tails (fade)", "shadow": "acoustic shadow", "a_line": "A-line control",
               "reverb": "instrument reverberation", "dead_element": "dead transducer element",
               "emphysema": "subcutaneous emphysema (E-lines)"}


def training_section(e: dict) -> str:
    t = e["training"]
    seeds = ", ".join(f"{k} {v}" for k, v in t["seeds"].items())
    commands = "<br>".join(f"`{c}`" for c in t["commands"])
    return f"""## How it was made

| | |
|---|---|
| training set size | {t['train_size']} simulated frames{' (' + t['train_size_rule'] + ')' if t.get('train_size_rule') else ''} |
| epochs | {t['epochs']} (AdamW, one-cycle learning rate, batches of 64) |
| loss | {t['loss']} |
| seeds | {seeds} (train.py --seed {t['seed']}: the training set is simulated from the seed plus an offset per model) |
| test set size | {t['test_size']} frames (the metrics below) |
| reproduce | {commands} (in this order; train.py trains gate, lung and FAST in this order from one seeded state, so a model is reproduced with the ones before it) |
| wall time | training {t['wall_minutes']['train']} min,{' line check ' + str(t['wall_minutes']['line_check']) + ' min,' if 'line_check' in t['wall_minutes'] else ''} calibration {t['wall_minutes']['calibrate']} min (2 busy shared CPU cores; this run: {t['seconds']} s of training) |

"""


def _reliability(rows) -> str:
    return "\n".join(f"| {lo:.1f}-{hi:.1f} | {n} | {p:.3f} | {o:.3f} |" for lo, hi, n, p, o in rows)


def _before_after(c: dict) -> str:
    """The reliability tables before and after a fitted calibration."""
    table = "| probability bin | frames | mean probability | observed share |\n|---|---|---|---|\n"
    return (f"Reliability before:\n\n{table}{_reliability(c['reliability_before'])}\n\n"
            f"Reliability after:\n\n{table}{_reliability(c['reliability_after'])}")


def calibration_section(e: dict) -> str:
    c = e["calibration"]
    if c["method"] == "temperature":
        return f"""## Calibration

The view probability the kit shows ("view: lung 94 %") is the gate's probability of the
view it calls, temperature-scaled: softmax(logits / t) with t = {c['t']} (under 1: the
gate, trained with label smoothing, is under-confident), fitted on {c['fitted_on']['frames']}
held-out frames of every class (seed {c['fitted_on']['seed']}: not trained on, not the test set)
and signed in the manifest (`calibration`). The gate decides on its own probabilities
(min_prob was chosen on them); only the probability shown is rescaled. ECE on
{c['ece_measured_on']['frames']} other fresh frames called lung or FAST (seed {c['ece_measured_on']['seed']}):

| ECE | before calibration {c['ece_before']:.4f} | after {c['ece_after']:.4f} |
|---|---|---|

{_before_after(c)}

"""
    if c["method"] == "none":
        return f"""## Calibration

The view probability this gate gives (the probability shown as "view: lung 94 %") is not
rescaled. Its reliability on fresh simulated frames (seed {c['ece_measured_on']['seed']},
{c['ece_measured_on']['frames']} frames called lung or FAST):

| ECE | {c['ece']:.4f} (before and after: no calibration applied) |
|---|---|

| probability bin | frames | mean probability | observed share |
|---|---|---|---|
{_reliability(c['reliability'])}

"""
    return f"""## Calibration

The kit shows "finding: {c['of']} 87 %": the probability of the finding itself, from
the frame's finding score (`fieldkit/inference/postprocess.py`, "finding scores": the
logit of the evidence that decides the call, 0 at the decision threshold) by Platt
scaling, sigmoid(a x score + b) with a = {c['a']}, b = {c['b']}, fitted on
{c['fitted_on']['frames']} held-out frames (seed {c['fitted_on']['seed']}: not trained on,
not the test set) and signed in the manifest (`calibration`). A clip's probability is that
of the frame its summary comes from. The ECE (expected calibration error: the
frame-weighted mean gap between probability and observed share over ten bins) on
{c['ece_measured_on']['frames']} other fresh frames (seed {c['ece_measured_on']['seed']}):

| ECE | before calibration (sigmoid of the score) {c['ece_before']:.4f} | after {c['ece_after']:.4f} |
|---|---|---|

{_before_after(c)}

The view probability shown beside it ("view: lung 94 %") is the view gate's, about the view
and not the finding (see the gate's card for its reliability).

"""


def lung_training_text(e: dict) -> str:
    """How the lung model's training frames were drawn (the recipe it was trained by)."""
    t = e.get("training", {})
    if e["task"] != "lung":
        return "The lung model's training set is on its own card."
    if t.get("mimic_share"):
        return f"The lung model was trained on a mixture: {t['train_size_rule']}."
    return ("The lung model was trained before the 8-line frames, the confluent bands and the mimics were\n"
            "added (0-7 separate lines): they are test sets only.")


def line_check_text(e: dict) -> str:
    c = e["thresholds"].get("line_check")
    if not c:
        return ""
    f, t = c["fitted_on"], c["threshold_chosen_on"]
    return f"""

A line as wide as one B-line is judged by the bundle's learned line check
(`models/train/linecheck.py`): a logistic regression over {len(c['features'])} measurements of the
followed line (its contrast under the pleura, at the bottom and in six bands of the chest
wall above the pleura; the chest wall just above the pleura averaged along the line; how
far the pleura stands out on it; its width, slope and the model's peak) and their pairwise
products, fitted on {f['runs']} runs of the model's evidence ({f['true']} on true B-lines; seed
{f['seed']}: {f['per_count']} frames per true count 1-8, {f['per_mimic']} per mimic type, {f['natural']} of the natural
mix{more_frames_text(f)}). A line is a B-line when the
check's probability is at least {c['threshold']}: the highest threshold that keeps
{t['keeps_true'] * 100:.0f} % of the true lines' runs on a second seed ({t['seed']}, {t['runs']} runs).{among_many_text(c)} The
rules above then only say why a line was turned away; wider bands are judged by the rules."""


def more_frames_text(f: dict) -> str:
    m = f.get("more")
    if not m:
        return ""
    names = {"e_line": "E-lines", "needle": "needles", "emphysema": "emphysema"}
    return f"; and seed {m['seed']}: {m['per_mimic']} frames each of {', '.join(names.get(k, k) for k in m['mimics'])}"


def among_many_text(c: dict) -> str:
    m = c.get("among_many")
    if not m:
        return ""
    return f""" In a frame
where the model scores {m['runs']} runs or more, a line is a B-line from {m['threshold']}: the highest
threshold that keeps {m['keeps_true'] * 100:.0f} % of the true lines' runs in such frames on the same seed
({m['true_runs']} runs). B-lines come in numbers, an E-line or a needle alone: with one threshold
for all, one true line in ten was turned away and frames of 5-8 lines were counted short."""


def mimic_training_text(e: dict) -> str:
    share = e.get("training", {}).get("mimic_share")
    if share:
        return f"The model was trained with mimics as negatives ({share * 100:.0f} % of its training frames)"
    return "The model was not trained on mimics"


def mimic_section(e: dict) -> str:
    rows = "\n".join(f"| {MIMIC_NAMES.get(k, k)} | {v['frames']} | {v['any_before']:.1%} | {v['any_after']:.1%} | "
                     f"{v['pattern_before']:.1%} | {v['pattern_after']:.1%} |" for k, v in e["mimics"].items())
    return f"""## Mimic false positives

A B-line arises from the pleural line and reaches the bottom of the screen without fading.
{mimic_training_text(e)}, and the kit does not take its columns as they are:
`fieldkit/inference/postprocess.py`
(`bline_mimic`) follows each scored column from the model's own pleural row to the bottom
and turns away lines that start above the pleura, fade, or are no brighter than their
surroundings; they are reported as "vertical artefacts, not B-lines".{line_check_text(e)} Fresh simulated
frames with no true B-line, per mimic type (before = the model's columns alone, after =
with the check; "pattern" = at least {e['thresholds']['pattern_min_blines']} B-lines in the frame):

| mimic | frames | any B-line before | after | pattern before | after |
|---|---|---|---|---|---|
{rows}

"""


def counts_section(e: dict) -> str:
    rows = "\n".join(f"| {k} | {v['frames']} | {v['exact']:.1%} | {v['within_1']:.1%} | {v['mean_count']:.2f} |"
                     for k, v in e["counts_by_true_count"].items())
    return f"""## Counts by true count

Per-frame B-line count after the mimic check, on fresh simulated frames with a set number
of true B-lines:

| true B-lines | frames | exact | within one | mean count |
|---|---|---|---|---|
{rows}

{confluent_text(e)}
"""


def short_text(e: dict) -> str:
    """Where the counts fall short, from the table: the true counts whose within-one share is
    under 90 %, or whose mean count is short by more than half a line."""
    t = e["counts_by_true_count"]
    low = [k for k, v in t.items() if v["within_1"] < 0.9]
    short = [k for k, v in t.items() if int(k) - v["mean_count"] > 0.5]
    parts = [f"within one on under 90 % of frames at {', '.join(low)} true lines" if low else
             "every true count from 0 to 8 is counted within one on at least 90 % of frames"]
    if short:
        parts.append(f"short by more than half a line on average at {', '.join(short)} (the closest lines still merge)")
    return "; ".join(parts)


def confluent_text(e: dict) -> str:
    c = e.get("confluent")
    if not c:
        return "Counts above four are under-counted: this model does not count to confluence.\n"
    return f"""Counts split a run of columns where the model's evidence dips ({post.SPLIT_DIP} below the
peaks either side), so touching lines count apart, and a line-wide run holds as many lines
as its track shows where they fan out (`postprocess.fan_lines`: {post.FAN_ROWS} rows from {post.FAN_DEPTH} down the
track, which starts 3 rows under the pleura, looked across {post.FAN_HALF} pixels either side, two peaks when the brightness between
them dips {post.FAN_DIP} below the lower), since close lines near a convex probe's apex
fall in one of the model's column bins; {short_text(e)}.
Confluent B-lines (lines merged over a wide sector, white lung) are reported as "confluent"
when the model's evidence stays at or above {post.CONFLUENT_FLOOR} over at least {post.CONFLUENT_SHARE:.0%} of the field of
view's width at the pleura, and the image shows one band there (`postprocess.confluent_band_problem`:
brighter than the lung beside it, evenly bright under the pleura (the dimmest tenth of its
middle columns at least {post.CONFLUENT_EVEN:.0%} of their median: close separate lines leave dark
gaps), and not as bright over the chest wall); it then makes a B-line pattern by itself. On
{c['frames']} fresh frames with them (seed {c['seed']}) {c['detected']:.1%} were called confluent; on
{c['frames']} frames with 0-8 separate lines {c['called_on_separate_lines']:.1%} were.{pleura_off_text(c)}
"""


def pleura_off_text(c: dict) -> str:
    if "pleura_row_off" not in c:
        return ""
    pct = lambda v: f"{v * 100:.1f} %"  # noqa: E731
    if not c["pleura_row_off"]:
        return "\nOn every one of these frames the model's pleural row lay within 10 input rows of the true one."
    right = c["detected"] - c["detected_with_pleura_row_off"]
    return f"""
Doubtful: on {pct(c['pleura_row_off'])} of the frames with confluent lines the model put the pleural row
more than 10 input rows from the true one (deep in the band). {pct(c['detected_with_pleura_row_off'])} of all
the frames were called confluent with the row that far off, the band judged from the wrong
row (or, with too little image below it, not judged at all); {pct(right)} were called
confluent with the row where it is (of {pct(1 - c['pleura_row_off'])} that had it there)."""


def write_card(bundle_dir: Path, real: list[str]) -> None:
    e = json.loads((bundle_dir / "manifest.json").read_text())
    metrics = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in e.get("metrics", {}).items())
    pre = e["preprocessing"]
    card = f"""# {e['name']} {e['version']}

**Not validated on patients; not for diagnosis.** This is a reference model trained only on
simulated images, to exercise the kit end to end. A hospital must validate and sign its
own model before any clinical use (see `models/README.md`).

{e.get('summary', '')}

| | |
|---|---|
| task | `{e['task']}` |
| file | `{e['file']}` ({e.get('size_bytes', 0) / 1024:.0f} KiB), SHA-256 `{e['sha256']}` |
| signed by key | `{e['key_id']}` |
| input | `{e['input']['name']}` [N, {', '.join(str(v) for v in e['input']['shape'][1:])}] float32 |
| preprocessing | RGB -> luma (BT.601), resize the whole frame to {pre['size'][0]}x{pre['size'][1]} (bilinear, antialiased), x{pre['scale']:.6f} |
| outputs | {'; '.join(f'`{k}`: {v}' for k, v in e['outputs'].items())} |
| labels | {', '.join(e['labels'])} |
| thresholds | {', '.join(f'{k}={v}' for k, v in e['thresholds'].items() if k != 'line_check')}{' and the learned line check (see "Mimic false positives")' if 'line_check' in e['thresholds'] else ''} |
| intended views | {', '.join(e['intended_views'])} |
| speed | {speed(bundle_dir, e)} |
| training | {e['training']['data']}, seed {e['training']['seed']}, {e['training']['seconds']} s on 2 CPU cores, torch {e['training']['torch']} |

## Held-out simulated test metrics

Freshly simulated images never seen in training (their own seed); 95 % confidence
intervals are Wilson intervals for proportions and bootstrap percentile intervals for means.
The tests (`tests/test_models_metrics.py`) recompute these on another fresh set and fail
when a model falls below the lower bound here.{' B-line counts and the pattern are what the kit reports: the model' + chr(39) + 's columns after the mimic check (below).' if e['task'] == 'lung' else ''}

| metric | value |
|---|---|
{metrics}

## Simulator

{SIMULATOR.format(lung_training=lung_training_text(e))}

## Real images it was checked against

pydicom's ultrasound test files (none is a lung or FAST view, so every lung and FAST
answer must be "not assessable"); what the kit answered with this model set:

{chr(10).join(real)}

{training_section(e)}{calibration_section(e)}{(mimic_section(e) + counts_section(e)) if e['task'] == 'lung' else ''}## Limitations

- Trained and tested on simulated images only: the simulator's idea of a B-line, a
  pleural line or free fluid is simpler than a patient's. Metrics here say the model
  learned the simulator, not that it works on people.
- The view gate abstains below its probability threshold and whenever colour-flow
  Doppler is on the frame; real views it has never seen may still be misread.
- Input is the whole frame resized to a square; unusual aspect ratios or heavy on-screen
  annotations shift what the model sees.
- Not validated on patients; not for diagnosis.
"""
    (bundle_dir / e["model_card"]).write_text(card, encoding="utf-8")


def main():
    real = real_file_answers()
    for manifest in sorted((ROOT / "models").glob("*/manifest.json")):
        write_card(manifest.parent, real)
        print("wrote", manifest.parent / "MODEL_CARD.md")


if __name__ == "__main__":
    main()
