//! `weir worker`: follows the job registry and runs its share of every
//! running job.
//!
//! ```text
//! worker main thread : registry -> start/stop job runners; status every 2 s
//! job runner thread  : one consumer in the job's group (cooperative-sticky),
//!                      subscribed to the job's source topics, fetching nothing
//!                      (its partitions are paused): the group only decides
//!                      which worker owns which partition.
//!   assigned (t, p)  -> a source task for partition p of t: own thread, own
//!                       consumer (manual assignment), own producer, own state
//!                       directory, changelog partition p
//!   revoked (t, p)   -> the task is asked to stop; it takes a final
//!                       checkpoint and releases the partition in its
//!                       changelog. The callback does not wait: the next
//!                       owner waits for the release (or for the old owner's
//!                       lease to run out) before it restores.
//!   task failed      -> restarted after a pause, from its last checkpoint
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use tracing::{error, info, warn};
use weir_sql::KafkaTable;

use super::registry::{JobSpec, JobState, Registry, RegistryReader};
use super::status::{
    JobStatus, ModelStatus, STATUS_INTERVAL, TaskStatus, WorkerStatus, ensure_status_topic,
};
use crate::kafka::{ensure_topic, partition_count, producer_config};
use crate::load::{LoadedPipeline, load_pipeline};
use crate::run::{TaskFactory, ensure_changelog_topic};
use crate::task::{Sink, TaskCounters};

pub struct WorkerOptions {
    pub brokers: String,
    pub id: String,
    pub http: Option<std::net::SocketAddr>,
    pub state_dir: PathBuf,
    pub registry_topic: String,
    pub status_topic: String,
    /// The job groups' session timeout: how long a killed worker's partitions
    /// wait before they move.
    pub session_timeout_ms: u32,
    pub stop: Arc<AtomicBool>,
}

/// A failed task is restarted after this long.
const RESTART_DELAY: Duration = Duration::from_secs(3);
/// A job that failed on a worker is started there again after this long.
const JOB_RETRY: Duration = Duration::from_secs(10);

/// What the worker runs, shared with its HTTP API.
pub struct WorkerShared {
    pub id: String,
    pub http: Option<String>,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
}

struct JobEntry {
    spec: JobSpec,
    state: String,
    error: Option<String>,
    tasks: Option<Arc<JobTasks>>,
    stop: Arc<AtomicBool>,
    runner: Option<JoinHandle<()>>,
    last_out: (Instant, u64),
    out_per_s: f64,
    /// When the job failed here (it is started again after [`JOB_RETRY`]).
    failed_at: Option<Instant>,
}

impl WorkerShared {
    /// What the worker runs now (and the output rate since the last call).
    pub fn snapshot(&self) -> WorkerStatus {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (name, entry) in jobs.iter_mut() {
            let (tasks, models) = match &entry.tasks {
                Some(t) => (t.status(), t.model_status()),
                None => (Vec::new(), Vec::new()),
            };
            let written: u64 = tasks.iter().map(|t| t.records_out).sum();
            let elapsed = entry.last_out.0.elapsed().as_secs_f64();
            if elapsed >= 1.0 {
                entry.out_per_s = written.saturating_sub(entry.last_out.1) as f64 / elapsed;
                entry.last_out = (Instant::now(), written);
            }
            let state = if entry.state == "running"
                && !tasks.is_empty()
                && tasks.iter().all(|t| t.state == "finished")
            {
                "finished".to_owned()
            } else {
                entry.state.clone()
            };
            out.push(JobStatus {
                name: name.clone(),
                version: entry.spec.version.clone(),
                state,
                error: entry.error.clone(),
                tasks,
                models,
                records_out_per_s: entry.out_per_s,
            });
        }
        WorkerStatus {
            worker: self.id.clone(),
            http: self.http.clone(),
            at_ms: chrono::Utc::now().timestamp_millis(),
            jobs: out,
        }
    }
}

/// Runs a worker until `options.stop` is set; then every job's tasks stop
/// after a final checkpoint.
pub fn run_worker(options: WorkerOptions) -> anyhow::Result<()> {
    let brokers = options.brokers.clone();
    crate::kafka::check_reachable(&brokers, Duration::from_secs(10))?;
    let mut reader = RegistryReader::open(&brokers, &options.registry_topic)?;
    ensure_status_topic(&brokers, &options.status_topic)?;
    let status_sink = Sink::new(&producer_config(&brokers, &BTreeMap::new()))?;
    let shared = Arc::new(WorkerShared {
        id: options.id.clone(),
        http: options.http.map(|a| a.to_string()),
        jobs: Mutex::new(BTreeMap::new()),
    });
    if let Some(addr) = options.http {
        super::http::serve(addr, shared.clone())?;
        info!("worker {}: HTTP API on http://{addr}", options.id);
    }
    info!(
        "worker {}: following job registry '{}' at {brokers}",
        options.id, options.registry_topic
    );
    let options = Arc::new(options);
    let mut last_status = Instant::now() - STATUS_INTERVAL;
    while !options.stop.load(Ordering::Relaxed) {
        reader.poll(Duration::from_millis(200));
        if reader.caught_up() {
            reconcile(&reader.registry, &shared, &options);
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            let status = shared.snapshot();
            let value = serde_json::to_vec(&status)?;
            if let Err(e) = status_sink.send_to(
                &options.status_topic,
                0,
                options.id.as_bytes(),
                Some(&value),
            ) {
                warn!("publishing worker status: {e:#}");
            }
            last_status = Instant::now();
        }
    }
    info!("worker {}: stopping every job", options.id);
    let entries: Vec<(String, Arc<AtomicBool>)> = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, e)| (n.clone(), e.stop.clone()))
        .collect();
    for (_, stop) in &entries {
        stop.store(true, Ordering::Relaxed);
    }
    for (name, _) in entries {
        let runner = shared
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&name)
            .and_then(|e| e.runner.take());
        if let Some(r) = runner {
            let _ = r.join();
        }
    }
    // Gone from the cluster's view at once, not after the staleness timeout.
    let _ = status_sink.send_to(&options.status_topic, 0, options.id.as_bytes(), None);
    status_sink.flush()
}

/// Starts runners for running jobs (or new versions of them) and stops those
/// of stopped or removed jobs.
fn reconcile(registry: &Registry, shared: &Arc<WorkerShared>, options: &Arc<WorkerOptions>) {
    let mut jobs = shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
    // Stop what should no longer run.
    for (name, entry) in jobs.iter_mut() {
        let wanted = registry
            .jobs
            .get(name)
            .is_some_and(|s| s.state == JobState::Running && s.version == entry.spec.version);
        if !wanted && entry.state != "stopped" {
            info!("job {name}: stopping");
            entry.stop.store(true, Ordering::Relaxed);
            entry.state = "stopped".into();
        }
    }
    // Reap stopped runners (their tasks have checkpointed).
    // A job that failed here (a broker unreachable at its start, say) is
    // started again after a pause.
    jobs.retain(|_, e| {
        let finished = e.runner.as_ref().is_none_or(|r| r.is_finished());
        let retry = e.state == "failed" && e.failed_at.is_some_and(|t| t.elapsed() >= JOB_RETRY);
        !(finished && (e.state == "stopped" || retry))
    });
    for (name, spec) in &registry.jobs {
        if spec.state != JobState::Running || jobs.contains_key(name) {
            continue;
        }
        info!("job {name}: starting version {}", spec.version);
        let stop = Arc::new(AtomicBool::new(false));
        let mut entry = JobEntry {
            spec: spec.clone(),
            state: "starting".into(),
            error: None,
            tasks: None,
            stop: stop.clone(),
            runner: None,
            last_out: (Instant::now(), 0),
            out_per_s: 0.0,
            failed_at: None,
        };
        match prepare_job(registry, spec, options) {
            Ok(loaded) => {
                let (shared, options, spec) = (shared.clone(), options.clone(), spec.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("weir-job-{name}"))
                    .spawn(move || {
                        let name = spec.name.clone();
                        if let Err(e) = run_job(spec, loaded, &options, &shared, stop) {
                            error!("job {name}: {e:#}");
                            if let Some(entry) = shared
                                .jobs
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_mut(&name)
                            {
                                entry.state = "failed".into();
                                entry.failed_at = Some(Instant::now());
                                entry.error = Some(format!("{e:#}"));
                            }
                        }
                    });
                match spawned {
                    Ok(h) => entry.runner = Some(h),
                    Err(e) => {
                        entry.state = "failed".into();
                        entry.failed_at = Some(Instant::now());
                        entry.error = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                error!("job {name}: {e:#}");
                entry.state = "failed".into();
                entry.failed_at = Some(Instant::now());
                entry.error = Some(format!("{e:#}"));
            }
        }
        jobs.insert(name.clone(), entry);
    }
}

/// Writes the job's SQL and files into the worker's state directory and plans
/// it there, with the variables its submit resolved.
fn prepare_job(
    registry: &Registry,
    spec: &JobSpec,
    options: &WorkerOptions,
) -> anyhow::Result<LoadedPipeline> {
    let dir = options
        .state_dir
        .join("jobs")
        .join(&spec.name)
        .join(&spec.version);
    materialize(registry, spec, &dir)
}

/// Writes a job's SQL file and the files it reads into `dir` and plans it
/// there, with the variables its submit resolved.
pub fn materialize(
    registry: &Registry,
    spec: &JobSpec,
    dir: &Path,
) -> anyhow::Result<LoadedPipeline> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // File paths are relative to the SQL file and may start with `..`: the
    // SQL file goes that many directories down, so they all land in `dir`.
    let ups = |p: &Path| {
        p.components()
            .take_while(|c| matches!(c, std::path::Component::ParentDir))
            .count()
    };
    let depth = spec
        .files
        .iter()
        .map(|f| ups(Path::new(&f.path)))
        .max()
        .unwrap_or(0);
    let sql_dir = (0..depth).fold(dir.to_path_buf(), |d, _| d.join("_"));
    for (i, f) in spec.files.iter().enumerate() {
        let rel = Path::new(&f.path);
        let rest: PathBuf = rel.components().skip(ups(rel)).collect();
        if rel.is_absolute()
            || rest
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "job {}: file path {} is not a plain relative path",
                spec.name,
                f.path
            );
        }
        // Relative to the SQL file's directory, `depth - ups` levels below `dir`.
        let below: PathBuf = (0..depth - ups(rel)).map(|_| "_").collect();
        let path = dir.join(below).join(rest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, registry.file(spec, i)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::create_dir_all(&sql_dir)?;
    let sql_name = Path::new(&spec.sql_file)
        .file_name()
        .context("the job's SQL file has no name")?;
    let sql_path = sql_dir.join(sql_name);
    std::fs::write(&sql_path, &spec.sql)
        .with_context(|| format!("writing {}", sql_path.display()))?;
    let env = spec.env.clone();
    load_pipeline(&sql_path, &move |v| env.get(v).cloned())
}

/// Runs the job's share on this worker until `stop`: group membership, and
/// the tasks of the partitions the group assigns here.
fn run_job(
    spec: JobSpec,
    loaded: LoadedPipeline,
    options: &WorkerOptions,
    shared: &Arc<WorkerShared>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let plan = &loaded.plan;
    let group_id = spec.group_id();
    let sources: Vec<KafkaTable> = plan.sources().into_iter().cloned().collect();
    // Topics: the sources must exist; sinks, dead letters and changelogs
    // (one partition per input partition) are created when missing.
    let mut source_partitions = BTreeMap::new();
    for s in &sources {
        let n = partition_count(&s.bootstrap_servers, &s.topic, Duration::from_secs(10))?
            .with_context(|| {
                format!(
                    "source table {}: topic '{}' does not exist at {}",
                    s.name, s.topic, s.bootstrap_servers
                )
            })?;
        source_partitions.insert(s.name.clone(), n as i32);
        if let Some(dlq) = &s.dead_letter_topic {
            ensure_topic(&s.bootstrap_servers, dlq, 1, Duration::from_secs(10))?;
        }
    }
    for t in plan.sinks() {
        ensure_topic(
            &t.bootstrap_servers,
            &t.topic,
            t.partitions.unwrap_or(1),
            Duration::from_secs(10),
        )?;
    }
    let changelogs = plan.setting("state.changelog") != Some("false");
    if !changelogs {
        warn!(
            "job {}: 'state.changelog' is off: a partition that moves to another worker starts without its state",
            spec.name
        );
    }
    let factory = TaskFactory::new(
        &loaded,
        group_id.clone(),
        options
            .state_dir
            .join("jobs")
            .join(&spec.name)
            .join("state"),
        changelogs,
    );
    let mut changelog_topics = BTreeMap::new();
    for s in &sources {
        // Every task has a changelog, stateful or not: its checkpoints
        // (input offsets, output positions) move with its partition.
        let flows = factory.flows(s)?;
        if changelogs {
            let topic = crate::changelog::topic_name(&group_id, &s.name);
            let bootstrap = &plan.tables[&flows[0].flow.sink].bootstrap_servers;
            ensure_changelog_topic(bootstrap, &topic, source_partitions[&s.name])?;
            changelog_topics.insert(s.name.clone(), topic);
        }
    }
    // Sources whose stateful stages are keyed by something other than the
    // topic's partition key read through a repartition topic (`shuffle.rs`):
    // the input topic's partitions run map tasks, the repartition topic's run
    // the flows.
    let shuffles = crate::shuffle::repartition_keys(plan);
    let mut roles = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        let Some(columns) = shuffles.get(&s.name) else {
            roles.insert(s.topic.clone(), (i, s.clone(), Role::Direct));
            continue;
        };
        let n = source_partitions[&s.name];
        let topic = crate::shuffle::topic_name(&group_id, &s.name);
        ensure_topic(&s.bootstrap_servers, &topic, n, Duration::from_secs(10))?;
        let have = partition_count(&s.bootstrap_servers, &topic, Duration::from_secs(10))?
            .unwrap_or(0) as i32;
        if have != n {
            bail!(
                "repartition topic '{topic}' has {have} partitions, source topic '{}' {n}: \
                 delete it (and the job's changelog topics) to start the job over",
                s.topic
            );
        }
        if columns.is_empty() {
            warn!(
                "job {}: the stateful stages over source {} share no key column: all its rows go to one task",
                spec.name, s.name
            );
        }
        info!(
            "job {}: source {} is repartitioned by ({}) through '{topic}'",
            spec.name,
            s.name,
            columns.join(", ")
        );
        roles.insert(
            s.topic.clone(),
            (
                i,
                s.clone(),
                Role::Map {
                    topic: topic.clone(),
                    partitions: n,
                    columns: columns.clone(),
                },
            ),
        );
        let mut reduce = s.clone();
        reduce.topic = topic;
        reduce.bounded = false;
        reduce.startup_mode = weir_sql::StartupMode::Earliest;
        roles.insert(
            reduce.topic.clone(),
            (
                i,
                reduce,
                Role::Reduce {
                    origins: n as usize,
                    bounded: s.bounded,
                    source_topic: s.topic.clone(),
                },
            ),
        );
    }
    let tasks = Arc::new(JobTasks {
        job: spec.name.clone(),
        models: loaded.models.values().cloned().collect(),
        factory,
        sources: roles,
        changelog_topics,
        slots: Mutex::new(BTreeMap::new()),
        leaving: Mutex::new(Vec::new()),
        ends: Mutex::new(BTreeMap::new()),
    });
    if let Some(entry) = shared
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&spec.name)
    {
        entry.tasks = Some(tasks.clone());
        entry.state = "running".into();
    }

    let bootstrap = &sources[0].bootstrap_servers;
    let topic_names: Vec<String> = tasks.sources.keys().cloned().collect();
    let topics: Vec<&str> = topic_names.iter().map(String::as_str).collect();
    let mut consumer = join_group(options, &group_id, bootstrap, &topics, &tasks)?;
    info!(
        "job {}: joined group {group_id} for {}",
        spec.name,
        topics.join(", ")
    );
    let mut last_ends = Instant::now() - STATUS_INTERVAL;
    // Since when this worker has owned no partition of the job.
    let mut idle_since: Option<Instant> = None;
    let rejoin_after = Duration::from_millis(options.session_timeout_ms as u64 * 3);
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            // Assigned partitions are paused: nothing should arrive.
            None | Some(Ok(_)) => {}
            Some(Err(e)) => warn!("job {}: group consumer: {e}", spec.name),
        }
        tasks.supervise();
        if last_ends.elapsed() >= STATUS_INTERVAL {
            tasks.refresh_ends(&consumer);
            last_ends = Instant::now();
            let owns = consumer
                .assignment()
                .map(|a| a.count() > 0)
                .unwrap_or(false);
            idle_since = if owns {
                None
            } else {
                idle_since.or(Some(Instant::now()))
            };
            // On tansu, a member that lost its partitions when the group's
            // leader died was never given any again (its rejoins went
            // unanswered). Joining afresh, as a new member, unsticks it; a
            // worker that is idle because the job has fewer partitions than
            // workers only causes a rebalance that changes nothing.
            let idle = idle_since.is_some_and(|t| t.elapsed() >= rejoin_after);
            // tansu was also seen giving a partition to a second member while
            // the first kept it, for minutes and without another rebalance:
            // the claim keeps one of them running it, the other waits. A
            // handover takes a final checkpoint, seconds; a task still
            // waiting for a live owner after `rejoin_after` means the
            // group's assignment is inconsistent, and a fresh join makes
            // every member rejoin with what it owns.
            let conflict = tasks.longest_handover_wait().filter(|w| *w >= rejoin_after);
            if idle || conflict.is_some() {
                match conflict {
                    Some(w) => warn!(
                        "job {}: a task has waited {}s for another worker that the group also gave its partition; joining the group afresh",
                        spec.name,
                        w.as_secs()
                    ),
                    None => info!(
                        "job {}: no partitions for {}s; joining the group afresh",
                        spec.name,
                        rejoin_after.as_secs()
                    ),
                }
                drop(consumer);
                consumer = match join_group(options, &group_id, bootstrap, &topics, &tasks) {
                    Ok(c) => c,
                    Err(e) => {
                        // No membership, no tasks.
                        tasks.stop_all();
                        return Err(e);
                    }
                };
                idle_since = None;
            }
        }
    }
    // Leaving the group revokes every partition: each task checkpoints,
    // releases its partition and stops; the others wait for the release.
    info!("job {}: leaving the group", spec.name);
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
    {
        consumer.poll(Duration::from_millis(100));
    }
    tasks.stop_all();
    Ok(())
}

/// A consumer in the job's group (cooperative-sticky), subscribed to its
/// source topics; its rebalance callbacks start and stop the tasks.
fn join_group(
    options: &WorkerOptions,
    group_id: &str,
    bootstrap: &str,
    topics: &[&str],
    tasks: &Arc<JobTasks>,
) -> anyhow::Result<BaseConsumer<Membership>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("client.id", format!("weir-{}", options.id))
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", options.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (options.session_timeout_ms / 6).max(500).to_string(),
        )
        // The rebalance timeout a JoinGroup carries: how long the coordinator
        // waits for members to rejoin. This consumer polls every 100 ms and
        // its callbacks do not block, so it can be short.
        .set(
            "max.poll.interval.ms",
            (options.session_timeout_ms * 2).to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    // librdkafka's group protocol log (e.g. WEIR_KAFKA_DEBUG=cgrp), for
    // diagnosing a broker's rebalances.
    if let Ok(debug) = std::env::var("WEIR_KAFKA_DEBUG") {
        config.set("debug", debug).set("log_level", "7");
    }
    let consumer: BaseConsumer<Membership> = config
        .create_with_context(Membership {
            tasks: tasks.clone(),
        })
        .context("creating the job's group consumer")?;
    consumer
        .subscribe(topics)
        .context("joining the job's consumer group")?;
    Ok(consumer)
}

/// The group consumer's context: the rebalance callbacks start and stop tasks.
struct Membership {
    tasks: Arc<JobTasks>,
}

impl ClientContext for Membership {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => error!("librdkafka {fac}: {log_message}"),
            Warning => warn!("librdkafka {fac}: {log_message}"),
            _ => info!("librdkafka {fac}: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error!("librdkafka (job {}): {error}: {reason}", self.tasks.job);
    }
}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            for e in tpl.elements() {
                self.tasks.stop(e.topic(), e.partition());
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // The tasks read; this consumer only holds the assignment.
                if let Err(e) = consumer.pause(tpl) {
                    warn!("job {}: pausing the group consumer: {e}", self.tasks.job);
                }
                for e in tpl.elements() {
                    self.tasks.start(e.topic(), e.partition());
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("job {}: rebalance failed: {e}", self.tasks.job),
        }
    }
}

/// A task: (input topic, partition).
type TaskKey = (String, i32);
type TaskThread = JoinHandle<anyhow::Result<()>>;

/// The tasks of one job on this worker, by (topic, partition).
pub struct JobTasks {
    job: String,
    factory: TaskFactory,
    models: Vec<Arc<weir_operators::Model>>,
    /// By topic: the source's index in the plan, its table (a repartition
    /// topic's: the source's, reading that topic) and what its partitions run.
    sources: BTreeMap<String, (usize, KafkaTable, Role)>,
    changelog_topics: BTreeMap<String, String>,
    slots: Mutex<BTreeMap<(String, i32), Slot>>,
    /// Revoked tasks still taking their final checkpoint.
    leaving: Mutex<Vec<(TaskKey, TaskThread)>>,
    ends: Mutex<BTreeMap<(String, i32), i64>>,
}

/// What the partitions of a topic the job's group subscribes to run.
enum Role {
    /// A source read directly: its flows.
    Direct,
    /// A repartitioned source's input: map tasks to `topic`, routed by `columns`.
    Map {
        topic: String,
        partitions: i32,
        columns: Vec<String>,
    },
    /// A repartition topic: the source's flows, with `origins` input partitions.
    Reduce {
        origins: usize,
        bounded: bool,
        source_topic: String,
    },
}

struct Slot {
    source: String,
    counters: Arc<TaskCounters>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    state: &'static str,
    error: Option<String>,
    failed_at: Option<Instant>,
}

impl JobTasks {
    fn start(&self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        // Given back before its last task here finished stopping.
        self.reap(Some(&key), false);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots
            .get(&key)
            .is_some_and(|s| s.handle.as_ref().is_some_and(|h| !h.is_finished()))
        {
            return;
        }
        let counters = slots
            .get(&key)
            .map(|s| s.counters.clone())
            .unwrap_or_default();
        let slot = match self.spawn(topic, partition, counters.clone()) {
            Ok(slot) => slot,
            Err(e) => {
                error!("job {}: task {topic}[{partition}]: {e:#}", self.job);
                Slot {
                    source: self
                        .sources
                        .get(topic)
                        .map(|(_, table, _)| table.name.clone())
                        .unwrap_or_default(),
                    counters,
                    stop: Arc::new(AtomicBool::new(false)),
                    handle: None,
                    state: "failed",
                    error: Some(format!("{e:#}")),
                    failed_at: Some(Instant::now()),
                }
            }
        };
        slots.insert(key, slot);
    }

    fn spawn(
        &self,
        topic: &str,
        partition: i32,
        counters: Arc<TaskCounters>,
    ) -> anyhow::Result<Slot> {
        let (index, source, role) = self
            .sources
            .get(topic)
            .with_context(|| format!("no source reads topic '{topic}'"))?;
        let stop = Arc::new(AtomicBool::new(false));
        if let Role::Map {
            topic: to,
            partitions,
            columns,
        } = role
        {
            // A map task can read faster than its records are acknowledged;
            // a small producer queue makes it wait (a full queue blocks
            // `produce`) rather than hold a backlog in memory. (Measured with
            // the default queue, a repartitioned job peaked at 1.39 GiB per
            // worker against 816 MiB without: BENCHMARKS.md, Worker cluster.
            // How much of that was the queue is not measured.)
            let properties = BTreeMap::from([
                ("queue.buffering.max.kbytes".to_owned(), "65536".to_owned()),
                (
                    "queue.buffering.max.messages".to_owned(),
                    "100000".to_owned(),
                ),
            ]);
            let sink = Sink::new(&producer_config(&source.bootstrap_servers, &properties))?;
            let task = self.factory.map_task(
                source,
                partition,
                to,
                *partitions,
                columns,
                Arc::new(sink),
                stop.clone(),
                counters.clone(),
            );
            info!("job {}: starting map task {topic}[{partition}]", self.job);
            let handle = std::thread::Builder::new()
                .name(format!("weir-{}-map-{partition}", source.name))
                .spawn(move || task.run())?;
            return Ok(Slot {
                source: source.name.clone(),
                counters,
                stop,
                handle: Some(handle),
                state: "running",
                error: None,
                failed_at: None,
            });
        }
        let flows = self.factory.flows(source)?;
        let plan = self.factory.plan();
        let sink_tables: Vec<&KafkaTable> =
            flows.iter().map(|f| &plan.tables[&f.flow.sink]).collect();
        // Each task has a producer of its own: a checkpoint flushes its
        // producer, which must not wait for other tasks' output.
        let sink = if sink_tables.iter().any(|t| t.transactional) {
            self.factory.transactional_sink(source, &flows, partition)?
        } else {
            Sink::new(&producer_config(
                &sink_tables[0].bootstrap_servers,
                &crate::kafka::sink_properties(sink_tables.iter().copied()),
            ))?
        };
        let mut task = self.factory.task(
            *index,
            source,
            flows,
            Arc::new(sink),
            Some(partition),
            self.changelog_topics.get(&source.name).cloned(),
            stop.clone(),
            counters.clone(),
        )?;
        if let Role::Reduce {
            origins,
            bounded,
            source_topic,
        } = role
        {
            task.settings.shuffle = Some(crate::shuffle::Origins {
                partitions: *origins,
                bounded: *bounded,
                source_topic: source_topic.clone(),
                ..Default::default()
            });
            if *bounded {
                // As for a bounded source: no origin is ever idle.
                task.settings.idle_timeout = None;
            }
        }
        info!("job {}: starting task {topic}[{partition}]", self.job);
        let handle = std::thread::Builder::new()
            .name(format!("weir-{}-{partition}", source.name))
            .spawn(move || task.run())?;
        Ok(Slot {
            source: source.name.clone(),
            counters,
            stop,
            handle: Some(handle),
            state: "running",
            error: None,
            failed_at: None,
        })
    }

    /// Asks a partition's task to stop (it checkpoints, then releases the
    /// partition in its changelog) and returns at once: the revoke callback
    /// must not hold up the group's rebalance. The next owner, here or on
    /// another worker, waits for the release before it restores.
    fn stop(&self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let Some(mut slot) = slot else { return };
        slot.stop.store(true, Ordering::Relaxed);
        if let Some(h) = slot.handle.take() {
            info!("job {}: stopping task {topic}[{partition}]", self.job);
            self.leaving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key, h));
        }
    }

    /// Waits for stopping tasks: those of `key`, or all of them (`None`), or
    /// (with `finished_only`) those that are done.
    fn reap(&self, key: Option<&(String, i32)>, finished_only: bool) {
        let done: Vec<(TaskKey, TaskThread)> = {
            let mut leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner());
            let (take, keep): (Vec<_>, Vec<_>) = leaving.drain(..).partition(|(k, h)| {
                key.is_none_or(|want| want == k) && (!finished_only || h.is_finished())
            });
            *leaving = keep;
            take
        };
        for ((t, p), h) in done {
            match h.join() {
                Ok(Ok(())) => info!("job {}: task {t}[{p}] stopped", self.job),
                Ok(Err(e)) => error!("job {}: task {t}[{p}]: {e:#}", self.job),
                Err(_) => error!("job {}: task {t}[{p}] panicked", self.job),
            }
        }
    }

    fn stop_all(&self) {
        let keys: Vec<(String, i32)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for (t, p) in keys {
            self.stop(&t, p);
        }
        self.reap(None, false);
    }

    /// Notes finished tasks; restarts failed ones after a pause.
    fn supervise(&self) {
        self.reap(None, true);
        let mut restart = Vec::new();
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            for (key, slot) in slots.iter_mut() {
                if slot.handle.as_ref().is_some_and(|h| h.is_finished()) {
                    let h = slot.handle.take().expect("checked above");
                    match h.join() {
                        Ok(Ok(())) => slot.state = "finished",
                        Ok(Err(e)) => {
                            error!(
                                "job {}: task {}[{}] failed: {e:#}; restarting in {}s",
                                self.job,
                                key.0,
                                key.1,
                                RESTART_DELAY.as_secs()
                            );
                            slot.state = "failed";
                            slot.error = Some(format!("{e:#}"));
                            slot.failed_at = Some(Instant::now());
                        }
                        Err(_) => {
                            slot.state = "failed";
                            slot.error = Some("panicked".into());
                            slot.failed_at = Some(Instant::now());
                        }
                    }
                }
                if slot.state == "failed"
                    && slot.failed_at.is_some_and(|t| t.elapsed() >= RESTART_DELAY)
                {
                    restart.push(key.clone());
                }
            }
        }
        for (t, p) in restart {
            self.start(&t, p);
        }
    }

    fn refresh_ends(&self, consumer: &BaseConsumer<Membership>) {
        let keys: Vec<(String, i32)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut ends = BTreeMap::new();
        for (t, p) in keys {
            if let Ok((_, high)) = consumer.fetch_watermarks(&t, p, Duration::from_secs(1)) {
                ends.insert((t, p), high.max(0));
            }
        }
        *self.ends.lock().unwrap_or_else(|e| e.into_inner()) = ends;
    }

    /// How long the longest-waiting task has waited for another worker
    /// that still runs its partition, if any task is waiting.
    fn longest_handover_wait(&self) -> Option<Duration> {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.counters.handover_waiting_since_ms.load(Ordering::Relaxed))
            .filter(|since| *since > 0)
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
            .max()
    }

    fn status(&self) -> Vec<TaskStatus> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|((topic, p), s)| {
                let c = &s.counters;
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                TaskStatus {
                    source: s.source.clone(),
                    topic: topic.clone(),
                    partition: *p,
                    // Assigned here, but another worker still runs it.
                    state: if s.state == "running" && get(&c.handover_waiting_since_ms) > 0 {
                        "waiting".to_owned()
                    } else {
                        s.state.to_owned()
                    },
                    error: s.error.clone(),
                    records_in: get(&c.records_in),
                    records_out: get(&c.records_out),
                    dead_lettered: get(&c.dead_lettered),
                    late: get(&c.late),
                    checkpoints: get(&c.checkpoints),
                    last_checkpoint_ms: get(&c.last_checkpoint_ms),
                    state_bytes: get(&c.last_checkpoint_bytes),
                    restore_ms: get(&c.restore_ms),
                    position: c
                        .positions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(p)
                        .copied(),
                    end: ends.get(&(topic.clone(), *p)).copied(),
                }
            })
            .collect()
    }

    fn model_status(&self) -> Vec<ModelStatus> {
        self.models
            .iter()
            .map(|m| {
                let s = m.stats();
                ModelStatus {
                    name: m.name().to_owned(),
                    calls: s.calls.load(Ordering::Relaxed),
                    rows: s.rows.load(Ordering::Relaxed),
                    seconds: s.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                }
            })
            .collect()
    }
}
