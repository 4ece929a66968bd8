//! Running a planned pipeline: brokers, topics, one thread per source table,
//! and the embedded broker and generator when the file asks for them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::info;
use weir_operators::{JsonEncoder, build_chain};
use weir_sql::catalog::{parse_duration_ms, parse_size_bytes};
use weir_sql::{DeliveryGuarantee, KafkaTable};

use crate::connection::Connection;
use crate::counters::TaskCounters;
use crate::embedded::{EMBEDDED, EmbeddedBroker};
use crate::generate::FraudGenerator;
use crate::kafka::{producer_config, sink_properties};
use crate::load::LoadedPipeline;
use crate::printer::spawn_printer;
use crate::sink::Sink;
use crate::task::{FlowRuntime, SourceTask, TaskSettings, TaskState};
use crate::topics::{self, Admin};

pub struct RunOptions {
    /// Set to ask every task to stop; the run then flushes and returns.
    pub stop: Arc<AtomicBool>,
    /// Print what reaches the sink topics (default on the embedded broker).
    pub print: Option<bool>,
    /// Consumer group id; default `weir-<pipeline name>`.
    pub group_id: Option<String>,
    /// Where task state and checkpoints live; overrides `SET 'state.dir'`.
    pub state_dir: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            print: None,
            group_id: None,
            state_dir: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSummary {
    pub records_in: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub records_out: u64,
    pub duplicates_skipped: u64,
    pub checkpoints: u64,
    /// Kafka transactions committed (`'sink.transactional'`).
    pub transactions: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub sources: BTreeMap<String, SourceSummary>,
}

impl RunSummary {
    pub fn total(&self) -> SourceSummary {
        let mut t = SourceSummary::default();
        for s in self.sources.values() {
            t.records_in += s.records_in;
            t.dead_lettered += s.dead_lettered;
            t.late += s.late;
            t.records_out += s.records_out;
            t.duplicates_skipped += s.duplicates_skipped;
            t.checkpoints += s.checkpoints;
            t.transactions += s.transactions;
        }
        t
    }
}

/// Beyond two checkpoint intervals, how long a cluster task's previous owner
/// may be silent before it is taken for gone.
const HANDOVER_SLACK: Duration = Duration::from_secs(5);

pub fn run_pipeline(mut loaded: LoadedPipeline, options: RunOptions) -> anyhow::Result<RunSummary> {
    let plan = &mut loaded.plan;

    // A filesystem source without brokers of its own sends its dead letters
    // to the cluster its flows write to.
    let clusters: Vec<(String, String)> = plan
        .flows
        .iter()
        .filter(|f| {
            let t = &plan.tables[&f.source];
            t.path.is_some() && t.bootstrap_servers.is_empty()
        })
        .map(|f| {
            (
                f.source.clone(),
                plan.tables[&f.sink].bootstrap_servers.clone(),
            )
        })
        .collect();
    for (source, servers) in clusters {
        if let Some(t) = plan.tables.get_mut(&source) {
            t.bootstrap_servers = servers;
        }
    }

    // The embedded broker, if any table asks for it.
    let uses_embedded = plan
        .tables
        .values()
        .any(|t| t.bootstrap_servers == EMBEDDED);
    let embedded = if uses_embedded {
        let broker = EmbeddedBroker::start()?;
        let servers = broker.bootstrap_servers();
        info!("embedded Kafka broker at {servers}");
        for t in plan.tables.values_mut() {
            if t.bootstrap_servers == EMBEDDED {
                t.bootstrap_servers = servers.clone();
            }
        }
        Some(broker)
    } else {
        None
    };
    let plan = &loaded.plan;

    // Every cluster the tables name, reached as each table connects to it.
    let mut clusters: BTreeMap<Connection, Vec<&str>> = BTreeMap::new();
    for t in plan.sources().iter().chain(plan.sinks().iter()) {
        clusters.entry(Connection::of(t)).or_default().push(&t.name);
    }
    for (cluster, tables) in &clusters {
        topics::check_reachable(cluster).with_context(|| format!("table {}", tables.join(", ")))?;
    }

    // Topics: sources must exist (the embedded broker creates them, and its
    // joined tables); sinks and dead-letter topics are created when missing.
    let admin = Admin::new(embedded.as_ref());
    admin.prepare(plan)?;

    // Joined tables on the embedded broker are filled by their generator; on
    // a real cluster their topics must exist (checked when read).
    if embedded.is_some() {
        for table in plan.tables.values().filter(|t| t.scan_table) {
            match table.embedded_generator.as_deref() {
                None => {}
                Some("fraud-merchants") => write_merchant_table(table)?,
                Some(other) => bail!(
                    "table {}: unknown 'embedded.generator' '{other}' (available for tables: fraud-merchants)",
                    table.name
                ),
            }
        }
    }

    let stop = options.stop.clone();
    let mut generators = Vec::new();
    if embedded.is_some() {
        for source in plan.sources() {
            if let Some(g) = &source.embedded_generator {
                generators.push(spawn_generator(source, g, stop.clone())?);
            }
        }
    } else if plan
        .sources()
        .iter()
        .any(|s| s.embedded_generator.is_some())
    {
        info!("'embedded.generator' is ignored: the pipeline runs against a real cluster");
    }

    // One producer per distinct cluster the sinks live on.
    let mut sinks: BTreeMap<String, Arc<Sink>> = BTreeMap::new();
    for table in plan.sinks().iter().chain(plan.sources().iter()) {
        if !sinks.contains_key(&table.bootstrap_servers) {
            let properties = sink_properties(
                plan.sinks()
                    .into_iter()
                    .filter(|t| t.bootstrap_servers == table.bootstrap_servers),
            );
            let config = producer_config(&Connection::of(table), &properties);
            sinks.insert(
                table.bootstrap_servers.clone(),
                Arc::new(Sink::new(&config)?),
            );
        }
    }

    let print = options.print.unwrap_or(embedded.is_some());
    let mut printer = None;
    if print {
        let topics: Vec<String> = plan.sinks().iter().map(|t| t.topic.clone()).collect();
        let cluster = Connection::of(plan.sinks()[0]);
        printer = Some(spawn_printer(cluster, topics, 10, stop.clone())?);
    }

    let group_id = options
        .group_id
        .clone()
        .unwrap_or_else(|| format!("weir-{}", plan.name));
    // State: explicit directory, or a per-pipeline one; the embedded broker
    // forgets its topics at exit, so its runs keep state only for the run.
    let mut _embedded_state = None;
    let state_root: PathBuf = match (options.state_dir.clone(), plan.setting("state.dir")) {
        (Some(dir), _) => dir,
        (None, Some(dir)) => plan
            .file
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(dir),
        (None, None) if embedded.is_some() => {
            let dir = tempfile::Builder::new()
                .prefix("weir-state-")
                .tempdir()
                .context("creating a temporary state directory")?;
            let path = dir.path().to_owned();
            _embedded_state = Some(dir);
            path
        }
        (None, None) => default_state_root().join(&group_id),
    };
    info!("state in {}", state_root.display());
    // Changelogs let a run without its state directory (or, later, another
    // worker) rebuild the state. The embedded broker forgets them at exit.
    let changelogs = match plan.setting("state.changelog") {
        Some(v) => v == "true",
        None => embedded.is_none(),
    };
    let factory = TaskFactory::new(&loaded, group_id.clone(), state_root, changelogs);

    let mut handles = Vec::new();
    let mut counters: BTreeMap<String, Arc<TaskCounters>> = BTreeMap::new();
    for (source_index, source) in plan.sources().into_iter().enumerate() {
        let flows = factory.flows(source)?;
        let sink_tables: Vec<&KafkaTable> =
            flows.iter().map(|f| &plan.tables[&f.flow.sink]).collect();
        let bootstrap = sink_tables[0].bootstrap_servers.clone();
        let sink = if sink_tables.iter().any(|t| t.transactional) {
            Arc::new(factory.transactional_sink(source, &flows, 0)?)
        } else {
            sinks[&bootstrap].clone()
        };
        let task_counters = Arc::new(TaskCounters::default());
        counters.insert(source.name.clone(), task_counters.clone());
        let changelog_topic = if factory.changelogs && TaskFactory::stateful(&flows) {
            let topic = topics::changelog_name(&group_id, &source.name);
            admin.changelog(&Connection::of(sink_tables[0]), &topic, 1)?;
            Some(topic)
        } else {
            None
        };
        let task = factory.task(
            source_index,
            source,
            flows,
            sink,
            None,
            changelog_topic,
            stop.clone(),
            task_counters,
        )?;
        let name = format!("weir-source-{}", source.name);
        handles.push((
            source.name.clone(),
            std::thread::Builder::new().name(name).spawn(move || {
                let stop = task.stop.clone();
                let result = task.run();
                if result.is_err() {
                    // One failed source stops the whole run, so it can report.
                    stop.store(true, Ordering::Relaxed);
                }
                result
            })?,
        ));
    }

    let mut first_error = None;
    for (name, h) in handles {
        let result = h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("source task {name} panicked")));
        if let Err(e) = result {
            stop.store(true, Ordering::Relaxed);
            if first_error.is_none() {
                first_error = Some(e.context(format!("source {name}")));
            }
        }
    }
    for s in sinks.values() {
        if let Err(e) = s.flush()
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for g in generators {
        let _ = g.join();
    }
    if let Some(p) = printer {
        let _ = p.join();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut summary = RunSummary::default();
    for (name, c) in counters {
        summary.sources.insert(
            name,
            SourceSummary {
                records_in: c.records_in.load(Ordering::Relaxed),
                dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                late: c.late.load(Ordering::Relaxed),
                records_out: c.records_out.load(Ordering::Relaxed),
                duplicates_skipped: c.duplicates_skipped.load(Ordering::Relaxed),
                checkpoints: c.checkpoints.load(Ordering::Relaxed),
                transactions: c.transactions.load(Ordering::Relaxed),
            },
        );
    }
    Ok(summary)
}

/// The fraud example's merchant-risk table, written once, valid from a day ago
/// (before any generated transaction).
fn write_merchant_table(table: &KafkaTable) -> anyhow::Result<()> {
    let config = producer_config(&Connection::of(table), &BTreeMap::new());
    let sink = Sink::new(&config)?;
    let since = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let rows = crate::generate::merchant_table(since);
    for (key, value) in &rows {
        sink.send(&table.topic, Some(key.as_bytes()), value.as_bytes(), None)?;
    }
    sink.flush()?;
    info!("wrote {} merchants into '{}'", rows.len(), table.topic);
    Ok(())
}

fn spawn_generator(
    source: &KafkaTable,
    kind: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if kind != "fraud" {
        bail!(
            "source {}: unknown 'embedded.generator' '{kind}' (available: fraud)",
            source.name
        );
    }
    let rate = source.embedded_generator_rate.unwrap_or(2000).max(1);
    let config = producer_config(&Connection::of(source), &BTreeMap::new());
    let sink = Sink::new(&config)?;
    let topic = source.topic.clone();
    info!("generating fraud-example transactions into '{topic}' at {rate} events/s");
    Ok(std::thread::Builder::new()
        .name("weir-generator".into())
        .spawn(move || {
            // The training data's settings (100k cards, 200 events per simulated
            // second); simulated time runs rate/200 times faster than the wall
            // clock, so at 2000 events/s a one-minute window fires every 6 s.
            let start_ms = chrono::Utc::now().timestamp_millis();
            let mut g = FraudGenerator::new(7, 100_000, start_ms, 200);
            let started = std::time::Instant::now();
            let mut sent: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let burst = due.min(sent + 1000) - sent;
                for _ in 0..burst {
                    let e = g.next_event();
                    let key = format!("card-{:06}", e.card);
                    if let Err(err) =
                        sink.send(&topic, Some(key.as_bytes()), e.to_json().as_bytes(), None)
                    {
                        tracing::error!("generator: {err:#}");
                        return;
                    }
                    sent += 1;
                }
            }
            let _ = sink.flush();
        })?)
}

/// `$XDG_STATE_HOME/weir`, else `~/.local/state/weir`, else a `weir-state`
/// directory under the system's temporary directory.
pub fn default_state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("weir");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/weir");
    }
    std::env::temp_dir().join("weir-state")
}

/// Identifies what a source task's state depends on: the source topic and the
/// stateful stages of its flows. A checkpoint written under another
/// fingerprint is refused rather than misread.
fn state_fingerprint(source: &KafkaTable, flows: &[FlowRuntime]) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    // Changes with the store's record formats and key layout.
    h.update(weir_state::codec::LAYOUT.as_bytes());
    h.update(source.topic.as_bytes());
    // A filesystem source's offsets name lines of its files: other files
    // (or the same files changed) make a checkpoint's position meaningless.
    if let Some(path) = &source.path {
        h.update(&crate::files::fingerprint(&crate::files::list(path)?)?);
    }
    for f in flows {
        h.update(&(f.flow.index as u64).to_be_bytes());
        // Column families are named by the operator's position in the chain.
        for op in f.chain.stateful() {
            h.update(&(op as u64).to_be_bytes());
        }
        for stage in &f.flow.stages {
            match stage {
                weir_sql::Stage::WindowAggregate(w) => h.update(format!("{w:?}").as_bytes()),
                // Not the TTL: changing it keeps the state valid.
                weir_sql::Stage::Over(o) => h.update(
                    format!("over {:?} {:?} {}", o.partition_by, o.calls, o.time_column).as_bytes(),
                ),
                _ => &mut h,
            };
        }
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// Makes source tasks for a planned pipeline: the settings every task of a
/// run (or of a cluster job) shares, and the per-task parts (operator chains,
/// state directory, changelog partition).
pub struct TaskFactory {
    plan: weir_sql::PipelinePlan,
    models: std::collections::HashMap<String, Arc<weir_operators::Model>>,
    pub group_id: String,
    pub state_root: PathBuf,
    pub changelogs: bool,
    checkpoint_interval: Duration,
    batch_size: usize,
    linger: Duration,
    default_idle: Option<u64>,
    cache_size: usize,
}

impl TaskFactory {
    pub fn new(
        loaded: &LoadedPipeline,
        group_id: String,
        state_root: PathBuf,
        changelogs: bool,
    ) -> Self {
        let plan = &loaded.plan;
        Self {
            plan: plan.clone(),
            models: loaded.models.clone(),
            group_id,
            state_root,
            changelogs,
            checkpoint_interval: Duration::from_millis(
                plan.setting("checkpoint.interval")
                    .and_then(parse_duration_ms)
                    .unwrap_or(10_000),
            ),
            batch_size: plan
                .setting("execution.batch-size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(8192),
            linger: Duration::from_millis(
                plan.setting("execution.linger")
                    .and_then(parse_duration_ms)
                    .unwrap_or(20),
            ),
            default_idle: plan
                .setting("table.exec.source.idle-timeout")
                .and_then(parse_duration_ms),
            cache_size: plan
                .setting("state.cache.size")
                .and_then(parse_size_bytes)
                .unwrap_or(256 << 20) as usize,
        }
    }

    pub fn plan(&self) -> &weir_sql::PipelinePlan {
        &self.plan
    }

    /// The flows reading `source`, each with a freshly built operator chain.
    pub fn flows(&self, source: &KafkaTable) -> anyhow::Result<Vec<FlowRuntime>> {
        let plan = &self.plan;
        let mut flows = Vec::new();
        for flow in plan.flows.iter().filter(|f| f.source == source.name) {
            let sink_table = &plan.tables[&flow.sink];
            flows.push(FlowRuntime {
                exactly_once: sink_table.delivery == DeliveryGuarantee::ExactlyOnce,
                id_header: sink_table.id_header,
                flow: flow.clone(),
                chain: build_chain(flow, &plan.tables, &self.models).with_context(|| {
                    format!("building flow {} (INSERT INTO {})", flow.index, flow.sink)
                })?,
                encoder: match sink_table.format {
                    weir_sql::Format::Raw => {
                        JsonEncoder::raw(flow.output.clone(), flow.key_columns.clone())
                    }
                    weir_sql::Format::Json => {
                        JsonEncoder::new(flow.output.clone(), flow.key_columns.clone())
                    }
                },
                sink_topic: sink_table.topic.clone(),
            });
        }
        Ok(flows)
    }

    pub fn stateful(flows: &[FlowRuntime]) -> bool {
        flows.iter().any(|f| !f.chain.stateful().is_empty())
    }

    /// The producer of a task whose sinks are transactional: one transaction
    /// holds everything the task writes, so the task has a producer of its
    /// own (`transactional.id` ends in the task number), and its sinks share
    /// a cluster.
    pub fn transactional_sink(
        &self,
        source: &KafkaTable,
        flows: &[FlowRuntime],
        task: i32,
    ) -> anyhow::Result<Sink> {
        let sink_tables: Vec<&KafkaTable> = flows
            .iter()
            .map(|f| &self.plan.tables[&f.flow.sink])
            .collect();
        let bootstrap = sink_tables[0].bootstrap_servers.clone();
        if let Some(other) = sink_tables
            .iter()
            .find(|t| t.bootstrap_servers != bootstrap)
        {
            bail!(
                "table {} uses 'sink.transactional', but source {} also writes to {} on another cluster ({}): one transaction cannot span clusters",
                sink_tables
                    .iter()
                    .find(|t| t.transactional)
                    .map(|t| t.name.as_str())
                    .unwrap_or_default(),
                source.name,
                other.name,
                other.bootstrap_servers
            );
        }
        let mut config = producer_config(
            &Connection::of(sink_tables[0]),
            &sink_properties(sink_tables.iter().copied()),
        );
        // A transaction spans a checkpoint interval; the broker caps this
        // at its transaction.max.timeout.ms (15 min by default).
        let timeout_ms = (self.checkpoint_interval.as_millis() * 3).clamp(60_000, 900_000);
        config.set("transaction.timeout.ms", timeout_ms.to_string());
        Sink::transactional(
            &config,
            &format!("{}-{}-{task}", self.group_id, source.name),
        )
    }

    /// A cluster job's map task for `partition` of a repartitioned source
    /// (`shuffle.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn map_task(
        &self,
        source: &KafkaTable,
        partition: i32,
        topic: &str,
        partitions: i32,
        columns: &[String],
        sink: Arc<Sink>,
        stop: Arc<AtomicBool>,
        counters: Arc<TaskCounters>,
    ) -> crate::shuffle::MapTask {
        crate::shuffle::MapTask {
            table: source.clone(),
            partition,
            topic: topic.to_owned(),
            partitions,
            columns: columns.to_vec(),
            group_id: format!("{}-{}", self.group_id, source.name),
            sink,
            batch_size: self.batch_size,
            linger: self.linger,
            commit_interval: self.checkpoint_interval,
            stop,
            counters,
        }
    }

    /// A source task. `partition`: `None` reads every input partition (one
    /// task per source, `weir run`); `Some(p)` reads partition `p` only, with
    /// its state in a directory of its own and changelog partition `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn task(
        &self,
        source_index: usize,
        source: &KafkaTable,
        flows: Vec<FlowRuntime>,
        sink: Arc<Sink>,
        partition: Option<i32>,
        changelog_topic: Option<String>,
        stop: Arc<AtomicBool>,
        counters: Arc<TaskCounters>,
    ) -> anyhow::Result<SourceTask> {
        let fingerprint = state_fingerprint(source, &flows)?;
        let lookup_tables: Vec<KafkaTable> = {
            let mut names: Vec<&str> = flows
                .iter()
                .flat_map(|f| &f.flow.stages)
                .filter_map(|s| match s {
                    weir_sql::Stage::Lookup(l) => Some(l.table.as_str()),
                    _ => None,
                })
                .collect();
            names.sort_unstable();
            names.dedup();
            names.iter().map(|n| self.plan.tables[*n].clone()).collect()
        };
        let dir = match partition {
            None => self.state_root.join(&source.name),
            Some(p) => self.state_root.join(format!("{}-{p}", source.name)),
        };
        let cache_size = self.cache_size;
        Ok(SourceTask::new(
            source.clone(),
            flows,
            sink,
            stop,
            TaskSettings {
                source_index: source_index as u16,
                group_id: format!("{}-{}", self.group_id, source.name),
                batch_size: self.batch_size,
                linger: self.linger,
                checkpoint_interval: self.checkpoint_interval,
                lookup_tables,
                shuffle: None,
                // Bounded runs give the same results however fast they run: no
                // partition is ever idle, each holds the watermark until all end.
                idle_timeout: if source.bounded {
                    None
                } else {
                    source
                        .idle_timeout_ms
                        .or(self.default_idle)
                        .map(Duration::from_millis)
                },
                partitions: partition.map(|p| vec![p]),
            },
            counters,
            TaskState {
                dir,
                // A quarter of the cache is RocksDB's block cache; the rest
                // bounds the window operators' in-memory deltas.
                memory_budget: cache_size - cache_size / 4,
                cache_bytes: cache_size / 4,
                fingerprint,
                changelog_topic,
                changelog_partition: partition.unwrap_or(0),
                // A task's owner writes to its changelog at least once per
                // checkpoint interval; silence for twice that (plus the
                // time a checkpoint may take) means it is gone.
                handover_lease: partition.map(|_| self.checkpoint_interval * 2 + HANDOVER_SLACK),
            },
        ))
    }
}
