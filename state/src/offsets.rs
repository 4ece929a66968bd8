//! Input offsets: where a task stands, and which offsets open windows still hold.

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

    /// A position that starts at `next` (as restored from a checkpoint).
    pub fn starting_at(next: impl IntoIterator<Item = (i32, i64)>) -> Self {
        Self {
            next_offsets: next.into_iter().collect(),
        }
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

/// Input records whose effect is still only in memory (in windows that have not
/// fired), so their offsets must not be committed yet.
///
/// A record is held until the watermark reaches the last moment any window it
/// belongs to can fire. The offset safe to commit for a partition is then the
/// lowest offset still held there, or the next offset to read if none is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldOffsets {
    /// partition -> (release watermark -> lowest offset held until then)
    by_partition: BTreeMap<i32, BTreeMap<i64, i64>>,
}

impl HeldOffsets {
    pub fn hold(&mut self, partition: i32, offset: i64, until_watermark: i64) {
        let lowest = self
            .by_partition
            .entry(partition)
            .or_default()
            .entry(until_watermark)
            .or_insert(offset);
        *lowest = (*lowest).min(offset);
    }

    /// The watermark reached `watermark`: records held until then are out.
    pub fn release_through(&mut self, watermark: i64) {
        for held in self.by_partition.values_mut() {
            *held = held.split_off(&watermark.saturating_add(1));
        }
    }

    /// Offsets safe to commit: per partition of `position`, the lowest held
    /// offset, or the next offset to read.
    pub fn committable(&self, position: &InputPosition) -> Vec<(i32, i64)> {
        position
            .next_offsets()
            .map(|(p, next)| {
                let held = self
                    .by_partition
                    .get(&p)
                    .and_then(|h| h.values().min().copied())
                    .unwrap_or(next);
                (p, held.min(next))
            })
            .collect()
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_lowest_held_offset() {
        let mut position = InputPosition::default();
        let mut held = HeldOffsets::default();
        for (offset, until) in [(0, 100), (1, 200), (2, 100), (3, 300)] {
            position.processed(0, offset);
            held.hold(0, offset, until);
        }
        position.processed(1, 7);
        assert_eq!(held.committable(&position), vec![(0, 0), (1, 8)]);
        held.release_through(100);
        assert_eq!(held.committable(&position), vec![(0, 1), (1, 8)]);
        held.release_through(250);
        assert_eq!(held.committable(&position), vec![(0, 3), (1, 8)]);
        held.release_through(i64::MAX);
        assert_eq!(held.committable(&position), vec![(0, 4), (1, 8)]);
    }
}
