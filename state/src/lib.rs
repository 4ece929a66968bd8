//! weir-state: keyed operator state, checkpoints and recovery metadata.
//!
//! What it is for: the durable side of a task. A task runs on a RocksDB
//! database of its own (one column family per stateful operator, keys prefixed
//! with the task id); a checkpoint makes that state, the task's input offsets
//! and its output progress durable together, as one RocksDB checkpoint
//! directory that appears atomically. What it is not for: Kafka I/O or
//! operator logic.
//!
//! ```text
//! <state.dir>/<task>/working/            the live database (no WAL: never recovered itself)
//! <state.dir>/<task>/checkpoints/<id>/   state + CheckpointMeta as of checkpoint <id>
//! ```
//! Opening a task store copies the newest complete checkpoint into `working/`
//! (hard links for SST files) and runs from there; a crash at any moment loses
//! only what came after that checkpoint, which the task replays from the input
//! offsets stored in it.

mod changes;
pub mod codec;
pub mod fault;
mod meta;
mod offsets;
mod store;

pub use codec::CodecError;
pub use meta::{ChangelogLink, CheckpointMeta};
pub use offsets::{HeldOffsets, InputPosition};
pub use store::{CheckpointStats, OperatorState, StateError, TaskStore};
