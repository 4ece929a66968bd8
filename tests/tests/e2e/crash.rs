//! Crash recovery under fault injection, against the test broker over TCP.
//!
//! A bounded pipeline (HOP window features + predict and a per-event flow,
//! both exactly-once; a per-event at-least-once flow; a dead-letter topic)
//! runs over 100k+ transactions with malformed and late records mixed in. The
//! harness kills the `weir` process again and again (SIGKILL after a
//! seed-chosen delay, or an injected abort at a seed-chosen checkpoint step:
//! `WEIR_FAULT`), restarting it each time, until a run finishes. Then every
//! exactly-once topic must hold exactly the records an uninterrupted run
//! wrote, as a multiset of (key, value), and the at-least-once topic all of
//! them plus only byte-identical repeats; window
//! results are matched by (card, window) and their floating-point aggregates
//! to 1e-9 relative, because where a checkpoint splits a pane's accumulation
//! (DOUBLE addition is not associative) differs from run to run.
//!
//! Before some restarts the harness also deletes the state directory: that
//! run rebuilds its state from the changelog topic.
//!
//! How much input a killed run gets through depends on the machine's speed,
//! so the crashes come in rounds: a round is a job of its own over the same
//! input, and another starts when one finished before enough crashes (each
//! round's output is checked).
//!
//! The seed is printed; `WEIR_CRASH_SEED=<seed>` replays a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir::generate::{FraudGenerator, fmt_ts};
use weir_tests::apache_kafka::kafka;
use weir_tests::child::wait_with_deadline;
use weir_tests::compare::close;
use weir_tests::kafka::{Record, create_topic, produce, read_all};
use weir_tests::output::{GroupBy, once, window_results};
use weir_tests::process::spawn_weir_run;
use weir_tests::{seed, wait_for, workspace_root, write_sql};

const EVENTS: usize = 120_000;
const MIN_CRASHES: usize = 20;
/// Restarts that begin without a state directory.
const MIN_STATE_LOSSES: usize = 4;

/// Steps of a checkpoint (and of processing) where `WEIR_FAULT` can abort.
const FAULT_POINTS: &[&str] = &[
    "after-batch",
    "checkpoint-start",
    "after-state-flush",
    "after-sink-flush",
    "after-changelog-commit",
    "checkpoint-before-rename",
    "after-checkpoint",
];

/// Transactions with a malformed record every 997 and a late one every 1499.
fn input() -> (Vec<Record>, usize, usize) {
    let start = 1_767_225_600_000;
    // 20 events per simulated second: windows fire all through the run.
    let mut g = FraudGenerator::new(11, 3_000, start, 20);
    let mut records = Vec::with_capacity(EVENTS + EVENTS / 500);
    let (mut bad, mut late) = (0, 0);
    for i in 0..EVENTS {
        let e = g.next_event();
        let key = format!("card-{:06}", e.card);
        records.push(Record {
            key: Some(key.clone().into_bytes()),
            ..Record::value(e.to_json())
        });
        if i % 997 == 500 {
            bad += 1;
            records.push(Record::value(format!(
                r#"{{"card_id": "{key}", "amount": "#
            )));
        }
        if i % 1499 == 700 {
            // 15 minutes behind: every 10-minute window it belongs to has fired.
            late += 1;
            records.push(Record::value(format!(
                r#"{{"card_id": "{key}", "merchant": "m-0001", "amount": 1.0, "ts": "{}"}}"#,
                fmt_ts(e.ts_ms - 15 * 60_000)
            )));
        }
    }
    (records, bad, late)
}

fn pipeline(dir: &Path) -> PathBuf {
    let model = workspace_root().join("examples/fraud/fraud.onnx");
    let sql = format!(
        r#"
SET 'checkpoint.interval' = '100ms';
SET 'execution.batch-size' = '2000';
CREATE TABLE transactions (
  card_id TEXT, merchant TEXT, amount DOUBLE, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'kafka', 'topic' = 'cr-in', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset', 'dead-letter.topic' = '${{OUT}}-dlq');
CREATE TABLE card_scores WITH ('connector' = 'kafka', 'topic' = '${{OUT}}-scores',
  'format' = 'json', 'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'key.fields' = 'card_id',
  'sink.delivery-guarantee' = 'exactly-once');
CREATE TABLE big WITH ('connector' = 'kafka', 'topic' = '${{OUT}}-big', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'sink.delivery-guarantee' = 'exactly-once');
CREATE TABLE alo WITH ('connector' = 'kafka', 'topic' = '${{OUT}}-alo', 'format' = 'json',
  'properties.bootstrap.servers' = '${{KAFKA_BROKERS}}', 'key.fields' = 'card_id');
CREATE MODEL fraud WITH ('path' = '{}');
CREATE VIEW card_features AS
SELECT card_id, window_start, window_end, count(*) AS n, avg(amount) AS avg_amount,
       max(amount) AS max_amount, stddev_pop(amount) AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;
INSERT INTO card_scores
SELECT card_id, window_end, n, avg_amount, max_amount,
       predict(fraud, n, avg_amount, max_amount, sd_amount, n_merchants) AS p_fraud
FROM card_features;
INSERT INTO big SELECT card_id, amount, ts FROM transactions WHERE amount > 300;
INSERT INTO alo SELECT card_id, merchant, amount, ts FROM transactions WHERE amount > 200;
"#,
        model.display()
    );
    write_sql(dir, "crash.sql", &sql)
}

enum Outcome {
    Finished,
    Crashed,
}

/// Runs weir once; with `kill_after`, SIGKILLs it that long after it starts
/// reading its input (its restore done), if it is still running then.
fn run_once(
    sql: &Path,
    brokers: &str,
    out: &str,
    state: &Path,
    fault: Option<&str>,
    kill_after: Option<Duration>,
    log: &Path,
) -> Outcome {
    let started_before = reading_started(log);
    let mut child = spawn_weir_run(sql, brokers, out, state, fault, log);
    let status = match kill_after {
        None => wait_with_deadline(&mut child, Duration::from_secs(600)),
        Some(delay) => {
            // A life's progress is bounded by `delay` whatever the machine's
            // speed: the clock starts when the run starts reading.
            let exited = wait_for(Duration::from_secs(120), || {
                let exited = child.try_wait().expect("waiting for weir").is_some();
                (exited || reading_started(log) > started_before, exited)
            });
            let status = if exited {
                child.try_wait().expect("waiting for weir")
            } else {
                wait_with_deadline(&mut child, delay)
            };
            if status.is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
            status
        }
    };
    let Some(status) = status else {
        assert!(kill_after.is_some(), "weir did not finish within 600 s");
        return Outcome::Crashed;
    };
    if status.success() {
        return Outcome::Finished;
    }
    assert!(
        fault.is_some(),
        "weir failed without an injected fault ({status}); see {}",
        log.display()
    );
    Outcome::Crashed
}

/// How many runs logged in `log` have started reading their input.
fn reading_started(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches("reading 1 partitions of 'cr-in'").count())
        .unwrap_or(0)
}

/// Window results by (key, window_end); a result written twice fails.
fn scores(brokers: &str, topic: &str) -> BTreeMap<(String, String), serde_json::Value> {
    once(topic, window_results(brokers, topic, GroupBy::RecordKey))
}

/// (key, value) of every record, sorted: a multiset.
fn contents(brokers: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut all: Vec<_> = read_all(brokers, topic, Duration::from_secs(120))
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    all.sort();
    all
}

#[test]
fn exactly_once_output_survives_repeated_crashes() {
    let _alone = crate::exclusive();
    let seed = seed("WEIR_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);

    let b = kafka().expect("the test broker").bootstrap();
    create_topic(b, "cr-in", 1).unwrap();
    let (records, bad, late) = input();
    let produced = Instant::now();
    produce(b, "cr-in", &records).unwrap();
    println!(
        "{} input records produced in {:.1} s",
        records.len(),
        produced.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = pipeline(dir.path());
    // Outside the temporary directory, so it outlives a failure.
    let log = std::env::temp_dir().join(format!("weir-crash-{seed}.log"));
    let _ = std::fs::remove_file(&log);

    // The reference: one uninterrupted run.
    assert!(matches!(
        run_once(
            &sql,
            b,
            "ref",
            &dir.path().join("ref-state"),
            None,
            None,
            &log
        ),
        Outcome::Finished
    ));

    // The same input, killed again and again, in rounds: each round is a
    // job of its own (its own output topics, group and state) whose runs are
    // killed until one finishes. How far a killed run gets depends on the
    // machine's speed, so a round can use the input up before enough crashes
    // have happened; another round then goes on counting. Every round's
    // output must be exactly the uninterrupted run's.
    let mut crashes = Vec::new();
    let mut state_losses = 0;
    let mut round = 0;
    while crashes.len() < MIN_CRASHES || state_losses < MIN_STATE_LOSSES {
        round += 1;
        assert!(
            round <= 4,
            "only {} crashes and {state_losses} restarts without state in {} rounds (seed {seed}): {crashes:?}",
            crashes.len(),
            round - 1
        );
        let out = format!("cr{round}");
        let state = dir.path().join(format!("{out}-state"));
        let mut runs = 0;
        loop {
            runs += 1;
            assert!(runs <= 200, "no finished run after 200 attempts");
            // Lose the local state before some restarts: at random, and before
            // enough of the last planned crashes that MIN_STATE_LOSSES happen.
            let planned_left = (MIN_CRASHES + 4).saturating_sub(crashes.len());
            let losses_left = MIN_STATE_LOSSES.saturating_sub(state_losses);
            let mut lost_state = false;
            if runs > 1
                && state.exists()
                && losses_left > 0
                && (planned_left <= losses_left || rng.random_bool(0.2))
            {
                std::fs::remove_dir_all(&state).unwrap();
                state_losses += 1;
                lost_state = true;
            }
            let crash = crashes.len() < MIN_CRASHES + 4 || losses_left > 0;
            let (fault, kill_after) = if !crash {
                (None, None)
            } else if rng.random_bool(0.5) {
                let point = FAULT_POINTS[rng.random_range(0..FAULT_POINTS.len())];
                let hit = rng.random_range(1..=3);
                (Some(format!("{point}:{hit}")), None)
            } else {
                // Each life makes some progress, and a round's 24 lives get
                // through about half of the input.
                let ms = rng.random_range(0..300);
                (None, Some(Duration::from_millis(ms)))
            };
            let mut what = match (&fault, kill_after) {
                (Some(f), _) => format!("abort at {f}"),
                (None, Some(d)) => format!("SIGKILL after {} ms", d.as_millis()),
                (None, None) => "no fault".into(),
            };
            if lost_state {
                what = format!("state directory deleted; {what}");
            }
            match run_once(&sql, b, &out, &state, fault.as_deref(), kill_after, &log) {
                Outcome::Finished => {
                    println!("round {round}, run {runs}: {what}: finished");
                    break;
                }
                Outcome::Crashed => {
                    println!("round {round}, run {runs}: {what}: crashed");
                    crashes.push(what);
                }
            }
        }
        check_exact(b, &out, seed, &log);
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    let rebuilt = log_text.matches("rebuilt checkpoint").count();
    assert!(
        rebuilt >= 1,
        "no run rebuilt its state from the changelog ({state_losses} state losses); log: {}",
        log.display()
    );
    println!(
        "{} crashes in {round} round(s), {state_losses} restarts without state, {rebuilt} rebuilt from the changelog",
        crashes.len()
    );

    let dlq = contents(b, "ref-dlq");
    assert_eq!(
        dlq.len(),
        bad + late,
        "every malformed and late record is dead-lettered once"
    );
}

/// Checks what the crashed runs of job `out` wrote against the uninterrupted
/// run's output (topics `ref-*`).
fn check_exact(b: &str, out: &str, seed: u64, log: &Path) {
    // Window results: the same (card, window) set, each exactly once, with
    // the same values. Floating-point aggregates may differ in the last bits:
    // where a checkpoint splits a pane's accumulation differs between runs,
    // and DOUBLE addition is not associative.
    let reference = scores(b, "ref-scores");
    let crashed = scores(b, &format!("{out}-scores"));
    assert_eq!(
        reference.len(),
        crashed.len(),
        "{out}: window results (seed {seed}; log {})",
        log.display()
    );
    for (id, r) in &reference {
        let c = crashed
            .get(id)
            .unwrap_or_else(|| panic!("{out}: {id:?} missing after crashes (seed {seed})"));
        assert!(close(r, c), "{out}: {id:?}: {r} vs {c} (seed {seed})");
    }
    let mut sizes = BTreeMap::from([("scores", reference.len())]);
    for topic in ["big", "dlq"] {
        let reference = contents(b, &format!("ref-{topic}"));
        let crashed = contents(b, &format!("{out}-{topic}"));
        assert!(
            !reference.is_empty(),
            "{topic}: the reference run wrote nothing"
        );
        assert!(
            reference == crashed,
            "{out}-{topic}: {} records after crashes, {} in the uninterrupted run (seed {seed}); log: {}",
            crashed.len(),
            reference.len(),
            log.display()
        );
        sizes.insert(topic, reference.len());
    }
    // At-least-once: everything the uninterrupted run wrote, and every extra
    // record a byte-identical copy of one of those.
    let reference = contents(b, "ref-alo");
    let crashed = contents(b, &format!("{out}-alo"));
    assert!(!reference.is_empty());
    let mut extra = crashed.clone();
    for r in &reference {
        let at = extra
            .binary_search(r)
            .unwrap_or_else(|_| panic!("{out}-alo: {r:?} missing after crashes (seed {seed})"));
        extra.remove(at);
    }
    for e in &extra {
        assert!(
            reference.binary_search(e).is_ok(),
            "{out}-alo: {e:?} is not a copy of any record of the uninterrupted run (seed {seed})"
        );
    }
    sizes.insert("alo", reference.len());
    println!(
        "{out}: exact: {sizes:?}; at-least-once wrote {} repeats",
        extra.len()
    );
}
