//! The client commands: `weir submit`, `weir jobs`, `weir describe`,
//! `weir stop`. They plan locally, then read and write the registry and
//! status topics; they never talk to a worker directly.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::ClusterTopics;
use super::registry::{JobSpec, JobState, job_files, publish, read_registry, set_state};
use super::status::{WorkerStatus, read_statuses};
use crate::embedded::EMBEDDED;
use crate::load::load_pipeline;

/// Plans `file` locally (bad SQL, a missing model or a model that does not
/// fit its features fail here, and nothing is published), then publishes it
/// as job `name` (default: the pipeline's name).
pub fn submit(
    file: &Path,
    name: Option<String>,
    topics: &ClusterTopics,
) -> anyhow::Result<JobSpec> {
    // The variables the SQL uses, as resolved here; KAFKA_BROKERS defaults to
    // the cluster the job is submitted to.
    let used: RefCell<BTreeMap<String, String>> = RefCell::new(BTreeMap::new());
    let env = |var: &str| {
        let value = std::env::var(var)
            .ok()
            .or_else(|| (var == "KAFKA_BROKERS").then(|| topics.cluster.bootstrap.clone()));
        if let Some(v) = &value {
            used.borrow_mut().insert(var.to_owned(), v.clone());
        }
        value
    };
    let loaded = load_pipeline(file, &env)?;
    let plan = &loaded.plan;
    if let Some(t) = plan
        .tables
        .values()
        .find(|t| t.bootstrap_servers == EMBEDDED)
    {
        bail!(
            "table {} reads the embedded broker, which exists only inside one `weir run`: \
             set KAFKA_BROKERS (or its 'properties.bootstrap.servers') to the cluster's brokers",
            t.name
        );
    }
    if let Some(t) = plan.sources().into_iter().find(|t| t.path.is_some()) {
        bail!(
            "table {} reads files ('connector' = 'filesystem'), which only `weir run` reads: \
             a cluster job reads Kafka topics",
            t.name
        );
    }
    let mut topics_read = BTreeMap::new();
    for s in plan.sources() {
        if let Some(other) = topics_read.insert(s.topic.clone(), s.name.clone()) {
            bail!(
                "tables {other} and {} both read topic '{}' as a stream: a cluster job reads a topic once",
                s.name,
                s.topic
            );
        }
    }
    // A cluster task sees one input partition, so keyed state (window
    // groups, OVER and SESSION partitions) not keyed by the topic's declared
    // key goes through a repartition topic (`shuffle.rs`).
    for (source, columns) in crate::shuffle::repartition_keys(plan) {
        if columns.is_empty() {
            tracing::warn!(
                "{}: the stateful stages over source {source} share no key column: in a cluster all its rows go to one task",
                file.display()
            );
        } else {
            tracing::info!(
                "source {source} is repartitioned by ({}): a repartition topic keeps each key's state in one task",
                columns.join(", ")
            );
        }
    }
    let name = name.unwrap_or_else(|| plan.name.clone());
    crate::cluster::registry::check_name("name", &name).map_err(anyhow::Error::msg)?;
    let models: Vec<_> = plan.models.values().map(|m| m.path.clone()).collect();
    let files = job_files(file, &models)?;
    let sql =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let now = chrono::Utc::now().timestamp_millis();
    let spec = JobSpec {
        name,
        version: format!("{now}-{:08x}", rand::random::<u32>()),
        state: JobState::Running,
        sql_file: file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pipeline.sql")
            .to_owned(),
        sql,
        env: used.into_inner(),
        files: Vec::new(),
        submitted_at_ms: now,
    };
    publish(&topics.cluster, &topics.registry, spec, &files)
}

/// Marks a job stopped, then waits (up to `wait`) until no worker reports
/// tasks of it.
pub fn stop(name: &str, topics: &ClusterTopics, wait: Duration) -> anyhow::Result<()> {
    set_state(&topics.cluster, &topics.registry, name, JobState::Stopped)?;
    let deadline = Instant::now() + wait;
    loop {
        let running: Vec<String> = read_statuses(&topics.cluster, &topics.status)?
            .into_iter()
            .filter(|w| w.jobs.iter().any(|j| j.name == name))
            .map(|w| w.worker)
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "job {name} is marked stopped, but workers {} still report it after {}s",
                running.join(", "),
                wait.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `weir jobs`: one line per job in the registry.
pub fn jobs_table(topics: &ClusterTopics) -> anyhow::Result<String> {
    let registry = read_registry(&topics.cluster, &topics.registry)?;
    let workers = read_statuses(&topics.cluster, &topics.status)?;
    let mut out = String::new();
    writeln!(
        out,
        "{:<24} {:<9} {:>5} {:>7} {:>10} {:>10}",
        "NAME", "STATE", "TASKS", "WORKERS", "INPUT LAG", "OUT/S"
    )?;
    for (name, spec) in &registry.jobs {
        let reports: Vec<(&WorkerStatus, &super::status::JobStatus)> = workers
            .iter()
            .filter_map(|w| w.jobs.iter().find(|j| &j.name == name).map(|j| (w, j)))
            .collect();
        let tasks: usize = reports.iter().map(|(_, j)| j.tasks.len()).sum();
        let lag: i64 = reports
            .iter()
            .flat_map(|(_, j)| &j.tasks)
            // A waiting task's partition is counted where it runs.
            .filter(|t| t.state != "waiting")
            .filter_map(|t| t.lag())
            .sum();
        let rate: f64 = reports.iter().map(|(_, j)| j.records_out_per_s).sum();
        let state = match spec.state {
            JobState::Stopped => "stopped",
            JobState::Running if reports.is_empty() => "pending",
            JobState::Running if reports.iter().any(|(_, j)| j.state == "failed") => "failed",
            JobState::Running if reports.iter().all(|(_, j)| j.state == "finished") => "finished",
            JobState::Running => "running",
        };
        writeln!(
            out,
            "{:<24} {:<9} {:>5} {:>7} {:>10} {:>10.0}",
            name,
            state,
            tasks,
            reports.len(),
            lag,
            rate
        )?;
    }
    Ok(out)
}

/// `weir describe NAME`: the job's definition, its plan, and where each task runs.
pub fn describe(name: &str, topics: &ClusterTopics) -> anyhow::Result<String> {
    let registry = read_registry(&topics.cluster, &topics.registry)?;
    let spec = registry.jobs.get(name).with_context(|| {
        format!(
            "no job named '{name}' in the registry '{}'",
            topics.registry
        )
    })?;
    let mut out = String::new();
    writeln!(out, "job {name}")?;
    writeln!(out, "  state      {:?}", spec.state)?;
    writeln!(out, "  version    {}", spec.version)?;
    writeln!(
        out,
        "  submitted  {}",
        chrono::DateTime::from_timestamp_millis(spec.submitted_at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    )?;
    writeln!(out, "  group      {}", spec.group_id())?;
    for f in &spec.files {
        writeln!(out, "  file       {} ({} bytes)", f.path, f.bytes)?;
    }
    let dir = tempfile::tempdir()?;
    let planned = super::job::materialize(&registry, spec, dir.path());
    // A variable that feeds a secret property (a password, a client secret)
    // is named, not shown; without a plan, no value is shown.
    for (k, v) in &spec.env {
        let shown = match &planned {
            Ok(loaded) => crate::connection::shown_value(
                v,
                loaded.plan.tables.values().flat_map(|t| &t.properties),
            ),
            Err(_) => "(not shown)",
        };
        writeln!(out, "  ${{{k}}}     {shown}")?;
    }
    match planned {
        Ok(loaded) => {
            writeln!(out)?;
            write!(out, "{}", loaded.plan)?;
        }
        Err(e) => writeln!(out, "\n(the plan could not be made here: {e:#})")?,
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:<24} {:>9} {:<9} {:>10} {:>10} {:>9} {:>11}",
        "TASK", "WORKER", "PARTITION", "STATE", "IN", "OUT", "LAG", "CHECKPOINTS"
    )?;
    let mut rows = Vec::new();
    for w in read_statuses(&topics.cluster, &topics.status)? {
        for j in w.jobs.iter().filter(|j| j.name == name) {
            for t in &j.tasks {
                rows.push((t.source.clone(), t.partition, w.worker.clone(), t.clone()));
            }
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (source, p, worker, t) in rows {
        writeln!(
            out,
            "{:<20} {:<24} {:>9} {:<9} {:>10} {:>10} {:>9} {:>11}",
            format!("{source}[{p}]"),
            worker,
            p,
            t.state,
            t.records_in,
            t.records_out,
            t.lag().map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            t.checkpoints
        )?;
    }
    Ok(out)
}
