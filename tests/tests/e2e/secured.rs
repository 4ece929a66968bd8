//! Pipelines on secured listeners: TLS, mutual TLS, SASL PLAIN and SCRAM
//! (with and without TLS) and OAUTHBEARER, each set with the tables'
//! `properties.*` alone. Every client weir makes for a table (the
//! reachability check, metadata and topic creation, the source's consumer,
//! the sink's producer) must connect with them. A wrong password or an
//! untrusted certificate fails at start, naming the table, the broker and
//! the broker's reason.

use std::time::{Duration, Instant};

use weir::RunOptions;
use weir_tests::apache_kafka::{Kafka, Listener, kafka};
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::{Running, pipeline_file, unique};

const RECORDS: usize = 50;

/// A table's WITH options reaching the broker through `props` (bootstrap
/// first).
fn with_options(topic: &str, props: &[(String, String)]) -> String {
    let mut out = vec![
        "'connector' = 'kafka'".to_owned(),
        format!("'topic' = '{topic}'"),
        "'format' = 'json'".to_owned(),
    ];
    out.extend(
        props
            .iter()
            .map(|(k, v)| format!("'properties.{k}' = '{v}'")),
    );
    out.join(", ")
}

fn pipeline(input: &str, output: &str, props: &[(String, String)]) -> String {
    format!(
        "CREATE TABLE src (n BIGINT) WITH ({}, 'scan.startup.mode' = 'earliest-offset', \
         'scan.bounded.mode' = 'latest-offset');\n\
         CREATE TABLE out WITH ({});\n\
         INSERT INTO out SELECT n FROM src;\n",
        with_options(input, props),
        with_options(output, props)
    )
}

fn run(sql: &str, group: &str) -> anyhow::Result<weir::RunSummary> {
    let (dir, path) = pipeline_file(sql);
    // No ${KAFKA_BROKERS}: every table names its listener.
    let loaded = weir::load_pipeline(&path, &|_: &str| None::<String>)?;
    let run = Running::start(
        loaded,
        RunOptions {
            print: Some(false),
            group_id: Some(group.to_owned()),
            state_dir: Some(dir.path().join("state")),
            ..Default::default()
        },
    );
    run.wait(Duration::from_secs(90))
        .unwrap_or_else(|| Err(anyhow::anyhow!("the run did not end within 90 s")))
}

fn round_trip(k: &Kafka, listener: Listener) {
    let b = k.bootstrap();
    let name = format!("{listener:?}").to_lowercase();
    let (input, output) = (
        unique(&format!("sec-{name}-in")),
        unique(&format!("sec-{name}-out")),
    );
    create_topic(b, &input, 1).unwrap();
    let records: Vec<Record> = (0..RECORDS)
        .map(|i| Record::value(format!(r#"{{"n":{i}}}"#)))
        .collect();
    produce(b, &input, &records).unwrap();

    let props = k.client_properties(listener);
    let summary = run(&pipeline(&input, &output, &props), &unique(&name))
        .unwrap_or_else(|e| panic!("{listener:?}: {e:#}"));
    assert_eq!(summary.total().records_in, RECORDS as u64, "{listener:?}");
    let mut seen: Vec<i64> = read_all(b, &output, Duration::from_secs(20))
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..RECORDS as i64).collect::<Vec<_>>(),
        "{listener:?}"
    );
}

#[test]
fn a_pipeline_reads_and_writes_on_every_secured_listener() {
    let _shared = crate::shared();
    let k = kafka().expect("the Apache Kafka test broker");
    for listener in [
        Listener::Ssl,
        Listener::Mtls,
        Listener::SaslPlain,
        Listener::SaslScram,
        Listener::SaslSslScram,
        Listener::SaslSslPlain,
        Listener::OauthBearer,
    ] {
        round_trip(k, listener);
    }
}

/// The clients a stateful, exactly-once pipeline adds (the changelog, and
/// the scans of it and of the output at a restart without local state) get
/// the table's credentials too: run twice on SASL SCRAM over TLS, the second
/// time with the state directory gone, the output is whole and written once.
#[test]
fn a_stateful_exactly_once_pipeline_restores_from_its_changelog_on_sasl_ssl() {
    let _shared = crate::shared();
    let k = kafka().expect("the Apache Kafka test broker");
    let b = k.bootstrap();
    let (input, output) = (unique("sec-state-in"), unique("sec-state-out"));
    create_topic(b, &input, 1).unwrap();
    let minute = |m: usize| format!("2026-01-01T00:{m:02}:00Z");
    let first: Vec<Record> = (0..30)
        .map(|i| Record::value(format!(r#"{{"n":{i},"ts":"{}"}}"#, minute(i / 10))))
        .collect();
    produce(b, &input, &first).unwrap();
    let props = k.client_properties(Listener::SaslSslScram);
    let sql = format!(
        "CREATE TABLE src (n BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ({}, \
         'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');\n\
         CREATE TABLE out WITH ({}, 'sink.delivery-guarantee' = 'exactly-once');\n\
         INSERT INTO out SELECT window_end, count(*) AS c FROM TABLE(TUMBLE(TABLE src, \
         DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end;\n",
        with_options(&input, &props),
        with_options(&output, &props)
    );
    let group = unique("sec-state");
    run(&sql, &group).unwrap_or_else(|e| panic!("first run: {e:#}"));
    // More input; a run with no local state restores from the changelog.
    let second: Vec<Record> = (30..50)
        .map(|i| Record::value(format!(r#"{{"n":{i},"ts":"{}"}}"#, minute(i / 10))))
        .collect();
    produce(b, &input, &second).unwrap();
    run(&sql, &group).unwrap_or_else(|e| panic!("second run, from the changelog: {e:#}"));
    let mut counts: Vec<(String, i64)> = read_all(b, &output, Duration::from_secs(20))
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (
                v["window_end"].as_str().unwrap().to_owned(),
                v["c"].as_i64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    // Every window written once, whole: minutes 0-2 by the first run and not
    // again by the second (and 3-4 by the second, unless the first run's
    // end-of-input watermark, restored with the state, makes them late).
    let windows: Vec<&str> = counts.iter().map(|c| c.0.as_str()).collect();
    let mut distinct = windows.clone();
    distinct.dedup();
    assert_eq!(windows, distinct, "a window written twice: {counts:?}");
    assert!(windows.len() >= 3, "{counts:?}");
    assert!(counts.iter().all(|c| c.1 == 10), "{counts:?}");
}

/// Runs a pipeline whose tables connect with `props`, which the broker
/// refuses: it must fail within the reachability check's 10 s, not hang or
/// retry, and say why. Returns the error.
fn refused(props: &[(String, String)]) -> String {
    let b = kafka().unwrap().bootstrap();
    let input = unique("sec-refused-in");
    create_topic(b, &input, 1).unwrap();
    let started = Instant::now();
    let err = match run(
        &pipeline(&input, &unique("sec-refused-out"), props),
        &unique("sec-refused"),
    ) {
        Ok(_) => panic!("a refused connection ran"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: {err}",
        started.elapsed()
    );
    assert!(err.contains("table src"), "names the table: {err}");
    err
}

#[test]
fn a_wrong_password_fails_at_start_with_the_brokers_reason() {
    let _shared = crate::shared();
    let k = kafka().unwrap();
    let mut props = k.client_properties(Listener::SaslScram);
    for (key, value) in &mut props {
        if key == "sasl.password" {
            *value = "not-the-password".into();
        }
    }
    let address = props[0].1.clone();
    let err = refused(&props);
    assert!(err.contains(&address), "names the broker: {err}");
    assert!(
        err.to_lowercase().contains("authentication"),
        "gives the reason: {err}"
    );
    assert!(!err.contains("not-the-password"), "shows no secret: {err}");
}

#[test]
fn an_untrusted_certificate_fails_at_start_with_the_reason() {
    let _shared = crate::shared();
    let k = kafka().unwrap();
    let other_ca = k.file("OTHER_CA").display().to_string();
    let props: Vec<(String, String)> = k
        .client_properties(Listener::Ssl)
        .into_iter()
        .map(|(key, value)| {
            if key == "ssl.ca.location" {
                (key, other_ca.clone())
            } else {
                (key, value)
            }
        })
        .collect();
    let err = refused(&props);
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL"),
        "gives the reason: {err}"
    );
}
