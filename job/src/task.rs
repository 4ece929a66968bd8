//! A source task: one thread that reads one Kafka source table and runs every
//! flow reading it.
//!
//! ```text
//! poll (up to batch size or linger) -> decode (bad -> dead letters)
//!   -> arrival watermark per row -> each flow's chain -> encode -> produce
//! watermark advanced -> chains emit fired windows -> produce
//! every checkpoint interval: flush the producer, then commit input offsets
//! ```
//! Offsets are committed only after the output they produced is acknowledged,
//! so a crash replays input rather than losing output (at-least-once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};
use weir_operators::decode::Decoded;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::window::Assigner;
use weir_operators::{
    Batch, Chain, Context, JsonDecoder, JsonEncoder, RecordMeta, WatermarkTracker,
};
use weir_sql::{Flow, KafkaTable, Stage, StartupMode};
use weir_state::{HeldOffsets, InputPosition};

use crate::kafka::consumer_config;

/// Counts delivery outcomes; a failed delivery fails the next flush.
#[derive(Default)]
pub struct SinkContext {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
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
}

impl Sink {
    pub fn new(config: &rdkafka::ClientConfig) -> anyhow::Result<Self> {
        let producer = config
            .create_with_context(SinkContext::default())
            .context("creating the Kafka producer")?;
        Ok(Self { producer })
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
    pub fn flush(&self) -> anyhow::Result<()> {
        loop {
            match self.producer.flush(Duration::from_secs(30)) {
                Ok(()) => break,
                Err(KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut)) => {
                    warn!(
                        "the producer is still waiting for acknowledgements (broker down?); retrying"
                    );
                }
                Err(e) => bail!("flushing the producer: {e}"),
            }
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
}

pub struct FlowRuntime {
    pub flow: Flow,
    pub chain: Chain,
    pub encoder: JsonEncoder,
    pub sink_topic: String,
}

pub struct TaskSettings {
    pub group_id: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub checkpoint_interval: Duration,
    pub idle_timeout: Option<Duration>,
}

pub struct SourceTask {
    pub table: KafkaTable,
    pub flows: Vec<FlowRuntime>,
    pub sink: Arc<Sink>,
    pub stop: Arc<AtomicBool>,
    pub settings: TaskSettings,
    pub counters: Arc<TaskCounters>,
}

const DLQ_REASON: &str = "weir.error";

impl SourceTask {
    pub fn run(mut self) -> anyhow::Result<()> {
        let table = self.table.clone();
        let consumer: BaseConsumer = consumer_config(&table, &self.settings.group_id)
            .create()
            .context("creating the Kafka consumer")?;
        let md = consumer
            .fetch_metadata(Some(&table.topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of source topic '{}'", table.topic))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == table.topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            bail!("source topic '{}' does not exist", table.topic);
        }
        let n_partitions = partitions.iter().copied().max().unwrap_or(0) as usize + 1;
        // Committed offsets are looked up explicitly rather than through
        // librdkafka's "stored" offset, which does not resume at the committed
        // offset on every broker (tansu).
        let committed: std::collections::HashMap<i32, i64> =
            if table.startup_mode == StartupMode::GroupOffsets {
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
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let start = match (table.startup_mode, committed.get(p)) {
                (StartupMode::Earliest, _) | (StartupMode::GroupOffsets, None) => Offset::Beginning,
                (StartupMode::Latest, _) => Offset::End,
                (StartupMode::GroupOffsets, Some(o)) => Offset::Offset(*o),
            };
            tpl.add_partition_offset(&table.topic, *p, start)?;
        }
        consumer
            .assign(&tpl)
            .context("assigning source partitions")?;
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

        let decoder = JsonDecoder::new(&table);
        let now = Instant::now();
        let mut tracker = WatermarkTracker::new(
            n_partitions,
            table.watermark.map(|w| w.delay_ms).unwrap_or(0),
            self.settings.idle_timeout,
            now,
        );
        // Partitions that do not exist never hold the watermark back.
        for p in 0..n_partitions as i32 {
            if !partitions.contains(&p) {
                tracker.exclude(p as usize, now);
            }
        }
        let mut finished = vec![false; n_partitions];
        let mut position = InputPosition::default();
        // Windows whose rows must stay uncommitted until they fire.
        let windows: Vec<Assigner> = self
            .flows
            .iter()
            .flat_map(|f| f.flow.stages.iter())
            .filter_map(|s| match s {
                Stage::WindowAggregate(w) => Some(Assigner::new(w.kind, w.offset_ms)),
                _ => None,
            })
            .collect();
        let mut held = HeldOffsets::default();
        let mut fired_through = START_OF_TIME;
        let mut last_checkpoint = Instant::now();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(self.settings.batch_size);
        let mut metas: Vec<RecordMeta> = Vec::with_capacity(self.settings.batch_size);
        let mut last_error_log = Instant::now() - Duration::from_secs(60);

        loop {
            if self.stop.load(Ordering::Relaxed) {
                info!("source {}: stopping", table.name);
                break;
            }
            buf.clear();
            spans.clear();
            metas.clear();
            let deadline = Instant::now() + self.settings.linger;
            while spans.len() < self.settings.batch_size {
                let timeout = if spans.is_empty() {
                    Duration::from_millis(50)
                } else {
                    deadline.saturating_duration_since(Instant::now())
                };
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(m)) => {
                        let p = m.partition();
                        if finished.get(p as usize).copied().unwrap_or(false) {
                            continue;
                        }
                        let start = buf.len();
                        if let Some(payload) = m.payload() {
                            buf.extend_from_slice(payload);
                        }
                        spans.push((start, buf.len()));
                        buf.push(b'\n');
                        metas.push(RecordMeta {
                            partition: p,
                            offset: m.offset(),
                            timestamp: m.timestamp().to_millis(),
                            key: m.key().map(Into::into),
                        });
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        if table.bounded && !finished[p as usize] {
                            finished[p as usize] = true;
                            debug!("source {}: partition {p} reached its end", table.name);
                            let mut pause = TopicPartitionList::new();
                            pause.add_partition(&table.topic, p);
                            let _ = consumer.pause(&pause);
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
                let decoded = self.process_records(&decoder, &buf, &spans, &metas, &mut tracker)?;
                if let (false, Some(w)) = (windows.is_empty(), table.watermark) {
                    hold_windowed_rows(
                        &decoded,
                        w.column,
                        &metas,
                        &windows,
                        fired_through,
                        &mut held,
                    );
                }
                for m in &metas {
                    position.processed(m.partition, m.offset);
                }
            }
            // A bounded partition that has ended keeps holding the watermark at
            // its last value until every partition has ended: results then do
            // not depend on how the broker interleaves partitions.
            let wm = tracker.tick(Instant::now());
            if wm > fired_through {
                fired_through = wm;
                self.advance_watermark(wm)?;
                held.release_through(wm);
            }
            if table.bounded
                && finished
                    .iter()
                    .enumerate()
                    .all(|(p, f)| *f || !partitions.contains(&(p as i32)))
            {
                if fired_through < END_OF_TIME {
                    self.advance_watermark(END_OF_TIME)?;
                    held.release_through(END_OF_TIME);
                }
                info!("source {}: reached the end of bounded input", table.name);
                break;
            }
            if last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                self.commit(&consumer, &held.committable(&position))?;
                last_checkpoint = Instant::now();
            }
        }
        self.commit(&consumer, &held.committable(&position))?;
        Ok(())
    }

    /// Flushes the sink, then commits `offsets` (next offset to read, per
    /// partition). Rows still in open windows are excluded: see HeldOffsets.
    fn commit(&self, consumer: &BaseConsumer, offsets: &[(i32, i64)]) -> anyhow::Result<()> {
        self.sink.flush()?;
        if offsets.is_empty() {
            return Ok(());
        }
        debug!("source {}: committing offsets {offsets:?}", self.table.name);
        let mut tpl = TopicPartitionList::new();
        for &(p, next) in offsets {
            tpl.add_partition_offset(&self.table.topic, p, Offset::Offset(next))?;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
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
            self.dead_letter(&buf[s..e], m.key.as_deref(), &bad.reason, Some(m))?;
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
        for i in 0..self.flows.len() {
            let batch = Batch::new(decoded.batch.clone(), arrival.clone());
            let mut ctx = Context::default();
            let out = self.flows[i].chain.process(batch, &mut ctx)?;
            self.emit(i, out, ctx)?;
        }
        Ok(decoded)
    }

    fn advance_watermark(&mut self, wm: i64) -> anyhow::Result<()> {
        for i in 0..self.flows.len() {
            let mut ctx = Context::default();
            let out = self.flows[i].chain.advance_watermark(wm, &mut ctx)?;
            self.emit(i, out, ctx)?;
        }
        Ok(())
    }

    fn emit(&mut self, flow: usize, out: Vec<Batch>, ctx: Context) -> anyhow::Result<()> {
        let f = &self.flows[flow];
        for b in out {
            let encoded = f.encoder.encode(&b.data)?;
            for i in 0..encoded.len() {
                self.sink
                    .send(&f.sink_topic, encoded.key(i), encoded.value(i), None)?;
            }
            self.counters
                .records_out
                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        }
        if ctx.late_rows > 0 {
            self.counters
                .late
                .fetch_add(ctx.late_rows, Ordering::Relaxed);
            for late in ctx.late {
                self.dead_letter_rows(&late)?;
            }
        }
        Ok(())
    }

    fn dead_letter_rows(&self, rows: &RecordBatch) -> anyhow::Result<()> {
        if self.table.dead_letter_topic.is_none() {
            return Ok(());
        }
        let encoder = JsonEncoder::new(rows.schema(), vec![]);
        let encoded = encoder.encode(rows)?;
        for i in 0..encoded.len() {
            self.send_dead_letter(
                encoded.value(i),
                None,
                "late: every window this row belongs to had already fired",
                None,
            )?;
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        meta: Option<&RecordMeta>,
    ) -> anyhow::Result<()> {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if self.table.dead_letter_topic.is_none() {
            if warning_due() {
                warn!(
                    "source {}: bad record at partition {} offset {}: {reason} (no 'dead-letter.topic'; counted and dropped)",
                    self.table.name,
                    meta.map(|m| m.partition).unwrap_or(-1),
                    meta.map(|m| m.offset).unwrap_or(-1)
                );
            }
            return Ok(());
        }
        self.send_dead_letter(value, key, reason, meta)
    }

    fn send_dead_letter(
        &self,
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        meta: Option<&RecordMeta>,
    ) -> anyhow::Result<()> {
        let Some(topic) = &self.table.dead_letter_topic else {
            return Ok(());
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: DLQ_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: "weir.source.topic",
                value: Some(&self.table.topic),
            });
        if let Some(m) = meta {
            headers = headers
                .insert(Header {
                    key: "weir.source.partition",
                    value: Some(&m.partition.to_string()),
                })
                .insert(Header {
                    key: "weir.source.offset",
                    value: Some(&m.offset.to_string()),
                });
        }
        self.sink.send(topic, key, value, Some(headers))
    }
}

/// Holds each decoded row's offset until the watermark passes the last window
/// it can be in, so a restart replays what open windows held.
fn hold_windowed_rows(
    decoded: &Decoded,
    time_column: usize,
    metas: &[RecordMeta],
    windows: &[Assigner],
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
            .map(|w| w.last_start(ts).saturating_add(w.size() - 1))
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
