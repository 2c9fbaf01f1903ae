"""Inference benchmarks (measured, never asserted). Prints ratio lines:

1. pipeline throughput (decode + preprocess + infer + postprocess, the real runner) versus
   bare onnxruntime `session.run` on the same preprocessed tensors, same run, for the
   SonoSite cine (gate only: it is not a lung view) and a simulated lung cine (gate + lung);
   best of 15 interleaved runs each, with the median ratio, the cores the pipeline got
   (process CPU time / wall time: it overlaps decoding with inference on the second core)
   and the load average, since on a busy machine that second core may not be there; and,
   for the lung cine, the post-processing's share: `lung_frames` on every frame (8 at a
   time, as the runner analyses them while the model runs, and one frame at a time)
   against the lung model's bare `session.run` on the same frames (one thread, medians
   of 15); and where the lung cine's ratio goes: the same runner with the line analysis
   replaced by nothing, and with the orientation marker, the B-mode check and lung sliding
   left out too, interleaved with the shipped one (best of 20 each);
2. bare onnxruntime FLOP/s (FLOPs counted from the ONNX graph) versus the CPU's float32
   matmul peak measured with numpy in the same run, both on one thread (= inference.threads);
3. capture-to-finding latency of the 30-frame SonoSite cine (stored in a real kit store,
   then decrypted, decoded, analysed, SR + findings written) divided by the clip's own
   duration (Number of Frames x Frame Time);
4. single-frame jobs/s through the real worker thread (lease, decrypt, analyse, overlay,
   findings, ack: the finding visible), median of 3 rounds; the same captures until their
   SRs (report jobs, queued after the findings) are stored too; the CPU time per capture;
   and the same rounds with one durable write per job (inference.commit_group = 1);
5. red-patient capture-to-finding latency during continuous ingest: a real `fieldkit serve`
   receiving storescu at 1 capture/s (30-frame cines; every 4th capture of a patient
   tagged red), from the C-STORE response to the finding being visible in the API.

    python tests/bench/bench_inference.py
"""

from __future__ import annotations

import os

# one BLAS thread, like one onnxruntime intra-op thread: the same budget on both sides
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pydicom  # noqa: E402
from onnx import shape_inference  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fieldkit.config import Config  # noqa: E402
from fieldkit.inference import runner  # noqa: E402
from fieldkit.inference.preprocess import preprocess  # noqa: E402
from fieldkit.inference.registry import Registry  # noqa: E402

REPEATS = 5


def best(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def model_flops(path: Path, batch: int = 1) -> float:
    """Multiply-adds x 2 of Conv, ConvTranspose, Gemm and MatMul nodes at this batch size."""
    m = onnx.load(str(path))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    m = shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    flops = 0.0
    for node in m.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]  # (Cout, Cin/group, kh, kw)
            out = shapes[node.output[0]]
            flops += 2.0 * np.prod(out) * np.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0]) or inits.get(node.input[0])
            b = shapes.get(node.input[1]) or inits.get(node.input[1])
            flops += 2.0 * np.prod(a) * b[-1]
    return flops


def matmul_peak() -> float:
    """Best float32 GEMM rate numpy reaches on this CPU, over a few sizes."""
    rates = []
    for n in (512, 1024, 2048):
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        a @ b
        t, _ = best(lambda: a @ b, 7 if n < 2048 else 3)
        rates.append(2.0 * n ** 3 / t)
    return max(rates)


def bare_session_run(reg, ds, tasks):
    """(frames, a call running bare `session.run` of each task's model on all of them, in
    batches of 16): the anchor the pipeline is measured against."""
    frames, _ = runner._decode_batch(ds, list(range(int(ds.get("NumberOfFrames", 1) or 1))))
    tensors = {t: preprocess(frames, reg.get(t).entry["preprocessing"]) for t in tasks}

    def bare():
        for t, x in tensors.items():
            for s in range(0, len(x), 16):
                reg.get(t).run(x[s:s + 16])
    return frames, bare


def bench_pipeline(reg, ds, label, tasks):
    frames, bare = bare_session_run(reg, ds, tasks)
    a = runner.analyse(ds, reg)
    ran = ["gate"] + [r.task for r in a.results if r.assessable]
    assert set(ran) == set(tasks), (label, ran)

    pipe_times, bare_times, pipe_cpu = [], [], []
    for _ in range(15):  # interleaved, so both see the same machine load
        t, c = time.perf_counter(), time.process_time()
        runner.analyse(ds, reg)
        pipe_times.append(time.perf_counter() - t)
        pipe_cpu.append((time.process_time() - c) / pipe_times[-1])
        t = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - t)
    t_pipe, t_bare = min(pipe_times), min(bare_times)
    n = len(frames)
    # the pipeline overlaps decoding with inference on the second core: how much of it the
    # process got (2.0 = both cores) says whether the machine left room for that
    print(f"pipeline_vs_bare_session_run[{label}]: {t_bare / t_pipe:.2f} "
          f"(pipeline {n / t_pipe:.0f} frames/s, bare session.run {n / t_bare:.0f} frames/s, {n} frames; "
          f"median ratio {statistics.median(bare_times) / statistics.median(pipe_times):.2f}; "
          f"pipeline used {statistics.median(pipe_cpu):.2f} cores, load average {os.getloadavg()[0]:.1f}; target >= 0.8)")
    return t_bare / t_pipe


def bench_pipeline_parts(reg, ds, label, runs=20):
    """Where the lung cine's pipeline ratio goes: the real runner against itself with the
    per-frame line analysis (`postprocess.lung_frames`: the mimic check, the line check,
    the fan-out) replaced by nothing, and with the orientation marker, the B-mode check
    and lung sliding left out as well, each against bare `session.run`, interleaved."""
    from contextlib import ExitStack
    from unittest import mock

    from fieldkit.inference import postprocess as post
    _, bare = bare_session_run(reg, ds, ["gate", "lung"])

    def nothing(probs, pleura, imgs, thresholds):  # each frame as read, with no line looked at
        return [{"runs": [], "lines": [], "b_lines": 0, "mimics": [], "pleura_row": 0.0, "confluent": False,
                 "score": -1.0} for _ in probs]

    def still(frames, pleura, numbers):
        return {"frames": list(numbers), "score": None, "pleura_row": None, "columns": [],
                "status": "not assessable", "reason_code": "uncertain", "reason": "left out"}

    variants = {
        "as shipped": [],
        "without the line analysis": [mock.patch.object(post, "lung_frames", nothing)],
        "without it, the marker, the B-mode check and lung sliding": [
            mock.patch.object(post, "lung_frames", nothing), mock.patch.object(post, "lung_sliding", still),
            mock.patch.object(runner, "not_b_mode", lambda x: [""] * len(x))],
    }
    times = {k: [] for k in variants}
    bare_times = []
    for _ in range(runs):  # interleaved, so all see the same machine load
        for name, patches in variants.items():
            with ExitStack() as stack:
                for p in patches:
                    stack.enter_context(p)
                t = time.perf_counter()
                runner.analyse(ds, reg, read_marker=not patches)
                times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - t)
    parts = "; ".join(f"{name} {min(bare_times) / min(v):.2f} (median {statistics.median(bare_times) / statistics.median(v):.2f})"
                      for name, v in times.items())
    print(f"pipeline_vs_bare_session_run_by_part[{label}]: {parts}; best of {runs} interleaved; "
          f"load average {os.getloadavg()[0]:.1f}")


def bench_lung_post(reg, ds, label):
    """The lung post-processing of a cine's frames against the lung model on them."""
    from fieldkit.inference import postprocess as post
    lung = reg.get("lung")
    frames, _ = runner._decode_batch(ds, list(range(int(ds.NumberOfFrames))))
    x = preprocess(frames, lung.entry["preprocessing"])
    cols, rows = runner._batched(lung, x, 16)
    probs = post.sigmoid(cols)

    def model():
        for s in range(0, len(x), 16):
            lung.run(x[s:s + 16])

    def postprocess():  # as the runner does while the model runs: LUNG_AT_ONCE frames together
        step = runner.LUNG_AT_ONCE
        return [f for s in range(0, len(x), step)
                for f in post.lung_frames(probs[s:s + step], rows[s:s + step], x[s:s + step, 0], lung.thresholds)]

    def one_at_a_time():
        return [post.lung_frame(pc, pr, img[0], lung.thresholds) for pc, pr, img in zip(probs, rows, x)]

    t_model, t_post, t_one = [], [], []
    for _ in range(15):  # interleaved
        for fn, out in ((model, t_model), (postprocess, t_post), (one_at_a_time, t_one)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    n = len(x)
    m, p, one = statistics.median(t_model), statistics.median(t_post), statistics.median(t_one)
    lines = sum(f["b_lines"] for f in postprocess()) / n
    print(f"lung_postprocess_vs_model[{label}]: {p / m:.2f} (lung_frames {1000 * p / n:.2f} ms/frame in batches of "
          f"{runner.LUNG_AT_ONCE} as the runner analyses them, {1000 * one / n:.2f} one frame at a time; "
          f"lung session.run {1000 * m / n:.2f} ms/frame, {n} frames, {lines:.1f} B-lines a frame; medians of 15; "
          f"load average {os.getloadavg()[0]:.1f}; the runner overlaps the two on two cores)")


def bench_flops(reg, peak):
    out = {}
    for task in ("gate", "lung", "fast"):
        m = reg.get(task)
        batch = 16
        x = np.random.default_rng(0).random((batch, 1, *m.entry["preprocessing"]["size"]), dtype=np.float32)
        m.run(x)
        t, _ = best(lambda: m.run(x), 7)
        flops = model_flops(m.bundle.model_path, batch)
        rate = flops / t
        out[task] = rate / peak
        print(f"onnxruntime_flops_vs_matmul_peak[{m.name}]: {rate / peak:.2f} "
              f"({rate / 1e9:.1f} GFLOP/s of {peak / 1e9:.1f} GFLOP/s numpy peak, 1 thread; "
              f"{flops / batch / 1e6:.1f} MFLOP/frame, batch {batch}; target >= 0.30)")
    return out


def bench_latency(reg):
    from kitproc import init_kit

    from fieldkit.hardware.policy import NORMAL
    from fieldkit.inference import findings, worker
    from fieldkit.kit import open_kit
    from fieldkit.store.instances import put_instance

    path = get_testdata_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    clip_s = int(ds.NumberOfFrames) * float(ds.FrameTime) / 1000.0
    data = Path(path).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = init_kit(Path(tmp) / "kit")
        kit = open_kit(data_dir)
        try:
            times, sr_times = [], []
            for i in range(3):
                # a fresh SOP Instance UID each round, so every round is a real store + analysis
                d = pydicom.dcmread(path)
                d.SOPInstanceUID = f"{d.SOPInstanceUID}.{i + 1}"
                d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
                import io
                buf = io.BytesIO()
                d.save_as(buf)
                raw = buf.getvalue()
                t = time.perf_counter()
                uid = put_instance(kit.store, raw, "dimse")["sop_instance_uid"]
                out = worker.process(kit, reg, uid, NORMAL)
                times.append(out["finding_at"] - t)
                sr_times.append(out["sr_at"] - t)
                assert len(findings.for_instance(kit.store, uid)) == 2
        finally:
            kit.close()
    lat = min(times)
    print(f"capture_to_finding_over_clip_duration[examples_ybr_color.dcm]: {lat / clip_s:.2f} "
          f"(latency {lat * 1000:.0f} ms best of 3, median {statistics.median(times) * 1000:.0f} ms; "
          f"clip {clip_s:.2f} s = {ds.NumberOfFrames} frames x {float(ds.FrameTime):.3f} ms; target <= 1.0; "
          f"input {len(data) // 1024} KiB)")
    print(f"capture_to_sr_stored_over_clip_duration[examples_ybr_color.dcm]: {min(sr_times) / clip_s:.2f} "
          f"(latency {min(sr_times) * 1000:.0f} ms best of 3: worker.process stores the SR with the finding)")


def bench_jobs(reg, n=60, rounds=3):
    """Single-frame captures through the real worker thread: findings jobs/s (what the
    clinician waits for), then the report (SR) jobs queued after them, and the whole."""
    from kitproc import init_kit

    from fieldkit.inference import worker
    from fieldkit.records import KIND_INFER
    from fieldkit.kit import open_kit
    from fieldkit.store.instances import put_instance
    from fixtures.inference import dataset_bytes, lung_cine_dataset

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        kit = open_kit(init_kit(Path(tmp) / "kit"))
        try:
            seed = 0
            for group in (8, 1):
                kit.config = kit.config.with_overrides(inference__commit_group=group)
                finding_rates, whole_rates, cpus, finding_cpus = [], [], [], []
                for _ in range(rounds):
                    for _ in range(n):  # single-frame captures, each a new instance
                        ds, _ = lung_cine_dataset(n_frames=1, n_blines=seed % 4, seed=10_000 + seed)
                        put_instance(kit.store, dataset_bytes(ds), "dimse")
                        seed += 1
                    counts = kit.store.queue.counts
                    findings_done = counts()[KIND_INFER]["done"] + n  # finding jobs go before report jobs
                    w = worker.Worker(kit, reg)
                    t, c = time.perf_counter(), time.process_time()
                    w.start()
                    deadline = time.monotonic() + 900
                    while counts()[KIND_INFER]["done"] < findings_done and time.monotonic() < deadline:
                        time.sleep(0.005)
                    finding_rates.append(n / (time.perf_counter() - t))
                    finding_cpus.append((time.process_time() - c) / n)
                    while time.monotonic() < deadline and (counts()[KIND_INFER]["ready"]
                                                           or counts()[KIND_INFER]["leased"]):
                        time.sleep(0.005)
                    whole_rates.append(n / (time.perf_counter() - t))
                    cpus.append((time.process_time() - c) / n)
                    w.stop()
                out[group] = statistics.median(finding_rates)
                # on a shared machine the worker (at nice 10) gets what others leave: the
                # CPU time per job says what one free core would do
                cpu_f, cpu_all = statistics.median(finding_cpus), statistics.median(cpus)
                print(f"single_frame_jobs_per_s[commit_group={group}]: {statistics.median(finding_rates):.1f} "
                      f"(findings stored and visible; median of {rounds} x {n} jobs: "
                      f"{', '.join(f'{r:.1f}' for r in finding_rates)}; CPU {cpu_f * 1000:.1f} ms per job = "
                      f"{1 / cpu_f:.0f} jobs per CPU-second; with the SR of each built and stored too: "
                      f"{statistics.median(whole_rates):.1f} captures/s, CPU {cpu_all * 1000:.0f} ms per capture = "
                      f"{1 / cpu_all:.0f} per CPU-second; load average {os.getloadavg()[0]:.1f}"
                      f"{'; target >= 20' if group > 1 else ''})")
        finally:
            kit.close()
    print(f"commit_group_8_over_1: {out[8] / out[1]:.2f} (findings jobs/s, same box, same run)")


def bench_red_latency(seconds=60, every=4):
    """A real serve, storescu at 1 capture/s, every `every`-th capture a red patient's."""
    import threading

    from kitproc import KitProcess, init_kit

    from fieldkit.kit import open_kit
    from fieldkit.store import patients as pstore
    from fixtures.dcmtk import store_responses, storescu
    from fixtures.inference import lung_cine_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = init_kit(Path(tmp) / "kit")
        opened = open_kit(data_dir)
        pstore.create_patient(opened.store, tag="RED1", triage="red")
        opened.close()
        files = []
        for i in range(seconds):
            ds, _ = lung_cine_dataset(n_frames=30, n_blines=i % 4, seed=20_000 + i)
            if i % every == every - 1:
                ds.PatientID = "RED1"
            path = Path(tmp) / f"c{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append((path, str(ds.SOPInstanceUID), ds.PatientID == "RED1"))
        kit = KitProcess(data_dir).start()
        try:
            import requests
            session = requests.Session()
            session.verify, session.trust_env = kit.ca, False
            session.headers.update(kit.auth("clinician"))  # a signed-in clinician's session
            acked, seen = {}, {}
            done = threading.Event()

            def poll():
                while not done.is_set():
                    try:
                        r = session.get(f"{kit.url}/api/v1/ui/patients/RED1", timeout=30)
                    except requests.RequestException:
                        done.wait(0.1)
                        continue
                    now = time.monotonic()
                    for cap in r.json().get("captures", []):
                        if cap["findings"] and cap["uid"] not in seen:
                            seen[cap["uid"]] = now
                    done.wait(0.1)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            start = time.monotonic()
            for i, (path, uid, red) in enumerate(files):
                time.sleep(max(0.0, start + i - time.monotonic()))  # 1 capture/s
                proc = storescu(kit.dicom_port, [path])
                if store_responses(proc) != ["Success"]:
                    raise SystemExit(f"capture {i} refused: {proc.stdout}{proc.stderr}")
                if red:
                    acked[uid] = time.monotonic()
            deadline = time.monotonic() + 120
            while set(acked) - set(seen) and time.monotonic() < deadline:
                time.sleep(0.1)
            done.set()
            poller.join(30)
            status = session.get(f"{kit.url}/api/v1/status", timeout=30).json()
        finally:
            kit.stop()
    lat = sorted(seen[u] - acked[u] for u in acked if u in seen)
    missing = len(acked) - len(lat)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    infer = status["queue"]["infer"]
    print(f"red_capture_to_finding_during_ingest_p50_s: {statistics.median(lat) if lat else float('nan'):.2f} "
          f"(p95 {p95:.2f} s, max {max(lat) if lat else float('nan'):.2f} s, {len(lat)} red captures"
          f"{f', {missing} without a finding after 120 s' if missing else ''}; storescu 1 capture/s for {seconds} s, "
          f"30-frame 240x320 cines, every {every}th red; infer queue at the end {infer}; "
          f"load average {os.getloadavg()[0]:.1f}; target <= 10 s)")


def bench_marker(reg, ds, label):
    """The orientation-marker search (once a clip, on its first frame) against the whole
    analysis of the clip it is part of."""
    from fieldkit.inference import marker
    from fieldkit.inference.preprocess import to_gray
    frames, _ = runner._decode_batch(ds, [0])
    gray = to_gray(frames[:1])[0]
    t_find, t_all = [], []
    for _ in range(15):  # interleaved
        t = time.perf_counter()
        found = marker.find(gray)
        t_find.append(time.perf_counter() - t)
        t = time.perf_counter()
        runner.analyse(ds, reg)
        t_all.append(time.perf_counter() - t)
    f, a = statistics.median(t_find), statistics.median(t_all)
    print(f"orientation_marker_search_vs_analysis[{label}]: {f / a:.3f} (search {1000 * f:.2f} ms a clip, "
          f"found {found or 'none'}; analysis {1000 * a:.1f} ms; medians of 15; load average {os.getloadavg()[0]:.1f})")


def main():
    from fixtures.inference import lung_cine_dataset
    reg = Registry(Config({"inference.threads": 1}))
    assert all(reg.get(t) for t in ("gate", "lung", "fast")), reg.status()
    peak = matmul_peak()
    bench_pipeline(reg, pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")), "examples_ybr_color.dcm", ["gate"])
    lung, _ = lung_cine_dataset(n_frames=30, n_blines=4, seed=5)
    bench_pipeline(reg, lung, "simulated lung cine 30x240x320 RGB", ["gate", "lung"])
    bench_pipeline_parts(reg, lung, "simulated lung cine 30x240x320 RGB")
    bench_lung_post(reg, lung, "simulated lung cine 30x240x320 RGB")
    bench_marker(reg, pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")), "examples_ybr_color.dcm")
    bench_marker(reg, lung_cine_dataset(n_frames=30, n_blines=4, seed=5, marker="bottom left")[0],
                 "simulated lung cine 30x240x320 RGB, shown inverted")
    bench_flops(reg, peak)
    bench_latency(reg)
    bench_jobs(reg)
    bench_red_latency()


if __name__ == "__main__":
    main()
