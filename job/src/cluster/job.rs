//! One job's runner on a worker: the job's files written and planned here,
//! its topics set up, and a consumer in the job's group whose rebalances
//! start and stop the tasks of the partitions assigned to this worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use tracing::{error, info, warn};
use weir_sql::KafkaTable;

use super::WorkerOptions;
use super::registry::{JobSpec, Registry};
use super::status::STATUS_INTERVAL;
use super::tasks::{JobTasks, Role};
use crate::connection::Connection;
use crate::load::{LoadedPipeline, load_pipeline};
use crate::run::TaskFactory;
use crate::topics::{self, Admin};

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
/// the tasks of the partitions the group assigns here. `running` is handed
/// the job's tasks once its topics are set up.
pub fn run_job(
    spec: JobSpec,
    loaded: LoadedPipeline,
    options: &WorkerOptions,
    running: &dyn Fn(Arc<JobTasks>),
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let plan = &loaded.plan;
    let group_id = spec.group_id();
    let sources: Vec<KafkaTable> = plan.sources().into_iter().cloned().collect();
    // Topics: the sources must exist; sinks, dead letters and changelogs
    // (one partition per input partition) are created when missing.
    let admin = Admin::new(None);
    let source_partitions = admin.prepare(plan)?;
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
        if changelogs {
            let topic = topics::changelog_name(&group_id, &s.name);
            let cluster = topics::output_cluster(plan, &s.name)
                .with_context(|| format!("source {} feeds no flow", s.name))?;
            admin.changelog(&cluster, &topic, source_partitions[&s.name])?;
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
        let topic = topics::repartition_name(&group_id, &s.name);
        admin.repartition(s, &topic, n)?;
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
    let tasks = Arc::new(JobTasks::new(
        spec.name.clone(),
        loaded.models.values().cloned().collect(),
        factory,
        roles,
        changelog_topics,
    ));
    running(tasks.clone());

    let cluster = &Connection::of(&sources[0]);
    let topic_names: Vec<String> = tasks.sources.keys().cloned().collect();
    let topics: Vec<&str> = topic_names.iter().map(String::as_str).collect();
    let mut consumer = join_group(options, &group_id, cluster, &topics, &tasks)?;
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
                consumer = match join_group(options, &group_id, cluster, &topics, &tasks) {
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
    cluster: &Connection,
    topics: &[&str],
    tasks: &Arc<JobTasks>,
) -> anyhow::Result<BaseConsumer<Membership>> {
    let mut config = cluster.config();
    config
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
