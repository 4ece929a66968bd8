//! A stateless scoring job (per-event predict, exactly-once sink) on two
//! `weir worker`s against the test broker: one worker is killed with SIGKILL while input
//! arrives, and every input event must be scored exactly once. A task without
//! operator state still checkpoints its input offsets and output positions to
//! its changelog partition, so the partition's next owner resumes where the
//! dead one's last checkpoint was and skips what it wrote since.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_tests::apache_kafka::kafka;
use weir_tests::cluster::{Registry, Worker, tasks, work_dir};
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::output::read_until;
use weir_tests::process::run_weir;
use weir_tests::{unique, wait_for, workspace_root, write_sql};

const EVENTS: usize = 12_000;
const PARTITIONS: i32 = 4;

const SQL: &str = r#"
SET 'pipeline.name' = 'scores';
SET 'checkpoint.interval' = '1s';

CREATE TABLE events (id BIGINT, x DOUBLE) WITH (
  'connector' = 'kafka',
  'topic' = '${INPUT}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset'
);

CREATE TABLE scores WITH (
  'connector' = 'kafka',
  'topic' = '${SINK}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'id',
  'sink.delivery-guarantee' = 'exactly-once'
);

CREATE MODEL fraud WITH ('path' = '../models/fraud.onnx');

INSERT INTO scores
SELECT id, predict(fraud, x, x, x, x, x) AS p
FROM events;
"#;

fn event(i: usize) -> Record {
    Record {
        key: Some(format!("k{}", i % 97).into_bytes()),
        ..Record::value(format!(r#"{{"id": {i}, "x": {}}}"#, (i % 50) as f64 / 10.0))
    }
}

#[test]
fn a_stateless_job_scores_each_event_once_through_a_worker_kill() {
    let _alone = crate::exclusive();
    let b = kafka().expect("the test broker").bootstrap().to_owned();
    let registry = Registry::new(&b);
    let (input, sink) = (unique("events"), unique("scores"));
    create_topic(&b, &input, PARTITIONS).expect("the input topic");
    let events: Vec<Record> = (0..EVENTS).map(event).collect();
    let half = EVENTS / 2;
    produce(&b, &input, &events[..half]).expect("the first half");

    // WEIR_CLUSTER_KEEP=1 keeps the workers' logs and state for a look.
    let (dir_path, _tmp) = work_dir();
    let dir = dir_path.as_path();
    // The model sits beside the SQL file's directory, not in it: submit
    // ships it by its relative path, `..` and all.
    std::fs::create_dir_all(dir.join("sql")).expect("sql/");
    std::fs::create_dir_all(dir.join("models")).expect("models/");
    let sql = write_sql(&dir.join("sql"), "scores.sql", SQL);
    std::fs::copy(
        workspace_root().join("examples/fraud/fraud.onnx"),
        dir.join("models/fraud.onnx"),
    )
    .expect("the model");
    let mut w1 = Worker::start(&registry, dir, 1);
    let mut w2 = Worker::start(&registry, dir, 2);
    let out = run_weir(
        &registry.command(&["submit", sql.to_str().unwrap()]),
        &[("INPUT", &input), ("SINK", &sink)],
        "warn",
    );
    assert!(
        out.status.success(),
        "the job is submitted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = wait_for(Duration::from_secs(120), || {
        let t = tasks(&[&w1, &w2]);
        let parts: usize = t.iter().map(|x| x.1.len()).sum();
        let read: u64 = t.iter().map(|x| x.2).sum();
        (parts == PARTITIONS as usize && read >= half as u64, t)
    });
    assert!(
        seen.iter().map(|x| x.2).sum::<u64>() >= half as u64,
        "the workers read the first half: {seen:?}\n{}",
        w1.tail()
    );

    // The second half arrives while a worker with tasks is killed.
    let second: Vec<Record> = events[half..].to_vec();
    let (b2, input2) = (b.clone(), input.clone());
    let producer = std::thread::spawn(move || produce(&b2, &input2, &second));
    let victim = wait_for(Duration::from_secs(120), || {
        let t = tasks(&[&w1, &w2]);
        let read: u64 = t.iter().map(|x| x.2).sum();
        let victim = t.iter().find(|x| !x.1.is_empty()).map(|x| x.0.clone());
        (read >= (half + half / 4) as u64 && victim.is_some(), victim)
    })
    .expect("a worker has tasks");
    let survivor = if victim == w1.id {
        w1.child.kill().expect("SIGKILL");
        w1.child.wait().expect("reaped");
        &w2
    } else {
        w2.child.kill().expect("SIGKILL");
        w2.child.wait().expect("reaped");
        &w1
    };
    producer
        .join()
        .expect("the producer thread")
        .expect("the second half");

    // Every event is scored once.
    let before_stop = read_until(Duration::from_secs(240), EVENTS, || {
        let mut ids: BTreeMap<i64, usize> = BTreeMap::new();
        for r in read_all(&b, &sink, Duration::from_secs(60)).unwrap_or_default() {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON output");
            *ids.entry(v["id"].as_i64().expect("id")).or_default() += 1;
        }
        ids
    });
    assert!(
        before_stop.len() >= EVENTS,
        "every event is scored: {} of {EVENTS}\n{}",
        before_stop.len(),
        survivor.tail()
    );
    let t = wait_for(Duration::from_secs(60), || {
        let t = tasks(&[survivor]);
        (
            t.iter().map(|x| x.1.len()).sum::<usize>() == PARTITIONS as usize,
            t,
        )
    });
    // Nothing more is written once the job is stopped: read everything again.
    let out = run_weir(&registry.command(&["stop", "scores"]), &[], "warn");
    assert!(
        out.status.success(),
        "weir stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut scored: BTreeMap<i64, usize> = BTreeMap::new();
    for r in read_all(&b, &sink, Duration::from_secs(60)).expect("the output is read") {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON output");
        *scored.entry(v["id"].as_i64().expect("id")).or_default() += 1;
    }
    assert_eq!(
        t.iter().map(|x| x.1.len()).sum::<usize>(),
        PARTITIONS as usize,
        "the survivor runs every partition: {t:?}\n{}",
        survivor.tail()
    );
    let missing: Vec<usize> = (0..EVENTS)
        .filter(|i| !scored.contains_key(&(*i as i64)))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "events never scored: {missing:?}");
    let repeated: Vec<_> = scored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        repeated.is_empty(),
        "events scored more than once: {repeated:?}"
    );
}
