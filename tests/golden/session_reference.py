#!/usr/bin/env python3
"""Reference computation for weir's golden SESSION and allowed-lateness cases (60-68).

Independent of weir: each case of CASES restates its pipeline.sql by hand (the SQL is not
read) and runs the row-at-a-time algorithm of README.md ("SESSION windows and allowed
lateness") literally:

    W = -inf
    for each good row (bad rows are skipped and do not move W):
        process the row under W
        W' = max(W, ts - delay)
        if W' > W: W = W'; advance(W)
    at the end of input: advance(+inf)

process: a row the WHERE removes only moves W. TUMBLE/HOP: the row joins each of its windows
[s, e) with e - 1 + L > W; none left: late. SESSION: the candidate [ts, ts + gap) merges with
every kept session [s, e) of its partition key with s <= ts + gap and ts <= e; when it touches
none and ts + gap - 1 + L <= W, the row is late.

advance(W), for every kept window/session: the rows emitted under bounds it no longer has are
emitted again as deletes; if it is due (W >= e - 1), each group whose output row differs from
the one last emitted under the current bounds is emitted (update if one was, else insert);
once W >= e - 1 + L it is purged (forgotten).

Outputs: expected/<out>.messages.jsonl ({"key": null, "value": ..., "change": ...} per record,
in emission order; compared as a multiset) for the cases with allowed lateness, and plain
expected/<out>.jsonl for those without (all inserts, asserted); expected/counts.json. For the
plan-time error cases (ERRORS) it writes expected/error.txt as reference.py does.

    python3 tests/golden/session_reference.py            # rewrite the expected files
    python3 tests/golden/session_reference.py --check    # exit 1 if a committed file differs
    python3 tests/golden/session_reference.py --trace 63-session-allowed-lateness
                                                         # print the row-by-row walk of a case

Standard library only (plus reference.py's input decoding).
"""

import json
import math
import statistics
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ next to the cases
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import (  # noqa: E402  (decoding shared with reference.py)
    CASES_DIR,
    HERE,
    BadInput,
    decoder,
    error_expectation,
    iso,
    read_messages,
    render,
)

SEC = 1_000
MIN = 60_000


# ---------------------------------------------------------------------------------------------
# Window assignment


class Tumble:
    def __init__(self, size):
        self.size = size

    def windows(self, ts):
        s = ts // self.size * self.size
        return [(s, s + self.size)]


class Hop:
    def __init__(self, slide, size):
        self.slide, self.size = slide, size

    def windows(self, ts):
        out, s = [], ts // self.slide * self.slide
        while s > ts - self.size:
            out.append((s, s + self.size))
            s -= self.slide
        return sorted(out)


class Session:
    def __init__(self, gap, partition_by):
        self.gap, self.partition_by = gap, partition_by


# ---------------------------------------------------------------------------------------------
# Aggregates


def agg_value(func, values):
    nn = [v for v in values if v is not None]
    if func == "count_star":
        return len(values)
    if func == "count":
        return len(nn)
    if func == "count_distinct":
        return len(set(nn))
    if not nn:
        return None
    if func == "sum":
        return sum(nn)
    if func == "avg":
        return statistics.fmean(nn)
    if func == "min":
        return min(nn)
    if func == "max":
        return max(nn)
    raise ValueError(func)


# ---------------------------------------------------------------------------------------------
# The operator


class Win:
    """A window (TUMBLE/HOP) or a session: bounds, its rows, and what was emitted for it.

    emitted: {(bounds, group): output row} of the records emitted and not retracted, including
    those of sessions merged into this one (under their own, older bounds).
    """

    def __init__(self, key, start, end):
        self.key, self.start, self.end = key, start, end
        self.rows = []
        self.emitted = {}

    @property
    def bounds(self):
        return (self.start, self.end)


class Run:
    def __init__(self, spec, trace=False):
        self.spec = spec
        self.trace = trace
        self.W = -math.inf
        self.wins = []  # kept windows/sessions, in creation order
        self.purged = []  # (key, start, end) of purged sessions, to keep cases off an edge
        self.out = []  # (change, value)
        self.late = 0
        self.bad = 0

    def log(self, *a):
        if self.trace:
            print("   ", *a)

    # -- one row -------------------------------------------------------------------------
    def process(self, row):
        sp, ts, W, L = self.spec, row["ts"], self.W, self.spec["lateness"]
        passes = sp["where"] is None or sp["where"](row) is True
        kind = sp["window"]
        if isinstance(kind, Session):
            gap = kind.gap
            key = tuple(row[c] for c in kind.partition_by)
            touching = [w for w in self.wins
                        if w.key == key and w.start <= ts + gap and ts <= w.end]
            is_late = not touching and ts + gap - 1 + L <= W
            if not passes:
                # Whether a late row the WHERE removes counts as late is left open: no case has one.
                assert not is_late, "a row removed by WHERE would be late"
                self.log("filtered out by WHERE (moves W only)")
                return
            if is_late:
                self.late += 1
                self.log(f"LATE: [{fmt(ts)}, {fmt(ts + gap)}) touches no kept session and "
                         f"ts+gap-1+L = {fmt(ts + gap - 1 + L)} <= W")
                return
            if not touching:
                for k, s, e in self.purged:
                    # A new session overlapping or touching a purged one of the same key: the
                    # spec allows it (purged sessions are forgotten) but the cases avoid it.
                    assert not (k == key and s <= ts + gap and ts <= e), "touches a purged session"
            new = Win(key, min([ts] + [w.start for w in touching]),
                      max([ts + gap] + [w.end for w in touching]))
            for w in touching:
                new.rows += w.rows
                new.emitted.update(w.emitted)
                self.wins.remove(w)
            new.rows.append(row)
            self.wins.append(new)
            self.log(f"session {key} -> {span(new)}"
                     + (f" (merged {', '.join(span(w) for w in touching)})" if touching else " (new)"))
        else:
            mine = kind.windows(ts)
            ok = [b for b in mine if not (b[1] - 1 + L <= W)]
            if not passes:
                assert ok, "a row removed by WHERE would be late"
                return
            if not ok:
                self.late += 1
                self.log("LATE: all windows past e-1+L: " + ", ".join(span_b(b) for b in mine))
                return
            for b in ok:
                w = next((w for w in self.wins if w.bounds == b), None)
                if w is None:
                    w = Win((), *b)
                    self.wins.append(w)
                w.rows.append(row)
            self.log("joins " + ", ".join(span_b(b) + (" (fired)" if W >= b[1] - 1 else "")
                                          for b in ok)
                     + "".join(f"; too late for {span_b(b)}" for b in mine if b not in ok))

    # -- output of one window ------------------------------------------------------------
    def rows_of(self, w):
        sp = self.spec
        groups = {}
        for r in w.rows:
            groups.setdefault(tuple(r[c] for c in sp["group_by"]), []).append(r)
        win_cols = {"window_start": iso(w.start), "window_end": iso(w.end),
                    "window_time": iso(w.end - 1)}
        out = {}
        for g, rs in groups.items():
            gv = dict(zip(sp["group_by"], g))
            val = {}
            for name, func, col in sp["select"]:
                if func is None:
                    val[name] = win_cols[col] if col in win_cols else gv[col]
                else:
                    val[name] = agg_value(func, rs if col is None else [r[col] for r in rs])
            out[g] = val
        return out

    def emit(self, change, value):
        self.out.append((change, value))
        self.log(f"{change.upper():6} {json.dumps(value)}")

    # -- advance(W) ----------------------------------------------------------------------
    def advance(self, W):
        self.W = W
        L = self.spec["lateness"]
        self.log(f"advance(W = {fmt(W)})")
        for w in list(self.wins):
            for (b, g), val in list(w.emitted.items()):
                if b != w.bounds:
                    self.emit("delete", val)
                    del w.emitted[(b, g)]
            if W >= w.end - 1:
                for g, val in self.rows_of(w).items():
                    before = w.emitted.get((w.bounds, g))
                    if before == val:
                        continue
                    self.emit("insert" if before is None else "update", val)
                    w.emitted[(w.bounds, g)] = val
            if W >= w.end - 1 + L:
                self.wins.remove(w)
                self.purged.append((w.key, w.start, w.end))
                self.log(f"purge {w.key} {span(w)}")


def fmt(ms):
    if ms in (math.inf, -math.inf):
        return "+inf" if ms > 0 else "-inf"
    t = iso(ms)
    return t[11:-1] if t.startswith("2026-01-01") else t  # HH:MM:SS.mmm on 2026-01-01


def span_b(b):
    return f"[{fmt(b[0])}, {fmt(b[1])})"


def span(w):
    return span_b(w.bounds)


def run_case(case, spec, trace=False):
    msgs = read_messages(case, spec["topic"])
    decode = decoder(spec["columns"], "ts")
    r = Run(spec, trace)
    delay = spec["delay"]
    for m in msgs:
        try:
            row = decode(m)
        except BadInput:
            r.bad += 1
            r.log(f"BAD {m.value!r}")
            continue
        if trace:
            print(f"row {m.offset + 1:2}: {m.value.decode()}   (W = {fmt(r.W)})")
        r.process(row)
        w2 = max(r.W, row["ts"] - delay)
        if w2 > r.W:
            r.advance(w2)
    if trace:
        print("end of input")
    r.advance(math.inf)
    assert not r.wins
    return r


# ---------------------------------------------------------------------------------------------
# Cases: each pipeline restated by hand.

CMA = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
CA = [("card_id", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]


def col(c):
    """A selected column that is not an aggregate: a GROUP BY column or a window column."""
    return (c, None, c)


CASES = {
    # SESSION(TABLE tx PARTITION BY card_id, DESCRIPTOR(ts), INTERVAL '30' SECOND), delay 5 s.
    "60-session-basic": dict(
        topic="g60-tx", columns=CMA, delay=5 * SEC, lateness=0, out="g60-out", where=None,
        window=Session(30 * SEC, ["card_id"]), group_by=["card_id"],
        select=[col("card_id"), col("window_start"), col("window_end"), col("window_time"),
                ("n", "count_star", None), ("total", "sum", "amount"), ("lo", "min", "amount"),
                ("hi", "max", "amount"), ("merchants", "count_distinct", "merchant")]),
    # SESSION(TABLE tx, DESCRIPTOR(ts), INTERVAL '20' SECOND) GROUP BY ..., merchant; delay 5 s.
    "61-session-no-partition-extra-group": dict(
        topic="g61-tx", columns=CMA, delay=5 * SEC, lateness=0, out="g61-out", where=None,
        window=Session(20 * SEC, []), group_by=["merchant"],
        select=[col("merchant"), col("window_start"), col("window_end"),
                ("n", "count_star", None), ("total", "sum", "amount"),
                ("cards", "count_distinct", "card_id")]),
    # SESSION PARTITION BY card_id, merchant, gap 30 s, WHERE amount > 0; delay 5 s.
    "62-session-partition-two-columns-and-where": dict(
        topic="g62-tx", columns=CMA, delay=5 * SEC, lateness=0, out="g62-out",
        where=lambda r: None if r["amount"] is None else r["amount"] > 0,
        window=Session(30 * SEC, ["card_id", "merchant"]), group_by=["card_id", "merchant"],
        select=[col("card_id"), col("merchant"), col("window_start"), col("window_end"),
                ("n", "count_star", None), ("total", "sum", "amount"), ("mean", "avg", "amount")]),
    # SESSION PARTITION BY card_id, gap 30 s, delay 0, allowed lateness 1 min. See WALK_63.
    "63-session-allowed-lateness": dict(
        topic="g63-tx", columns=CA, delay=0, lateness=1 * MIN, out="g63-out", where=None,
        window=Session(30 * SEC, ["card_id"]), group_by=["card_id"],
        select=[col("card_id"), col("window_start"), col("window_end"),
                ("n", "count_star", None), ("total", "sum", "amount")]),
    # TUMBLE 1 min, delay 5 s, allowed lateness 30 s.
    "64-tumble-allowed-lateness": dict(
        topic="g64-tx", columns=CA, delay=5 * SEC, lateness=30 * SEC, out="g64-out", where=None,
        window=Tumble(1 * MIN), group_by=["card_id"],
        select=[col("card_id"), col("window_start"), col("window_end"),
                ("n", "count_star", None), ("total", "sum", "amount")]),
    # HOP slide 30 s size 1 min, delay 0, allowed lateness 20 s.
    "65-hop-allowed-lateness": dict(
        topic="g65-tx", columns=CA, delay=0, lateness=20 * SEC, out="g65-out", where=None,
        window=Hop(30 * SEC, 1 * MIN), group_by=["card_id"],
        select=[col("card_id"), col("window_start"), col("window_end"),
                ("n", "count_star", None), ("total", "sum", "amount")]),
}

# Case 63 walked through by hand with the rules of README.md (times are 00:MM:SS of 2026-01-01;
# gap 30 s, delay 0 so W = the largest ts so far, L = 60 s; a session [s, e) fires when
# W >= e - 1 ms and is purged when W >= e - 1 ms + 60 s). Every line of the expected file is
# accounted for below, advance by advance (within one advance the file may list the records in
# another order; the runner compares a multiset).
#
#  1 a@00:00  W -inf   A = [00:00, 00:30)                               W -> 00:00, nothing due
#  2 c@00:00  W 00:00  C1 = [00:00, 00:30)                              (tie: W stays)
#  3 d@00:00           D1 = [00:00, 00:30)
#  4 e@00:00           E = [00:00, 00:30)
#  5 b@00:05           B = [00:05, 00:35)                               W -> 00:05, nothing due
#  6 a@00:10           A = [00:00, 00:40)                               W -> 00:10
#  7 c@00:40  W 00:10  [00:40, 01:10) does not touch C1 (00:40 > 00:30): C2 = [00:40, 01:10)
#                      W -> 00:40: due are A (e-1 = 00:39.999), B, C1, D1, E:
#                        insert a [00:00,00:40) n=2 total=3     insert b [00:05,00:35) n=1 total=1
#                        insert c [00:00,00:30) n=1 total=1     insert d [00:00,00:30) n=1 total=1
#                        insert e [00:00,00:30) n=1 total=1
#                      nothing purged (the earliest, e-1+L = 01:29.999 > 00:40)
#  8 g@00:35  W 00:40  new G = [00:35, 01:05): not late (01:04.999 + 1 min > 00:40), not due
#  9 d@00:50           [00:50, 01:20) does not touch D1 (00:50 > 00:30): D2 = [00:50, 01:20)
#                      W -> 00:50: nothing due (C2 01:09.999, G 01:04.999, D2 01:19.999)
# 10 a@00:08  W 00:50  inside fired, kept A: candidate [00:08, 00:38) merges, bounds unchanged
# 11 d@00:25           [00:25, 00:55) touches fired D1 (00:25 <= 00:30) and open D2
#                      (00:50 <= 00:55): D = [00:00, 01:20), open again
# 12 b@00:20           [00:20, 00:50) extends fired B: B = [00:05, 00:50)
# 13 z@01:00           Z = [01:00, 01:30); W -> 01:00:
#                        update a [00:00,00:40) n=3 total=7                     (row 10)
#                        delete b [00:05,00:35) n=1 total=1; B is due (00:49.999 <= 01:00):
#                        insert b [00:05,00:50) n=2 total=3                     (row 12)
#                        delete d [00:00,00:30) n=1 total=1; D not due (01:19.999)   (row 11)
#                      nothing purged (first is A at 01:39.999)
# 14 z@01:15           Z = [01:00, 01:45); W -> 01:15: C2 due (01:09.999), G due (01:04.999):
#                        insert c [00:40,01:10) n=1 total=2     insert g [00:35,01:05) n=1 total=1
# 15 c@00:25  W 01:15  [00:25, 00:55) touches fired C1 (kept until 01:29.999) and fired C2:
#                      C = [00:00, 01:10)
# 16 z@01:22           Z = [01:00, 01:52); W -> 01:22:
#                        delete c [00:00,00:30) n=1 total=1     delete c [00:40,01:10) n=1 total=2
#                        insert c [00:00,01:10) n=3 total=7     (C due: 01:09.999 <= 01:22)
#                        insert d [00:00,01:20) n=3 total=7     (D due at last: 01:19.999)
# 17 f@00:40  W 01:22  no f session; [00:40, 01:10) is due (01:09.999 <= W) but not late
#                      (01:09.999 + 1 min = 02:09.999 > W): new F, inserted at the next advance
# 18 z@01:40           Z = [01:00, 02:10); W -> 01:40:
#                        insert f [00:40,01:10) n=1 total=1
#                      purge A (00:39.999 + 1 min <= 01:40) and E (01:29.999 <= 01:40)
# 19 e@00:05  W 01:40  no kept e session (E purged); [00:05, 00:35): 00:34.999 + 1 min =
#                      01:34.999 <= W: LATE (late = 1)
# 20 g@00:10  W 01:40  alone it would be late (00:39.999 + 1 min = 01:39.999 <= W), but it
#                      touches fired, kept G [00:35, 01:05) (00:35 <= 00:40): G = [00:10, 01:05)
# 21 z@01:50           Z = [01:00, 02:20); W -> 01:50:
#                        delete g [00:35,01:05) n=1 total=1
#                        insert g [00:10,01:05) n=2 total=3     (G due)
#                      purge B (00:49.999 + 1 min <= 01:50)
# end        advance(+inf): insert z [01:00,02:20) n=5 total=5; the rest are unchanged; all purged.
#
# 19 records: 13 inserts (a, b, c, d, e; b; c, g; c, d; f; g; z), 1 update (a), 5 deletes
# (b, d; c, c; g); late = 1.
WALK_63_EXPECTED = [
    ("insert", "a", "00:00", "00:40", 2, 3), ("insert", "b", "00:05", "00:35", 1, 1),
    ("insert", "c", "00:00", "00:30", 1, 1), ("insert", "d", "00:00", "00:30", 1, 1),
    ("insert", "e", "00:00", "00:30", 1, 1),
    ("update", "a", "00:00", "00:40", 3, 7),
    ("delete", "b", "00:05", "00:35", 1, 1), ("insert", "b", "00:05", "00:50", 2, 3),
    ("delete", "d", "00:00", "00:30", 1, 1),
    ("insert", "c", "00:40", "01:10", 1, 2), ("insert", "g", "00:35", "01:05", 1, 1),
    ("delete", "c", "00:00", "00:30", 1, 1), ("delete", "c", "00:40", "01:10", 1, 2),
    ("insert", "c", "00:00", "01:10", 3, 7), ("insert", "d", "00:00", "01:20", 3, 7),
    ("insert", "f", "00:40", "01:10", 1, 1),
    ("delete", "g", "00:35", "01:05", 1, 1), ("insert", "g", "00:10", "01:05", 2, 3),
    ("insert", "z", "01:00", "02:20", 5, 5),
]
WALK_63_LATE = 1


def check_walk_63(run):
    """The hand walk above, compared with the computed output as a multiset."""
    got = [(c, v["card_id"], v["window_start"][14:19], v["window_end"][14:19], v["n"], v["total"])
           for c, v in run.out]
    assert sorted(got) == sorted(WALK_63_EXPECTED), "case 63 differs from the hand walk-through"
    assert run.late == WALK_63_LATE


# Plan-time error cases, as in reference.py: (case, offending token, the line it is on, words
# the message must contain, whether to assert the line only).
ERRORS = [
    ("66-error-session-no-gap", "SESSION",
     "FROM TABLE(SESSION(TABLE tx PARTITION BY card_id, DESCRIPTOR(ts)))", ["SESSION"], False),
    ("67-error-session-partition-unknown-column", "account_id",
     "FROM TABLE(SESSION(TABLE tx PARTITION BY account_id, DESCRIPTOR(ts), INTERVAL '30' SECOND))",
     ["account_id"], False),
    ("68-error-allowed-lateness-bad-value", "'soon'",
     "SET 'window.allowed-lateness' = 'soon';", ["window.allowed-lateness"], False),
]


def main():
    if "--trace" in sys.argv:
        case = sys.argv[sys.argv.index("--trace") + 1]
        r = run_case(case, CASES[case], trace=True)
        print(f"late = {r.late}, dead_lettered = {r.bad}, records = {len(r.out)}")
        return
    check = "--check" in sys.argv
    files = {}
    for case, spec in CASES.items():
        r = run_case(case, spec)
        exp = CASES_DIR / case / "expected"
        if spec["lateness"] == 0:
            assert all(c == "insert" for c, _ in r.out), case
            files[exp / f"{spec['out']}.jsonl"] = render([v for _, v in r.out])
        else:
            files[exp / f"{spec['out']}.messages.jsonl"] = render(
                [{"key": None, "value": v, "change": c} for c, v in r.out])
        files[exp / "counts.json"] = json.dumps({"dead_lettered": r.bad, "late": r.late}) + "\n"
        if case == "63-session-allowed-lateness":
            check_walk_63(r)
    for case, *spec in ERRORS:
        files[CASES_DIR / case / "expected" / "error.txt"] = error_expectation(case, *spec)

    differ = []
    for path, text in files.items():
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(str(path.relative_to(HERE)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if differ:
        print("expected files differ from the reference:\n  " + "\n  ".join(differ))
        sys.exit(1)
    print(f"{len(CASES)} SESSION/lateness cases and {len(ERRORS)} error cases "
          f"{'checked' if check else 'written'}")


if __name__ == "__main__":
    main()
