//! The watermark's side: when each key next needs attention, and moving the watermark (deleting
//! rows whose bounds changed, emitting changed groups, forgetting sessions past their lateness).

use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::RecordBatch;

use super::SessionOp;
use super::sessions::{Group, Key};
use crate::ids::{Change, RowId, change_row_id, id_array};
use crate::operator::Batch;

/// A group to emit: partition key, session bounds, group key, and how.
struct Emit {
    pk: Box<[u8]>,
    bounds: (i64, i64),
    gk: Box<[u8]>,
    change: Change,
}

impl SessionOp {
    /// When a key next needs attention: its earliest session's firing, or,
    /// once fired, its purge.
    fn key_due(&self, key: &Key) -> Option<i64> {
        key.sessions
            .iter()
            .map(|s| {
                if s.end - 1 > self.fired_through {
                    s.end - 1
                } else {
                    (s.end - 1).saturating_add(self.lateness)
                }
            })
            .min()
    }

    pub(super) fn reschedule(&mut self, pk: &[u8]) {
        let Some(key) = self.keys.get(pk) else { return };
        let due = self.key_due(key);
        let old = key.due;
        if old == due {
            return;
        }
        if let Some(t) = old {
            self.due.remove(&(t, Box::from(pk)));
        }
        if let Some(t) = due {
            self.due.insert((t, pk.into()));
        }
        self.keys.get_mut(pk).expect("looked up above").due = due;
    }

    pub(super) fn next_due(&self) -> i64 {
        if !self.pending.is_empty() {
            return i64::MIN;
        }
        self.due.first().map_or(i64::MAX, |(t, _)| *t)
    }

    /// Moves the watermark: emits deletes of rows whose bounds changed, the
    /// changed groups of sessions the watermark has passed, and forgets
    /// sessions past their allowed lateness.
    pub(super) fn advance(&mut self, watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        self.fired_through = watermark;
        let mut visit: Vec<Box<[u8]>> = self.pending.drain().collect();
        visit.extend(
            self.due
                .range(..(watermark.saturating_add(1), Box::<[u8]>::from(&[][..])))
                .map(|(_, k)| k.clone()),
        );
        visit.sort_unstable();
        visit.dedup();
        let mut deletes: Vec<(RowId, Box<[u8]>)> = Vec::new();
        // (partition key, session bounds, group key, change) of each emitted group.
        let mut emits: Vec<Emit> = Vec::new();
        for pk in &visit {
            let Some(key) = self.keys.get_mut(pk) else {
                continue;
            };
            for s in &mut key.sessions {
                deletes.append(&mut s.retract);
                if s.end - 1 > watermark {
                    continue;
                }
                for (gk, g) in &mut s.groups {
                    if !g.changed {
                        continue;
                    }
                    let change = if g.emitted.is_some() {
                        Change::Update
                    } else {
                        Change::Insert
                    };
                    emits.push(Emit {
                        pk: pk.clone(),
                        bounds: (s.start, s.end),
                        gk: gk.clone(),
                        change,
                    });
                }
            }
        }
        if !deletes.is_empty() {
            let conv = self
                .output_converter
                .as_ref()
                .context("retracting needs kept output rows")?;
            let parser = conv.parser();
            let columns = conv.convert_rows(deletes.iter().map(|(_, r)| parser.parse(r)))?;
            let data = RecordBatch::try_new(self.schema().clone(), columns)?;
            let ids = id_array(deletes.iter().map(|(id, _)| *id));
            out.push(Batch::uniform(data, watermark, Arc::new(ids)));
        }
        if !emits.is_empty() {
            self.emit(&emits, watermark, out)?;
        }
        for pk in visit {
            let lateness = self.lateness;
            let Some(key) = self.keys.get_mut(&pk) else {
                continue;
            };
            key.sessions
                .retain(|s| (s.end - 1).saturating_add(lateness) > watermark);
            self.dirty.insert(pk.clone());
            if key.sessions.is_empty() {
                if let Some(t) = key.due {
                    self.due.remove(&(t, pk.clone()));
                }
                self.keys.remove(&pk);
            } else {
                self.reschedule(&pk);
            }
        }
        Ok(())
    }

    /// Evaluates and emits the listed groups; with allowed lateness, keeps
    /// what was emitted to delete it if the session's bounds change.
    fn emit(&mut self, emits: &[Emit], watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        let n = emits.len();
        let mut accumulators = self.agg.new_accumulators()?;
        let mut stored: Vec<&[u8]> = Vec::new();
        let mut stored_groups = Vec::new();
        let mut sightings: Vec<(Vec<usize>, Vec<&[u8]>)> =
            vec![(Vec::new(), Vec::new()); self.agg.aggregates.len()];
        for (slot, e) in emits.iter().enumerate() {
            let g = self.group(&e.pk, e.bounds.0, &e.gk)?;
            for st in &g.states {
                stored.push(st);
                stored_groups.push(slot);
            }
            for (agg, seen) in g.seen.iter().enumerate() {
                for v in seen {
                    sightings[agg].0.push(slot);
                    sightings[agg].1.push(v);
                }
            }
        }
        self.agg
            .merge_state_rows(&mut accumulators, &stored, &stored_groups, n)?;
        for (agg, (groups, values)) in sightings.iter().enumerate() {
            if self.agg.aggregates[agg].distinct.is_some() {
                self.agg
                    .update_distinct(&mut accumulators, agg, values, groups, n)?;
            }
        }
        let keys: Vec<&[u8]> = emits.iter().map(|e| e.gk.as_ref()).collect();
        let bounds: Vec<(i64, i64)> = emits.iter().map(|e| e.bounds).collect();
        let data = self.agg.evaluate(&keys, &bounds, accumulators)?;
        let name = |pk: &[u8], gk: &[u8], (start, end): (i64, i64)| {
            [
                pk.to_vec(),
                gk.to_vec(),
                start.to_be_bytes().to_vec(),
                end.to_be_bytes().to_vec(),
            ]
        };
        let ids: Vec<RowId> = emits
            .iter()
            .map(|e| {
                let mut parts = name(&e.pk, &e.gk, e.bounds).to_vec();
                if e.change == Change::Update {
                    parts.push(watermark.to_be_bytes().to_vec());
                }
                let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                change_row_id(e.change, &refs)
            })
            .collect();
        let rows = match &self.output_converter {
            Some(conv) => Some(conv.convert_columns(data.columns())?),
            None => None,
        };
        // An update whose values equal what was emitted changes nothing.
        let mut keep = Vec::with_capacity(emits.len());
        for (i, e) in emits.iter().enumerate() {
            let delete_id = {
                let parts = name(&e.pk, &e.gk, e.bounds);
                let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                change_row_id(Change::Delete, &refs)
            };
            let g = self.group_mut(&e.pk, e.bounds.0, &e.gk)?;
            g.changed = false;
            let row: Option<Box<[u8]>> = rows.as_ref().map(|r| r.row(i).data().into());
            let same = e.change == Change::Update
                && matches!((&g.emitted, &row), (Some((_, old)), Some(new)) if old == new);
            keep.push(!same);
            g.emitted = row.map(|r| (delete_id, r));
        }
        let (data, ids) = if keep.iter().all(|k| *k) {
            (data, ids)
        } else {
            let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
            let data = datafusion::arrow::compute::filter_record_batch(&data, &mask)?;
            let ids = ids
                .into_iter()
                .zip(&keep)
                .filter_map(|(id, k)| k.then_some(id))
                .collect();
            (data, ids)
        };
        if data.num_rows() > 0 {
            out.push(Batch::uniform(data, watermark, Arc::new(id_array(ids))));
        }
        Ok(())
    }

    fn group(&self, pk: &[u8], start: i64, gk: &[u8]) -> anyhow::Result<&Group> {
        self.keys
            .get(pk)
            .and_then(|k| k.sessions.iter().find(|s| s.start == start))
            .and_then(|s| s.groups.get(gk))
            .context("an emitted group exists")
    }

    fn group_mut(&mut self, pk: &[u8], start: i64, gk: &[u8]) -> anyhow::Result<&mut Group> {
        self.keys
            .get_mut(pk)
            .and_then(|k| k.sessions.iter_mut().find(|s| s.start == start))
            .and_then(|s| s.groups.get_mut(gk))
            .context("an emitted group exists")
    }
}
