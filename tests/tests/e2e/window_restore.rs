//! Window panes kept in memory across checkpoints, restored after a crash.
//!
//! A HOP window with count, avg, stddev_pop and count(DISTINCT) runs over
//! 60,000 events while windows fire along the way. Two checkpoints copy the
//! open panes to the store in segments: the second copies groups the first
//! had already copied, and a restore must take the later copy. Then a crash
//! loses the events after the second checkpoint. The restore is done twice:
//! from the local checkpoint, and in an empty store rebuilt from the recorded
//! changes (what the changelog topic carries). Both replay the rest of the
//! input. Every (key, window) result must equal an uninterrupted run without a
//! store, and a result both lives emitted must be the same both times.
//!
//! The same scenario also runs with a memory budget small enough that the
//! operator moves panes to the store between checkpoints, some of them after
//! a checkpoint copied them (their segments are replaced by per-group
//! entries).
//!
//! The keys and the DISTINCT values change every 20,000 events (three
//! generations of 2,000 each), longer than a window: the operator's
//! dictionaries pass their first sweep with the first generation's windows
//! all fired, drop those keys and values and renumber the rest while the open
//! panes hold them. The reference run's counts are checked against the
//! events themselves.

use std::collections::{BTreeMap, BTreeSet};

use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, JsonDecoder};
use weir_state::{CheckpointMeta, TaskStore};
use weir_tests::compare::near;
use weir_tests::inprocess::{Flow, flow, rows_under, ts as timestamp};

const EVENTS: u64 = 60_000;
const KEYS: u64 = 2_000;
/// Events per generation of keys.
const GENERATION: u64 = 20_000;
const BATCH: u64 = 1_000;
const CHECKPOINTS: [u64; 2] = [20_000, 35_000];
const CRASH: u64 = 45_000;
const CF: &str = "flow0.op0";
const T0: i64 = 1_767_225_600_000;

const SQL: &str = r#"
CREATE TABLE ev (k BIGINT, m BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'ev', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
INSERT INTO out
SELECT k, window_end, count(*) AS n, avg(v) AS a, stddev_pop(v) AS sd,
       count(DISTINCT m) AS d
FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '3' MINUTE))
GROUP BY k, window_start, window_end;
"#;

/// Event `i`: 10 ms apart, so 60,000 events span 10 minutes.
fn ts(i: u64) -> i64 {
    T0 + 10 * i as i64
}

/// Event `i`'s key and DISTINCT value.
fn key_and_value(i: u64) -> (u64, u64) {
    let generation = i / GENERATION;
    (
        (i * 7_919) % KEYS + KEYS * generation,
        (i * 31) % 2_000 + 2_000 * generation,
    )
}

fn event(i: u64) -> String {
    let (k, m) = key_and_value(i);
    let v = ((i * 104_729) % 1_000) as f64 / 10.0;
    let t = timestamp(ts(i));
    format!(r#"{{"k": {k}, "m": {m}, "v": {v}, "ts": "{t}"}}"#)
}

struct Pipeline {
    flow: Flow,
    window: usize,
    decoder: JsonDecoder,
    results: Vec<Emitted>,
}

fn pipeline() -> Pipeline {
    let flow = flow("restore.sql", SQL);
    Pipeline {
        window: flow.only_stateful("the window"),
        decoder: flow.decoder("ev"),
        flow,
        results: Vec::new(),
    }
}

impl Pipeline {
    fn collect(&mut self, out: Vec<Batch>) {
        for (_, json) in self.flow.encode(out) {
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let key = (
                v["k"].as_u64().unwrap(),
                v["window_end"].as_str().unwrap().to_owned(),
            );
            let f = |name: &str| v[name].as_f64().unwrap();
            self.results.push((key, [f("n"), f("d"), f("a"), f("sd")]));
        }
    }

    /// Feeds events `from..to`; each batch arrives under the watermark of the
    /// events before it, so windows fire along the way. Calls `at` after
    /// each batch with the next event's index.
    fn feed(&mut self, from: u64, to: u64, mut at: impl FnMut(&mut Pipeline, u64)) {
        let mut i = from;
        while i < to {
            let end = (i + BATCH).min(to);
            let lines: Vec<String> = (i..end).map(event).collect();
            let wm = if i == 0 { START_OF_TIME } else { ts(i - 1) };
            let batch = rows_under(&self.decoder, &lines, i as usize, wm);
            let mut ctx = Context::default();
            let out = self.flow.chain.process(batch, &mut ctx).unwrap();
            self.collect(out);
            i = end;
            at(self, i);
        }
    }

    fn finish(&mut self) {
        let out = self
            .flow
            .chain
            .advance_watermark(END_OF_TIME, &mut Context::default())
            .unwrap();
        self.collect(out);
    }

    fn attach(&mut self, store: &TaskStore, fired_through: i64, budget: usize) {
        self.flow
            .attach(self.window, store, CF, fired_through, budget);
    }
}

/// (k, window_end) and [n, d, a, sd], as emitted.
type Emitted = ((u64, String), [f64; 4]);
type Results = BTreeMap<(u64, String), [f64; 4]>;

fn same(a: &[f64; 4], b: &[f64; 4]) -> bool {
    a[..2] == b[..2] && a[2..].iter().zip(&b[2..]).all(|(x, y)| near(*x, *y))
}

/// The results of both lives, each (key, window) once: a result emitted by
/// both must be the same.
fn merge(lives: &[&[Emitted]]) -> Results {
    let mut all = Results::new();
    for life in lives {
        for (key, v) in life.iter() {
            match all.get(key) {
                Some(prev) => assert!(same(prev, v), "{key:?}: {prev:?} then {v:?}"),
                None => {
                    all.insert(key.clone(), *v);
                }
            }
        }
    }
    all
}

fn check(got: &Results, expected: &Results) {
    assert_eq!(got.len(), expected.len(), "one result per (key, window)");
    for (key, v) in expected {
        let g = got.get(key).unwrap_or_else(|| panic!("{key:?} missing"));
        assert!(same(g, v), "{key:?}: got {g:?}, expected {v:?}");
    }
}

/// n and d of every (k, window_end) from the events themselves: HOP(1 min,
/// 3 min) puts an event in the three windows whose ends are the next three
/// whole minutes after it.
fn direct(expected: &Results) {
    let mut windows: BTreeMap<(u64, String), (f64, BTreeSet<u64>)> = BTreeMap::new();
    for i in 0..EVENTS {
        let (k, m) = key_and_value(i);
        for j in 1..=3 {
            let end = (ts(i).div_euclid(60_000) + j) * 60_000;
            let end = chrono::DateTime::from_timestamp_millis(end)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            let w = windows.entry((k, end)).or_default();
            w.0 += 1.0;
            w.1.insert(m);
        }
    }
    assert_eq!(
        expected.len(),
        windows.len(),
        "one result per (key, window)"
    );
    for (key, (n, values)) in windows {
        let got = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(got[..2], [n, values.len() as f64], "{key:?}: n and d");
    }
}

/// `budget`: the window operator's memory budget. With `whole`, it holds
/// every pane, so the restore must bring the open panes back into memory.
fn crash_and_restore(budget: usize, whole: bool) {
    let mut reference = pipeline();
    reference.feed(0, EVENTS, |_, _| {});
    reference.finish();
    let expected = merge(&[&reference.results]);
    assert!(expected.len() > 10_000, "{} results", expected.len());
    direct(&expected);

    let local = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cfs = vec![CF.to_string()];
    let mut chunks = Vec::new();
    let first = {
        let mut first = pipeline();
        let mut store = TaskStore::open(local.path(), 0, &cfs, 8 << 20).unwrap();
        store.capture_changes();
        first.attach(&store, START_OF_TIME, budget);
        let mut id = 0;
        first.feed(0, CRASH, |p, next| {
            if CHECKPOINTS.contains(&next) {
                p.flow.chain.flush_state().unwrap();
                id += 1;
                store
                    .checkpoint(&CheckpointMeta {
                        id,
                        next_offsets: [(0, next as i64)].into(),
                        fired_through: ts(next - BATCH - 1),
                        ..Default::default()
                    })
                    .unwrap();
                chunks.extend(store.take_changes(256 << 10, true));
            }
        });
        // The crash: what came after the second checkpoint is lost, and the
        // operator with its hold on the store.
        first.results
    };
    assert!(first.len() > 1_000, "windows fired before the crash");

    // From the local checkpoint.
    let store = TaskStore::open(local.path(), 0, &cfs, 8 << 20).unwrap();
    let meta = store.restored().cloned().expect("checkpoint 2");
    assert_eq!(meta.id, 2);
    let resume = meta.next_offsets[&0] as u64;
    let mut second = pipeline();
    second.attach(&store, meta.fired_through, budget);
    if whole {
        assert!(
            second.flow.chain.state_rows() > 0,
            "the open panes came back into memory from their segments"
        );
    }
    second.feed(resume, EVENTS, |_, _| {});
    second.finish();
    check(&merge(&[&first, &second.results]), &expected);
    drop(second);
    drop(store);

    // Rebuilt elsewhere from the recorded changes alone.
    let store = TaskStore::open(elsewhere.path(), 0, &cfs, 8 << 20).unwrap();
    for c in &chunks {
        store.apply_changes(c).unwrap();
    }
    let mut rebuilt = pipeline();
    rebuilt.attach(&store, meta.fired_through, budget);
    rebuilt.feed(resume, EVENTS, |_, _| {});
    rebuilt.finish();
    check(&merge(&[&first, &rebuilt.results]), &expected);
}

#[test]
fn panes_kept_in_memory_come_back_whole_after_a_crash() {
    let _shared = crate::shared();
    crash_and_restore(256 << 20, true);
}

#[test]
fn panes_moved_over_the_budget_come_back_whole_after_a_crash() {
    let _shared = crate::shared();
    // Big enough that panes are copied at checkpoints before some are moved.
    crash_and_restore(1 << 20, false);
}

/// A watermark that jumps (the end of bounded input) is advanced by the task
/// through `Chain::next_emission`, one window end at a time, so each step's
/// results are written before the next is computed. Stepping must give what
/// one jump gives, one window end per step.
#[test]
fn a_jumping_watermark_steps_one_window_end_at_a_time() {
    let _shared = crate::shared();
    let mut jump = pipeline();
    jump.feed(0, 30_000, |_, _| {});
    jump.finish();

    let mut stepped = pipeline();
    stepped.feed(0, 30_000, |_, _| {});
    let mut steps = 0;
    let mut from = i64::MIN;
    while let Some(due) = stepped.flow.chain.next_emission() {
        assert!(
            due > from,
            "next_emission moves forward: {due} after {from}"
        );
        let before = stepped.results.len();
        let out = stepped
            .flow
            .chain
            .advance_watermark(due, &mut Context::default())
            .unwrap();
        stepped.collect(out);
        let ends: std::collections::BTreeSet<&String> = stepped.results[before..]
            .iter()
            .map(|((_, end), _)| end)
            .collect();
        assert_eq!(ends.len(), 1, "step {steps} emits one window end: {ends:?}");
        from = due;
        steps += 1;
    }
    let before = stepped.results.len();
    stepped.finish();
    assert_eq!(
        stepped.results.len(),
        before,
        "nothing is left after the steps"
    );
    assert!(steps >= 3, "open windows were stepped through: {steps}");
    let sorted = |mut r: Vec<Emitted>| {
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    let (a, b) = (sorted(jump.results), sorted(stepped.results));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "stepping and one jump give the same results");
}
