#!/usr/bin/env python3
"""Build the small ONNX test models in this directory and their fixtures.

    python3 tests/models/make_models.py

Writes, next to this file:
    classifier3.onnx  + classifier3.scores.jsonl  rows {"features": [3 floats], "p": prob_class_1}
    regressor2.onnx   + regressor2.scores.jsonl   rows {"features": [2 floats], "y": value}
    forest4.onnx      + forest4.scores.jsonl      rows {"features": [4 floats], "p": prob_class_1}

Every model has one input "features" [N, k] float32 (batch dim named "N") and
one output; skl2onnx's int64 "label" output is pruned from the classifiers
(tract materialises it as a TDim tensor and nothing here needs it).  Only ops
that tract-onnx 0.23.9 registers are used: see README.md.

Fixture values are onnxruntime's outputs.  Features are float32-exact (the
JSON number is the f64 value of the f32), outputs are the f32 result widened
to f64.  Training data come from a seeded numpy RandomState; the models and
fixtures are committed, so re-running is only needed to change them.
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}  # ml opset 3: TreeEnsembleClassifier, not ml-5 TreeEnsemble


def finalize_graph(onx, keep_outputs, batch="N"):
    """Keep only `keep_outputs`, prune nodes/initializers nothing needs, drop
    unused opset imports, and name the batch dimension (tract then types the
    graph without being told the input shape)."""
    g = onx.graph
    outs = [o for o in g.output if o.name in keep_outputs]
    del g.output[:]
    g.output.extend(outs)
    needed = set(keep_outputs)
    kept = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    domains = {n.domain for n in g.node}
    versions = {}
    for o in onx.opset_import:  # skl2onnx may list the default domain twice
        dom = "" if o.domain == "ai.onnx" else o.domain
        if dom == "" or dom in domains:
            versions[dom] = max(versions.get(dom, 0), o.version)
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    for v in list(g.input) + list(g.output):
        d0 = v.type.tensor_type.shape.dim[0]
        d0.Clear()
        d0.dim_param = batch
    onnx.checker.check_model(onx)
    return onx


def export(model, n_features, keep_outputs, path, doc, classifier):
    opts = {id(model): {"zipmap": False}} if classifier else None
    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                          target_opset=TARGET_OPSET, options=opts)
    onx = finalize_graph(onx, keep_outputs)
    onx.graph.name = os.path.basename(path)[: -len(".onnx")]  # skl2onnx puts a random uuid here
    onx.doc_string = doc
    with open(path, "wb") as fh:
        fh.write(onx.SerializeToString())
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in onx.graph.node})
    print("%s: %d bytes, ops %s" % (os.path.basename(path), os.path.getsize(path), ops))
    return ops


def ort_run(path, X):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"features": np.asarray(X, np.float32)})
    return out


def write_fixture(path, X, values, key):
    with open(path, "w") as fh:
        for row, v in zip(np.asarray(X, np.float32), values):
            fh.write(json.dumps({"features": [float(x) for x in row], key: float(v)}) + "\n")
    print("  wrote %s (%d rows)" % (os.path.basename(path), len(X)))


def fold_scaler_into_mlp(clf, scaler):
    W, b = clf.coefs_[0], clf.intercepts_[0]
    clf.coefs_[0] = W / scaler.scale_[:, None]
    clf.intercepts_[0] = b - (scaler.mean_ / scaler.scale_) @ W
    return clf


def fixture_rows(rs, X_test, edge, n_total):
    pick = rs.choice(len(X_test), n_total - len(edge), replace=False)
    return np.concatenate([np.asarray(edge, np.float32), X_test[np.sort(pick)]]).astype(np.float32)


def classifier3(rs):
    # label: a non-linear rule with noise over 3 features of different scales
    n = 6000
    X = np.stack([rs.normal(0, 1, n), rs.uniform(0, 10, n), rs.exponential(50, n)], 1).astype(np.float32)
    logit = 1.5 * X[:, 0] + 0.3 * (X[:, 1] - 5) ** 2 - 2.0 + 0.02 * X[:, 2] - 1.0
    y = (logit + rs.logistic(0, 1, n) > 0).astype(np.int64)
    Xtr, ytr, Xte, yte = X[:4500], y[:4500], X[4500:], y[4500:]
    sc = StandardScaler().fit(Xtr.astype(np.float64))
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=500, random_state=0).fit(sc.transform(Xtr), ytr)
    fold_scaler_into_mlp(clf, sc)
    path = os.path.join(HERE, "classifier3.onnx")
    export(clf, 3, ["probabilities"], path, "weir test model: MLP binary classifier, 3 features", True)
    print("  AUC train %.4f test %.4f" % (roc_auc_score(ytr, ort_run(path, Xtr)[:, 1]),
                                         roc_auc_score(yte, ort_run(path, Xte)[:, 1])))
    edge = [[0, 0, 0], [0.5, 2.25, 10], [-1, 5, 0.125], [3, 9.75, 400], [-100, 0, 0], [1e6, 1e6, 1e6]]
    F = fixture_rows(rs, Xte, edge, 50)
    write_fixture(os.path.join(HERE, "classifier3.scores.jsonl"), F, ort_run(path, F)[:, 1], "p")


def regressor2(rs):
    n = 2000
    X = np.stack([rs.uniform(-5, 5, n), rs.uniform(0, 100, n)], 1).astype(np.float32)
    y = 3.0 * X[:, 0] - 0.25 * X[:, 1] + 7.0 + rs.normal(0, 0.5, n)
    reg = LinearRegression().fit(X[:1500].astype(np.float64), y[:1500])
    path = os.path.join(HERE, "regressor2.onnx")
    export(reg, 2, ["variable"], path, "weir test model: linear regression, 2 features", False)
    print("  coef %s intercept %r; R2 test %.4f"
          % (reg.coef_.tolist(), reg.intercept_, r2_score(y[1500:], ort_run(path, X[1500:]).ravel())))
    edge = [[0, 0], [1, 1], [-2.5, 40], [4.75, 0.5], [-1e6, 1e6]]
    F = fixture_rows(rs, X[1500:], edge, 50)
    write_fixture(os.path.join(HERE, "regressor2.scores.jsonl"), F, ort_run(path, F).reshape(-1), "y")


def forest4(rs):
    n = 4000
    X = rs.normal(0, 1, (n, 4)).astype(np.float32) * np.float32([1, 2, 0.5, 10])
    y = ((X[:, 0] > 0.3) & (X[:, 1] < 1.0) | (X[:, 2] * X[:, 3] > 2.0)).astype(np.int64)
    flip = rs.uniform(0, 1, n) < 0.05
    y[flip] = 1 - y[flip]
    Xtr, ytr, Xte, yte = X[:3000], y[:3000], X[3000:], y[3000:]
    clf = RandomForestClassifier(n_estimators=6, max_depth=4, random_state=0).fit(Xtr, ytr)
    path = os.path.join(HERE, "forest4.onnx")
    export(clf, 4, ["probabilities"], path, "weir test model: random forest (6 trees, depth 4), 4 features", True)
    print("  AUC train %.4f test %.4f" % (roc_auc_score(ytr, ort_run(path, Xtr)[:, 1]),
                                         roc_auc_score(yte, ort_run(path, Xte)[:, 1])))
    edge = [[0, 0, 0, 0], [1, -1, 0.5, 8], [-3, 4, -1, -20], [0.5, 0.25, 2, 4], [1e6, -1e6, 1e6, 1e6]]
    F = fixture_rows(rs, Xte, edge, 50)
    write_fixture(os.path.join(HERE, "forest4.scores.jsonl"), F, ort_run(path, F)[:, 1], "p")


def main():
    classifier3(np.random.RandomState(3))
    regressor2(np.random.RandomState(2))
    forest4(np.random.RandomState(4))


if __name__ == "__main__":
    main()
