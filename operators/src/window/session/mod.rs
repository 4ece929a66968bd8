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

mod apply;
mod codec;
mod fire;
mod sessions;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::{HashMap, HashSet};
use weir_state::OperatorState;

use super::aggregation::Aggregation;
use crate::operator::{
    Batch, Context, OUTSIDE_WINDOW_RANGE, Operator, StateAttachment, event_times,
};

use apply::Landed;
use codec::{decode_key, encode_key};
use sessions::Key;

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
