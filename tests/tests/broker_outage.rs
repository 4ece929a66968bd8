//! A broker that stops answering mid-run: weir keeps retrying, and when the
//! broker returns the run continues with nothing lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir::{RunOptions, load_pipeline, run_pipeline};
use weir_tests::{Record, Tansu, create_topic, pipeline_file, produce, read_json, wait_for};

fn batch(from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| Record::value(format!(r#"{{"id":{i}}}"#)))
        .collect()
}

fn output_ids(brokers: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = read_json(brokers, "bo-out")
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn wait_for_ids(brokers: &str, n: usize, timeout: Duration) -> Vec<i64> {
    wait_for(timeout, || {
        let ids = output_ids(brokers);
        (ids.len() >= n, ids)
    })
}

#[test]
fn the_run_continues_when_the_broker_returns() {
    let broker = Tansu::start().unwrap();
    let b = broker.brokers.clone();
    create_topic(&b, "bo-in", 1).unwrap();
    create_topic(&b, "bo-out", 1).unwrap();
    let (dir, path) = pipeline_file(&format!(
        r#"
SET 'checkpoint.interval' = '200ms';
CREATE TABLE tx (id BIGINT) WITH ('connector' = 'kafka', 'topic' = 'bo-in', 'format' = 'json',
  'properties.bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'bo-out', 'format' = 'json',
  'properties.bootstrap.servers' = '{b}');
INSERT INTO out SELECT id FROM tx;
"#
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let loaded = load_pipeline(&path, &|_| None).unwrap();
        let stop = stop.clone();
        let state_dir = dir.path().join("state");
        std::thread::spawn(move || {
            run_pipeline(
                loaded,
                RunOptions {
                    stop,
                    print: Some(false),
                    state_dir: Some(state_dir),
                    ..Default::default()
                },
            )
        })
    };
    produce(&b, "bo-in", &batch(0, 100)).unwrap();
    assert_eq!(
        wait_for_ids(&b, 100, Duration::from_secs(60)).len(),
        100,
        "first batch processed"
    );

    // The outage: the broker freezes for several seconds (its data survives).
    broker.pause().unwrap();
    std::thread::sleep(Duration::from_secs(8));
    broker.resume().unwrap();

    produce(&b, "bo-in", &batch(100, 200)).unwrap();
    let ids = wait_for_ids(&b, 200, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().expect("the run survives the outage");
    assert_eq!(
        ids,
        (0..200).collect::<Vec<i64>>(),
        "every record after the outage"
    );
    assert_eq!(summary.total().records_in, 200);
}
