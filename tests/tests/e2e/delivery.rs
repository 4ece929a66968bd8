//! Delivery across restarts: a second run resumes from the first one's last
//! checkpoint (or, without local state, from the group's committed offsets),
//! so it neither repeats nor skips input, and a window open at a graceful stop
//! is whole after the restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use weir::{RunOptions, load_pipeline, run_pipeline};
use weir_tests::apache_kafka::kafka;
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::output::{GroupBy, ids, read_until, window_results};
use weir_tests::{Running, env, load, pipeline_file, run_in_process};

fn events(from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| Record {
            partition: Some((i % 3) as i32),
            ..Record::value(format!(
                r#"{{"id":{i},"ts":{}}}"#,
                1_767_225_600_000i64 + i as i64
            ))
        })
        .collect()
}

#[test]
fn a_second_run_resumes_from_the_checkpoint() {
    resume("dv-cp", false);
}

/// Without the first run's state directory, the group's offsets say where to go on.
#[test]
fn a_second_run_without_state_resumes_from_committed_offsets() {
    resume("dv-go", true);
}

fn resume(prefix: &str, fresh_state: bool) {
    let _shared = crate::shared();
    let b = kafka().expect("the test broker").bootstrap();
    let input = format!("{prefix}-in");
    let output = format!("{prefix}-out");
    create_topic(b, &input, 3).unwrap();
    produce(b, &input, &events(0, 300)).unwrap();
    let (dir, path) = pipeline_file(&format!(
        r#"
SET 'checkpoint.interval' = '100ms';
CREATE TABLE tx (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'kafka', 'topic' = '{input}',
  'format' = 'json', 'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}',
  'scan.startup.mode' = 'group-offsets', 'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = '{output}', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}');
INSERT INTO out SELECT id, id * 2 AS twice FROM tx;
"#
    ));
    let run = |state: &Path| {
        run_pipeline(
            load(&path, b),
            RunOptions {
                print: Some(false),
                group_id: Some(format!("{prefix}-group")),
                state_dir: Some(state.to_owned()),
                ..Default::default()
            },
        )
        .unwrap()
    };
    assert_eq!(run(&dir.path().join("state")).total().records_in, 300);
    produce(b, &input, &events(300, 450)).unwrap();
    let second_state = dir
        .path()
        .join(if fresh_state { "fresh-state" } else { "state" });
    assert_eq!(
        run(&second_state).total().records_in,
        150,
        "the second run reads only the new records"
    );

    assert_eq!(
        ids(b, &output, "id"),
        (0..450).collect::<Vec<i64>>(),
        "every record exactly once"
    );
}

/// Window end -> count (the last result of each window).
fn window_counts(brokers: &str, topic: &str) -> BTreeMap<String, i64> {
    window_results(brokers, topic, GroupBy::Nothing)
        .into_iter()
        .map(|((_, end), written)| (end, written.last().unwrap().1["n"].as_i64().unwrap()))
        .collect()
}

/// A graceful stop in the middle of a window, then a restart: from the
/// checkpoint, the open window's state is restored; from the group's offsets
/// (no state), its rows are replayed. Either way its result is whole, and no
/// result is written twice.
#[test]
fn a_window_open_at_stop_is_complete_after_restart() {
    window_across_restart("dw-cp", false);
}

#[test]
fn a_window_open_at_stop_is_complete_after_restart_without_state() {
    window_across_restart("dw-go", true);
}

fn window_across_restart(prefix: &str, fresh_state: bool) {
    let _shared = crate::shared();
    let b = kafka().expect("the test broker").bootstrap().to_owned();
    let input = format!("{prefix}-in");
    let output = format!("{prefix}-out");
    create_topic(&b, &input, 1).unwrap();
    create_topic(&b, &output, 1).unwrap();
    let at = |secs: i64| {
        Record::value(format!(
            r#"{{"ts":{}}}"#,
            1_767_225_600_000i64 + secs * 1000
        ))
    };
    // Window [0, 60 s) gets 3 rows and fires at the row at 61 s; window [60, 120 s)
    // gets 2 rows before the stop and 2 after.
    let produce_each = |records: Vec<Record>| {
        produce(&b, &input, &records).unwrap();
    };
    produce_each(vec![at(1), at(2), at(3), at(61), at(62)]);
    let (dir, path) = pipeline_file(&format!(
        r#"
SET 'checkpoint.interval' = '100ms';
CREATE TABLE tx (ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'kafka',
  'topic' = '{input}', 'format' = 'json', 'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}',
  'scan.startup.mode' = 'group-offsets');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = '{output}', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}');
INSERT INTO out SELECT window_end, count(*) AS n
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end;
"#
    ));
    let start = |state: std::path::PathBuf| {
        Running::start(
            load(&path, &b),
            RunOptions {
                print: Some(false),
                group_id: Some(format!("{prefix}-group")),
                state_dir: Some(state),
                ..Default::default()
            },
        )
    };
    let wait_for_windows =
        |n: usize| read_until(Duration::from_secs(60), n, || window_counts(&b, &output));

    let run = start(dir.path().join("state"));
    let first = wait_for_windows(1);
    assert_eq!(
        first.values().copied().collect::<Vec<_>>(),
        vec![3],
        "{first:?}"
    );
    // Stop while window [60, 120 s) is open: the final commit must not cover its rows.
    run.stop().unwrap();

    produce_each(vec![at(70), at(80), at(130)]);
    let run = start(
        dir.path()
            .join(if fresh_state { "fresh-state" } else { "state" }),
    );
    let counts = wait_for_windows(2);
    run.stop().unwrap();
    assert_eq!(
        read_all(&b, &output, Duration::from_secs(5)).unwrap().len(),
        2,
        "one result per window: nothing repeated after a graceful stop"
    );
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![3, 4],
        "the second window holds the rows from before and after the stop: {counts:?} {:?}",
        read_all(&b, &output, Duration::from_secs(5))
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect::<Vec<_>>()
    );
}

/// `'sink.id-header' = 'false'` leaves the `weir.id` header off a sink's
/// records (the other sink of the same source keeps it), and is refused,
/// with its position, on an exactly-once sink, which needs the header.
#[test]
fn a_sink_can_leave_the_id_header_off() {
    let _shared = crate::shared();
    let b = kafka().expect("the test broker").bootstrap();
    create_topic(b, "ih-in", 3).unwrap();
    produce(b, "ih-in", &events(0, 50)).unwrap();
    let sql = |off_guarantee: &str| {
        format!(
            r#"
CREATE TABLE tx (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'kafka', 'topic' = 'ih-in',
  'format' = 'json', 'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
CREATE TABLE with_id WITH ('connector' = 'kafka', 'topic' = 'ih-with', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}');
CREATE TABLE without_id WITH ('connector' = 'kafka', 'topic' = 'ih-without', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'sink.delivery-guarantee' = '{off_guarantee}',
  'sink.id-header' = 'false');
INSERT INTO with_id SELECT id FROM tx;
INSERT INTO without_id SELECT id FROM tx;
"#
        )
    };
    let (dir, path) = pipeline_file(&sql("exactly-once"));
    let err = format!(
        "{:#}",
        load_pipeline(&path, &env(b)).err().expect("refused")
    );
    assert!(
        err.contains("pipeline.sql:9:22:") && err.contains("'sink.id-header' = 'false' needs"),
        "{err}"
    );

    std::fs::write(&path, sql("at-least-once")).unwrap();
    let stats = run_in_process(&path, dir.path(), b);
    assert_eq!(stats.total().records_in, 50);
    let with = read_all(b, "ih-with", Duration::from_secs(30)).unwrap();
    let without = read_all(b, "ih-without", Duration::from_secs(30)).unwrap();
    assert_eq!((with.len(), without.len()), (50, 50));
    assert!(
        with.iter().all(|r| r.headers.contains_key("weir.id")),
        "the default sink's records carry weir.id"
    );
    assert!(
        without.iter().all(|r| r.headers.is_empty()),
        "the other sink's records carry no header: {:?}",
        without[0].headers
    );
}
