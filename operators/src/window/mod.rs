//! Event-time window aggregation for TUMBLE and HOP.
//!
//! ```text
//! batch --assign--> (row, window) pairs --group key--> pane of that window
//!       pane = group table (row-encoded key -> group index) + one GroupsAccumulator per aggregate
//! watermark >= window_end - 1 ms  ==> evaluate the pane's accumulators, emit, drop the pane
//! ```
//!
//! Every aggregate DataFusion has works here: the operator drives DataFusion's
//! `GroupsAccumulator`s (or its `Accumulator`s through the adapter). A row whose
//! windows have all fired when it arrives is late: it goes to the context's
//! late output instead. Panes live in memory; RocksDB-backed panes are the
//! state issue's work.

mod assign;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use hashbrown::{HashMap, HashSet};

pub use assign::Assigner;

use crate::operator::{Batch, Context, Operator};

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

struct Pane {
    start: i64,
    groups: HashMap<Box<[u8]>, u32>,
    keys: Vec<Box<[u8]>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per aggregate: the (group, value) pairs seen, for DISTINCT aggregates.
    seen: Vec<Option<HashSet<Box<[u8]>>>>,
}

pub struct WindowAggregateOp {
    assigner: Assigner,
    time_column: usize,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    aggregates: Vec<AggregateSpec>,
    columns: Vec<OutputColumn>,
    schema: SchemaRef,
    /// Open panes by window start.
    panes: BTreeMap<i64, Pane>,
    /// The watermark up to which windows have fired.
    fired_through: i64,
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
        Ok(Self {
            assigner,
            time_column,
            key_exprs,
            converter,
            aggregates,
            columns,
            schema,
            panes: BTreeMap::new(),
            fired_through: i64::MIN,
        })
    }

    fn new_pane(&self, start: i64) -> anyhow::Result<Pane> {
        let accumulators = self
            .aggregates
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
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Pane {
            start,
            groups: HashMap::new(),
            keys: Vec::new(),
            accumulators,
            seen: self
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| HashSet::new()))
                .collect(),
        })
    }

    fn emit(&self, pane: Pane) -> anyhow::Result<RecordBatch> {
        let Pane {
            start,
            keys,
            mut accumulators,
            ..
        } = pane;
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
        let end = start + self.assigner.size();
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
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The rows whose (group, argument values) the pane has not seen yet, among
/// those `filter` passes; marks them seen. Rows with a null argument are passed
/// through: aggregates ignore nulls themselves.
fn first_sightings(
    converter: &RowConverter,
    seen: &mut HashSet<Box<[u8]>>,
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
        let times = data
            .column(self.time_column)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| anyhow::anyhow!("the window's event-time column is not TIMESTAMP(3)"))?;
        let wm = batch.arrival_watermark.values();

        // Assign rows to panes; rows every one of whose windows has fired are late.
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late: Vec<u32> = Vec::new();
        let size = self.assigner.size();
        for row in 0..n {
            if times.is_null(row) {
                late.push(row as u32);
                continue;
            }
            let ts = times.value(row);
            let arrived_under = wm[row].max(self.fired_through);
            let mut assigned = false;
            for start in self.assigner.starts(ts) {
                if start + size - 1 <= arrived_under {
                    // This and every earlier window have fired.
                    break;
                }
                by_pane.entry(start).or_default().push(row as u32);
                assigned = true;
            }
            if !assigned {
                late.push(row as u32);
            }
        }
        if !late.is_empty() {
            let idx = UInt32Array::from(late);
            let columns = data
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            ctx.late_rows += idx.len() as u64;
            ctx.late.push(RecordBatch::try_new(data.schema(), columns)?);
        }
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

        for (start, indices) in by_pane {
            if !self.panes.contains_key(&start) {
                let pane = self.new_pane(start)?;
                self.panes.insert(start, pane);
            }
            let pane = self.panes.get_mut(&start).expect("inserted above");
            let mut group_indices = Vec::with_capacity(indices.len());
            for &row in &indices {
                let key = rows.as_ref().map(|r| r.row(row as usize));
                let bytes: &[u8] = key.as_ref().map(|k| k.as_ref()).unwrap_or(&[]);
                let g = match pane.groups.get(bytes) {
                    Some(g) => *g,
                    None => {
                        let g = pane.keys.len() as u32;
                        let owned: Box<[u8]> = bytes.into();
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
                        &values,
                        &group_indices,
                        filter.as_ref(),
                    )?);
                }
                acc.update_batch(&values, &group_indices, filter.as_ref(), total)?;
            }
        }
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
        self.fired_through = watermark;
        let size = self.assigner.size();
        while let Some((&start, _)) = self.panes.first_key_value() {
            if start + size - 1 > watermark {
                break;
            }
            let pane = self.panes.remove(&start).expect("first key exists");
            let data = self.emit(pane)?;
            if data.num_rows() > 0 {
                out.push(Batch::uniform(data, watermark));
            }
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.panes.values().map(|p| p.keys.len()).sum()
    }
}
