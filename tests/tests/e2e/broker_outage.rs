//! A broker that stops answering mid-run: weir keeps retrying, and when the
//! broker returns the run continues with nothing lost.

use std::time::{Duration, Instant};

use weir::RunOptions;
use weir_tests::apache_kafka;
use weir_tests::kafka::{Record, create_topic, produce};
use weir_tests::output::{ids, read_until};
use weir_tests::{Running, load, newest_checkpoint, pipeline_file, wait_for};

/// How long weir must be seen stalled on the frozen broker: the outage lasts
/// at least this long.
const STALLED: Duration = Duration::from_secs(8);

fn batch(from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| Record::value(format!(r#"{{"id":{i}}}"#)))
        .collect()
}

/// The distinct ids written so far (at least once: a retry may repeat one).
fn output_ids(brokers: &str) -> Vec<i64> {
    let mut ids = ids(brokers, "bo-out", "id");
    ids.dedup();
    ids
}

#[test]
fn the_run_continues_when_the_broker_returns() {
    let _alone = crate::exclusive();
    // A broker of its own: freezing the run's shared one would stall every
    // other test.
    let broker = apache_kafka::start_own().expect("a broker of the test's own");
    let b = broker.kafka().bootstrap().to_owned();
    create_topic(&b, "bo-in", 1).unwrap();
    create_topic(&b, "bo-out", 1).unwrap();
    let (dir, path) = pipeline_file(
        r#"
SET 'checkpoint.interval' = '200ms';
CREATE TABLE tx (id BIGINT) WITH ('connector' = 'kafka', 'topic' = 'bo-in', 'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}', 'scan.startup.mode' = 'earliest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'bo-out', 'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}');
INSERT INTO out SELECT id FROM tx;
"#,
    );
    let state_dir = dir.path().join("state");
    let run = Running::start(
        load(&path, &b),
        RunOptions {
            print: Some(false),
            group_id: Some("bo".into()),
            state_dir: Some(state_dir.clone()),
            ..Default::default()
        },
    );
    produce(&b, "bo-in", &batch(0, 100)).unwrap();
    assert_eq!(
        read_until(Duration::from_secs(60), 100, || output_ids(&b)).len(),
        100,
        "first batch processed"
    );
    // Checkpoints go on while the broker answers (each commits the group's
    // offsets to it).
    let before = newest_checkpoint(&state_dir);
    let advanced = wait_for(Duration::from_secs(30), || {
        let now = newest_checkpoint(&state_dir);
        (now > before, now)
    });
    assert!(
        advanced > before,
        "weir checkpoints while the broker answers"
    );

    // The outage: the broker freezes (its data survives) until weir has been
    // seen stalled on it: no checkpoint for STALLED, where one came every
    // 200 ms.
    broker.pause().unwrap();
    let deadline = Instant::now() + STALLED * 4;
    let mut last = newest_checkpoint(&state_dir);
    let mut since = Instant::now();
    while since.elapsed() < STALLED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = newest_checkpoint(&state_dir);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    let stalled = since.elapsed();
    broker.resume().unwrap();
    assert!(
        stalled >= STALLED,
        "weir went on checkpointing while the broker was frozen (checkpoint {last} {stalled:?} ago)"
    );

    produce(&b, "bo-in", &batch(100, 200)).unwrap();
    let ids = read_until(Duration::from_secs(90), 200, || output_ids(&b));
    let summary = run.stop().expect("the run survives the outage");
    assert_eq!(
        ids,
        (0..200).collect::<Vec<i64>>(),
        "every record after the outage"
    );
    assert_eq!(summary.total().records_in, 200);
}
