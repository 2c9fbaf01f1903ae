"""A small, physics-inspired B-mode ultrasound simulator (numpy only).

No real lung or FAST data can be had for training, so the reference models learn from
this. It is deliberately simple but follows how a scanner forms an image:

1. An *echogenicity map* is drawn in the beam domain (depth x scan line): tissue layers,
   organs, fluid (anechoic), bone (bright surface, acoustic shadow), the pleura and its
   artefacts (A-line reverberations at multiples of the pleural depth, B-lines: bright
   vertical ring-down artefacts from the pleura to the bottom of the image).
2. *Speckle*: the map multiplies fully developed speckle (the intensity of a complex
   Gaussian field smoothed by an axial/lateral point-spread function, so grains are
   elongated laterally as on a real scanner).
3. *Depth gain*: attenuation exp(-2 a f z) partly compensated by time-gain compensation,
   then log compression to a dynamic range and an overall gain; too little gain gives a
   "too dark" frame, too much a "saturated" one.
4. *Scan conversion* to a display frame for a convex, phased (sector) or linear probe,
   with black outside the field of view and vendor-style text clutter in the margins.

Every generator takes a `numpy.random.Generator` and returns a `Sample`: the display
frame (H, W, 3) uint8 RGB plus its ground truth in display coordinates. Runtime is a few
milliseconds per frame, so tests can simulate fresh held-out sets.

Classes of the view/quality gate (index = label):
    0 lung, 1 fast (abdominal), 2 other, 3 no_contact, 4 too_dark, 5 saturated
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GATE_CLASSES = ("lung", "fast", "other", "no_contact", "too_dark", "saturated")
BEAM_DEPTH = 160  # samples along a scan line
BEAM_LINES = 128  # scan lines
DISPLAY_SIZES = ((240, 320), (256, 256), (300, 400), (480, 640))


@dataclass
class Geometry:
    kind: str  # convex | phased | linear
    height: int
    width: int
    apex_x: float
    apex_y: float
    r0: float  # radius of the probe face (0 for phased)
    depth_px: float  # imaging depth in display pixels
    half_angle: float  # radians (convex/phased)
    half_width: float  # display pixels (linear)

    def beam_index(self):
        """Per display pixel: (depth sample, scan line) indices and an in-view mask."""
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        if self.kind == "linear":
            d = (yy - self.apex_y) / self.depth_px
            l = (xx - (self.apex_x - self.half_width)) / (2 * self.half_width)
        else:
            dx, dy = xx - self.apex_x, yy - self.apex_y
            r = np.sqrt(dx * dx + dy * dy)
            theta = np.arctan2(dx, dy)
            d = (r - self.r0) / self.depth_px
            l = (theta + self.half_angle) / (2 * self.half_angle)
        inside = (d >= 0) & (d < 1) & (l >= 0) & (l < 1)
        di = np.clip((d * BEAM_DEPTH).astype(np.int32), 0, BEAM_DEPTH - 1)
        li = np.clip((l * BEAM_LINES).astype(np.int32), 0, BEAM_LINES - 1)
        return di, li, inside

    def to_display(self, depth_frac: float, line_frac: float) -> tuple[float, float]:
        """(row, col) in the display of a beam-domain point."""
        if self.kind == "linear":
            return (self.apex_y + depth_frac * self.depth_px,
                    self.apex_x - self.half_width + line_frac * 2 * self.half_width)
        theta = (line_frac * 2 - 1) * self.half_angle
        r = self.r0 + depth_frac * self.depth_px
        return self.apex_y + r * np.cos(theta), self.apex_x + r * np.sin(theta)


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    gate: int  # index into GATE_CLASSES
    pleura_row: float = -1.0  # lung: display row of the pleural line at the centre line
    bline_cols: list = field(default_factory=list)  # lung: (col_start, col_end) display columns
    fluid_mask: np.ndarray | None = None  # fast: (H, W) bool
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- geometry

def random_geometry(rng, kind: str, size=None) -> Geometry:
    h, w = size or DISPLAY_SIZES[rng.integers(len(DISPLAY_SIZES))]
    top = h * rng.uniform(0.04, 0.12)
    if kind == "linear":
        depth = h * rng.uniform(0.75, 0.9)
        return Geometry("linear", h, w, w / 2 + rng.uniform(-0.05, 0.05) * w, top, 0.0, depth,
                        0.0, w * rng.uniform(0.25, 0.38))
    if kind == "phased":
        depth = h * rng.uniform(0.8, 0.92)
        return Geometry("phased", h, w, w / 2 + rng.uniform(-0.04, 0.04) * w, top, 0.0, depth,
                        np.radians(rng.uniform(36, 45)), 0.0)
    r0 = h * rng.uniform(0.12, 0.3)
    depth = h * rng.uniform(0.7, 0.85)
    return Geometry("convex", h, w, w / 2 + rng.uniform(-0.04, 0.04) * w, top - r0, r0, depth,
                    np.radians(rng.uniform(28, 40)), 0.0)


# ------------------------------------------------------------------------- primitives

def _smooth(a, axis, k):
    """Box-smooth along one axis with a window of k samples (cheap PSF)."""
    if k <= 1:
        return a
    c = np.cumsum(a, axis=axis)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 0)
    c = np.pad(c, pad)
    n = a.shape[axis]
    lo = np.clip(np.arange(n) - k // 2, 0, n)
    hi = np.clip(np.arange(n) + (k - k // 2), 0, n)
    out = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis))
    shape = [1] * a.ndim
    shape[axis] = n
    return out / (hi - lo).reshape(shape)


def speckle(rng, shape=(BEAM_DEPTH, BEAM_LINES), axial=2, lateral=3):
    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    z = _smooth(_smooth(z, 0, axial), 1, lateral)
    s = np.abs(z) ** 2
    return s / s.mean()


def texture(rng, scale, shape=(BEAM_DEPTH, BEAM_LINES)):
    """Smooth random field around 1 (tissue inhomogeneity)."""
    t = rng.standard_normal(shape)
    k = max(2, int(scale))
    t = _smooth(_smooth(t, 0, k), 1, k)
    t = (t - t.mean()) / (t.std() + 1e-6)
    return np.exp(0.35 * t)


def _grid():
    d = np.linspace(0, 1, BEAM_DEPTH, dtype=np.float64)[:, None]
    l = np.linspace(0, 1, BEAM_LINES, dtype=np.float64)[None, :]
    return d, l


def ellipse(cd, cl, rd, rl, angle=0.0):
    d, l = _grid()
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((d - cd) * ca + (l - cl) * sa) / rd
    v = (-(d - cd) * sa + (l - cl) * ca) / rl
    return u * u + v * v


def shadow_below(mask):
    """True below the first True of each scan line (acoustic shadow of bone/gas)."""
    return np.maximum.accumulate(mask, axis=0)


# ----------------------------------------------------------------------- image formation

def form_image(rng, echo, geom: Geometry, gain_db=None, clutter=True, noise_floor=1e-3):
    """Echogenicity map -> speckled, attenuated, log-compressed, scan-converted RGB frame."""
    d, _ = _grid()
    atten = np.exp(-rng.uniform(1.0, 2.5) * d)  # residual after TGC
    env = echo * speckle(rng) * atten + noise_floor * speckle(rng)
    dr = rng.uniform(45, 60)
    if gain_db is None:
        gain_db = rng.uniform(-4, 4)
    db = 10 * np.log10(env + 1e-9) + gain_db
    beam = np.clip((db + 0.5 * dr + 5) / dr, 0, 1) * 255  # soft tissue lands mid-grey
    di, li, inside = geom.beam_index()
    gray = np.where(inside, beam[di, li], 0).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if clutter:
        add_clutter(rng, rgb, geom)
    return rgb


def add_clutter(rng, rgb, geom):
    """Vendor UI: text blocks in the margins, a depth scale, an orientation marker."""
    h, w, _ = rgb.shape
    for _ in range(rng.integers(2, 9)):
        th = int(rng.integers(5, 10) * h / 240)
        tw = int(rng.integers(15, 60) * w / 320)
        y = int(rng.integers(0, max(1, h - th)))
        x = int(rng.choice([rng.integers(0, max(1, w // 6)), rng.integers(max(1, w - w // 5 - tw), max(2, w - tw))]))
        block = rng.random((th, tw)) < 0.45
        val = int(rng.integers(150, 256))
        rgb[y:y + th, x:x + tw][block] = val
    # depth scale dots
    x = int(min(w - 3, geom.apex_x + geom.half_width + w * 0.3)) if geom.kind == "linear" else int(w * rng.uniform(0.8, 0.95))
    for y in np.linspace(geom.apex_y + geom.r0 + 2, min(h - 2, geom.apex_y + geom.r0 + geom.depth_px), 6):
        yy = int(np.clip(y, 0, h - 2))
        rgb[yy:yy + 2, x:x + 2] = 200
    if rng.random() < 0.5:  # orientation marker, sometimes coloured
        y, x = int(h * 0.05), int(w * rng.uniform(0.2, 0.8))
        rgb[y:y + 3, x:x + 3] = rng.integers(100, 256, 3)


MARKER_CORNERS = ("top left", "top right", "bottom left", "bottom right")


def add_orientation_marker(rgb, geom: Geometry, grey: int = 235):
    """The probe-orientation marker as scanners draw it: a bright disc on black beside the
    left end of the imaging area's near field (the probe notch's side, by the usual
    convention), clear of the vendor text around it. Draws from no random stream, so a
    seeded frame is the same frame with its marker. Returns rgb (changed in place)."""
    h, w, _ = rgb.shape
    r = max(3, round(0.022 * w))
    row, _ = geom.to_display(0.0, 0.0)  # the near field's left end
    cy = int(np.clip(round(row) + (r if geom.kind == "linear" else 0), r + 1, h - r - 2))
    _, _, inside = geom.beam_index()
    cols = np.flatnonzero(inside[cy - r:cy + r + 1].any(axis=0))  # the imaging area beside it
    cx = int(np.clip((cols.min() if len(cols) else w // 2) - 2 * r - 2, r + 1, w - r - 2))  # r + 2 apart
    yy, xx = np.mgrid[0:h, 0:w]
    clear = (np.abs(yy - cy) <= 3 * r) & (np.abs(xx - cx) <= 3 * r) & ~inside
    rgb[clear] = 0
    rgb[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~inside] = grey
    return rgb


def as_shown(frames, corner: str):
    """Frames (..., H, W, 3) drawn with the marker top left, as a scanner shows them with its
    marker at `corner`: mirrored left to right (top right), inverted top to bottom (the
    scanner's invert setting: bottom left), or both (bottom right)."""
    if corner not in MARKER_CORNERS:
        raise ValueError(f"corner must be one of {MARKER_CORNERS}, not {corner!r}")
    out = frames
    if corner.startswith("bottom"):
        out = np.flip(out, axis=-3)
    if corner.endswith("right"):
        out = np.flip(out, axis=-2)
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- lung

MIMICS = ("e_line", "needle", "z_line", "shadow", "a_line", "reverb", "dead_element", "emphysema")


def add_mimic(rng, echo, kind: str, p: float, ribs):
    """A vertical artefact that is NOT a B-line (a B-line arises from the pleural line and
    reaches the bottom of the screen without fading):

    e_line: subcutaneous air, a laser-like line from above the pleura to the bottom;
    needle: a bright shaft through the chest wall with ring-down below its tip;
    z_line: a short comet tail from the pleura that fades within a few millimetres;
    shadow: a dark band below a strong reflector (no line at all);
    a_line: nothing added (the A-line control);
    reverb: an instrument lying across the beam in the chest wall, its echo repeated at
        equal steps below it (horizontal bars stacked down one sector);
    dead_element: a failed transducer element, a dark stripe from the probe face down;
    emphysema: subcutaneous air, a bright irregular band in the chest wall with several
        E-lines below it that hide the pleura.
    Returns the echo map and the artefact's centre (fraction of the scan lines) or None."""
    d, l = _grid()
    if kind == "a_line":
        return echo, None
    for _ in range(50):  # keep clear of ribs, where the pleura is not seen
        c = rng.uniform(0.15, 0.85)
        if not any(abs(c - rc) < rh + 0.04 for rc, rh in ribs):
            break
    wdt = rng.uniform(0.008, 0.02)
    prof = np.exp(-((l - c) / wdt) ** 2)
    strength = rng.uniform(1.0, 2.5)
    if kind == "e_line":
        start = rng.uniform(0.03, 0.6 * p)
        return np.where(d > start, echo * (1 - 0.8 * prof) + strength * prof, echo), c
    if kind == "needle":
        tip = rng.uniform(0.3 * p, 0.85 * p)
        shaft = (d <= tip) * 3.0 * np.exp(-((l - c) / 0.006) ** 2)
        ring = (d > tip) * strength * (0.6 + 0.4 * np.cos((d - tip) * 2 * np.pi / 0.02) ** 2)
        return echo * (1 - 0.8 * prof * (d > tip)) + shaft + ring * prof, c
    if kind == "z_line":
        fade = rng.uniform(0.03, 0.1)
        tail = (d > p) * strength * np.exp(-(d - p) / fade)
        return echo + tail * prof, c
    if kind == "shadow":
        top = rng.uniform(0.02, p)
        half = rng.uniform(0.02, 0.06)
        span = np.abs(l - c) < half
        echo = np.where(span & (np.abs(d - top) < 0.006), 2.5, echo)
        return np.where(span & (d > top + 0.006), 0.01, echo), c
    if kind == "reverb":
        top, step = rng.uniform(0.05, 0.7 * p), rng.uniform(0.03, 0.07)
        half = rng.uniform(0.04, 0.12)
        span = np.abs(l - c) < half
        bars = sum(strength * 0.8 ** k * np.exp(-((d - top - k * step) / 0.006) ** 2) for k in range(int((1 - top) / step)))
        return echo + span * bars, c
    if kind == "dead_element":
        return echo * (1 - 0.97 * np.exp(-((l - c) / 0.006) ** 2)), c
    if kind == "emphysema":
        top = rng.uniform(0.03, 0.5 * p)
        half = rng.uniform(0.1, 0.3)
        span = np.abs(l - c) < half
        foci = (rng.random(echo.shape) < 0.08) * 3.0 * span * (np.abs(d - top) < 0.02)
        echo = np.where(span & (d > top + 0.02), echo * 0.3, echo) + foci
        for cc in c + rng.uniform(-half, half, rng.integers(2, 6)):
            pr = np.exp(-((l - cc) / rng.uniform(0.006, 0.015)) ** 2)
            echo = np.where(d > top, echo * (1 - 0.8 * pr) + strength * pr * span, echo)
        return echo, c
    raise ValueError(f"unknown mimic {kind!r} (one of {', '.join(MIMICS)})")


CONFLUENT_SPAN = (0.3, 0.55)  # share of the scan lines confluent B-lines cover (white lung)


def lung_echo(rng, n_blines=None, consolidation=None, mimic=None, confluent=False):
    """Beam-domain lung: chest wall, ribs, pleura, A-lines or B-lines, consolidation, and
    optionally one B-line mimic (see `add_mimic`). confluent: B-lines merged into one bright
    band over a wide sector (white lung), with n_blines separate lines beside it."""
    d, l = _grid()
    p = rng.uniform(0.18, 0.4)  # pleural depth (fraction of imaging depth)
    echo = np.full((BEAM_DEPTH, BEAM_LINES), 0.25) * texture(rng, 8)
    # chest wall: muscle fascia layers
    for fd in rng.uniform(0.03, p - 0.03, rng.integers(1, 4)):
        echo += 1.2 * np.exp(-((d - fd) / 0.006) ** 2)
    # ribs: bright curved cap at or just above the pleural depth, then shadow
    ribs = []
    for _ in range(rng.integers(0, 3)):
        c, half = rng.uniform(0.05, 0.95), rng.uniform(0.06, 0.12)
        ribs.append((c, half))
    below = d > p
    air = below.astype(float)
    echo = np.where(below, 0.02 * texture(rng, 12), echo)
    pleura = 2.5 * np.exp(-((d - p) / 0.007) ** 2)
    sliding = texture(rng, 3)  # lung sliding gives a shimmering, granular pleura
    echo += pleura * sliding
    if n_blines is None:
        n_blines = int(rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]))
    if confluent:  # the band lies between the ribs, where the pleura is seen
        ribs = [r for r in ribs if r[0] < 0.2 or r[0] > 0.8][:1]
    # A-lines: reverberations of the pleura at multiples of its depth, fading with depth
    a_strength = rng.uniform(0.5, 1.2) * (1.0 if n_blines <= 2 and not confluent else rng.uniform(0.1, 0.6))
    k = 2
    while k * p < 1:
        echo += air * a_strength * 0.7 ** (k - 2) * np.exp(-((d - k * p) / 0.008) ** 2)
        k += 1
    # B-lines: laser-like vertical artefacts from the pleura to the bottom, erasing A-lines
    blines = []
    if confluent:
        half = rng.uniform(*CONFLUENT_SPAN) / 2
        c = rng.uniform(0.5 - (0.44 - half), 0.5 + (0.44 - half))
        blines.append((c, half))
        ribs = [r for r in ribs if abs(r[0] - c) > r[1] + half]
        n_blines += 1
    lo, hi = 0.06, 0.94
    tries = 0
    while len(blines) < n_blines and tries < 200:
        tries += 1
        c = rng.uniform(lo, hi)
        wdt = rng.uniform(0.008, 0.025)
        if any(abs(c - b[0]) < (wdt + b[1]) + 0.04 for b in blines):
            continue
        if any(abs(c - rc) < rh for rc, rh in ribs):
            continue  # under a rib, the pleura is not seen
        blines.append((c, wdt))
    for c, wdt in blines:
        prof = np.exp(-((l - c) / wdt) ** 2)
        if wdt > 0.1:  # confluent: a flat-topped band, its edges as soft as a line's
            prof = np.exp(-(np.maximum(0, np.abs(l - c) - wdt + 0.015) / 0.015) ** 2)
        strength = rng.uniform(1.0, 2.5)
        echo = np.where(below, echo * (1 - 0.8 * prof) + air * strength * prof, echo)
    if consolidation is None:
        consolidation = rng.random() < 0.15
    if consolidation:
        c, wl = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
        depth = rng.uniform(0.1, 0.3)
        region = below & (np.abs(l - c) < wl) & (d < p + depth * (1 - ((l - c) / wl) ** 2))
        tissue = 0.35 * texture(rng, 6)
        bronchi = (rng.random(echo.shape) < 0.01) * 3.0
        echo = np.where(region, tissue + bronchi, echo)
    if mimic is not None:  # one to four of them, as subcutaneous air or comet tails come
        for _ in range(rng.integers(1, 5)):
            echo, _ = add_mimic(rng, echo, mimic, p, ribs)
    # rib shadows last: nothing below the rib surface shows
    for c, half in ribs:
        span = np.abs(l - c) < half
        rd = p - rng.uniform(0.0, 0.04)
        cap = span & (np.abs(d - rd - 0.03 * ((l - c) / half) ** 2) < 0.008)
        echo = np.where(span & (d > rd), 0.01, echo)
        echo = np.where(cap, 3.0, echo)
    return echo, p, blines, ribs


def simulate_lung(rng, n_blines=None, geom=None, gain_db=None, consolidation=None, mimic=None,
                  confluent=False) -> Sample:
    if geom is None:
        geom = random_geometry(rng, "linear" if rng.random() < 0.5 else "convex")
    echo, p, blines, ribs = lung_echo(rng, n_blines, consolidation, mimic, confluent)
    img = form_image(rng, echo, geom, gain_db)
    row = geom.to_display(p, 0.5)[0]
    cols = []
    for c, wdt in blines:
        x0 = geom.to_display(p, max(0.0, c - wdt))[1]
        x1 = geom.to_display(p, min(1.0, c + wdt))[1]
        cols.append((float(min(x0, x1)), float(max(x0, x1))))
    return Sample(img, 0, pleura_row=float(row), bline_cols=sorted(cols),
                  params={"n_blines": len(blines), "pleura_depth": p, "ribs": len(ribs), "probe": geom.kind,
                          "mimic": mimic, "confluent": bool(confluent)})


def simulate_lung_cine(rng, n_frames=20, n_blines=3, size=(240, 320), mimic=None, probe="convex", confluent=False,
                       marker=False):
    """A short lung clip: the same anatomy and B-lines (or mimic) in every frame (a probe
    held still), with fresh electronic noise per frame; marker: the probe-orientation
    marker drawn top left (`add_orientation_marker`). Returns (frames (n, H, W, 3) uint8, [Sample])."""
    geom = random_geometry(rng, probe, size)
    seed = int(rng.integers(2**31))
    frames, truth = [], []
    for i in range(n_frames):
        s = simulate_lung(np.random.default_rng(seed), n_blines=n_blines, geom=geom, gain_db=0.0,
                          consolidation=False, mimic=mimic, confluent=confluent)
        noise = rng.normal(0, 2.0, s.image.shape[:2])[:, :, None]
        img = np.where(s.image > 0, np.clip(s.image + noise, 1, 255), 0).astype(np.uint8)
        frames.append(add_orientation_marker(img, geom) if marker else img)
        truth.append(s)
    return np.stack(frames), truth


def _shift(img, dy: float, dx: float):
    """A display frame moved by (dy, dx) pixels, fractional by bilinear weights (the probe
    moved on the chest: everything in the image moves together; it wraps at the edges, which
    a drift of a few pixels leaves in the black margins)."""
    out = np.zeros(img.shape, np.float32)
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    for sy, wy in ((iy, 1 - fy), (iy + 1, fy)):
        for sx, wx in ((ix, 1 - fx), (ix + 1, fx)):
            if wy * wx > 0:
                out += wy * wx * np.roll(img, (sy, sx), axis=(0, 1))
    return out


def simulate_sliding_cine(rng, sliding: bool, n_frames=8, size=(240, 320), probe=None, motion=0.0,
                          n_blines=None, gain_db=None, noise_sd=None, lung_point=False):
    """A lung clip for lung sliding (the sign that excludes a pneumothorax under the probe).

    The anatomy of `lung_echo` is drawn once and held still (a probe held on the chest: the
    chest wall's speckle is the same in every frame, only electronic noise changes). With
    `sliding`, the visceral pleura moves to and fro under the parietal one with breathing: the
    pleural line's granular texture shifts sideways and the speckle at and below it
    decorrelates from frame to frame (the shimmer), between the ribs. Without it (air in the
    pleural space) nothing below the pleura changes either. `lung_point`: the edge of a
    pneumothorax under the probe, sliding on one side of a random line (30-70 % of the
    width) and none on the other (`sliding` is then ignored). `motion`: display pixels per
    frame the whole image drifts (a random walk), the probe moving on the chest.
    Returns (frames (n, H, W, 3) uint8, truth dict: sliding (everywhere), lung_point (the
    line, a fraction of the width, or None), pleura_row (display, at the centre line),
    pleura_rows and sliding_columns (per display column: the pleura's row, NaN out of view,
    and whether it slides there), params)."""
    probe = probe or ("linear" if rng.random() < 0.5 else "convex")
    geom = random_geometry(rng, probe, size)
    if n_blines is None:
        n_blines = int(rng.choice([0, 0, 1, 2]))
    echo, p, _, ribs = lung_echo(rng, n_blines, consolidation=False)
    d, l = _grid()
    between_ribs = ~np.any([np.abs(l - c) < h for c, h in ribs], axis=0) if ribs else np.ones_like(l, bool)
    moving = (d > p - 0.015) & between_ribs  # the pleura and the lung below it
    point = None
    if lung_point:
        point = float(rng.uniform(0.3, 0.7))
        moving = moving & ((l < point) if rng.random() < 0.5 else (l >= point))
        sliding = True
    gain_db = rng.uniform(-4, 4) if gain_db is None else gain_db
    noise_sd = rng.uniform(1.0, 8.0) if noise_sd is None else noise_sd
    atten = np.exp(-rng.uniform(1.0, 2.5) * d)
    dr = rng.uniform(45, 60)
    amp = rng.uniform(0.3, 3.0)  # peak lateral excursion of the pleura, scan lines
    period, phase = rng.uniform(6, 16), rng.uniform(0, 2 * np.pi)  # frames per breath
    keep = rng.uniform(0.2, 0.9)  # share of the speckle that keeps its pattern between frames
    grain = texture(rng, 3, (BEAM_DEPTH, 3 * BEAM_LINES))  # the pleura's granular texture, wider
    z0 = rng.standard_normal(echo.shape) + 1j * rng.standard_normal(echo.shape)
    floor = 1e-3 * speckle(rng)
    norm = float(np.mean(np.abs(_smooth(_smooth(z0, 0, 2), 1, 3)) ** 2))  # as `speckle`: mean 1
    clutter_seed = int(rng.integers(2**31))
    di, li, inside = geom.beam_index()
    walk = np.cumsum(rng.normal(0, motion, (n_frames, 2)), axis=0) if motion > 0 else np.zeros((n_frames, 2))
    frames = []
    for t in range(n_frames):
        e, z = echo, z0
        if sliding:
            off = int(round(amp * np.sin(2 * np.pi * t / period + phase))) + BEAM_LINES
            e = np.where(moving, echo * grain[:, off:off + BEAM_LINES], echo)
            fresh = rng.standard_normal(echo.shape) + 1j * rng.standard_normal(echo.shape)
            z = np.where(moving, np.sqrt(keep) * z0 + np.sqrt(1 - keep) * fresh, z0)
        spk = np.abs(_smooth(_smooth(z, 0, 2), 1, 3)) ** 2
        env = e * spk / norm * atten + floor
        db = 10 * np.log10(env + 1e-9) + gain_db
        beam = np.clip((db + 0.5 * dr + 5) / dr, 0, 1) * 255
        img = np.where(inside, beam[di, li], 0).astype(np.float32)
        if motion > 0:
            img = _shift(img, *walk[t])
        img = np.where(img > 0, np.clip(img + rng.normal(0, noise_sd, img.shape), 1, 255), 0)
        rgb = np.repeat(img.astype(np.uint8)[:, :, None], 3, axis=2)
        add_clutter(np.random.default_rng(clutter_seed), rgb, geom)
        frames.append(rgb)
    row = geom.to_display(p, 0.5)[0]
    # per display column: the pleura's row there (NaN where it is out of view) and whether it
    # slides there (between the ribs, on the sliding side of a lung point)
    ls = np.linspace(0, 1, 4 * geom.width, endpoint=False)
    rows_at, cols_at = (np.broadcast_to(v, ls.shape) for v in geom.to_display(p, ls))
    x = np.arange(geom.width)
    line_at = np.interp(x, cols_at, ls, left=np.nan, right=np.nan)
    ok = ~np.isnan(line_at)
    pleura_rows = np.where(ok, np.interp(x, cols_at, rows_at), np.nan)
    di = min(BEAM_DEPTH - 1, int(p * BEAM_DEPTH))
    li = np.clip((np.nan_to_num(line_at) * BEAM_LINES).astype(int), 0, BEAM_LINES - 1)
    slides_at = ok & moving[di, li] if sliding else np.zeros(geom.width, bool)
    return np.stack(frames), {"sliding": bool(sliding and point is None), "lung_point": point,
                              "pleura_row": float(row), "pleura_rows": pleura_rows, "sliding_columns": slides_at,
                              "params": {"probe": geom.kind, "pleura_depth": p, "ribs": len(ribs),
                                         "n_blines": n_blines, "gain_db": gain_db, "noise_sd": noise_sd,
                                         "motion": motion, "keep": keep, "amp": amp}}


def m_mode(frames, col=None):
    """An M-mode strip from a cine: one display column (the centre by default) over time,
    (H, n_frames) grey. Seashore when the lung slides (steady lines above the pleura, sand
    below it); barcode or stratosphere when it does not (lines all the way down)."""
    g = frames.astype(np.float32)
    if g.ndim == 4:
        g = g @ np.array([0.299, 0.587, 0.114], np.float32)
    col = g.shape[2] // 2 if col is None else col
    return np.clip(g[:, :, col].T + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- FAST

def fast_echo(rng, fluid=None):
    """Beam-domain abdomen: liver/spleen parenchyma, kidney, or bladder; optional fluid."""
    d, l = _grid()
    window = rng.choice(["ruq", "luq", "pelvis"])
    echo = 0.3 * texture(rng, 10)
    wall = rng.uniform(0.06, 0.14)
    for fd in rng.uniform(0.02, wall, rng.integers(1, 3)):
        echo += 1.0 * np.exp(-((d - fd) / 0.006) ** 2)
    fluid_mask = np.zeros(echo.shape, bool)
    if fluid is None:
        fluid = rng.random() < 0.5
    if window in ("ruq", "luq"):
        # liver (RUQ) or spleen (LUQ): homogeneous parenchyma
        organ = (d > wall) & (ellipse(0.45, rng.uniform(0.35, 0.6), 0.45, 0.6) < 1)
        echo = np.where(organ, (0.55 if window == "ruq" else 0.5) * texture(rng, 5), echo)
        # kidney: hypoechoic cortex ellipse with a bright central sinus
        kd, kl = rng.uniform(0.55, 0.7), rng.uniform(0.4, 0.65)
        ang = rng.uniform(-0.6, 0.6)
        kq = ellipse(kd, kl, 0.16, 0.28, ang)
        echo = np.where(kq < 1, 0.25 * texture(rng, 4), echo)
        echo = np.where(kq < 0.3, 1.4 * texture(rng, 3), echo)
        # diaphragm: bright curve deep to the organ
        dia = np.abs(d - (0.85 - 0.25 * (l - 0.5) ** 2)) < 0.012
        echo = np.where(dia, 2.5, echo)
        if fluid:  # Morison's pouch / splenorenal recess: anechoic crescent around the kidney
            thick = rng.uniform(0.06, 0.25)
            outer = ellipse(kd, kl, 0.16 + thick * 0.3, 0.28 + thick * 0.4, ang)
            arc = (outer < 1) & (kq >= 1) & (d < kd + rng.uniform(-0.05, 0.1))
            fluid_mask = arc
    else:
        # pelvis: bladder (anechoic, smooth wall, posterior enhancement) and bowel
        bd, bl = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.6)
        bq = ellipse(bd, bl, rng.uniform(0.15, 0.25), rng.uniform(0.2, 0.32))
        echo = np.where((bq < 1.25) & (bq >= 1), 1.8, echo)
        below = shadow_below(bq < 1) & (bq >= 1.25)
        echo = np.where(below, echo * 1.8, echo)
        bladder = bq < 1
        echo = np.where(bladder, 0.004, echo)
        for _ in range(rng.integers(1, 4)):  # bowel loops: bright rings with gas shadow
            q = ellipse(rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.9), 0.05, 0.08)
            ring = (q < 1) & (q > 0.5) & (bq >= 1.3)
            echo = np.where(ring, 1.6, echo)
        if fluid:  # free fluid in the pouch behind/beside the bladder: sharp-cornered triangle
            fd, fl = bd + rng.uniform(0.15, 0.3), bl + rng.uniform(-0.2, 0.2)
            tri = (np.abs(l - fl) < rng.uniform(0.06, 0.18) * (1 - np.abs(d - fd) / 0.1)) & (np.abs(d - fd) < 0.1)
            fluid_mask = tri & (bq >= 1.25)
    echo = np.where(fluid_mask, 0.004, echo)
    # posterior acoustic enhancement below fluid
    enh = shadow_below(fluid_mask) & ~fluid_mask
    echo = np.where(enh, echo * 1.4, echo)
    return echo, fluid_mask, window


def simulate_fast(rng, fluid=None, geom=None, gain_db=None) -> Sample:
    if geom is None:
        geom = random_geometry(rng, "convex")
    echo, fmask, window = fast_echo(rng, fluid)
    img = form_image(rng, echo, geom, gain_db)
    di, li, inside = geom.beam_index()
    disp_mask = inside & fmask[di, li]
    return Sample(img, 1, fluid_mask=disp_mask,
                  params={"window": str(window), "fluid": bool(disp_mask.sum() > 0), "probe": geom.kind})


# ----------------------------------------------------------------------------- other

def _other_echo(rng):
    d, l = _grid()
    kind = rng.choice(["cardiac", "soft_tissue", "vessel", "thyroid", "ob", "muscle"])
    echo = 0.3 * texture(rng, rng.uniform(3, 12))
    if kind == "cardiac":
        # apical view: chambers (blood is anechoic) separated by bright myocardium and valves
        echo = 0.04 * texture(rng, 8)
        myo = 0.9 * texture(rng, 4)
        for cd, cl in ((0.35, 0.38), (0.35, 0.62), (0.72, 0.38), (0.72, 0.62)):
            q = ellipse(cd + rng.uniform(-.05, .05), cl + rng.uniform(-.05, .05), rng.uniform(.12, .2), rng.uniform(.1, .15))
            echo = np.where((q < 1.6) & (q >= 1), myo, echo)
        septum = np.abs(l - 0.5 - rng.uniform(-0.03, 0.03)) < 0.03
        echo = np.where(septum & (d > 0.15), myo * 1.3, echo)
        valve = np.abs(d - rng.uniform(0.5, 0.58)) < 0.01
        echo = np.where(valve, 2.0, echo)
    elif kind == "soft_tissue":
        for _ in range(rng.integers(1, 5)):
            q = ellipse(rng.uniform(.2, .8), rng.uniform(.1, .9), rng.uniform(.05, .2), rng.uniform(.1, .3), rng.uniform(-1, 1))
            echo = np.where(q < 1, rng.uniform(0.05, 1.0) * texture(rng, 4), echo)
    elif kind == "vessel":
        for _ in range(rng.integers(1, 3)):
            c, r = rng.uniform(0.3, 0.7), rng.uniform(0.04, 0.1)
            tube = np.abs(d - c - 0.1 * (l - 0.5)) < r
            echo = np.where(np.abs(np.abs(d - c - 0.1 * (l - 0.5)) - r) < 0.01, 1.5, echo)
            echo = np.where(tube, 0.004, echo)
    elif kind == "thyroid":
        echo = np.where(d < 0.55, 0.7 * texture(rng, 3), 0.2 * texture(rng, 8))
        q = ellipse(0.4, rng.uniform(0.1, 0.3), 0.08, 0.08)
        echo = np.where(q < 1, 0.004, echo)
        echo = np.where(shadow_below(np.abs(l - 0.5) < 0.06) & (d > 0.2), 0.02, echo)  # trachea
    elif kind == "ob":
        sac = ellipse(0.5, 0.5, 0.3, 0.4)
        echo = np.where(sac < 1, 0.004, echo)
        fetus = ellipse(0.55, 0.5, 0.1, 0.18, rng.uniform(-1, 1))
        echo = np.where(fetus < 1, 0.6 * texture(rng, 3), echo)
    else:  # muscle: oblique fibrillar pattern
        ang = rng.uniform(-0.5, 0.5)
        stripes = 0.5 + 0.5 * np.sin(((d - 0.1) * np.cos(ang) + l * np.sin(ang)) * rng.uniform(40, 90))
        echo = 0.2 + 0.6 * stripes * texture(rng, 4)
        echo = np.where(d > rng.uniform(0.6, 0.8), 2.0 * (d < 0.85) + 0.01, echo)  # bone cortex + shadow
    return echo, str(kind)


def simulate_other(rng, geom=None) -> Sample:
    echo, kind = _other_echo(rng)
    if geom is None:
        probe = {"cardiac": "phased", "thyroid": "linear", "vessel": "linear", "muscle": "linear"}.get(kind)
        probe = probe or rng.choice(["convex", "linear", "phased"])
        geom = random_geometry(rng, probe)
    img = form_image(rng, echo, geom)
    if rng.random() < 0.35:
        add_colour_doppler(rng, img, geom)
    return Sample(img, 2, params={"kind": kind, "probe": geom.kind})


def add_colour_doppler(rng, rgb, geom):
    """A colour-flow box with red/blue flow blobs and a colour bar."""
    h, w, _ = rgb.shape
    y0, x0 = int(h * rng.uniform(0.2, 0.4)), int(w * rng.uniform(0.25, 0.45))
    y1, x1 = y0 + int(h * rng.uniform(0.2, 0.35)), x0 + int(w * rng.uniform(0.2, 0.35))
    rgb[y0, x0:x1] = rgb[y1, x0:x1] = 220
    rgb[y0:y1, x0] = rgb[y0:y1, x1] = 220
    flow = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.1, 0.5)
    red = rng.random() < 0.6
    col = np.array([230, rng.integers(40, 200), 20] if red else [20, rng.integers(40, 160), 230], np.uint8)
    rgb[y0:y1, x0:x1][flow] = col
    bar_x = int(w * 0.02)
    rgb[int(h * 0.2):int(h * 0.35), bar_x:bar_x + 5] = [230, 200, 20]
    rgb[int(h * 0.35):int(h * 0.5), bar_x:bar_x + 5] = [20, 60, 230]


# ---------------------------------------------------------------------------- quality

def simulate_no_contact(rng) -> Sample:
    """Probe in air: a few bright reverberation bands at the face, then only noise."""
    geom = random_geometry(rng, rng.choice(["convex", "linear", "phased"]))
    d, _ = _grid()
    echo = np.zeros((BEAM_DEPTH, BEAM_LINES))
    gap = rng.uniform(0.02, 0.05)
    for k in range(1, rng.integers(2, 7)):
        echo += 2.0 * 0.55 ** k * np.exp(-((d - k * gap) / 0.004) ** 2)
    img = form_image(rng, echo + 1e-4, geom)
    return Sample(img, 3, params={"probe": geom.kind})


def _any_view(rng):
    pick = rng.integers(3)
    return (simulate_lung, simulate_fast, simulate_other)[pick]


def simulate_too_dark(rng) -> Sample:
    view = _any_view(rng)
    s = view(rng) if view is simulate_other else view(rng, gain_db=rng.uniform(-45, -30))
    if view is simulate_other:
        s.image = (s.image.astype(np.float32) * rng.uniform(0.05, 0.2)).astype(np.uint8)
    return Sample(s.image, 4, params={"from": s.params})


def simulate_saturated(rng) -> Sample:
    view = _any_view(rng)
    s = view(rng) if view is simulate_other else view(rng, gain_db=rng.uniform(25, 40))
    if view is simulate_other:
        s.image = np.clip(s.image.astype(np.float32) * rng.uniform(3, 6) + 60, 0, 255).astype(np.uint8)
    return Sample(s.image, 5, params={"from": s.params})


ORIENTATIONS = ("rotated 90", "rotated 270", "upside down")


def simulate_misoriented(rng, view=None, orientation=None) -> Sample:
    """A lung or FAST frame turned on the screen (rotated a quarter turn either way or upside
    down: the pleura or the near field is no longer at the top). The models would misread
    it, so the gate is taught to call it "other" (not a view it may speak about); a
    left-right mirror is still a valid view (the probe marker's side) and is not made here."""
    view = view or ("lung" if rng.random() < 0.5 else "fast")
    orientation = orientation or ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
    s = (simulate_lung if view == "lung" else simulate_fast)(rng)
    k = {"rotated 90": 1, "rotated 270": 3, "upside down": 2}[orientation]
    return Sample(np.ascontiguousarray(np.rot90(s.image, k)), 2,
                  params={"from": s.params, "view": view, "orientation": orientation})


GATE_CONFLUENT_SHARE = 0.15  # the gate's lung frames holding confluent lines (white lung)


def simulate_gate_lung(rng) -> Sample:
    """A lung view as the gate must know it: the natural mix of 0-8 lines, and white lung
    (confluent lines) on GATE_CONFLUENT_SHARE of the frames: the sickest lungs are lung
    views too (a gate trained without them called white lung FAST or "other")."""
    return simulate_lung(rng, confluent=bool(rng.random() < GATE_CONFLUENT_SHARE))


GENERATORS = (simulate_gate_lung, simulate_fast, simulate_other, simulate_no_contact,
              simulate_too_dark, simulate_saturated)


def simulate_gate(rng, label: int) -> Sample:
    return GENERATORS[label](rng)
