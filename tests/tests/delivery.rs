//! At-least-once delivery: offsets are committed only after output is
//! acknowledged, so a second run of the same pipeline from its group's
//! offsets neither repeats nor skips input.

use std::time::Duration;

use weir::{RunOptions, load_pipeline, run_pipeline};
use weir_tests::{Record, Tansu, create_topic, produce, read_all};

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
fn a_second_run_resumes_from_committed_offsets() {
    let broker = Tansu::start().unwrap();
    let b = &broker.brokers;
    create_topic(b, "dv-in", 3).unwrap();
    produce(b, "dv-in", &events(0, 300)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sql");
    std::fs::write(
        &path,
        format!(
            r#"
SET 'checkpoint.interval' = '100ms';
CREATE TABLE tx (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'kafka', 'topic' = 'dv-in',
  'format' = 'json', 'properties.bootstrap.servers' = '{b}',
  'scan.startup.mode' = 'group-offsets', 'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'dv-out', 'format' = 'json',
  'properties.bootstrap.servers' = '{b}');
INSERT INTO out SELECT id, id * 2 AS twice FROM tx;
"#
        ),
    )
    .unwrap();
    let run = || {
        run_pipeline(
            load_pipeline(&path, &|_| None).unwrap(),
            RunOptions {
                print: Some(false),
                group_id: Some("dv-group".into()),
                ..Default::default()
            },
        )
        .unwrap()
    };
    assert_eq!(run().total().records_in, 300);
    produce(b, "dv-in", &events(300, 450)).unwrap();
    assert_eq!(
        run().total().records_in,
        150,
        "the second run reads only the new records"
    );

    let out = read_all(b, "dv-out", Duration::from_secs(20)).unwrap();
    let mut ids: Vec<i64> = out
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..450).collect::<Vec<i64>>(),
        "every record exactly once"
    );
}
