#!/usr/bin/env python3
"""Reference computation for weir's golden cases, written independently of weir.

Each case listed in CASES below restates its pipeline.sql in plain Python (it does not read the
SQL): decode the input messages with the case's column types, apply the projection and filter,
or assign event-time windows with the watermark and lateness rules of README.md, aggregate, and
write the case's expected/<topic>.jsonl and expected/counts.json. Predict cases score with
onnxruntime. For the plan-time error cases (ERRORS) it finds the offending token in pipeline.sql
and writes expected/error.txt.

    python3 tests/golden/reference.py            # rewrite the generated expected files
    python3 tests/golden/reference.py --check    # exit 1 if a committed expected file differs
    python3 tests/golden/reference.py --duckdb   # also recompute every window aggregate with
                                                 # DuckDB (pip install duckdb) and compare

Needs the standard library, plus numpy and onnxruntime for the predict cases.
"""

import json
import math
import re
import statistics
import struct
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"


class BadInput(Exception):
    """The message would be dead-lettered: not JSON, a field of the wrong type, no event time."""


# ---------------------------------------------------------------------------------------------
# Input: messages and decoding


# Every bad message any case's computation met, by (topic, partition, offset): its count is the
# case's expected dead_lettered total.
BAD_SEEN = set()


class Message:
    def __init__(self, value, key=None, partition=0, timestamp=None, offset=0):
        self.topic = None
        self.value = value  # bytes
        self.key = key
        self.partition = partition
        self.timestamp = timestamp
        self.offset = offset


def read_messages(case, topic):
    """The messages the runner produces, in file order, with the offsets Kafka will give them."""
    d = CASES_DIR / case / "input"
    plain, rich = d / f"{topic}.jsonl", d / f"{topic}.messages.jsonl"
    msgs = []
    if plain.exists():
        for line in plain.read_bytes().split(b"\n"):
            if line.strip():
                msgs.append(Message(line))
    else:
        for line in rich.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            m = json.loads(line)
            v = m["value"]
            raw = v.encode() if isinstance(v, str) else json.dumps(v, ensure_ascii=False).encode()
            msgs.append(Message(raw, m.get("key"), m.get("partition", 0), m.get("timestamp")))
    next_offset = defaultdict(int)
    for m in msgs:
        m.topic = topic
        m.offset = next_offset[m.partition]
        next_offset[m.partition] += 1
    return msgs


ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?Z$")


def parse_ts(v):
    """TIMESTAMP(3) from an ISO-8601 UTC string or epoch millis; returns epoch millis."""
    if isinstance(v, bool):
        raise BadInput("bool for timestamp")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        m = ISO.match(v)
        if not m:
            raise BadInput(f"not a timestamp: {v!r}")
        y, mo, d, h, mi, s, frac = m.groups()
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
        ms = int((frac or "0").ljust(3, "0"))
        return int(dt.timestamp()) * 1000 + ms
    raise BadInput(f"not a timestamp: {v!r}")


def iso(ms):
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def convert(v, typ):
    if v is None:
        return None
    if typ == "TEXT":
        if not isinstance(v, str):
            raise BadInput("not a string")
        return v
    if typ in ("DOUBLE", "FLOAT"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadInput("not a number")
        f = float(v)
        if typ == "FLOAT":
            # Only values exact in f32 are used, so the expected output is unambiguous.
            assert struct.unpack("f", struct.pack("f", f))[0] == f, f"{f} is not exact in f32"
        return f
    if typ in ("BIGINT", "INT"):
        if isinstance(v, bool) or isinstance(v, str):
            raise BadInput("not an integer")
        # A JSON float in an integer column is ambiguous (truncate or reject): cases avoid it.
        assert isinstance(v, int), f"float {v} for {typ} is not used by any case"
        bits = 63 if typ == "BIGINT" else 31
        assert -(2**bits) <= v < 2**bits
        return v
    if typ == "BOOLEAN":
        if not isinstance(v, bool):
            raise BadInput("not a boolean")
        return v
    if typ == "TS":
        return parse_ts(v)
    raise ValueError(typ)


def decoder(columns, time_col=None):
    """columns: [(name, TYPE)] where TYPE is a JSON column type or meta:key|timestamp|..."""

    def decode(msg):
        try:
            obj = json.loads(msg.value.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadInput("not JSON")
        if not isinstance(obj, dict):
            raise BadInput("not an object")
        row = {}
        for name, typ in columns:
            if typ == "meta:key":
                row[name] = msg.key
            elif typ == "meta:timestamp":
                row[name] = msg.timestamp
            elif typ == "meta:partition":
                row[name] = msg.partition
            elif typ == "meta:offset":
                row[name] = msg.offset
            else:
                row[name] = convert(obj.get(name), typ)
        if time_col is not None and row[time_col] is None:
            raise BadInput("no event time")
        row["_partition"] = msg.partition
        return row

    return decode


# ---------------------------------------------------------------------------------------------
# Stateless pipelines


def run_stateless(msgs, decode, project):
    """project(row) -> output dict, or None when the WHERE drops the row."""
    out, bad = [], []
    for m in msgs:
        try:
            row = decode(m)
        except BadInput:
            bad.append(m)
            BAD_SEEN.add((m.topic, m.partition, m.offset))
            continue
        r = project(row)
        if r is not None:
            out.append(r)
    return out, bad


# ---------------------------------------------------------------------------------------------
# Event time: windows, watermark, lateness


def tumble(size_ms):
    def assign(ts):
        s = ts // size_ms * size_ms
        return [(s, s + size_ms)]

    return assign


def hop(slide_ms, size_ms):
    def assign(ts):
        out = []
        s = ts // slide_ms * slide_ms
        while s > ts - size_ms:
            out.append((s, s + size_ms))
            s -= slide_ms
        return sorted(out)

    return assign


def order_partitions_sequential(msgs):
    """Partition 0 completely, then partition 1, ... (one of the orders a consumer may use)."""
    return sorted(msgs, key=lambda m: m.partition)  # stable: file order within a partition


def order_round_robin(msgs):
    per = defaultdict(list)
    for m in msgs:
        per[m.partition].append(m)
    out, i = [], 0
    while any(i < len(v) for v in per.values()):
        for p in sorted(per):
            if i < len(per[p]):
                out.append(per[p][i])
        i += 1
    return out


def run_event_time(msgs, decode, time_col, delay_ms, assign, where=None):
    """Feeds rows in the given order; returns ([(row, open_windows)], late_count, bad_msgs).

    W = min over partitions that have not reached their end of (max event time - delay); a
    partition with no row yet counts as -infinity; a partition ends right after its last message
    (the earliest moment a consumer can see its end). A window [s, e) has fired once W >= e - 1.
    A row is late when every window it belongs to has fired; otherwise it joins the open ones.
    Rows dropped by `where` still advance the watermark (it is taken at the source). Bad
    messages neither advance it nor count as late.
    """
    partitions = sorted({m.partition for m in msgs})
    remaining = defaultdict(int)
    for m in msgs:
        remaining[m.partition] += 1
    max_ts = {p: None for p in partitions}
    accepted, late, bad = [], 0, []

    def watermark():
        live = [p for p in partitions if remaining[p] > 0]
        if not live:
            return math.inf
        if any(max_ts[p] is None for p in live):
            return -math.inf
        return min(max_ts[p] for p in live) - delay_ms

    for m in msgs:
        try:
            row = decode(m)
        except BadInput:
            bad.append(m)
            BAD_SEEN.add((m.topic, m.partition, m.offset))
            remaining[m.partition] -= 1
            continue
        w = watermark()
        ts = row[time_col]
        if where is None or where(row):
            open_windows = [win for win in assign(ts) if not (w >= win[1] - 1)]
            if open_windows:
                accepted.append((row, open_windows))
            else:
                late += 1
        p = m.partition
        max_ts[p] = ts if max_ts[p] is None else max(max_ts[p], ts)
        remaining[p] -= 1
    return accepted, late, bad


def agg_value(func, values, is_ts=False):
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
    if func in ("min", "max"):
        v = min(nn) if func == "min" else max(nn)
        return iso(v) if is_ts else v
    if func == "var_samp":
        return statistics.variance(nn) if len(nn) > 1 else None
    if func == "var_pop":
        return statistics.pvariance(nn)
    if func == "stddev":
        return statistics.stdev(nn) if len(nn) > 1 else None
    if func == "stddev_pop":
        return statistics.pstdev(nn)
    if func == "median":
        # approx_percentile_cont(x, 0.5) is only asserted where it is exact: an odd number of
        # non-null values, distinct or all equal, whose median is the middle one.
        assert len(nn) % 2 == 1, f"median of an even count {nn}"
        return sorted(nn)[len(nn) // 2]
    raise ValueError(func)


def aggregate(accepted, keys, aggs, ts_cols=(), window_cols=("window_start", "window_end"), having=None):
    """aggs: [(out_name, func, column or None)]. Returns output rows sorted by window and key."""
    groups = defaultdict(list)
    for row, windows in accepted:
        for win in windows:
            groups[(win, tuple(row[k] for k in keys))].append(row)
    out = []
    for (win, key), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        r = dict(zip(keys, key))
        cols = {"window_start": iso(win[0]), "window_end": iso(win[1]), "window_time": iso(win[1] - 1)}
        for c in window_cols:
            r[c] = cols[c]
        for name, func, col in aggs:
            r[name] = agg_value(func, [x[col] for x in rows] if col else rows, col in ts_cols)
        if having is None or having(r):
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Cases. Each returns {output topic: [value dicts]} and optionally counts.


def ts_fmt(row, *cols):
    return {c: iso(row[c]) if c in ("ts", "kts") else row[c] for c in cols}


def c01():
    cols = [("s", "TEXT"), ("v", "TEXT"), ("d", "DOUBLE"), ("b", "BIGINT"), ("i", "INT"),
            ("ok", "BOOLEAN"), ("f", "FLOAT"), ("ts", "TS")]
    out, bad = run_stateless(read_messages("01-column-types", "g01-tx"), decoder(cols),
                             lambda r: ts_fmt(r, "s", "v", "d", "b", "i", "ok", "f", "ts"))
    assert not bad
    return {"g01-out": out}


def c02():
    msgs = read_messages("02-timestamp-formats", "g02-tx")
    dec = decoder([("id", "TEXT"), ("ts", "TS")], "ts")
    out, bad = run_stateless(msgs, dec, lambda r: ts_fmt(r, "id", "ts"))
    assert not bad
    ts = [dec(m)["ts"] for m in msgs]
    assert ts == sorted(ts), "kept in event-time order so the watermark never matters"
    return {"g02-out": out}


def c03():
    cols = [("id", "TEXT"), ("k", "meta:key"), ("kts", "meta:timestamp"), ("p", "meta:partition"),
            ("o", "meta:offset")]
    out, bad = run_stateless(read_messages("03-metadata-columns", "g03-tx"), decoder(cols),
                             lambda r: ts_fmt(r, "id", "k", "kts", "p", "o"))
    assert not bad
    return {"g03-out": out}


def c04():
    out, bad = run_stateless(read_messages("04-var-substitution", "g04-tx"),
                             decoder([("id", "TEXT"), ("amount", "DOUBLE")]),
                             lambda r: {"id": r["id"], "amount": r["amount"]})
    return {"g04-out": out}


def trunc_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def trunc_rem(a, b):
    return a - b * trunc_div(a, b)


def c05():
    def nn(f, *xs):
        return None if any(x is None for x in xs) else f(*xs)

    def project(r):
        a, q, n = r["amount"], r["qty"], r["n"]
        return {
            "id": r["id"],
            "total": nn(lambda a, q: a * q, a, q),
            "plus": nn(lambda a: a + 1.5, a),
            "diff": nn(lambda q, n: q - n, q, n),
            "half": nn(lambda q: trunc_div(q, 2), q),
            "rem": nn(lambda q: trunc_rem(q, 3), q),
            "amount_int": nn(lambda a: int(a), a),  # int() truncates toward zero
            "quarter": nn(lambda q: float(q) / 4, q),
            "n_str": nn(str, n),
            "neg": nn(lambda a: -a, a),
        }

    cols = [("id", "TEXT"), ("amount", "DOUBLE"), ("qty", "BIGINT"), ("n", "INT")]
    out, _ = run_stateless(read_messages("05-arithmetic-cast", "g05-tx"), decoder(cols), project)
    return {"g05-out": out}


# SQL three-valued logic: None is UNKNOWN.
def and3(*xs):
    if any(x is False for x in xs):
        return False
    return None if any(x is None for x in xs) else True


def or3(*xs):
    if any(x is True for x in xs):
        return True
    return None if any(x is None for x in xs) else False


def c06():
    def where(r):
        a, m, c = r["amount"], r["merchant"], r["card_id"]
        between = None if a is None else 10 <= a <= 100
        not_in = None if m is None else m not in ("blocked", "banned")
        like = None if c is None else c.startswith("vip-")
        return or3(and3(between, not_in), like, m is None) is True

    cols = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE")]
    out, _ = run_stateless(read_messages("06-where-filter", "g06-tx"), decoder(cols),
                           lambda r: dict(r) if where(r) else None)
    for r in out:
        del r["_partition"]
    return {"g06-out": out}


def c07():
    def project(r):
        a, m = r["amount"], r["merchant"]
        if a is not None and a >= 1000:
            band = "high"
        elif a is not None and a >= 100:
            band = "mid"
        else:
            band = "low"
        return {
            "card_id": r["card_id"],
            "band": band,
            "merchant_code": {"shop": 1, "cafe": 2}.get(m, 0) if m is not None else 0,
            "half_or_flag": -1.0 if a is None else a / 2,
            "shop_flag": "S" if m == "shop" else None,
        }

    cols = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE")]
    out, _ = run_stateless(read_messages("07-case-when", "g07-tx"), decoder(cols), project)
    return {"g07-out": out}


def c08():
    def round_half_away(x, digits):
        # Inputs are chosen far from .5 ties, so every rounding rule agrees.
        scaled = x * 10**digits
        assert abs(abs(scaled - math.trunc(scaled)) - 0.5) > 1e-6
        return math.floor(abs(scaled) + 0.5) * (1 if x >= 0 else -1) / 10**digits

    def project(r):
        m, c, a = r["merchant"], r["card_id"], r["amount"]
        return {
            "card_id": c,
            "m_upper": None if m is None else m.upper(),
            "id_lower": c.lower(),
            "tag": c + ":" + (m if m is not None else "n/a"),
            "abs_amount": abs(a),
            "amount_1dp": round_half_away(a, 1),
            "merchant_or_na": m if m is not None else "n/a",
            "m_len": len(m or ""),
            "minute": iso(r["ts"] // 60000 * 60000),
        }

    cols = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
    out, _ = run_stateless(read_messages("08-scalar-functions", "g08-tx"), decoder(cols), project)
    return {"g08-out": out}


CARD_AMOUNT_TS = [("card_id", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
MIN = 60_000
SEC = 1_000


def windowed(case, topic, cols, delay, assign, keys, aggs, where=None, having=None,
             window_cols=("window_start", "window_end"), ts_cols=(), order=None):
    msgs = read_messages(case, topic)
    if order:
        msgs = order(msgs)
    accepted, late, bad = run_event_time(msgs, decoder(cols, "ts"), "ts", delay, assign, where)
    rows = aggregate(accepted, keys, aggs, ts_cols, window_cols, having)
    DUCKDB_CHECKS.append((case, accepted, keys, aggs, where, having, window_cols, ts_cols, rows))
    return rows, late, bad


COUNT_SUM = [("n", "count_star", None), ("total", "sum", "amount")]
BASIC = [("n", "count_star", None), ("n_amount", "count", "amount"), ("total", "sum", "amount"),
         ("mean", "avg", "amount"), ("lo", "min", "amount"), ("hi", "max", "amount")]
STATS = [("merchants", "count_distinct", "merchant"), ("sd", "stddev", "amount"),
         ("sd_pop", "stddev_pop", "amount"), ("var_s", "var_samp", "amount"),
         ("var_s2", "var_samp", "amount"), ("var_p", "var_pop", "amount"),
         ("median", "median", "amount")]


def c09():
    feats, late, _ = windowed("09-view-window-feeds-insert", "g09-tx", CARD_AMOUNT_TS, 5 * SEC,
                              tumble(MIN), ["card_id"], COUNT_SUM)
    out = [{"card_id": f["card_id"], "window_end": f["window_end"], "mean": f["total"] / f["n"],
            "level": "busy" if f["n"] >= 3 else "quiet"}
           for f in feats if f["total"] is not None and f["total"] > 10]
    return {"g09-out": out}, {"late": late}


def c10():
    def project(r):
        if not (r["amount"] is not None and r["amount"] > 100):
            return None
        half = r["amount"] * 0.5
        return {"card": r["card_id"].upper(), "half": half} if half < 400 else None

    out, _ = run_stateless(read_messages("10-view-chain", "g10-tx"),
                           decoder([("card_id", "TEXT"), ("amount", "DOUBLE")]), project)
    return {"g10-out": out}


def c11():
    cols = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
    msgs = read_messages("11-two-inserts", "g11-tx")
    alerts, _ = run_stateless(msgs, decoder(cols, "ts"),
                              lambda r: ts_fmt(r, "card_id", "merchant", "amount", "ts")
                              if r["amount"] >= 1000 else None)
    per_minute, late, _ = windowed("11-two-inserts", "g11-tx", cols, 5 * SEC, tumble(MIN), [], COUNT_SUM)
    return {"g11-alerts": alerts, "g11-per-minute": per_minute}, {"late": late}


def c12():
    rows, late, _ = windowed("12-tumble-basic-aggregates", "g12-tx", CARD_AMOUNT_TS, 5 * SEC,
                             tumble(MIN), ["card_id"], BASIC,
                             window_cols=("window_start", "window_end", "window_time"))
    return {"g12-out": rows}, {"late": late}


CARD_MERCHANT_AMOUNT_TS = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]


def c13():
    rows, late, _ = windowed("13-tumble-stat-aggregates", "g13-tx", CARD_MERCHANT_AMOUNT_TS,
                             5 * SEC, tumble(MIN), ["card_id"], STATS)
    return {"g13-out": rows}, {"late": late}


def c14():
    rows, late, _ = windowed("14-hop-basic-aggregates", "g14-tx", CARD_AMOUNT_TS, 5 * SEC,
                             hop(30 * SEC, MIN), ["card_id"], BASIC)
    return {"g14-out": rows}, {"late": late}


def c15():
    rows, late, _ = windowed("15-hop-stat-aggregates", "g15-tx", CARD_MERCHANT_AMOUNT_TS, 5 * SEC,
                             hop(MIN, 2 * MIN), ["card_id"], STATS)
    return {"g15-out": rows}, {"late": late}


def c16():
    case, topic = "16-having", "g16-tx"
    pairs, late1, _ = windowed(case, topic, CARD_MERCHANT_AMOUNT_TS, 5 * SEC, tumble(MIN),
                               ["card_id", "merchant"], COUNT_SUM,
                               having=lambda r: r["n"] >= 2 and r["total"] is not None and r["total"] > 50)
    spenders, late2, _ = windowed(case, topic, CARD_MERCHANT_AMOUNT_TS, 5 * SEC, hop(30 * SEC, MIN),
                                  ["card_id"], [("hi", "max", "amount")],
                                  having=lambda r: r["hi"] is not None and r["hi"] >= 40)
    return {"g16-busy-pairs": pairs, "g16-big-spenders": spenders}, {"late": late1 + late2}


def c17():
    rows, late, _ = windowed("17-window-where-no-key", "g17-tx", CARD_AMOUNT_TS, 5 * SEC, tumble(MIN),
                             [], [("n", "count_star", None), ("total", "sum", "amount"),
                                  ("cards", "count_distinct", "card_id")],
                             where=lambda r: r["amount"] is not None and r["amount"] > 0)
    return {"g17-out": rows}, {"late": late}


def c18():
    rows, late, _ = windowed("18-out-of-order-within-delay", "g18-tx", CARD_AMOUNT_TS, 5 * SEC,
                             tumble(MIN), ["card_id"], COUNT_SUM)
    assert late == 0
    return {"g18-out": rows}, {"dead_lettered": 0, "late": late}


def c19():
    rows, late, _ = windowed("19-late-events", "g19-tx", CARD_AMOUNT_TS, 5 * SEC, tumble(MIN),
                             ["card_id"], COUNT_SUM)
    assert late == 3
    return {"g19-out": rows}, {"dead_lettered": 0, "late": late}


def c20():
    rows, late, _ = windowed("20-hop-partially-late", "g20-tx", CARD_AMOUNT_TS, 5 * SEC,
                             hop(MIN, 2 * MIN), ["card_id"], COUNT_SUM)
    assert late == 1
    return {"g20-out": rows}, {"dead_lettered": 0, "late": late}


def c21():
    case, topic = "21-two-partitions-watermark", "g21-tx"
    results = []
    for order in (order_partitions_sequential, order_round_robin):
        rows, late, _ = windowed(case, topic, CARD_AMOUNT_TS, 5 * SEC, tumble(MIN), ["card_id"],
                                 COUNT_SUM, order=order)
        results.append((rows, late))
    assert results[0] == results[1], "the result must not depend on how partitions interleave"
    # Only if partition 1 were read to its end before partition 0's second row would that row
    # be late; the case's README states that assumption.
    rows, late = results[0]
    assert late == 0
    return {"g21-out": rows}, {"dead_lettered": 0, "late": late}


def raw_lines(msgs):
    return [m.value.decode("utf-8") for m in msgs]


def c22():
    case, topic = "22-dead-letter", "g22-tx"
    cols = [("card_id", "TEXT"), ("amount", "DOUBLE"), ("ok", "BOOLEAN"), ("ts", "TS")]
    msgs = read_messages(case, topic)
    rows_out, bad = run_stateless(msgs, decoder(cols, "ts"),
                                  lambda r: ts_fmt(r, "card_id", "amount", "ok", "ts"))
    totals, late, bad2 = windowed(case, topic, cols, 5 * SEC, tumble(MIN), ["card_id"], COUNT_SUM)
    assert [m.value for m in bad] == [m.value for m in bad2] and late == 0
    return ({"g22-rows": rows_out, "g22-totals": totals, "g22-dlq": raw_lines(bad)},
            {"dead_lettered": len(bad), "late": late})


def c23():
    cols = [("id", "TEXT"), ("qty", "BIGINT"), ("ts", "TS")]
    out, bad = run_stateless(read_messages("23-bad-input-without-dlq", "g23-tx"), decoder(cols, "ts"),
                             lambda r: {"id": r["id"], "qty2": None if r["qty"] is None else r["qty"] * 2,
                                        "ts": iso(r["ts"])})
    return {"g23-out": out}, {"dead_lettered": len(bad), "late": 0}


def c24():
    case, topic = "24-sink-key-fields", "g24-tx"
    out, _ = run_stateless(read_messages(case, topic), decoder(CARD_AMOUNT_TS, "ts"),
                           lambda r: {"card_id": r["card_id"], "doubled": r["amount"] * 2})
    per_card, late, _ = windowed(case, topic, CARD_AMOUNT_TS, 5 * SEC, tumble(MIN), ["card_id"],
                                 [("n", "count_star", None)], window_cols=("window_end",))
    keyed = lambda rows: [{"key": r["card_id"], "value": r} for r in rows]
    return {"g24-scored.messages": keyed(out), "g24-per-card.messages": keyed(per_card)}, {"late": late}


def c25():
    cols = [("sensor", "TEXT"), ("reading", "DOUBLE"), ("ts", "TS")]
    rows, late, _ = windowed("25-epoch-millis-window", "g25-tx", cols, 2 * SEC, tumble(10 * SEC),
                             ["sensor"], [("n", "count_star", None), ("first_ts", "min", "ts"),
                                          ("last_ts", "max", "ts"), ("mean", "avg", "reading")],
                             ts_cols=("ts",))
    assert late == 0
    return {"g25-out": rows}, {"late": late}


def c26():
    out, _ = run_stateless(read_messages("26-empty-result", "g26-tx"),
                           decoder([("card_id", "TEXT"), ("amount", "DOUBLE")]),
                           lambda r: r if r["amount"] is not None and r["amount"] > 1_000_000 else None)
    assert out == []
    return {"g26-out": out}


def c27():
    rows, late, _ = windowed("27-watermark-from-filtered-rows", "g27-tx", CARD_AMOUNT_TS, 5 * SEC,
                             tumble(MIN), ["card_id"], COUNT_SUM,
                             where=lambda r: r["card_id"] != "noise")
    assert late == 1
    return {"g27-out": rows}, {"dead_lettered": 0, "late": late}


MODELS_DIR = HERE.parent / "models"


def score(model, feature_rows):
    """onnxruntime's output for each row (features cast to float32, as weir feeds them):
    column 1 of a classifier's probabilities, the value of a regressor. Rows that also appear
    in the model's committed fixture (tests/models/<model>.scores.jsonl) must agree with it."""
    import numpy as np
    import onnxruntime as ort

    path = MODELS_DIR / f"{model}.onnx"
    sess = ort.InferenceSession(str(path))
    x = np.array(feature_rows, dtype=np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    values = [float(r[1]) if out.shape[1] == 2 else float(r[0]) for r in out]
    fixture = {}
    for line in (MODELS_DIR / f"{model}.scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        fixture[tuple(row["features"])] = row.get("p", row.get("y"))
    for feats, v in zip(x.astype(float).tolist(), values):
        if tuple(feats) in fixture:
            assert math.isclose(fixture[tuple(feats)], v, rel_tol=1e-6), (model, feats, v)
    return values


PREDICT_COUNTS = {"tolerance": 1e-5}


def c28():
    cols = [("id", "TEXT"), ("x", "DOUBLE"), ("y2", "DOUBLE"), ("z", "DOUBLE"), ("ts", "TS")]
    rows, _ = run_stateless(read_messages("28-predict-classifier", "g28-tx"), decoder(cols, "ts"),
                            lambda r: r if r["id"] != "skip" else None)
    ps = score("classifier3", [[r["x"], r["y2"] / 2, r["z"]] for r in rows])
    out = [{"id": r["id"], "p": p, "decision": "flag" if p >= 0.5 else "pass"} for r, p in zip(rows, ps)]
    assert all(abs(p - 0.5) > 0.01 for p in ps), "no decision may hinge on float32 noise"
    return {"g28-out": out}, PREDICT_COUNTS


def c29():
    cols = [("id", "TEXT"), ("x", "DOUBLE"), ("n", "BIGINT")]
    rows, _ = run_stateless(read_messages("29-predict-regressor", "g29-tx"), decoder(cols), lambda r: r)
    ys = score("regressor2", [[r["x"], r["n"]] for r in rows])
    return {"g29-out": [{"id": r["id"], "x": r["x"], "n": r["n"], "y_hat": y} for r, y in zip(rows, ys)]}, PREDICT_COUNTS


def c30():
    feats, late, _ = windowed("30-predict-window-features", "g30-tx", CARD_AMOUNT_TS, 5 * SEC, tumble(MIN),
                              ["card_id"], [("n", "count_star", None), ("mean", "avg", "amount"),
                                            ("hi", "max", "amount")], window_cols=("window_end",))
    ps = score("classifier3", [[f["n"], f["mean"], f["hi"]] for f in feats])
    ys = score("regressor2", [[f["mean"], f["n"]] for f in feats])
    out = [{"key": f["card_id"], "value": {**f, "p_fraud": p, "expected_spend": y}}
           for f, p, y in zip(feats, ps, ys)]
    return {"g30-out.messages": out}, {"late": late, **PREDICT_COUNTS}


CASES = {
    "01-column-types": c01,
    "02-timestamp-formats": c02,
    "03-metadata-columns": c03,
    "04-var-substitution": c04,
    "05-arithmetic-cast": c05,
    "06-where-filter": c06,
    "07-case-when": c07,
    "08-scalar-functions": c08,
    "09-view-window-feeds-insert": c09,
    "10-view-chain": c10,
    "11-two-inserts": c11,
    "12-tumble-basic-aggregates": c12,
    "13-tumble-stat-aggregates": c13,
    "14-hop-basic-aggregates": c14,
    "15-hop-stat-aggregates": c15,
    "16-having": c16,
    "17-window-where-no-key": c17,
    "18-out-of-order-within-delay": c18,
    "19-late-events": c19,
    "20-hop-partially-late": c20,
    "21-two-partitions-watermark": c21,
    "22-dead-letter": c22,
    "23-bad-input-without-dlq": c23,
    "24-sink-key-fields": c24,
    "25-epoch-millis-window": c25,
    "26-empty-result": c26,
    "27-watermark-from-filtered-rows": c27,
    "28-predict-classifier": c28,
    "29-predict-regressor": c29,
    "30-predict-window-features": c30,
}

DUCKDB_CHECKS = []


# Plan-time error cases: where the error must point, found mechanically in pipeline.sql.
# (case, text of the offending token, the line it is on, words the message must contain,
#  whether to assert the line only because several tokens on it are equally fair).
ERRORS = [
    ("31-error-syntax", "AS", "SELECT card_id, (amount * 2 AS doubled", ["AS"], False),
    ("32-error-unknown-column", "amout", "SELECT card_id, amout AS amount", ["amout"], False),
    ("33-error-unknown-table", "transactions", "FROM transactions;", ["transactions"], False),
    ("34-error-unknown-option", "'scan.startup.mod'", "  'scan.startup.mod' = 'earliest-offset',",
     ["scan.startup.mod"], False),
    ("35-error-unknown-format", "'xml'", "  'format' = 'xml',", ["xml"], False),
    ("36-error-missing-topic", "out", "CREATE TABLE out WITH (", ["topic"], True),
    ("37-error-unknown-model", "fraud_model", "SELECT card_id, predict(fraud_model, amount, qty, 1.0) AS p",
     ["fraud_model"], False),
    ("38-error-model-width", "predict", "SELECT card_id, predict(clf, amount, qty) AS p", ["3", "2"], False),
    ("39-error-missing-model-file", "'no-such-model.onnx'",
     "CREATE MODEL clf WITH ('path' = 'no-such-model.onnx');", ["no-such-model.onnx"], False),
    ("40-error-group-by-without-window", "GROUP", "GROUP BY card_id;", ["window"], False),
    ("41-error-unsupported-type", "GEOGRAPHY", "  location GEOGRAPHY,", ["GEOGRAPHY"], False),
]


def error_expectation(case, token, line_text, words, line_only):
    lines = (CASES_DIR / case / "pipeline.sql").read_text(encoding="utf-8").split("\n")
    hits = [i for i, l in enumerate(lines) if l == line_text]
    assert len(hits) == 1, (case, line_text, hits)
    line = hits[0] + 1
    col = re.search(r"(?<![\w'])" + re.escape(token) + r"(?![\w'])", line_text).start() + 1
    where = f"pipeline.sql:{line}:" if line_only else f"pipeline.sql:{line}:{col}:"
    return "".join(w + "\n" for w in [where] + words)


# ---------------------------------------------------------------------------------------------
# Cross-check of the aggregate arithmetic with DuckDB (a second, independent engine).

DUCK_FUNCS = {
    "count_star": "count(*)", "count": "count({c})", "count_distinct": "count(DISTINCT {c})",
    "sum": "sum({c})", "avg": "avg({c})", "min": "min({c})", "max": "max({c})",
    "var_samp": "var_samp({c})", "var_pop": "var_pop({c})", "stddev": "stddev_samp({c})",
    "stddev_pop": "stddev_pop({c})", "median": "quantile_cont({c}, 0.5)",
}


def duckdb_check():
    import duckdb

    for case, accepted, keys, aggs, where, having, window_cols, ts_cols, expected in DUCKDB_CHECKS:
        con = duckdb.connect()
        cols = sorted({c for _, _, c in aggs if c} | set(keys))
        typ = lambda c: "BIGINT" if c in ts_cols else ("VARCHAR" if isinstance(
            next((r[c] for r, _ in accepted if r[c] is not None), ""), str) else "DOUBLE")
        con.execute("CREATE TABLE t (ws BIGINT, we BIGINT, " + ", ".join(f'"{c}" {typ(c)}' for c in cols) + ")")
        for row, wins in accepted:
            for s, e in wins:
                con.execute(f"INSERT INTO t VALUES (?, ?{', ?' * len(cols)})", [s, e] + [row[c] for c in cols])
        sel = ", ".join(DUCK_FUNCS[f].format(c=f'"{c}"') for _, f, c in aggs)
        keysql = "".join(f', "{k}"' for k in keys)
        got = con.execute(f"SELECT ws, we{keysql}, {sel} FROM t GROUP BY ws, we{keysql}").fetchall()
        by_group = {}
        for g in got:
            r = dict(zip(keys, g[2:2 + len(keys)]))
            r.update({"window_start": iso(g[0]), "window_end": iso(g[1]), "window_time": iso(g[1] - 1)})
            for (name, _, c), v in zip(aggs, g[2 + len(keys):]):
                r[name] = iso(v) if c in ts_cols and v is not None else v
            if having is None or having(r):
                by_group[(r["window_end"], tuple(r[k] for k in keys))] = r
        assert len(by_group) == len(expected), (case, len(by_group), len(expected))
        for e in expected:
            d = by_group[(e["window_end"], tuple(e[k] for k in keys))]
            for name, _, _ in aggs:
                assert same(e[name], d[name]), (case, name, e, d)
        print(f"duckdb agrees: {case} ({len(expected)} rows)")


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------


def render(values):
    return "".join((v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) + "\n" for v in values)


def main():
    check = "--check" in sys.argv
    differ = []
    for case, fn in CASES.items():
        BAD_SEEN.clear()
        res = fn()
        outputs, counts = res if isinstance(res, tuple) else (res, {})
        counts = {"dead_lettered": len(BAD_SEEN), "late": 0, **counts}
        assert counts["dead_lettered"] == len(BAD_SEEN), case
        files = {f"{topic}.jsonl": render(vals) for topic, vals in outputs.items()}
        files["counts.json"] = json.dumps(counts) + "\n"
        for name, text in files.items():
            path = CASES_DIR / case / "expected" / name
            if check:
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    differ.append(str(path.relative_to(HERE)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for case, *spec in ERRORS:
        text = error_expectation(case, *spec)
        path = CASES_DIR / case / "expected" / "error.txt"
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(str(path.relative_to(HERE)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if "--duckdb" in sys.argv:
        duckdb_check()
    if differ:
        print("expected files differ from the reference:\n  " + "\n  ".join(differ))
        sys.exit(1)
    print(f"{len(CASES)} cases {'checked' if check else 'written'}")


if __name__ == "__main__":
    main()
