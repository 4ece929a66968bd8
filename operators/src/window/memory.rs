//! The operator's memory budget: what the deltas hold, dictionary sweeps, and
//! moving the largest panes to the store when memory runs over.

use std::collections::BTreeMap;

use super::groups::{Dict, Seen, unpair};
use super::{Delta, Dicts, Pane, WindowAggregateOp};

impl WindowAggregateOp {
    /// Memory the deltas hold, roughly.
    pub(super) fn memory(&self) -> usize {
        self.dicts.memory() + self.panes.values().map(pane_memory).sum::<usize>()
    }

    /// Drops the keys and DISTINCT values no pane's delta holds any more: of
    /// each dictionary, when enough were added since its last sweep, or
    /// `now`. Never while a batch's rows hold numbers ([`Self::update`]).
    pub(super) fn sweep(&mut self, now: bool) {
        let Dicts { keys, values } = &mut self.dicts;
        sweep_dict(
            keys,
            &mut self.panes,
            now,
            |d, live| d.keys.keys().iter().for_each(|&k| live[k as usize] = true),
            |d, new| d.keys.renumber(new),
        );
        for (agg, values) in values.iter_mut().enumerate() {
            let Some(values) = values else { continue };
            sweep_dict(
                values,
                &mut self.panes,
                now,
                |d, live| {
                    for &p in d.seen[agg].iter().flat_map(|s| &s.order) {
                        live[unpair(p).1 as usize] = true;
                    }
                },
                |d, new| {
                    if let Some(seen) = &mut d.seen[agg] {
                        seen.renumber(new);
                    }
                },
            );
        }
    }

    /// Over budget: writes the largest deltas to the store until half the
    /// budget is free.
    pub(super) fn enforce_budget(&mut self) -> anyhow::Result<()> {
        if self.store.is_none() {
            return Ok(());
        }
        if self.memory() <= self.memory_budget {
            return Ok(());
        }
        // What only panes gone held first.
        self.sweep(true);
        let mut used = self.memory();
        if used <= self.memory_budget {
            return Ok(());
        }
        let mut by_size: Vec<(usize, i64)> = self
            .panes
            .values()
            .map(|p| (pane_memory(p), p.end))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        for (size, end) in by_size {
            let mut pane = self.panes.remove(&end).expect("listed above");
            self.flush_pane(&mut pane)?;
            used = used - size + pane_memory(&pane);
            self.panes.insert(end, pane);
            if used <= self.memory_budget / 2 {
                break;
            }
        }
        // What only the moved panes held.
        self.sweep(true);
        Ok(())
    }
}

/// Sweeps `dict` ([`Dict::sweep`], when due or `now`): `mark` sets the
/// numbers a delta holds, `renumber` applies the new numbering to a delta.
pub(super) fn sweep_dict(
    dict: &mut Dict,
    panes: &mut BTreeMap<i64, Pane>,
    now: bool,
    mark: impl Fn(&Delta, &mut [bool]),
    renumber: impl Fn(&mut Delta, &[u32]),
) {
    if !now && !dict.sweep_due() {
        return;
    }
    let mut live = vec![false; dict.len()];
    for p in panes.values() {
        mark(&p.delta, &mut live);
    }
    if let Some(new) = dict.sweep(&live) {
        for p in panes.values_mut() {
            renumber(&mut p.delta, &new);
        }
    }
}

pub(super) fn pane_memory(p: &Pane) -> usize {
    let d = &p.delta;
    d.keys.memory()
        + d.dirty.capacity()
        + d.seen.iter().flatten().map(Seen::memory).sum::<usize>()
        + d.accumulators.iter().map(|a| a.size()).sum::<usize>()
}
