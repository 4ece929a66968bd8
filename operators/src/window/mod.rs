//! Event-time window aggregation for TUMBLE, HOP and CUMULATE (SESSION: [`session`]).
//!
//! ```text
//! batch --assign--> (row, window) pairs --group key--> pane of that window
//!       pane = in-memory delta (row-encoded key -> group index, one GroupsAccumulator
//!              per aggregate) + what earlier flushes wrote to the store
//! watermark >= window_end - 1 ms  ==> merge the pane's delta with its stored groups,
//!                                     evaluate, emit, delete the pane
//! ```
//!
//! Every aggregate DataFusion has works here: the operator drives DataFusion's
//! `GroupsAccumulator`s (or its `Accumulator`s through the adapter). A row whose
//! windows have all closed when it arrives is late: it goes to the context's
//! late output instead.
//!
//! Allowed lateness (`'window.allowed-lateness'`): a fired pane stays in the
//! store until the watermark passes its end by that much. Late rows update it;
//! at the next watermark advance the groups they changed are re-emitted, as
//! updates (or inserts, for groups new to the window), identified as such by
//! their row identity ([`crate::ids::Change`]).
//!
//! State: with a store attached, a pane lives in memory until it fires. At a
//! checkpoint the store gets a *copy* of the groups that changed since the last
//! one (and of new DISTINCT sightings); memory keeps them, so firing reads
//! nothing back. Only when the operator's memory passes its budget are the
//! largest panes *moved* to the store: memory then holds what changed since,
//! merged with the stored groups at fire time (as is a pane restored from a
//! checkpoint). In the store (the operator's column family, under the task
//! prefix):
//! ```text
//! pane(8) key_len(u32 BE) key  0            -> accumulator states of the non-DISTINCT aggregates
//! pane(8) key_len(u32 BE) key  1 agg(u8) v  -> (empty): value v seen by DISTINCT aggregate agg
//! pane(8) key_len(u32 BE) key  2            -> [emitted before]: a fired pane's group changed by
//!                                              late rows, to re-emit (allowed lateness)
//! pane(8) FF FF FF FF seq(u64 BE)            -> segment: of a pane memory holds whole, the
//!                                              groups one checkpoint copied (and their new
//!                                              sightings), at most SEGMENT_BYTES each
//! ```
//! A pane is stored one way or the other: per group once it has been moved
//! (its segments are then replaced by per-group entries), in segments while
//! memory holds it whole. Segments are read only at restore, in order (a later
//! copy of a group replaces an earlier one), and give memory the whole pane
//! back; they cost a checkpoint a buffer copy per group instead of an insert
//! into RocksDB's memtable per group and per sighting.
//! `pane` is the window end, sign bit flipped, big-endian, so panes scan in
//! time order. A pane that was never written to the store fires straight from
//! memory. DISTINCT aggregates are evaluated at fire time from the stored
//! sightings of a stored pane, and incrementally for an in-memory one.
//!
//! Rooms: rows reach panes here ([`WindowAggregateOp::update`]); panes fire in
//! `fire`, move to and come back from the store in `store` (laid out as
//! `keys` says), and `memory` keeps the deltas within the operator's budget.

mod aggregation;
mod assign;
mod fire;
mod groups;
mod keys;
mod memory;
mod session;
mod store;

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::logical_expr::GroupsAccumulator;
use weir_state::OperatorState;

pub use aggregation::{AggregateSpec, Aggregation, OutputColumn};
pub use assign::Assigner;
pub use session::SessionOp;

use aggregation::Inputs;
use groups::{Dict, Groups, Seen};
use keys::{
    KIND_CHANGED, SEGMENT_MARK, group_prefix, pane_end, pane_prefix, split_stored_key, with_kind,
};

use crate::operator::{
    Batch, Context, OUTSIDE_WINDOW_RANGE, Operator, StateAttachment, event_times,
};

/// What a pane accumulated since it was last moved to the store (all of it,
/// for a pane that never was).
struct Delta {
    /// Groups (numbered in order of first sight) by key number.
    keys: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per aggregate: the (group, value) pairs seen, for DISTINCT aggregates.
    seen: Vec<Option<Seen>>,
    /// Of a pane memory holds whole: per DISTINCT aggregate, how many of its
    /// sightings (`Seen::order`) the store has a copy of.
    seen_copied: Vec<usize>,
    /// Per group: changed since the store last got a copy of it.
    dirty: Vec<bool>,
}

struct Pane {
    /// The window's end: it names the window (CUMULATE windows share starts).
    end: i64,
    delta: Delta,
    /// Whether the store holds groups of this pane that memory does not: the
    /// delta is merged with them (at fire time, or when written).
    in_store: bool,
    /// Of a pane memory holds whole (`!in_store`): how many segments
    /// checkpoints wrote a copy of it in (they go when the pane does).
    segments: u64,
    /// Whether the window has fired (it is kept for allowed lateness).
    fired: bool,
    /// Of a fired pane: the groups late rows changed since the last emission,
    /// and whether each had been emitted before (an update, not an insert).
    changed: BTreeMap<Box<[u8]>, bool>,
}

/// The byte strings the panes' deltas share, each held once ([`Dict`]).
#[derive(Default)]
struct Dicts {
    /// Group keys.
    keys: Dict,
    /// Per aggregate: the values of a DISTINCT one.
    values: Vec<Option<Dict>>,
}

impl Dicts {
    fn value(&self, agg: usize, number: u32) -> &[u8] {
        let dict = self.values[agg].as_ref().expect("a DISTINCT aggregate");
        dict.get(number)
    }

    fn memory(&self) -> usize {
        self.keys.memory()
            + self
                .values
                .iter()
                .flatten()
                .map(Dict::memory)
                .sum::<usize>()
    }
}

/// Not yet looked up (a row's key or value number).
const UNSEEN: u32 = u32::MAX;
/// A DISTINCT aggregate's null argument, which it skips.
const NULL_VALUE: u32 = u32::MAX - 1;

pub struct WindowAggregateOp {
    assigner: Assigner,
    time_column: usize,
    agg: Aggregation,
    /// `'window.allowed-lateness'`: a fired pane is kept this long in event time.
    lateness: i64,
    /// Open and kept panes by window end.
    panes: BTreeMap<i64, Pane>,
    /// What the panes' deltas share.
    dicts: Dicts,
    /// The watermark up to which windows have fired.
    fired_through: i64,
    store: Option<OperatorState>,
    memory_budget: usize,
}

impl WindowAggregateOp {
    pub fn new(
        assigner: Assigner,
        time_column: usize,
        agg: Aggregation,
        allowed_lateness_ms: i64,
    ) -> Self {
        let dicts = Dicts {
            keys: Dict::default(),
            values: agg
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| Dict::default()))
                .collect(),
        };
        Self {
            assigner,
            time_column,
            agg,
            lateness: allowed_lateness_ms,
            panes: BTreeMap::new(),
            dicts,
            fired_through: i64::MIN,
            store: None,
            memory_budget: usize::MAX,
        }
    }

    /// Allowed lateness in effect: fired panes are kept in the store, so
    /// without one (operator tests) windows close when they fire.
    fn lateness(&self) -> i64 {
        if self.store.is_some() {
            self.lateness
        } else {
            0
        }
    }

    fn new_delta(&self) -> anyhow::Result<Delta> {
        Ok(Delta {
            keys: Groups::default(),
            accumulators: self.agg.new_accumulators()?,
            seen: self
                .agg
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| Seen::default()))
                .collect(),
            seen_copied: vec![0; self.agg.aggregates.len()],
            dirty: Vec::new(),
        })
    }

    /// Adds the rows `by_pane` lists to their panes.
    fn update(
        &mut self,
        inputs: &Inputs,
        n: usize,
        by_pane: BTreeMap<i64, Vec<u32>>,
    ) -> anyhow::Result<()> {
        // Each row's key number, and its value number of each DISTINCT
        // aggregate, looked up once for all its panes.
        let mut numbers = vec![UNSEEN; n];
        let mut value_numbers: Vec<Vec<u32>> = self
            .dicts
            .values
            .iter()
            .map(|d| match d {
                Some(_) => vec![UNSEEN; n],
                None => Vec::new(),
            })
            .collect();
        for (end, indices) in by_pane {
            if !self.panes.contains_key(&end) {
                let pane = Pane {
                    end,
                    delta: self.new_delta()?,
                    in_store: false,
                    segments: 0,
                    // A window whose end the watermark has passed (allowed
                    // lateness) counts as fired: its groups come out as
                    // changes at the next advance, and survive a checkpoint
                    // as such.
                    fired: end - 1 <= self.fired_through,
                    changed: BTreeMap::new(),
                };
                self.panes.insert(end, pane);
            }
            let pane = &mut self.panes.get_mut(&end).expect("inserted above").delta;
            let mut group_indices = Vec::with_capacity(indices.len());
            for &row in &indices {
                let row = row as usize;
                if numbers[row] == UNSEEN {
                    numbers[row] = self.dicts.keys.intern(inputs.key(row));
                }
                let (g, new) = pane.keys.group(numbers[row]);
                if new {
                    pane.dirty.push(true);
                } else {
                    pane.dirty[g as usize] = true;
                }
                group_indices.push(g as usize);
            }
            let all_rows = indices.len() == n;
            let idx = (!all_rows).then(|| UInt32Array::from(indices));
            let total = pane.keys.len();
            for (i, acc) in pane.accumulators.iter_mut().enumerate() {
                let values: Vec<ArrayRef> = match &idx {
                    None => inputs.values[i].clone(),
                    Some(idx) => inputs.values[i]
                        .iter()
                        .map(|a| take(a.as_ref(), idx, None))
                        .collect::<Result<_, _>>()?,
                };
                let mut filter = match (&inputs.filters[i], &idx) {
                    (None, _) => None,
                    (Some(f), None) => Some(f.clone()),
                    (Some(f), Some(idx)) => Some(take(f, idx, None)?.as_boolean().clone()),
                };
                if let (Some(dict), Some(seen)) = (&mut self.dicts.values[i], &mut pane.seen[i]) {
                    // Only the rows whose (group, value) the pane has not seen
                    // reach the accumulator; a row the filter drops sees
                    // nothing, and a null passes (the accumulator skips it).
                    let numbers = &mut value_numbers[i];
                    let mask: Vec<bool> = (0..group_indices.len())
                        .map(|r| {
                            if filter
                                .as_ref()
                                .is_some_and(|f| !f.is_valid(r) || !f.value(r))
                            {
                                return false;
                            }
                            let row = idx.as_ref().map_or(r, |idx| idx.value(r) as usize);
                            if numbers[row] == UNSEEN {
                                numbers[row] = match inputs.distinct_value(i, row) {
                                    Some(v) => dict.intern(v),
                                    None => NULL_VALUE,
                                };
                            }
                            numbers[row] == NULL_VALUE
                                || seen.insert(group_indices[r] as u32, numbers[row])
                        })
                        .collect();
                    filter = Some(BooleanArray::from(mask));
                }
                acc.update_batch(&values, &group_indices, filter.as_ref(), total)?;
            }
        }
        Ok(())
    }
}

impl Operator for WindowAggregateOp {
    fn name(&self) -> &'static str {
        "window aggregate"
    }

    /// Rows are taken in order; where a row arrived under a watermark that
    /// completes a window (or, with allowed lateness, that re-emits changes),
    /// the rows before it are applied and the watermark moved first, so a
    /// batch gives the same output as feeding its rows one at a time.
    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let wm = batch.arrival_watermark.values();
        let lateness = self.lateness();
        let mut inputs: Option<Inputs> = None;
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late: Vec<u32> = Vec::new();
        let mut out_of_range: Vec<u32> = Vec::new();
        let mut next_due = self.next_due();
        for row in 0..n {
            let w = wm[row];
            if w > self.fired_through && w >= next_due {
                if !by_pane.is_empty() {
                    let inputs = match &inputs {
                        Some(i) => i,
                        None => inputs.insert(self.agg.inputs(data)?),
                    };
                    self.update(inputs, n, std::mem::take(&mut by_pane))?;
                }
                self.advance(w, out)?;
                next_due = self.next_due();
            }
            if times.is_null(row) {
                late.push(row as u32);
                continue;
            }
            let ts = times.value(row);
            let arrived_under = w.max(self.fired_through);
            let Some(ends) = self.assigner.ends(ts) else {
                out_of_range.push(row as u32);
                continue;
            };
            let mut assigned = false;
            // A window ends after ts, so `end - 1` cannot overflow.
            for end in ends {
                if (end - 1).saturating_add(lateness) <= arrived_under {
                    // This and every earlier window are closed.
                    break;
                }
                by_pane.entry(end).or_default().push(row as u32);
                assigned = true;
                // A window already past its end is re-emitted at the next advance.
                next_due = next_due.min(if end - 1 <= arrived_under {
                    i64::MIN
                } else {
                    end - 1
                });
            }
            if !assigned {
                late.push(row as u32);
            }
        }
        if !by_pane.is_empty() {
            let inputs = match &inputs {
                Some(i) => i,
                None => inputs.insert(self.agg.inputs(data)?),
            };
            self.update(inputs, n, by_pane)?;
        }
        ctx.set_aside_late(
            &batch,
            late,
            "late: every window this row belongs to had already closed",
        )?;
        ctx.set_aside_late(&batch, out_of_range, OUTSIDE_WINDOW_RANGE)?;
        self.enforce_budget()?;
        self.sweep(false);
        Ok(())
    }

    fn advance_watermark(
        &mut self,
        watermark: i64,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        self.advance(watermark, out)?;
        self.sweep(false);
        Ok(())
    }

    fn next_emission(&self) -> Option<i64> {
        // Panes are ordered by end; windows fire at pane ends.
        self.panes.values().find(|p| !p.fired).map(|p| p.end - 1)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        self.memory_budget = state.memory_budget;
        // The panes the checkpoint holds: one seek per pane.
        let mut dicts = std::mem::take(&mut self.dicts);
        let mut from = Vec::new();
        while let Some(key) = state.store.first_key_from(&from)? {
            let end = pane_end(&key)?;
            let fired = end - 1 <= self.fired_through;
            let mut changed = BTreeMap::new();
            if fired {
                // Changes late rows made that were not re-emitted yet.
                for entry in state.store.scan(&pane_prefix(end))? {
                    let (k, v) = entry?;
                    if k.get(8..12) == Some(&SEGMENT_MARK[..]) {
                        break;
                    }
                    let (key, kind, _) = split_stored_key(&k)?;
                    if kind == KIND_CHANGED {
                        changed.insert(key.into(), v.first() == Some(&1));
                    }
                }
            }
            let pane = match self.restore_segments(&mut dicts, &state.store, end)? {
                Some((delta, segments)) => Pane {
                    end,
                    delta,
                    in_store: false,
                    segments,
                    fired,
                    changed,
                },
                None => Pane {
                    end,
                    delta: self.new_delta()?,
                    in_store: true,
                    segments: 0,
                    fired,
                    changed,
                },
            };
            self.panes.insert(end, pane);
            match end.checked_add(1) {
                Some(next) => from = pane_prefix(next).to_vec(),
                None => break,
            }
        }
        self.dicts = dicts;
        self.store = Some(state.store);
        Ok(())
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        if self.store.is_none() {
            return Ok(());
        }
        let ends: Vec<i64> = self.panes.keys().copied().collect();
        for end in ends {
            let mut pane = self.panes.remove(&end).expect("listed above");
            if !pane.in_store && !pane.fired {
                // Memory keeps the pane whole; the store gets a copy of what
                // changed since the last one.
                self.copy_pane(&mut pane)?;
            } else {
                self.flush_pane(&mut pane)?;
            }
            if !pane.changed.is_empty() {
                let store = self.store.as_ref().expect("checked above");
                let mut batch = store.batch();
                for (k, emitted) in &pane.changed {
                    let key = with_kind(&group_prefix(end, k), KIND_CHANGED);
                    store.put(&mut batch, &key, &[u8::from(*emitted)])?;
                }
                store.write(batch)?;
            }
            self.panes.insert(end, pane);
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.panes.values().map(|p| p.delta.keys.len()).sum()
    }
}
