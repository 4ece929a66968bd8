//! What a checkpoint records besides operator state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::HeldOffsets;

/// A task's progress as of one checkpoint. Stored in the checkpoint itself, so
/// it is always consistent with the operator state beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Increases by one per checkpoint of the task.
    pub id: u64,
    /// Identifies the plan that wrote the state; a different plan cannot use it.
    pub plan_fingerprint: String,
    /// The source topic the offsets belong to.
    pub source_topic: String,
    /// Next input offset to read, per partition.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Per partition, the highest event time seen (the watermark's inputs).
    pub max_event_times: BTreeMap<i32, i64>,
    /// The watermark up to which windows have fired.
    pub fired_through: i64,
    /// Per stateful operator (by column family), the watermark it had been
    /// given, where that is less than `fired_through`: operators after a
    /// temporal join that holds rows back see a lower watermark.
    #[serde(default)]
    pub operator_watermarks: BTreeMap<String, i64>,
    /// Offsets open windows still need, for the consumer group's commits.
    pub held: HeldOffsets,
    /// Per output topic and partition, the offset one past the last output
    /// record acknowledged before the checkpoint. Output after these offsets
    /// may be repeated by a replay; exactly-once sinks skip what is there.
    pub sink_positions: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Wall-clock time the checkpoint was taken (ms since the epoch).
    pub taken_at_ms: i64,
    /// The changelog records that rebuild this checkpoint's state: a
    /// snapshot, then the diffs after it. `None` without a changelog.
    #[serde(default)]
    pub changelog: Option<Vec<ChangelogLink>>,
    /// In a local checkpoint: the changelog offset just past this
    /// checkpoint's commit record. Records after it are newer than the local
    /// state (a checkpoint committed to Kafka but not locally, or another
    /// run's progress), and a restore catches up with them.
    #[serde(default)]
    pub changelog_offset: Option<i64>,
    /// A task reading a repartition topic (cluster): per origin partition of
    /// the source topic, the highest origin offset applied. A replayed record
    /// (a map task repeating what it sent before its last commit) is skipped.
    #[serde(default)]
    pub origin_offsets: BTreeMap<i32, i64>,
    /// Origin partitions whose end of bounded input was seen.
    #[serde(default)]
    pub origins_ended: Vec<i32>,
}

/// One checkpoint's records in a changelog topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogLink {
    pub id: u64,
    /// The writing process's random run id (keys of a crashed attempt never
    /// collide with a later one's).
    pub run: u64,
    /// A full snapshot rather than the changes since the previous link.
    pub snapshot: bool,
    pub chunks: u32,
    pub bytes: u64,
}
