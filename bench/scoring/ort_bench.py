#!/usr/bin/env python3
"""onnxruntime's side of the scoring benchmark (issue 6, item 5): rows/s per
model at batch sizes 1, 64 and 1024 on the fixed rows of models/rows.f32.

    python3 bench/scoring/ort_bench.py [--repeats 7] [--seconds 0.5] [--batches 1,64,1024]
                                       [--models lr,mlp,rf,gbt,fraud-per-event] [--log FILE]

Sessions: CPUExecutionProvider, intra_op_num_threads=1, inter_op_num_threads=1,
ORT_SEQUENTIAL execution mode, default graph optimisation (ORT_ENABLE_ALL).
The 4096 rows are cut beforehand into contiguous float32 batches of B rows
(4096 / B of them) and the timed loop calls ``sess.run(["probabilities"],
{"features": batch})`` cycling over them, so a figure includes the Python
binding's per-call cost (argument conversion, output allocation) but no
slicing or copying of ours.  The "identity" row is a one-node graph
(features -> Identity -> probabilities, [N, 10]) run the same way: the fixed
per-call cost of this harness, for reading the batch-1 figures.

Each (model, batch) is first warmed up (--warmup seconds, and its outputs on
the whole cycle are checked against models/<model>.expected.f32, |diff| <=
1e-5), then timed --repeats times, each a loop of at least --seconds; the
repeats are interleaved across all (model, batch) pairs (round r times every
pair once), so machine noise is spread over them.  rows/s of a repeat = rows
scored / wall time (time.perf_counter); rows per CPU-second = rows / the
process's CPU time over the loop (time.process_time), less sensitive to the
machine being shared.

Output: one JSON object per line on stdout (and appended to --log): a
"setup" line (versions, CPU, load average), one "repeat" line per timed loop,
one "summary" line per (model, batch) with the median and min/max rows/s and
the median microseconds per run call; then a markdown table.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(HERE, "models")
FRAUD = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "fraud")
ALL_MODELS = ["lr", "mlp", "rf", "gbt", "fraud-per-event", "identity"]


def model_path(name):
    if name == "fraud-per-event":
        return os.path.join(FRAUD, "fraud-per-event.onnx")
    return os.path.join(MODELS_DIR, name + ".onnx")


def identity_model():
    import onnx
    from onnx import TensorProto, helper
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 10])  # noqa: E731
    g = helper.make_graph([helper.make_node("Identity", ["features"], ["probabilities"])],
                          "identity", [vi("features")], [vi("probabilities")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def session(name):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = identity_model() if name == "identity" else model_path(name)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def timed_loop(sess, batches, seconds):
    """Runs over `batches` cyclically for at least `seconds` of wall time; returns
    (rows, calls, wall seconds, CPU seconds of this process)."""
    run = sess.run
    outs = ["probabilities"]
    n = len(batches)
    rows = calls = 0
    i = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        # check the clock every `step` calls (at most ~every 1024 rows) to keep it out of the loop
        step = max(1, 1024 // len(batches[0]))
        for _ in range(step):
            run(outs, {"features": batches[i]})
            i += 1
            if i == n:
                i = 0
        calls += step
        rows += step * len(batches[0])
        t = time.perf_counter() - t0
        if t >= seconds:
            return rows, calls, t, time.process_time() - c0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--log", help="also append the JSON lines to this file")
    args = ap.parse_args()

    import onnxruntime as ort
    models = args.models.split(",")
    batch_sizes = [int(b) for b in args.batches.split(",")]
    rows = np.fromfile(os.path.join(MODELS_DIR, "rows.f32"), dtype="<f4").reshape(-1, 10)
    assert rows.shape == (4096, 10)
    for b in batch_sizes:
        assert len(rows) % b == 0, "batch size %d does not divide %d rows" % (b, len(rows))

    log = open(args.log, "a") if args.log else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    emit({"kind": "setup", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "onnxruntime": ort.__version__,
          "numpy": np.__version__, "python": platform.python_version(), "cpu": cpu_model(),
          "nproc": os.cpu_count(), "loadavg": os.getloadavg(), "repeats": args.repeats,
          "seconds": args.seconds, "warmup": args.warmup,
          "session": "CPU EP, intra_op 1, inter_op 1, ORT_SEQUENTIAL, ORT_ENABLE_ALL"})

    sessions = {m: session(m) for m in models}
    pairs = []
    cut = {}
    for m in models:
        expected = None
        if m != "identity":
            expected = np.fromfile(os.path.join(MODELS_DIR, m + ".expected.f32"), dtype="<f4")
        for b in batch_sizes:
            batches = [np.ascontiguousarray(rows[i:i + b]) for i in range(0, len(rows), b)]
            cut[(m, b)] = batches
            sess = sessions[m]
            got = np.concatenate([sess.run(["probabilities"], {"features": x})[0] for x in batches])
            if expected is not None:
                err = float(np.abs(got[:, 1] - expected).max())
                assert err <= 1e-5, (m, b, err)
            timed_loop(sess, batches, args.warmup)
            pairs.append((m, b))

    results = {p: [] for p in pairs}
    for r in range(args.repeats):
        for m, b in pairs:
            n_rows, calls, wall, cpu = timed_loop(sessions[m], cut[(m, b)], args.seconds)
            rps = n_rows / wall
            results[(m, b)].append((rps, wall / calls * 1e6, n_rows / cpu))
            emit({"kind": "repeat", "model": m, "batch": b, "repeat": r, "rows": n_rows, "calls": calls,
                  "wall_s": round(wall, 6), "cpu_s": round(cpu, 6), "rows_per_s": round(rps, 1),
                  "rows_per_cpu_s": round(n_rows / cpu, 1),
                  "us_per_call": round(wall / calls * 1e6, 3), "loadavg1": os.getloadavg()[0]})

    summary = {}
    for m, b in pairs:
        rps = [x[0] for x in results[(m, b)]]
        us = [x[1] for x in results[(m, b)]]
        rpc = [x[2] for x in results[(m, b)]]
        summary[(m, b)] = (statistics.median(rps), min(rps), max(rps), statistics.median(us),
                           statistics.median(rpc))
        emit({"kind": "summary", "model": m, "batch": b, "repeats": len(rps),
              "rows_per_s_median": round(statistics.median(rps), 1), "rows_per_s_min": round(min(rps), 1),
              "rows_per_s_max": round(max(rps), 1), "us_per_call_median": round(statistics.median(us), 3),
              "rows_per_cpu_s_median": round(statistics.median(rpc), 1)})

    def fmt(v):
        return "{:,.0f}".format(v).replace(",", " ")

    print()
    print("rows/s wall, median of %d (min-max) / rows per CPU-second of the process, median; onnxruntime %s, 1 thread, CPU EP; load average at end %.2f"
          % (args.repeats, ort.__version__, os.getloadavg()[0]))
    print()
    print("| model | " + " | ".join("batch %d" % b for b in batch_sizes) + " | µs per call at batch 1 |")
    print("| --- | " + " | ".join("---" for _ in batch_sizes) + " | --- |")
    for m in models:
        cells = []
        for b in batch_sizes:
            med, lo, hi, _, rpc = summary[(m, b)]
            cells.append("%s (%s-%s) / %s" % (fmt(med), fmt(lo), fmt(hi), fmt(rpc)))
        us1 = "%.2f" % summary[(m, batch_sizes[0])][3] if batch_sizes[0] == 1 else "-"
        print("| %s | %s | %s |" % (m, " | ".join(cells), us1))
    if log:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
