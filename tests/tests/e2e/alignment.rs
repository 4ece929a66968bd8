//! Watermark alignment against the test broker: a partition whose event time runs ahead
//! of the others is not read until they catch up, and nothing is lost.
//!
//! Partition 1's events are ten times sparser in event time than partition
//! 0's, so reading the two alike puts partition 1 far ahead. The input is
//! produced in record batches: a partition that is held back must go on
//! where it stopped, not fetch again from inside a batch (the test broker
//! answers that with the next batch, which is how the pause/resume prototype
//! lost records: tests/src/broker.rs). Every event must be counted in its window exactly once, with
//! and without alignment, and the run must report that alignment engaged.
//!
//! The run must see both partitions' data early and decide between small
//! batches: fetches are capped at 16 KiB per partition (uncapped, the test
//! broker answers a fetch with one partition's data) and batches hold 200 rows (the
//! decision is made after each batch). With 8,192-row batches and uncapped
//! fetches, a run could take all of one partition and the end of the other
//! in its first batch and never need to hold anything back. (The test failed
//! in about two runs of five once weir's prefetch shrank to 4 MiB, most
//! likely that way; with both changes it passed six runs of six.)

use std::collections::BTreeMap;

use weir_tests::apache_kafka::kafka;
use weir_tests::kafka::{Record, create_topic, produce};
use weir_tests::output::{GroupBy, once, window_results};
use weir_tests::pipeline_file;
use weir_tests::process::weir;

const PER_PARTITION: i64 = 5_000;
const START: i64 = 1_767_225_600_000;

fn events() -> (Vec<Record>, BTreeMap<i64, i64>) {
    let mut records = Vec::new();
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    for (partition, step_ms) in [(0, 600), (1, 6_000)] {
        for i in 0..PER_PARTITION {
            let ts = START + i * step_ms;
            *expected.entry(ts - ts % 600_000 + 600_000).or_default() += 1;
            records.push(Record {
                partition: Some(partition),
                ..Record::value(format!(r#"{{"p":{partition},"i":{i},"ts":{ts}}}"#))
            });
        }
    }
    (records, expected)
}

fn run(brokers: &str, drift: &str, out: &str) -> (String, BTreeMap<i64, i64>) {
    let (dir, path) = pipeline_file(&format!(
        r#"
SET 'execution.batch-size' = '200';
CREATE TABLE ev (p INT, i BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH ('connector' = 'kafka', 'topic' = 'al-in', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
  'scan.watermark.alignment.max-drift' = '{drift}',
  'properties.max.partition.fetch.bytes' = '16384');
CREATE TABLE counts WITH ('connector' = 'kafka', 'topic' = '{out}', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}');
INSERT INTO counts
SELECT window_end, count(*) AS n
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '10' MINUTE))
GROUP BY window_start, window_end;
"#
    ));
    let output = weir("info")
        .args([
            "run",
            path.to_str().unwrap(),
            "--group-id",
            out,
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env("KAFKA_BROKERS", brokers)
        .output()
        .expect("weir runs");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "weir run failed:\n{log}");
    // Each window once.
    let counts = once(out, window_results(brokers, out, GroupBy::Nothing))
        .into_iter()
        .map(|((_, end), v)| {
            let end = chrono::DateTime::parse_from_rfc3339(&end)
                .map(|t| t.timestamp_millis())
                .unwrap_or_else(|e| panic!("window_end {end}: {e}"));
            (end, v["n"].as_i64().expect("n"))
        })
        .collect();
    (log, counts)
}

#[test]
fn a_partition_ahead_is_held_back_and_nothing_is_lost() {
    let _alone = crate::exclusive();
    let b = kafka().expect("the test broker").bootstrap();
    create_topic(b, "al-in", 2).expect("the input topic");
    let (records, expected) = events();
    produce(b, "al-in", &records).expect("the input");

    let (log, counts) = run(b, "1min", "al-aligned");
    assert!(
        log.contains("not read until within half of that"),
        "alignment engaged:\n{log}"
    );
    assert!(
        log.contains(&format!("done: {} records in", 2 * PER_PARTITION)),
        "every record read once:\n{log}"
    );
    assert_eq!(counts, expected, "every event in its window, once");

    let (log, counts) = run(b, "off", "al-unaligned");
    assert!(
        !log.contains("not read until"),
        "no alignment when off:\n{log}"
    );
    assert_eq!(counts, expected, "the same windows without alignment");
}
