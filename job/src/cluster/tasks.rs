//! The tasks of one job on a worker, by (topic, partition): started when the
//! group assigns a partition here, stopped (after a final checkpoint) when it
//! is revoked, restarted after a pause when one fails, and reported in the
//! worker's status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use tracing::{error, info};
use weir_sql::KafkaTable;

use super::status::{ModelStatus, TaskStatus};
use crate::connection::Connection;
use crate::counters::TaskCounters;
use crate::kafka::producer_config;
use crate::run::TaskFactory;
use crate::sink::Sink;

/// A failed task is restarted after this long.
const RESTART_DELAY: Duration = Duration::from_secs(3);

/// A task: (input topic, partition).
type TaskKey = (String, i32);
type TaskThread = JoinHandle<anyhow::Result<()>>;

/// The tasks of one job on this worker, by (topic, partition).
pub struct JobTasks {
    pub job: String,
    factory: TaskFactory,
    models: Vec<Arc<weir_operators::Model>>,
    /// By topic: the source's index in the plan, its table (a repartition
    /// topic's: the source's, reading that topic) and what its partitions run.
    pub sources: BTreeMap<String, (usize, KafkaTable, Role)>,
    changelog_topics: BTreeMap<String, String>,
    slots: Mutex<BTreeMap<(String, i32), Slot>>,
    /// Revoked tasks still taking their final checkpoint.
    leaving: Mutex<Vec<(TaskKey, TaskThread)>>,
    ends: Mutex<BTreeMap<(String, i32), i64>>,
}

/// What the partitions of a topic the job's group subscribes to run.
pub enum Role {
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
    pub fn new(
        job: String,
        models: Vec<Arc<weir_operators::Model>>,
        factory: TaskFactory,
        sources: BTreeMap<String, (usize, KafkaTable, Role)>,
        changelog_topics: BTreeMap<String, String>,
    ) -> Self {
        Self {
            job,
            factory,
            models,
            sources,
            changelog_topics,
            slots: Mutex::new(BTreeMap::new()),
            leaving: Mutex::new(Vec::new()),
            ends: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn start(&self, topic: &str, partition: i32) {
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
            // (The repartition topic is on the source's cluster.)
            let sink = Sink::new(&producer_config(&Connection::of(source), &properties))?;
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
                &Connection::of(sink_tables[0]),
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
    pub fn stop(&self, topic: &str, partition: i32) {
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

    pub fn stop_all(&self) {
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
    pub fn supervise(&self) {
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

    pub fn refresh_ends<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
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
    pub fn longest_handover_wait(&self) -> Option<Duration> {
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

    pub fn status(&self) -> Vec<TaskStatus> {
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

    pub fn model_status(&self) -> Vec<ModelStatus> {
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
