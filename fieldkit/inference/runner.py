"""One instance in, one analysis out: decode -> sample frames -> gate -> lung / FAST models.

Pure with respect to the store: `analyse(ds, registry, ...)` reads a pydicom Dataset and
returns an `Analysis`; the worker stores it. Every way an input can be unusable ends in a
"not assessable" result with the reason, never an exception:

- no pixel data, pixels that do not decode, frames too small or of an unexpected layout;
- colour-flow Doppler on the frame (the models read greyscale B-mode only);
- most frames are no B-mode image: an M-mode strip, horizontal or vertical stripes
  (`preprocess.not_b_mode`);
- the view gate says the frames are not a lung / FAST view, or not usable (no contact,
  too dark, saturated), or is unsure (below its probability threshold).

A clip whose probe-orientation marker is at the bottom of the frame (the scanner shows it
inverted top to bottom) is set upright before any model reads it, and everything the
analysis gives in image coordinates (rows, the overlay) is given back as the image shows
(`marker`).

Cine frames are sampled: every `policy.frame_stride`-th frame (the power policy: battery
low or box hot), at most `inference.max_frames` (evenly spread), and no further frames
once `inference.time_budget_seconds` is spent. What was skipped and why is recorded.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import marker
from . import postprocess as post
from .preprocess import colour_fraction, not_b_mode, preprocess, to_gray

MIN_SIDE = 64  # smaller frames carry too little to say anything
COLOUR_LIMIT = 0.01  # share of strongly coloured pixels above which a frame counts as colour Doppler
VIEW_SHARE = 0.5  # share of analysed frames that must be the model's view

CLINICAL = ("lung", "fast")
VIEW_OF = {"lung": 0, "fast": 1}
# A view turned on the screen (a quarter turn or upside down) can still pass the gate (a
# turned FAST view did on about 4 frames in 10), and the clinical models would read it as
# if upright. The gate reads an upright view as that view more surely than any turn of it,
# and a turned one less surely than the turn that sets it upright: a clip whose view frames
# read better turned (by TURN_MARGIN) is turned. Orientation does not change within a clip,
# so a few of its view frames are checked (three gate runs each).
TURN_CHECK_FRAMES = 3
TURN_MARGIN = 0.05


@dataclass
class Result:
    """One clinical model's finding for one instance (stored as one findings row)."""
    task: str
    model: dict  # name, version, sha256
    assessable: bool
    reason: str
    # the view/quality gate's mean probability that the frames used are this model's view
    # (lung or FAST): how sure the kit is of the view, NOT of the finding
    view_probability: float
    result: dict
    view: str
    quality: str
    frames: list[int]  # 1-based frame numbers the result rests on
    # a probability of the finding itself; None: the model gives no calibrated one
    finding_probability: float | None = None


@dataclass
class Analysis:
    frames_total: int = 0
    frames_analysed: int = 0
    frame_numbers: list[int] = field(default_factory=list)  # 1-based, analysed
    subsampled: bool = False
    subsample_reasons: list[str] = field(default_factory=list)
    view: str = "unknown"
    quality: str = "unknown"
    gate: dict = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    skipped: str = ""  # set when the instance is not an image at all
    timing_ms: dict = field(default_factory=dict)
    overlay_frame: np.ndarray | None = None  # (H, W, 3) uint8 of the frame the overlay shows
    overlay: dict = field(default_factory=dict)  # what to draw on it
    image_size: tuple[int, int] = (0, 0)
    # where the probe-orientation marker is ("top left", ...), None: none found; a clip
    # whose marker is at the bottom is read set upright (turned_upright)
    orientation_marker: str | None = None
    turned_upright: bool = False


def select_frames(n: int, stride: int, max_frames: int) -> tuple[list[int], list[str]]:
    """0-based frame indices to analyse and why any were left out."""
    reasons = []
    idx = list(range(0, n, max(1, stride)))
    if stride > 1 and n > 1:
        reasons.append(f"every {stride}th frame (power policy)")
    if len(idx) > max_frames > 0:
        pick = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in sorted(set(pick.tolist()))]
        reasons.append(f"{len(idx)} of {n} frames, evenly spread (inference.max_frames={max_frames})")
    return idx, reasons


def _model_id(m) -> dict:
    return {"name": m.name, "version": m.version, "sha256": m.sha256}


def analyse(ds, registry, *, frame_stride: int = 1, power_reasons: tuple[str, ...] = (),
            max_frames: int = 120, time_budget_s: float = 60.0, batch_size: int = 16,
            decode=None, read_marker: bool = True) -> Analysis:
    t0 = time.perf_counter()
    a = Analysis()
    gate = registry.get("gate")
    clinical = {t: registry.get(t) for t in CLINICAL if registry.get(t) is not None}

    def not_assessable(reason: str, view="unknown", quality="unknown") -> Analysis:
        a.results = [Result(t, _model_id(m), False, reason, 0.0, {}, view, quality, a.frame_numbers)
                     for t, m in clinical.items()]
        a.view, a.quality = view, quality
        a.timing_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        return a

    if not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        a.skipped = "the object has no pixel data (not an image)"
        return a
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return not_assessable(f"NumberOfFrames is not a number: {ds.get('NumberOfFrames')!r}")
    a.frames_total = max(1, n)
    if gate is None:
        return not_assessable("no verified view/quality gate model is loaded")
    idx, reasons = select_frames(a.frames_total, frame_stride, max_frames)
    if frame_stride > 1 and power_reasons:
        reasons[0] = f"{reasons[0]}: {'; '.join(power_reasons)}"

    # decode + preprocess (a helper thread), the gate and the lung model (the model thread)
    # and the lung frames' analysis (this thread) as a pipeline, in batches, so a long cine
    # never sits in memory at once
    spec = gate.entry["preprocessing"]
    min_prob = float(gate.thresholds.get("min_prob", 0.6))
    used, probs, keep, odd, turned = [], [], {}, [], []
    t_prep = 0.0
    models = _ModelThread(gate, clinical.get("lung"), min_prob, spec)
    batches = _prepared(ds, idx, batch_size, decode, spec)

    def take(done):  # batches the model thread finished, in order
        for chunk, p, turned_in_batch in done:
            used.extend(chunk)
            probs.append(p)
            turned.extend(turned_in_batch)

    try:
        for item in batches:
            ended = models.settle()
            if ended is not None and ended - t0 > time_budget_s:
                reasons.append(f"time budget of {time_budget_s:g}s reached after {models.submitted} frames")
                break
            try:
                chunk, frames, colour, x, seconds = item
            except LayoutError as exc:
                return not_assessable(str(exc))
            except Exception as exc:  # any codec failure is a reason, not a crash
                return not_assessable(f"pixel data does not decode: {str(exc)[:200]}")
            t_prep += seconds
            if min(frames.shape[1:3]) < MIN_SIDE:
                return not_assessable(f"frames of {frames.shape[1]}x{frames.shape[2]} pixels are too small (< {MIN_SIDE})")
            a.image_size = frames.shape[1:3]
            if colour > COLOUR_LIMIT:
                a.frame_numbers = [i + 1 for i in chunk]
                a.overlay_frame = _rgb(frames[len(frames) // 2])
                return not_assessable(f"colour-flow Doppler on the image ({colour:.0%} of pixels coloured); "
                                      "the models read greyscale B-mode only", view="other", quality="colour Doppler")
            if not models.submitted and read_marker:  # the first frame: the marker does not move within a clip
                a.orientation_marker = marker.find(to_gray(frames[:1])[0])
                a.turned_upright = bool(a.orientation_marker and a.orientation_marker.startswith("bottom"))
            if a.turned_upright:
                frames, x = _upright(frames), _upright(x)
            models.submit(chunk, frames, x)
            odd += not_b_mode(x)  # while the model thread reads the batch
            for j, i in enumerate(chunk):
                keep[i] = (frames[j], x[j])
            if len(keep) > 3 * batch_size:  # hold only what the clinical models may need
                _trim(keep)
            take(models.finished(wait=False))  # and the lung frames of those batches analysed
        take(models.finished(wait=True))
    finally:
        batches.close()
        models.close()
    t_gate = models.gate_seconds
    a.frame_numbers = [i + 1 for i in used]
    a.frames_analysed = len(used)
    a.subsampled = a.frames_analysed < a.frames_total
    a.subsample_reasons = reasons if a.subsampled else []
    why = [w for w in odd if w]
    if len(why) * 2 >= len(odd) > 0:  # most frames are no B-mode image: no model may speak
        return not_assessable(f"{max(set(why), key=why.count)} on {len(why)} of {len(odd)} frames",
                              view="other", quality="not B-mode")
    p = np.concatenate(probs)
    labels = registry.get("gate").entry["labels"]
    decided = np.where(p.max(1) >= min_prob, p.argmax(1), -1)
    names = [labels[d] if d >= 0 else "uncertain" for d in decided]
    if sum(turned) * 2 > len(turned):  # the clip is turned: none of its frames is a view
        views = np.isin(decided, list(VIEW_OF.values()))
        decided[views] = -1
        names = ["turned" if v else nm for v, nm in zip(views, names)]
    counts = {k: names.count(k) for k in sorted(set(names))}
    top = max(counts, key=counts.get)
    a.gate = {"per_frame": [{"frame": f, "label": nm, "p": round(float(p[i].max()), 3)}
                            for i, (f, nm) in enumerate(zip(a.frame_numbers, names))],
              "counts": counts, "model": _model_id(gate)}
    a.view = top if top in ("lung", "fast", "other") else "unknown"
    poor = {k: v for k, v in counts.items() if k in ("no_contact", "too_dark", "saturated")}
    a.quality = max(poor, key=poor.get) if poor and sum(poor.values()) * 2 >= len(names) else "good"
    a.timing_ms.update(decode_preprocess=round(t_prep * 1000, 1), gate=round(t_gate * 1000, 1))

    # the last frames are the ones still in memory; re-decode the rest only when needed
    for task, model in clinical.items():
        want = VIEW_OF[task]
        rows = [i for i, d in enumerate(decided) if d == want]
        share = len(rows) / max(1, len(decided))
        if share < VIEW_SHARE:
            reason = _why_not(task, counts, len(names), min_prob)
            if a.turned_upright:
                reason += (f"; the gate read the clip set upright, as its orientation marker ({a.orientation_marker} "
                           "of the image) asks")
            a.results.append(Result(task, _model_id(model), False, reason, 0.0,
                                    {"view_share": round(share, 3)}, a.view, a.quality, a.frame_numbers))
            continue
        t = time.perf_counter()
        chosen = [used[i] for i in rows]
        conf = float(np.mean(post.view_calibrated(p[rows], gate.entry.get("calibration"))[:, want]))
        numbers, size = [c + 1 for c in chosen], a.image_size
        if task == "lung":  # most frames analysed already, while the gate read the next ones
            missing = [i for i in chosen if i not in models.lung_frames]
            if missing:
                _, x = _gather(ds, missing, keep, decode, model.entry["preprocessing"], spec, a.turned_upright)
                models.lung_frames.update(zip(missing, _lung_frames(
                    model, _ahead(model, x, min(batch_size, PREP_CHUNK)), [i + 1 for i in missing], size, x)))
            result, best, overlay = _lung(model, [models.lung_frames[i] for i in chosen], size)
            frames, _ = _gather(ds, [chosen[best]], keep, decode, model.entry["preprocessing"], spec,
                                a.turned_upright)
            overlay_i = 0
            t -= models.lung_seconds  # its frames analysed while the gate ran count too
        else:
            frames, x = _gather(ds, chosen, keep, decode, model.entry["preprocessing"], spec, a.turned_upright)
            result, overlay_i, overlay = _fast(model, _batched(model, x, batch_size), numbers, size)
        result["view_share"] = round(share, 3)
        if a.orientation_marker:
            result["orientation_marker"] = a.orientation_marker
        if a.turned_upright:
            _as_shown(result, overlay, size[0], x.shape[2])
        a.results.append(Result(task, _model_id(model), True, "", round(conf, 3), result, a.view, a.quality,
                                numbers, result.get("finding_probability")))
        a.overlay_frame, a.overlay = _rgb(_upright(frames[overlay_i][None])[0] if a.turned_upright
                                          else frames[overlay_i]), overlay
        a.timing_ms[task] = round((time.perf_counter() - t) * 1000, 1)
    if a.overlay_frame is None and keep:
        mid = used[len(used) // 2]
        shown = keep[mid][0] if mid in keep else next(iter(keep.values()))[0]
        a.overlay_frame = _rgb(_upright(shown[None])[0] if a.turned_upright else shown)
    a.timing_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
    return a


def _reads_better_turned(gate, x: np.ndarray, p: np.ndarray, min_prob: float, most: int) -> list[bool]:
    """For up to `most` frames of `x` the gate passes as a lung or FAST view (`p`: its
    probabilities): whether a quarter turn either way or a half turn of the frame reads as a
    view more surely than the frame itself (by TURN_MARGIN). Quarter turns only for square
    input."""
    views = list(VIEW_OF.values())
    rows = [j for j in range(len(x)) if p[j].argmax() in views and p[j].max() >= min_prob][:most]
    upright = p[rows][:, views].max(1)
    # a probability is at most 1: a frame read this surely cannot read better turned by the
    # margin, and the gate need not look at it turned (most upright views: about a quarter
    # of a lung clip's gate time)
    open_ = [i for i, a in enumerate(upright) if a + TURN_MARGIN < 1]
    best_turned = np.zeros(len(rows))
    if open_:
        turns = (1, 2, 3) if x.shape[2] == x.shape[3] else (2,)
        batch = np.concatenate([np.rot90(x[[rows[i] for i in open_]], k, axes=(2, 3)) for k in turns])
        q = post.softmax(gate.run(np.ascontiguousarray(batch))[0])[:, views].max(1)
        best_turned[open_] = q.reshape(len(turns), len(open_)).max(0)
    return [bool(b > a + TURN_MARGIN) for a, b in zip(upright, best_turned)]


def _why_not(task: str, counts: dict, n: int, min_prob: float) -> str:
    view = "lung" if task == "lung" else "FAST (abdominal)"
    if counts.get("turned", 0) * 2 >= n:
        return (f"the {view} view seems turned on the screen (the view gate reads it better turned a "
                "quarter or half turn); the models read upright views only")
    parts = ", ".join(f"{k} {v}/{n}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"not a {view} view of usable quality (view/quality gate per frame: {parts}; threshold p>={min_prob:g})"


class LayoutError(ValueError):
    """Decoded frames are not frames x rows x cols x RGB uint8."""


def _decode(ds, indices):
    from ..dicom.frames import decode_frames
    return decode_frames(ds, indices)


def _decode_batch(ds, indices, decode=None, colour_at=-1):
    """(frames, colour share): luma frames by the fast path, or what `decode` gives (RGB).
    `colour_at`: the frame whose colour the fast path checks (see decode.luma_frames)."""
    if decode is None:
        from .decode import luma_frames
        return luma_frames(ds, indices, colour_at)
    frames = decode(ds, indices)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise LayoutError(f"unexpected frame layout {frames.shape} {frames.dtype} (want frames x rows x cols x RGB)")
    return frames, colour_fraction(frames)


PREP_CHUNK = 4  # frames the helper thread decodes + preprocesses at a time


class _Failed:
    """A chunk that did not decode: the consumer sees the exception when it gets there."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __iter__(self):
        raise self.exc


def _prepared(ds, idx, batch_size, decode, spec):
    """Yields (indices, frames, colour share, model input, seconds) batches of at most
    `batch_size` frames, in frame order.

    Frames are decoded and preprocessed in small chunks (PREP_CHUNK frames) by a helper
    thread while the caller runs the model (codecs, Pillow and onnxruntime release the
    GIL; the helper inherits the worker thread's priority). Each batch the caller gets is
    what is ready (at least one chunk), so the model starts after a few frames, not a
    whole batch: the first chunk the caller prepares itself while the helper starts on
    the next. When nothing is ready the caller prepares the next unclaimed chunk itself
    rather than wait: decoding a frame costs about as much as analysing it, so with two
    cores both threads share both kinds of work. The helper runs at most a few batches
    ahead. Colour is checked on the middle frame of every `batch_size` frames, as if
    decoded batch by batch."""
    import threading

    size = max(1, min(PREP_CHUNK, batch_size))
    chunks = [idx[s:s + size] for s in range(0, len(idx), size)]
    probes = {idx[s + len(idx[s:s + batch_size]) // 2] for s in range(0, len(idx), batch_size)}
    ahead = max(2, 2 * batch_size // size)  # chunks the helper may hold ready
    done: dict[int, object] = {}
    claimed = [0]  # next chunk nobody has claimed
    stop = [False]
    cond = threading.Condition()

    def prep(k):
        chunk = chunks[k]
        try:
            t = time.perf_counter()
            at = next((i for i in chunk if i in probes), None)
            frames, colour = _decode_batch(ds, chunk, decode, at)
            x = preprocess(frames, spec) if colour <= COLOUR_LIMIT and min(frames.shape[1:3]) >= MIN_SIDE else None
            item = (chunk, frames, colour, x, time.perf_counter() - t)
        except Exception as exc:
            item = _Failed(exc)
        with cond:
            done[k] = item
            if isinstance(item, _Failed):
                stop[0] = True  # nothing after a chunk that fails is needed
            cond.notify_all()

    def claim(limit):
        """Next chunk number to prepare, or None (call with cond held)."""
        if stop[0] or claimed[0] >= len(chunks) or claimed[0] >= limit:
            return None
        claimed[0] += 1
        return claimed[0] - 1

    nxt = [0]  # next chunk the caller hands on

    def produce():
        while True:
            with cond:
                k = claim(nxt[0] + ahead)
                while k is None and not stop[0] and claimed[0] < len(chunks):
                    cond.wait(0.2)
                    k = claim(nxt[0] + ahead)
            if k is None:
                return
            prep(k)

    helper = threading.Thread(target=produce, name="inference-decode", daemon=True)
    with cond:
        mine = claim(len(chunks))  # the first chunk
    helper.start()
    try:
        if mine is not None:
            prep(mine)
        while nxt[0] < len(chunks):
            with cond:
                first = done.pop(nxt[0], None)
                mine = claim(len(chunks)) if first is None else None
                while first is None and mine is None:
                    cond.wait(0.2)
                    first = done.pop(nxt[0], None)
                    mine = claim(len(chunks)) if first is None else None
            if first is None:
                prep(mine)  # nothing ready: do a share of the decoding here
                continue
            parts = [first]
            with cond:
                nxt[0] += 1
                while not isinstance(first, _Failed) and nxt[0] in done \
                        and not isinstance(done[nxt[0]], _Failed) and _joinable(parts, done[nxt[0]], batch_size):
                    parts.append(done.pop(nxt[0]))
                    nxt[0] += 1
                cond.notify_all()
            yield parts[0] if len(parts) == 1 else _join(parts)
            if isinstance(first, _Failed):
                return
    finally:
        with cond:
            stop[0] = True
            cond.notify_all()
        helper.join()


def _joinable(parts, nxt, batch_size) -> bool:
    """Chunks join one model batch when it stays within batch_size and all passed the
    checks (a chunk that is too small or coloured is handed on alone, with its reason)."""
    return (sum(len(p[0]) for p in parts) + len(nxt[0]) <= batch_size
            and all(p[3] is not None for p in parts) and nxt[3] is not None
            and all(p[1].shape[1:] == nxt[1].shape[1:] for p in parts))


def _join(parts):
    return ([i for p in parts for i in p[0]], np.concatenate([p[1] for p in parts]),
            max(p[2] for p in parts), np.concatenate([p[3] for p in parts]), sum(p[4] for p in parts))


def _upright(a: np.ndarray) -> np.ndarray:
    """Frames (N, H, W[, 3]) or model input (N, 1, H, W) turned top to bottom: a clip the
    scanner shows inverted, set upright for the models (and back again to be shown)."""
    return np.ascontiguousarray(a[:, :, ::-1] if a.ndim == 4 and a.shape[1] == 1 else a[:, ::-1])


def _as_shown(result: dict, overlay: dict, h: int, in_h: int) -> None:
    """A result and its overlay read from frames set upright, given back in the rows of the
    image as stored and shown (inverted top to bottom): rows counted from the other end
    (image rows of h, the sliding check's own in the model's input rows of in_h), the FAST
    mask turned back; the overlay draws below-the-pleura upwards."""
    def row(r, n=h):
        return n - 1 - int(r)
    for fr in result.get("frames", []):
        fr["pleura_row"] = row(fr["pleura_row"])
    if "pleural_line_row" in result:
        result["pleural_line_row"] = row(result["pleural_line_row"])
    sliding = result.get("sliding") or {}
    if sliding.get("pleura_row") is not None:
        sliding["pleura_row"] = row(sliding["pleura_row"], in_h)
    if sliding.get("m_mode"):
        sliding["m_mode"]["pleura_row"] = row(sliding["m_mode"]["pleura_row"])
    if "pleura_row" in overlay:
        overlay["pleura_row"] = row(overlay["pleura_row"])
    if "mask" in overlay:
        overlay["mask"] = np.ascontiguousarray(np.asarray(overlay["mask"])[::-1])
    overlay["upside_down"] = True
    result["turned_upright"] = "read set upright: the orientation marker shows the image inverted top to bottom"


def _rgb(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)


def _trim(keep: dict) -> None:
    for i in list(keep)[:-32]:
        keep.pop(i, None)


def _gather(ds, chosen, keep, decode, spec, gate_spec, upside_down=False):
    """Frames (a list: only one is drawn on, no need to copy them all) and model inputs
    for the chosen indices: from memory when still held (set upright as they were)."""
    missing = [i for i in chosen if i not in keep]
    if missing:
        for start in range(0, len(missing), 16):
            part = missing[start:start + 16]
            fr, _ = _decode_batch(ds, part, decode, None)  # colour was checked on the way in
            fr = _upright(fr) if upside_down else fr
            xs = preprocess(fr, gate_spec)
            for j, i in enumerate(part):
                keep[i] = (fr[j], xs[j])
    frames = [keep[i][0] for i in chosen]
    if spec == gate_spec:
        x = np.stack([keep[i][1] for i in chosen])
    else:
        x = preprocess(np.stack(frames), spec)
    return frames, x


def _ahead(model, x, batch_size):
    """The model's outputs on x batch by batch, each batch run by a helper thread while the
    caller works on the one before: onnxruntime releases the GIL, so the post-processing
    of a batch (most of a lung clip's analysis) overlaps the model on the next, on the
    second core. The helper inherits the worker thread's priority."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="inference-model") as pool:
        pending = [pool.submit(model.run, x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
        try:
            for p in pending:
                yield p.result()
        finally:
            for p in pending:
                p.cancel()


@dataclass
class _Job:
    """A few frames handed to the model thread: `lung` gets the lung model's outputs on
    those it reads as lung views (or None), `done` everything else of the batch."""
    chunk: list[int]
    size: tuple[int, int]
    x: np.ndarray
    lung: Future
    done: Future | None = None
    analysed: bool = False


# lung frames analysed together while the model thread runs: a frame costs about a quarter
# less in a batch of 8 than in one of 4 (the last ones are analysed as soon as they are there)
LUNG_AT_ONCE = 8


class _ModelThread:
    """The gate on each batch, and the lung model on the frames it reads as lung views, run
    on a model thread while the calling thread analyses the lung frames of the batches
    before: onnxruntime releases the GIL, and the lung post-processing (numpy, holding it)
    costs about as much as both models, so the two go on side by side.

    Lung frames are analysed ahead only while the clip so far reads as a lung view (at
    least VIEW_SHARE of its frames), and only when the lung model reads the gate's own
    input (the same preprocessing). `analyse` analyses what is left when the clip turns
    out to be a lung view, and drops what was done ahead when it does not."""

    def __init__(self, gate, lung, min_prob: float, spec: dict):
        from concurrent.futures import ThreadPoolExecutor
        self.gate, self.min_prob = gate, min_prob
        self.lung = lung if lung is not None and lung.entry["preprocessing"] == spec else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="inference-model")
        self._pool.submit(int)  # its thread starts now, while the first frames are decoded
        self._pending: collections.deque[_Job] = collections.deque()
        # the model thread's own count: view frames still to check for a turn, frames gated,
        # frames read as lung views (batches run there one after the other, in order)
        self._turns_left, self._gated, self._lung_views = TURN_CHECK_FRAMES, 0, 0
        self.submitted = 0  # frames handed to the model thread
        self._batches: list[_Job] = []  # the last job of each batch handed over
        self.gate_seconds = self.lung_seconds = 0.0
        self.lung_frames: dict[int, _LungFrame] = {}  # frame index -> its lung analysis

    def submit(self, chunk: list[int], frames: np.ndarray, x: np.ndarray) -> None:
        """Hand over a batch, a few frames at a time (their lung frames are analysed sooner)."""
        for s in range(0, len(chunk), PREP_CHUNK):
            job = _Job(chunk[s:s + PREP_CHUNK], frames.shape[1:3], x[s:s + PREP_CHUNK], Future())
            job.done = self._pool.submit(self._run, job)
            self._pending.append(job)
        self._batches.append(job)
        self.submitted += len(chunk)

    def settle(self) -> float | None:
        """Before the next batch: wait until the batch handed over two batches ago is
        finished (the model thread then has the last one to go on with), analysing lung
        frames meanwhile. When it ended (perf_counter, on the model thread), or None when
        fewer than two were handed over: the time budget is checked against it, the same
        however far the model thread has gone since."""
        if len(self._batches) < 2:
            return None
        last = self._batches[-2]
        while not last.done.done():
            ready = self._ready()
            if self._worth(ready):
                self._analyse(ready)
            else:
                job = next((j for j in self._pending if not (j.analysed or j.lung.done())), None)
                wait_for([f for f in (job and job.lung, last.done) if f is not None], return_when=FIRST_COMPLETED)
        return last.done.result()[3]

    def _worth(self, ready: list[_Job]) -> bool:
        """Whether to analyse these now: LUNG_AT_ONCE lung frames are there (together they
        cost less a frame), or the model thread has run all it was handed."""
        lung = [j.lung.result() for j in ready if j.lung.exception() is None]
        return bool(ready) and (sum(len(r[0]) for r in lung if r is not None) >= LUNG_AT_ONCE
                                or len(lung) < len(ready) or all(j.done.done() for j in self._pending))

    def _ready(self) -> list[_Job]:
        """The batches not yet analysed whose lung model outputs are there (or that failed),
        the first of them onwards: analysed together, their frames cost less."""
        ready = []
        for job in self._pending:
            if not job.analysed:
                if not (job.lung.done() or job.done.done()):
                    break
                ready.append(job)
        return ready

    def _run(self, job: _Job):
        """On the model thread: the gate's probabilities, the lung model on the lung view
        frames (handed over at once), the orientation check of the clip's first
        TURN_CHECK_FRAMES view frames."""
        try:
            x = job.x
            t = time.perf_counter()
            p = post.softmax(self.gate.run(x)[0])
            gate_s = time.perf_counter() - t
            lung = [j for j in range(len(x)) if p[j].max() >= self.min_prob and p[j].argmax() == VIEW_OF["lung"]]
            self._gated, self._lung_views = self._gated + len(x), self._lung_views + len(lung)
            if self.lung is not None and lung and self._lung_views >= VIEW_SHARE * self._gated:
                t = time.perf_counter()
                out = self.lung.run(np.ascontiguousarray(x[lung]))
                job.lung.set_result((lung, out, time.perf_counter() - t))
            else:
                job.lung.set_result(None)
            turned = []
            if self._turns_left > 0:
                t = time.perf_counter()
                turned = _reads_better_turned(self.gate, x, p, self.min_prob, self._turns_left)
                self._turns_left -= len(turned)
                gate_s += time.perf_counter() - t
            return p, turned, gate_s, time.perf_counter()
        except BaseException as exc:
            if not job.lung.done():
                job.lung.set_exception(exc)
            raise

    def finished(self, wait: bool):
        """(frame indices, gate probabilities, orientation checks) of each batch the model
        thread has finished (of every batch when wait), in order; the lung frames of every
        batch whose lung model outputs are there are analysed first."""
        while any(not job.analysed for job in self._pending):
            ready = self._ready()
            if not (wait or self._worth(ready)):
                break
            self._analyse(ready or [next(j for j in self._pending if not j.analysed)])  # (waits for it)
        while self._pending and self._pending[0].analysed and (wait or self._pending[0].done.done()):
            job = self._pending.popleft()
            p, turned, gate_s, _ = job.done.result()
            self.gate_seconds += gate_s
            yield job.chunk, p, turned

    def _analyse(self, jobs: list[_Job]) -> None:
        """The lung frames of these batches, in order, analysed together."""
        ran = []
        for job in jobs:
            wait_for([job.lung, job.done], return_when=FIRST_COMPLETED)
            if not job.lung.done():  # the batch failed before its lung frames were handed over
                job.done.result()
            job.analysed = True
            if job.lung.result() is not None:
                ran.append((job, *job.lung.result()))
        if not ran:
            return
        t = time.perf_counter()
        at = [job.chunk[j] for job, lung, _, _ in ran for j in lung]
        out = [np.concatenate(parts) for parts in zip(*(out for _, _, out, _ in ran))]
        x = np.concatenate([job.x[lung] for job, lung, _, _ in ran])
        self.lung_frames.update(zip(at, _lung_frames(self.lung, [out], [i + 1 for i in at], ran[0][0].size, x)))
        self.lung_seconds += sum(lung_s for _, _, _, lung_s in ran) + time.perf_counter() - t

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _batched(model, x, batch_size):
    """The model's outputs on x, all batches joined."""
    return [np.concatenate(v) for v in zip(*_ahead(model, x, batch_size))]


CLIP_SHARE = 0.3  # a clip shows a finding when this share of its confident frames does


class _LungFrame(NamedTuple):
    """One frame's lung analysis: its entry in the result's "frames", its pattern score, the
    model's column probabilities and pleura-row logits, and the frame as the model saw it."""
    entry: dict
    score: float
    columns: np.ndarray
    pleura: np.ndarray
    image: np.ndarray


def _lung_frames(model, batches, frame_numbers, size, x):
    """`_LungFrame` of each frame of x (its model input; frame_numbers: 1-based) from the
    model's outputs (`batches`: (column logits, pleura-row logits) per batch, in order)."""
    th = model.thresholds
    h, w = size
    in_h = model.entry["input"]["shape"][2]
    k = 0
    for cols, pleura in batches:
        probs = post.sigmoid(cols)
        # the model scores columns at the pleura; a column whose line starts above it or
        # fades is a mimic, not a B-line (kept apart, with the reason): a batch's frames
        # are analysed together
        for pc, pr, fr in zip(probs, pleura, post.lung_frames(probs, pleura, x[k:k + len(probs), 0], th)):
            scale = w / len(pc)
            entry = {"frame": frame_numbers[k], "b_lines": fr["b_lines"], "confluent": fr["confluent"],
                     "columns": [[round(a * scale), round(b * scale)] for a, b in fr["runs"]],
                     "lines_in_columns": fr["lines"],  # close lines scored as one run
                     "not_b_lines": [{"columns": [round(a * scale), round(b * scale)], "why": y}
                                     for (a, b), y in fr["mimics"]],
                     "pleura_row": round(fr["pleura_row"] * h / in_h),
                     "pattern_score": round(fr["score"], 3)}
            yield _LungFrame(entry, fr["score"], pc, pr, x[k])
            k += 1


def _lung(model, done: list, size) -> tuple[dict, int, dict]:
    """The lung result of a clip's frames (`_LungFrame`s, in order)."""
    th = model.thresholds
    h, w = size
    in_h = model.entry["input"]["shape"][2]
    per_frame, scores = [d.entry for d in done], [d.score for d in done]
    probs, rows, x = np.stack([d.columns for d in done]), np.stack([d.pleura for d in done]), np.stack([d.image for d in done])
    frame_numbers = [e["frame"] for e in per_frame]
    counts = [r["b_lines"] for r in per_frame]
    pattern_min = int(th.get("pattern_min_blines", 3))
    # the clip's summary: not the maximum of noisy frames but the frame that a share of
    # the confident frames reach (all frames here passed the gate as this view)
    score, best = post.clip_score(scores, CLIP_SHARE)
    pattern = "B-line pattern" if score >= 0 else "A-line pattern"
    # confluent (lines merged over a wide sector) by the same robust share of frames
    confluent = sum(r["confluent"] for r in per_frame) >= max(1, np.ceil(CLIP_SHARE * len(per_frame)))
    result = {"b_line_counts": counts, "max_b_lines": max(counts), "pattern": pattern, "confluent": bool(confluent),
              "b_lines": counts[best], "summary_frame": per_frame[best]["frame"],
              "pattern_rule": f">= {pattern_min} B-lines in at least {CLIP_SHARE:.0%} of the frames",
              "frames": per_frame,
              "pleural_line_row": int(np.median([r["pleura_row"] for r in per_frame])),
              # "vertical artefacts present, not B-lines": the most in a frame
              "max_vertical_artefacts_not_b_lines": max(len(r["not_b_lines"]) for r in per_frame),
              "column_evidence": [round(float(v), 3) for v in probs[best]]}
    # lung sliding over the same frames, at the model's own pleural row
    sliding = post.lung_sliding(x[:, 0], rows, frame_numbers)
    # where the page's M-mode strip is taken, in image pixels (as the B-line columns; a
    # column's centre)
    in_w = x.shape[-1]
    sliding["m_mode"] = {"columns": [round((c + 0.5) * w / in_w) for c in sliding["columns"]],
                         "pleura_row": round(sliding["pleura_row"] * h / in_h)} if sliding["columns"] else None
    result["sliding"] = sliding
    _probability(result, model, score)
    overlay = {"kind": "lung", "columns": per_frame[best]["columns"], "pleura_row": per_frame[best]["pleura_row"],
               "lines_in_columns": per_frame[best]["lines_in_columns"],
               "frame": per_frame[best]["frame"], "evidence": probs[best].tolist()}
    return result, best, overlay


def _probability(result: dict, model, score: float) -> None:
    """The calibrated probability of the finding (the bundle's signed `calibration`), and
    what it is the probability of; nothing when the bundle carries no calibration."""
    cal = model.entry.get("calibration")
    p = post.calibrated(score, cal)
    if p is not None:
        result["finding_probability"] = round(p, 3)
        result["finding_probability_of"] = str(cal.get("of", ""))


def _fast(model, outs, frame_numbers, size) -> tuple[dict, int, dict]:
    th = model.thresholds
    (logits,) = outs
    h, w = size
    masks = np.stack([post.fluid_mask(l, float(th["pixel"])) for l in logits])
    areas = masks.reshape(len(masks), -1).sum(1)
    min_px = int(th["min_area_px"])
    with_fluid = int((areas >= min_px).sum())
    # present when CLIP_SHARE of the frames show fluid: the same frame gives the probability
    score, _ = post.clip_score([post.fluid_score(l, th) for l in logits], CLIP_SHARE)
    present = score >= 0
    best = int(np.argmax(areas))
    px_per_cell = (h / masks.shape[1]) * (w / masks.shape[2])
    result = {"fluid_present": bool(present), "frames_with_fluid": with_fluid,
              "fluid_area_px": int(round(float(areas[best]) * px_per_cell)),
              "fluid_area_fraction": round(float(areas[best]) / masks[0].size, 4),
              "frame_of_max_area": frame_numbers[best],
              "area_per_frame_px": [int(round(float(v) * px_per_cell)) for v in areas]}
    _probability(result, model, score)
    overlay = {"kind": "fast", "mask": masks[best], "frame": frame_numbers[best]}
    return result, best, overlay


def area_cm2(ds, area_px: int) -> float | None:
    """Physical area when the image carries an ultrasound region calibration in cm."""
    try:
        region = ds.SequenceOfUltrasoundRegions[0]
        if int(region.PhysicalUnitsXDirection) == 3 and int(region.PhysicalUnitsYDirection) == 3:
            return round(area_px * float(region.PhysicalDeltaX) * float(region.PhysicalDeltaY), 2)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    return None


def summary(a: Analysis) -> dict[str, Any]:
    return {"view": a.view, "quality": a.quality, "frames_total": a.frames_total,
            "frames_analysed": a.frames_analysed, "subsampled": a.subsampled,
            "results": {r.task: {"assessable": r.assessable, "reason": r.reason, **r.result} for r in a.results}}
