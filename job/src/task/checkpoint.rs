//! Checkpoints: the task's state, input offsets, watermark and output
//! positions made durable together, then the group's offsets committed.
//!
//! ```text
//! operators write their in-memory state to the store
//!   -> changelog: ship the rest of the changes (its chain for this checkpoint)
//!   -> flush the producer (output and dead letters acknowledged)
//!   -> the checkpoint's meta -> changelog commit record -> (transaction commit)
//!   -> the store's checkpoint (the local commit point)
//!   -> group offsets (what open windows hold excluded), for monitoring
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};
use weir_operators::watermark::START_OF_TIME;
use weir_state::{CheckpointMeta, HeldOffsets, InputPosition, fault};

use super::{Running, SourceTask};
use crate::shuffle::Origins;

/// Per topic, per partition: one past the last offset written.
pub(super) type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// What a checkpoint records, as the task loop advances it.
pub(super) struct Progress {
    pub next_id: u64,
    pub position: InputPosition,
    pub held: HeldOffsets,
    pub fired_through: i64,
    pub sink_positions: Positions,
    /// Shuffle mode: what has been applied of each origin partition.
    pub origins: Option<Origins>,
    /// Replays skipped by origin offset, as last logged.
    skipped_logged: u64,
}

impl Progress {
    /// Where a run starts: the restored checkpoint's progress, or nothing
    /// processed at `starts`.
    pub fn new(
        restored: Option<&CheckpointMeta>,
        starts: BTreeMap<i32, i64>,
        sink_positions: Positions,
        origins: Option<Origins>,
    ) -> Self {
        Self {
            next_id: restored.map(|m| m.id + 1).unwrap_or(1),
            position: InputPosition::starting_at(starts),
            held: restored.map(|m| m.held.clone()).unwrap_or_default(),
            fired_through: restored.map(|m| m.fired_through).unwrap_or(START_OF_TIME),
            sink_positions,
            origins: origins.map(|mut o| {
                if let Some(m) = restored {
                    o.applied = m.origin_offsets.clone();
                    o.ended = m.origins_ended.iter().copied().collect();
                }
                o
            }),
            skipped_logged: 0,
        }
    }

    /// Logs the replayed records skipped by origin offset since the last call.
    pub fn log_skipped(&mut self, source: &str) {
        if let Some(o) = &self.origins
            && o.skipped > self.skipped_logged
        {
            info!(
                "source {source}: skipped {} records a map task sent again (by origin offset)",
                o.skipped - self.skipped_logged
            );
            self.skipped_logged = o.skipped;
        }
    }
}

/// Whether the next checkpoint is due, `since_last` after the last one.
pub(super) fn checkpoint_due(since_last: Duration, interval: Duration) -> bool {
    since_last >= interval
}

/// Takes in the positions the producer has had acknowledged: a partition's
/// position only moves forward.
pub(super) fn advance_positions(known: &mut Positions, acknowledged: Positions) {
    for (topic, partitions) in acknowledged {
        let known = known.entry(topic).or_default();
        for (p, next) in partitions {
            let at = known.entry(p).or_insert(next);
            *at = (*at).max(next);
        }
    }
}

impl SourceTask {
    /// Makes the task's state, input offsets, watermark and output positions
    /// durable together, then commits the group's offsets (rows still in open
    /// windows excluded: see HeldOffsets) for monitoring and stateless runs.
    pub(super) fn checkpoint(&mut self, r: &mut Running) -> anyhow::Result<()> {
        let started = Instant::now();
        fault::point("checkpoint-start");
        for f in &mut self.flows {
            f.chain.flush_state()?;
        }
        fault::point("after-state-flush");
        let progress = &mut r.progress;
        let chain = match &mut self.changelog {
            Some(cl) => Some(cl.prepare(&self.sink, &r.store, progress.next_id)?),
            None => None,
        };
        self.sink.flush()?;
        fault::point("after-sink-flush");
        // While output of a crashed run is still to be skipped, the positions
        // stay where that output starts, so another crash reads it again.
        if self.dedupe.is_none() {
            advance_positions(
                &mut progress.sink_positions,
                self.sink.positions(&self.output_topics()),
            );
        }
        let mut meta = CheckpointMeta {
            id: progress.next_id,
            plan_fingerprint: self.state.fingerprint.clone(),
            source_topic: self.table.topic.clone(),
            next_offsets: progress.position.next_offsets().collect(),
            max_event_times: r
                .tracker
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
        let consumer = r.input.consumer();
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
        let stats = r
            .store
            .checkpoint(&meta)
            .with_context(|| format!("checkpoint {} of source {}", meta.id, self.table.name))?;
        fault::point("after-checkpoint");
        progress.next_id += 1;
        self.counters.checkpointed(started.elapsed(), stats.bytes);
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

    /// The stateful operators given less than the task's watermark, by column
    /// family (see `CheckpointMeta::operator_watermarks`).
    fn operator_watermarks(&self, fired_through: i64) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for f in &self.flows {
            for op in f.chain.stateful() {
                let wm = f.chain.watermark(op);
                if wm < fired_through {
                    out.insert(super::column_family(f, op), wm);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward() {
        let mut known: Positions =
            BTreeMap::from([("out".to_string(), BTreeMap::from([(0, 10), (1, 5)]))]);
        advance_positions(
            &mut known,
            BTreeMap::from([
                ("out".to_string(), BTreeMap::from([(0, 7), (1, 9), (2, 1)])),
                ("dlq".to_string(), BTreeMap::from([(0, 3)])),
            ]),
        );
        assert_eq!(known["out"], BTreeMap::from([(0, 10), (1, 9), (2, 1)]));
        assert_eq!(known["dlq"], BTreeMap::from([(0, 3)]));
    }

    #[test]
    fn a_run_without_a_checkpoint_starts_at_its_start_offsets() {
        let p = Progress::new(None, BTreeMap::from([(0, 4)]), Positions::new(), None);
        assert_eq!(p.next_id, 1);
        assert_eq!(p.fired_through, START_OF_TIME);
        assert_eq!(p.position.next_offsets().collect::<Vec<_>>(), vec![(0, 4)]);
    }
}
