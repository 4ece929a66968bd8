#!/usr/bin/env python3
"""Checks HOP window results against a pure-Python reference (or against each other).

    # reference computed from the events, results from Flink (a directory of part files)
    python3 bench/compare_windows.py --events events.jsonl /tmp/flink-out
    # weir's or the Python baseline's JSONL (one file, or several)
    python3 bench/compare_windows.py --events events.jsonl weir-out.jsonl
    # two result sets against each other, no reference
    python3 bench/compare_windows.py --expected flink-out/ weir-out.jsonl
    # also check p_fraud against onnxruntime on the reference features
    python3 bench/compare_windows.py --events events.jsonl --model examples/fraud/fraud.onnx out.jsonl

Rows are JSON objects with the columns of windows.sql's card_features view:
card_id, window_start, window_end, n, avg_amount, max_amount, sd_amount,
n_merchants (and optionally p_fraud). A row without window_start gets
window_end - 10 min (card_scores, the pipeline's output, has no
window_start); columns missing from every row are not compared (the report
lists what was). Timestamps may be ISO-8601 strings ('2026-11-21T00:10:00Z',
'...T00:10:00', '... 00:10:00.000', with or without 'Z'; read as UTC) or
epoch milliseconds.

Reference (from the events, pure Python, no engine): every event is in the 10
windows [s, s + 10 min) with s a multiple of 1 minute and s <= ts < s + 10 min;
per (card_id, window): n, avg = fsum / n, max, stddev_pop from the two-pass
sum of squared deviations (math.fsum), count of distinct merchants. All
events count (no lateness): the generator's events are at most 3 s late and
the watermark delay is 5 s, so no engine should drop any; the report says how
many events would be late under a max(ts) - 5 s watermark in file order.

Agreement: the same set of (card_id, window_start, window_end), no duplicates;
n and n_merchants equal; avg_amount and max_amount within 1e-9 relative;
sd_amount within 1e-9 relative, or with |a^2 - b^2| <= 1e-12 * max_amount^2
(sum-of-squares formulas, which Flink uses, lose that much to cancellation
when sd is tiny next to the mean; the report counts rows accepted only by
this); p_fraud (with --model) within 1e-5 absolute (float32 model).
Exit status 0 when everything agrees, 1 otherwise. Prints one JSON object.
"""

import argparse
import json
import math
import os
import sys
from array import array
from datetime import datetime, timezone

import numpy as np

MINUTE_MS = 60_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FLOAT_COLS = ["avg_amount", "max_amount", "sd_amount"]
INT_COLS = ["n", "n_merchants"]
VALUE_COLS = ["n", "avg_amount", "max_amount", "sd_amount", "n_merchants"]
REL_TOL = 1e-9
SD_SQUARE_TOL = 1e-12
P_TOL = 1e-5

_ts_cache = {}


def ts_ms(v):
    """ISO-8601 string (UTC unless it says otherwise) or epoch ms -> epoch ms."""
    if isinstance(v, (int, float)):
        return int(v)
    r = _ts_cache.get(v)
    if r is None:
        s = v.strip().replace(" ", "T")
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        d = datetime.fromisoformat(s)
        if d.tzinfo is None:
            d = d.replace(tzinfo=timezone.utc)
        r = (d - EPOCH) // _td_ms
        if len(_ts_cache) < 1_000_000:
            _ts_cache[v] = r
    return r


from datetime import timedelta as _timedelta  # noqa: E402

_td_ms = _timedelta(milliseconds=1)


class Cards:
    """card_id string <-> dense integer."""

    def __init__(self):
        self.index = {}
        self.names = []

    def id(self, name):
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i


class Columns:
    """Row-major results as typed arrays: keys (card, ws, we) and values."""

    def __init__(self):
        self.card = array("q")
        self.ws = array("q")
        self.we = array("q")
        self.vals = {c: array("d") for c in VALUE_COLS + ["p_fraud"]}
        self.present = {c: False for c in VALUE_COLS + ["p_fraud"]}

    def add(self, card, ws, we, row):
        self.card.append(card)
        self.ws.append(ws)
        self.we.append(we)
        for c, arr in self.vals.items():
            v = row.get(c)
            if v is None:
                arr.append(math.nan)
            else:
                self.present[c] = True
                arr.append(float(v))

    def __len__(self):
        return len(self.card)

    def sorted(self):
        card = np.frombuffer(self.card, dtype=np.int64)
        ws = np.frombuffer(self.ws, dtype=np.int64)
        we = np.frombuffer(self.we, dtype=np.int64)
        order = np.lexsort((we, ws, card))
        keys = np.stack([card[order], ws[order], we[order]], axis=1)
        vals = {c: np.frombuffer(a, dtype=np.float64)[order] for c, a in self.vals.items()}
        return keys, vals


def result_files(paths):
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, names in os.walk(p):
                for name in sorted(names):
                    if not name.startswith(".") and not name.startswith("_"):
                        yield os.path.join(root, name)
        else:
            yield p


def load_results(paths, cards, size_ms):
    out = Columns()
    bad = 0
    for path in result_files(paths):
        with open(path, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    card = cards.id(row["card_id"])
                    we = ts_ms(row["window_end"])
                    ws = ts_ms(row["window_start"]) if row.get("window_start") is not None else we - size_ms
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                out.add(card, ws, we, row)
    return out, bad


def reference(events_path, cards, slide_ms, size_ms, delay_ms):
    """Pure-Python HOP aggregation of the events file."""
    per_card = {}
    n_events = late = 0
    max_ts = None
    with open(events_path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            ev = json.loads(line)
            ts = event_ts_ms(ev["ts"])
            card = ev["card_id"]
            if max_ts is not None and ts < max_ts - delay_ms:
                last_end = ts - ts % slide_ms + size_ms
                if last_end - 1 <= max_ts - delay_ms:
                    late += 1
            max_ts = ts if max_ts is None or ts > max_ts else max_ts
            per_card.setdefault(card, []).append((ts, float(ev["amount"]), ev["merchant"]))
            n_events += 1
    out = Columns()
    for card, evs in per_card.items():
        cid = cards.id(card)
        wins = {}
        for ts, amount, merchant in evs:
            last_start = ts - ts % slide_ms
            start = last_start
            while start > ts - size_ms:
                w = wins.get(start)
                if w is None:
                    w = wins[start] = ([], set())
                w[0].append(amount)
                w[1].add(merchant)
                start -= slide_ms
        for start in sorted(wins):
            amounts, merchants = wins[start]
            n = len(amounts)
            mean = math.fsum(amounts) / n
            sd = math.sqrt(math.fsum((a - mean) ** 2 for a in amounts) / n)
            out.add(cid, start, start + size_ms, {
                "n": n, "avg_amount": mean, "max_amount": max(amounts),
                "sd_amount": sd, "n_merchants": len(merchants)})
    return out, n_events, late


def event_ts_ms(s):
    """Like ts_ms; for the generator's '2026-11-21T00:00:00.123Z' the second is
    parsed once (cached) and the milliseconds added."""
    if isinstance(s, str) and len(s) == 24 and s[19] == "." and s[23] == "Z":
        return ts_ms(s[:19] + "Z") + int(s[20:23])
    return ts_ms(s)


def rel_close(a, b, tol=REL_TOL):
    return np.abs(a - b) <= tol * np.maximum(np.abs(a), np.abs(b))


def compare(exp, got, cards, model=None, max_examples=5):
    ek, ev = exp.sorted()
    gk, gv = got.sorted()
    report = {"expected_rows": int(len(ek)), "result_rows": int(len(gk))}

    def dups(keys):
        if len(keys) < 2:
            return 0
        same = np.all(keys[1:] == keys[:-1], axis=1)
        return int(same.sum())

    report["duplicate_result_keys"] = dups(gk)
    report["duplicate_expected_keys"] = dups(ek)

    # join on the key
    dt = np.dtype([("c", np.int64), ("s", np.int64), ("e", np.int64)])
    es = np.ascontiguousarray(ek).view(dt).ravel()
    gs = np.ascontiguousarray(gk).view(dt).ravel()
    common, ei, gi = np.intersect1d(es, gs, assume_unique=False, return_indices=True)
    missing = np.setdiff1d(es, gs)
    extra = np.setdiff1d(gs, es)

    def show(keys):
        return [{"card_id": cards.names[k["c"]], "window_start": _iso(k["s"]), "window_end": _iso(k["e"])}
                for k in keys[:max_examples]]

    report["missing_rows"] = int(len(missing))
    report["extra_rows"] = int(len(extra))
    if len(missing):
        report["missing_examples"] = show(missing)
    if len(extra):
        report["extra_examples"] = show(extra)

    compared = [c for c in VALUE_COLS if got.present[c] and exp.present[c]]
    report["compared_columns"] = compared
    report["not_compared"] = [c for c in VALUE_COLS if c not in compared]
    mismatches = {}
    worst = {}
    for c in compared:
        a = ev[c][ei]
        b = gv[c][gi]
        if c in INT_COLS:
            ok = a == b
        elif c == "sd_amount":
            scale = np.maximum(ev["max_amount"][ei], 1e-300) ** 2
            strict = rel_close(a, b)
            ok = strict | (np.abs(a * a - b * b) <= SD_SQUARE_TOL * scale)
            report["sd_rows_accepted_by_cancellation_floor"] = int((ok & ~strict).sum())
        else:
            ok = rel_close(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
        rel = np.where((a == b), 0.0, rel)
        worst[c] = float(np.nanmax(rel)) if len(rel) else 0.0
        bad = np.flatnonzero(~ok)
        if len(bad):
            mismatches[c] = {"count": int(len(bad)), "examples": [
                {"card_id": cards.names[int(ek[ei[j], 0])], "window_start": _iso(ek[ei[j], 1]),
                 "expected": float(a[j]), "got": float(b[j])} for j in bad[:max_examples]]}
    report["max_relative_difference"] = worst
    if model is not None and got.present["p_fraud"] and not all(exp.present[c] for c in VALUE_COLS):
        report["p_fraud_not_compared"] = "the expected rows lack some of the five features"
    elif model is not None and got.present["p_fraud"]:
        import onnxruntime as ort

        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        x = np.stack([ev[c][ei] for c in ["n", "avg_amount", "max_amount", "sd_amount", "n_merchants"]],
                     axis=1).astype(np.float32)
        p_ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 100000]})[0][:, 1]
                                for i in range(0, len(x), 100000)]) if len(x) else np.zeros(0)
        diff = np.abs(p_ref.astype(np.float64) - gv["p_fraud"][gi])
        report["p_fraud_max_abs_difference"] = float(diff.max()) if len(diff) else 0.0
        bad = np.flatnonzero(~(diff <= P_TOL))
        report["compared_columns"].append("p_fraud")
        if len(bad):
            mismatches["p_fraud"] = {"count": int(len(bad))}
    report["mismatches"] = mismatches
    report["agree"] = (not mismatches and report["missing_rows"] == 0 and report["extra_rows"] == 0
                       and report["duplicate_result_keys"] == 0)
    return report


def _iso(ms):
    ms = int(ms)
    return (EPOCH + _td_ms * ms).strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSONL files or directories of part files")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", help="events JSONL: compare with the pure-Python reference")
    src.add_argument("--expected", nargs="+", help="compare with these results instead")
    ap.add_argument("--model", help="ONNX model: check p_fraud against onnxruntime on the reference features")
    ap.add_argument("--slide-min", type=int, default=1)
    ap.add_argument("--size-min", type=int, default=10)
    ap.add_argument("--delay-ms", type=int, default=5000)
    ap.add_argument("--write-reference", help="also write the reference rows here as JSONL")
    a = ap.parse_args(argv)

    slide, size = a.slide_min * MINUTE_MS, a.size_min * MINUTE_MS
    cards = Cards()
    info = {}
    if a.events:
        exp, n_events, late = reference(a.events, cards, slide, size, a.delay_ms)
        info.update(events=n_events, events_late_under_watermark=late)
        if a.write_reference:
            k, v = exp.sorted()
            with open(a.write_reference, "w") as fh:
                for i in range(len(k)):
                    fh.write(json.dumps({"card_id": cards.names[k[i, 0]], "window_start": _iso(k[i, 1]),
                                         "window_end": _iso(k[i, 2]), "n": int(v["n"][i]),
                                         "avg_amount": float(v["avg_amount"][i]),
                                         "max_amount": float(v["max_amount"][i]),
                                         "sd_amount": float(v["sd_amount"][i]),
                                         "n_merchants": int(v["n_merchants"][i])}) + "\n")
    else:
        exp, bad = load_results(a.expected, cards, size)
        info["unparsable_expected_rows"] = bad
    got, bad = load_results(a.results, cards, size)
    info["unparsable_result_rows"] = bad
    report = compare(exp, got, cards, a.model)
    report.update(info)
    if bad:
        report["agree"] = False
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["agree"] else 1)


if __name__ == "__main__":
    main()
