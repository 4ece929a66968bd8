//! Event-time window aggregation for TUMBLE, HOP and CUMULATE.
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
//! windows have all fired when it arrives is late: it goes to the context's
//! late output instead.
//!
//! State: with a store attached, a pane's delta is written to the store before
//! each checkpoint and whenever the operator's memory passes its budget, so
//! memory holds only what changed recently, not every key. In the store (the
//! operator's column family, under the task prefix):
//! ```text
//! pane(8) key_len(u32 BE) key  0            -> accumulator states of the non-DISTINCT aggregates
//! pane(8) key_len(u32 BE) key  1 agg(u8) v  -> (empty): value v seen by DISTINCT aggregate agg
//! ```
//! `pane` is the window end, sign bit flipped, big-endian, so panes scan in
//! time order. A pane that was never written to the store fires straight from
//! memory. DISTINCT aggregates are evaluated at fire time from the stored
//! sightings of a stored pane, and incrementally for an in-memory one.

mod assign;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use hashbrown::{HashMap, HashSet};
use weir_state::OperatorState;

pub use assign::Assigner;

use crate::ids::{id_array, window_row_id};
use crate::operator::{Batch, Context, Operator, StateAttachment, event_times};

/// Where each output column of the aggregate comes from.
#[derive(Debug, Clone, Copy)]
pub enum OutputColumn {
    Key(usize),
    WindowStart,
    WindowEnd,
    WindowTime,
    Aggregate(usize),
}

pub struct AggregateSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// For `agg(DISTINCT ...)`: `expr` is the plain aggregate, and this encodes
    /// its arguments so each (group, value) reaches it once.
    pub distinct: Option<RowConverter>,
}

/// What a pane accumulated since it was last written to the store.
struct Delta {
    groups: HashMap<Box<[u8]>, u32>,
    keys: Vec<Box<[u8]>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per aggregate: the (group, value) pairs seen, for DISTINCT aggregates.
    seen: Vec<Option<HashSet<Box<[u8]>>>>,
    /// Memory held by `groups`, `keys` and `seen`, roughly.
    bytes: usize,
}

struct Pane {
    /// The window's end: it names the window (CUMULATE windows share starts).
    end: i64,
    delta: Delta,
    /// Whether the store holds groups of this pane.
    in_store: bool,
}

/// Groups read back from the store per evaluation, bounding memory at fire time.
const FIRE_CHUNK_GROUPS: usize = 8192;

const KIND_STATE: u8 = 0;
const KIND_SIGHTING: u8 = 1;

pub struct WindowAggregateOp {
    assigner: Assigner,
    time_column: usize,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    aggregates: Vec<AggregateSpec>,
    /// Encodes the accumulator states of the non-DISTINCT aggregates, in order.
    state_converter: Option<RowConverter>,
    /// Per aggregate, how many state columns it has (0 for DISTINCT ones).
    state_widths: Vec<usize>,
    columns: Vec<OutputColumn>,
    schema: SchemaRef,
    /// Open panes by window end.
    panes: BTreeMap<i64, Pane>,
    /// The watermark up to which windows have fired.
    fired_through: i64,
    store: Option<OperatorState>,
    memory_budget: usize,
}

fn pane_prefix(end: i64) -> [u8; 8] {
    ((end as u64) ^ (1 << 63)).to_be_bytes()
}

fn pane_end(key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn group_prefix(end: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + 4 + key.len() + 2);
    k.extend_from_slice(&pane_prefix(end));
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl WindowAggregateOp {
    pub fn new(
        assigner: Assigner,
        time_column: usize,
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<datafusion::arrow::datatypes::DataType>,
        aggregates: Vec<AggregateSpec>,
        columns: Vec<OutputColumn>,
        schema: SchemaRef,
    ) -> anyhow::Result<Self> {
        let converter = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        let mut state_fields = Vec::new();
        let mut state_widths = Vec::new();
        for a in &aggregates {
            if a.distinct.is_some() {
                state_widths.push(0);
                continue;
            }
            let fields = a.expr.state_fields()?;
            state_widths.push(fields.len());
            state_fields.extend(fields.iter().map(|f| SortField::new(f.data_type().clone())));
        }
        let state_converter = if state_fields.is_empty() {
            None
        } else {
            Some(RowConverter::new(state_fields).with_context(
                || "an aggregate's intermediate state cannot be stored (unsupported type)",
            )?)
        };
        Ok(Self {
            assigner,
            time_column,
            key_exprs,
            converter,
            aggregates,
            state_converter,
            state_widths,
            columns,
            schema,
            panes: BTreeMap::new(),
            fired_through: i64::MIN,
            store: None,
            memory_budget: usize::MAX,
        })
    }

    fn new_accumulators(&self) -> anyhow::Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(|a| -> anyhow::Result<Box<dyn GroupsAccumulator>> {
                if a.expr.groups_accumulator_supported() {
                    Ok(a.expr.create_groups_accumulator()?)
                } else {
                    let expr = a.expr.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        expr.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    fn new_delta(&self) -> anyhow::Result<Delta> {
        Ok(Delta {
            groups: HashMap::new(),
            keys: Vec::new(),
            accumulators: self.new_accumulators()?,
            seen: self
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| HashSet::new()))
                .collect(),
            bytes: 0,
        })
    }

    /// Evaluates `accumulators` (groups in the order of `keys`) into output rows.
    fn emit(
        &self,
        end: i64,
        keys: &[Box<[u8]>],
        mut accumulators: Vec<Box<dyn GroupsAccumulator>>,
        watermark: i64,
    ) -> anyhow::Result<Batch> {
        let n = keys.len();
        let key_columns = if self.key_exprs.is_empty() {
            Vec::new()
        } else {
            let parser = self.converter.parser();
            self.converter
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?
        };
        let values = accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::common::Result<Vec<ArrayRef>>>()?;
        let start = self.assigner.start_of(end);
        let constant =
            |v: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from_value(v, n)) };
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| match c {
                OutputColumn::Key(i) => key_columns[*i].clone(),
                OutputColumn::WindowStart => constant(start),
                OutputColumn::WindowEnd => constant(end),
                OutputColumn::WindowTime => constant(end - 1),
                OutputColumn::Aggregate(i) => values[*i].clone(),
            })
            .collect();
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let ids = id_array(keys.iter().map(|k| window_row_id(k, end)));
        Ok(Batch::uniform(data, watermark, Arc::new(ids)))
    }

    /// The state columns of the non-DISTINCT aggregates of `accumulators`,
    /// taken out of them.
    fn take_states(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
    ) -> anyhow::Result<Vec<ArrayRef>> {
        let mut columns = Vec::new();
        for (i, acc) in accumulators.iter_mut().enumerate() {
            if self.state_widths[i] > 0 {
                columns.extend(acc.state(EmitTo::All)?);
            }
        }
        Ok(columns)
    }

    /// Merges stored state rows into `accumulators`: `rows[j]` belongs to
    /// group `groups[j]`.
    fn merge_state_rows(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        rows: &[&[u8]],
        groups: &[usize],
        total_groups: usize,
    ) -> anyhow::Result<()> {
        let Some(conv) = &self.state_converter else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let parser = conv.parser();
        let columns = conv.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        self.merge_state_columns(accumulators, &columns, groups, total_groups)
    }

    fn merge_state_columns(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        columns: &[ArrayRef],
        groups: &[usize],
        total_groups: usize,
    ) -> anyhow::Result<()> {
        let mut at = 0;
        for (i, acc) in accumulators.iter_mut().enumerate() {
            let w = self.state_widths[i];
            if w == 0 {
                continue;
            }
            acc.merge_batch(&columns[at..at + w], groups, total_groups)?;
            at += w;
        }
        Ok(())
    }

    /// Writes the pane's delta to the store, merged with what the store
    /// already holds for its groups, and starts a new delta.
    fn flush_pane(&self, pane: &mut Pane) -> anyhow::Result<()> {
        let store = self.store.as_ref().expect("flush_pane needs a store");
        if pane.delta.keys.is_empty() {
            return Ok(());
        }
        let Delta {
            keys,
            mut accumulators,
            seen,
            ..
        } = std::mem::replace(&mut pane.delta, self.new_delta()?);
        let n = keys.len();
        let prefixes: Vec<Vec<u8>> = keys.iter().map(|k| group_prefix(pane.end, k)).collect();
        let state_keys: Vec<Vec<u8>> = prefixes
            .iter()
            .map(|p| {
                let mut k = p.clone();
                k.push(KIND_STATE);
                k
            })
            .collect();
        let mut batch = store.batch();
        if let Some(conv) = &self.state_converter {
            let mut columns = self.take_states(&mut accumulators)?;
            let existing = if pane.in_store {
                let refs: Vec<&[u8]> = state_keys.iter().map(|k| k.as_slice()).collect();
                store.multi_get(&refs)?
            } else {
                Vec::new()
            };
            if existing.iter().any(Option::is_some) {
                let mut merged = self.new_accumulators()?;
                let (rows, groups): (Vec<&[u8]>, Vec<usize>) = existing
                    .iter()
                    .enumerate()
                    .filter_map(|(g, v)| v.as_deref().map(|v| (v, g)))
                    .unzip();
                self.merge_state_rows(&mut merged, &rows, &groups, n)?;
                let all: Vec<usize> = (0..n).collect();
                self.merge_state_columns(&mut merged, &columns, &all, n)?;
                columns = self.take_states(&mut merged)?;
            }
            let rows = conv.convert_columns(&columns)?;
            for (g, k) in state_keys.iter().enumerate() {
                store.put(&mut batch, k, rows.row(g).as_ref())?;
            }
        } else {
            for k in &state_keys {
                store.put(&mut batch, k, &[])?;
            }
        }
        for (agg, seen) in seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            for s in seen {
                let g = u32::from_le_bytes(s[..4].try_into().expect("4-byte group index"));
                let mut k = prefixes[g as usize].clone();
                k.push(KIND_SIGHTING);
                k.push(agg as u8);
                k.extend_from_slice(&s[4..]);
                store.put(&mut batch, &k, &[])?;
            }
        }
        store.write(batch)?;
        pane.in_store = true;
        Ok(())
    }

    /// Evaluates a pane whose window has ended.
    fn fire(&self, mut pane: Pane, watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        if !pane.in_store {
            let Delta {
                keys, accumulators, ..
            } = pane.delta;
            if !keys.is_empty() {
                out.push(self.emit(pane.end, &keys, accumulators, watermark)?);
            }
            return Ok(());
        }
        self.flush_pane(&mut pane)?;
        let store = self.store.as_ref().expect("a stored pane has a store");
        let prefix = pane_prefix(pane.end);
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut states: Vec<Box<[u8]>> = Vec::new();
        let mut sightings: Vec<(usize, u8, Box<[u8]>)> = Vec::new();
        for entry in store.scan(&prefix)? {
            let (k, v) = entry?;
            let len = u32::from_be_bytes(k[8..12].try_into().expect("stored key layout")) as usize;
            let key = &k[12..12 + len];
            match k[12 + len] {
                KIND_STATE => {
                    if keys.len() >= FIRE_CHUNK_GROUPS {
                        self.emit_stored(pane.end, &keys, &states, &sightings, watermark, out)?;
                        keys.clear();
                        states.clear();
                        sightings.clear();
                    }
                    keys.push(key.into());
                    states.push(v);
                }
                _ => {
                    let agg = k[13 + len];
                    sightings.push((keys.len() - 1, agg, k[14 + len..].into()));
                }
            }
        }
        if !keys.is_empty() {
            self.emit_stored(pane.end, &keys, &states, &sightings, watermark, out)?;
        }
        let mut batch = store.batch();
        store.delete_prefix(&mut batch, &prefix)?;
        store.write(batch)?;
        Ok(())
    }

    fn emit_stored(
        &self,
        end: i64,
        keys: &[Box<[u8]>],
        states: &[Box<[u8]>],
        sightings: &[(usize, u8, Box<[u8]>)],
        watermark: i64,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let n = keys.len();
        let mut accumulators = self.new_accumulators()?;
        let rows: Vec<&[u8]> = states.iter().map(|s| s.as_ref()).collect();
        let groups: Vec<usize> = (0..n).collect();
        self.merge_state_rows(&mut accumulators, &rows, &groups, n)?;
        for (agg, spec) in self.aggregates.iter().enumerate() {
            let Some(conv) = &spec.distinct else { continue };
            let (groups, values): (Vec<usize>, Vec<&[u8]>) = sightings
                .iter()
                .filter(|(_, a, _)| *a as usize == agg)
                .map(|(g, _, v)| (*g, v.as_ref()))
                .unzip();
            // Called even without sightings, so the accumulator knows all n groups.
            let parser = conv.parser();
            let columns = conv.convert_rows(values.iter().map(|v| parser.parse(v)))?;
            accumulators[agg].update_batch(&columns, &groups, None, n)?;
        }
        out.push(self.emit(end, keys, accumulators, watermark)?);
        Ok(())
    }

    /// Memory the deltas hold, roughly.
    fn memory(&self) -> usize {
        self.panes.values().map(pane_memory).sum()
    }

    /// Over budget: writes the largest deltas to the store until half the
    /// budget is free.
    fn enforce_budget(&mut self) -> anyhow::Result<()> {
        if self.store.is_none() {
            return Ok(());
        }
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
        Ok(())
    }
}

fn pane_memory(p: &Pane) -> usize {
    p.delta.bytes + p.delta.accumulators.iter().map(|a| a.size()).sum::<usize>()
}

/// The rows whose (group, argument values) the pane has not seen yet, among
/// those `filter` passes; marks them seen. Rows with a null argument are passed
/// through: aggregates ignore nulls themselves.
fn first_sightings(
    converter: &RowConverter,
    seen: &mut HashSet<Box<[u8]>>,
    bytes: &mut usize,
    values: &[ArrayRef],
    group_indices: &[usize],
    filter: Option<&BooleanArray>,
) -> anyhow::Result<BooleanArray> {
    let rows = converter.convert_columns(values)?;
    let mut key = Vec::new();
    let mask = (0..group_indices.len())
        .map(|r| {
            if filter.is_some_and(|f| !f.is_valid(r) || !f.value(r)) {
                return false;
            }
            if values.iter().any(|v| v.is_null(r)) {
                return true;
            }
            key.clear();
            key.extend_from_slice(&(group_indices[r] as u32).to_le_bytes());
            key.extend_from_slice(rows.row(r).as_ref());
            if seen.contains(key.as_slice()) {
                false
            } else {
                *bytes += key.len() + 24;
                seen.insert(key.as_slice().into());
                true
            }
        })
        .collect::<Vec<bool>>();
    Ok(BooleanArray::from(mask))
}

impl Operator for WindowAggregateOp {
    fn name(&self) -> &'static str {
        "window aggregate"
    }

    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        _out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let wm = batch.arrival_watermark.values();

        // Assign rows to panes; rows every one of whose windows has fired are late.
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late: Vec<u32> = Vec::new();
        for row in 0..n {
            if times.is_null(row) {
                late.push(row as u32);
                continue;
            }
            let ts = times.value(row);
            let arrived_under = wm[row].max(self.fired_through);
            let mut assigned = false;
            for end in self.assigner.ends(ts) {
                if end - 1 <= arrived_under {
                    // This and every earlier window have fired.
                    break;
                }
                by_pane.entry(end).or_default().push(row as u32);
                assigned = true;
            }
            if !assigned {
                late.push(row as u32);
            }
        }
        ctx.set_aside_late(
            &batch,
            late,
            "late: every window this row belongs to had already fired",
        )?;
        if by_pane.is_empty() {
            return Ok(());
        }

        // Evaluate keys and aggregate inputs once for the whole batch.
        let key_arrays = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        // No key columns (GROUP BY only the window): every row is one group.
        let rows = if key_arrays.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_arrays)?)
        };
        let mut inputs: Vec<Vec<ArrayRef>> = Vec::with_capacity(self.aggregates.len());
        let mut filters: Vec<Option<BooleanArray>> = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            inputs.push(
                a.expr
                    .expressions()
                    .iter()
                    .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::common::Result<Vec<_>>>()?,
            );
            filters.push(match &a.filter {
                Some(f) => Some(f.evaluate(data)?.into_array(n)?.as_boolean().clone()),
                None => None,
            });
        }

        for (end, indices) in by_pane {
            if !self.panes.contains_key(&end) {
                let pane = Pane {
                    end,
                    delta: self.new_delta()?,
                    in_store: false,
                };
                self.panes.insert(end, pane);
            }
            let pane = &mut self.panes.get_mut(&end).expect("inserted above").delta;
            let mut group_indices = Vec::with_capacity(indices.len());
            for &row in &indices {
                let key = rows.as_ref().map(|r| r.row(row as usize));
                let bytes: &[u8] = key.as_ref().map(|k| k.as_ref()).unwrap_or(&[]);
                let g = match pane.groups.get(bytes) {
                    Some(g) => *g,
                    None => {
                        let g = pane.keys.len() as u32;
                        let owned: Box<[u8]> = bytes.into();
                        pane.bytes += 2 * owned.len() + 48;
                        pane.keys.push(owned.clone());
                        pane.groups.insert(owned, g);
                        g
                    }
                };
                group_indices.push(g as usize);
            }
            let all_rows = indices.len() == n;
            let idx = (!all_rows).then(|| UInt32Array::from(indices));
            let total = pane.keys.len();
            for (i, acc) in pane.accumulators.iter_mut().enumerate() {
                let values: Vec<ArrayRef> = match &idx {
                    None => inputs[i].clone(),
                    Some(idx) => inputs[i]
                        .iter()
                        .map(|a| take(a.as_ref(), idx, None))
                        .collect::<Result<_, _>>()?,
                };
                let mut filter = match (&filters[i], &idx) {
                    (None, _) => None,
                    (Some(f), None) => Some(f.clone()),
                    (Some(f), Some(idx)) => Some(take(f, idx, None)?.as_boolean().clone()),
                };
                if let (Some(converter), Some(seen)) =
                    (&self.aggregates[i].distinct, &mut pane.seen[i])
                {
                    filter = Some(first_sightings(
                        converter,
                        seen,
                        &mut pane.bytes,
                        &values,
                        &group_indices,
                        filter.as_ref(),
                    )?);
                }
                acc.update_batch(&values, &group_indices, filter.as_ref(), total)?;
            }
        }
        self.enforce_budget()
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
        self.fired_through = watermark;
        while let Some((&end, _)) = self.panes.first_key_value() {
            if end - 1 > watermark {
                break;
            }
            let pane = self.panes.remove(&end).expect("first key exists");
            self.fire(pane, watermark, out)?;
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        self.memory_budget = state.memory_budget;
        // The panes the checkpoint holds: one seek per pane.
        let mut from = Vec::new();
        while let Some(key) = state.store.first_key_from(&from)? {
            let end = pane_end(&key);
            let pane = Pane {
                end,
                delta: self.new_delta()?,
                in_store: true,
            };
            self.panes.insert(end, pane);
            match end.checked_add(1) {
                Some(next) => from = pane_prefix(next).to_vec(),
                None => break,
            }
        }
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
            self.flush_pane(&mut pane)?;
            self.panes.insert(end, pane);
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.panes.values().map(|p| p.delta.keys.len()).sum()
    }
}
