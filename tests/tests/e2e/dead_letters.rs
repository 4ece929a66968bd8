//! Bad and late records against a real broker: what reaches the dead-letter
//! topic, with which headers, and that nothing else in the batch is lost.

use std::time::Duration;

use weir_tests::apache_kafka::kafka;
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::output::read_json;
use weir_tests::{pipeline_file, run_in_process};

#[test]
fn bad_records_reach_the_dead_letter_topic_with_their_origin() {
    let _shared = crate::shared();
    let b = kafka().expect("the test broker").bootstrap();
    create_topic(b, "dl-in", 1).unwrap();
    let good = |card: &str, ts: &str| Record {
        key: Some(card.as_bytes().to_vec()),
        ..Record::value(format!(
            r#"{{"card_id":"{card}","amount":1.5,"ts":"{ts}"}}"#
        ))
    };
    let records = vec![
        good("a", "2026-01-01T00:00:01Z"),
        Record {
            key: Some(b"bad-key".to_vec()),
            ..Record::value(&b"{not json"[..])
        },
        good("b", "2026-01-01T00:00:02Z"),
        Record::value(&br#"{"card_id":"c","amount":"lots","ts":"2026-01-01T00:00:03Z"}"#[..]),
        // Moves the watermark (no delay) to 00:02:00: window [00:00, 00:01) fires.
        good("a", "2026-01-01T00:02:00Z"),
        // So this row, whose only window has fired, is late.
        good("late", "2026-01-01T00:00:30Z"),
    ];
    produce(b, "dl-in", &records).unwrap();

    let (dir, path) = pipeline_file(
        r#"
CREATE TABLE tx (card_id TEXT, amount DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
WITH ('connector' = 'kafka', 'topic' = 'dl-in', 'format' = 'json',
      'properties.bootstrap.servers' = '${KAFKA_BROKERS}', 'scan.startup.mode' = 'earliest-offset',
      'scan.bounded.mode' = 'latest-offset', 'dead-letter.topic' = 'dl-dlq');
CREATE TABLE rows_out WITH ('connector' = 'kafka', 'topic' = 'dl-rows', 'format' = 'json',
      'properties.bootstrap.servers' = '${KAFKA_BROKERS}');
CREATE TABLE totals WITH ('connector' = 'kafka', 'topic' = 'dl-totals', 'format' = 'json',
      'properties.bootstrap.servers' = '${KAFKA_BROKERS}');
INSERT INTO rows_out SELECT card_id FROM tx;
INSERT INTO totals SELECT card_id, window_end, count(*) AS n
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY card_id, window_start, window_end;
"#,
    );
    let summary = run_in_process(&path, dir.path(), b);
    let total = summary.total();
    assert_eq!(total.records_in, 6);
    assert_eq!(total.dead_lettered, 2);

    let dlq = read_all(b, "dl-dlq", Duration::from_secs(20)).unwrap();
    let not_json = dlq
        .iter()
        .find(|r| r.value == b"{not json")
        .expect("the malformed record");
    assert_eq!(
        not_json.key.as_deref(),
        Some(&b"bad-key"[..]),
        "the original key is kept"
    );
    assert_eq!(not_json.headers["weir.source.topic"], "dl-in");
    assert_eq!(not_json.headers["weir.source.partition"], "0");
    assert_eq!(not_json.headers["weir.source.offset"], "1");
    assert!(!not_json.headers["weir.error"].is_empty());
    let wrong_type = dlq
        .iter()
        .find(|r| r.value.starts_with(br#"{"card_id":"c""#))
        .expect("the wrongly typed record");
    assert_eq!(wrong_type.headers["weir.source.offset"], "3");
    assert!(
        wrong_type.headers["weir.error"].contains("lots"),
        "{:?}",
        wrong_type.headers
    );

    // Every good record reached the stateless sink.
    let mut cards: Vec<String> = read_json(b, "dl-rows")
        .iter()
        .map(|v| v["card_id"].as_str().unwrap().to_string())
        .collect();
    cards.sort();
    assert_eq!(
        cards,
        ["a", "a", "b", "late"],
        "late rows only matter to windows"
    );

    // The late row is counted and dead-lettered as JSON, never in a window.
    assert_eq!(total.late, 1);
    let late: Vec<_> = dlq
        .iter()
        .filter(|r| r.headers["weir.error"].starts_with("late"))
        .collect();
    assert_eq!(late.len(), 1);
    let row: serde_json::Value = serde_json::from_slice(&late[0].value).unwrap();
    assert_eq!(row["card_id"], "late");
    let totals = read_json(b, "dl-totals");
    assert!(!totals.is_empty(), "the windows of a and b fired");
    for v in totals {
        assert_ne!(v["card_id"], "late", "a late row was aggregated: {v}");
    }
}
