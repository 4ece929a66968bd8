#!/usr/bin/env python3
"""Write the scoring benchmark's fixed feature rows and onnxruntime's scores on them.

    python3 bench/scoring/rows.py          # after train_models.py

models/rows.f32: 4096 rows x 10 float32, little-endian, row-major (163 840
bytes), the per-transaction fraud features of examples/fraud/train_per_event.py
in its order (amount, n_1m, sum_1m, n_10m, sum_10m, merchants_10m, n_1h, sum_1h,
amount_vs_1h, risk):

    rows 0-10     the edge rows of train_per_event.py's fixture (zeros, 1e6 and
                  1e9 amounts, 1000-event frames, ...)
    rows 11-50    threshold rows: a typical row (the per-feature median of the
                  sampled rows) with one feature set exactly to the threshold of
                  one of the first 20 branch nodes (in file order: tree 0's,
                  then tree 1's, ...) of rf.onnx, then of gbt.onnx (BRANCH_LEQ: x <= t goes left, so these pin <= vs <)
    rows 51-4095  4045 rows drawn without replacement (RandomState(0)) from the
                  features of 840 000 generator events, seed 2 (training used
                  seed 1), 100 000 cards (70 simulated minutes), among the
                  events of the last 10 minutes (a full hour of history behind
                  them: the steady state of a running pipeline), in event order

models/<model>.expected.f32: 4096 float32, onnxruntime's probabilities[:, 1]
on those rows (one run on all 4096 rows), for lr, mlp, rf, gbt and
fraud-per-event (examples/fraud/fraud-per-event.onnx, the example's MLP, which
takes the same 10 features).  Also checks that onnxruntime gives the same
scores row by row (batch 1) as on the whole block, and writes
models/rows.json (composition, sha256 of every file written).
"""

import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_models import FRAUD, MODELS, MODELS_DIR, attrs, make_features  # noqa: E402

N_ROWS = 4096
EDGE = np.array([
    # amount n_1m sum_1m n_10m sum_10m merch_10m n_1h sum_1h vs_1h risk  (train_per_event.py's fixture)
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0.01, 1, 0.01, 1, 0.01, 1, 1, 0.01, 1, 0],
    [12.5, 1, 12.5, 1, 12.5, 1, 1, 12.5, 1, 0.013],
    [12.5, 1, 12.5, 1, 12.5, 1, 1, 12.5, 1, 0.999],
    [25, 1, 25, 2, 40, 2, 6, 120, 1.25, 0.5],
    [2.5, 12, 30, 80, 210, 2, 90, 350, 0.64, 0.932],
    [1500, 1, 1500, 3, 2800, 3, 6, 2950, 3.05, 0.919],
    [40, 3, 110, 20, 700, 18, 30, 1000, 1.2, 0.95],
    [1e6, 1, 1e6, 1, 1e6, 1, 1, 1e6, 1, 0.5],
    [1e9, 5, 5e9, 5, 5e9, 5, 5, 5e9, 1, 0.5],
    [10, 1000, 1e4, 1000, 1e4, 1000, 1000, 1e4, 1, 0.1],
], np.float32)
THRESHOLD_NODES = 20
SAMPLE_EVENTS, SAMPLE_SEED = 840_000, 2
HOUR_MS = 3_600_000


def model_paths():
    paths = {m: os.path.join(MODELS_DIR, m + ".onnx") for m in MODELS}
    paths["fraud-per-event"] = os.path.join(FRAUD, "fraud-per-event.onnx")
    return paths


def threshold_rows(base, path):
    import onnx
    node = [n for n in onnx.load(path).graph.node if n.op_type == "TreeEnsembleClassifier"][0]
    a = attrs(node)
    rows = []
    for i in range(len(a["nodes_modes"])):
        if a["nodes_modes"][i] == b"LEAF":
            continue
        r = base.copy()
        r[a["nodes_featureids"][i]] = np.float32(a["nodes_values"][i])
        rows.append(r)
        if len(rows) == THRESHOLD_NODES:
            break
    assert len(rows) == THRESHOLD_NODES, path
    return rows


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def main():
    import onnxruntime as ort
    X, y, _, ts = make_features(SAMPLE_EVENTS, SAMPLE_SEED, 100_000)
    warm = np.flatnonzero(ts >= ts.min() + HOUR_MS)
    n_sample = N_ROWS - len(EDGE) - 2 * THRESHOLD_NODES
    pick = np.sort(np.random.RandomState(0).choice(warm, n_sample, replace=False))
    sample = X[pick]
    base = np.median(sample, axis=0).astype(np.float32)
    thr = threshold_rows(base, os.path.join(MODELS_DIR, "rf.onnx")) + \
        threshold_rows(base, os.path.join(MODELS_DIR, "gbt.onnx"))
    rows = np.ascontiguousarray(np.concatenate([EDGE, np.array(thr, np.float32), sample]), dtype="<f4")
    assert rows.shape == (N_ROWS, 10) and np.isfinite(rows).all()
    out = {"rows": N_ROWS, "features": 10, "edge_rows": [0, len(EDGE)],
           "threshold_rows": [len(EDGE), len(EDGE) + 2 * THRESHOLD_NODES],
           "sample_rows": [len(EDGE) + 2 * THRESHOLD_NODES, N_ROWS],
           "sample": {"events": SAMPLE_EVENTS, "seed": SAMPLE_SEED, "cards": 100_000,
                      "from_event_index": int(warm[0]),
                      "fraud_rows": int(y[pick].sum())},
           "files": {}}
    path = os.path.join(MODELS_DIR, "rows.f32")
    rows.tofile(path)
    out["files"]["rows.f32"] = sha256(path)
    print("wrote %s (%d bytes; %d fraud rows among the %d sampled)"
          % (path, os.path.getsize(path), out["sample"]["fraud_rows"], n_sample))
    out["models"] = {}
    for name, mpath in model_paths().items():
        sess = ort.InferenceSession(mpath, providers=["CPUExecutionProvider"])
        p = sess.run(["probabilities"], {"features": rows})[0]
        assert p.shape == (N_ROWS, 2) and p.dtype == np.float32, (p.shape, p.dtype)
        p1 = np.ascontiguousarray(p[:, 1], dtype="<f4")
        single = np.array([sess.run(["probabilities"], {"features": rows[i:i + 1]})[0][0, 1]
                           for i in range(N_ROWS)], np.float32)
        diff = float(np.abs(single - p1).max())
        epath = os.path.join(MODELS_DIR, name + ".expected.f32")
        p1.tofile(epath)
        out["files"][name + ".expected.f32"] = sha256(epath)
        out["models"][name] = {"model_sha256": sha256(mpath), "min": float(p1.min()), "max": float(p1.max()),
                               "mean": float(p1.mean()), "rows_ge_0.5": int((p1 >= 0.5).sum()),
                               "max_abs_batch1_vs_batch4096": diff}
        print("%-16s P(fraud) min %.3g max %.3g mean %.4f, >= 0.5: %4d rows; batch 1 vs 4096 max diff %.1e"
              % (name, p1.min(), p1.max(), p1.mean(), (p1 >= 0.5).sum(), diff))
    with open(os.path.join(MODELS_DIR, "rows.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
