//! Input in every codec a producer may choose: a source reads gzip, snappy,
//! lz4 and zstd record batches from Apache Kafka alike (a librdkafka built
//! without zstd never moves past a zstd batch).

use std::time::Duration;

use weir::RunOptions;
use weir_tests::apache_kafka::kafka;
use weir_tests::kafka::{Record, create_topic, produce_with, read_all};
use weir_tests::{Running, load, pipeline_file};

const RECORDS: usize = 200;

#[test]
fn a_source_reads_every_compression_codec() {
    let _shared = crate::shared();
    let b = kafka().expect("the Apache Kafka test broker").bootstrap();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let input = format!("codec-{codec}-in");
        let output = format!("codec-{codec}-out");
        create_topic(b, &input, 1).unwrap();
        let records: Vec<Record> = (0..RECORDS)
            .map(|i| Record::value(format!(r#"{{"n":{i},"codec":"{codec}"}}"#)))
            .collect();
        produce_with(
            b,
            &input,
            &records,
            &[("compression.type", codec), ("linger.ms", "20")],
        )
        .unwrap_or_else(|e| panic!("producing {codec} records: {e:#}"));

        let (dir, path) = pipeline_file(&format!(
            r#"
CREATE TABLE src (n BIGINT, codec TEXT)
WITH ('connector' = 'kafka', 'topic' = '{input}', 'format' = 'json',
      'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'scan.startup.mode' = 'earliest-offset',
      'scan.bounded.mode' = 'latest-offset');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = '{output}', 'format' = 'json',
      'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}');
INSERT INTO out SELECT n, codec FROM src;
"#
        ));
        let run = Running::start(
            load(&path, b),
            RunOptions {
                print: Some(false),
                group_id: Some(format!("codec-{codec}")),
                state_dir: Some(dir.path().join("state")),
                ..Default::default()
            },
        );
        let summary = run
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the {codec} input was not read to its end in 60 s"))
            .unwrap_or_else(|e| panic!("the {codec} run failed: {e:#}"));
        assert_eq!(summary.total().records_in, RECORDS as u64, "{codec}");

        let mut seen: Vec<i64> = read_all(b, &output, Duration::from_secs(20))
            .unwrap()
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                assert_eq!(v["codec"], codec);
                v["n"].as_i64().unwrap()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..RECORDS as i64).collect::<Vec<_>>(), "{codec}");
    }
}
