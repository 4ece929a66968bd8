//! Window state far larger than the operator's memory: a million distinct keys
//! through a TUMBLE window (with a DISTINCT aggregate) whose operator may hold
//! 4 MiB of deltas, so panes move to the store in many chunks, with a
//! checkpoint, a "crash" and two restores in the middle: one from the local
//! checkpoint, one that rebuilds the store elsewhere from the recorded
//! changes (what the changelog topic carries). Each must produce exactly the
//! expected per-key results. Timings are printed, not asserted.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weir_operators::ids::{id_array, source_row_id};
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{
    Batch, Chain, Context, JsonDecoder, JsonEncoder, RecordMeta, StateAttachment, build_chain,
};
use weir_state::{CheckpointMeta, TaskStore};

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
    chain: Chain,
    /// The window operator's position in the chain.
    window: usize,
    decoder: JsonDecoder,
    encoder: JsonEncoder,
}

fn pipeline() -> Pipeline {
    let plan = weir::load::plan_text(Path::new("scale.sql"), SQL, &|_| None).unwrap();
    let flow = &plan.flows[0];
    let chain = build_chain(flow, &plan.tables, &Default::default()).unwrap();
    let stateful = chain.stateful();
    assert_eq!(stateful.len(), 1, "one stateful operator: the window");
    Pipeline {
        window: stateful[0],
        chain,
        decoder: JsonDecoder::new(&plan.tables["ev"]),
        encoder: JsonEncoder::new(flow.output.clone(), vec![]),
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
    let ts = chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3f");
    format!(r#"{{"k": {k}, "v": {v}, "ts": "{ts}"}}"#)
}

/// Feeds events `from..to`; returns the most keys the operator held in memory.
fn feed(p: &mut Pipeline, from: u64, to: u64) -> usize {
    let mut most = 0;
    let mut i = from;
    while i < to {
        let end = (i + BATCH as u64).min(to);
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        let mut metas = Vec::new();
        for j in i..end {
            let s = buf.len();
            buf.extend_from_slice(event(j).as_bytes());
            spans.push((s, buf.len()));
            buf.push(b'\n');
            metas.push(RecordMeta {
                partition: 0,
                offset: j as i64,
                timestamp: None,
                key: None,
            });
        }
        let decoded = p.decoder.decode(&buf, &spans, &metas).unwrap();
        assert!(decoded.bad.is_empty());
        let ids = id_array((i..end).map(|j| source_row_id(0, j as i64)));
        let batch = Batch::uniform(decoded.batch, START_OF_TIME, Arc::new(ids));
        let out = p.chain.process(batch, &mut Context::default()).unwrap();
        assert!(out.is_empty(), "nothing fires before the watermark moves");
        most = most.max(p.chain.state_rows());
        i = end;
    }
    most
}

/// Fires everything and checks every key's result; returns the rows.
fn fire_and_check(p: &mut Pipeline) -> usize {
    let out = p
        .chain
        .advance_watermark(END_OF_TIME, &mut Context::default())
        .unwrap();
    let mut seen = vec![false; KEYS as usize];
    let mut rows = 0;
    for b in out {
        let encoded = p.encoder.encode(&b.data).unwrap();
        for i in 0..encoded.len() {
            let v: serde_json::Value = serde_json::from_slice(encoded.value(i)).unwrap();
            let k = v["k"].as_u64().unwrap();
            assert!(!seen[k as usize], "key {k} emitted twice");
            seen[k as usize] = true;
            assert_eq!(v["n"], 2, "{v}");
            assert_eq!(v["s"].as_f64().unwrap(), k as f64 + 1.0, "{v}");
            assert_eq!(v["d"], if k == 1 { 1 } else { 2 }, "{v}");
            rows += 1;
        }
    }
    assert_eq!(rows, KEYS as usize, "one result per key");
    rows
}

fn attach(p: &mut Pipeline, store: &TaskStore, fired_through: i64) {
    p.chain
        .attach_state(
            p.window,
            StateAttachment {
                store: store.operator(CF).unwrap(),
                fired_through,
                memory_budget: BUDGET,
            },
        )
        .unwrap();
}

#[test]
fn a_million_keys_in_a_small_cache_survive_a_crash_both_ways() {
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
        p.chain.flush_state().unwrap();
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
        p.chain.flush_state().unwrap();
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
