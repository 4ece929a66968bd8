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

    /// Per partition: its highest event time (`START_OF_TIME` before any
    /// record) and whether it can hold the watermark back (not excluded, not
    /// idle).
    pub fn partition_times(&self, now: Instant) -> Vec<(i64, bool)> {
        self.partitions
            .iter()
            .map(|p| {
                let idle = self
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(p.last_record) >= t);
                (p.max_event_time, !p.excluded && !idle)
            })
            .collect()
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

/// Watermark alignment (Flink's `scan.watermark.alignment.max-drift`, within
/// one source): a partition whose event time runs more than `max_drift` ahead
/// of the slowest one that still has input is held back (not read) until it
/// is within half of that. The watermark is the minimum over partitions, so every window the
/// faster partitions open stays open until the slowest catches up; a broker
/// or a backlog that serves partitions unevenly (tansu answers a fetch from
/// one partition; a backfill starts partitions at different lags) otherwise
/// makes window state grow with how far apart they drift, not with the window.
/// The slowest partition is never held, so reading always goes on. (This
/// decides; the source task leaves a held partition's queue unread.)
#[derive(Debug, Clone)]
pub struct Alignment {
    max_drift_ms: i64,
    held: Vec<bool>,
}

impl Alignment {
    pub fn new(partitions: usize, max_drift_ms: i64) -> Self {
        Self {
            max_drift_ms: max_drift_ms.max(1),
            held: vec![false; partitions],
        }
    }

    /// Per partition: whether it is held back.
    pub fn held(&self) -> &[bool] {
        &self.held
    }

    /// What to hold back and what to release, given each partition's highest
    /// event time and whether it is active (`WatermarkTracker::partition_times`)
    /// and which partitions have ended (bounded input: they are out of the
    /// race). Returns (held now, released now).
    pub fn update(&mut self, times: &[(i64, bool)], ended: &[bool]) -> (Vec<usize>, Vec<usize>) {
        let open = |i: usize| !ended.get(i).copied().unwrap_or(false);
        // The slowest partition still reading: seen data, active, not held.
        let slowest = times
            .iter()
            .zip(&self.held)
            .enumerate()
            .filter(|(i, ((t, active), held))| {
                *active && *t != START_OF_TIME && !**held && open(*i)
            })
            .map(|(_, ((t, _), _))| *t)
            .min();
        let (mut hold, mut release) = (Vec::new(), Vec::new());
        for (i, ((t, _), held)) in times.iter().zip(&mut self.held).enumerate() {
            if *held {
                if slowest.is_none_or(|s| t.saturating_sub(s) <= self.max_drift_ms / 2) {
                    *held = false;
                    release.push(i);
                }
            } else if open(i)
                && *t != START_OF_TIME
                && slowest.is_some_and(|s| t.saturating_sub(s) > self.max_drift_ms)
            {
                *held = true;
                hold.push(i);
            }
        }
        (hold, release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_holds_the_partitions_ahead_back_and_releases_them_halfway() {
        let mut a = Alignment::new(3, 100);
        // 0 is 150 ahead of the slowest (1); 2 has no data yet.
        let (p, r) = a.update(
            &[(250, true), (100, true), (START_OF_TIME, true)],
            &[false; 3],
        );
        assert_eq!((p, r), (vec![0], vec![]));
        // Within the drift but not within half of it: still held.
        let (p, r) = a.update(
            &[(250, true), (180, true), (START_OF_TIME, true)],
            &[false; 3],
        );
        assert_eq!((p, r), (vec![], vec![]));
        assert_eq!(a.held(), &[true, false, false]);
        let (p, r) = a.update(
            &[(250, true), (200, true), (START_OF_TIME, true)],
            &[false; 3],
        );
        assert_eq!((p, r), (vec![], vec![0]));
        // The slowest is never held, however far the others are.
        let (p, _) = a.update(&[(1000, true), (200, true), (900, true)], &[false; 3]);
        assert_eq!(p, vec![0, 2]);
        // An idle slowest partition (or one at its end) is out of the race:
        // the others are measured against the next slowest that reads.
        let (p, r) = a.update(&[(1000, true), (200, false), (900, true)], &[false; 3]);
        assert_eq!((p, r), (vec![], vec![0, 2]));
        a.update(&[(1000, true), (200, true), (900, true)], &[false; 3]);
        let (_, r) = a.update(
            &[(1000, true), (200, true), (900, true)],
            &[false, true, false],
        );
        assert_eq!(r, vec![0, 2], "1 ended: nothing else is behind");
        assert_eq!(a.held(), &[false; 3]);
    }

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
