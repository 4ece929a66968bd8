#!/usr/bin/env python3
"""Train the scoring-benchmark models (issue 6, item 5) and export them to ONNX.

Four binary classifiers on the per-transaction fraud features of
examples/fraud/train_per_event.py (the same generator, the same feature code,
imported from there), input "features" [N, 10] float32 in this order:

    amount, n_1m, sum_1m, n_10m, sum_10m, merchants_10m, n_1h, sum_1h, amount_vs_1h, risk

    lr.onnx   LogisticRegression on standardised features; the standardisation
              is folded into the coefficients (skl2onnx would export a
              StandardScaler as ai.onnx.ml Scaler, which tract does not have)
    mlp.onnx  MLPClassifier(hidden_layer_sizes=(32, 16)), standardisation folded
              into the first layer (as examples/fraud/train.py does)
    rf.onnx   RandomForestClassifier(n_estimators=100, max_depth=10)
    gbt.onnx  GradientBoostingClassifier(n_estimators=100, max_depth=3)
              (not HistGradientBoosting: skl2onnx 1.20 fails to convert it under
              scikit-learn 1.9, numpy integer/bool values in node attributes)

Export: skl2onnx, target_opset {"": 15, "ai.onnx.ml": 3}, zipmap off; then, as
examples/fraud/train.py's finalize_graph does, the int64 "label" output and the
nodes only it needs are pruned and the batch dimension is named "N", leaving
one output "probabilities" [N, 2] float32 (column 1 = P(fraud)), which is what
weir's predict reads.

Nothing else is changed: rf.onnx and gbt.onnx are skl2onnx's tree ensembles as
exported.  gbt.onnx keeps skl2onnx's binary encoding of the initial score,
base_values = [b] (one value for two class labels), which onnxruntime reads as
the positive class's prior log-odds.  tract-onnx 0.23.9's own
TreeEnsembleClassifier would refuse it ("base_values length 1 (or undefined),
got 2": it wants one base value per class label), and has other problems
(leaf lookup quadratic in the number of trees, BRANCH_GTE nodes read back as
leaves, no TreeEnsembleRegressor); weir does not use it: it registers its own
evaluator for both tree ops with tract's ONNX parser (operators/src/trees.rs),
which follows onnxruntime, single binary base value included.  The "tract
checks" this script writes are about tract's own op, i.e. what a plain tract
load would hit, not what weir does.

Data: --events generator events (seed --seed, --cards cards, 200 events per
simulated second; the default 900 000 span 75 simulated minutes, so the later
rows have a full hour of history behind them, as in a running pipeline),
features as in train_per_event.py; --rows of them drawn at random
(RandomState(0); keeps training time and tree sizes down), split by card
(card % 5 == 0 is test).  Threads limited to 1 (the machine is shared).

    python3 bench/scoring/train_models.py [--events 900000] [--rows 300000]

Writes bench/scoring/models/{lr,mlp,rf,gbt}.onnx, models/train_report.json and models/README.md (graph summaries).
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FRAUD = os.path.join(ROOT, "examples", "fraud")
sys.path.insert(0, FRAUD)
import generator  # noqa: E402
import train_per_event as tpe  # noqa: E402
from train import finalize_graph  # noqa: E402

MODELS_DIR = os.path.join(HERE, "models")
FEATURES = tpe.FEATURES
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
START = "2026-11-21T00:00:00Z"
MODELS = ["lr", "mlp", "rf", "gbt"]


def make_features(events, seed, cards, start=START):
    """(X float32 [n, 10], y int64, card int64, ts int64) for `events` generator events."""
    card, merch, cents, ts, fraud = tpe.load_events(generator.generate(events, seed, cards, start))
    X = tpe.per_event_features(card, merch, cents, ts).astype(np.float32)
    return X, fraud.astype(np.int64), card, ts


def fold_scaler_into_linear(clf, mean, scale):
    """((x - mean) / scale) @ w + b == x @ (w / scale) + (b - (mean / scale) @ w)."""
    w = clf.coef_.copy()
    clf.coef_ = w / scale[None, :]
    clf.intercept_ = clf.intercept_ - (w * (mean / scale)[None, :]).sum(axis=1)
    return clf


def to_onnx(model, name):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
                          target_opset=TARGET_OPSET, options={id(model): {"zipmap": False}})
    raw_ops = [(n.domain or "ai.onnx", n.op_type) for n in onx.graph.node]
    raw_outputs = [o.name for o in onx.graph.output]
    onx = finalize_graph(onx, ["probabilities"])
    onx.graph.name = "weir_bench_" + name  # skl2onnx puts a random uuid here
    onx.doc_string = "weir scoring benchmark: %s over %s" % (type(model).__name__, ",".join(FEATURES))
    return onx, {"raw_ops": raw_ops, "raw_outputs": raw_outputs}


def attrs(node):
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# --- what tract 0.23.9's own tree op would say, read off tract-onnx's source ------------------
# weir does not use it: operators/src/trees.rs evaluates TreeEnsembleClassifier/Regressor (registered
# with tract's ONNX parser, onnxruntime's semantics).  These checks say what a plain tract load would hit.

# tract-onnx parses these modes, but tract-onnx-opl decodes a stored comparator only if it is 1..=5
# (TryFrom<u8> for Cmp) and BRANCH_GTE is 6, so a BRANCH_GTE node is read back as a leaf.
TRACT_NODE_MODES = {"BRANCH_LEQ", "BRANCH_LT", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "LEAF"}


def tract_registered_ops():
    """Op names tract-onnx 0.23.9 registers, from the cargo registry's copy of its source (None if absent)."""
    import re
    dirs = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tract-onnx-0.23.9/src"))
    if not dirs:
        return None
    ops = set()
    for path in glob.glob(os.path.join(dirs[0], "**", "*.rs"), recursive=True):
        with open(path) as fh:
            ops.update(re.findall(r'reg\.insert\("([A-Za-z0-9_]+)"', fh.read()))
    return ops


def tract_tree_problems(node):
    """The checks tract-onnx 0.23.9's tree_ensemble_classifier.rs makes when parsing (its bail!s)."""
    a = attrs(node)
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    probs = []
    labels = a.get("classlabels_int64s") or a.get("classlabels_strings")
    n_classes = len(labels)
    n_nodes = len(a["nodes_featureids"])
    for k in ("nodes_nodeids", "nodes_treeids", "nodes_featureids", "nodes_truenodeids",
              "nodes_falsenodeids", "nodes_values", "nodes_modes"):
        if k not in a:
            probs.append("missing %s (tract does not read *_as_tensor)" % k)
        elif len(a[k]) != n_nodes:
            probs.append("%s length %d != %d" % (k, len(a[k]), n_nodes))
    if "base_values" in a and len(a["base_values"]) != n_classes:
        probs.append("base_values length %d, tract wants %d (one per class label)"
                     % (len(a["base_values"]), n_classes))
    pt = dec(a.get("post_transform", "NONE"))
    if pt not in ("NONE", "SOFTMAX", "LOGISTIC"):
        probs.append("post_transform %s unsupported" % pt)
    modes = {dec(m) for m in a["nodes_modes"]}
    if "BRANCH_GTE" in modes:
        probs.append("BRANCH_GTE nodes (tract-onnx-opl reads them back as leaves: wrong scores)")
    if modes - TRACT_NODE_MODES - {"BRANCH_GTE"}:
        probs.append("node modes %s unsupported" % (modes - TRACT_NODE_MODES - {"BRANCH_GTE"}))
    inc = lambda x: all(y in (v, v + 1) for v, y in zip(x, x[1:]))  # noqa: E731
    if not inc(list(a["nodes_treeids"])) or a["nodes_treeids"][0] != 0:
        probs.append("nodes_treeids not 0, then increasing by 1")
    if not inc(list(a["class_treeids"])) or a["class_treeids"][0] != 0:
        probs.append("class_treeids not 0, then increasing by 1")
    if any(k.endswith("_as_tensor") for k in a):
        probs.append("*_as_tensor attributes (tract reads only the float lists)")
    return probs


def tract_problems(onx, registered):
    probs = []
    if registered is not None:
        missing = sorted({n.op_type for n in onx.graph.node} - registered)
        if missing:
            probs.append("ops tract-onnx does not register: %s" % missing)
    for n in onx.graph.node:
        if n.op_type == "TreeEnsembleClassifier":
            probs += tract_tree_problems(n)
        if n.op_type == "TreeEnsembleRegressor":
            probs.append("TreeEnsembleRegressor (not in tract)")
        if n.op_type in ("ZipMap", "Scaler"):
            probs.append("%s (not in tract)" % n.op_type)
    return probs


# --- graph summary for models/README.md ---------------------------------------------------------

def value_info(v):
    import onnx
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return "`%s` %s %s" % (v.name, dims, onnx.TensorProto.DataType.Name(t.elem_type).lower())


def tree_summary(node):
    a = attrs(node)
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    modes = [dec(m) for m in a["nodes_modes"]]
    treeids = np.array(a["nodes_treeids"])
    n_trees = len(set(treeids.tolist()))
    leaves = sum(m == "LEAF" for m in modes)
    class_ids = sorted(set(a["class_ids"]))
    per_leaf = len(a["class_ids"]) / max(leaves, 1)
    w = np.array(a["class_weights"])
    mode_counts = {m: modes.count(m) for m in sorted(set(modes))}
    depth = 0
    # depth of each tree: walk from node 0 of every tree
    nodeids = np.array(a["nodes_nodeids"])
    tru, fal = np.array(a["nodes_truenodeids"]), np.array(a["nodes_falsenodeids"])
    for t in sorted(set(treeids.tolist())):
        idx = {int(nid): i for i, nid in zip(np.flatnonzero(treeids == t), nodeids[treeids == t])}
        stack = [(0, 0)]
        while stack:
            nid, d = stack.pop()
            i = idx[nid]
            depth = max(depth, d)
            if modes[i] != "LEAF":
                stack += [(int(tru[i]), d + 1), (int(fal[i]), d + 1)]
    lines = [
        "- post_transform: `%s`" % dec(a.get("post_transform", "NONE")),
        "- classlabels_int64s: %s" % list(a.get("classlabels_int64s", [])),
        "- trees: %d; nodes: %d (%d branch, %d leaf); max depth %d" % (
            n_trees, len(modes), len(modes) - leaves, leaves, depth),
        "- nodes_modes present: %s" % ", ".join("`%s` x%d" % kv for kv in mode_counts.items()),
        "- leaf entries (class_ids/class_weights): %d, class ids present %s, %.2f per leaf; "
        "weights min %.4g max %.4g" % (len(a["class_ids"]), class_ids, per_leaf, w.min(), w.max()),
        "- base_values: %s" % (("`%s`" % [round(float(v), 6) for v in a["base_values"]])
                               if "base_values" in a else "absent"),
        "- other attributes: %s" % ", ".join(sorted(
            "`%s`%s" % (k, "" if k != "nodes_missing_value_tracks_true" else
                        " (all %s)" % sorted(set(int(v) for v in a[k])))
            for k in a if not k.startswith(("nodes_modes", "nodes_treeids", "class_ids", "class_weights",
                                            "base_values", "post_transform", "classlabels")))),
    ]
    return lines


def linear_summary(node):
    a = attrs(node)
    coef = np.array(a["coefficients"])
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return [
        "- LinearClassifier post_transform: `%s`; multi_class: %s; classlabels_ints: %s" % (
            dec(a.get("post_transform", "NONE")), a.get("multi_class", 0), list(a.get("classlabels_ints", []))),
        "- coefficients: %d values (%d rows of %d); intercepts: %s" % (
            len(coef), len(coef) // len(FEATURES), len(FEATURES),
            [round(float(v), 6) for v in a.get("intercepts", [])]),
    ]


def describe(name, path, onx, info, registered):
    import onnx
    g = onx.graph
    lines = ["## `%s.onnx`: %s" % (name, info["estimator"]), ""]
    lines.append("- file: %d bytes; ONNX IR %d; opsets %s; producer %s %s" % (
        os.path.getsize(path), onx.ir_version,
        ", ".join("%s %d" % (o.domain or "ai.onnx", o.version) for o in onx.opset_import),
        onx.producer_name, onx.producer_version))
    lines.append("- inputs: %s; outputs: %s" % (", ".join(value_info(v) for v in g.input),
                                                ", ".join(value_info(v) for v in g.output)))
    lines.append("- nodes (%d, in order): %s" % (len(g.node), ", ".join(
        "%s%s" % ("" if not n.domain else n.domain + ":", n.op_type) for n in g.node)))
    lines.append("- initializers: %s" % (", ".join(
        "`%s` %s" % (t.name, list(t.dims)) for t in g.initializer) or "none"))
    lines.append("- skl2onnx's graph before pruning: outputs %s; nodes %s" % (
        info["raw_outputs"], ", ".join("%s%s" % ("" if d == "ai.onnx" else d + ":", o)
                                       for d, o in info["raw_ops"])))
    for n in g.node:
        if n.op_type == "TreeEnsembleClassifier":
            lines += tree_summary(n)
        elif n.op_type == "LinearClassifier":
            lines += linear_summary(n)
        elif n.op_type == "Normalizer":
            lines.append("- Normalizer norm: `%s`" % attrs(n)["norm"].decode())
    probs = tract_problems(onx, registered)
    lines.append("- tract 0.23.9 checks (ops registered; tract's own TreeEnsembleClassifier parse checks, "
                 "not weir's evaluator): %s" % ("; ".join(probs) if probs else "none fail"))
    lines.append("- test metrics: ROC AUC %.4f, average precision %.4f; max |onnxruntime - scikit-learn| "
                 "P(fraud) on the test rows %.2e; fit %.0f s" % (
                     info["auc"], info["ap"], info["max_abs_diff_vs_sklearn"], info["fit_s"]))
    if info.get("note"):
        lines.append("- " + info["note"])
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=900_000)
    ap.add_argument("--rows", type=int, default=300_000, help="train+test rows drawn from the events (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--out", default=MODELS_DIR)
    ap.add_argument("--only", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    import onnx
    import onnxruntime as ort
    import sklearn
    import skl2onnx
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    X, y, card, ts = make_features(args.events, args.seed, args.cards)
    if args.rows and args.rows < len(y):
        keep = np.sort(np.random.RandomState(0).choice(len(y), args.rows, replace=False))
        X, y, card, ts = X[keep], y[keep], card[keep], ts[keep]
    test = card % 5 == 0
    Xtr, ytr, Xte, yte = X[~test], y[~test], X[test], y[test]
    print("%d events (seed %d, %d cards), %d rows: %d train, %d test, fraud %.2f%%  [%.0f s]"
          % (args.events, args.seed, args.cards, len(y), len(ytr), len(yte), 100 * y.mean(), time.time() - t0))
    X64 = Xtr.astype(np.float64)
    scaler = StandardScaler().fit(X64)

    def fit(name):
        if name == "lr":
            m = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(X64), ytr)
            fold_scaler_into_linear(m, scaler.mean_, scaler.scale_)
            return m, "LogisticRegression(C=1.0), StandardScaler folded into coef_/intercept_"
        if name == "mlp":
            m = MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-4, max_iter=60, early_stopping=True,
                              n_iter_no_change=8, random_state=0).fit(scaler.transform(X64), ytr)
            tpe.fold_scaler_into_mlp(m, scaler.mean_, scaler.scale_)
            return m, "MLPClassifier(hidden_layer_sizes=(32, 16), relu; %d iterations), StandardScaler " \
                      "folded into the first layer" % m.n_iter_
        if name == "rf":
            m = RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=1, random_state=0).fit(Xtr, ytr)
            return m, "RandomForestClassifier(n_estimators=100, max_depth=10)"
        if name == "gbt":
            m = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(Xtr, ytr)
            return m, "GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1)"
        raise ValueError(name)

    registered = tract_registered_ops()
    report = {"events": args.events, "rows": int(len(y)), "seed": args.seed, "cards": args.cards, "train_rows": int(len(ytr)),
              "test_rows": int(len(yte)), "fraud_rate": float(y.mean()),
              "versions": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                           "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                           "numpy": np.__version__}, "models": {}}
    report_path = os.path.join(args.out, "train_report.json")
    if os.path.exists(report_path) and args.only != ",".join(MODELS):
        with open(report_path) as fh:
            report["models"] = json.load(fh).get("models", {})
    for name in args.only.split(","):
        t1 = time.time()
        model, estimator = fit(name)
        fit_s = time.time() - t1
        onx, info = to_onnx(model, name)
        note = None
        if name == "gbt":
            note = ("skl2onnx's export unmodified: base_values is one value (the prior log-odds) for two class "
                    "labels, as onnxruntime reads it; tract's own TreeEnsembleClassifier would refuse the load, "
                    "weir's evaluator (operators/src/trees.rs) takes it")
        onnx.checker.check_model(onx, full_check=True)
        path = os.path.join(args.out, name + ".onnx")
        with open(path, "wb") as fh:
            fh.write(onx.SerializeToString())
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        p = sess.run(["probabilities"], {"features": Xte})[0]
        assert p.shape == (len(Xte), 2), p.shape
        sk = model.predict_proba(Xte.astype(np.float64) if name in ("lr", "mlp") else Xte)[:, 1]
        info.update(estimator=estimator, fit_s=fit_s, auc=float(roc_auc_score(yte, p[:, 1])),
                    ap=float(average_precision_score(yte, p[:, 1])),
                    max_abs_diff_vs_sklearn=float(np.abs(p[:, 1] - sk).max()),
                    bytes=os.path.getsize(path), note=note,
                    tract_problems=tract_problems(onx, registered))
        report["models"][name] = info
        print("%s: %s; %d bytes; AUC %.4f AP %.4f; |ort - sklearn| %.1e; fit %.0f s; tract: %s"
              % (name, estimator, info["bytes"], info["auc"], info["ap"], info["max_abs_diff_vs_sklearn"],
                 fit_s, info["tract_problems"] or "ok"))
        if note:
            print("  " + note)

    with open(report_path, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    write_readme(args.out, report, registered)
    print("wrote %s  [%.0f s]" % (args.out, time.time() - t0))


def write_readme(out, report, registered):
    import onnx
    v = report["versions"]
    lines = [
        "# Scoring-benchmark models (generated by `bench/scoring/train_models.py`; do not edit)",
        "",
        "Binary fraud classifiers on the 10 per-transaction features of "
        "`examples/fraud/train_per_event.py` (%s), trained on %d rows drawn at random from "
        "the features of %d generator events (seed %d, %d cards, 200 events per simulated second; %d train rows, "
        "%d test rows split by card, fraud %.2f%%). "
        "scikit-learn %s, skl2onnx %s, onnx %s, onnxruntime %s. Exported with target opset "
        "ai.onnx 15 / ai.onnx.ml 3, zipmap off; the int64 `label` output and the nodes only it "
        "needs were pruned (`finalize_graph` of `examples/fraud/train.py`), so every model has one input "
        "`features` [N, 10] float32 and one output `probabilities` [N, 2] float32, column 1 = P(fraud). "
        "Every file passes `onnx.checker.check_model(full_check=True)`." % (
            ", ".join(FEATURES), report["rows"], report["events"], report["seed"], report["cards"], report["train_rows"],
            report["test_rows"], 100 * report["fraud_rate"], v["scikit-learn"], v["skl2onnx"], v["onnx"],
            v["onnxruntime"]),
        "",
        "Other files: `rows.f32` (4096 x 10 float32 little-endian, row-major; `bench/scoring/rows.py`), "
        "`<model>.expected.f32` (4096 float32: onnxruntime's `probabilities[:, 1]` on those rows), "
        "`train_report.json` (the figures below as JSON).",
        "",
        "The tree ensembles are skl2onnx's exports, unmodified. weir evaluates `TreeEnsembleClassifier` "
        "(and `TreeEnsembleRegressor`) itself (`operators/src/trees.rs`, registered with tract's ONNX parser, "
        "following onnxruntime, including a single base value for a binary classifier), not with tract-onnx "
        "0.23.9's own op, which has a leaf lookup quadratic in the number of trees, requires one base value per "
        "class label (so refuses `gbt.onnx`), reads `BRANCH_GTE` nodes back as leaves and has no "
        "`TreeEnsembleRegressor`. The 'tract checks' line is this script's reading of tract-onnx 0.23.9's source "
        "(op registry, `tree_ensemble_classifier.rs` parse checks): what a plain tract load would hit, not what "
        "weir does; not a run of tract.",
        "",
    ]
    for name in MODELS:
        if name not in report["models"]:
            continue
        path = os.path.join(out, name + ".onnx")
        lines += describe(name, path, onnx.load(path), report["models"][name], registered) + [""]
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
