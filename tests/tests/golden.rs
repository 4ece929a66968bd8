//! Golden cases: every directory under tests/golden/cases is a pipeline, its
//! input and its expected output (see tests/golden/README.md). This runner
//! walks them all against one real broker (tansu) and reports every failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use weir::{RunOptions, load_pipeline, run_pipeline};
use weir_tests::{Record, Tansu, create_topic, produce, read_all, workspace_root};

fn cases_dir() -> PathBuf {
    workspace_root().join("tests/golden/cases")
}

#[test]
fn golden_cases() {
    let broker = Tansu::start().expect("start the test broker");
    let filter = std::env::var("GOLDEN").ok();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/golden/cases exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            filter
                .as_ref()
                .is_none_or(|f| p.to_string_lossy().contains(f.as_str()))
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        match run_case(case, &broker.brokers) {
            Ok(()) => eprintln!("golden {name}: ok"),
            Err(e) => {
                eprintln!("golden {name}: FAILED: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    eprintln!(
        "golden: {} passed, {} failed",
        cases.len() - failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "golden cases failed:\n{}",
        failures.join("\n")
    );
}

fn run_case(case: &Path, brokers: &str) -> anyhow::Result<()> {
    let pipeline = case.join("pipeline.sql");
    let brokers_owned = brokers.to_string();
    let env = move |name: &str| (name == "KAFKA_BROKERS").then(|| brokers_owned.clone());
    let error_file = case.join("expected/error.txt");
    if error_file.exists() {
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

    produce_inputs(case, brokers)?;
    let loaded = load_pipeline(&pipeline, &env)?;
    let stop = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !stop.load(Ordering::Relaxed) {
                timed_out.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let case_name = case.file_name().unwrap().to_string_lossy().to_string();
    let state = tempfile::tempdir()?;
    let summary = run_pipeline(
        loaded,
        RunOptions {
            stop: stop.clone(),
            print: Some(false),
            group_id: Some(format!("golden-{case_name}")),
            state_dir: Some(state.path().to_owned()),
        },
    )?;
    stop.store(true, Ordering::Relaxed);
    if timed_out.load(Ordering::Relaxed) {
        bail!("the bounded pipeline did not finish within 60 s");
    }

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
        match unmatched.iter().position(|a| json_eq(e, a, tol)) {
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

fn timestamp_ms(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

fn json_eq(a: &Value, b: &Value, tol: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y
                || (x - y).abs() <= tol * x.abs().max(y.abs()).max(1e-300)
                || (x - y).abs() <= tol
        }
        (Value::String(x), Value::String(y)) => {
            x == y || matches!((timestamp_ms(x), timestamp_ms(y)), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q, tol))
        }
        (Value::Object(x), Value::Object(y)) => {
            let null = Value::Null;
            x.keys()
                .chain(y.keys())
                .all(|k| json_eq(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), tol))
        }
        (x, y) => x == y,
    }
}
