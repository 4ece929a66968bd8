#!/usr/bin/env python3
"""Train the fraud model (fraud.onnx) on features computed exactly like the
example pipeline's HOP window:

    HOP(slide 1 minute, size 10 minutes), windows aligned to the epoch:
    window [start, start + 10 min) for every start that is a multiple of 1 min,
    so every event belongs to 10 windows; per (card_id, window):
        n           = count(*)
        avg_amount  = avg(amount)
        max_amount  = max(amount)
        sd_amount   = stddev_pop(amount)
        n_merchants = count(DISTINCT merchant)
    label = 1 if any event of the window has is_fraud.

Feature order (float32): [n, avg_amount, max_amount, sd_amount, n_merchants].

The model is a small MLPClassifier trained on standardised features; the
standardisation is then folded into the first layer's weights so the exported
graph has only standard ONNX ops (no ai.onnx.ml Scaler, which tract-onnx does
not implement).  Exported with skl2onnx (opset 15), zipmap off; the int64
"label" output and the nodes computing it (ArgMax, ai.onnx.ml
ArrayFeatureExtractor, ...) are pruned, leaving one input "features" [N, 5]
float32 and one output "probabilities" [N, 2] float32 (column 1 = fraud
probability), with the batch dimension named "N".

Usage: python3 train.py [--events 300000] [--seed 1] [--cards 100000]
Writes fraud.onnx and fixtures/scores.jsonl next to this file.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generator  # noqa: E402

MINUTE = 60_000
SIZE_SLIDES = 10
FEATURES = ["n", "avg_amount", "max_amount", "sd_amount", "n_merchants"]
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}


def load_events(n_events, seed, cards, start):
    card, merch, amt, ts, fraud = [], [], [], [], []
    for ev in generator.generate(n_events, seed, cards, start):
        card.append(int(ev["card_id"][5:]))
        merch.append(int(ev["merchant"][2:]))
        amt.append(ev["amount"])
        ts.append(generator.parse_ts(ev["ts"]))
        fraud.append(ev["is_fraud"])
    return (np.array(card, np.int64), np.array(merch, np.int64), np.array(amt, np.float64),
            np.array(ts, np.int64), np.array(fraud, bool))


def hop_features(card, merch, amt, ts, fraud):
    """Per (card, window start) aggregates, as the SQL HOP window computes them."""
    last_start = (ts // MINUTE) * MINUTE  # floor: the latest window containing ts
    starts = np.concatenate([last_start - j * MINUTE for j in range(SIZE_SLIDES)])
    cards = np.tile(card, SIZE_SLIDES)
    a = np.tile(amt, SIZE_SLIDES)
    m = np.tile(merch, SIZE_SLIDES)
    f = np.tile(fraud, SIZE_SLIDES)
    keys = np.stack([cards, starts], axis=1)
    uk, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    k = len(uk)
    n = np.bincount(inv, minlength=k).astype(np.float64)
    mean = np.bincount(inv, weights=a, minlength=k) / n
    mx = np.full(k, -np.inf)
    np.maximum.at(mx, inv, a)
    var = np.bincount(inv, weights=(a - mean[inv]) ** 2, minlength=k) / n  # two-pass stddev_pop
    sd = np.sqrt(var)
    pairs = np.unique(np.stack([inv, m], axis=1), axis=0)
    nm = np.bincount(pairs[:, 0], minlength=k).astype(np.float64)
    y = np.zeros(k, np.int64)
    np.maximum.at(y, inv, f.astype(np.int64))
    X = np.stack([n, mean, mx, sd, nm], axis=1).astype(np.float32)
    return uk, X, y


def fold_scaler_into_mlp(clf, mean, scale):
    """(x - mean) / scale @ W + b == x @ (W / scale[:, None]) + (b - (mean / scale) @ W)."""
    W, b = clf.coefs_[0], clf.intercepts_[0]
    clf.coefs_[0] = W / scale[:, None]
    clf.intercepts_[0] = b - (mean / scale) @ W
    return clf


def finalize_graph(onx, keep_outputs, batch="N"):
    """Keep only `keep_outputs` (drop e.g. skl2onnx's int64 "label" output, which
    tract materialises as a TDim tensor), prune nodes/initializers nothing needs,
    drop unused opset imports, and name the batch dimension so tract can type the
    graph without being told the input shape."""
    import onnx
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--start", default="2026-11-21T00:00:00Z")
    ap.add_argument("--out", default=os.path.join(HERE, "fraud.onnx"))
    ap.add_argument("--fixture", default=os.path.join(HERE, "fixtures", "scores.jsonl"))
    args = ap.parse_args()

    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    import onnx
    import onnxruntime as ort

    print("generating %d events (seed %d, %d cards)..." % (args.events, args.seed, args.cards))
    card, merch, amt, ts, fraud = load_events(args.events, args.seed, args.cards, args.start)
    print("  fraud events: %d (%.2f%%)" % (fraud.sum(), 100 * fraud.mean()))
    keys, X, y = hop_features(card, merch, amt, ts, fraud)
    print("windows: %d, positive: %d (%.3f%%)" % (len(y), y.sum(), 100 * y.mean()))

    # split by card so overlapping windows of one card never straddle train/test
    test = keys[:, 0] % 5 == 0
    Xtr, ytr, Xte, yte = X[~test], y[~test], X[test], y[test]

    scaler = StandardScaler().fit(Xtr.astype(np.float64))
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), alpha=1e-4, max_iter=60,
                        early_stopping=True, n_iter_no_change=8, random_state=0)
    clf.fit(scaler.transform(Xtr), ytr)
    auc_tr = roc_auc_score(ytr, clf.predict_proba(scaler.transform(Xtr))[:, 1])
    auc_te = roc_auc_score(yte, clf.predict_proba(scaler.transform(Xte))[:, 1])
    print("sklearn (scaled) AUC train %.4f test %.4f" % (auc_tr, auc_te))

    fold_scaler_into_mlp(clf, scaler.mean_, scaler.scale_)
    onx = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, 5]))],
                          target_opset=TARGET_OPSET, options={id(clf): {"zipmap": False}})
    onx = finalize_graph(onx, ["probabilities"])
    onx.graph.name = "weir_fraud"  # skl2onnx puts a random uuid here
    onx.doc_string = "weir fraud example: MLP over HOP(1m,10m) features " + ",".join(FEATURES)
    onnx.checker.check_model(onx)
    with open(args.out, "wb") as fh:
        fh.write(onx.SerializeToString())
    print("wrote %s (%d bytes)" % (args.out, os.path.getsize(args.out)))
    print("ops:", sorted({(n.domain or "ai.onnx", n.op_type) for n in onx.graph.node}))

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    prob_ix = 0

    def score(A):
        return sess.run(None, {"features": np.asarray(A, np.float32)})[prob_ix][:, 1]

    p_tr, p_te = score(Xtr), score(Xte)
    print("onnxruntime AUC train %.4f test %.4f" % (roc_auc_score(ytr, p_tr), roc_auc_score(yte, p_te)))
    print("onnxruntime average precision train %.4f test %.4f"
          % (average_precision_score(ytr, p_tr), average_precision_score(yte, p_te)))
    for thr in (0.5, 0.9):
        flag = p_te >= thr
        print("  test @%.1f: precision %.3f recall %.3f (windows flagged %d)"
              % (thr, yte[flag].mean() if flag.any() else float("nan"), flag[yte == 1].mean(), flag.sum()))
    print("  max |onnx - sklearn| on test: %.2e"
          % np.abs(p_te - clf.predict_proba(Xte.astype(np.float64))[:, 1]).max())

    # fixture: 200 rows = edge rows + test positives + test negatives
    edge = np.array([
        [0, 0, 0, 0, 0],
        [1, 0.01, 0.01, 0, 1],
        [1, 12.5, 12.5, 0, 1],
        [1, 1e6, 1e6, 0, 1],
        [3, 1e5, 3e5, 141421.36, 3],
        [2, 2500, 4000, 1500, 2],
        [40, 2.75, 4.99, 1.3, 2],
        [120, 2.5, 5, 1.4, 2],
        [25, 60, 180, 40, 25],
        [8, 35.2, 90.1, 25.5, 4],
        [1000, 1e4, 1e6, 5e4, 1000],
        [5, 1e9, 3e9, 1e9, 5],
    ], np.float32)
    rng = np.random.RandomState(0)  # only for picking fixture rows, not for events
    pos = np.flatnonzero(yte == 1)
    neg = np.flatnonzero(yte == 0)
    n_pos = min(len(pos), 60)
    pick = np.concatenate([rng.choice(pos, n_pos, replace=False),
                           rng.choice(neg, 200 - len(edge) - n_pos, replace=False)])
    F = np.concatenate([edge, Xte[np.sort(pick)]]).astype(np.float32)
    P = score(F)
    os.makedirs(os.path.dirname(args.fixture), exist_ok=True)
    with open(args.fixture, "w") as fh:
        for row, p in zip(F, P):
            fh.write(json.dumps({"features": [float(v) for v in row], "p": float(p)}) + "\n")
    print("wrote %s (%d rows)" % (args.fixture, len(F)))


if __name__ == "__main__":
    main()
