//! Window state far larger than the operator's memory: a million distinct keys
//! through a TUMBLE window (with a DISTINCT aggregate) whose operator may hold
//! 4 MiB of deltas, so panes move to the store in many chunks, with a
//! checkpoint, a "crash" and two restores in the middle: one from the local
//! checkpoint, one that rebuilds the store elsewhere from the recorded
//! changes (what the changelog topic carries). Each must produce exactly the
//! expected per-key results. Timings are printed, not asserted.

use std::time::Instant;

use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Context, JsonDecoder};
use weir_state::{CheckpointMeta, TaskStore};
use weir_tests::inprocess::{Flow, flow, rows_under, ts};

const KEYS: u64 = 1_000_000;
const BATCH: usize = 8192;
const BUDGET: usize = 4 << 20;
/// RocksDB's block cache: also deliberately small.
const CACHE: usize = 8 << 20;
const CF: &str = "flow0.op0";

const SQL: &str = r#"
CREATE TABLE ev (k BIGINT, v DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'ev', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
INSERT INTO out
SELECT k, count(*) AS n, sum(v) AS s, count(DISTINCT v) AS d
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY k, window_start, window_end;
"#;

struct Pipeline {
    flow: Flow,
    /// The window operator's position in the chain.
    window: usize,
    decoder: JsonDecoder,
}

fn pipeline() -> Pipeline {
    let flow = flow("scale.sql", SQL);
    Pipeline {
        window: flow.only_stateful("the window"),
        decoder: flow.decoder("ev"),
        flow,
    }
}

/// Event `i`: every key twice in the first minute (v = k, then v = 1).
fn event(i: u64) -> String {
    let (k, v) = if i < KEYS {
        (i, i as f64)
    } else {
        (i - KEYS, 1.0)
    };
    // Spread over the minute, in time order.
    let ms = 1_767_225_600_000 + (i * 59_000) / (2 * KEYS);
    let ts = ts(ms as i64);
    format!(r#"{{"k": {k}, "v": {v}, "ts": "{ts}"}}"#)
}

/// Feeds events `from..to`; returns the most keys the operator held in memory.
fn feed(p: &mut Pipeline, from: u64, to: u64) -> usize {
    let mut most = 0;
    let mut i = from;
    while i < to {
        let end = (i + BATCH as u64).min(to);
        let lines: Vec<String> = (i..end).map(event).collect();
        let batch = rows_under(&p.decoder, &lines, i as usize, START_OF_TIME);
        let out = p
            .flow
            .chain
            .process(batch, &mut Context::default())
            .unwrap();
        assert!(out.is_empty(), "nothing fires before the watermark moves");
        most = most.max(p.flow.chain.state_rows());
        i = end;
    }
    most
}

/// Fires everything and checks every key's result; returns the rows.
fn fire_and_check(p: &mut Pipeline) -> usize {
    let out = p
        .flow
        .chain
        .advance_watermark(END_OF_TIME, &mut Context::default())
        .unwrap();
    let mut seen = vec![false; KEYS as usize];
    let mut rows = 0;
    for (_, json) in p.flow.encode(out) {
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let k = v["k"].as_u64().unwrap();
        assert!(!seen[k as usize], "key {k} emitted twice");
        seen[k as usize] = true;
        assert_eq!(v["n"], 2, "{v}");
        assert_eq!(v["s"].as_f64().unwrap(), k as f64 + 1.0, "{v}");
        assert_eq!(v["d"], if k == 1 { 1 } else { 2 }, "{v}");
        rows += 1;
    }
    assert_eq!(rows, KEYS as usize, "one result per key");
    rows
}

fn attach(p: &mut Pipeline, store: &TaskStore, fired_through: i64) {
    p.flow.attach(p.window, store, CF, fired_through, BUDGET);
}

#[test]
fn a_million_keys_in_a_small_cache_survive_a_crash_both_ways() {
    let _alone = crate::exclusive();
    let local = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cfs = vec![CF.to_string()];

    // First life: half the events, a checkpoint, then more that a crash loses.
    let started = Instant::now();
    let mut chunks = Vec::new();
    {
        let mut store = TaskStore::open(local.path(), 0, &cfs, CACHE).unwrap();
        store.capture_changes();
        let mut p = pipeline();
        attach(&mut p, &store, START_OF_TIME);
        let most = feed(&mut p, 0, KEYS + KEYS / 2);
        assert!(
            most < KEYS as usize / 4,
            "the operator held {most} of {KEYS} keys in memory with a {BUDGET}-byte budget"
        );
        p.flow.chain.flush_state().unwrap();
        let checkpointed = Instant::now();
        let stats = store
            .checkpoint(&CheckpointMeta {
                id: 1,
                next_offsets: [(0, (KEYS + KEYS / 2) as i64)].into(),
                fired_through: START_OF_TIME,
                ..Default::default()
            })
            .unwrap();
        println!(
            "1.5M events in {:.1} s; checkpoint: {} ms, {} bytes",
            started.elapsed().as_secs_f64(),
            checkpointed.elapsed().as_millis(),
            stats.bytes
        );
        chunks.extend(store.take_changes(256 << 10, true));
        // Lost in the crash: never checkpointed.
        feed(&mut p, KEYS + KEYS / 2, KEYS + KEYS / 2 + 50_000);
        p.flow.chain.flush_state().unwrap();
    }

    // Restore from the local checkpoint and finish.
    let restored = Instant::now();
    let store = TaskStore::open(local.path(), 0, &cfs, CACHE).unwrap();
    let meta = store.restored().cloned().expect("checkpoint 1");
    let mut p = pipeline();
    attach(&mut p, &store, meta.fired_through);
    println!("local restore: {} ms", restored.elapsed().as_millis());
    let resume = meta.next_offsets[&0] as u64;
    feed(&mut p, resume, 2 * KEYS);
    fire_and_check(&mut p);
    drop(p);
    drop(store);

    // Rebuild elsewhere from the recorded changes alone (what the changelog
    // topic carries), then finish.
    let rebuilt = Instant::now();
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let store = TaskStore::open(elsewhere.path(), 0, &cfs, CACHE).unwrap();
    for c in &chunks {
        store.apply_changes(c).unwrap();
    }
    let mut p = pipeline();
    attach(&mut p, &store, START_OF_TIME);
    println!(
        "rebuilt {} chunks ({bytes} bytes) of changes in {} ms",
        chunks.len(),
        rebuilt.elapsed().as_millis()
    );
    feed(&mut p, resume, 2 * KEYS);
    fire_and_check(&mut p);
}
