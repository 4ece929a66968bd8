#!/usr/bin/env python3
"""Train the per-transaction fraud model (fraud-per-event.onnx) on features
computed exactly like pipeline.sql's OVER windows plus the merchant-table join.

Every transaction is scored on its own.  Its frames are per card_id, ordered
by ts, ``RANGE BETWEEN INTERVAL 'X' PRECEDING AND CURRENT ROW``: every
transaction of the same card with ts in [ts - X, ts], inclusive at both ends,
including rows with the same ts (peers) whichever arrived first, and the row
itself.  r = the merchant table's row for the transaction's merchant (every
merchant has one, versioned at the generator's start, and every ts is >= the
start, so every transaction matches).  Features, float32, in this order:

     0 amount
     1 n_1m          = count(*)                 over 1 minute
     2 sum_1m        = sum(amount)              over 1 minute
     3 n_10m         = count(*)                 over 10 minutes
     4 sum_10m       = sum(amount)              over 10 minutes
     5 merchants_10m = count(DISTINCT merchant) over 10 minutes
     6 n_1h          = count(*)                 over 1 hour
     7 sum_1h        = sum(amount)              over 1 hour
     8 amount_vs_1h  = amount / avg(amount)     over 1 hour
     9 risk          = r.risk

Label: the transaction's own is_fraud.  Features are computed over all
generated events (late ones included: with a 5 s watermark delay none of the
generator's events is late).  Sums are exact (integer cents / 100).

Training data: --events (default 1 500 000) at 200 events per simulated second
= 125 simulated minutes, 100 000 cards, seed 1.  All events are used,
including the first hour, whose 1 h frames are not yet full: a pipeline reading
the topic from the earliest offset starts cold the same way.  Split by card
(card % 5 == 0 is test); test metrics are reported over all test rows and over
the "warm" ones (ts >= start + 1 h).  A second model without `risk` is trained
the same way, for comparison only (not exported).

Model: MLPClassifier on standardised features, the standardisation folded into
the first layer, exported with skl2onnx (opset 15), zipmap off, the int64
label output pruned (see train.py): one input "features" [N, 10] float32, one
output "probabilities" [N, 2] float32, batch dimension named "N".

    python3 train_per_event.py                  # train, write the model and fixtures
    python3 train_per_event.py --check-features # numpy features vs DuckDB window functions;
                                                # writes fixtures/per_event_features.jsonl

Writes fraud-per-event.onnx and fixtures/per_event_scores.jsonl next to this file.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generator  # noqa: E402
from train import finalize_graph, fold_scaler_into_mlp  # noqa: E402

MINUTE = 60_000
HOUR = 60 * MINUTE
FEATURES = ["amount", "n_1m", "sum_1m", "n_10m", "sum_10m", "merchants_10m",
            "n_1h", "sum_1h", "amount_vs_1h", "risk"]
COUNTS = {"n_1m", "n_10m", "merchants_10m", "n_1h"}
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
RISK = np.array([generator.risk(i) for i in range(generator.M)])


def load_events(events):
    """Columns of an iterable of generator events (dicts)."""
    card, merch, cents, ts, fraud = [], [], [], [], []
    for ev in events:
        card.append(int(ev["card_id"][5:]))
        merch.append(int(ev["merchant"][2:]))
        cents.append(int(round(ev["amount"] * 100)))
        ts.append(generator.parse_ts(ev["ts"]))
        fraud.append(ev["is_fraud"])
    return (np.array(card, np.int64), np.array(merch, np.int64), np.array(cents, np.int64),
            np.array(ts, np.int64), np.array(fraud, bool))


def per_event_features(card, merch, cents, ts):
    """The 10 features of every event, float64 [n, 10], in input order."""
    n = len(card)
    order = np.lexsort((ts, card))  # by card, then ts
    c, m, a, t = card[order], merch[order], cents[order], ts[order]
    t0 = t.min() if n else 0
    span = HOUR + (t.max() - t0 if n else 0) + 1
    key = c * span + (t - t0)  # strictly ordered by (card, ts); frames never cross cards
    end = np.searchsorted(key, key, side="right")  # includes peers (same card and ts)
    csum = np.concatenate([[0], np.cumsum(a)])

    def frame(x_ms):
        start = np.searchsorted(key, key - x_ms, side="left")  # ts - X inclusive
        return start, (end - start).astype(np.float64), (csum[end] - csum[start]) / 100.0

    s1m, n1m, sum1m = frame(MINUTE)
    s10m, n10m, sum10m = frame(10 * MINUTE)
    s1h, n1h, sum1h = frame(HOUR)

    # count(DISTINCT merchant) over [s10m, end): positions j whose previous
    # occurrence of the same (card, merchant) lies before the frame start.
    o2 = np.lexsort((np.arange(n), m, c))
    prev = np.full(n, -1, np.int64)
    same = (c[o2][1:] == c[o2][:-1]) & (m[o2][1:] == m[o2][:-1])
    prev[o2[1:][same]] = o2[:-1][same]
    distinct = np.zeros(n, np.int64)
    length = end - s10m
    for d in range(int(length.max()) if n else 0):
        live = np.flatnonzero(length > d)
        j = s10m[live] + d
        distinct[live] += prev[j] < s10m[live]

    amount = a / 100.0
    X = np.stack([amount, n1m, sum1m, n10m, sum10m, distinct.astype(np.float64),
                  n1h, sum1h, amount / (sum1h / n1h), RISK[m]], axis=1)
    out = np.empty_like(X)
    out[order] = X
    return out


def duckdb_features(card, merch, cents, ts):
    """The same features with DuckDB window functions (input order)."""
    import duckdb
    con = duckdb.connect()
    con.execute("CREATE TABLE ev (i BIGINT, card BIGINT, merchant TEXT, amount DOUBLE, ts TIMESTAMP)")
    rows = [(i, int(card[i]), "m-%04d" % merch[i], cents[i] / 100.0, int(ts[i]))
            for i in range(len(card))]
    con.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, epoch_ms(?))", rows)
    con.execute("CREATE TABLE merchant_risk (merchant TEXT, risk DOUBLE)")
    con.executemany("INSERT INTO merchant_risk VALUES (?, ?)",
                    [("m-%04d" % i, generator.risk(i)) for i in range(generator.M)])
    q = """
    SELECT e.i, e.amount,
           count(*)                   OVER w1m,
           sum(e.amount)              OVER w1m,
           count(*)                   OVER w10m,
           sum(e.amount)              OVER w10m,
           count(DISTINCT e.merchant) OVER w10m,
           count(*)                   OVER w1h,
           sum(e.amount)              OVER w1h,
           e.amount / avg(e.amount)   OVER w1h,
           r.risk
    FROM ev AS e JOIN merchant_risk AS r ON e.merchant = r.merchant
    WINDOW w1m  AS (PARTITION BY e.card ORDER BY e.ts
                    RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW),
           w10m AS (PARTITION BY e.card ORDER BY e.ts
                    RANGE BETWEEN INTERVAL 10 MINUTE PRECEDING AND CURRENT ROW),
           w1h  AS (PARTITION BY e.card ORDER BY e.ts
                    RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
    ORDER BY e.i
    """
    res = np.array(con.execute(q).fetchall(), np.float64)
    assert len(res) == len(card) and (res[:, 0] == np.arange(len(card))).all()
    return res[:, 1:]


def assert_same(A, B, what):
    counts = [FEATURES.index(f) for f in COUNTS]
    assert (A[:, counts] == B[:, counts]).all(), what + ": counts differ"
    rel = np.abs(A - B) / np.maximum(np.abs(B), 1e-300)
    worst = rel.max(axis=0)
    assert (worst <= 1e-9).all(), "%s: %s" % (what, dict(zip(FEATURES, worst)))
    print("  %s: %d rows agree (max rel diff %.1e)" % (what, len(A), worst.max()))


def check_features(args):
    start_ms = generator.parse_ts(args.start)
    # 1. the validation file (weir's tests/tests/example_features.rs replays it
    #    through pipeline.sql): 3000 events of 300 cards at 2 events per
    #    simulated second (25 minutes), so the 1 min, 10 min and 1 h frames differ
    evs = list(generator.generate(3000, 42, 300, args.start, rate=2))
    cols = load_events(evs)
    X = per_event_features(*cols[:4])
    assert_same(X, duckdb_features(*cols[:4]), "generate(3000, 42, 300, rate=2)")
    with open(args.features_fixture, "w") as fh:
        for ev, row in zip(evs, X):
            out = dict(ev)
            for name, v in zip(FEATURES, row):
                out[name] = int(v) if name in COUNTS else float(v)
            fh.write(json.dumps(out) + "\n")
    print("  wrote %s (%d rows; multi-row frames: %d)"
          % (args.features_fixture, len(X), int((X[:, 6] > 1).sum())))
    # 2. dense data: 300 cards at 2 events per simulated second (2.8 h), so
    #    1 h frames hold dozens of rows and late events reorder within frames
    cols = load_events(generator.generate(20_000, 42, 300, args.start, rate=2))
    assert_same(per_event_features(*cols[:4]), duckdb_features(*cols[:4]), "dense (300 cards, 2.8 h)")
    # 3. peers: the same events with ts truncated to 5 s (many same-card ties),
    #    plus rows exactly X before another (frame bounds are inclusive)
    card, merch, cents, ts, _ = cols
    ts5 = ts // 5000 * 5000
    extra_ts = np.array([start_ms, start_ms + MINUTE, start_ms + 10 * MINUTE, start_ms + HOUR,
                         start_ms + HOUR + 1], np.int64)
    card = np.concatenate([card, np.full(5, 9999)])
    merch = np.concatenate([merch, [1, 2, 1, 3, 2]])
    cents = np.concatenate([cents, [100, 200, 300, 400, 500]])
    ts5 = np.concatenate([ts5, extra_ts])
    X = per_event_features(card, merch, cents, ts5)
    assert_same(X, duckdb_features(card, merch, cents, ts5), "peers (ts truncated to 5 s)")
    assert X[-4, 1] == 2 and X[-3, 3] == 3 and X[-2, 6] == 4 and X[-1, 6] == 4, X[-5:, [1, 3, 6]]
    print("feature check passed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_500_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--start", default="2026-11-21T00:00:00Z")
    ap.add_argument("--out", default=os.path.join(HERE, "fraud-per-event.onnx"))
    ap.add_argument("--fixture", default=os.path.join(HERE, "fixtures", "per_event_scores.jsonl"))
    ap.add_argument("--features-fixture",
                    default=os.path.join(HERE, "fixtures", "per_event_features.jsonl"))
    ap.add_argument("--check-features", action="store_true",
                    help="only cross-check the features against DuckDB and write the features fixture")
    args = ap.parse_args()
    if args.check_features:
        check_features(args)
        return

    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    import onnx
    import onnxruntime as ort

    t_begin = time.time()
    print("generating %d events (seed %d, %d cards)..." % (args.events, args.seed, args.cards))
    card, merch, cents, ts, fraud = load_events(
        generator.generate(args.events, args.seed, args.cards, args.start))
    print("  fraud events: %d (%.2f%%), of which at compromised merchants %.1f%%; "
          "legitimate events at compromised merchants %.1f%%"
          % (fraud.sum(), 100 * fraud.mean(), 100 * np.isin(merch[fraud], generator.COMPROMISED).mean(),
             100 * np.isin(merch[~fraud], generator.COMPROMISED).mean()))
    X = per_event_features(card, merch, cents, ts).astype(np.float32)
    y = fraud.astype(np.int64)
    warm = ts >= generator.parse_ts(args.start) + HOUR
    print("features: %d rows (%d with a full hour behind them)  [%.0f s]"
          % (len(y), warm.sum(), time.time() - t_begin))

    test = card % 5 == 0
    ytr, yte = y[~test], y[test]

    def fit(cols):
        Xtr = X[~test][:, cols].astype(np.float64)
        scaler = StandardScaler().fit(Xtr)
        clf = MLPClassifier(hidden_layer_sizes=(16, 8), alpha=1e-4, max_iter=60,
                            early_stopping=True, n_iter_no_change=8, random_state=0)
        clf.fit(scaler.transform(Xtr), ytr)
        return clf, scaler

    def report(name, p_tr, p_te):
        print("%s:" % name)
        print("  ROC AUC train %.4f test %.4f (warm test %.4f)"
              % (roc_auc_score(ytr, p_tr), roc_auc_score(yte, p_te), roc_auc_score(yte[warm[test]], p_te[warm[test]])))
        print("  average precision train %.4f test %.4f (warm test %.4f)"
              % (average_precision_score(ytr, p_tr), average_precision_score(yte, p_te),
                 average_precision_score(yte[warm[test]], p_te[warm[test]])))
        q = X[test][:, FEATURES.index("n_10m")] <= 2  # little card history to go on
        print("  test rows with n_10m <= 2 (%d, %d fraud): ROC AUC %.4f average precision %.4f"
              % (q.sum(), yte[q].sum(), roc_auc_score(yte[q], p_te[q]), average_precision_score(yte[q], p_te[q])))
        for thr in (0.5, 0.9):
            flag = p_te >= thr
            print("  test @%.1f: precision %.3f recall %.3f (flagged %d of %d)"
                  % (thr, yte[flag].mean() if flag.any() else float("nan"), flag[yte == 1].mean(),
                     flag.sum(), len(yte)))

    all_cols = list(range(len(FEATURES)))
    no_risk = all_cols[:-1]
    clf0, sc0 = fit(no_risk)
    print("trained in %d iterations  [%.0f s]" % (clf0.n_iter_, time.time() - t_begin))
    report("without risk (9 features, not exported)",
           clf0.predict_proba(sc0.transform(X[~test][:, no_risk]))[:, 1],
           clf0.predict_proba(sc0.transform(X[test][:, no_risk]))[:, 1])

    clf, scaler = fit(all_cols)
    print("trained in %d iterations  [%.0f s]" % (clf.n_iter_, time.time() - t_begin))
    fold_scaler_into_mlp(clf, scaler.mean_, scaler.scale_)
    onx = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
                          target_opset=TARGET_OPSET, options={id(clf): {"zipmap": False}})
    onx = finalize_graph(onx, ["probabilities"])
    onx.graph.name = "weir_fraud_per_event"  # skl2onnx puts a random uuid here
    onx.doc_string = ("weir fraud example: MLP over per-transaction OVER features "
                      + ",".join(FEATURES))
    onnx.checker.check_model(onx)
    with open(args.out, "wb") as fh:
        fh.write(onx.SerializeToString())
    print("wrote %s (%d bytes)" % (args.out, os.path.getsize(args.out)))
    print("ops:", sorted({(n.domain or "ai.onnx", n.op_type) for n in onx.graph.node}),
          "opsets:", [(o.domain or "ai.onnx", o.version) for o in onx.opset_import])

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]

    def score(A):
        return sess.run(None, {"features": np.asarray(A, np.float32)})[0][:, 1]

    p_te = score(X[test])
    report("with risk (exported, onnxruntime)", score(X[~test]), p_te)
    print("  max |onnx - sklearn| on test: %.2e"
          % np.abs(p_te - clf.predict_proba(X[test].astype(np.float64))[:, 1]).max())

    # fixture: 200 rows = edge rows + test positives + test negatives
    edge = np.array([
        # amount n_1m sum_1m n_10m sum_10m merch_10m n_1h sum_1h vs_1h risk
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
    rng = np.random.RandomState(0)  # only for picking fixture rows, not for events
    Xte = X[test]
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
    print("wrote %s (%d rows: %d edge, %d fraud, %d legitimate)  [%.0f s]"
          % (args.fixture, len(F), len(edge), n_pos, len(pick) - n_pos, time.time() - t_begin))


if __name__ == "__main__":
    main()
