//! Event-time watermarks of a task over its input partitions.
//!
//! The watermark of a task is the minimum over its partitions of
//! (max event time seen - declared delay). A partition that has not produced a
//! record for the idle timeout stops holding it back. A partition that has never
//! produced a record holds it at the start of time until it goes idle.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct PartitionState {
    max_event_time: i64,
    last_record: Instant,
    excluded: bool,
}

#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    delay_ms: i64,
    idle_timeout: Option<Duration>,
    partitions: Vec<PartitionState>,
    current: i64,
}

pub const START_OF_TIME: i64 = i64::MIN;
pub const END_OF_TIME: i64 = i64::MAX;

impl WatermarkTracker {
    pub fn new(
        partitions: usize,
        delay_ms: i64,
        idle_timeout: Option<Duration>,
        now: Instant,
    ) -> Self {
        Self {
            delay_ms,
            idle_timeout,
            partitions: vec![
                PartitionState {
                    max_event_time: START_OF_TIME,
                    last_record: now,
                    excluded: false,
                };
                partitions
            ],
            current: START_OF_TIME,
        }
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    /// Records an event seen on `partition`; returns the watermark the *next*
    /// row arrives under. The watermark never goes back.
    pub fn observe(&mut self, partition: usize, event_time: i64, now: Instant) -> i64 {
        let p = &mut self.partitions[partition];
        p.last_record = now;
        if event_time > p.max_event_time {
            p.max_event_time = event_time;
            self.recompute(now);
        }
        self.current
    }

    /// Stops `partition` from holding the watermark back (for partition ids
    /// the topic does not have). Bounded partitions that reach their end are
    /// not excluded: they hold the watermark at their last value until the
    /// whole input has ended, so results do not depend on read order.
    pub fn exclude(&mut self, partition: usize, now: Instant) -> i64 {
        self.partitions[partition].excluded = true;
        self.recompute(now);
        self.current
    }

    /// Per partition that has seen data, the highest event time seen: what a
    /// checkpoint records to restore the watermark.
    pub fn max_event_times(&self) -> impl Iterator<Item = (usize, i64)> + '_ {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.max_event_time != START_OF_TIME)
            .map(|(i, p)| (i, p.max_event_time))
    }

    /// Restores what a checkpoint recorded: per partition the highest event
    /// time seen, and the watermark reached (it never goes back).
    pub fn restore(
        &mut self,
        max_event_times: impl IntoIterator<Item = (usize, i64)>,
        watermark: i64,
        now: Instant,
    ) {
        for (p, t) in max_event_times {
            if let Some(state) = self.partitions.get_mut(p) {
                state.max_event_time = state.max_event_time.max(t);
            }
        }
        self.current = self.current.max(watermark);
        self.recompute(now);
    }

    /// Re-evaluates idleness; call periodically.
    pub fn tick(&mut self, now: Instant) -> i64 {
        self.recompute(now);
        self.current
    }

    fn recompute(&mut self, now: Instant) {
        let mut min = END_OF_TIME;
        let mut any_active = false;
        for p in &self.partitions {
            if p.excluded {
                continue;
            }
            let idle = self
                .idle_timeout
                .is_some_and(|t| now.duration_since(p.last_record) >= t);
            if idle {
                continue;
            }
            any_active = true;
            let wm = if p.max_event_time == START_OF_TIME {
                START_OF_TIME
            } else {
                p.max_event_time.saturating_sub(self.delay_ms)
            };
            min = min.min(wm);
        }
        let candidate = if any_active {
            min
        } else if self.partitions.iter().all(|p| p.excluded) {
            END_OF_TIME
        } else {
            // Every partition is idle: advance to the most any of them has seen.
            self.partitions
                .iter()
                .filter(|p| p.max_event_time != START_OF_TIME)
                .map(|p| p.max_event_time.saturating_sub(self.delay_ms))
                .max()
                .unwrap_or(START_OF_TIME)
        };
        self.current = self.current.max(candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_partitions() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(2, 5, None, now);
        assert_eq!(
            w.observe(0, 100, now),
            START_OF_TIME,
            "partition 1 has no data yet"
        );
        assert_eq!(w.observe(1, 50, now), 45);
        assert_eq!(w.observe(1, 200, now), 95);
        assert_eq!(w.observe(0, 90, now), 95, "never goes back");
        assert_eq!(w.exclude(0, now), 195);
        assert_eq!(w.exclude(1, now), END_OF_TIME);
    }

    #[test]
    fn idle_partitions_stop_holding_back() {
        let start = Instant::now();
        let mut w = WatermarkTracker::new(2, 0, Some(Duration::from_secs(1)), start);
        assert_eq!(w.observe(0, 100, start), START_OF_TIME);
        let later = start + Duration::from_secs(2);
        assert_eq!(w.observe(0, 150, later), 150);
    }
}
