//! What the window operators share: a windowed GROUP BY's keys, aggregates and
//! output columns, driving DataFusion's `GroupsAccumulator`s, and moving
//! accumulator *states* in and out of row-encoded bytes (how they are stored
//! and merged).

use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

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

/// The GROUP BY of a window: key expressions, aggregates, output layout.
pub struct Aggregation {
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Encodes group keys.
    pub converter: RowConverter,
    pub aggregates: Vec<AggregateSpec>,
    /// Encodes the accumulator states of the non-DISTINCT aggregates, in order.
    pub state_converter: Option<RowConverter>,
    /// Per aggregate, how many state columns it has (0 for DISTINCT ones).
    state_widths: Vec<usize>,
    pub columns: Vec<OutputColumn>,
    pub schema: SchemaRef,
}

/// A batch's group keys and aggregate inputs, evaluated once.
pub struct Inputs {
    /// Encoded group keys (`None`: no key columns, every row is one group).
    pub keys: Option<Rows>,
    pub values: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
    /// Of each DISTINCT aggregate: its arguments, row-encoded.
    pub distinct: Vec<Option<Rows>>,
}

impl Inputs {
    pub fn key(&self, row: usize) -> &[u8] {
        match &self.keys {
            Some(r) => r.row(row).data(),
            None => &[],
        }
    }

    /// Row `row`'s arguments of DISTINCT aggregate `agg`, row-encoded; None
    /// when one is null (aggregates skip nulls themselves).
    pub fn distinct_value(&self, agg: usize, row: usize) -> Option<&[u8]> {
        if self.values[agg].iter().any(|v| v.is_null(row)) {
            return None;
        }
        let rows = self.distinct[agg].as_ref().expect("a DISTINCT aggregate");
        Some(rows.row(row).data())
    }
}

impl Aggregation {
    pub fn new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
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
            key_exprs,
            converter,
            aggregates,
            state_converter,
            state_widths,
            columns,
            schema,
        })
    }

    /// Whether aggregate `i` keeps a state of its own (DISTINCT ones are
    /// evaluated from their sightings).
    pub fn has_state(&self, i: usize) -> bool {
        self.state_widths[i] > 0
    }

    pub fn new_accumulators(&self) -> anyhow::Result<Vec<Box<dyn GroupsAccumulator>>> {
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

    /// Evaluates the group keys and aggregate inputs of `data`.
    pub fn inputs(&self, data: &RecordBatch) -> anyhow::Result<Inputs> {
        let n = data.num_rows();
        let key_arrays = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let keys = if key_arrays.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_arrays)?)
        };
        let mut values = Vec::with_capacity(self.aggregates.len());
        let mut filters = Vec::with_capacity(self.aggregates.len());
        let mut distinct = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            let arguments = a
                .expr
                .expressions()
                .iter()
                .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
                .collect::<datafusion::common::Result<Vec<_>>>()?;
            distinct.push(match &a.distinct {
                Some(converter) => Some(converter.convert_columns(&arguments)?),
                None => None,
            });
            values.push(arguments);
            filters.push(match &a.filter {
                Some(f) => Some(f.evaluate(data)?.into_array(n)?.as_boolean().clone()),
                None => None,
            });
        }
        Ok(Inputs {
            keys,
            values,
            filters,
            distinct,
        })
    }

    /// Evaluates `accumulators` (groups in the order of `keys`) into output
    /// rows; `bounds` is each row's window (start, end).
    pub fn evaluate(
        &self,
        keys: &[&[u8]],
        bounds: &[(i64, i64)],
        mut accumulators: Vec<Box<dyn GroupsAccumulator>>,
    ) -> anyhow::Result<RecordBatch> {
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
        let times = |f: &dyn Fn(&(i64, i64)) -> i64| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from_iter_values(
                bounds.iter().map(f),
            ))
        };
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| match c {
                OutputColumn::Key(i) => key_columns[*i].clone(),
                OutputColumn::WindowStart => times(&|b| b.0),
                OutputColumn::WindowEnd => times(&|b| b.1),
                OutputColumn::WindowTime => times(&|b| b.1 - 1),
                OutputColumn::Aggregate(i) => values[*i].clone(),
            })
            .collect();
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The state columns of the non-DISTINCT aggregates of `accumulators`,
    /// taken out of them.
    pub fn take_states(
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

    /// The states of `accumulators`' groups, row-encoded, one per group.
    pub fn encode_states(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
    ) -> anyhow::Result<Option<Rows>> {
        let Some(conv) = &self.state_converter else {
            return Ok(None);
        };
        let columns = self.take_states(accumulators)?;
        Ok(Some(conv.convert_columns(&columns)?))
    }

    /// Merges stored state rows into `accumulators`: `rows[j]` belongs to
    /// group `groups[j]`.
    pub fn merge_state_rows(
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

    pub fn merge_state_columns(
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

    /// Feeds DISTINCT aggregate `agg` the encoded argument values `values`
    /// (`values[j]` seen by group `groups[j]`), each once.
    pub fn update_distinct(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        agg: usize,
        values: &[&[u8]],
        groups: &[usize],
        total_groups: usize,
    ) -> anyhow::Result<()> {
        let conv = self.aggregates[agg]
            .distinct
            .as_ref()
            .expect("update_distinct is for DISTINCT aggregates");
        let parser = conv.parser();
        let columns = conv.convert_rows(values.iter().map(|v| parser.parse(v)))?;
        accumulators[agg].update_batch(&columns, groups, None, total_groups)?;
        Ok(())
    }
}
