//! The `weir` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// Child-process helpers shared with the end-to-end tests (standard library
// only, so this crate needs no dependency on weir-tests).
#[path = "../../tests/src/child.rs"]
mod child;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(root()).env_remove("KAFKA_BROKERS");
    c
}

/// The README's example command: the fraud pipeline on the embedded broker
/// prints predictions, and Ctrl-C (SIGINT) stops it cleanly with exit 0.
#[test]
fn fraud_example_prints_predictions_on_the_embedded_broker() {
    let mut child = weir()
        .args(["run", "examples/fraud/pipeline.sql"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("weir starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut prediction = None;
    while Instant::now() < deadline && prediction.is_none() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && line.starts_with("transaction-scores ")
        {
            prediction = Some(line);
        }
    }
    // SIGINT, as Ctrl-C sends.
    child::signal(child.id(), "INT").expect("kill -INT");
    let status = wait_with_deadline(&mut child, Duration::from_secs(60));
    let line = prediction.expect("a prediction within 120 s");
    let json = line.split_once("] ").expect("topic [key] value").1;
    let v: serde_json::Value = serde_json::from_str(json).expect("the prediction is JSON");
    let p = v["p_fraud"].as_f64().expect("p_fraud is a number");
    assert!((0.0..=1.0).contains(&p), "{line}");
    // The merchant-risk table (written by the embedded generator) was joined.
    let risk = v["risk"].as_f64().expect("the merchant's risk was joined");
    assert!((0.0..1.0).contains(&risk), "{line}");
    assert!(
        v["card_id"].as_str().unwrap().starts_with("card-"),
        "{line}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "weir exits 0 after Ctrl-C"
    );
}

/// Waits for `child` up to `timeout`; kills it and gives `None` past that.
fn wait_with_deadline(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let status = child::wait_with_deadline(child, timeout);
    if status.is_none() {
        let _ = child.kill();
    }
    status
}

/// `weir explain FILE`'s output; it must succeed.
fn explain(file: &str) -> String {
    let out = weir().args(["explain", file]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn explain_prints_the_window_example() {
    let text = explain("examples/fraud/windows.sql");
    for needle in [
        "source transactions",
        "window aggregate HOP(slide 1min, size 10min)",
        "predict with model fraud",
        "sink card_scores",
        "model fraud",
    ] {
        assert!(text.contains(needle), "explain lacks {needle:?}:\n{text}");
    }
}

#[test]
fn explain_prints_the_per_event_example() {
    let text = explain("examples/fraud/pipeline.sql");
    for needle in [
        "over partition by [t.card_id] order by ts",
        "Count(DISTINCT t.merchant) over range 10min",
        "left join table merchant_risk on f.merchant = its key, the version as of ts",
        "predict with model fraud",
        "sink transaction_scores",
    ] {
        assert!(text.contains(needle), "explain lacks {needle:?}:\n{text}");
    }
}

#[test]
fn bad_sql_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.sql");
    std::fs::write(
        &file,
        "CREATE TABLE t (a TEXT) WITH ('connector' = 'kafka', 'topic' = 't', 'format' = 'json',\n  'properties.bootstrap.servers' = 'x', 'scan.startup.mod' = 'earliest-offset');\nINSERT INTO t SELECT a FROM t;\n",
    )
    .unwrap();
    let out = weir()
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.sql:2:41: unknown table option 'scan.startup.mod'"),
        "{err}"
    );
    assert!(err.contains("did you mean 'scan.startup.mode'"), "{err}");
}

/// A sink table's `properties.*` configure weir's producer: a value
/// librdkafka refuses is reported before any data moves.
#[test]
fn a_sink_property_reaches_the_producer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.sql");
    std::fs::write(
        &file,
        "CREATE TABLE t (a TEXT) WITH ('connector' = 'kafka', 'topic' = 't', 'format' = 'json', 'properties.bootstrap.servers' = 'embedded');\nCREATE TABLE o WITH ('connector' = 'kafka', 'topic' = 'o', 'format' = 'json', 'properties.bootstrap.servers' = 'embedded', 'properties.linger.ms' = 'soon');\nINSERT INTO o SELECT a FROM t;\n",
    )
    .unwrap();
    // Ignored, the property would leave the pipeline running: a deadline.
    let mut child = weir()
        .args(["run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(
        err.contains("linger.ms") && err.contains("soon"),
        "the producer refuses the sink's property: {err}"
    );
}

#[test]
fn an_unreachable_broker_is_reported_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.sql");
    std::fs::write(
        &file,
        "CREATE TABLE t (a TEXT) WITH ('connector' = 'kafka', 'topic' = 't', 'format' = 'json', 'properties.bootstrap.servers' = '127.0.0.1:1');\nCREATE TABLE o WITH ('connector' = 'kafka', 'topic' = 'o', 'format' = 'json', 'properties.bootstrap.servers' = '127.0.0.1:1');\nINSERT INTO o SELECT a FROM t;\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = weir()
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach Kafka at '127.0.0.1:1'"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn generate_writes_json_lines() {
    let out = weir()
        .args(["generate", "fraud", "--events", "100"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 100);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["amount"].as_f64().unwrap() > 0.0);
    }
}

/// Secured clusters and every codec need librdkafka built with them: TLS,
/// SASL (PLAIN, SCRAM, GSSAPI, OAUTHBEARER with OIDC) and zstd, lz4, snappy
/// and gzip. `--version` shows what this build has.
#[test]
fn version_names_librdkafka_and_its_security_and_codec_features() {
    let out = weir().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("librdkafka 2."), "{text}");
    let features: Vec<&str> = text
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(", ").collect())
        .unwrap_or_default();
    for needed in [
        "ssl",
        "sasl",
        "sasl_plain",
        "sasl_scram",
        "sasl_gssapi",
        "sasl_oauthbearer",
        "oidc",
        "gzip",
        "snappy",
        "lz4",
        "zstd",
    ] {
        assert!(features.contains(&needed), "no {needed} in {text}");
    }
}
