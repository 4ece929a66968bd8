#!/usr/bin/env python3
"""Reference computation for weir's golden OVER-aggregate cases (42-54), independent of weir.

For each OVER case below (CASES) it decodes the input messages with the case's column types
(the decoding helpers of reference.py), applies the watermark/lateness rule of README.md
("OVER aggregates") row by row to mark the late rows, loads every row that is not bad into
DuckDB with its arrival number `seq` and a `late` flag, and runs the case's query restated in
DuckDB SQL (written here by hand; the pipeline file is not read) over the view `src` = the rows
that are not late and pass the case's WHERE. The result, one JSON object per row in arrival
order, becomes expected/<out topic>.jsonl; the bad and late totals become expected/counts.json.
For the plan-time error cases (ERRORS) it finds the offending token in pipeline.sql and writes
expected/error.txt in the form of reference.py.

DuckDB frames: RANGE frames order by ts alone (peers, rows of equal ts, are in each other's
frame, whatever their arrival order); ROWS frames order by (ts, seq).

    python3 tests/golden/over_reference.py            # rewrite the expected files
    python3 tests/golden/over_reference.py --check    # exit 1 if a committed file differs

Needs the standard library and duckdb (pip install duckdb).
"""

import json
import math
import sys
from datetime import datetime, timedelta
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

import duckdb  # noqa: E402

EPOCH = datetime(1970, 1, 1)

# DuckDB column type of each decoder type.
DUCK_TYPE = {"TEXT": "VARCHAR", "DOUBLE": "DOUBLE", "BIGINT": "BIGINT", "TS": "TIMESTAMP"}

CARD_AMOUNT_TS = [("card_id", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")]

# case -> (input topic, columns, event-time column, watermark delay ms, output topic,
#          WHERE of the pipeline in DuckDB SQL or None, the SELECT over `src` in DuckDB SQL)
CASES = {
    "42-over-range-basic": (
        "g42-tx", CARD_AMOUNT_TS, "ts", 5000, "g42-out", None,
        """
        SELECT card_id, amount, ts,
               count(*) OVER w AS n_1m,
               sum(amount) OVER w AS sum_1m,
               avg(amount) OVER w AS avg_1m,
               min(amount) OVER w AS min_1m,
               max(amount) OVER w AS max_1m
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts
                     RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "43-over-rows": (
        "g43-tx", CARD_AMOUNT_TS, "ts", 5000, "g43-out", None,
        """
        SELECT card_id, amount, ts,
               count(*) OVER w AS n_3,
               sum(amount) OVER w AS sum_3,
               avg(amount) OVER w AS avg_3,
               max(amount) OVER w AS max_3
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts, seq
                     ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "44-over-several-ranges": (
        "g44-tx", [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")],
        "ts", 5000, "g44-out", None,
        """
        SELECT card_id, merchant, amount, ts,
               count(*) OVER w1m AS n_1m,
               count(*) OVER w10m AS n_10m,
               sum(amount) OVER w10m AS sum_10m,
               count(DISTINCT merchant) OVER w10m AS merchants_10m,
               count(*) OVER w1h AS n_1h,
               avg(amount) OVER w1h AS avg_1h,
               max(amount) OVER w1h AS max_1h,
               amount / avg(amount) OVER w1h AS ratio_1h
        FROM src
        WINDOW w1m AS (PARTITION BY card_id ORDER BY ts
                       RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW),
               w10m AS (PARTITION BY card_id ORDER BY ts
                        RANGE BETWEEN INTERVAL 10 MINUTE PRECEDING AND CURRENT ROW),
               w1h AS (PARTITION BY card_id ORDER BY ts
                       RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "45-over-out-of-order": (
        "g45-tx", CARD_AMOUNT_TS, "ts", 5000, "g45-out", None,
        """
        SELECT card_id, amount, ts,
               count(*) OVER w AS n_10s,
               sum(amount) OVER w AS sum_10s
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts
                     RANGE BETWEEN INTERVAL 10 SECOND PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "46-over-stddev": (
        "g46-tx", CARD_AMOUNT_TS, "ts", 5000, "g46-out", None,
        """
        SELECT card_id, amount, ts,
               count(*) OVER w AS n_30s,
               stddev_samp(amount) OVER w AS sd,
               stddev_samp(amount) OVER w AS sd2,
               stddev_pop(amount) OVER w AS sd_pop,
               var_samp(amount) OVER w AS var_s,
               var_pop(amount) OVER w AS var_p
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts
                     RANGE BETWEEN INTERVAL 30 SECOND PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "47-over-no-partition": (
        "g47-tx", [("card_id", "TEXT"), ("merchant", "TEXT"), ("amount", "DOUBLE"), ("ts", "TS")],
        "ts", 5000, "g47-out", "merchant <> 'test'",
        """
        SELECT card_id, merchant, amount, ts,
               count(*) OVER (ORDER BY ts
                              RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW) AS n_1m,
               sum(amount) OVER (ORDER BY ts, seq
                                 ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS sum_last4
        FROM src
        ORDER BY seq
        """,
    ),
    "48-over-nulls": (
        "g48-tx", CARD_AMOUNT_TS, "ts", 5000, "g48-out", None,
        """
        SELECT card_id, amount, ts,
               count(*) OVER w AS n,
               count(amount) OVER w AS n_amount,
               sum(amount) OVER w AS total,
               avg(amount) OVER w AS mean,
               min(amount) OVER w AS lo,
               max(amount) OVER w AS hi
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts
                     RANGE BETWEEN INTERVAL 1 MINUTE PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
    "49-over-bigint": (
        "g49-tx", [("card_id", "TEXT"), ("qty", "BIGINT"), ("ts", "TS")], "ts", 5000, "g49-out", None,
        """
        SELECT card_id, qty, ts,
               count(qty) OVER w AS n_qty,
               sum(qty) OVER w AS sum_qty,
               min(qty) OVER w AS min_qty,
               max(qty) OVER w AS max_qty
        FROM src
        WINDOW w AS (PARTITION BY card_id ORDER BY ts, seq
                     ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        ORDER BY seq
        """,
    ),
}

# Plan-time error cases, as in reference.py: (case, offending token, the line it is on, words
# the message must contain, whether to assert the line only).
ERRORS = [
    ("50-error-over-order-by-not-time", "qty",
     "  sum(amount) OVER (PARTITION BY card_id ORDER BY qty ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s",
     ["ORDER BY", "event_time"], False),
    ("51-error-over-following", "FOLLOWING",
     "  sum(amount) OVER (PARTITION BY card_id ORDER BY event_time ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS s",
     ["FOLLOWING"], False),
    ("52-error-over-unbounded", "UNBOUNDED",
     "  count(*) OVER (PARTITION BY card_id ORDER BY event_time RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n_all",
     ["UNBOUNDED", "PRECEDING"], False),
    ("53-error-over-unsupported-function", "row_number",
     "  row_number() OVER (PARTITION BY card_id ORDER BY event_time ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS rn",
     ["row_number"], False),
    ("54-error-over-no-frame", "count",
     "  count(*) OVER (PARTITION BY card_id ORDER BY event_time) AS n",
     ["PRECEDING"], False),
]


def mark_late(msgs, decode, time_col, delay_ms):
    """Rows in arrival order with (seq, late); and the bad messages.

    W = max event time of the rows before this one - delay (-infinity before the first row); bad
    messages do not move it. A row is late when its event time <= W. One partition only: with
    several, the interleaving of partitions (and so W) is not fixed by the input file.
    """
    assert {m.partition for m in msgs} <= {0}, "OVER cases use one partition"
    rows, bad, max_ts = [], [], None
    for seq, m in enumerate(msgs):
        try:
            row = decode(m)
        except BadInput:
            bad.append(m)
            continue
        ts = row[time_col]
        w = -math.inf if max_ts is None else max_ts - delay_ms
        rows.append((seq, ts <= w, row))
        max_ts = ts if max_ts is None else max(max_ts, ts)
    return rows, bad


def to_json_value(v):
    if isinstance(v, datetime):
        return iso((v - EPOCH) // timedelta(milliseconds=1))
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"non-finite result {v}")
    assert v is None or isinstance(v, (int, float, str, bool)), (type(v), v)
    return v


def run_case(case, topic, columns, time_col, delay_ms, out_topic, where, query):
    msgs = read_messages(case, topic)
    rows, bad = mark_late(msgs, decoder(columns, time_col), time_col, delay_ms)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    coldefs = ", ".join(f'"{n}" {DUCK_TYPE[t]}' for n, t in columns)
    con.execute(f"CREATE TABLE rows (seq INTEGER, late BOOLEAN, {coldefs})")
    for seq, late, row in rows:
        vals = [EPOCH + timedelta(milliseconds=row[n]) if t == "TS" else row[n] for n, t in columns]
        con.execute(f"INSERT INTO rows VALUES (?, ?{', ?' * len(columns)})", [seq, late] + vals)

    keep = "TRUE" if where is None else f"coalesce({where}, FALSE)"
    con.execute(f"CREATE VIEW src AS SELECT * FROM rows WHERE NOT late AND {keep}")
    # Late rows that the WHERE removes: counted as late or not? The cases avoid the question.
    late_kept, late_all = con.execute(
        f"SELECT count(*) FILTER (WHERE late AND {keep}), count(*) FILTER (WHERE late) FROM rows"
    ).fetchone()
    assert late_kept == late_all, f"{case}: a row removed by WHERE is late"

    cur = con.execute(query)
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, map(to_json_value, r))) for r in cur.fetchall()]
    assert len(out) == con.execute("SELECT count(*) FROM src").fetchone()[0]
    counts = {"dead_lettered": len(bad), "late": late_kept}
    return {out_topic: out}, counts


def main():
    check = "--check" in sys.argv
    files = {}
    for case, spec in CASES.items():
        outputs, counts = run_case(case, *spec)
        for topic, vals in outputs.items():
            files[CASES_DIR / case / "expected" / f"{topic}.jsonl"] = render(vals)
        files[CASES_DIR / case / "expected" / "counts.json"] = json.dumps(counts) + "\n"
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
    print(f"{len(CASES)} OVER cases and {len(ERRORS)} error cases {'checked' if check else 'written'}")


if __name__ == "__main__":
    main()
