//! Live counters of one source task, readable (by the HTTP API and the run's
//! summary) while it runs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

impl TaskCounters {
    /// Where the input stands: the next offset of each partition.
    pub fn set_positions(&self, next_offsets: impl Iterator<Item = (i32, i64)>) {
        *self.positions.lock().unwrap_or_else(|e| e.into_inner()) = next_offsets.collect();
    }

    /// A checkpoint was taken in `took`, `bytes` on disk.
    pub fn checkpointed(&self, took: Duration, bytes: u64) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        self.last_checkpoint_bytes.store(bytes, Ordering::Relaxed);
    }
}
