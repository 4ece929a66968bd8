//! SESSION windows: per partition key, rows closer than the gap share a
//! session `[first ts, last ts + gap)`.
//!
//! ```text
//! row (key, ts) --> candidate [ts, ts + gap) --merge with every session of the key it
//!                   touches (s <= ts + gap && ts <= e)--> session --group key--> group
//! group = accumulator states (row-encoded), DISTINCT sightings, what was last emitted
//! watermark >= e - 1 ms ==> emit the session's changed groups
//! ```
//!
//! Rows are applied in two steps per run of rows: first, row by row, only the
//! interval arithmetic (which session a row lands in, which sessions it
//! merges); then all the run's rows at once through DataFusion accumulators,
//! one per aggregate, over every group touched: stored states merged in,
//! rows added, states encoded back. Merging two sessions only appends one's
//! state list to the other's; the next update or emission merges them.
//!
//! Allowed lateness: a fired session is kept until the watermark passes its
//! end by `'window.allowed-lateness'`. A late row that lands in it (or bridges
//! it with others) changes it; at the next watermark advance every row emitted
//! under bounds that changed is emitted again as a delete (with the values it
//! had), and the session's changed groups as updates, or inserts under new
//! bounds. Rows carry the change in their identity ([`crate::ids::Change`]).
//!
//! State: every key's sessions are held in memory (sessions close after the
//! gap, so this is bounded by the keys active within gap + lateness); the
//! store holds a copy as of the last checkpoint, one value per key:
//! `partition key -> encoded sessions`, written for keys changed since.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::{HashMap, HashSet};
use weir_state::OperatorState;
use weir_state::codec::{CodecError, Kind, Reader, Writer};

use super::aggregation::{Aggregation, Inputs};
use crate::ids::{Change, ROW_ID_LEN, RowId, change_row_id, id_array};
use crate::operator::{
    Batch, Context, OUTSIDE_WINDOW_RANGE, Operator, StateAttachment, event_times,
};

struct Group {
    /// Row-encoded accumulator states to merge (one, unless sessions merged).
    states: Vec<Box<[u8]>>,
    /// Per aggregate, the encoded argument values a DISTINCT aggregate saw.
    seen: Vec<HashSet<Box<[u8]>>>,
    /// What was last emitted for this group under the session's current
    /// bounds: the identity its delete would carry and the encoded row.
    emitted: Option<(RowId, Box<[u8]>)>,
    /// Changed since last emitted.
    changed: bool,
}

struct Session {
    /// Identifies the session within a run of rows (not stored).
    id: u64,
    start: i64,
    end: i64,
    groups: BTreeMap<Box<[u8]>, Group>,
    /// Rows emitted under bounds that no longer hold, to delete.
    retract: Vec<(RowId, Box<[u8]>)>,
}

impl Session {
    /// Moves the session to new bounds: what it emitted under the old ones
    /// is to be deleted, and every group is emitted anew.
    fn rebound(&mut self, start: i64, end: i64) {
        if (start, end) == (self.start, self.end) {
            return;
        }
        for g in self.groups.values_mut() {
            if let Some(e) = g.emitted.take() {
                self.retract.push(e);
            }
            g.changed = true;
        }
        self.start = start;
        self.end = end;
    }

    /// Takes in the groups and retractions of `other`, a session merged into
    /// this one.
    fn absorb(&mut self, other: Session) {
        self.retract.extend(other.retract);
        for (gk, mut g) in other.groups {
            if let Some(e) = g.emitted.take() {
                self.retract.push(e);
            }
            match self.groups.get_mut(&gk) {
                None => {
                    g.changed = true;
                    self.groups.insert(gk, g);
                }
                Some(mine) => {
                    mine.states.extend(g.states);
                    for (a, b) in mine.seen.iter_mut().zip(g.seen) {
                        a.extend(b);
                    }
                    mine.changed = true;
                }
            }
        }
    }
}

#[derive(Default)]
struct Key {
    /// Disjoint, by start.
    sessions: Vec<Session>,
    /// When the key next needs the watermark's attention (its entry in `due`).
    due: Option<i64>,
}

pub struct SessionOp {
    agg: Aggregation,
    partition_exprs: Vec<Arc<dyn PhysicalExpr>>,
    partition_converter: RowConverter,
    time_column: usize,
    gap: i64,
    lateness: i64,
    /// Encodes emitted rows, to delete them later (with allowed lateness).
    output_converter: Option<RowConverter>,
    keys: HashMap<Box<[u8]>, Key>,
    /// (time, partition key): when each key's earliest session fires or goes.
    due: BTreeSet<(i64, Box<[u8]>)>,
    /// Keys with changes to emit at the next watermark advance.
    pending: HashSet<Box<[u8]>>,
    /// Keys changed (or gone) since the last checkpoint.
    dirty: HashSet<Box<[u8]>>,
    next_id: u64,
    fired_through: i64,
    store: Option<OperatorState>,
}

/// A group touched by a run of rows: partition key, session, group key.
struct Slot {
    pk: Box<[u8]>,
    session: u64,
    gk: Box<[u8]>,
}

/// A group to emit: partition key, session bounds, group key, and how.
struct Emit {
    pk: Box<[u8]>,
    bounds: (i64, i64),
    gk: Box<[u8]>,
    change: Change,
}

/// A row's place after the interval step: its partition key's row in the
/// batch and the session it landed in.
struct Landed {
    row: u32,
    session: u64,
}

impl SessionOp {
    pub fn new(
        agg: Aggregation,
        partition_exprs: Vec<Arc<dyn PhysicalExpr>>,
        partition_types: Vec<DataType>,
        time_column: usize,
        gap_ms: i64,
        allowed_lateness_ms: i64,
    ) -> anyhow::Result<Self> {
        let partition_converter =
            RowConverter::new(partition_types.into_iter().map(SortField::new).collect())?;
        let output_converter = if allowed_lateness_ms > 0 {
            Some(
                RowConverter::new(
                    agg.schema
                        .fields()
                        .iter()
                        .map(|f| SortField::new(f.data_type().clone()))
                        .collect(),
                )
                .context(
                    "a session's output row cannot be kept for retraction (unsupported type)",
                )?,
            )
        } else {
            None
        };
        Ok(Self {
            agg,
            partition_exprs,
            partition_converter,
            time_column,
            gap: gap_ms,
            lateness: allowed_lateness_ms,
            output_converter,
            keys: HashMap::new(),
            due: BTreeSet::new(),
            pending: HashSet::new(),
            dirty: HashSet::new(),
            next_id: 0,
            fired_through: i64::MIN,
            store: None,
        })
    }

    fn schema(&self) -> &SchemaRef {
        &self.agg.schema
    }

    fn partition_rows(&self, data: &RecordBatch) -> anyhow::Result<Option<Rows>> {
        if self.partition_exprs.is_empty() {
            return Ok(None);
        }
        let n = data.num_rows();
        let arrays = self
            .partition_exprs
            .iter()
            .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        Ok(Some(self.partition_converter.convert_columns(&arrays)?))
    }

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

    fn reschedule(&mut self, pk: &[u8]) {
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

    fn next_due(&self) -> i64 {
        if !self.pending.is_empty() {
            return i64::MIN;
        }
        self.due.first().map_or(i64::MAX, |(t, _)| *t)
    }

    /// The interval step for one row: the session it lands in (merging what
    /// it bridges), or `None` if it is late. Returns the session's id and the
    /// watermark at which it needs attention. `ts + gap` must not overflow.
    fn land(&mut self, pk: &[u8], ts: i64, arrived_under: i64) -> Option<(u64, i64)> {
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
    fn update(
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

    /// Moves the watermark: emits deletes of rows whose bounds changed, the
    /// changed groups of sessions the watermark has passed, and forgets
    /// sessions past their allowed lateness.
    fn advance(&mut self, watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
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

impl Operator for SessionOp {
    fn name(&self) -> &'static str {
        "session window aggregate"
    }

    /// As for the other windows, a batch gives the output of feeding its
    /// rows one at a time: where a row arrived under a watermark that fires
    /// or changes something, the rows before it are applied and the watermark
    /// moved first.
    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let data = &batch.data;
        let n = data.num_rows();
        if n == 0 {
            return Ok(());
        }
        let times = event_times(data, self.time_column)?;
        let wm = batch.arrival_watermark.values();
        let inputs = self.agg.inputs(data)?;
        let partitions = self.partition_rows(data)?;
        let mut landed: Vec<Landed> = Vec::new();
        let mut merged_into: HashMap<u64, u64> = HashMap::new();
        let mut late: Vec<u32> = Vec::new();
        let mut out_of_range: Vec<u32> = Vec::new();
        let mut next_due = self.next_due();
        for row in 0..n {
            let w = wm[row];
            if w > self.fired_through && w >= next_due {
                self.update(
                    &inputs,
                    partitions.as_ref(),
                    std::mem::take(&mut landed),
                    &merged_into,
                )?;
                merged_into.clear();
                self.advance(w, out)?;
                next_due = self.next_due();
            }
            if times.is_null(row) {
                late.push(row as u32);
                continue;
            }
            let ts = times.value(row);
            if ts.checked_add(self.gap).is_none() {
                // The session would end after the last representable time.
                out_of_range.push(row as u32);
                continue;
            }
            let pk: &[u8] = partitions.as_ref().map_or(&[], |p| p.row(row).data());
            let arrived_under = w.max(self.fired_through);
            let before: Vec<u64> = self
                .keys
                .get(pk)
                .map(|k| k.sessions.iter().map(|s| s.id).collect())
                .unwrap_or_default();
            match self.land(pk, ts, arrived_under) {
                None => late.push(row as u32),
                Some((id, needs)) => {
                    // Sessions of the key that the row merged away.
                    let after = &self.keys[pk].sessions;
                    for old in before {
                        if old != id && !after.iter().any(|s| s.id == old) {
                            merged_into.insert(old, id);
                        }
                    }
                    landed.push(Landed {
                        row: row as u32,
                        session: id,
                    });
                    next_due = next_due.min(needs);
                }
            }
        }
        self.update(&inputs, partitions.as_ref(), landed, &merged_into)?;
        ctx.set_aside_late(&batch, out_of_range, OUTSIDE_WINDOW_RANGE)?;
        ctx.set_aside_late(
            &batch,
            late,
            "late: the row's session would already have closed",
        )
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
        self.advance(watermark, out)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        for entry in state.store.scan(&[])? {
            let (k, v) = entry?;
            let (key, pending) = decode_key(&v, self.agg.aggregates.len(), &mut self.next_id)
                .context("reading stored sessions")?;
            if pending {
                self.pending.insert(k.clone());
            }
            self.keys.insert(k.clone(), key);
            self.reschedule(&k);
        }
        self.store = Some(state.store);
        Ok(())
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut batch = store.batch();
        for pk in self.dirty.drain() {
            match self.keys.get(&pk) {
                Some(key) => store.put(
                    &mut batch,
                    &pk,
                    &encode_key(key, self.pending.contains(&pk)),
                )?,
                None => store.delete(&mut batch, &pk)?,
            }
        }
        store.write(batch)?;
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.keys
            .values()
            .flat_map(|k| &k.sessions)
            .map(|s| s.groups.len())
            .sum()
    }
}

// Stored form of a key's sessions, a `Kind::Sessions` record:
// version pending(bool) sessions(varint)
//   { start(i64) end(i64) retracts(varint) { id(raw 16) row(bytes) }
//     groups(varint) { key(bytes) changed(bool) emitted(bool) [id(raw 16) row(bytes)]
//       states(varint) { state(bytes) } aggregates(varint) { values(varint) { value(bytes) } } } }

fn encode_key(key: &Key, pending: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::record(&mut out, Kind::Sessions);
    w.bool(pending);
    w.len(key.sessions.len());
    for s in &key.sessions {
        w.i64(s.start);
        w.i64(s.end);
        w.len(s.retract.len());
        for (id, row) in &s.retract {
            w.raw(id);
            w.bytes(row);
        }
        w.len(s.groups.len());
        for (gk, g) in &s.groups {
            w.bytes(gk);
            w.bool(g.changed);
            w.bool(g.emitted.is_some());
            if let Some((id, row)) = &g.emitted {
                w.raw(id);
                w.bytes(row);
            }
            w.len(g.states.len());
            for st in &g.states {
                w.bytes(st);
            }
            w.len(g.seen.len());
            for seen in &g.seen {
                w.len(seen.len());
                for v in seen {
                    w.bytes(v);
                }
            }
        }
    }
    out
}

fn row_id(r: &mut Reader<'_>) -> Result<RowId, CodecError> {
    Ok(r.raw(ROW_ID_LEN)?.try_into().expect("ROW_ID_LEN bytes"))
}

fn decode_key(v: &[u8], n_aggs: usize, next_id: &mut u64) -> anyhow::Result<(Key, bool)> {
    let mut r = Reader::open(Kind::Sessions, v)?;
    let pending = r.bool()?;
    let mut key = Key::default();
    // A session is at least its bounds and two counts; a group its key's
    // length, two flags and two counts; a retraction its id and a length.
    for _ in 0..r.count(18)? {
        let start = r.i64()?;
        let end = r.i64()?;
        let mut retract = Vec::new();
        for _ in 0..r.count(ROW_ID_LEN + 1)? {
            let id = row_id(&mut r)?;
            retract.push((id, r.bytes()?.into()));
        }
        let mut groups = BTreeMap::new();
        for _ in 0..r.count(5)? {
            let gk: Box<[u8]> = r.bytes()?.into();
            let changed = r.bool()?;
            let emitted = if r.bool()? {
                let id = row_id(&mut r)?;
                Some((id, r.bytes()?.into()))
            } else {
                None
            };
            let mut states = Vec::new();
            for _ in 0..r.count(1)? {
                states.push(r.bytes()?.into());
            }
            let at = r.position();
            let aggs = r.count(1)?;
            if aggs != n_aggs {
                return Err(r
                    .malformed_at(
                        at,
                        "the sessions have another number of aggregates than the plan",
                    )
                    .into());
            }
            let mut seen = Vec::with_capacity(aggs);
            for _ in 0..aggs {
                let n = r.count(1)?;
                let mut set = HashSet::with_capacity(n);
                for _ in 0..n {
                    set.insert(r.bytes()?.into());
                }
                seen.push(set);
            }
            groups.insert(
                gk,
                Group {
                    states,
                    seen,
                    emitted,
                    changed,
                },
            );
        }
        key.sessions.push(Session {
            id: *next_id,
            start,
            end,
            groups,
            retract,
        });
        *next_id += 1;
    }
    r.finish()?;
    Ok((key, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Bytes = Vec<u8>;
    /// A group as compared: key, changed, emitted, states, seen values per aggregate (sorted).
    type GroupView = (
        Bytes,
        bool,
        Option<(RowId, Bytes)>,
        Vec<Bytes>,
        Vec<Vec<Bytes>>,
    );
    /// A session as compared: bounds, retractions, groups.
    type SessionView = (i64, i64, Vec<(RowId, Bytes)>, Vec<GroupView>);

    const AGGS: usize = 2;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    fn group() -> impl Strategy<Value = GroupView> {
        (
            bytes(),
            any::<bool>(),
            proptest::option::of((any::<RowId>(), bytes())),
            proptest::collection::vec(bytes(), 0..3),
            proptest::collection::vec(proptest::collection::btree_set(bytes(), 0..4), AGGS),
        )
            .prop_map(|(k, c, e, st, seen)| {
                (
                    k,
                    c,
                    e,
                    st,
                    seen.into_iter().map(|s| s.into_iter().collect()).collect(),
                )
            })
    }

    fn sessions() -> impl Strategy<Value = Vec<SessionView>> {
        proptest::collection::vec(
            (
                any::<i64>(),
                any::<i64>(),
                proptest::collection::vec((any::<RowId>(), bytes()), 0..3),
                proptest::collection::btree_map(bytes(), group(), 0..4).prop_map(|m| {
                    m.into_iter()
                        .map(|(k, g)| (k, g.1, g.2, g.3, g.4))
                        .collect()
                }),
            ),
            0..4,
        )
    }

    fn build(views: &[SessionView]) -> Key {
        let sessions = views
            .iter()
            .enumerate()
            .map(|(i, (start, end, retract, groups))| Session {
                id: i as u64,
                start: *start,
                end: *end,
                retract: retract
                    .iter()
                    .map(|(id, r)| (*id, r.as_slice().into()))
                    .collect(),
                groups: groups
                    .iter()
                    .map(|(k, changed, emitted, states, seen)| {
                        let g = Group {
                            states: states.iter().map(|s| s.as_slice().into()).collect(),
                            seen: seen
                                .iter()
                                .map(|vs| vs.iter().map(|v| v.as_slice().into()).collect())
                                .collect(),
                            emitted: emitted.as_ref().map(|(id, r)| (*id, r.as_slice().into())),
                            changed: *changed,
                        };
                        (k.as_slice().into(), g)
                    })
                    .collect(),
            })
            .collect();
        Key {
            sessions,
            due: None,
        }
    }

    fn view(key: &Key) -> Vec<SessionView> {
        key.sessions
            .iter()
            .map(|s| {
                let groups = s
                    .groups
                    .iter()
                    .map(|(k, g)| {
                        let seen = g
                            .seen
                            .iter()
                            .map(|vs| {
                                let mut v: Vec<Bytes> = vs.iter().map(|b| b.to_vec()).collect();
                                v.sort();
                                v
                            })
                            .collect();
                        (
                            k.to_vec(),
                            g.changed,
                            g.emitted.as_ref().map(|(id, r)| (*id, r.to_vec())),
                            g.states.iter().map(|b| b.to_vec()).collect(),
                            seen,
                        )
                    })
                    .collect();
                let retract = s.retract.iter().map(|(id, r)| (*id, r.to_vec())).collect();
                (s.start, s.end, retract, groups)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn session_state_round_trips(views in sessions(), pending in any::<bool>()) {
            let key = build(&views);
            let bytes = encode_key(&key, pending);
            prop_assert_eq!(bytes[0], Kind::Sessions.version());
            let mut next_id = 7;
            let (back, was_pending) = decode_key(&bytes, AGGS, &mut next_id).unwrap();
            prop_assert_eq!(was_pending, pending);
            prop_assert_eq!(view(&back), views.clone());
            prop_assert_eq!(next_id, 7 + views.len() as u64);
            for cut in 0..bytes.len() {
                prop_assert!(decode_key(&bytes[..cut], AGGS, &mut next_id).is_err(), "cut at {}", cut);
            }
            prop_assert!(decode_key(&bytes, AGGS + 1, &mut next_id).is_err() || views.iter().all(|s| s.3.is_empty()));
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_sessions(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut next_id = 0;
            let _ = decode_key(&bytes, AGGS, &mut next_id);
            let mut versioned = vec![Kind::Sessions.version()];
            versioned.extend(bytes);
            let _ = decode_key(&versioned, AGGS, &mut next_id);
        }
    }

    #[test]
    fn version_1_sessions_are_refused_by_name() {
        // The first byte of the format before the shared codec.
        let Err(err) = decode_key(&[1, 0, 0, 0, 0, 0], AGGS, &mut 0) else {
            panic!("version 1 read");
        };
        let codec = err.downcast_ref::<CodecError>().expect("a codec error");
        assert!(matches!(
            codec,
            CodecError::Version {
                kind: Kind::Sessions,
                found: 1,
                supported: 2
            }
        ));
    }
}
