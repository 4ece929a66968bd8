//! Opening a task's state: the newest local checkpoint, brought up to date
//! from the changelog (or rebuilt from it when there is no local state, or
//! the local state is stale), and handed to the stateful operators.
//!
//! ```text
//! cluster task: wait for the partition's previous owner to release it
//! local checkpoint?  yes -> catch up: a newer commit on the same chain is applied,
//!                           one on another chain means rebuild from the changelog
//!                    no  -> restore from the changelog's newest commit, if any
//! then: the changelog ships from the restored chain; operators get their
//!       column family and the watermark they had fired through
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};
use weir_operators::StateAttachment;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_state::{CheckpointMeta, TaskStore};

use super::SourceTask;
use crate::changelog::{self, CatchUp, Changelog};
use crate::kafka::end_offsets;

/// How long reading a changelog partition may take.
const CHANGELOG_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// A restored store and the checkpoint it holds (`None`: a first run).
type Restored = (TaskStore, Option<CheckpointMeta>);

/// Whether a checkpoint's state belongs to this pipeline.
fn same_pipeline(meta: &CheckpointMeta, fingerprint: &str, source_topic: &str) -> bool {
    meta.plan_fingerprint == fingerprint && meta.source_topic == source_topic
}

/// A local checkpoint whose changelog was lost (or never written): the next
/// checkpoint must ship a full snapshot, since no chain in the topic
/// rebuilds the state.
fn needs_snapshot(restored_locally: bool, changelog_end: Option<i64>) -> bool {
    restored_locally && changelog_end.is_none_or(|end| end == 0)
}

impl SourceTask {
    /// Opens the task's store and restores its newest checkpoint. `None`: the
    /// task was asked to stop while waiting to take over its partition.
    pub(super) fn restore(&mut self) -> anyhow::Result<Option<Restored>> {
        let table = self.table.clone();
        let column_families = self.column_families();
        let mut store = self.open_store(&column_families)?;
        // A cluster task's checkpoints (input offsets, output positions) must
        // move with its partition even without operator state.
        let changelog_topic = self
            .state
            .changelog_topic
            .clone()
            .filter(|_| !column_families.is_empty() || self.state.handover_lease.is_some());
        if let Some(m) = store.restored()
            && !same_pipeline(m, &self.state.fingerprint, &table.topic)
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
            return Ok(None);
        }
        let mut from_changelog = false;
        let mut garbage = Vec::new();
        if let Some(topic) = &changelog_topic {
            (store, from_changelog, garbage) =
                self.restore_from_changelog(store, topic, &column_families)?;
        }
        let restored = store.restored().cloned();
        self.log_restored(
            &store,
            restored.as_ref(),
            from_changelog,
            !column_families.is_empty(),
        );
        self.counters
            .restore_ms
            .store(store.restore_time().as_millis() as u64, Ordering::Relaxed);
        if let Some(topic) = changelog_topic {
            let chain = restored
                .as_ref()
                .and_then(|m| m.changelog.clone())
                .unwrap_or_default();
            let mut cl =
                Changelog::with_run(topic, self.state.changelog_partition, chain, garbage, run);
            if !from_changelog && restored.is_some() {
                let end = end_offsets(self.sink.cluster(), &cl.topic, Duration::from_secs(10))?
                    .get(&cl.partition)
                    .copied();
                if needs_snapshot(true, end) {
                    cl.force_snapshot();
                }
            }
            store.capture_changes();
            self.changelog = Some(cl);
        }
        self.attach_state(&store, restored.as_ref(), &column_families)?;
        Ok(Some((store, restored)))
    }

    /// The column family of each stateful operator, in chain order.
    fn column_families(&self) -> Vec<String> {
        self.flows
            .iter()
            .flat_map(|f| {
                f.chain
                    .stateful()
                    .into_iter()
                    .map(|op| super::column_family(f, op))
            })
            .collect()
    }

    fn open_store(&self, column_families: &[String]) -> anyhow::Result<TaskStore> {
        TaskStore::open(&self.state.dir, 0, column_families, self.state.cache_bytes)
            .with_context(|| format!("opening the state store in {}", self.state.dir.display()))
    }

    /// Brings `store` up to date from the changelog: returns the store,
    /// whether its state now comes from the changelog, and the records no
    /// chain needs any more.
    fn restore_from_changelog(
        &self,
        mut store: TaskStore,
        topic: &str,
        column_families: &[String],
    ) -> anyhow::Result<(TaskStore, bool, Vec<String>)> {
        let name = &self.table.name;
        let cluster = self.sink.cluster().clone();
        let plan = (self.state.fingerprint.as_str(), self.table.topic.as_str());
        let partition = self.state.changelog_partition;
        let mut from_changelog = false;
        let mut garbage = Vec::new();
        // A local checkpoint: take in what the changelog committed after it.
        if let Some(local) = store.restored().cloned() {
            match changelog::catch_up(
                &cluster,
                topic,
                partition,
                &store,
                &local,
                plan,
                CHANGELOG_READ_TIMEOUT,
            )? {
                CatchUp::UpToDate { garbage: g } => garbage = g,
                CatchUp::Applied(r) => {
                    info!(
                        "source {name}: the changelog holds checkpoint {} beyond local checkpoint {}; applied it ({} records read)",
                        r.meta.id, local.id, r.records
                    );
                    garbage = r.garbage;
                    store.set_restored(r.meta, r.took);
                    from_changelog = true;
                }
                CatchUp::Stale(newer) => {
                    warn!(
                        "source {name}: local checkpoint {} is older than checkpoint {newer} in changelog '{topic}', which another run went on from; rebuilding from the changelog",
                        local.id
                    );
                    // The old store closes before its directory goes.
                    drop(store);
                    TaskStore::wipe(&self.state.dir)?;
                    store = self.open_store(column_families)?;
                }
            }
        }
        // No local checkpoint: rebuild the state from the changelog.
        if store.restored().is_none()
            && let Some(r) = changelog::restore(
                &cluster,
                topic,
                partition,
                &store,
                plan,
                CHANGELOG_READ_TIMEOUT,
            )?
        {
            info!(
                "source {name}: no local state; rebuilt checkpoint {} from changelog '{topic}' ({} records, {} bytes) in {} ms",
                r.meta.id,
                r.records,
                r.bytes,
                r.took.as_millis()
            );
            garbage = r.garbage;
            store.set_restored(r.meta, r.took);
            from_changelog = true;
        }
        Ok((store, from_changelog, garbage))
    }

    fn log_restored(
        &self,
        store: &TaskStore,
        restored: Option<&CheckpointMeta>,
        from_changelog: bool,
        stateful: bool,
    ) {
        let name = &self.table.name;
        if let Some(m) = restored {
            info!(
                "source {name}: restored checkpoint {} in {} ms (taken {} ms ago{})",
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
        if restored.is_some_and(|m| m.fired_through == END_OF_TIME && stateful) {
            warn!(
                "source {name}: an earlier run of this pipeline read its bounded input to the end, so every window has fired; \
                 new rows for windows will be late. Delete {} to start over.",
                self.state.dir.display()
            );
        }
    }

    /// Hands each stateful operator its column family, its share of the
    /// memory budget and the watermark it had fired through.
    fn attach_state(
        &mut self,
        store: &TaskStore,
        restored: Option<&CheckpointMeta>,
        column_families: &[String],
    ) -> anyhow::Result<()> {
        let fired_from = restored.map(|m| m.fired_through).unwrap_or(START_OF_TIME);
        let budget = self.state.memory_budget / column_families.len().max(1);
        for f in &mut self.flows {
            for op in f.chain.stateful() {
                let name = super::column_family(f, op);
                // Operators after a temporal join that held rows back had been
                // given less than the task's watermark.
                let fired_through = restored
                    .and_then(|m| m.operator_watermarks.get(&name).copied())
                    .unwrap_or(fired_from);
                let attachment = StateAttachment {
                    store: store.operator(&name)?,
                    fired_through,
                    memory_budget: budget,
                };
                f.chain.attach_state(op, attachment)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_or_empty_changelog_gets_a_snapshot() {
        assert!(needs_snapshot(true, None));
        assert!(needs_snapshot(true, Some(0)));
        assert!(!needs_snapshot(true, Some(12)));
        assert!(!needs_snapshot(false, None));
    }

    #[test]
    fn state_of_another_pipeline_is_not_ours() {
        let meta = CheckpointMeta {
            plan_fingerprint: "abc".into(),
            source_topic: "tx".into(),
            ..Default::default()
        };
        assert!(same_pipeline(&meta, "abc", "tx"));
        assert!(!same_pipeline(&meta, "abd", "tx"));
        assert!(!same_pipeline(&meta, "abc", "tx2"));
    }
}
