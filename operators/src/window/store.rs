//! A pane in the store: moved there whole (per group) when memory runs over,
//! copied in segments at checkpoints, read back at restore, purged when done.

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use weir_state::OperatorState;

use super::groups::unpair;
use super::keys::{
    KIND_SIGHTING, KIND_STATE, SEGMENT_BYTES, group_prefix, pane_prefix, put_segment_group,
    read_segment, seal_segment, segment_prefix, with_kind,
};
use super::{Delta, Dicts, Pane, WindowAggregateOp};

/// Groups written to the store per write when a pane moves there.
const FLUSH_CHUNK_GROUPS: usize = 8192;

impl WindowAggregateOp {
    /// Writes the pane's delta to the store, merged with what the store
    /// already holds for its groups, and starts a new delta. Of a fired pane,
    /// records the groups it changed.
    pub(super) fn flush_pane(&self, pane: &mut Pane) -> anyhow::Result<()> {
        let store = self.store.as_ref().expect("flush_pane needs a store");
        if pane.delta.keys.is_empty() {
            return Ok(());
        }
        if !pane.in_store && pane.segments > 0 {
            // Memory holds the pane whole: its groups go to the store one by
            // one (below, as a pane new to the store), replacing its segments.
            let mut batch = store.batch();
            store.delete_prefix(&mut batch, &segment_prefix(pane.end))?;
            store.write(batch)?;
            pane.segments = 0;
        }
        let Delta {
            keys,
            mut accumulators,
            seen,
            ..
        } = std::mem::replace(&mut pane.delta, self.new_delta()?);
        let n = keys.len();
        // Every group's states at once (taking them empties the
        // accumulators), then written FLUSH_CHUNK_GROUPS groups per write: a
        // pane of a million groups written in one batch had held its keys,
        // the stored states read back, their encodings and the batch itself
        // at once, and put all of it into one memtable.
        let columns = self.agg.take_states(&mut accumulators)?;
        drop(accumulators);
        // The sightings (group, aggregate, value) by chunk of groups.
        let mut sightings: Vec<Vec<(u32, u8, u32)>> =
            vec![Vec::new(); n.div_ceil(FLUSH_CHUNK_GROUPS)];
        for (agg, seen) in seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            for &p in &seen.order {
                let (g, v) = unpair(p);
                sightings[g as usize / FLUSH_CHUNK_GROUPS].push((g, agg as u8, v));
            }
        }
        for (from, chunk_sightings) in (0..n).step_by(FLUSH_CHUNK_GROUPS).zip(sightings) {
            let to = (from + FLUSH_CHUNK_GROUPS).min(n);
            let m = to - from;
            let prefixes: Vec<Vec<u8>> = keys.keys()[from..to]
                .iter()
                .map(|&k| group_prefix(pane.end, self.dicts.keys.get(k)))
                .collect();
            let state_keys: Vec<Vec<u8>> =
                prefixes.iter().map(|p| with_kind(p, KIND_STATE)).collect();
            let existing = if pane.in_store {
                let refs: Vec<&[u8]> = state_keys.iter().map(|k| k.as_slice()).collect();
                store.multi_get(&refs)?
            } else {
                vec![None; m]
            };
            // Of a fired pane: which groups' results the delta changes (a late
            // row that leaves every value as it was re-emits nothing).
            let mut differs = vec![!pane.fired; m];
            let mut batch = store.batch();
            match &self.agg.state_converter {
                Some(conv) => {
                    let mut chunk: Vec<ArrayRef> =
                        columns.iter().map(|c| c.slice(from, m)).collect();
                    if existing.iter().any(Option::is_some) {
                        let mut merged = self.agg.new_accumulators()?;
                        let (rows, groups): (Vec<&[u8]>, Vec<usize>) = existing
                            .iter()
                            .enumerate()
                            .filter_map(|(g, v)| v.as_deref().map(|v| (v, g)))
                            .unzip();
                        self.agg.merge_state_rows(&mut merged, &rows, &groups, m)?;
                        let all: Vec<usize> = (0..m).collect();
                        self.agg.merge_state_columns(&mut merged, &chunk, &all, m)?;
                        chunk = self.agg.take_states(&mut merged)?;
                    }
                    let rows = conv.convert_columns(&chunk)?;
                    for (g, k) in state_keys.iter().enumerate() {
                        let row = rows.row(g);
                        if existing[g].as_deref() != Some(row.as_ref()) {
                            differs[g] = true;
                        }
                        store.put(&mut batch, k, row.as_ref())?;
                    }
                }
                None => {
                    for (g, k) in state_keys.iter().enumerate() {
                        if existing[g].is_none() {
                            differs[g] = true;
                        }
                        store.put(&mut batch, k, &[])?;
                    }
                }
            }
            let chunk_sightings: Vec<(usize, Vec<u8>)> = chunk_sightings
                .into_iter()
                .map(|(g, agg, v)| {
                    let g = g as usize - from;
                    let mut k = with_kind(&prefixes[g], KIND_SIGHTING);
                    k.push(agg);
                    k.extend_from_slice(self.dicts.value(agg as usize, v));
                    (g, k)
                })
                .collect();
            if pane.fired && pane.in_store {
                // A value the store has already seen changes nothing.
                let refs: Vec<&[u8]> = chunk_sightings.iter().map(|(_, k)| k.as_slice()).collect();
                for ((g, _), had) in chunk_sightings.iter().zip(store.multi_get(&refs)?) {
                    if had.is_none() {
                        differs[*g] = true;
                    }
                }
            } else {
                for (g, _) in &chunk_sightings {
                    differs[*g] = true;
                }
            }
            for (_, k) in &chunk_sightings {
                store.put(&mut batch, k, &[])?;
            }
            if pane.fired {
                for (g, (e, d)) in existing.iter().zip(&differs).enumerate() {
                    if *d {
                        pane.changed
                            .entry(self.dicts.keys.get(keys.keys()[from + g]).into())
                            .or_insert(e.is_some());
                    }
                }
            }
            store.write(batch)?;
        }
        pane.in_store = true;
        Ok(())
    }

    /// Of a pane memory holds whole: gives the store a copy of the groups that
    /// changed since the last copy, with the sightings new since, in segments,
    /// and leaves memory holding the same values.
    pub(super) fn copy_pane(&self, pane: &mut Pane) -> anyhow::Result<()> {
        let store = self.store.as_ref().expect("copy_pane needs a store");
        let d = &mut pane.delta;
        let n = d.keys.len();
        let dirty: Vec<u32> = (0..n as u32).filter(|&g| d.dirty[g as usize]).collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let states = match &self.agg.state_converter {
            Some(conv) => {
                // Taking the states empties the accumulators; they are rebuilt
                // from the same states.
                let columns = self.agg.take_states(&mut d.accumulators)?;
                let rows = if dirty.len() == n {
                    conv.convert_columns(&columns)?
                } else {
                    let idx = UInt32Array::from(dirty.clone());
                    let taken = columns
                        .iter()
                        .map(|c| take(c.as_ref(), &idx, None))
                        .collect::<Result<Vec<_>, _>>()?;
                    conv.convert_columns(&taken)?
                };
                let mut rebuilt = self.agg.new_accumulators()?;
                let groups: Vec<usize> = (0..n).collect();
                self.agg
                    .merge_state_columns(&mut rebuilt, &columns, &groups, n)?;
                for (i, acc) in rebuilt.into_iter().enumerate() {
                    if self.agg.has_state(i) {
                        d.accumulators[i] = acc;
                    }
                }
                Some(rows)
            }
            None => None,
        };
        // The new sightings by group (a group that saw a value is dirty).
        let mut sightings: Vec<(u32, u8, u32)> = Vec::new();
        for (agg, seen) in d.seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            sightings.extend(seen.order[d.seen_copied[agg]..].iter().map(|&p| {
                let (g, v) = unpair(p);
                (g, agg as u8, v)
            }));
            d.seen_copied[agg] = seen.order.len();
        }
        sightings.sort_unstable();
        let mut body = Vec::with_capacity(SEGMENT_BYTES + 4096);
        let mut segment = Vec::with_capacity(SEGMENT_BYTES + 4096);
        let mut groups = 0;
        let mut s = 0;
        for (j, &g) in dirty.iter().enumerate() {
            let from = s;
            while s < sightings.len() && sightings[s].0 == g {
                s += 1;
            }
            put_segment_group(
                &mut body,
                self.dicts.keys.get(d.keys.keys()[g as usize]),
                states.as_ref().map_or(&[][..], |r| r.row(j).data()),
                sightings[from..s]
                    .iter()
                    .map(|&(_, agg, v)| (agg, self.dicts.value(agg as usize, v))),
            );
            groups += 1;
            if body.len() >= SEGMENT_BYTES || j + 1 == dirty.len() {
                seal_segment(&mut segment, groups, &body);
                let mut k = segment_prefix(pane.end);
                k.extend_from_slice(&pane.segments.to_be_bytes());
                // A write per segment: a pane's copy is never held twice over
                // (the checkpoint after it is what commits it).
                let mut batch = store.batch();
                store.put(&mut batch, &k, &segment)?;
                store.write(batch)?;
                pane.segments += 1;
                body.clear();
                groups = 0;
            }
        }
        debug_assert_eq!(s, sightings.len(), "every new sighting's group is dirty");
        d.dirty.fill(false);
        Ok(())
    }

    /// The pane ending at `end` from its segments, whole, if it was stored so.
    pub(super) fn restore_segments(
        &self,
        dicts: &mut Dicts,
        store: &OperatorState,
        end: i64,
    ) -> anyhow::Result<Option<(Delta, u64)>> {
        let mut d = self.new_delta()?;
        let mut states: Vec<Box<[u8]>> = Vec::new();
        let mut segments = 0;
        let distinct: Vec<bool> = d.seen.iter().map(Option::is_some).collect();
        for entry in store.scan(&segment_prefix(end))? {
            let (_, v) = entry?;
            segments += 1;
            read_segment(&v, &distinct, |key, state, sightings| {
                let (g, new) = d.keys.group(dicts.keys.intern(key));
                if new {
                    states.push(state.into());
                    d.dirty.push(false);
                } else {
                    // A later copy of the group replaces an earlier one.
                    states[g as usize] = state.into();
                }
                for &(agg, value) in sightings {
                    // read_segment checked that `agg` is a DISTINCT aggregate.
                    let seen = d.seen[agg].as_mut().expect("a DISTINCT aggregate");
                    let values = dicts.values[agg].as_mut().expect("a DISTINCT aggregate");
                    seen.insert(g, values.intern(value));
                }
            })?;
        }
        if segments == 0 {
            return Ok(None);
        }
        let rows: Vec<&[u8]> = states.iter().map(|s| s.as_ref()).collect();
        let mut sightings = Vec::new();
        for (agg, seen) in d.seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            sightings.extend(seen.order.iter().map(|&p| {
                let (g, v) = unpair(p);
                (g as usize, agg as u8, dicts.value(agg, v))
            }));
            d.seen_copied[agg] = seen.order.len();
        }
        d.accumulators = self.accumulators_from(&rows, &sightings)?;
        Ok(Some((d, segments)))
    }

    pub(super) fn purge(&self, pane: &Pane) -> anyhow::Result<()> {
        if !pane.in_store && pane.segments == 0 {
            return Ok(());
        }
        let store = self.store.as_ref().expect("a stored pane has a store");
        let mut batch = store.batch();
        store.delete_prefix(&mut batch, &pane_prefix(pane.end))?;
        store.write(batch)?;
        Ok(())
    }
}
