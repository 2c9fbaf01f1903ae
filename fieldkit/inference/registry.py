"""The model registry: find bundles, verify them, and hold one onnxruntime session each.

Sessions are created once (creating one costs far more than a run) with the intra-op
thread budget from `inference.threads` and a single inter-op thread, so a cine being
analysed takes at most that many cores and the web server and receiver stay responsive.
A bundle that fails any check is listed with the reason and never loaded; the kit runs
on without it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import short
from . import bundle as B
from .preprocess import check_spec

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass
class LoadedModel:
    bundle: B.Bundle
    session: object  # onnxruntime.InferenceSession
    input_name: str
    output_names: list[str]
    lock: threading.Lock  # one run at a time per session keeps the thread budget honest

    @property
    def entry(self) -> dict:
        return self.bundle.entry

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def version(self) -> str:
        return self.entry["version"]

    @property
    def sha256(self) -> str:
        return self.entry["sha256"]

    @property
    def thresholds(self) -> dict:
        return self.entry["thresholds"]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            return self.session.run(self.output_names, {self.input_name: x})


def model_dirs(config, data_dir: Path | None = None) -> list[Path]:
    dirs = [BUILTIN_DIR]
    if data_dir is not None:
        dirs.append(Path(data_dir) / "models")
    dirs += [Path(d) for d in (config.get("inference.model_dirs") or [])]
    return dirs


def session_options(threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings about unused initialisers are noise here
    # onnxruntime's arena keeps the largest batch's tensors for the whole run (~70 MB of the
    # kit's growth under load); without it they go back to malloc, which the kit trims.
    # Measured side by side: no slower per batch of 16 frames.
    so.enable_cpu_mem_arena = False
    return so


class Registry:
    """Verified, loaded models by task ("gate", "lung", "fast") plus the status of every bundle."""

    def __init__(self, config, data_dir: Path | None = None, dirs: list[Path] | None = None):
        self.config = config
        self.dirs = dirs if dirs is not None else model_dirs(config, data_dir)
        self.bundles: list[B.Bundle] = []
        self.models: dict[str, LoadedModel] = {}
        self.key_problem = ""
        self._load()

    def _load(self) -> None:
        try:
            trusted = B.trusted_keys(list(self.config.get("inference.trusted_keys") or []))
        except ValueError as exc:
            trusted, self.key_problem = {}, str(exc)
        threads = int(self.config.get("inference.threads") or 1)
        for path in B.discover(self.dirs):
            try:
                bundle = B.verify_bundle(B.read_bundle(path), trusted)
            except Exception as exc:  # a manifest no check foresaw: refused, never a crash
                bundle = B.read_bundle(path)
                bundle.ok, bundle.status = False, f"refused: manifest malformed ({short(exc)})"
                bundle.problems.append(bundle.status)
            self.bundles.append(bundle)
            if not bundle.ok:
                log.warning("model bundle %s refused: %s", path.name, bundle.status)
                continue
            task = bundle.entry["task"]
            if task in self.models:
                bundle.ok, bundle.status = False, f"not loaded: another verified {task} model ({self.models[task].name}) came first"
                continue
            try:
                check_spec(bundle.entry["preprocessing"])
                self.models[task] = self._session(bundle, threads)
            except Exception as exc:  # not ONNX, wrong shape, unsupported preprocessing
                bundle.ok = False
                bundle.status = f"refused: does not load ({short(exc)})"
                bundle.problems.append(bundle.status)
                log.warning("model bundle %s refused: %s", path.name, bundle.status)

    def _session(self, bundle: B.Bundle, threads: int) -> LoadedModel:
        import onnxruntime as ort
        sess = ort.InferenceSession(str(bundle.model_path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
        inputs = sess.get_inputs()
        want = bundle.entry["input"]
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != list(want["shape"][1:]):
            raise ValueError(f"model input {[(i.name, i.shape) for i in inputs]} does not match the manifest {want['shape']}")
        names = [o.name for o in sess.get_outputs()]
        missing = [o for o in bundle.entry["outputs"] if o not in names]
        if missing:
            raise ValueError(f"model lacks outputs {missing} named in the manifest")
        return LoadedModel(bundle, sess, inputs[0].name, list(bundle.entry["outputs"]), threading.Lock())

    def get(self, task: str) -> LoadedModel | None:
        return self.models.get(task)

    def status(self) -> list[dict]:
        out = []
        for b in self.bundles:
            e = b.entry
            out.append({"name": b.name, "version": e.get("version", ""), "task": e.get("task", ""),
                        "dir": str(b.path), "sha256": e.get("sha256", ""), "ok": b.ok, "status": b.status,
                        "loaded": b.ok and self.models.get(e.get("task"), None) is not None
                        and self.models[e["task"]].bundle is b})
        return out
