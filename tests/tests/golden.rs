//! Golden cases: every directory under tests/golden/cases is a pipeline, its
//! input and its expected output (see tests/golden/README.md). Each case is
//! one test named by its directory (`cargo test --release -p weir-tests
//! --test golden 19-` runs the cases whose name contains "19-"), run in
//! parallel against the test run's Apache Kafka broker
//! ([`weir_tests::apache_kafka`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use libtest_mimic::{Arguments, Trial};
use serde_json::Value;
use weir::{RunOptions, load_pipeline};
use weir_tests::apache_kafka;
use weir_tests::compare::golden_eq;
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::{Running, workspace_root};

/// How long a case's bounded pipeline may run.
const CASE_DEADLINE: Duration = Duration::from_secs(60);

fn cases_dir() -> PathBuf {
    workspace_root().join("tests/golden/cases")
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/golden/cases exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let trials = cases
        .into_iter()
        .map(|case| {
            let name = case.file_name().unwrap().to_string_lossy().to_string();
            Trial::test(name, move || {
                run_case(&case).map_err(|e| format!("{e:#}").into())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn run_case(case: &Path) -> anyhow::Result<()> {
    let pipeline = case.join("pipeline.sql");
    let error_file = case.join("expected/error.txt");
    if error_file.exists() {
        // Planning needs no broker: any address does.
        let env = weir_tests::env("localhost:1");
        let expected = std::fs::read_to_string(&error_file)?;
        let err = match load_pipeline(&pipeline, &env) {
            Ok(_) => bail!("planning succeeded, but the case expects an error"),
            Err(e) => format!("{e:#}"),
        };
        // The location is matched as written; other words case-insensitively in
        // the message after it (so "3" does not match a line number).
        let message = err
            .split_once(".sql:")
            .map(|(_, rest)| rest)
            .unwrap_or(&err);
        let message = message
            .splitn(3, ':')
            .nth(2)
            .unwrap_or(message)
            .to_lowercase();
        for line in expected.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let found = if line.contains(".sql:") {
                err.contains(line)
            } else {
                message.contains(&line.to_lowercase())
            };
            if !found {
                bail!("error does not contain {line:?}:\n{err}");
            }
        }
        return Ok(());
    }

    let brokers = apache_kafka::kafka()?.bootstrap();
    let env = weir_tests::env(brokers);
    produce_inputs(case, brokers)?;
    let loaded = load_pipeline(&pipeline, &env)?;
    let case_name = case.file_name().unwrap().to_string_lossy().to_string();
    let state = tempfile::tempdir()?;
    let run = Running::start(
        loaded,
        RunOptions {
            print: Some(false),
            group_id: Some(format!("golden-{case_name}")),
            state_dir: Some(state.path().to_owned()),
            ..Default::default()
        },
    );
    // The bounded pipeline ends by itself; past the deadline it is stopped.
    let Some(summary) = run.wait(CASE_DEADLINE) else {
        bail!(
            "the bounded pipeline did not finish within {} s",
            CASE_DEADLINE.as_secs()
        );
    };
    let summary = summary?;

    let mut tolerance = 1e-9;
    let counts = case.join("expected/counts.json");
    if counts.exists() {
        let c: Value = serde_json::from_str(&std::fs::read_to_string(&counts)?)?;
        if let Some(t) = c.get("tolerance").and_then(Value::as_f64) {
            tolerance = t;
        }
        let total = summary.total();
        if let Some(n) = c.get("dead_lettered").and_then(Value::as_u64)
            && n != total.dead_lettered
        {
            bail!(
                "dead_lettered: expected {n}, weir counted {}",
                total.dead_lettered
            );
        }
        if let Some(n) = c.get("late").and_then(Value::as_u64)
            && n != total.late
        {
            bail!("late: expected {n}, weir counted {}", total.late);
        }
    }

    let mut checked = 0;
    for entry in std::fs::read_dir(case.join("expected"))? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let (topic, with_keys) = if let Some(t) = file.strip_suffix(".messages.jsonl") {
            (t.to_string(), true)
        } else if let Some(t) = file.strip_suffix(".jsonl") {
            (t.to_string(), false)
        } else {
            continue;
        };
        let expected: Vec<Value> = std::fs::read_to_string(&path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v = parse_or_raw(l.as_bytes());
                let mut v = if with_keys {
                    v
                } else {
                    serde_json::json!({ "value": v })
                };
                // A record without a `weir.change` header is an insert.
                if v.get("change").is_none() {
                    v["change"] = Value::from("insert");
                }
                v
            })
            .collect();
        let actual: Vec<Value> = read_all(brokers, &topic, Duration::from_secs(20))?
            .into_iter()
            .map(|r| {
                let v = parse_or_raw(&r.value);
                let change = r
                    .headers
                    .get("weir.change")
                    .cloned()
                    .unwrap_or_else(|| "insert".into());
                if with_keys {
                    let key = r
                        .key
                        .map(|k| Value::String(String::from_utf8_lossy(&k).into_owned()));
                    serde_json::json!({ "key": key, "value": v, "change": change })
                } else {
                    serde_json::json!({ "value": v, "change": change })
                }
            })
            .collect();
        compare_multisets(&topic, &expected, &actual, tolerance)?;
        checked += 1;
    }
    if checked == 0 && !counts.exists() {
        bail!("the case checks nothing: add expected/<topic>.jsonl");
    }
    Ok(())
}

fn produce_inputs(case: &Path, brokers: &str) -> anyhow::Result<()> {
    let dir = case.join("input");
    if !dir.exists() {
        return Ok(());
    }
    let mut by_topic: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path)?;
        if let Some(topic) = file.strip_suffix(".messages.jsonl") {
            let records = by_topic.entry(topic.to_string()).or_default();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let m: Value =
                    serde_json::from_str(line).with_context(|| format!("{file}:{}", i + 1))?;
                let value = match &m["value"] {
                    Value::String(s) => s.as_bytes().to_vec(),
                    Value::Null => Vec::new(),
                    v => serde_json::to_vec(v)?,
                };
                records.push(Record {
                    tombstone: m["value"].is_null(),
                    key: m
                        .get("key")
                        .and_then(Value::as_str)
                        .map(|k| k.as_bytes().to_vec()),
                    value,
                    partition: Some(m.get("partition").and_then(Value::as_i64).unwrap_or(0) as i32),
                    timestamp: m.get("timestamp").and_then(Value::as_i64),
                });
            }
        } else if let Some(topic) = file.strip_suffix(".jsonl") {
            let records = by_topic.entry(topic.to_string()).or_default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                records.push(Record {
                    partition: Some(0),
                    ..Record::value(line.as_bytes())
                });
            }
        }
    }
    for (topic, records) in by_topic {
        let partitions = records
            .iter()
            .filter_map(|r| r.partition)
            .max()
            .unwrap_or(0)
            + 1;
        create_topic(brokers, &topic, partitions)?;
        produce(brokers, &topic, &records)?;
    }
    Ok(())
}

fn parse_or_raw(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(format!("raw:{}", String::from_utf8_lossy(bytes))))
}

fn compare_multisets(
    topic: &str,
    expected: &[Value],
    actual: &[Value],
    tol: f64,
) -> anyhow::Result<()> {
    let mut unmatched: Vec<&Value> = actual.iter().collect();
    let mut missing = Vec::new();
    for e in expected {
        match unmatched.iter().position(|a| golden_eq(e, a, tol)) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => missing.push(e),
        }
    }
    if missing.is_empty() && unmatched.is_empty() {
        return Ok(());
    }
    let show = |vs: &[&Value]| {
        vs.iter()
            .map(|v| format!("    {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    bail!(
        "topic {topic}: {} expected records missing, {} unexpected\n  missing:\n{}\n  unexpected:\n{}",
        missing.len(),
        unmatched.len(),
        show(&missing),
        show(&unmatched)
    )
}
