//! Event times near either end of the i64 milliseconds, through the window
//! operators: a row whose windows (or session) cannot be represented goes
//! aside with its own reason, as a late row does; a row whose windows can,
//! however near the end, is aggregated into windows that contain it; nothing
//! panics or wraps around.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, TimestampMillisecondArray,
    new_null_array,
};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use weir_operators::ids::{id_array, source_row_id};
use weir_operators::operator::OUTSIDE_WINDOW_RANGE;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, JsonDecoder, build_chain};

const TABLE: &str = r#"
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'ev', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
"#;

/// i64::MIN is 4,192 ms past a minute boundary (counting from the epoch):
/// the first minute that starts within the i64 milliseconds starts here.
const MIN_ALIGNED: i64 = i64::MIN + 55_808;

/// What a window query did with rows at `times`: the times set aside as
/// outside the range, other set-aside reasons, and the emitted
/// (window_start, window_end, n) rows.
struct Outcome {
    outside: Vec<i64>,
    other_reasons: Vec<&'static str>,
    windows: Vec<(i64, i64, i64)>,
    /// Of an OVER query: (ts, n) per output row.
    over: Vec<(i64, i64)>,
}

fn run(query: &str, times: &[i64]) -> Outcome {
    let sql = format!("{TABLE}{query}");
    let plan = weir::load::plan_text(Path::new("range.sql"), &sql, &|_| None).unwrap();
    let flow = &plan.flows[0];
    let mut chain = build_chain(flow, &plan.tables, &Default::default()).unwrap();
    let decoder = JsonDecoder::new(&plan.tables["ev"]);
    let schema = decoder.schema().clone();
    let n = times.len();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "k" => Arc::new(Int64Array::from(vec![1; n])),
                "v" => Arc::new(Float64Array::from(vec![1.0; n])),
                "ts" => Arc::new(TimestampMillisecondArray::from(times.to_vec())),
                _ => new_null_array(f.data_type(), n),
            }
        })
        .collect();
    let data = RecordBatch::try_new(schema, columns).unwrap();
    let batch = Batch::new(
        data,
        Arc::new(Int64Array::from(vec![START_OF_TIME; n])),
        Arc::new(id_array((0..n as i64).map(|i| source_row_id(0, i)))),
    );
    let mut ctx = Context::default();
    let mut out = chain.process(batch, &mut ctx).unwrap();
    out.extend(chain.advance_watermark(END_OF_TIME, &mut ctx).unwrap());
    let mut outcome = Outcome {
        outside: Vec::new(),
        other_reasons: Vec::new(),
        windows: Vec::new(),
        over: Vec::new(),
    };
    for (rows, reason) in &ctx.late {
        if *reason == OUTSIDE_WINDOW_RANGE {
            let ts = rows.data.column_by_name("ts").unwrap();
            let ts = ts.as_primitive::<TimestampMillisecondType>();
            outcome.outside.extend(ts.values().iter());
        } else {
            outcome.other_reasons.push(reason);
        }
    }
    for b in &out {
        let col = |name: &str| b.data.column_by_name(name).unwrap().clone();
        if b.data.column_by_name("window_start").is_none() {
            let (ts, n) = (col("ts"), col("n"));
            let ts = ts.as_primitive::<TimestampMillisecondType>();
            let n = n.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            outcome
                .over
                .extend((0..b.num_rows()).map(|i| (ts.value(i), n.value(i))));
            continue;
        }
        let (start, end, count) = (col("window_start"), col("window_end"), col("n"));
        let start = start.as_primitive::<TimestampMillisecondType>();
        let end = end.as_primitive::<TimestampMillisecondType>();
        let count = count.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            assert!(start.is_valid(i) && end.is_valid(i));
            outcome
                .windows
                .push((start.value(i), end.value(i), count.value(i)));
        }
    }
    outcome.outside.sort_unstable();
    outcome.windows.sort_unstable();
    outcome.over.sort_unstable();
    outcome
}

const TIMES: [i64; 7] = [
    i64::MIN,
    i64::MIN + 1,
    MIN_ALIGNED,
    0,
    i64::MAX - 60_000,
    i64::MAX - 1,
    i64::MAX,
];

fn query(tvf: &str) -> String {
    format!(
        "INSERT INTO out SELECT k, window_start, window_end, count(*) AS n \
         FROM TABLE({tvf}) GROUP BY k, window_start, window_end;"
    )
}

/// Every emitted window holds the rows of `times` it contains, and is a
/// window of positive length.
fn check_windows(o: &Outcome) {
    for &(start, end, n) in &o.windows {
        assert!(start < end, "window [{start}, {end})");
        let inside = TIMES
            .iter()
            .filter(|&&t| start <= t && t < end && !o.outside.contains(&t))
            .count() as i64;
        assert_eq!(n, inside, "window [{start}, {end})");
    }
}

#[test]
fn tumble_sets_aside_rows_whose_window_cannot_be_represented() {
    let _shared = crate::shared();
    let o = run(
        &query("TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"),
        &TIMES,
    );
    // MIN and MIN + 1 fall in a minute that starts before MIN; MAX - 1 and
    // MAX in the one that ends after MAX (MAX is 55,807 ms into its minute).
    assert_eq!(
        o.outside,
        vec![i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX]
    );
    assert!(o.other_reasons.is_empty(), "{:?}", o.other_reasons);
    let last_minute = i64::MAX - 55_807;
    assert_eq!(
        o.windows,
        vec![
            (MIN_ALIGNED, MIN_ALIGNED + 60_000, 1),
            (0, 60_000, 1),
            (last_minute - 60_000, last_minute, 1)
        ]
    );
    check_windows(&o);
}

#[test]
fn hop_and_cumulate_refuse_a_row_if_any_of_its_windows_cannot_be_represented() {
    let _shared = crate::shared();
    let hop = run(
        &query("HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '3' MINUTE)"),
        &TIMES,
    );
    // MIN_ALIGNED's earlier windows would start before MIN.
    assert!(hop.outside.contains(&MIN_ALIGNED));
    assert!(hop.outside.contains(&i64::MAX));
    assert!(!hop.outside.contains(&0));
    assert_eq!(
        hop.windows.iter().filter(|w| w.0 <= 0 && 0 < w.1).count(),
        3
    );
    check_windows(&hop);
    let cumulate = run(
        &query("CUMULATE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '2' MINUTE)"),
        &TIMES,
    );
    assert!(cumulate.outside.contains(&i64::MIN));
    assert!(cumulate.outside.contains(&i64::MAX));
    assert!(!cumulate.outside.contains(&0));
    check_windows(&cumulate);
}

#[test]
fn session_sets_aside_rows_whose_session_would_end_after_the_end_of_time() {
    let _shared = crate::shared();
    let o = run(
        "INSERT INTO out SELECT k, window_start, window_end, count(*) AS n \
         FROM TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
         GROUP BY k, window_start, window_end;",
        &TIMES,
    );
    assert_eq!(o.outside, vec![i64::MAX - 1, i64::MAX]);
    assert!(o.other_reasons.is_empty(), "{:?}", o.other_reasons);
    // MIN and MIN + 1 share a session; the others have one each.
    assert_eq!(
        o.windows,
        vec![
            (i64::MIN, i64::MIN + 10_001, 2),
            (MIN_ALIGNED, MIN_ALIGNED + 10_000, 1),
            (0, 10_000, 1),
            (i64::MAX - 60_000, i64::MAX - 50_000, 1)
        ]
    );
    check_windows(&o);
}

#[test]
fn over_frames_reach_the_ends_of_time_without_overflow() {
    let _shared = crate::shared();
    // OVER needs no window: every row the watermark had not passed is
    // emitted (MIN arrived under a watermark of MIN: late), its frame cut
    // at MIN.
    let o = run(
        "INSERT INTO out SELECT k, ts, count(*) OVER (PARTITION BY k ORDER BY ts \
         RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) AS n FROM ev;",
        &TIMES,
    );
    assert!(o.outside.is_empty());
    assert_eq!(o.other_reasons.len(), 1);
    assert!(o.other_reasons[0].starts_with("late"));
    assert_eq!(
        o.over,
        vec![
            (i64::MIN + 1, 1),
            (MIN_ALIGNED, 2),
            (0, 1),
            (i64::MAX - 60_000, 1),
            (i64::MAX - 1, 2),
            (i64::MAX, 3)
        ]
    );
}
