"""Train the three reference models on simulated data and export them as ONNX bundles.

    python models/train/train.py --key SIGNING_KEY.pem          # everything, ~38 min on 2 busy cores
    python models/train/train.py --only gate --key ...          # one model

CPU only and seeded: the same seed gives the same simulated data and the same training
order (weights may still differ in the last bits between machines, as multi-threaded float
sums do; the metrics in the manifest are what the tests hold a retrained model to). Needs the `train`
extra (`pip install -e .[train]`: PyTorch CPU and onnx). Writes for each model
`models/<name>/{model.onnx, manifest.json, MODEL_CARD.md}` with held-out metrics and their
95 % confidence intervals, then signs the manifest with the given Ed25519 key.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import evaluate as E  # noqa: E402
import recipe as R  # noqa: E402
import simulator as S  # noqa: E402
from fieldkit.inference import bundle as B  # noqa: E402

# lung 4: 13 500 frames, 45 % of them mimics (3: lines scored on their centres, 9 000 frames;
# 2: trained on mimics and confluent bands);
# gate 1.1: white lung among its lung views, turned views as other
# lung 4.1.0: 4.0.0's weights (its ONNX file unchanged), the line check refitted with a new measurement
VERSIONS = {"view_quality": "1.1.0", "lung_bline": "4.1.0", "fast_fluid": "1.0.0"}


def block(i, o, stride):
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class GateNet(nn.Module):
    """View (lung / FAST / other) and quality (no contact, too dark, saturated) in one softmax."""

    def __init__(self, n=len(S.GATE_CLASSES)):
        super().__init__()
        self.f = nn.Sequential(block(1, 16, 2), block(16, 32, 2), block(32, 32, 1), block(32, 64, 2),
                               block(64, 64, 2), block(64, 96, 2))
        self.head = nn.Linear(96 * 2, n)

    def forward(self, x):
        z = self.f(x)
        # mean and spread of the features: brightness/saturation live in the spread too
        return self.head(torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1))


class LungNet(nn.Module):
    """Per-column B-line evidence over the width and the pleural line's row.

    cols=64: the bundled design, every column bin 2 input pixels wide; a line is scored on
    its centre (`evaluate.lung_targets`), so that neighbours 4 % of the sector apart stay
    two runs. cols=128 (one bin per input column) adds a shallow full-width branch (kept at
    the input's width, pooled over the rows) beside the deep features, upsampled."""

    def __init__(self, cols: int = 64):
        super().__init__()
        self.stem = nn.Sequential(block(1, 16, 2), block(16, 32, (2, 1)))  # 32 x 64
        self.deep = nn.Sequential(block(32, 32, (2, 1)), block(32, 48, (2, 1)), block(48, 48, (2, 1)))  # 4 x 64
        self.rows = nn.Sequential(nn.Conv1d(32, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 1, 1))
        self.fine = None
        width = 48
        if cols != 64:
            if cols != 2 * 64:
                raise ValueError("lung column bins: 64 or 128")
            self.fine = nn.Sequential(block(1, 8, (2, 1)), block(8, 16, (2, 1)))  # 32 x 128
            width += 16
        self.cols = nn.Sequential(nn.Conv1d(width, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 1, 1))

    def forward(self, x):
        s = self.stem(x)
        rows = self.rows(s.mean(3))[:, 0]  # (N, 32) logits over row bins
        z = self.deep(s).mean(2)  # (N, 48, 64)
        if self.fine is not None:
            z = torch.cat([F.interpolate(z, scale_factor=2.0, mode="linear", align_corners=False),
                           self.fine(x).mean(2)], 1)  # (N, 64, 128)
        cols = self.cols(z)[:, 0]  # (N, bins) logits over column bins
        return cols, rows


class FluidNet(nn.Module):
    """A small U-Net: free-fluid logits at 64 x 64."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2, self.e3 = block(1, 16, 2), block(16, 32, 2), nn.Sequential(block(32, 64, 2), block(64, 64, 1))
        self.d2, self.d1 = block(96, 32, 1), block(48, 16, 1)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.out(d1)


def fit(model, x, ys, loss_fn, epochs, lr=3e-3, batch=64, seed=0, log=""):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    x = torch.from_numpy(x)
    ys = [torch.from_numpy(y) for y in ys]
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), [y[idx] for y in ys])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"  {log} epoch {ep + 1}/{epochs} loss {total / len(x):.4f}", flush=True)
    model.eval()
    return model


def export(model, path: Path, outputs: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1, *E.SPEC["size"])
    axes = {"image": {0: "batch"}} | {o: {0: "batch"} for o in outputs}
    torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=outputs,
                      dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True)
    import onnx
    m = onnx.load(str(path))
    m.producer_name = "fieldkit-train"
    m.doc_string = f"fieldkit reference model {path.parent.name} {VERSIONS[path.parent.name]}; simulated training data; not for diagnosis"
    onnx.save(m, str(path))


def session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# -------------------------------------------------------------------------- the three models

def train_gate(out: Path, seed: int, scale: float, misoriented: int = 0):
    print("gate: simulating", flush=True)
    per_class = (R.RECIPE["gate"]["train_size"] - R.RECIPE["gate"]["misoriented"]) / len(S.GATE_CLASSES)
    x, y = E.make_gate_set(int(per_class * scale), seed,
                           misoriented=int(misoriented * scale))
    model = fit(GateNet(), x, [y.astype(np.int64)], lambda o, t: F.cross_entropy(o, t[0], label_smoothing=0.05),
                epochs=R.RECIPE["gate"]["epochs"], seed=seed, log="gate")
    path = out / "view_quality" / "model.onnx"
    export(model, path, ["logits"])
    thresholds = {"min_prob": 0.6}
    metrics = E.gate_metrics(session(path), thresholds, n_per_class=int(250 * scale), seed=seed + 501)
    metrics |= E.misoriented_metrics(session(path), thresholds, n_per_view=int(200 * scale), seed=seed + 504)
    metrics |= E.white_lung_metrics(session(path), thresholds, n=int(200 * scale), seed=seed + 505)
    return path, thresholds, metrics


def train_lung(out: Path, seed: int, scale: float, mimic_share: float = 0.0, epochs: int | None = None,
               bins: int = E.LUNG_BINS, confluent_share: float = 0.1):
    print("lung: simulating", flush=True)
    n = int(R.RECIPE["lung"]["train_size"] * scale)
    if mimic_share:  # the mixture with mimics as negatives and confluent bands (the recipe's)
        x, cols, rows, _ = E.make_lung_mixture(n, seed + 1, mimic_share, confluent_share, bins=bins)
    else:
        x, cols, rows, _ = E.make_lung_set(n, seed + 1, bins=bins)

    def loss(o, t):
        pos = torch.tensor(4.0)  # B-line columns are rare; weigh them up
        return F.binary_cross_entropy_with_logits(o[0], t[0], pos_weight=pos) + 0.5 * F.cross_entropy(o[1], t[1])

    model = fit(LungNet(bins), x, [cols, rows.astype(np.int64)], loss, epochs=epochs or R.RECIPE["lung"]["epochs"], seed=seed,
                log="lung")
    path = out / "lung_bline" / "model.onnx"
    export(model, path, ["bline_logits", "pleura_logits"])
    thresholds = {"bline": 0.5, "pattern_min_blines": 3}
    metrics = E.lung_metrics(session(path), thresholds, n=int(600 * scale), seed=seed + 502)
    return path, thresholds, metrics


def train_fast(out: Path, seed: int, scale: float):
    print("fast: simulating", flush=True)
    x, masks = E.make_fast_set(int(R.RECIPE["fast"]["train_size"] * scale), seed + 2)

    def loss(o, t):
        m = t[0][:, None]
        p = torch.sigmoid(o)
        inter = (p * m).sum((1, 2, 3))
        soft_dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(o, m, pos_weight=torch.tensor(3.0)) + soft_dice.mean()

    model = fit(FluidNet(), x, [masks], loss, epochs=R.RECIPE["fast"]["epochs"], seed=seed, log="fast")
    path = out / "fast_fluid" / "model.onnx"
    export(model, path, ["fluid_logits"])
    thresholds = {"pixel": 0.5, "min_area_px": 8}
    metrics = E.fast_metrics(session(path), thresholds, n=int(400 * scale), seed=seed + 503)
    return path, thresholds, metrics


SPECS = {
    "gate": dict(name="view-quality", dir="view_quality", fn=train_gate, intended_views=["any"],
                 labels=list(S.GATE_CLASSES),
                 outputs={"logits": "(N, 6) softmax logits over labels: the view (lung, fast, other) or why the frame is unusable"},
                 summary="Abstaining view and quality gate: is this frame a lung view, a FAST (abdominal) view, something else, or unusable (no contact, too dark, saturated)?"),
    "lung": dict(name="lung-bline", dir="lung_bline", fn=train_lung, intended_views=["lung"],
                 labels=["bline"],
                 outputs={"bline_logits": f"(N, {E.LUNG_BINS}) per-column B-line logits over the input width (sigmoid; each run above threshold is one B-line, scored on its centre columns; a confluent band over its whole width)",
                          "pleura_logits": f"(N, {E.PLEURA_BINS}) logits over row bins of the input height: where the pleural line is"},
                 summary="Per-frame B-line count with per-column evidence and pleural line position; clip-level A-line / B-line pattern."),
    "fast": dict(name="fast-fluid", dir="fast_fluid", fn=train_fast, intended_views=["fast"],
                 labels=["free_fluid"],
                 outputs={"fluid_logits": f"(N, 1, {E.FLUID_SIZE}, {E.FLUID_SIZE}) free-fluid logits (sigmoid) over the input frame"},
                 summary="Free-fluid segmentation in FAST windows (RUQ, LUQ, pelvis): present/absent, area, mask for the overlay."),
}


def outputs(task: str, path: Path) -> dict:
    """The task's output descriptions, with the exported model's own column bins."""
    out = dict(SPECS[task]["outputs"])
    if task == "lung":
        bins = session(path).get_outputs()[0].shape[-1]
        out["bline_logits"] = out["bline_logits"].replace(f"(N, {E.LUNG_BINS})", f"(N, {bins})")
    return out


def write_bundle(out: Path, task: str, path: Path, thresholds: dict, metrics: dict, seed: int, seconds: float):
    spec = SPECS[task]
    entry = {
        "name": spec["name"], "version": VERSIONS[spec["dir"]], "task": task, "file": "model.onnx",
        "summary": spec["summary"],
        "input": {"name": "image", "shape": [None, 1, *E.SPEC["size"]], "dtype": "float32"},
        "preprocessing": E.SPEC, "outputs": outputs(task, path), "labels": spec["labels"],
        "thresholds": thresholds, "intended_views": spec["intended_views"],
        "model_card": "MODEL_CARD.md", "metrics": metrics,
        "training": {"data": "simulated (models/train/simulator.py)", "seed": seed, "seconds": round(seconds),
                     "torch": torch.__version__, "python": platform.python_version(), **R.training_facts(task, seed)},
        "sha256": "", "key_id": "", "signature": "",
    }
    (path.parent / B.MANIFEST).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--seed", type=int, default=20260)
    ap.add_argument("--only", choices=list(SPECS), action="append")
    ap.add_argument("--scale", type=float, default=1.0, help="scale the data set sizes (smoke runs)")
    ap.add_argument("--key", type=Path, help="Ed25519 private key (PEM) to sign the bundles with")
    ap.add_argument("--gate-misoriented", type=int, default=R.RECIPE["gate"]["misoriented"],
                    help="extra gate training frames: lung and FAST views turned on the screen, labelled other")
    ap.add_argument("--lung-mimic-share", type=float, default=R.RECIPE["lung"]["mimic_share"],
                    help="share of lung training frames holding a B-line mimic and no B-line (0: the natural mix "
                         "of 0-8 lines without mimics or confluent bands)")
    ap.add_argument("--lung-epochs", type=int, help="lung epochs instead of the recipe's")
    ap.add_argument("--lung-bins", type=int, choices=(64, 128), default=E.LUNG_BINS,
                    help="lung column bins over the input width (128: one per input column)")
    ap.add_argument("--lung-confluent-share", type=float, default=R.RECIPE["lung"]["confluent_share"],
                    help="with --lung-mimic-share: share of frames holding a confluent band")
    args = ap.parse_args(argv)
    if not 0.0 <= args.lung_mimic_share <= 0.9:
        ap.error("--lung-mimic-share must be between 0 and 0.9")
    if not 0.0 <= args.lung_confluent_share <= 0.9 - args.lung_mimic_share:
        ap.error("--lung-confluent-share must be between 0 and 0.9 minus --lung-mimic-share")
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    np.random.seed(args.seed)
    for task in args.only or list(SPECS):
        t0 = time.time()
        extra = {"mimic_share": args.lung_mimic_share, "epochs": args.lung_epochs, "bins": args.lung_bins,
                 "confluent_share": args.lung_confluent_share} if task == "lung" else \
            {"misoriented": args.gate_misoriented} if task == "gate" else {}
        path, thresholds, metrics = SPECS[task]["fn"](args.out, args.seed, args.scale, **extra)
        write_bundle(args.out, task, path, thresholds, metrics, args.seed, time.time() - t0)
        print(f"{task}: {path} ({path.stat().st_size / 1024:.0f} KiB) in {time.time() - t0:.0f}s", flush=True)
        print(json.dumps(metrics, indent=1), flush=True)
        if args.key:
            B.sign_bundle(path.parent, B.load_private_key(args.key))
            print(f"{task}: signed with {args.key.name}", flush=True)


if __name__ == "__main__":
    main()
