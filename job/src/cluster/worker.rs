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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::WorkerOptions;
use super::job::{materialize, run_job};
use super::registry::{JobSpec, JobState, Registry, RegistryReader};
use super::status::{JobStatus, STATUS_INTERVAL, StatusSource, WorkerStatus, ensure_status_topic};
use super::tasks::JobTasks;
use crate::kafka::producer_config;
use crate::load::LoadedPipeline;
use crate::sink::Sink;
use crate::topics;

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

impl StatusSource for WorkerShared {
    /// What the worker runs now (and the output rate since the last call).
    fn snapshot(&self) -> WorkerStatus {
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
    let brokers = options.cluster.clone();
    topics::check_reachable(&brokers)?;
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
                        let running = |tasks: Arc<JobTasks>| {
                            if let Some(entry) = shared
                                .jobs
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_mut(&name)
                            {
                                entry.tasks = Some(tasks);
                                entry.state = "running".into();
                            }
                        };
                        if let Err(e) = run_job(spec, loaded, &options, &running, stop) {
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
