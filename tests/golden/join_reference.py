#!/usr/bin/env python3
"""Reference computation for weir's golden enrichment-join cases (69-77), independent of weir.

Each case of CASES restates its pipeline.sql by hand (the SQL is not read): the stream is decoded
with reference.py's decoder; the table topic is read as versions; each stream row looks up its
key's row in the table; the SELECT and WHERE are written out in Python. README.md ("Enrichment
joins") states the rules; in short:

    table message   key = primary key (raw UTF-8); value = JSON row, or null: a tombstone
    version time    the WATERMARK column of the value; for a tombstone, the record timestamp
    temporal join   FOR SYSTEM_TIME AS OF t.ts: the version of the key with the greatest
                    (version time, offset) among those with version time <= t.ts; none, or a
                    tombstone: no row
    latest join     no FOR SYSTEM_TIME: the key's last good message in the topic; a tombstone
                    last: no row
    LEFT JOIN       no row: the table's columns are null;  INNER JOIN: no row: dropped

A bad table message (not JSON, or a field of the wrong type) is skipped and counted in
dead_lettered. A stream key that is null matches nothing.

For every temporal table it asserts that no version would be late for the table's watermark
(version time <= max version time before it - delay): then the answer cannot depend on how
weir interleaves the stream and the table, whatever the implementation releases a held stream
row at (W >= ts or W > ts). It also recomputes every lookup with DuckDB (ASOF JOIN for the
temporal cases, last message per key for the latest ones) and asserts both agree.

Outputs: expected/<out>.jsonl (one object per output row, in stream order; compared as a
multiset) and expected/counts.json. For the plan-time error cases (ERRORS) it writes
expected/error.txt as reference.py does.

    python3 tests/golden/join_reference.py            # rewrite the expected files
    python3 tests/golden/join_reference.py --check    # exit 1 if a committed file differs

Case 73 (a join feeding a window through a view) does not exist: windows read source tables
only (see README.md).

Needs the standard library and duckdb (pip install duckdb).
"""

import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ next to the cases
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import (  # noqa: E402  (decoding shared with reference.py)
    CASES_DIR,
    HERE,
    BadInput,
    Message,
    decoder,
    error_expectation,
    iso,
    read_messages,
    render,
)

import duckdb  # noqa: E402

SEC = 1_000


# ---------------------------------------------------------------------------------------------
# The table side


class Version:
    def __init__(self, key, vt, offset, row):
        self.key = key  # primary key (the Kafka key)
        self.vt = vt  # version time, epoch ms (None for a table without one)
        self.offset = offset  # position in the topic (one partition)
        self.row = row  # decoded columns, or None for a tombstone


def read_table(case, topic, columns, key_col, time_col=None, delay=None):
    """The versions of a table topic in topic order, and the number of bad messages.

    Reads input/<topic>.messages.jsonl itself: reference.read_messages would send a null value
    as the JSON text `null`, where the runner sends a tombstone (no payload).
    """
    path = CASES_DIR / case / "input" / f"{topic}.messages.jsonl"
    decode = decoder(columns, time_col)
    versions, bad = [], 0
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    for offset, line in enumerate(lines):
        m = json.loads(line)
        assert m.get("partition", 0) == 0
        key = m["key"]
        assert isinstance(key, str), "a table message needs its primary key as the Kafka key"
        v = m["value"]
        if v is None:
            if time_col is not None:
                assert "timestamp" in m, "a tombstone's version time is its record timestamp"
            versions.append(Version(key, m.get("timestamp"), offset, None))
            continue
        raw = v.encode() if isinstance(v, str) else json.dumps(v, ensure_ascii=False).encode()
        try:
            row = decode(Message(raw, key, 0, m.get("timestamp"), offset))
        except BadInput:
            bad += 1
            continue
        # The cases keep the key column of the value equal to the Kafka key, so it does not
        # matter which of the two weir reads the key from.
        assert row[key_col] == key, (case, offset)
        versions.append(Version(key, row[time_col] if time_col else None, offset, row))
    if time_col is not None:
        # No version is late for the table's watermark (W = max version time so far - delay):
        # then whenever weir releases a stream row (the table's W has passed its ts), every
        # version with a version time <= ts has already been read.
        high = None
        for v in versions:
            assert high is None or v.vt > high - delay, (case, "late table version", v.offset)
            high = v.vt if high is None else max(high, v.vt)
    return versions, bad


def temporal_lookup(versions, key, ts):
    """The table row of `key` valid at ts, or None (no version yet, or a tombstone)."""
    if key is None:
        return None, None
    cands = [v for v in versions if v.key == key and v.vt <= ts]
    if not cands:
        return None, None
    best = max(cands, key=lambda v: (v.vt, v.offset))  # ties on version time: later message
    return best.row, best.offset


def latest_lookup(versions, key):
    """The current row of `key` after the whole topic, or None."""
    if key is None:
        return None, None
    cands = [v for v in versions if v.key == key]
    if not cands:
        return None, None
    last = cands[-1]
    return last.row, last.offset


# ---------------------------------------------------------------------------------------------
# A second engine for the lookups: DuckDB


def duckdb_lookups(versions, keys_ts, temporal):
    """keys_ts: [(seq, key, ts)] -> {seq: offset of the matched version or None}."""
    con = duckdb.connect()
    con.execute("CREATE TABLE v (k VARCHAR, vt BIGINT, off BIGINT)")
    con.execute("CREATE TABLE s (seq BIGINT, k VARCHAR, ts BIGINT)")
    for v in versions:
        con.execute("INSERT INTO v VALUES (?, ?, ?)", [v.key, v.vt, v.offset])
    for seq, k, ts in keys_ts:
        con.execute("INSERT INTO s VALUES (?, ?, ?)", [seq, k, ts])
    if temporal:
        # One version per (key, version time): the later message. Then an as-of join.
        q = """
            WITH vv AS (SELECT * FROM v QUALIFY off = max(off) OVER (PARTITION BY k, vt))
            SELECT s.seq, vv.off FROM s ASOF LEFT JOIN vv ON s.k = vv.k AND s.ts >= vv.vt
        """
    else:
        q = """
            WITH vv AS (SELECT * FROM v QUALIFY off = max(off) OVER (PARTITION BY k))
            SELECT s.seq, vv.off FROM s LEFT JOIN vv ON s.k = vv.k
        """
    return {seq: off for seq, off in con.execute(q).fetchall()}


# ---------------------------------------------------------------------------------------------
# Running one case


def read_stream(case, topic, columns):
    msgs = read_messages(case, topic)
    decode = decoder(columns, "ts")
    rows, bad = [], 0
    for m in msgs:
        try:
            rows.append(decode(m))
        except BadInput:
            bad += 1
    return rows, bad


def join(rows, versions, key_of, temporal, by_offset):
    """[(stream row, table row or None)]; checks every lookup against DuckDB."""
    out, ours = [], {}
    for seq, r in enumerate(rows):
        key = key_of(r)
        if temporal:
            m, off = temporal_lookup(versions, key, r["ts"])
        else:
            m, off = latest_lookup(versions, key)
        ours[seq] = off
        out.append((r, m))
    theirs = duckdb_lookups(versions, [(seq, key_of(r), r["ts"]) for seq, r in enumerate(rows)],
                            temporal)
    assert ours == theirs, ("duckdb disagrees", ours, theirs)
    by_offset.update(ours)
    return out


def mul(a, b):
    return None if a is None or b is None else a * b


def col(m, name):
    """A table column of a LEFT JOIN: null when no row matched."""
    return None if m is None else m[name]


TX = [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
TX_SHOP = [("card_id", "TEXT"), ("shop", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]
RISK = [("merchant", "TEXT"), ("risk", "DOUBLE"), ("category", "TEXT"), ("updated_at", "TS")]
RISK_NO_TIME = [("merchant", "TEXT"), ("risk", "DOUBLE"), ("category", "TEXT")]


def enriched(r, m):
    """SELECT t.card_id, t.merchant, t.amount, t.ts, m.risk, m.category,
    t.amount * m.risk AS weighted"""
    return {"card_id": r["card_id"], "merchant": r["merchant"], "amount": r["amount"],
            "ts": iso(r["ts"]), "risk": col(m, "risk"), "category": col(m, "category"),
            "weighted": mul(r["amount"], col(m, "risk"))}


def c69():
    # tx LEFT JOIN merchant_risk FOR SYSTEM_TIME AS OF t.ts ON t.merchant = m.merchant;
    # upsert-kafka, WATERMARK FOR updated_at AS updated_at - 30 s.
    case = "69-temporal-join-left"
    rows, bad_s = read_stream(case, "g69-tx", TX)
    vers, bad_t = read_table(case, "g69-risk", RISK, "merchant", "updated_at", 30 * SEC)
    pairs = join(rows, vers, lambda r: r["merchant"], True, {})
    return {"g69-out": [enriched(r, m) for r, m in pairs]}, bad_s + bad_t


def c70():
    # Same with INNER JOIN: rows without a table row are dropped.
    case = "70-temporal-join-inner"
    rows, bad_s = read_stream(case, "g70-tx", TX)
    vers, bad_t = read_table(case, "g70-risk", RISK, "merchant", "updated_at", 30 * SEC)
    pairs = join(rows, vers, lambda r: r["merchant"], True, {})
    return {"g70-out": [enriched(r, m) for r, m in pairs if m is not None]}, bad_s + bad_t


def c71():
    # Latest-value joins: out = LEFT JOIN (enriched columns); matched = INNER JOIN
    # SELECT t.card_id, t.merchant, m.category, t.amount. The table has no version time.
    case = "71-latest-join-left"
    rows, bad_s = read_stream(case, "g71-tx", TX)
    vers, bad_t = read_table(case, "g71-risk", RISK_NO_TIME, "merchant")
    pairs = join(rows, vers, lambda r: r["merchant"], False, {})
    out = [enriched(r, m) for r, m in pairs]
    matched = [{"card_id": r["card_id"], "merchant": r["merchant"], "category": m["category"],
                "amount": r["amount"]} for r, m in pairs if m is not None]
    return {"g71-out": out, "g71-matched": matched}, bad_s + bad_t


def c72():
    # 'connector' = 'kafka', 'scan.mode' = 'table', WATERMARK FOR updated_at AS updated_at (delay 0);
    # LEFT JOIN ... FOR SYSTEM_TIME AS OF t.ts ON m.merchant = lower(t.shop)
    # WHERE m.risk > 0.5 OR m.risk IS NULL; SELECT t.card_id, t.shop, t.amount, t.ts, m.risk,
    # m.category, m.updated_at.
    case = "72-scan-mode-table-join"
    rows, bad_s = read_stream(case, "g72-tx", TX_SHOP)
    vers, bad_t = read_table(case, "g72-risk", RISK, "merchant", "updated_at", 0)
    key_of = lambda r: None if r["shop"] is None else r["shop"].lower()  # noqa: E731
    pairs = join(rows, vers, key_of, True, {})
    out = []
    for r, m in pairs:
        risk = col(m, "risk")
        # risk > 0.5 OR risk IS NULL: true exactly when risk is null or above 0.5 (no 3VL
        # subtlety: the IS NULL side is never null).
        if risk is None or risk > 0.5:
            out.append({"card_id": r["card_id"], "shop": r["shop"], "amount": r["amount"],
                        "ts": iso(r["ts"]), "risk": risk, "category": col(m, "category"),
                        "updated_at": iso(col(m, "updated_at"))})
    return {"g72-out": out}, bad_s + bad_t


CASES = {
    "69-temporal-join-left": c69,
    "70-temporal-join-inner": c70,
    "71-latest-join-left": c71,
    "72-scan-mode-table-join": c72,
}

# Plan-time error cases, as in reference.py: (case, offending token, the line it is on, words
# the message must contain, whether to assert the line only).
ERRORS = [
    ("74-error-temporal-join-no-version-time", "merchant_risk",
     "LEFT JOIN merchant_risk FOR SYSTEM_TIME AS OF t.ts AS m", ["merchant_risk", "WATERMARK"],
     False),
    ("75-error-join-not-on-key", "m.category", "  ON t.category = m.category;", ["PRIMARY KEY"],
     False),
    ("76-error-stream-stream-join", "JOIN", "JOIN payments AS p", ["JOIN", "table"], False),
    ("77-error-upsert-kafka-without-primary-key", "merchant_risk", "CREATE TABLE merchant_risk (",
     ["PRIMARY KEY"], False),
]


def main():
    check = "--check" in sys.argv
    files = {}
    for case, fn in CASES.items():
        outputs, bad = fn()
        exp = CASES_DIR / case / "expected"
        for topic, values in outputs.items():
            files[exp / f"{topic}.jsonl"] = render(values)
        files[exp / "counts.json"] = json.dumps({"dead_lettered": bad, "late": 0}) + "\n"
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
    print(f"{len(CASES)} join cases and {len(ERRORS)} error cases "
          f"{'checked' if check else 'written'}")


if __name__ == "__main__":
    main()
