//! weir-state: keyed operator state, checkpoints and recovery metadata.
//!
//! What it is for: the durable side of stateful operators. Today it holds the
//! checkpoint bookkeeping a task needs to resume (input offsets per partition);
//! RocksDB-backed window state and changelog topics build on it (see the
//! project's issue on state). What it is not for: Kafka I/O or operator logic.

use std::collections::BTreeMap;

/// Where a task's input stands: the next offset to read, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputPosition {
    next_offsets: BTreeMap<i32, i64>,
}

impl InputPosition {
    /// Records that `offset` on `partition` has been processed.
    pub fn processed(&mut self, partition: i32, offset: i64) {
        let next = self.next_offsets.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    pub fn next_offsets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.next_offsets.iter().map(|(p, o)| (*p, *o))
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_offset_is_one_past_the_highest_processed() {
        let mut p = InputPosition::default();
        p.processed(0, 5);
        p.processed(0, 3);
        p.processed(1, 0);
        assert_eq!(p.next_offsets().collect::<Vec<_>>(), vec![(0, 6), (1, 1)]);
    }
}
