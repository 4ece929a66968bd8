//! Per-event OVER aggregates against a brute-force reference, with their state
//! in RocksDB under a memory budget small enough that keys are evicted and
//! read back all the time, a checkpoint, a "crash" after it, a restore from the
//! checkpoint and a replay. Every input row must come out exactly once with
//! the reference's values, rows the replay emits again must be byte-identical
//! to the first emission, and the state of keys that went quiet must be gone
//! from the store at the end.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, JsonDecoder};
use weir_state::{CheckpointMeta, TaskStore};
use weir_tests::compare::near;
use weir_tests::inprocess::{Flow, flow, rows, ts};
use weir_tests::seed;

const CF: &str = "flow0.op0";
const DELAY_MS: i64 = 2_000;
const RANGE_MS: i64 = 30_000;
const ROWS: usize = 4;
const BATCH: usize = 500;

const SQL: &str = r#"
SET 'state.ttl' = '1 min';
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
  WITH ('connector' = 'kafka', 'topic' = 'ev', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
INSERT INTO out
SELECT k, v, ts,
  count(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW) AS n,
  sum(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW) AS s,
  max(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 4 PRECEDING AND CURRENT ROW) AS mx
FROM ev;
"#;

#[derive(Clone)]
struct Event {
    k: u64,
    v: f64,
    ts: i64,
}

/// Keys that are active for a while (a row every 1-8 s) and then go quiet for
/// good; rows arrive out of order by less than the watermark delay.
fn events(seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = 1_767_225_600_000i64;
    let mut out = Vec::new();
    for k in 0..3_000u64 {
        let mut ts = t0 + rng.random_range(0..600_000);
        let rows = rng.random_range(1..40);
        for _ in 0..rows {
            out.push(Event {
                k,
                v: rng.random_range(-100..1000) as f64 / 4.0,
                ts,
            });
            ts += rng.random_range(1_000..8_000);
        }
    }
    // Arrival order: event time plus up to 1.5 s of jitter.
    let mut keyed: Vec<(i64, Event)> = out
        .into_iter()
        .map(|e| (e.ts + rng.random_range(0..1_500), e))
        .collect();
    keyed.sort_by_key(|(a, e)| (*a, e.k));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// (n, s, mx) per arrival index, computed naively.
fn reference(evs: &[Event]) -> Vec<(i64, f64, f64)> {
    let mut by_key: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, e) in evs.iter().enumerate() {
        by_key.entry(e.k).or_default().push(i);
    }
    let mut out = vec![(0, 0.0, 0.0); evs.len()];
    for rows in by_key.values_mut() {
        rows.sort_by_key(|&i| (evs[i].ts, i));
        for (pos, &i) in rows.iter().enumerate() {
            let t = evs[i].ts;
            let in_range: Vec<usize> = rows
                .iter()
                .copied()
                .filter(|&j| evs[j].ts >= t - RANGE_MS && evs[j].ts <= t)
                .collect();
            let n = in_range.len() as i64;
            let s = in_range.iter().map(|&j| evs[j].v).sum();
            let mx = rows[pos.saturating_sub(ROWS)..=pos]
                .iter()
                .map(|&j| evs[j].v)
                .fold(f64::MIN, f64::max);
            out[i] = (n, s, mx);
        }
    }
    out
}

struct Pipeline {
    flow: Flow,
    over: usize,
    decoder: JsonDecoder,
}

fn pipeline() -> Pipeline {
    let flow = flow("over.sql", SQL);
    Pipeline {
        over: flow.only_stateful("the OVER"),
        decoder: flow.decoder("ev"),
        flow,
    }
}

fn attach(p: &mut Pipeline, store: &TaskStore, fired_through: i64, budget: usize) {
    p.flow.attach(p.over, store, CF, fired_through, budget);
}

/// Output rows by input offset, as JSON bytes.
type Emitted = BTreeMap<i64, Vec<u8>>;

fn collect(p: &Pipeline, out: Vec<Batch>, emitted: &mut Vec<(i64, Vec<u8>)>) {
    emitted.extend(p.flow.encode_by_offset(out));
}

/// Feeds events `from..to`, advancing the watermark after each batch; returns
/// the watermark reached.
fn feed(
    p: &mut Pipeline,
    evs: &[Event],
    from: usize,
    to: usize,
    mut max_ts: i64,
    emitted: &mut Vec<(i64, Vec<u8>)>,
    mut after_batch: impl FnMut(&mut Pipeline, usize, i64),
) -> i64 {
    let mut i = from;
    while i < to {
        let end = (i + BATCH).min(to);
        let mut lines = Vec::new();
        let mut arrival = Vec::new();
        for e in &evs[i..end] {
            lines.push(format!(
                r#"{{"k": {}, "v": {}, "ts": "{}"}}"#,
                e.k,
                e.v,
                ts(e.ts)
            ));
            arrival.push(if max_ts == START_OF_TIME {
                START_OF_TIME
            } else {
                max_ts - DELAY_MS
            });
            max_ts = max_ts.max(e.ts);
        }
        let batch = rows(&p.decoder, &lines, i, arrival);
        let mut ctx = Context::default();
        let out = p.flow.chain.process(batch, &mut ctx).unwrap();
        assert_eq!(ctx.late_rows, 0, "no row is late");
        collect(p, out, emitted);
        let out = p
            .flow
            .chain
            .advance_watermark(max_ts - DELAY_MS, &mut ctx)
            .unwrap();
        collect(p, out, emitted);
        after_batch(p, end, max_ts);
        i = end;
    }
    max_ts
}

fn check(evs: &[Event], emitted: &Emitted) {
    let expected = reference(evs);
    assert_eq!(emitted.len(), evs.len(), "every row comes out");
    for (&offset, json) in emitted {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let (n, s, mx) = expected[offset as usize];
        assert_eq!(v["n"], n, "row {offset}: {v}");
        let got = v["s"].as_f64().unwrap();
        assert!(near(s, got), "row {offset}: sum {got} != {s}: {v}");
        assert_eq!(v["mx"].as_f64().unwrap(), mx, "row {offset}: {v}");
    }
}

#[test]
fn over_results_match_a_naive_reference_through_eviction_crash_and_restore() {
    let _shared = crate::shared();
    let evs = events(seed("OVER_SEED"));
    let n = evs.len();
    let cfs = vec![CF.to_string()];
    let dir = tempfile::tempdir().unwrap();
    // Small enough that most keys live in the store, not in memory.
    let budget = 64 << 10;

    // In memory only, start to end.
    let mut p = pipeline();
    let mut plain = Vec::new();
    let max_ts = feed(&mut p, &evs, 0, n, START_OF_TIME, &mut plain, |_, _, _| {});
    let out = p
        .flow
        .chain
        .advance_watermark(END_OF_TIME, &mut Context::default())
        .unwrap();
    collect(&p, out, &mut plain);
    assert!(max_ts > START_OF_TIME);
    let plain: Emitted = plain.into_iter().collect();
    check(&evs, &plain);

    // With a store: checkpoint at 40%, crash at 70%, restore, replay, finish.
    let checkpoint_at = (n * 2 / 5) / BATCH * BATCH;
    let crash_at = n * 7 / 10;
    let mut first = Vec::new();
    let mut most_in_memory = 0;
    let (ck_wm, ck_max) = {
        let mut store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
        let mut p = pipeline();
        attach(&mut p, &store, START_OF_TIME, budget);
        let mut ck = None;
        feed(
            &mut p,
            &evs,
            0,
            crash_at,
            START_OF_TIME,
            &mut first,
            |p, end, max_ts| {
                most_in_memory = most_in_memory.max(p.flow.chain.state_rows());
                if end % (10 * BATCH) == 0 {
                    p.flow.chain.flush_state().unwrap();
                }
                if end == checkpoint_at {
                    p.flow.chain.flush_state().unwrap();
                    store
                        .checkpoint(&CheckpointMeta {
                            id: 1,
                            next_offsets: [(0, end as i64)].into(),
                            fired_through: max_ts - DELAY_MS,
                            ..Default::default()
                        })
                        .unwrap();
                    ck = Some((max_ts - DELAY_MS, max_ts));
                }
            },
        );
        ck.expect("the checkpoint was taken")
    };
    let total_rows: usize = evs.len();
    assert!(
        most_in_memory < total_rows / 3,
        "the operator held {most_in_memory} rows in memory with a {budget}-byte budget"
    );
    let store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
    let meta = store.restored().cloned().expect("checkpoint 1");
    assert_eq!(meta.fired_through, ck_wm);
    let mut p = pipeline();
    attach(&mut p, &store, meta.fired_through, budget);
    let mut second = Vec::new();
    feed(
        &mut p,
        &evs,
        checkpoint_at,
        n,
        ck_max,
        &mut second,
        |_, _, _| {},
    );
    let out = p
        .flow
        .chain
        .advance_watermark(END_OF_TIME, &mut Context::default())
        .unwrap();
    collect(&p, out, &mut second);
    p.flow.chain.flush_state().unwrap();

    // Output before the crash, then the replay: a row emitted in both must be
    // byte-identical; together they are exactly the input rows.
    let mut all: Emitted = BTreeMap::new();
    let mut repeated = 0;
    for (offset, json) in first.into_iter().chain(second) {
        match all.get(&offset) {
            Some(prev) => {
                assert_eq!(prev, &json, "row {offset} re-emitted differently");
                repeated += 1;
            }
            None => {
                all.insert(offset, json);
            }
        }
    }
    println!(
        "{n} rows; {repeated} re-emitted by the replay; at most {most_in_memory} rows in memory"
    );
    assert!(
        repeated > 0,
        "the replay re-emitted rows the crash had already sent"
    );
    check(&evs, &all);
    assert_eq!(
        all, plain,
        "the stored run gives what the in-memory run gave"
    );

    // Every key went quiet long before the end: its state is gone.
    let left = store.operator(CF).unwrap().scan(b"S").unwrap().count();
    assert_eq!(
        left, 0,
        "{left} keys still hold OVER state after the watermark passed them"
    );
}
