//! Applying a run of rows: the interval step (the session each row lands in, the sessions it
//! merges), then the aggregate step (the touched groups' accumulator states updated).

use std::collections::BTreeMap;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::Rows;
use hashbrown::{HashMap, HashSet};

use super::SessionOp;
use super::sessions::{Group, Session};
use crate::window::aggregation::Inputs;

/// A group touched by a run of rows: partition key, session, group key.
struct Slot {
    pk: Box<[u8]>,
    session: u64,
    gk: Box<[u8]>,
}

/// A row's place after the interval step: its partition key's row in the
/// batch and the session it landed in.
pub(super) struct Landed {
    pub(super) row: u32,
    pub(super) session: u64,
}

impl SessionOp {
    /// The interval step for one row: the session it lands in (merging what
    /// it bridges), or `None` if it is late. Returns the session's id and the
    /// watermark at which it needs attention. `ts + gap` must not overflow.
    pub(super) fn land(&mut self, pk: &[u8], ts: i64, arrived_under: i64) -> Option<(u64, i64)> {
        let (lo, hi) = (ts, ts + self.gap);
        let key = self.keys.entry(pk.into()).or_default();
        let hits: Vec<usize> = key
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.start <= hi && lo <= s.end)
            .map(|(i, _)| i)
            .collect();
        let at = match hits.first() {
            None => {
                if (hi - 1).saturating_add(self.lateness) <= arrived_under {
                    if key.sessions.is_empty() {
                        self.keys.remove(pk);
                    }
                    return None;
                }
                let at = key.sessions.partition_point(|s| s.start < lo);
                key.sessions.insert(
                    at,
                    Session {
                        id: self.next_id,
                        start: lo,
                        end: hi,
                        groups: BTreeMap::new(),
                        retract: Vec::new(),
                    },
                );
                self.next_id += 1;
                at
            }
            Some(&first) => {
                let start = lo.min(key.sessions[first].start);
                let mut end = hi;
                for &i in &hits {
                    end = end.max(key.sessions[i].end);
                }
                for &i in hits[1..].iter().rev() {
                    let other = key.sessions.remove(i);
                    key.sessions[first].absorb(other);
                }
                key.sessions[first].rebound(start, end);
                first
            }
        };
        let s = &key.sessions[at];
        let needs = if s.end - 1 <= arrived_under || !s.retract.is_empty() {
            self.pending.insert(pk.into());
            i64::MIN
        } else {
            s.end - 1
        };
        let id = s.id;
        self.dirty.insert(pk.into());
        Some((id, needs))
    }

    /// The aggregate step for a run of rows: every touched group's states
    /// merged, the rows added, the states encoded back.
    pub(super) fn update(
        &mut self,
        inputs: &Inputs,
        partitions: Option<&Rows>,
        landed: Vec<Landed>,
        merged_into: &HashMap<u64, u64>,
    ) -> anyhow::Result<()> {
        if landed.is_empty() {
            return Ok(());
        }
        let resolve = |mut id: u64| {
            while let Some(&to) = merged_into.get(&id) {
                id = to;
            }
            id
        };
        // Arena: one accumulator group per touched (session, group key).
        let mut arena: HashMap<(u64, Box<[u8]>), usize> = HashMap::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut group_of_row = Vec::with_capacity(landed.len());
        for l in &landed {
            let pk: &[u8] = partitions.map_or(&[], |p| p.row(l.row as usize).data());
            let id = resolve(l.session);
            let gk = inputs.key(l.row as usize);
            let slot = match arena.get(&(id, Box::from(gk))) {
                Some(&s) => s,
                None => {
                    let s = slots.len();
                    arena.insert((id, gk.into()), s);
                    slots.push(Slot {
                        pk: pk.into(),
                        session: id,
                        gk: gk.into(),
                    });
                    s
                }
            };
            group_of_row.push(slot);
        }
        let n = slots.len();
        let n_aggs = self.agg.aggregates.len();
        let mut accumulators = self.agg.new_accumulators()?;
        // Stored states of the touched groups.
        let mut stored: Vec<&[u8]> = Vec::new();
        let mut stored_groups = Vec::new();
        {
            for (
                slot,
                Slot {
                    pk,
                    session: id,
                    gk,
                },
            ) in slots.iter().enumerate()
            {
                let key = self
                    .keys
                    .get(pk)
                    .context("a landed row's key has sessions")?;
                let s = key
                    .sessions
                    .iter()
                    .find(|s| s.id == *id)
                    .context("a landed row's session exists")?;
                if let Some(g) = s.groups.get(gk) {
                    for st in &g.states {
                        stored.push(st);
                        stored_groups.push(slot);
                    }
                }
            }
            self.agg
                .merge_state_rows(&mut accumulators, &stored, &stored_groups, n)?;
        }
        let idx = UInt32Array::from_iter_values(landed.iter().map(|l| l.row));
        let mut new_sightings: Vec<Vec<(usize, Box<[u8]>)>> = vec![Vec::new(); n_aggs];
        for (i, acc) in accumulators.iter_mut().enumerate() {
            let values: Vec<ArrayRef> = inputs.values[i]
                .iter()
                .map(|a| take(a.as_ref(), &idx, None))
                .collect::<Result<_, _>>()?;
            let filter = match &inputs.filters[i] {
                Some(f) => Some(
                    take(f, &idx, None)?
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                        .expect("take keeps the type")
                        .clone(),
                ),
                None => None,
            };
            if let Some(conv) = &self.agg.aggregates[i].distinct {
                let rows = conv.convert_columns(&values)?;
                for (r, &slot) in group_of_row.iter().enumerate() {
                    let passes = filter.as_ref().is_none_or(|f| f.is_valid(r) && f.value(r));
                    if passes && values.iter().all(|v| !v.is_null(r)) {
                        new_sightings[i].push((slot, rows.row(r).data().into()));
                    }
                }
                continue;
            }
            acc.update_batch(&values, &group_of_row, filter.as_ref(), n)?;
        }
        let encoded = self.agg.encode_states(&mut accumulators)?;
        for (
            slot,
            Slot {
                pk,
                session: id,
                gk,
            },
        ) in slots.iter().enumerate()
        {
            let key = self.keys.get_mut(pk).expect("checked above");
            let s = key
                .sessions
                .iter_mut()
                .find(|s| s.id == *id)
                .expect("checked above");
            let g = s.groups.entry(gk.clone()).or_insert_with(|| Group {
                states: Vec::new(),
                seen: vec![HashSet::new(); n_aggs],
                emitted: None,
                changed: true,
            });
            g.states = encoded
                .as_ref()
                .map(|e| vec![Box::<[u8]>::from(e.row(slot).data())])
                .unwrap_or_default();
            g.changed = true;
        }
        for (agg, sightings) in new_sightings.into_iter().enumerate() {
            for (slot, v) in sightings {
                let Slot {
                    pk,
                    session: id,
                    gk,
                } = &slots[slot];
                let key = self.keys.get_mut(pk).expect("checked above");
                let s = key
                    .sessions
                    .iter_mut()
                    .find(|s| s.id == *id)
                    .expect("checked above");
                let g = s.groups.get_mut(gk).expect("created above");
                g.seen[agg].insert(v);
            }
        }
        let touched: HashSet<Box<[u8]>> = slots.into_iter().map(|s| s.pk).collect();
        for pk in touched {
            self.reschedule(&pk);
        }
        Ok(())
    }
}
