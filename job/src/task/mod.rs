//! A source task: one thread that reads one source table (a Kafka topic, or
//! files: `files.rs`) and runs every flow reading it.
//!
//! ```text
//! open the task's state store (restore.rs: the newest checkpoint, or the
//!   changelog's: state, offsets, watermark, output positions); exactly-once:
//!   read the ids of output written since that checkpoint, to skip them when
//!   the replay produces them again (dedupe.rs)
//! poll (input.rs: up to batch size or linger) -> decode (bad -> dead_letter.rs)
//!   -> arrival watermark per row -> each flow's chain -> encode -> produce (emit.rs)
//! watermark advanced -> chains emit fired windows -> produce
//! every checkpoint interval, at a graceful stop and at the end of bounded input
//!   (checkpoint.rs): operators write their state -> flush the producer ->
//!   checkpoint the store (state + offsets + watermark + output positions) ->
//!   commit offsets to the group (offsets.rs: rows open windows hold excluded)
//! ```
//! The checkpoint is the source of truth for where to resume; the consumer
//! group's committed offsets only serve monitoring and runs without state.

mod checkpoint;
mod dead_letter;
mod dedupe;
mod emit;
mod input;
mod offsets;
mod restore;
mod tables;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, Int64Array};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use tracing::info;
use weir_operators::decode::Decoded;
use weir_operators::ids::{id_array, source_row_id};
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{
    Batch, Chain, Context, JsonDecoder, JsonEncoder, RecordMeta, WatermarkTracker,
};
use weir_sql::{Flow, KafkaTable};
use weir_state::{TaskStore, fault};

use crate::changelog::Changelog;
use crate::counters::TaskCounters;
use crate::records::RawBatch;
use crate::shuffle::Origins;
use crate::sink::Sink;
use checkpoint::{Progress, checkpoint_due};
use dedupe::Dedupe;
use input::{Input, InputBatch};
use offsets::Hold;
use tables::Tables;

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

/// What a task holds while it runs, besides its flows and configuration.
struct Running {
    store: TaskStore,
    input: Input,
    decoder: JsonDecoder,
    tracker: WatermarkTracker,
    progress: Progress,
    /// What each stateful stage needs a row for (which offsets stay uncommitted).
    holds: Vec<Hold>,
    tables: Tables,
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

    pub fn run(mut self) -> anyhow::Result<()> {
        let Some(mut r) = self.start()? else {
            return Ok(());
        };
        let mut batch = InputBatch::with_capacity(self.settings.batch_size);
        let mut last_checkpoint = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                info!("source {}: stopping", self.table.name);
                break;
            }
            if self.poll_tables(&mut r.tables)? {
                self.advance_watermark(r.progress.fired_through)?;
            }
            self.read_batch(&mut r, &mut batch)?;
            if !batch.raw.is_empty() {
                self.process_batch(&mut r, &batch)?;
            }
            input::align(&mut r.input, &r.tracker, &self.table);
            input::apply_controls(&mut r, &mut batch.controls);
            if self.advance_to_input_watermark(&mut r)? {
                info!(
                    "source {}: reached the end of bounded input",
                    self.table.name
                );
                break;
            }
            if checkpoint_due(last_checkpoint.elapsed(), self.settings.checkpoint_interval) {
                self.checkpoint(&mut r)?;
                last_checkpoint = Instant::now();
                r.progress.log_skipped(&self.table.name);
            }
        }
        self.checkpoint(&mut r)?;
        if self.state.handover_lease.is_some()
            && let Some(cl) = &mut self.changelog
        {
            cl.release(&self.sink, r.progress.next_id - 1)?;
        }
        Ok(())
    }

    /// Restores the task's state, positions its input and reads its joined
    /// tables. `None`: asked to stop before it could take over its partition.
    fn start(&mut self) -> anyhow::Result<Option<Running>> {
        let discovered = self.discover_input()?;
        let Some((store, restored)) = self.restore()? else {
            return Ok(None);
        };
        let (input, starts) = self.open_input(discovered, restored.as_ref())?;
        let tracker = self.watermark_tracker(&input, restored.as_ref());
        let sink_positions = self.prepare_dedupe(restored.as_ref())?;
        let progress = Progress::new(
            restored.as_ref(),
            starts,
            sink_positions,
            self.settings.shuffle.clone(),
        );
        self.counters
            .set_positions(progress.position.next_offsets());
        let mut r = Running {
            store,
            input,
            decoder: JsonDecoder::new(&self.table),
            tracker,
            progress,
            holds: offsets::holds(&self.flows),
            tables: Tables::default(),
        };
        if restored.is_none() {
            // Where this run starts and what its outputs held, before any
            // output: a crash before the first interval then replays exactly.
            self.checkpoint(&mut r)?;
        }
        r.tables = self.open_tables()?;
        Ok(Some(r))
    }

    /// The watermark tracker over the input's partitions, restored from the
    /// checkpoint. In shuffle mode the watermark is over the origin
    /// partitions (the source topic's), as one process reading the source
    /// computes it.
    fn watermark_tracker(
        &self,
        input: &Input,
        restored: Option<&weir_state::CheckpointMeta>,
    ) -> WatermarkTracker {
        let now = Instant::now();
        let n_partitions = input.partition_slots();
        let mut tracker = WatermarkTracker::new(
            self.settings
                .shuffle
                .as_ref()
                .map_or(n_partitions, |o| o.partitions),
            self.table.watermark.map(|w| w.delay_ms).unwrap_or(0),
            self.settings.idle_timeout,
            now,
        );
        // Partitions that do not exist never hold the watermark back.
        if self.settings.shuffle.is_none() {
            for p in 0..n_partitions as i32 {
                if !input.partitions().contains(&p) {
                    tracker.exclude(p as usize, now);
                }
            }
        }
        if let Some(m) = restored {
            tracker.restore(
                m.max_event_times.iter().map(|(p, t)| (*p as usize, *t)),
                m.fired_through,
                now,
            );
        }
        tracker
    }

    /// Decodes a batch, runs it through every flow, and records how far the
    /// input has been processed.
    fn process_batch(&mut self, r: &mut Running, batch: &InputBatch) -> anyhow::Result<()> {
        let raw = &batch.raw;
        // In shuffle mode a record's identity is its origin's.
        let metas = if r.progress.origins.is_some() {
            &batch.origins
        } else {
            &raw.metas
        };
        let decoded = self.process_records(&r.decoder, raw, metas, &mut r.tracker)?;
        if let (false, Some(w)) = (r.holds.is_empty(), self.table.watermark) {
            offsets::hold_rows(
                &decoded,
                w.column,
                &raw.metas,
                &r.holds,
                r.progress.fired_through,
                &mut r.progress.held,
            );
        }
        for m in &raw.metas {
            r.progress.position.processed(m.partition, m.offset);
        }
        self.counters
            .set_positions(r.progress.position.next_offsets());
        if let Some(cl) = &mut self.changelog {
            cl.ship_full(&self.sink, &r.store, r.progress.next_id)?;
        }
        fault::point("after-batch");
        Ok(())
    }

    fn process_records(
        &mut self,
        decoder: &JsonDecoder,
        raw: &RawBatch,
        metas: &[RecordMeta],
        tracker: &mut WatermarkTracker,
    ) -> anyhow::Result<Decoded> {
        self.counters
            .records_in
            .fetch_add(raw.len() as u64, Ordering::Relaxed);
        let decoded = decoder.decode(&raw.buf, &raw.spans, metas)?;
        for bad in &decoded.bad {
            let m = &metas[bad.index];
            self.dead_letter(raw.value(bad.index), m.key.as_deref(), &bad.reason, m)?;
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(decoded);
        }
        let arrival = Arc::new(self.arrival_watermarks(&decoded, metas, tracker));
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

    /// The watermark each row arrived under: the tracker's before the row's
    /// own event time is seen, row by row.
    fn arrival_watermarks(
        &self,
        decoded: &Decoded,
        metas: &[RecordMeta],
        tracker: &mut WatermarkTracker,
    ) -> Int64Array {
        let Some(w) = self.table.watermark else {
            return Int64Array::from_value(START_OF_TIME, decoded.batch.num_rows());
        };
        let now = Instant::now();
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

    /// Moves every flow to the input's watermark. A bounded partition that
    /// has ended keeps holding the watermark at its last value until every
    /// partition has ended: results then do not depend on how the broker
    /// interleaves partitions. Returns true once all input has ended (the
    /// watermark then goes to the end of time: every window fires).
    fn advance_to_input_watermark(&mut self, r: &mut Running) -> anyhow::Result<bool> {
        let wm = r.tracker.tick(Instant::now());
        self.advance_progress(r, wm)?;
        if !input::all_ended(&r.input, &r.progress, &self.table) {
            return Ok(false);
        }
        self.advance_progress(r, END_OF_TIME)?;
        Ok(true)
    }

    fn advance_progress(&mut self, r: &mut Running, wm: i64) -> anyhow::Result<()> {
        if wm > r.progress.fired_through {
            r.progress.fired_through = wm;
            self.advance_watermark(wm)?;
            r.progress.held.release_through(wm);
        }
        Ok(())
    }

    /// The topics this task writes to.
    fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.flows.iter().map(|f| f.sink_topic.clone()).collect();
        topics.extend(self.table.dead_letter_topic.iter().cloned());
        topics.sort();
        topics.dedup();
        topics
    }
}

/// The column family of a flow's stateful operator (named by its place in
/// the chain, so the plan fingerprint covers it).
fn column_family(f: &FlowRuntime, op: usize) -> String {
    format!("flow{}.op{op}", f.flow.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_due_at_the_interval() {
        let interval = Duration::from_secs(10);
        assert!(!checkpoint_due(Duration::from_secs(9), interval));
        assert!(checkpoint_due(Duration::from_secs(10), interval));
        assert!(checkpoint_due(Duration::from_secs(11), interval));
    }
}
