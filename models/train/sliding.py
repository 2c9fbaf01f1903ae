"""Lung sliding on simulated cines: the clips, the kit's verdict on each, and the figures.

    python models/train/sliding.py              # features on the tuning seed, figures on the test seed
    python models/train/sliding.py --m-mode [N]  # the page's M-mode strips read against the truth

Each clip goes through the kit's own path (`runner.analyse` with the bundled gate and lung
models on a DICOM cine), so the pleural row is the lung model's and only frames the gate
calls lung views are used. The thresholds in `fieldkit.inference.postprocess` (SLIDING_*)
were chosen on TUNE_SEED and the figures measured on TEST_SEED; the tests use a third.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import simulator as S  # noqa: E402
from evaluate import wilson  # noqa: E402

TUNE_SEED, TEST_SEED = 61_001, 62_001
N_FRAMES = 8


def cine_dataset(frames: np.ndarray):
    """Frames (n, H, W, 3) uint8 as an Ultrasound Multi-frame Image (RGB, explicit VR LE)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "US", "SIM-SLIDING"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.FrameTime = 33.3
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


POINT = "lung point"  # the class of clips with sliding on one side of a line only


def clips(seed: int, n_per_class: int, n_frames: int = N_FRAMES, motion=(0.0, 0.5), classes=(True, False)):
    """(frames, truth) pairs: n_per_class clips of each of `classes` (True: sliding, False:
    none, POINT: a lung point), alternating, with a little probe drift (up to `motion[1]`
    display pixels per frame) in half of them."""
    rng = np.random.default_rng(seed)
    for i in range(n_per_class * len(classes)):
        cls = classes[i % len(classes)]
        drift = float(rng.uniform(*motion)) if rng.random() < 0.5 else 0.0
        yield S.simulate_sliding_cine(rng, sliding=cls is True, lung_point=cls == POINT, n_frames=n_frames,
                                      motion=drift)


def verdict(registry, frames) -> dict:
    """The kit's sliding verdict on one clip ({"status": "not assessable", ...} when the
    lung finding itself abstains: the gate did not call the clip a lung view)."""
    from fieldkit.inference import runner
    lung = next(r for r in runner.analyse(cine_dataset(frames), registry).results if r.task == "lung")
    if not lung.assessable:
        return {"status": "not assessable", "reason_code": "not_lung", "reason": lung.reason, "score": None}
    return lung.result["sliding"]


def table(registry, seed: int, n_per_class: int, **kw) -> dict:
    """Per true class: how many clips were called present / absent / not assessable, and
    the scores (for choosing thresholds)."""
    out = {c: {"present": 0, "absent": 0, "not assessable": 0, "partial": 0, "scores": [], "wall": [], "sides": []}
           for c in (True, False, POINT)}
    for frames, truth in clips(seed, n_per_class, **kw):
        v = verdict(registry, frames)
        row = out[POINT if truth["lung_point"] is not None else truth["sliding"]]
        row[v["status"]] += 1
        row["partial"] += v.get("reason_code") == "partial"
        if v.get("score") is not None:
            row["scores"].append(v["score"])
        if v.get("chest_wall_change") is not None:
            row["wall"].append(v["chest_wall_change"])
        if v.get("sides"):
            row["sides"].append(v["sides"])
    return out


def figures(t: dict) -> dict:
    """Sensitivity for absent sliding (the pneumothorax sign) and for present sliding, each
    over the clips the kit judged (abstentions counted apart), with Wilson 95 % intervals."""
    res = {}
    for truth, name in ((False, "absent"), (True, "present")):
        row = t[truth]
        judged = row["present"] + row["absent"]
        w = wilson(row[name], judged)
        res[name] = {"correct": row[name], "judged": judged, "rate": w["value"], "ci95": w["ci95"],
                     "abstained": row["not assessable"], "clips": judged + row["not assessable"]}
    row = t[POINT]
    res[POINT] = {k: row[k] for k in ("present", "absent", "not assessable", "partial")}
    return res


MARGIN = 0.1  # log ratio: about 10 % more or less change than any clip of the other class showed
POINT_SHARE = 0.03  # share of clips with sliding whose stiller side may lie under the lung-point limit


def tune(registry, seed: int, n_per_class: int) -> dict:
    """Thresholds from one seed's clips: the chest-wall change over which the probe moved
    (a quarter above the most any clip with a still or slightly drifting probe shows); then
    "present" from MARGIN above the highest score of a clip without sliding (calling one of
    them "present" would wrongly exclude a pneumothorax) and "absent" below MARGIN under the
    lowest score of a clip with sliding; between the two the kit says it cannot tell. Last
    the lung-point limit: a clip whose stiller side scores under it while the other slides
    is not called "present"; set so that POINT_SHARE of the clips with sliding everywhere
    fall under it (the price in abstentions), and the lung-point clips show what it buys."""
    from fieldkit.inference import postprocess as post
    saved = post.SLIDING_MOVED, post.POINT_STILL
    post.SLIDING_MOVED, post.POINT_STILL = float("inf"), float("-inf")
    try:
        t = table(registry, seed, n_per_class, classes=(True, False, POINT))
    finally:
        post.SLIDING_MOVED, post.POINT_STILL = saved
    moved = 1.25 * max(t[True]["wall"] + t[False]["wall"])
    present_from = max(t[False]["scores"]) + MARGIN
    absent_below = min(t[True]["scores"]) - MARGIN
    if absent_below > present_from:  # the classes lie far apart: one threshold halfway
        absent_below = present_from = (absent_below + present_from) / 2
    still = float(np.quantile([min(s) for s in t[True]["sides"]], POINT_SHARE))
    caught = np.mean([min(s) < still and max(s) >= present_from for s in t[POINT]["sides"]])
    return {"moved": round(moved, 2), "present_from": round(present_from, 2),
            "absent_below": round(absent_below, 2), "point_still": round(still, 2),
            "lung_points_caught": round(float(caught), 3), "table": t}


M_MODE_SEED = 64_001  # neither the tuning nor the test seed, nor the tests'
M_MODE_FRAMES = 30  # a second of cine: the strip the page shows is read over time
SEASHORE, BARCODE = 2.0, 1.5  # strip ratios read as sand below still waves / lines all the way down


def m_mode_strip_ratio(strip: np.ndarray, row: float) -> float:
    """An M-mode strip (depth, one sample per frame) read as a clinician reads it: the
    frame-to-frame change just below the pleural row `row` over that in the chest wall above
    it, over the rows in view (seashore: several times more below; barcode: about the same).
    NaN when no chest wall is in view above the pleura (or `row` is NaN: no pleura there)."""
    if np.isnan(row):
        return float("nan")
    s = strip.astype(float)
    change = np.abs(np.diff(s, axis=1)).mean(1)
    in_view = s.min(1) > 0  # the simulator's image is never 0 inside the field of view
    r = int(round(row))
    rows = np.arange(len(s))
    above = in_view & (rows >= r - 30) & (rows < r - 4)
    below = in_view & (rows >= r - 1) & (rows < r + 12)
    if not above.any() or not below.any():
        return float("nan")
    return float(change[below].mean() / max(change[above].mean(), 1e-9))


def m_mode_table(registry, seed: int, n_per_class: int) -> dict:
    """The strips the kit draws for the patient page (fieldkit.web.clip_images.m_mode_png, at
    the columns the sliding judge chose), each read at the simulator's pleural row for its
    column and judged by the simulator's truth for that column (the pleura slides there, or
    not: no sliding, a rib, the still side of a lung point): the ratios per truth, how far
    the ticked row lies from the true one, and the clips without a strip. Clips of the three
    classes, a little probe drift in half."""
    import io

    from PIL import Image

    from fieldkit.inference import runner
    from fieldkit.web import clip_images as CI
    out = {"slides": [], "still": [], "no_strip": 0, "no_wall": 0, "row_error": []}
    for frames, truth in clips(seed, n_per_class, n_frames=M_MODE_FRAMES, classes=(True, False, POINT)):
        lung = next(r for r in runner.analyse(cine_dataset(frames), registry).results if r.task == "lung")
        where = lung.result.get("sliding", {}).get("m_mode") if lung.assessable else None
        if not where:
            out["no_strip"] += 1
            continue
        png = CI.m_mode_png(CI.clip_of(frames, {"frames": len(frames)}), where["columns"], where["pleura_row"])
        img = np.asarray(Image.open(io.BytesIO(png)))
        step = 2 * CI.M_MODE_MARGIN + len(frames) * CI.M_MODE_FRAME_PX + CI.M_MODE_GAP
        for i, col in enumerate(where["columns"]):
            x = i * step + CI.M_MODE_MARGIN
            strip = img[:, x:x + len(frames) * CI.M_MODE_FRAME_PX:CI.M_MODE_FRAME_PX]
            ratio = m_mode_strip_ratio(strip, truth["pleura_rows"][col])
            out["row_error"].append(abs(where["pleura_row"] - truth["pleura_rows"][col]))
            if np.isnan(ratio):
                out["no_wall"] += 1
            else:
                out["slides" if truth["sliding_columns"][col] else "still"].append(ratio)
    return out


if __name__ == "__main__" and "--m-mode" in sys.argv:
    from fieldkit.config import Config
    from fieldkit.inference.registry import Registry
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    t = m_mode_table(Registry(Config(), data_dir=None), M_MODE_SEED, n)
    print(f"M-mode: {t['no_strip']} clips without a strip, {t['no_wall']} strips without chest wall in view;",
          "ticked row off the true pleura by pct 50/95/100", np.round(np.nanpercentile(t["row_error"], [50, 95, 100]), 1),
          "pixels, NaN (no pleura at the column)", int(np.isnan(t["row_error"]).sum()))
    for truth in ("slides", "still"):
        r = np.array(t[truth])
        print(f"M-mode where the pleura {truth}: {len(r)} strips, ratio pct 0/5/50/95/100",
              np.round(np.percentile(r, [0, 5, 50, 95, 100]), 2),
              f"seashore (> {SEASHORE}) {int((r > SEASHORE).sum())}, barcode (< {BARCODE}) {int((r < BARCODE).sum())}")
elif __name__ == "__main__":
    from fieldkit.config import Config
    from fieldkit.inference import postprocess as post
    from fieldkit.inference.registry import Registry
    reg = Registry(Config(), data_dir=None)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    chosen = tune(reg, TUNE_SEED, n)
    t = chosen.pop("table")
    for truth in (True, False, POINT):
        s = np.array(t[truth]["scores"])
        print("tune", {True: "sliding", False: "no sliding"}.get(truth, truth), "score pct 0/1/5/50/95/99/100:",
              np.round(np.percentile(s, [0, 1, 5, 50, 95, 99, 100]), 3),
              "chest wall change max:", round(float(max(t[truth]["wall"])), 4))
    print("chosen on the tuning seed:", chosen, "in the kit:", {
        "moved": post.SLIDING_MOVED, "present_from": post.SLIDING_PRESENT, "absent_below": post.SLIDING_ABSENT,
        "point_still": post.POINT_STILL})
    print("test seed", TEST_SEED, figures(table(reg, TEST_SEED, n, classes=(True, False, POINT))))
