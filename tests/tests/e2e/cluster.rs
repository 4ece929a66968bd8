//! The worker cluster, as separate processes against the test broker over TCP.
//!
//! Three `weir worker`s run the fraud window pipeline (HOP features +
//! predict, exactly-once sink) over a 6-partition topic. A bad submit
//! publishes nothing. Halfway through the input a fourth worker joins
//! (partitions move to it, visible in its `/api/jobs`); then, with input still
//! arriving, one of the first three is killed with SIGKILL, and its partitions
//! move to the others, which rebuild their state from the changelog. At the
//! end every (card, window) result must be there exactly once and equal what
//! one `weir run` process computes over the same input (floating-point
//! aggregates to 1e-9 relative: where checkpoints split a pane's sums
//! differs). `weir stop` then stops the job on every worker.
//!
//! The job's source is unbounded: each partition ends with a sentinel event a
//! day later, whose watermark fires every window of the real events.

use std::time::Duration;

use weir::cluster::registry::read_registry;
use weir::connection::Connection;
use weir::generate::FraudGenerator;
use weir_tests::apache_kafka::kafka;
use weir_tests::cluster::{Registry, Worker, http_get, tasks, work_dir};
use weir_tests::compare::close;
use weir_tests::kafka::{Record, create_topic, produce};
use weir_tests::output::{GroupBy, read_until, window_results};
use weir_tests::process::run_weir;
use weir_tests::{unique, wait_for, workspace_root, write_sql};

const EVENTS: usize = 40_000;
const PARTITIONS: i32 = 6;

const SQL: &str = r#"
SET 'pipeline.name' = 'fraud-cluster';
SET 'checkpoint.interval' = '1s';

CREATE TABLE transactions (
  card_id  TEXT,
  merchant TEXT,
  amount   DOUBLE,
  ts       TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${INPUT}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = '${BOUNDED}',
  'key.fields' = 'card_id',
  'dead-letter.topic' = '${INPUT}-dlq'
);

CREATE TABLE card_scores WITH (
  'connector' = 'kafka',
  'topic' = '${SINK}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id',
  'sink.delivery-guarantee' = 'exactly-once'
);

CREATE MODEL fraud WITH ('path' = 'fraud.onnx');

CREATE VIEW card_features AS
SELECT card_id, window_start, window_end,
       count(*)                 AS n,
       avg(amount)              AS avg_amount,
       max(amount)              AS max_amount,
       stddev_pop(amount)       AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;

INSERT INTO card_scores
SELECT card_id, window_end, n, avg_amount, max_amount, n_merchants,
       predict(fraud, n, avg_amount, max_amount, sd_amount, n_merchants) AS p_fraud
FROM card_features;
"#;

fn input() -> (Vec<Record>, Vec<Record>) {
    let start = 1_767_225_600_000;
    let mut g = FraudGenerator::new(23, 2_000, start, 20);
    let mut events = Vec::with_capacity(EVENTS);
    let mut last = start;
    for _ in 0..EVENTS {
        let e = g.next_event();
        last = last.max(e.ts_ms);
        events.push(Record {
            key: Some(format!("card-{:06}", e.card).into_bytes()),
            ..Record::value(e.to_json())
        });
    }
    // One event per partition a day after the rest: its watermark fires every
    // window the real events opened.
    let later = weir::generate::fmt_ts(last + 86_400_000);
    let sentinels = (0..PARTITIONS)
        .map(|p| Record {
            key: Some(format!("sentinel-{p}").into_bytes()),
            partition: Some(p),
            ..Record::value(format!(
                r#"{{"card_id": "sentinel-{p}", "merchant": "m", "amount": 1.0, "ts": "{later}"}}"#
            ))
        })
        .collect();
    (events, sentinels)
}

#[test]
fn workers_share_a_job_survive_a_kill_and_write_each_result_once() {
    let _alone = crate::exclusive();
    let b = kafka().expect("the test broker").bootstrap().to_owned();
    let registry = Registry::new(&b);
    let topic = unique("transactions");
    let (card_scores, reference_scores) = (unique("card-scores"), unique("reference-scores"));
    create_topic(&b, &topic, PARTITIONS).expect("the input topic");
    let (events, sentinels) = input();
    let half = EVENTS / 2;
    produce(&b, &topic, &events[..half]).expect("the first half");

    let (dir_path, _tmp) = work_dir();
    let sql = write_sql(dir_path.as_path(), "fraud-cluster.sql", SQL);
    std::fs::copy(
        workspace_root().join("examples/fraud/fraud.onnx"),
        dir_path.as_path().join("fraud.onnx"),
    )
    .expect("the model");
    let weir = |args: &[&str], env: &[(&str, &str)]| {
        let env: Vec<(&str, &str)> = [("KAFKA_BROKERS", b.as_str()), ("INPUT", topic.as_str())]
            .into_iter()
            .chain(env.iter().copied())
            .collect();
        run_weir(args, &env, "warn")
    };
    let job_env = [("SINK", card_scores.as_str()), ("BOUNDED", "unbounded")];

    // A submit that does not plan publishes nothing.
    let bad = write_sql(
        dir_path.as_path(),
        "bad.sql",
        &SQL.replace("avg(amount)", "avg(amout)"),
    );
    let out = weir(
        &registry.command(&["submit", bad.to_str().unwrap()]),
        &job_env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad submit fails: {stderr}");
    assert!(
        stderr.contains("bad.sql:") && stderr.contains("amout"),
        "the error names the file, position and column: {stderr}"
    );
    assert!(
        read_registry(&Connection::plain(&b), &registry.registry)
            .expect("the registry is read")
            .jobs
            .is_empty(),
        "a bad submit publishes nothing"
    );

    let mut w1 = Worker::start(&registry, dir_path.as_path(), 1);
    let w2 = Worker::start(&registry, dir_path.as_path(), 2);
    let w3 = Worker::start(&registry, dir_path.as_path(), 3);
    let out = weir(
        &registry.command(&["submit", sql.to_str().unwrap()]),
        &job_env,
    );
    assert!(
        out.status.success(),
        "the job is submitted: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every partition runs somewhere and the first half is read.
    let seen = wait_for(Duration::from_secs(180), || {
        let t = tasks(&[&w1, &w2, &w3]);
        let parts: usize = t.iter().map(|x| x.1.len()).sum();
        let read: u64 = t.iter().map(|x| x.2).sum();
        (parts == PARTITIONS as usize && read >= half as u64, t)
    });
    let read: u64 = seen.iter().map(|x| x.2).sum();
    assert!(
        read >= half as u64 && seen.iter().map(|x| x.1.len()).sum::<usize>() == 6,
        "three workers share the 6 partitions and read the first half: {seen:?}\n{}",
        Worker::tails(&[&w1, &w2, &w3])
    );
    assert!(
        seen.iter().filter(|x| !x.1.is_empty()).count() >= 2,
        "the partitions are spread over workers: {seen:?}"
    );

    // A fourth worker takes some partitions, without the job restarting.
    let w4 = Worker::start(&registry, dir_path.as_path(), 4);
    let seen = wait_for(Duration::from_secs(90), || {
        let t = tasks(&[&w1, &w2, &w3, &w4]);
        let on_w4 = t.iter().find(|x| x.0 == "w4").map_or(0, |x| x.1.len());
        let parts: usize = t.iter().map(|x| x.1.len()).sum();
        (on_w4 > 0 && parts == PARTITIONS as usize, t)
    });
    assert!(
        seen.iter().any(|x| x.0 == "w4" && !x.1.is_empty()),
        "partitions move to the fourth worker: {seen:?}\n{}",
        Worker::tails(&[&w1, &w2, &w3, &w4])
    );

    // The second half arrives while a worker is killed.
    let second: Vec<Record> = events[half..].to_vec();
    let (b2, topic2) = (b.clone(), topic.clone());
    let producer = std::thread::spawn(move || produce(&b2, &topic2, &second));
    let victim_index = wait_for(Duration::from_secs(120), || {
        let t = tasks(&[&w1, &w2, &w3, &w4]);
        let read: u64 = t.iter().map(|x| x.2).sum();
        let victim = t
            .iter()
            .filter(|x| x.0 != "w4" && !x.1.is_empty())
            .map(|x| x.0.clone())
            .next();
        (read >= (half + half / 4) as u64 && victim.is_some(), victim)
    })
    .expect("a worker to kill has tasks");
    let mut survivors: Vec<&Worker> = Vec::new();
    let mut w2 = w2;
    let mut w3 = w3;
    for w in [&mut w1, &mut w2, &mut w3] {
        if w.id == victim_index {
            w.child.kill().expect("SIGKILL");
            w.child.wait().expect("the killed worker is reaped");
        }
    }
    for w in [&w1, &w2, &w3, &w4] {
        if w.id != victim_index {
            survivors.push(w);
        }
    }
    producer
        .join()
        .expect("the producer thread")
        .expect("the second half");
    produce(&b, &topic, &sentinels).expect("the sentinels");

    // What one process computes over the same input.
    let reference_sql = write_sql(
        dir_path.as_path(),
        "reference.sql",
        &SQL.replace("fraud-cluster", "fraud-reference"),
    );
    let out = weir(
        &[
            "run",
            reference_sql.to_str().unwrap(),
            "--state-dir",
            dir_path.as_path().join("reference").to_str().unwrap(),
        ],
        &[
            ("SINK", reference_scores.as_str()),
            ("BOUNDED", "latest-offset"),
        ],
    );
    assert!(
        out.status.success(),
        "the reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = window_results(&b, &reference_scores, GroupBy::Column("card_id"));
    assert!(
        expected.len() > 1000,
        "the reference has results: {}",
        expected.len()
    );

    // The survivors finish the job: every result arrives.
    let got = read_until(Duration::from_secs(300), expected.len(), || {
        window_results(&b, &card_scores, GroupBy::Column("card_id"))
    });
    // (A rebalance may be moving a partition at any one moment.)
    let running = wait_for(Duration::from_secs(60), || {
        let t = tasks(&survivors);
        (
            t.iter().map(|x| x.1.len()).sum::<usize>() == PARTITIONS as usize,
            t,
        )
    });
    assert!(
        running.iter().map(|x| x.1.len()).sum::<usize>() == PARTITIONS as usize,
        "the killed worker's partitions moved to the survivors: {running:?}\n{}",
        Worker::tails(&survivors)
    );

    // What the cluster reports: Prometheus metrics, `weir jobs`, `weir describe`.
    let metrics = http_get(&survivors[0].http, "/metrics").expect("/metrics answers");
    for family in [
        "weir_records_in_total{",
        "weir_records_out_total{",
        "weir_input_lag_records{",
        "weir_state_bytes{",
        "weir_checkpoint_duration_seconds{",
        "weir_predict_rows_total{",
        "weir_predict_batch_rows{",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics has {family}:\n{metrics}"
        );
    }
    assert_eq!(
        http_get(&survivors[0].http, "/healthz").as_deref(),
        Some("ok\n")
    );
    // Workers report every 2 s; the killed one's last report counts for 15 s.
    let (ok, jobs) = wait_for(Duration::from_secs(60), || {
        let out = weir(&registry.command(&["jobs"]), &[]);
        let jobs = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let line = jobs
            .lines()
            .find(|l| l.starts_with("fraud-cluster "))
            .unwrap_or_default();
        let cols: Vec<&str> = line.split_whitespace().collect();
        let ok = out.status.success()
            && cols.get(1) == Some(&"running")
            && cols.get(2) == Some(&"6")
            && cols.get(3) == Some(&"3");
        (ok, (ok, jobs))
    });
    assert!(
        ok,
        "weir jobs shows the job running as 6 tasks on 3 workers:\n{jobs}"
    );
    let out = weir(&registry.command(&["describe", "fraud-cluster"]), &[]);
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && described.contains("predict")
            && (0..PARTITIONS).all(|p| described.contains(&format!("transactions[{p}]"))),
        "weir describe shows the plan and every task:\n{described}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `weir stop` stops the job everywhere.
    let out = weir(&registry.command(&["stop", "fraud-cluster"]), &[]);
    assert!(
        out.status.success(),
        "weir stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in &survivors {
        let s = w.status().expect("a survivor answers");
        assert!(
            s.jobs.is_empty(),
            "{} runs nothing after the stop: {:?}",
            w.id,
            s.jobs
        );
    }

    // Exactly once, and the same results as one process.
    let got = {
        let again = window_results(&b, &card_scores, GroupBy::Column("card_id"));
        assert!(again.len() >= got.len());
        again
    };
    let repeated: Vec<_> = got.iter().filter(|(_, v)| v.len() > 1).take(5).collect();
    assert!(
        repeated.is_empty(),
        "results written more than once: {repeated:?}"
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "results missing: {missing:?}");
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "results one process does not write: {extra:?}"
    );
    for (k, want) in &expected {
        let have = &got[k][0].1;
        let want = &want[0].1;
        for field in ["n", "avg_amount", "max_amount", "n_merchants", "p_fraud"] {
            assert!(
                close(&have[field], &want[field]),
                "{k:?} {field}: cluster {} vs one process {}",
                have[field],
                want[field]
            );
        }
    }
    let logs: String = survivors
        .iter()
        .map(|w| std::fs::read_to_string(&w.log).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("from changelog"),
        "moved partitions rebuild their state from the changelog"
    );
}
