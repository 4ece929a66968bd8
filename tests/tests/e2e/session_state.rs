//! SESSION windows with allowed lateness, end to end through the operator:
//! random out-of-order rows (some behind the watermark, so fired sessions are
//! updated, extended and merged), the changelog applied as a consumer would
//! (insert / update / delete by key and window), checked against sessions cut
//! from all rows at once. Then the same with the state in RocksDB, a
//! checkpoint, a "crash" after it, a restore and a replay: deduplicated by row
//! identity, the changelog must give the same final table, and the store must
//! be empty once every session has closed.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_operators::ids::Change;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, JsonDecoder};
use weir_state::{CheckpointMeta, TaskStore};
use weir_tests::compare::near;
use weir_tests::inprocess::{Flow, flow, rows, ts};
use weir_tests::seed;

const CF: &str = "flow0.op0";
const DELAY_MS: i64 = 1_000;
const GAP_MS: i64 = 10_000;
/// Arrival jitter: rows arrive up to this much after their event time.
const JITTER_MS: i64 = 20_000;
const BATCH: usize = 300;

// Allowed lateness (21 s) > jitter - delay + 1 s: no row is late, and no row can
// reach a session that is already gone, so the final table is exactly the
// sessions of all rows.
const SQL: &str = r#"
SET 'window.allowed-lateness' = '21 s';
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH ('connector' = 'kafka', 'topic' = 'ev', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
INSERT INTO out
SELECT k, window_start, window_end, count(*) AS n, sum(v) AS s
FROM TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY k, window_start, window_end;
"#;

#[derive(Clone)]
struct Event {
    k: u64,
    v: f64,
    ts: i64,
}

/// Keys with bursts of rows (0.1-12 s apart, so sessions split and merge),
/// arriving out of order by up to the jitter.
fn events(seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = 1_767_225_600_000i64;
    let mut out = Vec::new();
    for k in 0..400u64 {
        let mut ts = t0 + rng.random_range(0..300_000);
        for _ in 0..rng.random_range(1..30) {
            out.push(Event {
                k,
                v: rng.random_range(-100..1000) as f64 / 4.0,
                ts,
            });
            ts += rng.random_range(100..12_000);
        }
    }
    let mut keyed: Vec<(i64, Event)> = out
        .into_iter()
        .map(|e| {
            // One row in ten arrives near the end of the jitter: often after
            // its session fired, inside it (an update) or at its edge.
            let jitter = if rng.random_bool(0.1) {
                rng.random_range(JITTER_MS - 3_000..JITTER_MS)
            } else {
                rng.random_range(0..JITTER_MS)
            };
            (e.ts + jitter, e)
        })
        .collect();
    keyed.sort_by_key(|(a, e)| (*a, e.k));
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// (k, window_start ms, window_end ms) -> (n, s): sessions cut from all rows.
type Table = BTreeMap<(u64, i64, i64), (i64, f64)>;

fn reference(evs: &[Event]) -> Table {
    let mut by_key: HashMap<u64, Vec<&Event>> = HashMap::new();
    for e in evs {
        by_key.entry(e.k).or_default().push(e);
    }
    let mut out = Table::new();
    for (k, mut rows) in by_key {
        rows.sort_by_key(|e| e.ts);
        let mut cur: Option<(i64, i64, i64, f64)> = None;
        for e in rows {
            cur = match cur {
                Some((s, end, n, sum)) if e.ts <= end => {
                    Some((s, end.max(e.ts + GAP_MS), n + 1, sum + e.v))
                }
                other => {
                    if let Some((s, end, n, sum)) = other {
                        out.insert((k, s, end), (n, sum));
                    }
                    Some((e.ts, e.ts + GAP_MS, 1, e.v))
                }
            };
        }
        let (s, end, n, sum) = cur.expect("every key has rows");
        out.insert((k, s, end), (n, sum));
    }
    out
}

struct Pipeline {
    flow: Flow,
    op: usize,
    decoder: JsonDecoder,
}

fn pipeline() -> Pipeline {
    let flow = flow("session.sql", SQL);
    Pipeline {
        op: flow.only_stateful("the session window"),
        decoder: flow.decoder("ev"),
        flow,
    }
}

/// One output record: identity, change, JSON value.
type Record = ([u8; 16], Change, Vec<u8>);

fn collect(p: &Pipeline, out: Vec<Batch>, emitted: &mut Vec<Record>) {
    for (id, json) in p.flow.encode(out) {
        let id: [u8; 16] = id.try_into().unwrap();
        emitted.push((id, Change::of(&id), json));
    }
}

/// Feeds events `from..to`, advancing the watermark after each batch; returns
/// the highest event time seen.
fn feed(
    p: &mut Pipeline,
    evs: &[Event],
    from: usize,
    to: usize,
    mut max_ts: i64,
    emitted: &mut Vec<Record>,
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

fn finish(p: &mut Pipeline, emitted: &mut Vec<Record>) {
    let out = p
        .flow
        .chain
        .advance_watermark(END_OF_TIME, &mut Context::default())
        .unwrap();
    collect(p, out, emitted);
}

fn millis(v: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Applies a changelog as a consumer keyed by (k, window) would, insisting
/// that every change makes sense: inserts of new rows, updates and deletes of
/// rows held (a delete carrying the values held). Returns the table and how
/// many updates and deletes there were.
fn apply(changelog: &[Record]) -> (Table, usize, usize) {
    let mut table = Table::new();
    let (mut updates, mut deletes) = (0, 0);
    for (_, change, json) in changelog {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let key = (
            v["k"].as_u64().unwrap(),
            millis(&v["window_start"]),
            millis(&v["window_end"]),
        );
        let value = (v["n"].as_i64().unwrap(), v["s"].as_f64().unwrap());
        match change {
            Change::Insert => {
                assert!(
                    table.insert(key, value).is_none(),
                    "insert of a held row: {v}"
                );
            }
            Change::Update => {
                updates += 1;
                assert!(table.insert(key, value).is_some(), "update of no row: {v}");
            }
            Change::Delete => {
                deletes += 1;
                let held = table.remove(&key);
                assert_eq!(
                    held,
                    Some(value),
                    "delete of {v} does not match what is held"
                );
            }
        }
    }
    (table, updates, deletes)
}

fn check(table: &Table, reference: &Table) {
    assert_eq!(table.len(), reference.len(), "number of sessions");
    for (k, (n, s)) in reference {
        let (gn, gs) = table
            .get(k)
            .unwrap_or_else(|| panic!("session {k:?} is missing"));
        assert_eq!(gn, n, "count of session {k:?}");
        assert!(near(*s, *gs), "sum of {k:?}: {gs} != {s}");
    }
}

#[test]
fn session_changelog_matches_all_rows_sessions_through_crash_and_restore() {
    let _shared = crate::shared();
    let evs = events(seed("SESSION_SEED"));
    let n = evs.len();
    let expected = reference(&evs);

    // In memory only.
    let mut p = pipeline();
    let mut plain = Vec::new();
    feed(&mut p, &evs, 0, n, START_OF_TIME, &mut plain, |_, _, _| {});
    finish(&mut p, &mut plain);
    let (table, updates, deletes) = apply(&plain);
    check(&table, &expected);
    println!(
        "{n} rows, {} sessions; {} records: {updates} updates, {deletes} deletes",
        expected.len(),
        plain.len()
    );
    assert!(
        updates > 0 && deletes > 0,
        "late rows changed fired sessions"
    );

    // With a store: checkpoint at 40%, crash at 70%, restore, replay, finish.
    let cfs = vec![CF.to_string()];
    let dir = tempfile::tempdir().unwrap();
    let checkpoint_at = (n * 2 / 5) / BATCH * BATCH;
    let crash_at = n * 7 / 10;
    let mut first = Vec::new();
    let ck = {
        let mut store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
        let mut p = pipeline();
        p.flow.attach(p.op, &store, CF, START_OF_TIME, 64 << 10);
        let mut ck = None;
        feed(
            &mut p,
            &evs,
            0,
            crash_at,
            START_OF_TIME,
            &mut first,
            |p, end, max_ts| {
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
                    ck = Some(max_ts);
                }
            },
        );
        ck.expect("the checkpoint was taken")
    };
    let store = TaskStore::open(dir.path(), 0, &cfs, 4 << 20).unwrap();
    let meta = store.restored().cloned().expect("checkpoint 1");
    let mut p = pipeline();
    p.flow
        .attach(p.op, &store, CF, meta.fired_through, 64 << 10);
    let mut second = Vec::new();
    feed(
        &mut p,
        &evs,
        checkpoint_at,
        n,
        ck,
        &mut second,
        |_, _, _| {},
    );
    finish(&mut p, &mut second);
    p.flow.chain.flush_state().unwrap();

    // What a sink deduplicating by identity writes: a repeat must be identical.
    let mut seen: HashMap<[u8; 16], Vec<u8>> = HashMap::new();
    let mut written = Vec::new();
    let mut repeated = 0;
    for (id, change, json) in first.into_iter().chain(second) {
        match seen.get(&id) {
            Some(prev) => {
                assert_eq!(prev, &json, "a repeated record differs");
                repeated += 1;
            }
            None => {
                seen.insert(id, json.clone());
                written.push((id, change, json));
            }
        }
    }
    assert!(
        repeated > 0,
        "the replay repeated records the crash had sent"
    );
    let (table, _, _) = apply(&written);
    check(&table, &expected);
    let ids: HashSet<_> = plain.iter().map(|r| r.0).collect();
    assert_eq!(
        written.iter().filter(|r| !ids.contains(&r.0)).count(),
        0,
        "the restored run writes the records the in-memory run wrote"
    );
    assert_eq!(written.len(), plain.len());
    println!("{repeated} records repeated by the replay");

    let left = store.operator(CF).unwrap().scan(&[]).unwrap().count();
    assert_eq!(left, 0, "{left} keys still hold sessions after all closed");
}
