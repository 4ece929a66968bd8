//! Firing: a pane's groups evaluated and emitted when the watermark passes its
//! end, re-emitted when late rows change them, read back from the store in chunks.

use std::sync::Arc;

use anyhow::Context as _;
use datafusion::logical_expr::GroupsAccumulator;
use hashbrown::HashMap;
use weir_state::codec::key::KeyError;

use super::keys::{
    KIND_CHANGED, KIND_SIGHTING, KIND_STATE, group_prefix, pane_prefix, split_sighting,
    split_stored_key, with_kind,
};
use super::{Pane, WindowAggregateOp};
use crate::ids::{Change, RowId, change_row_id, id_array, window_row_id};
use crate::operator::Batch;

/// Groups read back from the store per evaluation, bounding memory at fire time.
const FIRE_CHUNK_GROUPS: usize = 8192;

impl WindowAggregateOp {
    /// Output rows of `keys`' groups of the window ending at `end`.
    pub(super) fn emit(
        &self,
        end: i64,
        keys: &[&[u8]],
        accumulators: Vec<Box<dyn GroupsAccumulator>>,
        ids: Vec<RowId>,
        watermark: i64,
    ) -> anyhow::Result<Batch> {
        let start = self
            .assigner
            .start_of(end)
            .context("a pane's window start is outside the i64 milliseconds")?;
        let bounds = vec![(start, end); keys.len()];
        let data = self.agg.evaluate(keys, &bounds, accumulators)?;
        Ok(Batch::uniform(data, watermark, Arc::new(id_array(ids))))
    }

    /// Evaluates a pane whose window has ended; with `keep`, leaves it in the
    /// store (allowed lateness).
    pub(super) fn fire(
        &self,
        pane: &mut Pane,
        watermark: i64,
        keep: bool,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let end = pane.end;
        if !pane.in_store && !keep {
            pane.fired = true;
            let delta = std::mem::replace(&mut pane.delta, self.new_delta()?);
            if !delta.keys.is_empty() {
                let keys: Vec<&[u8]> = delta
                    .keys
                    .keys()
                    .iter()
                    .map(|&k| self.dicts.keys.get(k))
                    .collect();
                let ids = keys.iter().map(|k| window_row_id(k, end)).collect();
                out.push(self.emit(end, &keys, delta.accumulators, ids, watermark)?);
            }
            return self.purge(pane);
        }
        self.flush_pane(pane)?;
        pane.fired = true;
        let store = self.store.as_ref().expect("a stored pane has a store");
        let prefix = pane_prefix(end);
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut states: Vec<Box<[u8]>> = Vec::new();
        let mut sightings: Vec<(usize, u8, Box<[u8]>)> = Vec::new();
        let insert = |k: &[u8]| window_row_id(k, end);
        for entry in store.scan(&prefix)? {
            let (k, v) = entry?;
            let (key, kind, rest) = split_stored_key(&k)?;
            match kind {
                KIND_STATE => {
                    if keys.len() >= FIRE_CHUNK_GROUPS {
                        self.emit_stored(
                            pane.end, &keys, &states, &sightings, &insert, watermark, out,
                        )?;
                        keys.clear();
                        states.clear();
                        sightings.clear();
                    }
                    keys.push(key.into());
                    states.push(v);
                }
                KIND_SIGHTING => {
                    let (agg, value) = split_sighting(rest)?;
                    let g = keys.len().checked_sub(1).ok_or(KeyError {
                        what: "window sighting without a group state",
                        len: k.len(),
                    })?;
                    sightings.push((g, agg, value.into()));
                }
                _ => {}
            }
        }
        if !keys.is_empty() {
            self.emit_stored(
                pane.end, &keys, &states, &sightings, &insert, watermark, out,
            )?;
        }
        if !keep {
            self.purge(pane)?;
        }
        Ok(())
    }

    /// Re-emits the groups of a fired pane that late rows changed: updates of
    /// groups emitted before, inserts of new ones.
    pub(super) fn emit_changes(
        &self,
        pane: &mut Pane,
        watermark: i64,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        self.flush_pane(pane)?;
        if pane.changed.is_empty() {
            return Ok(());
        }
        let store = self.store.as_ref().expect("a fired pane is in the store");
        let changed = std::mem::take(&mut pane.changed);
        let mut clear = store.batch();
        for chunk in changed.iter().collect::<Vec<_>>().chunks(FIRE_CHUNK_GROUPS) {
            let prefixes: Vec<Vec<u8>> = chunk
                .iter()
                .map(|(k, _)| group_prefix(pane.end, k))
                .collect();
            let state_keys: Vec<Vec<u8>> =
                prefixes.iter().map(|p| with_kind(p, KIND_STATE)).collect();
            let refs: Vec<&[u8]> = state_keys.iter().map(|k| k.as_slice()).collect();
            let states: Vec<Box<[u8]>> = store
                .multi_get(&refs)?
                .into_iter()
                .map(|v| v.unwrap_or_default().into_boxed_slice())
                .collect();
            let mut sightings = Vec::new();
            if self.agg.aggregates.iter().any(|a| a.distinct.is_some()) {
                for (g, p) in prefixes.iter().enumerate() {
                    let sp = with_kind(p, KIND_SIGHTING);
                    for entry in store.scan(&sp)? {
                        let (k, _) = entry?;
                        let (agg, value) = split_sighting(&k[sp.len()..])?;
                        sightings.push((g, agg, value.into()));
                    }
                }
            }
            for p in &prefixes {
                store.delete(&mut clear, &with_kind(p, KIND_CHANGED))?;
            }
            let keys: Vec<Box<[u8]>> = chunk.iter().map(|(k, _)| (*k).clone()).collect();
            let emitted_before: HashMap<&[u8], bool> =
                chunk.iter().map(|(k, e)| (k.as_ref(), **e)).collect();
            let start = self
                .assigner
                .start_of(pane.end)
                .context("a pane's window start is outside the i64 milliseconds")?;
            let id = |k: &[u8]| {
                if emitted_before[k] {
                    change_row_id(
                        Change::Update,
                        &[
                            k,
                            &start.to_be_bytes(),
                            &pane.end.to_be_bytes(),
                            &watermark.to_be_bytes(),
                        ],
                    )
                } else {
                    window_row_id(k, pane.end)
                }
            };
            self.emit_stored(pane.end, &keys, &states, &sightings, &id, watermark, out)?;
        }
        store.write(clear)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_stored(
        &self,
        end: i64,
        keys: &[Box<[u8]>],
        states: &[Box<[u8]>],
        sightings: &[(usize, u8, Box<[u8]>)],
        id: &dyn Fn(&[u8]) -> RowId,
        watermark: i64,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let rows: Vec<&[u8]> = states.iter().map(|s| s.as_ref()).collect();
        let sightings: Vec<(usize, u8, &[u8])> = sightings
            .iter()
            .map(|(g, a, v)| (*g, *a, v.as_ref()))
            .collect();
        let accumulators = self.accumulators_from(&rows, &sightings)?;
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let ids = keys.iter().map(|k| id(k)).collect();
        out.push(self.emit(end, &keys, accumulators, ids, watermark)?);
        Ok(())
    }

    /// Accumulators for `states.len()` groups from their stored states
    /// (`states[g]`: group g's) and DISTINCT sightings (group, aggregate, value).
    pub(super) fn accumulators_from(
        &self,
        states: &[&[u8]],
        sightings: &[(usize, u8, &[u8])],
    ) -> anyhow::Result<Vec<Box<dyn GroupsAccumulator>>> {
        let n = states.len();
        let mut accumulators = self.agg.new_accumulators()?;
        let groups: Vec<usize> = (0..n).collect();
        self.agg
            .merge_state_rows(&mut accumulators, states, &groups, n)?;
        for (agg, spec) in self.agg.aggregates.iter().enumerate() {
            if spec.distinct.is_none() {
                continue;
            }
            let (groups, values): (Vec<usize>, Vec<&[u8]>) = sightings
                .iter()
                .filter(|(_, a, _)| *a as usize == agg)
                .map(|(g, _, v)| (*g, *v))
                .unzip();
            // Called even without sightings, so the accumulator knows all n groups.
            self.agg
                .update_distinct(&mut accumulators, agg, &values, &groups, n)?;
        }
        Ok(accumulators)
    }

    /// The earliest watermark at which a pane needs attention: `i64::MIN` when
    /// a fired pane has changes to re-emit (at the next advance).
    pub(super) fn next_due(&self) -> i64 {
        let lateness = self.lateness();
        let mut due = i64::MAX;
        for p in self.panes.values() {
            let t = if !p.fired {
                p.end - 1
            } else if !p.changed.is_empty() || !p.delta.keys.is_empty() {
                i64::MIN
            } else {
                (p.end - 1).saturating_add(lateness)
            };
            due = due.min(t);
            if p.end - 1 > due {
                break;
            }
        }
        due
    }

    /// Moves the watermark to `watermark`: re-emits fired panes late rows
    /// changed, fires the panes it completes, and purges those past their
    /// allowed lateness.
    pub(super) fn advance(&mut self, watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        self.fired_through = watermark;
        let lateness = self.lateness();
        let ends: Vec<i64> = self
            .panes
            .range(..=watermark.saturating_add(1))
            .map(|(e, _)| *e)
            .collect();
        for end in ends {
            let mut pane = self.panes.remove(&end).expect("listed above");
            if pane.fired {
                self.emit_changes(&mut pane, watermark, out)?;
            } else {
                self.fire(&mut pane, watermark, lateness > 0, out)?;
            }
            if (end - 1).saturating_add(lateness) <= watermark {
                if lateness > 0 {
                    self.purge(&pane)?;
                }
            } else {
                self.panes.insert(end, pane);
            }
        }
        Ok(())
    }
}
