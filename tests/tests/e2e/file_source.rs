//! The filesystem source against the test broker: a directory of JSON-lines files gives
//! the window results the same records give from a one-partition topic, its
//! malformed line is dead-lettered naming the file and line, and a run killed
//! at a checkpoint step resumes at the right line with exactly-once output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir::generate::{FraudGenerator, fmt_ts};
use weir_tests::apache_kafka::kafka;
use weir_tests::child::wait_with_deadline;
use weir_tests::compare::close;
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::output::{GroupBy, WindowResults, window_results};
use weir_tests::process::spawn_weir_run;
use weir_tests::write_sql;

const EVENTS: usize = 30_000;

/// The input lines: transactions, one malformed line and one late row.
/// Returns the lines and the index of the malformed one.
fn lines() -> (Vec<String>, usize) {
    let mut g = FraudGenerator::new(7, 400, 1_767_225_600_000, 20);
    let mut out = Vec::with_capacity(EVENTS + 2);
    let mut bad = 0;
    for i in 0..EVENTS {
        let e = g.next_event();
        out.push(e.to_json());
        if i == 4_000 {
            bad = out.len();
            out.push(r#"{"card_id": "card-000001", "amount": "#.to_string());
        }
        if i == 20_000 {
            // 15 minutes behind: every window it belongs to has fired.
            out.push(format!(
                r#"{{"card_id": "card-000002", "merchant": "m-0001", "amount": 1.0, "ts": "{}"}}"#,
                fmt_ts(e.ts_ms - 15 * 60_000)
            ));
        }
    }
    (out, bad)
}

fn sql(dir: &Path, source: &str) -> PathBuf {
    let text = format!(
        r#"
SET 'checkpoint.interval' = '100ms';
SET 'execution.batch-size' = '500';
CREATE TABLE transactions (
  card_id TEXT, merchant TEXT, amount DOUBLE, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ({source}, 'format' = 'json', 'dead-letter.topic' = '${{OUT}}-dlq');
CREATE TABLE features WITH ('connector' = 'kafka', 'topic' = '${{OUT}}', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'key.fields' = 'card_id',
  'sink.delivery-guarantee' = 'exactly-once');
INSERT INTO features
SELECT card_id, window_start, window_end, count(*) AS n, avg(amount) AS avg_amount,
       max(amount) AS max_amount, stddev_pop(amount) AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;
"#
    );
    write_sql(dir, &format!("p{}.sql", source.len()), &text)
}

/// Runs `weir run` to its end (or to its injected fault); returns whether it
/// finished and its log.
fn run(sql: &Path, brokers: &str, out: &str, state: &Path, fault: Option<&str>) -> (bool, String) {
    let log = state.with_extension("log");
    let mut child = spawn_weir_run(sql, brokers, out, state, fault, &log);
    let Some(status) = wait_with_deadline(&mut child, Duration::from_secs(300)) else {
        child.kill().unwrap();
        panic!("weir did not finish within 300 s; see {}", log.display());
    };
    (status.success(), std::fs::read_to_string(&log).unwrap())
}

fn assert_same(what: &str, got: &WindowResults, want: &WindowResults) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} windows, expected {}",
        got.len(),
        want.len()
    );
    for (id, expected) in want {
        let Some(rows) = got.get(id) else {
            panic!("{what}: no result for {id:?}");
        };
        assert_eq!(rows.len(), 1, "{what}: {id:?} written {} times", rows.len());
        for (k, v) in expected[0].1.as_object().unwrap() {
            assert!(
                close(&rows[0].1[k], v),
                "{what}: {id:?} {k} = {} (expected {v})",
                rows[0].1[k]
            );
        }
    }
}

#[test]
fn a_directory_of_files_reads_as_the_same_records_in_a_topic_do() {
    let _alone = crate::exclusive();
    let brokers = kafka().expect("the test broker").bootstrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let (lines, bad) = lines();

    // The files: two parts (blank lines between some records, CRLF in the
    // second), and a marker file the source must skip.
    let input = tmp.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let half = lines.len() / 2;
    let first: String = lines[..half].iter().map(|l| format!("{l}\n")).collect();
    let second: String = lines[half..]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i % 1000 == 0 {
                format!("\r\n{l}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    std::fs::write(input.join("part-0.jsonl"), first).unwrap();
    std::fs::write(input.join("part-1.jsonl"), second).unwrap();
    std::fs::write(input.join("_SUCCESS"), "not json\n").unwrap();

    // The same records, in the same order, in a one-partition topic.
    create_topic(&brokers, "fs-in", 1).unwrap();
    let records: Vec<Record> = lines.iter().map(|l| Record::value(l.clone())).collect();
    produce(&brokers, "fs-in", &records).unwrap();

    let from_topic = sql(
        tmp.path(),
        "'connector' = 'kafka', 'topic' = 'fs-in', 'properties.bootstrap.servers' = '${KAFKA_BROKERS}', \
         'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset'",
    );
    let (ok, log) = run(
        &from_topic,
        &brokers,
        "fs-topic",
        &tmp.path().join("s-topic"),
        None,
    );
    assert!(ok, "the topic run failed:\n{log}");
    let from_files = sql(tmp.path(), "'connector' = 'filesystem', 'path' = 'input'");
    let (ok, log) = run(
        &from_files,
        &brokers,
        "fs-files",
        &tmp.path().join("s-files"),
        None,
    );
    assert!(ok, "the file run failed:\n{log}");
    assert!(
        log.contains("reading 2 file(s) under 'input'"),
        "the marker file is skipped:\n{log}"
    );

    let want = window_results(&brokers, "fs-topic", GroupBy::Column("card_id"));
    assert!(want.len() > 10_000, "only {} windows", want.len());
    let got = window_results(&brokers, "fs-files", GroupBy::Column("card_id"));
    assert_same("files", &got, &want);

    // The malformed line, once, by file and line; the late row goes there too.
    let dlq = read_all(&brokers, "fs-files-dlq", Duration::from_secs(30)).unwrap();
    let malformed: Vec<_> = dlq
        .iter()
        .filter(|r| {
            r.headers
                .get("weir.error")
                .is_some_and(|e| !e.contains("late"))
        })
        .collect();
    assert_eq!(malformed.len(), 1, "{dlq:?}");
    let h = &malformed[0].headers;
    assert_eq!(
        h.get("weir.source.file").map(String::as_str),
        Some(input.join("part-0.jsonl").to_str().unwrap())
    );
    assert_eq!(h.get("weir.source.line"), Some(&(bad + 1).to_string()));
    assert_eq!(dlq.len(), 2, "the malformed line and the late row: {dlq:?}");

    // Killed at checkpoint steps, restarted on the same state: the output is
    // the uninterrupted run's, each window once.
    let state = tmp.path().join("s-crash");
    let mut crashes = 0;
    // Every fault falls inside its run, however fast the machine: 60 batches
    // in all (the first two), and every run reaches each checkpoint step at
    // least once (at its last checkpoint, at the end of the files, if not at
    // an interval before). A second hit of a checkpoint step was not reached
    // when the rest of the input took less than one checkpoint interval.
    for fault in [
        "after-batch:8",
        "after-batch:12",
        "after-sink-flush:1",
        "after-checkpoint:1",
    ] {
        let (ok, log) = run(&from_files, &brokers, "fs-crash", &state, Some(fault));
        if ok {
            break;
        }
        assert!(
            log.contains("restored checkpoint") || crashes == 0,
            "a restart restores its checkpoint:\n{log}"
        );
        crashes += 1;
    }
    assert_eq!(crashes, 4, "every fault crashed its run");
    let (ok, log) = run(&from_files, &brokers, "fs-crash", &state, None);
    assert!(ok, "the last run failed:\n{log}");
    assert!(
        log.contains(", from "),
        "a restart resumes inside the files:\n{log}"
    );
    let got = window_results(&brokers, "fs-crash", GroupBy::Column("card_id"));
    assert_same("after crashes", &got, &want);
    let dlq = read_all(&brokers, "fs-crash-dlq", Duration::from_secs(30)).unwrap();
    let by_line: BTreeMap<_, usize> = dlq.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers.get("weir.source.line").cloned())
            .or_default() += 1;
        m
    });
    assert!(
        by_line.values().all(|n| *n == 1),
        "dead letters repeated: {by_line:?}"
    );
}

#[test]
fn a_missing_path_fails_at_plan_time_with_its_place() {
    let _shared = crate::shared();
    let tmp = tempfile::tempdir().unwrap();
    let path = sql(
        tmp.path(),
        "'connector' = 'filesystem', 'path' = 'nowhere/*.jsonl'",
    );
    let err = weir::load_pipeline(&path, &|_| Some("localhost:1".to_string()))
        .err()
        .expect("planning fails")
        .to_string();
    assert!(
        err.contains("p54.sql:7:46:"),
        "file, line and column: {err}"
    );
    assert!(
        err.contains("cannot read") && err.contains("nowhere"),
        "{err}"
    );

    std::fs::write(tmp.path().join("in.jsonl"), "{}\n").unwrap();
    let path = sql(
        tmp.path(),
        "'connector' = 'filesystem', 'path' = 'in.jsonl', 'topic' = 'x'",
    );
    let err = format!(
        "{:#}",
        weir::load_pipeline(&path, &|_| Some("b:1".into()))
            .err()
            .unwrap()
    );
    assert!(err.contains("'topic' is for Kafka tables"), "{err}");

    // Files are read, never written.
    let text = "CREATE TABLE a (x TEXT) WITH ('connector' = 'filesystem', 'path' = 'in.jsonl', 'format' = 'json');\n\
         CREATE TABLE b (x TEXT) WITH ('connector' = 'filesystem', 'path' = 'in.jsonl', 'format' = 'json');\n\
         INSERT INTO b SELECT x FROM a;\n";
    let path = tmp.path().join("write.sql");
    std::fs::write(&path, text).unwrap();
    let err = format!("{:#}", weir::load_pipeline(&path, &|_| None).err().unwrap());
    assert!(
        err.contains("write.sql:3:13:") && err.contains("does not write"),
        "{err}"
    );
}
