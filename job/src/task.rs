//! A source task: one thread that reads one source table (a Kafka topic, or
//! files: `files.rs`) and runs every flow reading it.
//!
//! ```text
//! open the task's state store (restores the newest checkpoint: state, offsets,
//!   watermark, output positions); exactly-once: read the ids of output written
//!   since that checkpoint, to skip them when the replay produces them again
//! poll (up to batch size or linger) -> decode (bad -> dead letters)
//!   -> arrival watermark per row -> each flow's chain -> encode -> produce
//! watermark advanced -> chains emit fired windows -> produce
//! every checkpoint interval, at a graceful stop and at the end of bounded input:
//!   operators write their state -> flush the producer -> checkpoint the store
//!   (state + offsets + watermark + output positions) -> commit offsets to the group
//! ```
//! The checkpoint is the source of truth for where to resume; the consumer
//! group's committed offsets only serve monitoring and runs without state.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use datafusion::arrow::array::{AsArray, Int64Array};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};
use weir_operators::decode::Decoded;
use weir_operators::ids::{Change, ROW_ID_LEN, id_array, parse_source_row_id, source_row_id};
use weir_operators::watermark::{Alignment, END_OF_TIME, START_OF_TIME};
use weir_operators::window::Assigner;
use weir_operators::{
    Batch, Chain, Context, JsonDecoder, JsonEncoder, RecordMeta, StateAttachment, TableChanges,
    WatermarkTracker,
};
use weir_sql::{Flow, KafkaTable, LatePolicy, Stage, StartupMode, WindowKind};
use weir_state::{CheckpointMeta, HeldOffsets, InputPosition, TaskStore, fault};

use crate::changelog::{self, CatchUp, Changelog};
use crate::kafka::{
    CHANGE_HEADER, ID_HEADER, QuietEof, WeirConsumer, consumer_config, end_offsets, read_output_ids,
};
use crate::shuffle::{Origins, Shuffled};
use crate::table::TableFeed;

/// Counts delivery outcomes; a failed delivery fails the next flush.
#[derive(Default)]
pub struct SinkContext {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Per topic and partition, one past the highest offset acknowledged.
    positions: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(m) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
                let next = m.offset() + 1;
                match positions.get_mut(m.topic()) {
                    Some(t) => {
                        let p = t.entry(m.partition()).or_insert(next);
                        *p = (*p).max(next);
                    }
                    None => {
                        positions.insert(
                            m.topic().to_owned(),
                            BTreeMap::from([(m.partition(), next)]),
                        );
                    }
                }
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("delivery to '{}' failed: {e}", m.topic());
            }
        }
    }
}

/// The job's producer, shared by its tasks.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    bootstrap: String,
    transactional: bool,
}

const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

impl Sink {
    pub fn new(config: &rdkafka::ClientConfig) -> anyhow::Result<Self> {
        let producer = config
            .create_with_context(SinkContext::default())
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            bootstrap: config
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_owned(),
            transactional: false,
        })
    }

    /// A task's own producer with `transactional.id` = `id`: initialising it
    /// fences (and aborts the open transaction of) any earlier producer with
    /// that id, such as the one of a run that was killed. A transaction is open
    /// on return.
    pub fn transactional(config: &rdkafka::ClientConfig, id: &str) -> anyhow::Result<Self> {
        let mut config = config.clone();
        config.set("transactional.id", id);
        let mut sink = Self::new(&config)?;
        sink.producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .with_context(|| format!("initialising Kafka transactions (transactional.id {id})"))?;
        sink.producer
            .begin_transaction()
            .context("beginning a Kafka transaction")?;
        sink.transactional = true;
        Ok(sink)
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Commits the open transaction, adding the consumer group's `offsets` to
    /// it, and begins the next one.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&rdkafka::consumer::ConsumerGroupMetadata>,
    ) -> anyhow::Result<()> {
        if offsets.count() > 0
            && let Some(group) = group
        {
            self.producer
                .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
                .context("adding input offsets to the Kafka transaction")?;
        }
        self.producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .context("committing the Kafka transaction")?;
        self.producer
            .begin_transaction()
            .context("beginning a Kafka transaction")?;
        Ok(())
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// One past the highest acknowledged offset, per partition of each of
    /// `topics` that has had output.
    pub fn positions(&self, topics: &[String]) -> BTreeMap<String, BTreeMap<i32, i64>> {
        let positions = self
            .producer
            .context()
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        topics
            .iter()
            .filter_map(|t| positions.get(t).map(|p| (t.clone(), p.clone())))
            .collect()
    }

    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.produce(record)
    }

    /// Sends `value` (`None`: a tombstone) to one partition of `topic`.
    pub fn send_to(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.produce(record)
    }

    pub fn produce(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        let topic = record.topic.to_owned();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing to '{topic}': {e}"),
            }
        }
    }

    /// Waits until everything sent so far is acknowledged.
    ///
    /// rust-rdkafka's `flush` waits in `poll` steps of 100 ms that each run to
    /// their end, so every flush with records in flight took at least 100 ms:
    /// a checkpoint stalled its task that long (p99 latency 120-160 ms at 2k
    /// events/s, bench/latency_bench.py). The producer's own thread serves
    /// delivery reports, so this waits for the in-flight count instead.
    pub fn flush(&self) -> anyhow::Result<()> {
        // A zero-timeout flush sends what is lingering at once.
        match self.producer.flush(Duration::ZERO) {
            Ok(())
            | Err(KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(e) => bail!("flushing the producer: {e}"),
        }
        let mut warn_at = Instant::now() + Duration::from_secs(30);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= warn_at {
                warn!(
                    "the producer is still waiting for {} acknowledgements (broker down?)",
                    self.producer.in_flight_count()
                );
                warn_at = Instant::now() + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} output records could not be delivered");
        }
        Ok(())
    }

    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }
}

/// Live counters of one source task, readable while it runs.
#[derive(Debug, Default)]
pub struct TaskCounters {
    pub records_in: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub late: AtomicU64,
    pub records_out: AtomicU64,
    /// Output records not produced again because a crashed run had.
    pub duplicates_skipped: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Kafka transactions committed (`'sink.transactional'`).
    pub transactions: AtomicU64,
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_bytes: AtomicU64,
    pub restore_ms: AtomicU64,
    /// Cluster tasks: since when (Unix ms) the task has waited for another
    /// worker that still runs its partition to release it; 0 when it is not
    /// waiting (see `changelog::await_handover`).
    pub handover_waiting_since_ms: AtomicU64,
    /// Per input partition, the next offset to process (lag = end - this).
    pub positions: Mutex<BTreeMap<i32, i64>>,
}

pub struct FlowRuntime {
    pub flow: Flow,
    pub chain: Chain,
    pub encoder: JsonEncoder,
    pub sink_topic: String,
    pub exactly_once: bool,
    /// Whether records carry the `weir.id` header (`'sink.id-header'`).
    pub id_header: bool,
}

/// Where a task keeps its state and how much memory it may use.
pub struct TaskState {
    /// The task's own directory (a RocksDB store and its checkpoints).
    pub dir: PathBuf,
    /// Memory the task's window operators may hold before writing to the store.
    pub memory_budget: usize,
    /// RocksDB block cache.
    pub cache_bytes: usize,
    /// Identifies the plan's stateful parts; a checkpoint from another plan is refused.
    pub fingerprint: String,
    /// The changelog topic (on the sink's cluster), when state changes are
    /// shipped there.
    pub changelog_topic: Option<String>,
    /// The task's partition of the changelog topic: 0 for a task reading every
    /// input partition, the input partition for a cluster task.
    pub changelog_partition: i32,
    /// Cluster tasks: wait for the partition's previous owner to release it
    /// (or to be silent this long) before restoring, and release it at a
    /// graceful stop. See `changelog::await_handover`.
    pub handover_lease: Option<Duration>,
}

pub struct TaskSettings {
    /// The source table's position among the plan's sources.
    pub source_index: u16,
    pub group_id: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub checkpoint_interval: Duration,
    pub idle_timeout: Option<Duration>,
    /// Tables read from compacted topics that this source's flows join.
    pub lookup_tables: Vec<KafkaTable>,
    /// The input partitions this task reads: all of them (`None`), or a
    /// cluster task's own.
    pub partitions: Option<Vec<i32>>,
    /// Reading a repartition topic (`shuffle.rs`): its origin partitions and
    /// whether the source is bounded. The watermark is then kept per origin
    /// partition, replays are skipped by origin offset, and a bounded input
    /// ends when every origin has sent its end.
    pub shuffle: Option<Origins>,
}

pub struct SourceTask {
    pub table: KafkaTable,
    pub flows: Vec<FlowRuntime>,
    pub sink: Arc<Sink>,
    pub stop: Arc<AtomicBool>,
    pub settings: TaskSettings,
    pub counters: Arc<TaskCounters>,
    pub state: TaskState,
    dedupe: Option<Dedupe>,
    changelog: Option<Changelog>,
    /// A filesystem source's files, in reading order (named in dead letters).
    files: Vec<PathBuf>,
}

/// Where a source task's records come from.
enum Input {
    Kafka(KafkaInput),
    Files(crate::files::FileInput),
}

impl Input {
    fn consumer(&self) -> Option<&WeirConsumer> {
        match self {
            Input::Kafka(k) => Some(&*k.consumer),
            Input::Files(_) => None,
        }
    }
}

/// A source's Kafka consumer. Under watermark alignment each partition has a
/// queue of its own, and a partition that runs ahead is simply not read:
/// librdkafka stops fetching it once its prefetch is full and goes on where
/// it stopped. (Pausing it would drop the prefetch and fetch again from the
/// next offset, inside a record batch, which tansu answers with the batch
/// after: records lost.)
struct KafkaInput {
    consumer: Arc<WeirConsumer>,
    /// (partition, its queue); empty: everything comes through `consumer`.
    queues: Vec<(i32, PartitionQueue<QuietEof>)>,
    /// Where the next round over the queues starts.
    next: std::cell::Cell<usize>,
}

impl KafkaInput {
    /// The next message or event, from a partition not in `held` (indexed by
    /// partition), waiting up to `timeout`.
    fn poll(
        &self,
        timeout: Duration,
        held: &[bool],
    ) -> Option<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
        if self.queues.is_empty() {
            return self.consumer.poll(timeout);
        }
        let deadline = Instant::now() + timeout;
        let n = self.queues.len();
        loop {
            for k in 0..n {
                let i = (self.next.get() + k) % n;
                let (p, q) = &self.queues[i];
                if held.get(*p as usize).copied().unwrap_or(false) {
                    continue;
                }
                if let Some(r) = q.poll(Duration::ZERO) {
                    self.next.set((i + 1) % n);
                    return Some(r);
                }
            }
            // Nothing queued: serve the consumer's own events (errors), which
            // also waits a little for the partitions' fetches.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(r) = self.consumer.poll(left.min(Duration::from_millis(2))) {
                return Some(r);
            }
        }
    }
}

const DLQ_REASON: &str = "weir.error";
/// The flow number in the identity of a dead letter for a record that could
/// not be decoded, or'ed with the source table's index (flows number from 0).
const DECODE_FLOW: u16 = 0x8000;
const RECORD_ID_LEN: usize = 2 + ROW_ID_LEN;

/// An output record's identity: the flow that made it, then its row identity.
fn record_id(flow: u16, row_id: &[u8]) -> [u8; RECORD_ID_LEN] {
    let mut id = [0u8; RECORD_ID_LEN];
    id[..2].copy_from_slice(&flow.to_be_bytes());
    id[2..].copy_from_slice(row_id);
    id
}

/// What a checkpoint records, as the task loop advances it.
struct Progress {
    next_id: u64,
    position: InputPosition,
    held: HeldOffsets,
    fired_through: i64,
    sink_positions: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Shuffle mode: what has been applied of each origin partition.
    origins: Option<Origins>,
}

/// Output identities a crashed run produced after the checkpoint being
/// replayed from; the replay skips them once each.
struct Dedupe {
    ids: HashSet<Box<[u8]>>,
}

impl Dedupe {
    /// Whether `id` was already written (and forgets it: each is skipped once).
    fn seen(dedupe: &mut Option<Dedupe>, id: &[u8]) -> bool {
        let Some(d) = dedupe else { return false };
        let hit = d.ids.remove(id);
        if d.ids.is_empty() {
            *dedupe = None;
        }
        hit
    }
}

impl SourceTask {
    pub fn new(
        table: KafkaTable,
        flows: Vec<FlowRuntime>,
        sink: Arc<Sink>,
        stop: Arc<AtomicBool>,
        settings: TaskSettings,
        counters: Arc<TaskCounters>,
        state: TaskState,
    ) -> Self {
        Self {
            table,
            flows,
            sink,
            stop,
            settings,
            counters,
            state,
            dedupe: None,
            changelog: None,
            files: Vec::new(),
        }
    }

    /// The topics this task writes to.
    fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.flows.iter().map(|f| f.sink_topic.clone()).collect();
        topics.extend(self.table.dead_letter_topic.iter().cloned());
        topics.sort();
        topics.dedup();
        topics
    }

    /// Whether every flow of this source has a stage that waits for the
    /// watermark (a window or OVER): watermark alignment would hold a
    /// stateless flow's output up for nothing.
    fn every_flow_waits_for_the_watermark(&self) -> bool {
        !self.flows.is_empty()
            && self.flows.iter().all(|f| {
                f.flow
                    .stages
                    .iter()
                    .any(|s| matches!(s, Stage::WindowAggregate(_) | Stage::Over(_)))
            })
    }

    pub fn run(mut self) -> anyhow::Result<()> {
        let table = self.table.clone();
        // A filesystem source is one partition (0) whose offsets name lines.
        let consumer: Option<WeirConsumer> = match &table.path {
            Some(path) => {
                self.files = crate::files::list(path)?;
                None
            }
            None => Some(
                consumer_config(&table, &self.settings.group_id)
                    .create_with_context(QuietEof)
                    .context("creating the Kafka consumer")?,
            ),
        };
        let partitions: Vec<i32> = match &consumer {
            None => vec![0],
            Some(consumer) => {
                let md = consumer
                    .fetch_metadata(Some(&table.topic), Duration::from_secs(10))
                    .with_context(|| {
                        format!("reading metadata of source topic '{}'", table.topic)
                    })?;
                md.topics()
                    .iter()
                    .find(|t| t.name() == table.topic)
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    .unwrap_or_default()
            }
        };
        if partitions.is_empty() {
            bail!("source topic '{}' does not exist", table.topic);
        }
        let partitions: Vec<i32> = match &self.settings.partitions {
            None => partitions,
            Some(only) => {
                if let Some(p) = only.iter().find(|p| !partitions.contains(p)) {
                    bail!("source topic '{}' has no partition {p}", table.topic);
                }
                only.clone()
            }
        };
        let n_partitions = partitions.iter().copied().max().unwrap_or(0) as usize + 1;

        // State: open the store (restoring the newest checkpoint) and hand each
        // stateful operator its column family.
        let mut stateful = Vec::new();
        for (fi, f) in self.flows.iter().enumerate() {
            for op in f.chain.stateful() {
                stateful.push((fi, op, format!("flow{}.op{op}", f.flow.index)));
            }
        }
        let column_families: Vec<String> = stateful.iter().map(|(_, _, n)| n.clone()).collect();
        let mut store =
            TaskStore::open(&self.state.dir, 0, &column_families, self.state.cache_bytes)
                .with_context(|| {
                    format!("opening the state store in {}", self.state.dir.display())
                })?;
        let changelog_topic = self
            .state
            .changelog_topic
            .clone()
            // A cluster task's checkpoints (input offsets, output positions)
            // must move with its partition even without operator state.
            .filter(|_| !stateful.is_empty() || self.state.handover_lease.is_some());
        if let Some(m) = store.restored()
            && (m.plan_fingerprint != self.state.fingerprint || m.source_topic != table.topic)
        {
            bail!(
                "the state in {} was written by a different pipeline (or a different version of this one); \
                 delete that directory to start over, or point 'state.dir' elsewhere",
                self.state.dir.display()
            );
        }
        // The run id this task's changelog records carry (and its claim names).
        let run = rand::random::<u64>();
        if let (Some(topic), Some(lease)) = (&changelog_topic, self.state.handover_lease)
            && !changelog::await_handover(
                &self.sink,
                topic,
                self.state.changelog_partition,
                lease,
                &self.stop,
                run,
                &self.counters.handover_waiting_since_ms,
            )?
        {
            info!(
                "source {}: stopped before taking over partition {}",
                table.name, self.state.changelog_partition
            );
            return Ok(());
        }
        let mut from_changelog = false;
        let mut garbage = Vec::new();
        if let Some(topic) = &changelog_topic {
            let bootstrap = self.sink.bootstrap().to_owned();
            let plan = (self.state.fingerprint.as_str(), table.topic.as_str());
            let timeout = Duration::from_secs(600);
            // A local checkpoint: take in what the changelog committed after it.
            if let Some(local) = store.restored().cloned() {
                match changelog::catch_up(
                    &bootstrap,
                    topic,
                    self.state.changelog_partition,
                    &store,
                    &local,
                    plan,
                    timeout,
                )? {
                    CatchUp::UpToDate { garbage: g } => garbage = g,
                    CatchUp::Applied(r) => {
                        info!(
                            "source {}: the changelog holds checkpoint {} beyond local checkpoint {}; applied it ({} records read)",
                            table.name, r.meta.id, local.id, r.records
                        );
                        garbage = r.garbage;
                        store.set_restored(r.meta, r.took);
                        from_changelog = true;
                    }
                    CatchUp::Stale(newer) => {
                        warn!(
                            "source {}: local checkpoint {} is older than checkpoint {newer} in changelog '{topic}', which another run went on from; rebuilding from the changelog",
                            table.name, local.id
                        );
                        drop(store);
                        TaskStore::wipe(&self.state.dir)?;
                        store = TaskStore::open(
                            &self.state.dir,
                            0,
                            &column_families,
                            self.state.cache_bytes,
                        )?;
                    }
                }
            }
            // No local checkpoint: rebuild the state from the changelog.
            if store.restored().is_none()
                && let Some(r) = changelog::restore(
                    &bootstrap,
                    topic,
                    self.state.changelog_partition,
                    &store,
                    plan,
                    timeout,
                )?
            {
                info!(
                    "source {}: no local state; rebuilt checkpoint {} from changelog '{topic}' ({} records, {} bytes) in {} ms",
                    table.name,
                    r.meta.id,
                    r.records,
                    r.bytes,
                    r.took.as_millis()
                );
                garbage = r.garbage;
                store.set_restored(r.meta, r.took);
                from_changelog = true;
            }
        }
        let restored = store.restored().cloned();
        if let Some(m) = &restored {
            info!(
                "source {}: restored checkpoint {} in {} ms (taken {} ms ago{})",
                table.name,
                m.id,
                store.restore_time().as_millis(),
                (chrono::Utc::now().timestamp_millis() - m.taken_at_ms).max(0),
                if from_changelog {
                    ", from the changelog"
                } else {
                    ""
                }
            );
        }
        if restored
            .as_ref()
            .is_some_and(|m| m.fired_through == END_OF_TIME && !stateful.is_empty())
        {
            warn!(
                "source {}: an earlier run of this pipeline read its bounded input to the end, so every window has fired; \
                 new rows for windows will be late. Delete {} to start over.",
                table.name,
                self.state.dir.display()
            );
        }
        self.counters
            .restore_ms
            .store(store.restore_time().as_millis() as u64, Ordering::Relaxed);
        let fired_from = restored
            .as_ref()
            .map(|m| m.fired_through)
            .unwrap_or(START_OF_TIME);
        if let Some(topic) = changelog_topic {
            let chain = restored
                .as_ref()
                .and_then(|m| m.changelog.clone())
                .unwrap_or_default();
            let mut cl =
                Changelog::with_run(topic, self.state.changelog_partition, chain, garbage, run);
            // A local checkpoint whose changelog was lost (or never written):
            // the next checkpoint ships a full snapshot.
            if restored.is_some()
                && !from_changelog
                && end_offsets(self.sink.bootstrap(), &cl.topic, Duration::from_secs(10))?
                    .get(&cl.partition)
                    .is_none_or(|end| *end == 0)
            {
                cl.force_snapshot();
            }
            store.capture_changes();
            self.changelog = Some(cl);
        }
        let budget = self.state.memory_budget / stateful.len().max(1);
        for (fi, op, name) in &stateful {
            // Operators after a temporal join that held rows back had been
            // given less than the task's watermark.
            let fired_through = restored
                .as_ref()
                .and_then(|m| m.operator_watermarks.get(name).copied())
                .unwrap_or(fired_from);
            let attachment = StateAttachment {
                store: store.operator(name)?,
                fired_through,
                memory_budget: budget,
            };
            self.flows[*fi].chain.attach_state(*op, attachment)?;
        }

        // Where to start: the checkpoint's offsets; without one, the startup
        // mode. Committed offsets are looked up explicitly rather than through
        // librdkafka's "stored" offset, which does not resume at the committed
        // offset on every broker (tansu).
        let committed: std::collections::HashMap<i32, i64> = if let Some(consumer) = &consumer
            && restored.is_none()
            && table.startup_mode == StartupMode::GroupOffsets
        {
            let mut query = TopicPartitionList::new();
            for p in &partitions {
                query.add_partition(&table.topic, *p);
            }
            consumer
                .committed_offsets(query, Duration::from_secs(10))
                .context("reading the group's committed offsets")?
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        // Every partition gets a concrete start offset, so every checkpoint
        // (the first one is taken before any input is read) names them all.
        let mut tpl = TopicPartitionList::new();
        let mut starts = BTreeMap::new();
        for p in &partitions {
            let checkpointed = restored.as_ref().and_then(|m| m.next_offsets.get(p));
            let start = match (
                checkpointed,
                table.startup_mode,
                committed.get(p),
                &consumer,
            ) {
                (Some(o), _, _, _) => *o,
                (None, StartupMode::GroupOffsets, Some(o), _) => *o,
                (None, _, _, Some(consumer)) => startup_offset(consumer, &table, *p)?,
                (None, _, _, None) => 0,
            };
            starts.insert(*p, start);
            tpl.add_partition_offset(&table.topic, *p, Offset::Offset(start))?;
        }
        let mut input = match consumer {
            Some(consumer) => {
                consumer
                    .assign(&tpl)
                    .context("assigning source partitions")?;
                let consumer = Arc::new(consumer);
                // Watermark alignment reads each partition from its own queue.
                let aligned = table.watermark.is_some()
                    && table.alignment_max_drift_ms.is_some()
                    && self.settings.shuffle.is_none()
                    && partitions.len() > 1
                    && self.every_flow_waits_for_the_watermark();
                let mut queues = Vec::new();
                if aligned {
                    for p in &partitions {
                        let q = consumer
                            .split_partition_queue(&table.topic, *p)
                            .with_context(|| {
                                format!("a queue for partition {p} of '{}'", table.topic)
                            })?;
                        queues.push((*p, q));
                    }
                }
                info!(
                    "source {}: reading {} partitions of '{}' ({})",
                    table.name,
                    partitions.len(),
                    table.topic,
                    if table.bounded {
                        "bounded"
                    } else {
                        "unbounded"
                    }
                );
                Input::Kafka(KafkaInput {
                    consumer,
                    queues,
                    next: std::cell::Cell::new(0),
                })
            }
            None => {
                let start = starts.get(&0).copied().unwrap_or(0);
                let (file, line) = crate::files::locate(&self.files, start);
                info!(
                    "source {}: reading {} file(s) under '{}'{}",
                    table.name,
                    self.files.len(),
                    table.topic,
                    if start > 0 {
                        format!(", from {file} line {line}")
                    } else {
                        String::new()
                    }
                );
                Input::Files(crate::files::FileInput::open(self.files.clone(), start)?)
            }
        };

        let decoder = JsonDecoder::new(&table);
        let now = Instant::now();
        // In shuffle mode the watermark is over the origin partitions (the
        // source topic's), as one process reading the source computes it.
        let tracker_partitions = self
            .settings
            .shuffle
            .as_ref()
            .map_or(n_partitions, |o| o.partitions);
        let mut tracker = WatermarkTracker::new(
            tracker_partitions,
            table.watermark.map(|w| w.delay_ms).unwrap_or(0),
            self.settings.idle_timeout,
            now,
        );
        // Partitions that do not exist never hold the watermark back.
        if self.settings.shuffle.is_none() {
            for p in 0..n_partitions as i32 {
                if !partitions.contains(&p) {
                    tracker.exclude(p as usize, now);
                }
            }
        }
        if let Some(m) = &restored {
            tracker.restore(
                m.max_event_times.iter().map(|(p, t)| (*p as usize, *t)),
                m.fired_through,
                now,
            );
        }

        // Output positions: what a replay may repeat starts there.
        let outputs = self.output_topics();
        let mut sink_positions = restored
            .as_ref()
            .map(|m| m.sink_positions.clone())
            .unwrap_or_default();
        let exactly_once = self.flows.iter().any(|f| f.exactly_once);
        if exactly_once {
            if restored.is_some() {
                // A record's guarantee is its flow's: only exactly-once flows
                // (and dead letters of undecodable input, which belong to no
                // flow) skip what a crashed run wrote.
                let eo_flows: HashSet<u16> = self
                    .flows
                    .iter()
                    .filter(|f| f.exactly_once)
                    .map(|f| f.flow.index as u16)
                    .collect();
                let mut eo_topics: Vec<&String> = self
                    .flows
                    .iter()
                    .filter(|f| f.exactly_once)
                    .map(|f| &f.sink_topic)
                    .collect();
                eo_topics.extend(self.table.dead_letter_topic.as_ref());
                let scan_from: BTreeMap<String, BTreeMap<i32, i64>> = sink_positions
                    .iter()
                    .filter(|(t, _)| eo_topics.contains(t))
                    .map(|(t, p)| (t.clone(), p.clone()))
                    .collect();
                let started = Instant::now();
                let (mut ids, records) =
                    read_output_ids(self.sink.bootstrap(), &scan_from, Duration::from_secs(120))?;
                ids.retain(|id| {
                    id.len() == RECORD_ID_LEN && {
                        let flow = u16::from_be_bytes([id[0], id[1]]);
                        flow & DECODE_FLOW != 0 || eo_flows.contains(&flow)
                    }
                });
                info!(
                    "source {}: {records} output records follow the checkpoint ({} ids to skip; read in {} ms)",
                    table.name,
                    ids.len(),
                    started.elapsed().as_millis()
                );
                if !ids.is_empty() {
                    self.dedupe = Some(Dedupe { ids });
                }
            }
            // Partitions with no recorded position yet: their current end.
            for topic in &outputs {
                let known = sink_positions.entry(topic.clone()).or_default();
                for (p, end) in end_offsets(self.sink.bootstrap(), topic, Duration::from_secs(10))?
                {
                    known.entry(p).or_insert(end);
                }
            }
        }

        let mut finished = vec![false; n_partitions];
        let mut progress = Progress {
            next_id: restored.as_ref().map(|m| m.id + 1).unwrap_or(1),
            position: InputPosition::starting_at(starts),
            held: restored
                .as_ref()
                .map(|m| m.held.clone())
                .unwrap_or_default(),
            fired_through: fired_from,
            sink_positions,
            origins: self.settings.shuffle.clone().map(|mut o| {
                if let Some(m) = &restored {
                    o.applied = m.origin_offsets.clone();
                    o.ended = m.origins_ended.iter().copied().collect();
                }
                o
            }),
        };
        *self
            .counters
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = progress.position.next_offsets().collect();
        // Stateful stages whose rows must stay uncommitted (in the group) until
        // the watermark passes what they need them for.
        let windows: Vec<Hold> = self
            .flows
            .iter()
            .flat_map(|f| f.flow.stages.iter())
            .filter_map(|s| match s {
                Stage::WindowAggregate(w) => Some(match w.kind {
                    // A session's rows are needed until it closes, which later
                    // rows can postpone; a row is held for its own gap only.
                    WindowKind::Session { gap_ms } => Hold::Over {
                        horizon_ms: gap_ms - 1 + w.allowed_lateness_ms,
                    },
                    kind => Hold::Window(Assigner::new(kind, w.offset_ms), w.allowed_lateness_ms),
                }),
                Stage::Over(o) => Some(Hold::Over {
                    horizon_ms: o.range_horizon_ms().unwrap_or(0),
                }),
                _ => None,
            })
            .collect();
        if restored.is_none() {
            // Where this run starts and what its outputs held, before any
            // output: a crash before the first interval then replays exactly.
            self.checkpoint(&mut store, input.consumer(), &tracker, &mut progress)?;
        }
        // Joined tables: each lookup join keeps its table in a RocksDB store
        // outside the checkpoints (the topic is the table's source of truth,
        // read again at every start), filled before any stream row is joined.
        let mut lookups = Vec::new();
        for (fi, f) in self.flows.iter().enumerate() {
            for (op, _) in f.chain.lookups() {
                lookups.push((fi, op, format!("flow{fi}.op{op}.table")));
            }
        }
        let _table_store = if lookups.is_empty() {
            None
        } else {
            let dir = self.state.dir.join("tables");
            TaskStore::wipe(&dir)?;
            let names: Vec<String> = lookups.iter().map(|l| l.2.clone()).collect();
            let tables_store = TaskStore::open(&dir, 0, &names, self.state.cache_bytes)?;
            for (fi, op, name) in &lookups {
                self.flows[*fi]
                    .chain
                    .attach_table_store(*op, tables_store.operator(name)?)?;
            }
            Some(tables_store)
        };
        let mut tables = Vec::new();
        let mut table_watermarks = Vec::new();
        for t in self.settings.lookup_tables.clone() {
            let mut feed = TableFeed::open(&t, Duration::from_secs(30))?;
            let flows = &mut self.flows;
            feed.read_to_end(Duration::from_secs(600), &mut |changes| {
                for f in flows.iter_mut() {
                    f.chain.apply_table(&t.name, &changes)?;
                }
                Ok(())
            })?;
            self.counters
                .dead_lettered
                .fetch_add(std::mem::take(&mut feed.bad), Ordering::Relaxed);
            let wm = feed.watermark(Instant::now());
            for f in &mut self.flows {
                f.chain.set_table_watermark(&t.name, wm);
            }
            tables.push(feed);
            table_watermarks.push(wm);
        }
        // Watermark alignment (its partitions were given queues above).
        let mut alignment = match (&input, table.alignment_max_drift_ms) {
            (Input::Kafka(k), Some(drift)) if !k.queues.is_empty() => {
                Some(Alignment::new(n_partitions, drift as i64))
            }
            _ => None,
        };
        let mut alignment_logged = false;
        let mut last_checkpoint = Instant::now();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(self.settings.batch_size);
        let mut metas: Vec<RecordMeta> = Vec::with_capacity(self.settings.batch_size);
        // Shuffle mode: each record's origin (source partition and offset),
        // beside `metas` (its place in the repartition topic); and control
        // records that arrived behind data still to be processed.
        let mut origins: Vec<RecordMeta> = Vec::new();
        let mut controls: Vec<Shuffled> = Vec::new();
        let mut skipped_logged = 0u64;
        let mut last_error_log = Instant::now() - Duration::from_secs(60);

        loop {
            if self.stop.load(Ordering::Relaxed) {
                info!("source {}: stopping", table.name);
                break;
            }
            // New table rows, and how far each table is complete: rows a
            // temporal join held for it may be due.
            let mut table_advanced = false;
            for (feed, last) in tables.iter_mut().zip(&mut table_watermarks) {
                if let Some(changes) = feed.poll()? {
                    self.apply_table(feed, &changes)?;
                }
                let wm = feed.watermark(Instant::now());
                if wm != *last {
                    for f in &mut self.flows {
                        f.chain.set_table_watermark(&feed.table.name, wm);
                    }
                    table_advanced |= wm > *last;
                    *last = wm;
                }
            }
            if table_advanced {
                self.advance_watermark(progress.fired_through)?;
            }
            buf.clear();
            spans.clear();
            metas.clear();
            origins.clear();
            let deadline = Instant::now() + self.settings.linger;
            while spans.len() < self.settings.batch_size && controls.is_empty() {
                let kafka = match &mut input {
                    Input::Kafka(k) => &*k,
                    Input::Files(files) => {
                        let want = self.settings.batch_size - spans.len();
                        if !files.read(want, &mut buf, &mut spans, &mut metas)? {
                            finished[0] = true;
                        }
                        break;
                    }
                };
                let timeout = if spans.is_empty() {
                    Duration::from_millis(50)
                } else {
                    deadline.saturating_duration_since(Instant::now())
                };
                let held = alignment.as_ref().map_or(&[][..], |a| a.held());
                match kafka.poll(timeout, held) {
                    None => break,
                    Some(Ok(m)) => {
                        let p = m.partition();
                        if finished.get(p as usize).copied().unwrap_or(false) {
                            continue;
                        }
                        if let Some(o) = &mut progress.origins {
                            match crate::shuffle::classify(&m) {
                                Shuffled::Record { partition, offset } => {
                                    if partition < 0 || partition as usize >= o.partitions {
                                        bail!(
                                            "source {}: '{}' holds a record from source partition {partition}, \
                                             but the source had {} partitions when the job started; \
                                             a source that gained partitions needs the job submitted again under a new name",
                                            table.name,
                                            table.topic,
                                            o.partitions
                                        );
                                    }
                                    if !o.accept(partition, offset) {
                                        progress.position.processed(p, m.offset());
                                        continue;
                                    }
                                    origins.push(RecordMeta {
                                        partition,
                                        offset,
                                        timestamp: m.timestamp().to_millis(),
                                        key: m.key().map(Into::into),
                                    });
                                }
                                Shuffled::Foreign => {
                                    warn!(
                                        "source {}: record at offset {} of '{}' partition {p} has no weir header; skipped",
                                        table.name,
                                        m.offset(),
                                        table.topic
                                    );
                                    progress.position.processed(p, m.offset());
                                    continue;
                                }
                                control => {
                                    // After the data before it: it ends the batch.
                                    controls.push(control);
                                    progress.position.processed(p, m.offset());
                                    continue;
                                }
                            }
                        }
                        push_record(&m, &mut buf, &mut spans, &mut metas);
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        if table.bounded && !finished[p as usize] {
                            finished[p as usize] = true;
                            debug!("source {}: partition {p} reached its end", table.name);
                            let mut pause = TopicPartitionList::new();
                            pause.add_partition(&table.topic, p);
                            let _ = kafka.consumer.pause(&pause);
                        }
                        if spans.is_empty() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        if last_error_log.elapsed() > Duration::from_secs(5) {
                            warn!("source {}: {e} (retrying)", table.name);
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            if !spans.is_empty() {
                let view = if progress.origins.is_some() {
                    &origins
                } else {
                    &metas
                };
                let decoded = self.process_records(&decoder, &buf, &spans, view, &mut tracker)?;
                if let (false, Some(w)) = (windows.is_empty(), table.watermark) {
                    hold_windowed_rows(
                        &decoded,
                        w.column,
                        &metas,
                        &windows,
                        progress.fired_through,
                        &mut progress.held,
                    );
                }
                for m in &metas {
                    progress.position.processed(m.partition, m.offset);
                }
                *self
                    .counters
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    progress.position.next_offsets().collect();
                if let Some(cl) = &mut self.changelog {
                    cl.ship_full(&self.sink, &store, progress.next_id)?;
                }
                fault::point("after-batch");
            }
            // After every round, batch or not: the slowest partition may have
            // ended or gone idle without a record, and what it held back must
            // then be read again.
            if let Some(a) = &mut alignment {
                let (ahead, _) = a.update(&tracker.partition_times(Instant::now()), &finished);
                if !ahead.is_empty() && !alignment_logged {
                    info!(
                        "source {}: partition(s) {ahead:?} ran more than {} s of event time ahead of the slowest; not read until within half of that ('scan.watermark.alignment.max-drift')",
                        table.name,
                        table.alignment_max_drift_ms.unwrap_or_default() / 1000
                    );
                    alignment_logged = true;
                }
            }
            for control in controls.drain(..) {
                match (control, &mut progress.origins) {
                    (Shuffled::MaxEventTime { partition, time }, _)
                        if (partition as usize) < tracker_partitions =>
                    {
                        tracker.observe(partition as usize, time, Instant::now());
                    }
                    (Shuffled::End { partition }, Some(o)) => {
                        o.ended.insert(partition);
                    }
                    _ => {}
                }
            }
            // A bounded partition that has ended keeps holding the watermark at
            // its last value until every partition has ended: results then do
            // not depend on how the broker interleaves partitions.
            let wm = tracker.tick(Instant::now());
            if wm > progress.fired_through {
                progress.fired_through = wm;
                self.advance_watermark(wm)?;
                progress.held.release_through(wm);
            }
            let all_ended = match &progress.origins {
                Some(o) => o.all_ended(),
                None => {
                    table.bounded
                        && finished
                            .iter()
                            .enumerate()
                            .all(|(p, f)| *f || !partitions.contains(&(p as i32)))
                }
            };
            if all_ended {
                if progress.fired_through < END_OF_TIME {
                    progress.fired_through = END_OF_TIME;
                    self.advance_watermark(END_OF_TIME)?;
                    progress.held.release_through(END_OF_TIME);
                }
                info!("source {}: reached the end of bounded input", table.name);
                break;
            }
            if last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                self.checkpoint(&mut store, input.consumer(), &tracker, &mut progress)?;
                last_checkpoint = Instant::now();
                if let Some(o) = &progress.origins
                    && o.skipped > skipped_logged
                {
                    info!(
                        "source {}: skipped {} records a map task sent again (by origin offset)",
                        table.name,
                        o.skipped - skipped_logged
                    );
                    skipped_logged = o.skipped;
                }
            }
        }
        self.checkpoint(&mut store, input.consumer(), &tracker, &mut progress)?;
        if self.state.handover_lease.is_some()
            && let Some(cl) = &mut self.changelog
        {
            cl.release(&self.sink, progress.next_id - 1)?;
        }
        Ok(())
    }

    /// Makes the task's state, input offsets, watermark and output positions
    /// durable together, then commits the group's offsets (rows still in open
    /// windows excluded: see HeldOffsets) for monitoring and stateless runs.
    fn checkpoint(
        &mut self,
        store: &mut TaskStore,
        consumer: Option<&WeirConsumer>,
        tracker: &WatermarkTracker,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        fault::point("checkpoint-start");
        for f in &mut self.flows {
            f.chain.flush_state()?;
        }
        fault::point("after-state-flush");
        let chain = match &mut self.changelog {
            Some(cl) => Some(cl.prepare(&self.sink, store, progress.next_id)?),
            None => None,
        };
        self.sink.flush()?;
        fault::point("after-sink-flush");
        // While output of a crashed run is still to be skipped, the positions
        // stay where that output starts, so another crash reads it again.
        if self.dedupe.is_none() {
            for (topic, partitions) in self.sink.positions(&self.output_topics()) {
                let known = progress.sink_positions.entry(topic).or_default();
                for (p, next) in partitions {
                    let at = known.entry(p).or_insert(next);
                    *at = (*at).max(next);
                }
            }
        }
        let mut meta = CheckpointMeta {
            id: progress.next_id,
            plan_fingerprint: self.state.fingerprint.clone(),
            source_topic: self.table.topic.clone(),
            next_offsets: progress.position.next_offsets().collect(),
            max_event_times: tracker
                .max_event_times()
                .map(|(p, t)| (p as i32, t))
                .collect(),
            fired_through: progress.fired_through,
            operator_watermarks: self.operator_watermarks(progress.fired_through),
            held: progress.held.clone(),
            sink_positions: progress.sink_positions.clone(),
            taken_at_ms: chrono::Utc::now().timestamp_millis(),
            changelog: chain,
            changelog_offset: None,
            origin_offsets: progress
                .origins
                .as_ref()
                .map(|o| o.applied.clone())
                .unwrap_or_default(),
            origins_ended: progress
                .origins
                .as_ref()
                .map(|o| o.ended.iter().copied().collect())
                .unwrap_or_default(),
        };
        if let Some(cl) = &mut self.changelog {
            cl.commit(&self.sink, &meta)?;
        }
        // Offsets open windows still need are not committed: see HeldOffsets.
        // A filesystem source has no group to commit to.
        let offsets = match consumer {
            Some(_) => progress.held.committable(&progress.position),
            None => Vec::new(),
        };
        let mut tpl = TopicPartitionList::new();
        for &(p, next) in &offsets {
            tpl.add_partition_offset(&self.table.topic, p, Offset::Offset(next))?;
        }
        if self.sink.is_transactional() {
            // Output, dead letters, changelog records and offsets: all or nothing.
            let group = match consumer {
                Some(c) => Some(
                    c.group_metadata()
                        .context("the source consumer has no group metadata for the transaction")?,
                ),
                None => None,
            };
            self.sink.commit_transaction(&tpl, group.as_ref())?;
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        } else if self.changelog.is_some() {
            self.sink.flush()?;
        }
        fault::point("after-changelog-commit");
        if let Some(cl) = &self.changelog {
            // Where records newer than this checkpoint would start.
            meta.changelog_offset = self
                .sink
                .positions(std::slice::from_ref(&cl.topic))
                .get(&cl.topic)
                .and_then(|p| p.get(&cl.partition))
                .copied();
        }
        let stats = store
            .checkpoint(&meta)
            .with_context(|| format!("checkpoint {} of source {}", meta.id, self.table.name))?;
        fault::point("after-checkpoint");
        progress.next_id += 1;
        let c = &self.counters;
        c.checkpoints.fetch_add(1, Ordering::Relaxed);
        c.last_checkpoint_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        c.last_checkpoint_bytes
            .store(stats.bytes, Ordering::Relaxed);
        debug!(
            "source {}: checkpoint {} in {} ms ({} of it in the store), {} bytes, input offsets summing to {}",
            self.table.name,
            stats.id,
            started.elapsed().as_millis(),
            stats.duration.as_millis(),
            stats.bytes,
            meta.next_offsets.values().sum::<i64>()
        );
        if !offsets.is_empty()
            && !self.sink.is_transactional()
            && let Some(consumer) = consumer
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            warn!("source {}: committing offsets failed: {e}", self.table.name);
        }
        Ok(())
    }

    fn process_records(
        &mut self,
        decoder: &JsonDecoder,
        buf: &[u8],
        spans: &[(usize, usize)],
        metas: &[RecordMeta],
        tracker: &mut WatermarkTracker,
    ) -> anyhow::Result<Decoded> {
        self.counters
            .records_in
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        let decoded = decoder.decode(buf, spans, metas)?;
        for bad in &decoded.bad {
            let (s, e) = spans[bad.index];
            let m = &metas[bad.index];
            self.dead_letter(&buf[s..e], m.key.as_deref(), &bad.reason, m)?;
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(decoded);
        }
        let now = Instant::now();
        let arrival: Int64Array = match self.table.watermark {
            Some(w) => {
                let times = decoded
                    .batch
                    .column(w.column)
                    .as_primitive::<TimestampMillisecondType>();
                decoded
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(r, &input)| {
                        let before = tracker.current();
                        tracker.observe(metas[input].partition as usize, times.value(r), now);
                        before
                    })
                    .collect()
            }
            None => Int64Array::from_value(START_OF_TIME, decoded.batch.num_rows()),
        };
        let arrival = Arc::new(arrival);
        let ids = Arc::new(id_array(
            decoded
                .rows
                .iter()
                .map(|&i| source_row_id(metas[i].partition, metas[i].offset)),
        ));
        for i in 0..self.flows.len() {
            let batch = Batch::new(decoded.batch.clone(), arrival.clone(), ids.clone());
            let mut ctx = Context::default();
            let out = self.flows[i].chain.process(batch, &mut ctx)?;
            self.emit(i, out, ctx)?;
        }
        Ok(decoded)
    }

    /// Hands a joined table's new rows to every flow, and counts its bad records.
    fn apply_table(&mut self, feed: &mut TableFeed, changes: &TableChanges) -> anyhow::Result<()> {
        for f in &mut self.flows {
            f.chain.apply_table(&feed.table.name, changes)?;
        }
        self.counters
            .dead_lettered
            .fetch_add(std::mem::take(&mut feed.bad), Ordering::Relaxed);
        Ok(())
    }

    /// The stateful operators given less than the task's watermark, by column
    /// family (see `CheckpointMeta::operator_watermarks`).
    fn operator_watermarks(&self, fired_through: i64) -> std::collections::BTreeMap<String, i64> {
        let mut out = std::collections::BTreeMap::new();
        for f in &self.flows {
            for op in f.chain.stateful() {
                let wm = f.chain.watermark(op);
                if wm < fired_through {
                    out.insert(format!("flow{}.op{op}", f.flow.index), wm);
                }
            }
        }
        out
    }

    /// Advances every flow to `wm`, through each point where a window fires
    /// on the way: each step's output is encoded and handed to the producer
    /// before the next step fires, so a watermark that jumps far (to the end
    /// of bounded input: every open window at once) does not hold all the
    /// results in memory together (1M keys: peak RSS 1.9 GiB, see
    /// BENCHMARKS.md, State size).
    fn advance_watermark(&mut self, wm: i64) -> anyhow::Result<()> {
        for i in 0..self.flows.len() {
            let mut from = i64::MIN;
            loop {
                let step = match self.flows[i].chain.next_emission() {
                    Some(due) if due > from && due < wm => due,
                    _ => wm,
                };
                let mut ctx = Context::default();
                let out = self.flows[i].chain.advance_watermark(step, &mut ctx)?;
                self.emit(i, out, ctx)?;
                if step >= wm {
                    break;
                }
                from = step;
            }
        }
        Ok(())
    }

    fn emit(&mut self, flow: usize, out: Vec<Batch>, ctx: Context) -> anyhow::Result<()> {
        let f = &self.flows[flow];
        let flow_id = f.flow.index as u16;
        let mut skipped = 0u64;
        let mut sent = 0u64;
        for b in out {
            let encoded = f.encoder.encode(&b.data)?;
            for i in 0..encoded.len() {
                let row = b.ids.value(i);
                let mut headers = None;
                if f.id_header {
                    let id = record_id(flow_id, row);
                    if f.exactly_once && Dedupe::seen(&mut self.dedupe, &id) {
                        skipped += 1;
                        continue;
                    }
                    headers = Some(id_header(&id));
                }
                if let Some(change) = Change::of(row).header() {
                    let change = Header {
                        key: CHANGE_HEADER,
                        value: Some(change),
                    };
                    headers = Some(match headers {
                        Some(h) => h.insert(change),
                        None => OwnedHeaders::new_with_capacity(1).insert(change),
                    });
                }
                self.sink
                    .send(&f.sink_topic, encoded.key(i), encoded.value(i), headers)?;
                sent += 1;
            }
        }
        self.counters.records_out.fetch_add(sent, Ordering::Relaxed);
        self.counters
            .duplicates_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        if ctx.late_rows > 0 {
            self.counters
                .late
                .fetch_add(ctx.late_rows, Ordering::Relaxed);
            for (late, reason) in ctx.late {
                self.dead_letter_rows(flow_id, &late, reason)?;
            }
        }
        Ok(())
    }

    /// Dead-letters rows an operator found late (window or OVER), as JSON of
    /// that operator's input, unless the source's late policy is drop.
    fn dead_letter_rows(&mut self, flow_id: u16, rows: &Batch, reason: &str) -> anyhow::Result<()> {
        if self.table.dead_letter_topic.is_none() || self.table.late_policy == LatePolicy::Drop {
            if warning_due() {
                warn!(
                    "source {}: {} row(s) dropped as {reason} ('late.policy' = 'drop'; counted in the late metric)",
                    self.table.name,
                    rows.num_rows()
                );
            }
            return Ok(());
        }
        let encoder = JsonEncoder::new(rows.data.schema(), vec![]);
        let encoded = encoder.encode(&rows.data)?;
        for i in 0..encoded.len() {
            let row_id = rows.ids.value(i);
            let origin = parse_source_row_id(row_id);
            self.send_dead_letter(
                record_id(flow_id, row_id),
                encoded.value(i),
                None,
                reason,
                origin,
            )?;
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        meta: &RecordMeta,
    ) -> anyhow::Result<()> {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if self.table.dead_letter_topic.is_none() {
            if warning_due() {
                let place = if self.table.path.is_some() {
                    let (file, line) = crate::files::locate(&self.files, meta.offset);
                    format!("{file} line {line}")
                } else {
                    format!("partition {} offset {}", meta.partition, meta.offset)
                };
                warn!(
                    "source {}: bad record at {place}: {reason} (no 'dead-letter.topic'; counted and dropped)",
                    self.table.name
                );
            }
            return Ok(());
        }
        let id = record_id(
            DECODE_FLOW | self.settings.source_index,
            &source_row_id(meta.partition, meta.offset),
        );
        self.send_dead_letter(id, value, key, reason, Some((meta.partition, meta.offset)))
    }

    fn send_dead_letter(
        &mut self,
        id: [u8; RECORD_ID_LEN],
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        origin: Option<(i32, i64)>,
    ) -> anyhow::Result<()> {
        let Some(topic) = &self.table.dead_letter_topic else {
            return Ok(());
        };
        if Dedupe::seen(&mut self.dedupe, &id) {
            self.counters
                .duplicates_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut headers = id_header(&id)
            .insert(Header {
                key: DLQ_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: "weir.source.topic",
                // In shuffle mode the record's partition and offset are its
                // origin's, in the source topic.
                value: Some(
                    self.settings
                        .shuffle
                        .as_ref()
                        .map_or(&self.table.topic, |o| &o.source_topic),
                ),
            });
        if let (Some((_, offset)), Some(_)) = (origin, &self.table.path) {
            let (file, line) = crate::files::locate(&self.files, offset);
            headers = headers
                .insert(Header {
                    key: "weir.source.file",
                    value: Some(&file),
                })
                .insert(Header {
                    key: "weir.source.line",
                    value: Some(&line.to_string()),
                });
        } else if let Some((partition, offset)) = origin {
            headers = headers
                .insert(Header {
                    key: "weir.source.partition",
                    value: Some(&partition.to_string()),
                })
                .insert(Header {
                    key: "weir.source.offset",
                    value: Some(&offset.to_string()),
                });
        }
        self.sink.send(topic, key, value, Some(headers))
    }
}

/// Where a partition without a checkpointed or committed offset starts: its
/// first or next offset, by the source's startup mode.
pub(crate) fn startup_offset<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    table: &KafkaTable,
    partition: i32,
) -> anyhow::Result<i64> {
    let (low, high) = consumer
        .fetch_watermarks(&table.topic, partition, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "reading the offsets of '{}' partition {partition}",
                table.topic
            )
        })?;
    Ok(if table.startup_mode == StartupMode::Latest {
        high.max(0)
    } else {
        low.max(0)
    })
}

/// Appends a record's value to `buf` (newline-separated, its range in
/// `spans`) and its metadata to `metas`: a batch as the decoder takes it.
pub(crate) fn push_record(
    m: &rdkafka::message::BorrowedMessage<'_>,
    buf: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize)>,
    metas: &mut Vec<RecordMeta>,
) {
    let start = buf.len();
    buf.extend_from_slice(m.payload().unwrap_or_default());
    spans.push((start, buf.len()));
    buf.push(b'\n');
    metas.push(RecordMeta {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(Into::into),
    });
}

fn id_header(id: &[u8]) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(4).insert(Header {
        key: ID_HEADER,
        value: Some(id),
    })
}

/// What a stateful stage needs a row for, in event time.
enum Hold {
    /// Until the last window the row is in closes (fires, plus allowed lateness).
    Window(Assigner, i64),
    /// Until no later row's frame reaches it (ROWS frames: until it is emitted).
    Over { horizon_ms: i64 },
}

impl Hold {
    fn until(&self, ts: i64) -> i64 {
        match self {
            Hold::Window(w, lateness) => w.last_end(ts).saturating_sub(1).saturating_add(*lateness),
            Hold::Over { horizon_ms } => ts.saturating_add(*horizon_ms),
        }
    }
}

/// Holds each decoded row's offset until the watermark passes the last moment
/// a stateful stage needs it, so a restart without state replays what it held.
fn hold_windowed_rows(
    decoded: &Decoded,
    time_column: usize,
    metas: &[RecordMeta],
    windows: &[Hold],
    fired_through: i64,
    held: &mut HeldOffsets,
) {
    let times = decoded
        .batch
        .column(time_column)
        .as_primitive::<TimestampMillisecondType>();
    for (r, &input) in decoded.rows.iter().enumerate() {
        let ts = times.value(r);
        let until = windows
            .iter()
            .map(|w| w.until(ts))
            .max()
            .unwrap_or(i64::MIN);
        if until > fired_through {
            let m = &metas[input];
            held.hold(m.partition, m.offset, until);
        }
    }
}

/// Rate-limits the "bad record dropped" warning to one every few seconds.
fn warning_due() -> bool {
    use std::sync::Mutex;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(5));
    if due {
        *last = Some(Instant::now());
    }
    due
}
