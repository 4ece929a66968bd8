//! Filter and projection: DataFusion `PhysicalExpr`s evaluated on each batch.
//! Nothing is buffered, so a row leaves as soon as it arrives.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::prep_null_mask_filter;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::operator::{Batch, Context, Operator};

pub struct FilterOp {
    pub predicate: Arc<dyn PhysicalExpr>,
}

impl Operator for FilterOp {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process(
        &mut self,
        batch: Batch,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let mask = self
            .predicate
            .evaluate(&batch.data)?
            .into_array(batch.num_rows())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| anyhow::anyhow!("WHERE must be a boolean expression"))?;
        // NULL is not true: the row does not pass.
        let mask = if mask.null_count() > 0 {
            prep_null_mask_filter(mask)
        } else {
            mask.clone()
        };
        if mask.true_count() == mask.len() {
            out.push(batch);
            return Ok(());
        }
        out.push(batch.filter(&mask)?);
        Ok(())
    }
}

pub struct ProjectOp {
    pub exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub schema: SchemaRef,
}

impl Operator for ProjectOp {
    fn name(&self) -> &'static str {
        "project"
    }

    fn process(
        &mut self,
        batch: Batch,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let n = batch.num_rows();
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(&batch.data).and_then(|v| v.into_array(n)))
            .collect::<datafusion::common::Result<Vec<ArrayRef>>>()?;
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        out.push(batch.with_data(data));
        Ok(())
    }
}

/// Appends null window_start, window_end and window_time columns: before the
/// window aggregate assigns rows to windows, the TVF's rows carry no window yet.
pub struct WindowColumnsOp {
    pub schema: SchemaRef,
}

impl Operator for WindowColumnsOp {
    fn name(&self) -> &'static str {
        "window columns"
    }

    fn process(
        &mut self,
        batch: Batch,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let n = batch.num_rows();
        let mut columns = batch.data.columns().to_vec();
        for f in &self.schema.fields()[columns.len()..] {
            columns.push(new_null_array(f.data_type(), n));
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        out.push(batch.with_data(data));
        Ok(())
    }
}
