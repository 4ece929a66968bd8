//! Where a source task's records come from: its partitions, where each
//! starts, and reading a batch (with watermark alignment holding back
//! partitions that run ahead, and a repartition topic's control records).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::Consumer;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};
use weir_operators::RecordMeta;
use weir_operators::WatermarkTracker;
use weir_operators::watermark::Alignment;
use weir_sql::{KafkaTable, Stage, StartupMode};
use weir_state::CheckpointMeta;

use super::checkpoint::Progress;
use super::{FlowRuntime, Running, SourceTask};
use crate::files::FileInput;
use crate::kafka::{QuietEof, WeirConsumer, consumer_config, startup_offset};
use crate::records::RawBatch;
use crate::shuffle::{Origins, Shuffled};

/// A source's input: a Kafka consumer or files, and how far each partition
/// is read.
pub(super) struct Input {
    source: Source,
    /// The partitions this task reads.
    partitions: Vec<i32>,
    /// Per partition number (0 to the highest read): whether bounded input
    /// has reached its end there.
    finished: Vec<bool>,
    /// Watermark alignment, when partitions are read from queues of their own.
    alignment: Option<Aligned>,
    last_error_log: Instant,
}

enum Source {
    Kafka(KafkaInput),
    /// A filesystem source: one partition (0) whose offsets name lines.
    Files(FileInput),
}

struct Aligned {
    alignment: Alignment,
    /// Whether holding a partition back has been logged (once per run).
    logged: bool,
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
    next: usize,
}

/// The input's partitions, found before the state is opened (a source that
/// does not exist fails the task before it touches its state).
pub(super) struct Discovered {
    consumer: Option<WeirConsumer>,
    partitions: Vec<i32>,
}

/// One batch as read: the records, and in shuffle mode their origins (the
/// source partition and offset each came from, beside `raw.metas`, which
/// hold their place in the repartition topic) and the control records that
/// arrived behind them.
pub(super) struct InputBatch {
    pub raw: RawBatch,
    pub origins: Vec<RecordMeta>,
    pub controls: Vec<Shuffled>,
}

impl InputBatch {
    pub fn with_capacity(records: usize) -> Self {
        Self {
            raw: RawBatch::with_capacity(records),
            origins: Vec::new(),
            controls: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.raw.clear();
        self.origins.clear();
    }
}

/// Where a partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    At(i64),
    /// By the source's startup mode (earliest or latest offset).
    StartupMode,
}

/// The checkpoint's offset wins; without one, the group's committed offset
/// under `group-offsets`; else the startup mode decides.
fn start_of(checkpointed: Option<i64>, mode: StartupMode, committed: Option<i64>) -> Start {
    match (checkpointed, mode, committed) {
        (Some(o), _, _) => Start::At(o),
        (None, StartupMode::GroupOffsets, Some(o)) => Start::At(o),
        _ => Start::StartupMode,
    }
}

/// Whether each partition is read from a queue of its own, so that watermark
/// alignment can hold back one that runs ahead: only when every flow waits
/// for the watermark (a stateless flow would be held up for nothing), and
/// not for a repartition topic, whose records carry their origin's time.
fn reads_aligned(
    table: &KafkaTable,
    flows: &[FlowRuntime],
    shuffle: bool,
    partitions: usize,
) -> bool {
    table.watermark.is_some()
        && table.alignment_max_drift_ms.is_some()
        && !shuffle
        && partitions > 1
        && !flows.is_empty()
        && flows.iter().all(|f| {
            f.flow
                .stages
                .iter()
                .any(|s| matches!(s, Stage::WindowAggregate(_) | Stage::Over(_)))
        })
}

/// What a record read from a repartition topic means for the batch.
#[derive(Debug, PartialEq, Eq)]
enum ShuffleStep {
    /// A new record from this origin: process it.
    Process { partition: i32, offset: i64 },
    /// A replay of a record already applied, or a record no map task wrote:
    /// skip it.
    Skip { foreign: bool },
    /// A control record: it ends the batch, after the data before it.
    Control(Shuffled),
}

fn shuffle_step(record: Shuffled, origins: &mut Origins) -> ShuffleStep {
    match record {
        Shuffled::Record { partition, offset } => {
            if origins.accept(partition, offset) {
                ShuffleStep::Process { partition, offset }
            } else {
                ShuffleStep::Skip { foreign: false }
            }
        }
        Shuffled::Foreign => ShuffleStep::Skip { foreign: true },
        control => ShuffleStep::Control(control),
    }
}

impl Input {
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Partition numbers from 0 to the highest read.
    pub fn partition_slots(&self) -> usize {
        self.finished.len()
    }

    pub fn consumer(&self) -> Option<&WeirConsumer> {
        match &self.source {
            Source::Kafka(k) => Some(&*k.consumer),
            Source::Files(_) => None,
        }
    }
}

impl KafkaInput {
    /// The next message or event, from a partition not in `held` (indexed by
    /// partition), waiting up to `timeout`.
    fn poll(
        &mut self,
        timeout: Duration,
        held: &[bool],
    ) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        if self.queues.is_empty() {
            return self.consumer.poll(timeout);
        }
        let deadline = Instant::now() + timeout;
        let n = self.queues.len();
        loop {
            for k in 0..n {
                let i = (self.next + k) % n;
                let p = self.queues[i].0;
                if held.get(p as usize).copied().unwrap_or(false) {
                    continue;
                }
                if let Some(r) = self.queues[i].1.poll(Duration::ZERO) {
                    self.next = (i + 1) % n;
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

impl SourceTask {
    /// The source's partitions: the topic's (or the cluster task's own), or
    /// partition 0 of a filesystem source.
    pub(super) fn discover_input(&mut self) -> anyhow::Result<Discovered> {
        let table = &self.table;
        let (consumer, partitions) = match &table.path {
            Some(path) => {
                self.files = crate::files::list(path)?;
                (None, vec![0])
            }
            None => {
                let consumer: WeirConsumer = consumer_config(table, &self.settings.group_id)
                    .create_with_context(QuietEof)
                    .context("creating the Kafka consumer")?;
                let md = consumer
                    .fetch_metadata(Some(&table.topic), Duration::from_secs(10))
                    .with_context(|| {
                        format!("reading metadata of source topic '{}'", table.topic)
                    })?;
                let partitions = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == table.topic)
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    .unwrap_or_default();
                (Some(consumer), partitions)
            }
        };
        if partitions.is_empty() {
            bail!("source topic '{}' does not exist", table.topic);
        }
        let partitions = match &self.settings.partitions {
            None => partitions,
            Some(only) => {
                if let Some(p) = only.iter().find(|p| !partitions.contains(p)) {
                    bail!("source topic '{}' has no partition {p}", table.topic);
                }
                only.clone()
            }
        };
        Ok(Discovered {
            consumer,
            partitions,
        })
    }

    /// Positions the input: every partition gets a concrete start offset, so
    /// every checkpoint (the first one is taken before any input is read)
    /// names them all.
    pub(super) fn open_input(
        &self,
        discovered: Discovered,
        restored: Option<&CheckpointMeta>,
    ) -> anyhow::Result<(Input, BTreeMap<i32, i64>)> {
        let table = &self.table;
        let Discovered {
            consumer,
            partitions,
        } = discovered;
        let committed = match &consumer {
            Some(consumer)
                if restored.is_none() && table.startup_mode == StartupMode::GroupOffsets =>
            {
                committed_offsets(consumer, table, &partitions)?
            }
            _ => HashMap::new(),
        };
        let mut starts = BTreeMap::new();
        for &p in &partitions {
            let checkpointed = restored.and_then(|m| m.next_offsets.get(&p).copied());
            let start = match (
                start_of(checkpointed, table.startup_mode, committed.get(&p).copied()),
                &consumer,
            ) {
                (Start::At(o), _) => o,
                (Start::StartupMode, Some(consumer)) => startup_offset(consumer, table, p)?,
                (Start::StartupMode, None) => 0,
            };
            starts.insert(p, start);
        }
        let slots = partitions.iter().copied().max().unwrap_or(0) as usize + 1;
        let source = match consumer {
            Some(consumer) => Source::Kafka(self.assign(consumer, &partitions, &starts)?),
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
                Source::Files(FileInput::open(self.files.clone(), start)?)
            }
        };
        let alignment = match (&source, table.alignment_max_drift_ms) {
            (Source::Kafka(k), Some(drift)) if !k.queues.is_empty() => Some(Aligned {
                alignment: Alignment::new(slots, drift as i64),
                logged: false,
            }),
            _ => None,
        };
        let input = Input {
            source,
            partitions,
            finished: vec![false; slots],
            alignment,
            last_error_log: Instant::now() - Duration::from_secs(60),
        };
        Ok((input, starts))
    }

    fn assign(
        &self,
        consumer: WeirConsumer,
        partitions: &[i32],
        starts: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<KafkaInput> {
        let table = &self.table;
        let mut tpl = TopicPartitionList::new();
        for (&p, &start) in starts {
            tpl.add_partition_offset(&table.topic, p, Offset::Offset(start))?;
        }
        consumer
            .assign(&tpl)
            .context("assigning source partitions")?;
        let consumer = Arc::new(consumer);
        let mut queues = Vec::new();
        if reads_aligned(
            table,
            &self.flows,
            self.settings.shuffle.is_some(),
            partitions.len(),
        ) {
            for &p in partitions {
                let q = consumer
                    .split_partition_queue(&table.topic, p)
                    .with_context(|| format!("a queue for partition {p} of '{}'", table.topic))?;
                queues.push((p, q));
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
        Ok(KafkaInput {
            consumer,
            queues,
            next: 0,
        })
    }

    /// Reads up to a batch: until the batch size, the linger time after the
    /// first record, a control record, or (bounded) a partition's end.
    pub(super) fn read_batch(&self, r: &mut Running, batch: &mut InputBatch) -> anyhow::Result<()> {
        batch.clear();
        let table = &self.table;
        let batch_size = self.settings.batch_size;
        let input = &mut r.input;
        // Disjoint from the fields the loop changes (source, finished).
        let held = input
            .alignment
            .as_ref()
            .map_or(&[][..], |a| a.alignment.held());
        let deadline = Instant::now() + self.settings.linger;
        while batch.raw.len() < batch_size && batch.controls.is_empty() {
            let kafka = match &mut input.source {
                Source::Kafka(k) => k,
                Source::Files(files) => {
                    if !files.read(batch_size - batch.raw.len(), &mut batch.raw)? {
                        input.finished[0] = true;
                    }
                    break;
                }
            };
            let timeout = if batch.raw.is_empty() {
                Duration::from_millis(50)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match kafka.poll(timeout, held) {
                None => break,
                Some(Ok(m)) => {
                    let p = m.partition();
                    if input.finished.get(p as usize).copied().unwrap_or(false) {
                        continue;
                    }
                    if let Some(origins) = &mut r.progress.origins {
                        let step = shuffle_step(crate::shuffle::classify(&m), origins);
                        match step {
                            ShuffleStep::Process { partition, offset } => {
                                if partition < 0 || partition as usize >= origins.partitions {
                                    bail!(
                                        "source {}: '{}' holds a record from source partition {partition}, \
                                         but the source had {} partitions when the job started; \
                                         a source that gained partitions needs the job submitted again under a new name",
                                        table.name,
                                        table.topic,
                                        origins.partitions
                                    );
                                }
                                batch.origins.push(RecordMeta {
                                    partition,
                                    offset,
                                    timestamp: m.timestamp().to_millis(),
                                    key: m.key().map(Into::into),
                                });
                            }
                            ShuffleStep::Skip { foreign } => {
                                if foreign {
                                    warn!(
                                        "source {}: record at offset {} of '{}' partition {p} has no weir header; skipped",
                                        table.name,
                                        m.offset(),
                                        table.topic
                                    );
                                }
                                r.progress.position.processed(p, m.offset());
                                continue;
                            }
                            ShuffleStep::Control(control) => {
                                batch.controls.push(control);
                                r.progress.position.processed(p, m.offset());
                                continue;
                            }
                        }
                    }
                    batch.raw.push(&m);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if table.bounded && !input.finished[p as usize] {
                        input.finished[p as usize] = true;
                        debug!("source {}: partition {p} reached its end", table.name);
                        let mut pause = TopicPartitionList::new();
                        pause.add_partition(&table.topic, p);
                        let _ = kafka.consumer.pause(&pause);
                    }
                    if batch.raw.is_empty() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    if input.last_error_log.elapsed() > Duration::from_secs(5) {
                        warn!("source {}: {e} (retrying)", table.name);
                        input.last_error_log = Instant::now();
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Watermark alignment, after every round, batch or not: the slowest
/// partition may have ended or gone idle without a record, and what it held
/// back must then be read again.
pub(super) fn align(input: &mut Input, tracker: &WatermarkTracker, table: &KafkaTable) {
    let Some(a) = &mut input.alignment else {
        return;
    };
    let (ahead, _) = a
        .alignment
        .update(&tracker.partition_times(Instant::now()), &input.finished);
    if !ahead.is_empty() && !a.logged {
        info!(
            "source {}: partition(s) {ahead:?} ran more than {} s of event time ahead of the slowest; not read until within half of that ('scan.watermark.alignment.max-drift')",
            table.name,
            table.alignment_max_drift_ms.unwrap_or_default() / 1000
        );
        a.logged = true;
    }
}

/// A repartition topic's control records: an origin partition's event time
/// (moves the watermark) or its end.
pub(super) fn apply_controls(r: &mut Running, controls: &mut Vec<Shuffled>) {
    for control in controls.drain(..) {
        match (control, &mut r.progress.origins) {
            (Shuffled::MaxEventTime { partition, time }, Some(o))
                if partition >= 0 && (partition as usize) < o.partitions =>
            {
                r.tracker.observe(partition as usize, time, Instant::now());
            }
            (Shuffled::End { partition }, Some(o)) => {
                o.ended.insert(partition);
            }
            _ => {}
        }
    }
}

/// Whether all input has ended: every origin of a repartition topic, or
/// every partition of a bounded source.
pub(super) fn all_ended(input: &Input, progress: &Progress, table: &KafkaTable) -> bool {
    match &progress.origins {
        Some(o) => o.all_ended(),
        None => table.bounded && every_partition_finished(&input.finished, &input.partitions),
    }
}

fn every_partition_finished(finished: &[bool], partitions: &[i32]) -> bool {
    finished
        .iter()
        .enumerate()
        .all(|(p, f)| *f || !partitions.contains(&(p as i32)))
}

/// The group's committed offsets of `partitions`, looked up explicitly rather
/// than through librdkafka's "stored" offset, which does not resume at the
/// committed offset on every broker (tansu).
fn committed_offsets(
    consumer: &WeirConsumer,
    table: &KafkaTable,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, i64>> {
    let mut query = TopicPartitionList::new();
    for p in partitions {
        query.add_partition(&table.topic, *p);
    }
    Ok(consumer
        .committed_offsets(query, Duration::from_secs(10))
        .context("reading the group's committed offsets")?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_beats_the_group_which_beats_the_startup_mode() {
        use StartupMode::*;
        assert_eq!(start_of(Some(5), GroupOffsets, Some(9)), Start::At(5));
        assert_eq!(start_of(Some(5), Earliest, None), Start::At(5));
        assert_eq!(start_of(None, GroupOffsets, Some(9)), Start::At(9));
        assert_eq!(start_of(None, GroupOffsets, None), Start::StartupMode);
        // Committed offsets count only under group-offsets.
        assert_eq!(start_of(None, Earliest, Some(9)), Start::StartupMode);
        assert_eq!(start_of(None, Latest, Some(9)), Start::StartupMode);
    }

    #[test]
    fn replays_and_foreign_records_are_skipped_controls_end_the_batch() {
        let mut o = Origins {
            partitions: 2,
            ..Default::default()
        };
        let rec = |partition, offset| Shuffled::Record { partition, offset };
        assert_eq!(
            shuffle_step(rec(0, 3), &mut o),
            ShuffleStep::Process {
                partition: 0,
                offset: 3
            }
        );
        assert_eq!(
            shuffle_step(rec(0, 3), &mut o),
            ShuffleStep::Skip { foreign: false }
        );
        assert_eq!(
            shuffle_step(rec(0, 2), &mut o),
            ShuffleStep::Skip { foreign: false }
        );
        assert_eq!(o.skipped, 2);
        assert_eq!(
            shuffle_step(Shuffled::Foreign, &mut o),
            ShuffleStep::Skip { foreign: true }
        );
        let end = Shuffled::End { partition: 1 };
        assert_eq!(shuffle_step(end, &mut o), ShuffleStep::Control(end));
    }

    #[test]
    fn partitions_not_read_do_not_keep_the_input_open() {
        assert!(every_partition_finished(&[true, false, true], &[0, 2]));
        assert!(!every_partition_finished(&[true, false, false], &[0, 2]));
        assert!(every_partition_finished(&[], &[]));
    }
}
