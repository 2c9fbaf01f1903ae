"""Images for the tablet's player: a cine as one sprite sheet of downscaled frames, a
finding's evidence as a transparent layer to draw over every frame, and a lung finding's
M-mode strip through the pleura."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..dicom.frames import DecodeError, decode_frames
from ..store import instances as catalogue

TILE_MAX_W = 480
MAX_PLAYER_FRAMES = 240


def build_clip(store, row: dict) -> dict:
    ds = catalogue.read_dataset(store, row["sop_instance_uid"])
    n = int(row.get("frames") or 1)
    idx = list(range(n)) if n <= MAX_PLAYER_FRAMES else \
        [int(i) for i in np.linspace(0, n - 1, MAX_PLAYER_FRAMES).round()]
    try:
        frames = decode_frames(ds, idx)
    except DecodeError as exc:
        return {"error": str(exc)}
    return clip_of(frames, row)


def clip_of(frames: np.ndarray, row: dict) -> dict:
    """The player's clip from decoded (N, H, W, 3) frames of the capture `row`: the sprite
    sheet, its tiles as an array (`small`) and their layout (`meta`)."""
    n = int(row.get("frames") or 1)
    h, w = frames.shape[1:3]
    scale = min(1.0, TILE_MAX_W / w)
    tw, th = max(1, int(w * scale)), max(1, int(h * scale))
    cols = max(1, int(np.ceil(np.sqrt(len(frames)))))
    rows_ = int(np.ceil(len(frames) / cols))
    sheet = Image.new("RGB", (cols * tw, rows_ * th))
    small = []
    for i, f in enumerate(frames):
        img = Image.fromarray(np.ascontiguousarray(f), "RGB")
        if scale < 1.0:
            img = img.resize((tw, th), Image.Resampling.BILINEAR)
        small.append(np.asarray(img))
        sheet.paste(img, ((i % cols) * tw, (i // cols) * th))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=82)
    ft = row.get("frame_time_ms")
    try:
        ft = float(ft) if ft else None
    except (TypeError, ValueError):
        ft = None
    if not ft or not (5 <= ft <= 2000):
        ft = 1000.0 / 30
    ft *= (n / len(frames))  # a subsampled long clip keeps its real duration
    return {"sprite": buf.getvalue(), "small": np.stack(small), "meta": {
        "frames": len(frames), "source_frames": n, "frame_time_ms": round(ft, 3), "tile_w": tw, "tile_h": th,
        "cols": cols, "width": int(w), "height": int(h)}}


def evidence_layer(overlay_png: bytes, clip: dict) -> bytes:
    """The overlay image made by inference, minus the frame it was drawn on (the clip frame
    closest to it), as an RGBA PNG the size of the clip's tiles."""
    meta = clip["meta"]
    drawn = Image.open(io.BytesIO(overlay_png)).convert("RGB")
    drawn = np.asarray(drawn.resize((meta["tile_w"], meta["tile_h"]), Image.Resampling.BILINEAR)).astype(np.int16)
    small = clip["small"].astype(np.int16)
    diffs = np.abs(small - drawn[None]).reshape(len(small), -1).mean(axis=1)
    base = small[int(np.argmin(diffs))]
    changed = np.abs(drawn - base).max(axis=2) > 24
    rgba = np.zeros(drawn.shape[:2] + (4,), np.uint8)
    rgba[..., :3] = np.clip(drawn, 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(changed, 235, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


M_MODE_FRAME_PX = 4  # each frame this many pixels wide: a 2-3 s clip spans a tablet's width
M_MODE_MARGIN = 8  # dark margin at both ends of a strip, where the pleural row is ticked
M_MODE_GAP = 12  # between the strips of the two sides of a lung point
TICK = 255  # the tick's grey (the strip itself is the image's greys)


def m_mode_png(clip: dict, columns: list[int], pleura_row: int) -> bytes:
    """The M-mode strip of a clip: one image column (in the capture's pixels) taken in every
    frame, time running left to right, each frame M_MODE_FRAME_PX wide, the pleural row
    ticked in the margins either side (never over the texture). Several columns (the two
    sides of a lung point) give strips side by side, left to right as in the image. A grey
    PNG, made in memory."""
    meta, small = clip["meta"], clip["small"]
    th, tw = small.shape[1:3]
    row = min(th - 1, max(0, int(pleura_row * th / meta["height"])))
    edge = np.zeros((th, M_MODE_MARGIN), np.uint8)
    edge[max(0, row - 1):row + 1, 1:M_MODE_MARGIN - 1] = TICK
    parts = []
    for i, col in enumerate(columns):
        c = min(tw - 1, max(0, int(col * tw / meta["width"])))
        line = small[:, :, c].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (time, depth)
        strip = np.repeat(np.clip(line.T + 0.5, 0, 255).astype(np.uint8), M_MODE_FRAME_PX, axis=1)
        if i:
            parts.append(np.zeros((th, M_MODE_GAP), np.uint8))
        parts += [edge, strip, edge]
    buf = io.BytesIO()
    Image.fromarray(np.hstack(parts), "L").save(buf, "PNG")
    return buf.getvalue()
