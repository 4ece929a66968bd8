//! `'sink.transactional' = 'true'` against librdkafka's mock cluster, the one
//! broker here that takes Kafka's transaction calls (the test broker does not
//! route EndTxn: tests/src/broker.rs).
//!
//! What this proves: weir drives the transactional protocol end to end
//! (InitProducerId with its transactional.id, a transaction per checkpoint
//! holding output, dead letters and changelog records, the input offsets
//! added with send_offsets_to_transaction, commit, and the next transaction
//! begun), every checkpoint commits exactly one transaction, and the group's
//! offsets are not committed outside the transactions (a control run without
//! transactions commits them plainly). What it does not prove: the mock
//! cluster accepts these calls but does not honour them (it never applies the
//! offsets of a committed transaction, for one), so read_committed isolation
//! of aborted output, the offsets landing at commit, and the fencing of a
//! zombie producer are not exercised; on a real Kafka cluster they are
//! Kafka's own guarantees.

use std::time::Duration;

use rdkafka::Offset;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use weir::{RunOptions, SourceSummary, run_pipeline};
use weir_tests::kafka::{Record, produce, read_all};
use weir_tests::output::read_json;
use weir_tests::{load, pipeline_file};

const EVENTS: usize = 2_000;

#[test]
fn each_checkpoint_commits_one_transaction_and_no_plain_offset_commit() {
    let _shared = crate::shared();
    let mock = MockCluster::new(1).unwrap();
    let b = mock.bootstrap_servers();
    mock.create_topic("tx-in", 2, 1).unwrap();
    let records: Vec<Record> = (0..EVENTS)
        .map(|i| Record {
            partition: Some((i % 2) as i32),
            ..Record::value(format!(
                r#"{{"id":{i},"card":"c{}","ts":{}}}"#,
                i % 7,
                1_767_225_600_000i64 + 10 * i as i64
            ))
        })
        .chain([Record {
            partition: Some(0),
            ..Record::value("not json")
        }])
        .collect();
    produce(&b, "tx-in", &records).unwrap();

    let plain = run(&mock, "plain", false);
    assert_eq!(plain.transactions, 0);
    assert_eq!(
        committed(&b, "plain-tx"),
        vec![
            Offset::Offset((EVENTS / 2 + 1) as i64),
            Offset::Offset((EVENTS / 2) as i64)
        ],
        "without transactions the group's offsets are committed plainly"
    );

    let summary = run(&mock, "txn", true);
    assert!(summary.checkpoints >= 3, "{summary:?}");
    assert_eq!(
        summary.transactions, summary.checkpoints,
        "one transaction per checkpoint"
    );
    assert_eq!(
        committed(&b, "txn-tx"),
        vec![Offset::Invalid, Offset::Invalid],
        "offsets go only through the transactions (which the mock does not apply)"
    );
}

/// Runs the pipeline writing to `<prefix>-*` topics with group id `prefix`,
/// and checks its output is complete.
fn run(
    mock: &MockCluster<'static, DefaultProducerContext>,
    prefix: &str,
    transactional: bool,
) -> SourceSummary {
    let b = mock.bootstrap_servers();
    // The mock cluster does not serve CreateTopics requests: weir finds these.
    for topic in ["out", "win", "dlq", "tx-changelog"] {
        mock.create_topic(&format!("{prefix}-{topic}"), 1, 1)
            .unwrap();
    }
    let (dir, path) = pipeline_file(&format!(
        r#"
SET 'checkpoint.interval' = '1ms';
SET 'execution.batch-size' = '100';
CREATE TABLE tx (id BIGINT, card TEXT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'kafka', 'topic' = 'tx-in', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset', 'dead-letter.topic' = '{prefix}-dlq');
CREATE TABLE per_event WITH ('connector' = 'kafka', 'topic' = '{prefix}-out', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'sink.delivery-guarantee' = 'exactly-once',
  'sink.transactional' = '{transactional}');
CREATE TABLE per_card WITH ('connector' = 'kafka', 'topic' = '{prefix}-win', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'sink.delivery-guarantee' = 'exactly-once');
INSERT INTO per_event SELECT id FROM tx;
INSERT INTO per_card
SELECT card, window_end, count(*) AS n
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY card, window_start, window_end;
"#
    ));
    let summary = run_pipeline(
        load(&path, &b),
        RunOptions {
            print: Some(false),
            group_id: Some(prefix.into()),
            state_dir: Some(dir.path().join("state")),
            ..Default::default()
        },
    )
    .unwrap()
    .total();
    assert_eq!(summary.records_in, EVENTS as u64 + 1);

    // Everything arrived, the changelog included.
    assert_eq!(read_json(&b, &format!("{prefix}-out")).len(), EVENTS);
    let windows = read_json(&b, &format!("{prefix}-win"));
    let counted: i64 = windows.iter().map(|v| v["n"].as_i64().unwrap()).sum();
    assert_eq!(counted, EVENTS as i64);
    let dlq = read_all(&b, &format!("{prefix}-dlq"), Duration::from_secs(10)).unwrap();
    assert_eq!(dlq.len(), 1);
    let changelog = read_all(
        &b,
        &format!("{prefix}-tx-changelog"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        changelog
            .iter()
            .any(|r| r.key.as_deref().is_some_and(|k| k.ends_with(b".commit"))),
        "no changelog commit record among {} records",
        changelog.len()
    );
    summary
}

/// The group's committed offsets of both input partitions.
fn committed(brokers: &str, group: &str) -> Vec<Offset> {
    weir_tests::kafka::committed(brokers, group, "tx-in", &[0, 1]).unwrap()
}
