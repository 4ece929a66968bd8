//! A temporal join (`FOR SYSTEM_TIME AS OF`) waits for its table: stream rows
//! arrive while the table's versions trail them by up to 3 s, and every row
//! must still be joined to the version valid at its event time, as if the
//! whole table had been there from the start. Then OVER aggregates after the
//! join must see no row late (the join passes on a watermark below the rows it
//! holds), and a checkpoint, a crash, a restore and a replay must give the same
//! output (held rows and the lowered watermarks are part of the checkpoint).
//! A control run with the table's watermark at the end of time (no waiting)
//! must get rows wrong, so the test can fail.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, JsonDecoder, TableChanges};
use weir_state::{CheckpointMeta, TaskStore};
use weir_tests::compare::near;
use weir_tests::inprocess::{Flow, decode_lines, flow, rows as source_rows, ts as iso};

const DELAY_MS: i64 = 1_000;
const BATCH: usize = 40;
const T0: i64 = 1_767_225_600_000;
const STEP_MS: i64 = 50;
const ROWS: usize = 4_000;
const MERCHANTS: i64 = 20;

const TABLES: &str = r#"
CREATE TABLE tx (k BIGINT, m BIGINT, v DOUBLE, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH ('connector' = 'kafka', 'topic' = 'tx', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE rates (m BIGINT, r DOUBLE, ut TIMESTAMP(3),
  PRIMARY KEY (m) NOT ENFORCED, WATERMARK FOR ut AS ut)
  WITH ('connector' = 'upsert-kafka', 'topic' = 'rates', 'key.format' = 'raw',
        'value.format' = 'json', 'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
"#;

/// Each row with its merchant's rate as of its time.
const PER_ROW: &str = r#"
INSERT INTO out
SELECT t.k, t.m, t.v, t.ts, r.r
FROM tx AS t LEFT JOIN rates FOR SYSTEM_TIME AS OF t.ts AS r ON t.m = r.m;
"#;

/// Rolling aggregates of the joined rows: a row the join released after the
/// OVER operator's watermark had passed it would be late.
const OVER_JOINED: &str = r#"
CREATE VIEW enriched AS
SELECT t.k, t.m, t.v, t.ts, r.r
FROM tx AS t LEFT JOIN rates FOR SYSTEM_TIME AS OF t.ts AS r ON t.m = r.m;
INSERT INTO out
SELECT k, m, v, ts, r,
       count(*) OVER w AS n,
       sum(v * coalesce(r, 0.0)) OVER w AS s
FROM enriched
WINDOW w AS (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW);
"#;

struct Row {
    k: i64,
    m: i64,
    v: f64,
    ts: i64,
    /// Wall-clock arrival (ms): rows arrive up to 800 ms after their time.
    arrival: i64,
}

struct Version {
    m: i64,
    /// `None`: the merchant is deleted.
    r: Option<f64>,
    time: i64,
    /// Arrival, in version-time order, up to 3 s after the version's time.
    arrival: i64,
}

fn data(seed: u64) -> (Vec<Row>, Vec<Version>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = (0..ROWS)
        .map(|i| {
            let arrival = T0 + i as i64 * STEP_MS;
            Row {
                k: rng.random_range(0..40),
                m: rng.random_range(0..MERCHANTS),
                v: rng.random_range(1..1000) as f64 / 4.0,
                ts: arrival - rng.random_range(0..800),
                arrival,
            }
        })
        .collect();
    let span = ROWS as i64 * STEP_MS;
    let mut times: Vec<i64> = (0..300)
        .map(|_| T0 - 10_000 + rng.random_range(0..span + 10_000))
        .collect();
    times.sort();
    let mut last_arrival = i64::MIN;
    let versions = times
        .into_iter()
        .map(|time| {
            last_arrival = last_arrival.max(time + rng.random_range(0..3_000));
            Version {
                m: rng.random_range(0..MERCHANTS),
                r: (!rng.random_bool(0.05)).then(|| rng.random_range(1..100) as f64 / 100.0),
                time,
                arrival: last_arrival,
            }
        })
        .collect();
    (rows, versions)
}

/// The rate each row should get: the merchant's version with the greatest
/// time at or before the row's (ties: the later in the topic).
fn expected_rates(rows: &[Row], versions: &[Version]) -> Vec<Option<f64>> {
    rows.iter()
        .map(|row| {
            versions
                .iter()
                .filter(|v| v.m == row.m && v.time <= row.ts)
                .max_by_key(|v| v.time)
                .and_then(|v| v.r)
        })
        .collect()
}

struct Pipeline {
    flow: Flow,
    tx: JsonDecoder,
    rates: JsonDecoder,
    /// The stream's watermark, the table's, and the greatest event time seen.
    watermark: i64,
    table_watermark: i64,
    max_ts: i64,
    late: u64,
    /// Output by source offset: the JSON of each time it came out.
    out: HashMap<i64, Vec<Value>>,
}

impl Pipeline {
    fn new(query: &str) -> Self {
        let flow = flow("join.sql", &format!("{TABLES}{query}"));
        Self {
            tx: flow.decoder("tx"),
            rates: flow.decoder("rates"),
            flow,
            watermark: START_OF_TIME,
            table_watermark: START_OF_TIME,
            max_ts: START_OF_TIME,
            late: 0,
            out: HashMap::new(),
        }
    }

    fn collect(&mut self, out: Vec<Batch>, ctx: Context) {
        self.late += ctx.late_rows;
        for (offset, json) in self.flow.encode_by_offset(out) {
            let v: Value = serde_json::from_slice(&json).unwrap();
            self.out.entry(offset).or_default().push(v);
        }
    }

    /// Table versions arrive; the table's watermark becomes `watermark` (the
    /// task's feed computes it from the topic; here the versions' greatest
    /// time, their topic being in time order).
    fn table(&mut self, versions: &[Version], watermark: i64) {
        if !versions.is_empty() {
            let mut rows = Vec::new();
            let mut deletes = Vec::new();
            for v in versions {
                match v.r {
                    Some(r) => rows.push(format!(
                        r#"{{"m": {}, "r": {r}, "ut": "{}"}}"#,
                        v.m,
                        iso(v.time)
                    )),
                    None => deletes.push((rows.len(), v.m.to_string(), v.time)),
                }
            }
            let changes = TableChanges {
                rows: decode_lines(&self.rates, &rows).batch,
                deletes,
            };
            self.flow.chain.apply_table("rates", &changes).unwrap();
        }
        let advanced = watermark > self.table_watermark;
        self.table_watermark = watermark;
        self.flow.chain.set_table_watermark("rates", watermark);
        if advanced {
            let mut ctx = Context::default();
            let out = self
                .flow
                .chain
                .advance_watermark(self.watermark, &mut ctx)
                .unwrap();
            self.collect(out, ctx);
        }
    }

    /// Stream rows `from..to` of `rows` arrive as one batch.
    fn stream(&mut self, rows: &[Row], from: usize, to: usize) {
        let lines: Vec<String> = rows[from..to]
            .iter()
            .map(|r| {
                format!(
                    r#"{{"k": {}, "m": {}, "v": {}, "ts": "{}"}}"#,
                    r.k,
                    r.m,
                    r.v,
                    iso(r.ts)
                )
            })
            .collect();
        let mut arrival = Vec::new();
        for r in &rows[from..to] {
            arrival.push(self.watermark);
            self.max_ts = self.max_ts.max(r.ts);
            self.watermark = self.max_ts - DELAY_MS;
        }
        let batch = source_rows(&self.tx, &lines, from, arrival);
        let mut ctx = Context::default();
        let out = self.flow.chain.process(batch, &mut ctx).unwrap();
        self.collect(out, ctx);
        let mut ctx = Context::default();
        let out = self
            .flow
            .chain
            .advance_watermark(self.watermark, &mut ctx)
            .unwrap();
        self.collect(out, ctx);
    }

    /// The rest of the table arrives, then the end of the input.
    fn finish(&mut self, versions: &[Version], applied: usize) {
        self.table(&versions[applied..], END_OF_TIME);
        let mut ctx = Context::default();
        let out = self
            .flow
            .chain
            .advance_watermark(END_OF_TIME, &mut ctx)
            .unwrap();
        self.collect(out, ctx);
    }
}

/// Runs stream rows `from..to` in arrival order, table versions arriving
/// between batches; `wait` false gives the table the end of time as its
/// watermark (no waiting). `after_batch` sees the pipeline and the next row.
fn run(
    p: &mut Pipeline,
    rows: &[Row],
    versions: &[Version],
    applied: &mut usize,
    (from, to): (usize, usize),
    wait: bool,
    mut after_batch: impl FnMut(&mut Pipeline, usize, usize),
) {
    let mut i = from;
    while i < to {
        let end = (i + BATCH).min(to);
        let now = rows[end - 1].arrival;
        let n = versions[*applied..].partition_point(|v| v.arrival <= now);
        let arrived = &versions[*applied..*applied + n];
        *applied += n;
        let wm = if wait {
            versions[..*applied]
                .last()
                .map_or(START_OF_TIME, |v| v.time)
        } else {
            END_OF_TIME
        };
        p.table(arrived, wm);
        p.stream(rows, i, end);
        after_batch(p, end, *applied);
        i = end;
    }
}

/// Checks each row came out once with its expected rate; returns how many
/// rows got a different one.
fn wrong_rates(p: &Pipeline, rows: &[Row], expected: &[Option<f64>]) -> usize {
    assert_eq!(p.out.len(), rows.len(), "every row comes out");
    let mut wrong = 0;
    for (i, want) in expected.iter().enumerate() {
        let got = &p.out[&(i as i64)];
        assert!(
            got.windows(2).all(|w| w[0] == w[1]),
            "row {i} came out differently: {got:?}"
        );
        if got[0]["r"].as_f64() != *want {
            if std::env::var("JOIN_DEBUG").is_ok() {
                eprintln!(
                    "row {i} ts {} m {}: got {:?} want {want:?}",
                    rows[i].ts, rows[i].m, got[0]["r"]
                );
            }
            wrong += 1;
        }
    }
    wrong
}

/// The OVER results each row should get, from all rows with their expected
/// rates: count and sum of v * rate over the key's last 10 s.
fn expected_over(rows: &[Row], rates: &[Option<f64>]) -> Vec<(i64, f64)> {
    rows.iter()
        .map(|row| {
            let frame = rows
                .iter()
                .zip(rates)
                .filter(|(o, _)| o.k == row.k && o.ts <= row.ts && o.ts >= row.ts - 10_000);
            let n = frame.clone().count() as i64;
            let s = frame.map(|(o, r)| o.v * r.unwrap_or(0.0)).sum();
            (n, s)
        })
        .collect()
}

fn check_over(p: &Pipeline, expected: &[(i64, f64)]) {
    for (i, (n, s)) in expected.iter().enumerate() {
        let v = &p.out[&(i as i64)][0];
        assert_eq!(v["n"].as_i64(), Some(*n), "count of row {i}: {v}");
        let got = v["s"].as_f64().unwrap();
        assert!(near(*s, got), "sum of row {i}: {got} != {s}");
    }
}

fn seed() -> u64 {
    weir_tests::seed("JOIN_SEED")
}

#[test]
fn rows_wait_for_the_table_versions_of_their_time() {
    let _shared = crate::shared();
    let (rows, versions) = data(seed());
    let expected = expected_rates(&rows, &versions);

    let mut p = Pipeline::new(PER_ROW);
    let mut applied = 0;
    run(
        &mut p,
        &rows,
        &versions,
        &mut applied,
        (0, ROWS),
        true,
        |_, _, _| {},
    );
    p.finish(&versions, applied);
    assert_eq!(wrong_rates(&p, &rows, &expected), 0);

    // Without waiting, rows ahead of the table get older versions.
    let mut control = Pipeline::new(PER_ROW);
    let mut applied = 0;
    run(
        &mut control,
        &rows,
        &versions,
        &mut applied,
        (0, ROWS),
        false,
        |_, _, _| {},
    );
    control.finish(&versions, applied);
    let wrong = wrong_rates(&control, &rows, &expected);
    println!("without waiting, {wrong} of {ROWS} rows get another version");
    assert!(wrong > 0, "the data exercises the wait");
}

#[test]
fn aggregates_after_the_join_see_no_row_late_through_crash_and_restore() {
    let _shared = crate::shared();
    let (rows, versions) = data(seed());
    let rates = expected_rates(&rows, &versions);
    let expected = expected_over(&rows, &rates);

    let mut p = Pipeline::new(OVER_JOINED);
    let mut applied = 0;
    run(
        &mut p,
        &rows,
        &versions,
        &mut applied,
        (0, ROWS),
        true,
        |_, _, _| {},
    );
    p.finish(&versions, applied);
    assert_eq!(p.late, 0, "no row reaches the OVER operator late");
    assert_eq!(wrong_rates(&p, &rows, &rates), 0);
    check_over(&p, &expected);

    // With stores: checkpoint at 40%, crash at 70%, restore, replay.
    let mut probe = Pipeline::new(OVER_JOINED);
    let stateful = probe.flow.chain.stateful();
    assert_eq!(
        stateful.len(),
        2,
        "the join and the OVER operator keep state"
    );
    let cfs: Vec<String> = stateful.iter().map(|op| format!("op{op}")).collect();
    let dir = tempfile::tempdir().unwrap();
    // The checkpoint: at the first batch end from 40 % on where the join holds
    // rows back (the OVER operator is behind the task's watermark), so the
    // restore must give each operator its own watermark.
    let checkpoint_from = ROWS * 2 / 5;
    let mut checkpointed = false;
    let crash_at = ROWS * 7 / 10;
    let attach = |p: &mut Pipeline, store: &TaskStore, meta: Option<&CheckpointMeta>| {
        for (op, cf) in stateful.iter().zip(&cfs) {
            let fired_through = meta.map_or(START_OF_TIME, |m| {
                m.operator_watermarks
                    .get(cf)
                    .copied()
                    .unwrap_or(m.fired_through)
            });
            p.flow.attach(*op, store, cf, fired_through, 64 << 10);
        }
    };
    let mut applied_at_crash = 0;
    {
        let mut store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
        attach(&mut probe, &store, None);
        run(
            &mut probe,
            &rows,
            &versions,
            &mut applied_at_crash,
            (0, crash_at),
            true,
            |p, end, _| {
                let operator_watermarks: BTreeMap<String, i64> = stateful
                    .iter()
                    .zip(&cfs)
                    .filter(|(op, _)| p.flow.chain.watermark(**op) < p.watermark)
                    .map(|(op, cf)| (cf.clone(), p.flow.chain.watermark(*op)))
                    .collect();
                if !checkpointed && end >= checkpoint_from && !operator_watermarks.is_empty() {
                    checkpointed = true;
                    p.flow.chain.flush_state().unwrap();
                    store
                        .checkpoint(&CheckpointMeta {
                            id: 1,
                            next_offsets: [(0, end as i64)].into(),
                            max_event_times: [(0, p.max_ts)].into(),
                            fired_through: p.watermark,
                            operator_watermarks,
                            ..Default::default()
                        })
                        .unwrap();
                }
            },
        );
    }
    // The crash: the operators (and their hold on the store) are gone.
    let first_out = std::mem::take(&mut probe.out);
    drop(probe);
    let store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
    let meta = store.restored().cloned().expect("checkpoint 1");
    assert!(
        !meta.operator_watermarks.is_empty(),
        "the OVER operator had been given less than the task's watermark"
    );
    let mut p2 = Pipeline::new(OVER_JOINED);
    attach(&mut p2, &store, Some(&meta));
    p2.watermark = meta.fired_through;
    p2.max_ts = meta.max_event_times[&0];
    // The table is read again from its topic: what had arrived by the crash.
    let mut applied = applied_at_crash;
    let table_wm = versions[..applied].last().map_or(START_OF_TIME, |v| v.time);
    p2.table(&versions[..applied], table_wm);
    run(
        &mut p2,
        &rows,
        &versions,
        &mut applied,
        (meta.next_offsets[&0] as usize, ROWS),
        true,
        |_, _, _| {},
    );
    p2.finish(&versions, applied);
    assert_eq!(
        p2.late, 0,
        "no row reaches the OVER operator late after the restore"
    );

    // What a sink deduplicating by row identity keeps: the first of each.
    let mut written = first_out;
    let mut repeated = 0;
    for (offset, outs) in p2.out {
        let first = written.entry(offset).or_default();
        if let Some(prev) = first.first() {
            assert_eq!(prev, &outs[0], "row {offset}'s replay differs");
            repeated += 1;
        } else {
            first.push(outs[0].clone());
        }
    }
    println!("{repeated} outputs repeated by the replay");
    assert!(repeated > 0, "the replay repeated output");
    let restored = Pipeline {
        out: written,
        ..Pipeline::new(OVER_JOINED)
    };
    assert_eq!(wrong_rates(&restored, &rows, &rates), 0);
    check_over(&restored, &expected);
}
