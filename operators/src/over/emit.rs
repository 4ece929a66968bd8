//! Per-row evaluation: the calls' arguments, each call's frame slid over a key's history as
//! the watermark releases its rows, and the output batch.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch,
    UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use weir_sql::{OverFrame, OverFunction};

use super::acc::{Acc, Val};
use super::state::{HistoryRow, KeyState, PendingRow};
use super::{OverAggregateOp, OverCallSpec};
use crate::operator::Batch;

impl OverAggregateOp {
    /// The argument of every call, per row, as accumulators see it.
    pub(super) fn arg_values(&self, data: &RecordBatch) -> anyhow::Result<Vec<Vec<Val>>> {
        let n = data.num_rows();
        let mut out = Vec::with_capacity(self.calls.len());
        for (c, call) in self.calls.iter().enumerate() {
            let a = call.arg.evaluate(data)?.into_array(n)?;
            let vals: Vec<Val> = if let Some(conv) = &self.distinct_converters[c] {
                let rows = conv.convert_columns(std::slice::from_ref(&a))?;
                (0..n)
                    .map(|i| {
                        if a.is_null(i) {
                            Val::Null
                        } else {
                            Val::B(rows.row(i).as_ref().into())
                        }
                    })
                    .collect()
            } else if call.function == OverFunction::Count {
                (0..n)
                    .map(|i| if a.is_null(i) { Val::Null } else { Val::I(1) })
                    .collect()
            } else if call.integral() {
                let a = cast(&a, &DataType::Int64)?;
                a.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.map(Val::I).unwrap_or(Val::Null))
                    .collect()
            } else {
                let a = cast(&a, &DataType::Float64)?;
                a.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.map(Val::F).unwrap_or(Val::Null))
                    .collect()
            };
            out.push(vals);
        }
        Ok(out)
    }

    /// Slides every call's frame over the key's history rows from `first` on,
    /// pushing one value per row and call to `out` (when given).
    fn slide(
        calls: &[OverCallSpec],
        ks: &mut KeyState,
        first: u64,
        mut out: Option<&mut [Vec<Val>]>,
    ) {
        let end = ks.base + ks.history.len() as u64;
        for (c, call) in calls.iter().enumerate() {
            let acc = &mut ks.accs[c];
            let row = |i: u64| &ks.history[(i - ks.base) as usize];
            let mut i = first;
            while i < end {
                match call.frame {
                    OverFrame::Rows { preceding } => {
                        acc.add(i, &row(i).vals[c]);
                        while acc.end - acc.start > preceding.saturating_add(1) {
                            acc.remove_first(&row(acc.start).vals[c]);
                        }
                        if let Some(out) = out.as_deref_mut() {
                            out[c].push(acc.value(call.function));
                        }
                        i += 1;
                    }
                    OverFrame::Range { preceding_ms } => {
                        let ts = row(i).ts;
                        let mut j = i;
                        while j < end && row(j).ts == ts {
                            acc.add(j, &row(j).vals[c]);
                            j += 1;
                        }
                        let from = ts.saturating_sub(preceding_ms);
                        while acc.start < acc.end && row(acc.start).ts < from {
                            acc.remove_first(&row(acc.start).vals[c]);
                        }
                        if let Some(out) = out.as_deref_mut() {
                            let v = acc.value(call.function);
                            for _ in i..j {
                                out[c].push(v.clone());
                            }
                        }
                        i = j;
                    }
                }
            }
        }
    }

    /// Builds the key's accumulators from its history (after a load).
    fn ensure_accs(calls: &[OverCallSpec], ks: &mut KeyState) {
        if ks.accs.len() == calls.len() {
            return;
        }
        ks.accs = calls.iter().map(|c| Acc::new(c, ks.base)).collect();
        let base = ks.base;
        Self::slide(calls, ks, base, None);
    }

    /// Emits the key's pending rows with event time <= `watermark`.
    pub(super) fn emit_key(
        &mut self,
        key: &[u8],
        watermark: i64,
        rows: &mut Vec<PendingRow>,
        values: &mut [Vec<Val>],
    ) -> anyhow::Result<()> {
        let calls = std::mem::take(&mut self.calls);
        let ks = self.load(key)?;
        Self::ensure_accs(&calls, ks);
        ks.pending.sort_by_key(|p| (p.ts, p.id));
        let n = ks.pending.partition_point(|p| p.ts <= watermark);
        let first = ks.base + ks.history.len() as u64;
        let mut added = 0usize;
        for p in ks.pending.drain(..n) {
            added += 16 * p.vals.len() + 32;
            ks.history.push_back(HistoryRow {
                ts: p.ts,
                vals: p.vals.clone(),
            });
            ks.last_ts = Some(p.ts);
            rows.push(p);
        }
        Self::slide(&calls, ks, first, Some(values));
        // History no frame reaches any more.
        let keep_from = ks.accs.iter().map(|a| a.start).min().unwrap_or(ks.base);
        let mut freed = 0usize;
        while ks.base < keep_from {
            if let Some(r) = ks.history.pop_front() {
                freed += 16 * r.vals.len() + 32;
            }
            ks.base += 1;
        }
        let freed_pending: usize = rows[rows.len() - n..].iter().map(PendingRow::size).sum();
        ks.bytes = (ks.bytes + added).saturating_sub(freed + freed_pending);
        ks.dirty = true;
        self.bytes = (self.bytes + added).saturating_sub(freed + freed_pending);
        self.calls = calls;
        let ks = &self.keys[key];
        if let Some(at) = self.expiry_of(ks) {
            self.expiry.insert((at, key.into()));
        }
        Ok(())
    }

    pub(super) fn output(
        &self,
        rows: Vec<PendingRow>,
        values: Vec<Vec<Val>>,
        arrival: i64,
    ) -> anyhow::Result<Batch> {
        let parser = self.row_converter.parser();
        let mut columns = self
            .row_converter
            .convert_rows(rows.iter().map(|r| parser.parse(&r.row)))?;
        for (c, call) in self.calls.iter().enumerate() {
            let v = &values[c];
            let int_result = match call.function {
                OverFunction::Count => true,
                OverFunction::Sum | OverFunction::Min | OverFunction::Max => call.integral(),
                _ => false,
            };
            let a: ArrayRef = if int_result {
                Arc::new(
                    v.iter()
                        .map(|v| match v {
                            Val::I(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<Int64Array>(),
                )
            } else {
                Arc::new(
                    v.iter()
                        .map(|v| match v {
                            Val::Null | Val::B(_) => None,
                            v => Some(v.f64()),
                        })
                        .collect::<Float64Array>(),
                )
            };
            columns.push(cast(&a, &call.output_type)?);
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let ids = FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.id))?;
        // Rows come out in event-time order.
        let mut order: Vec<u32> = (0..rows.len() as u32).collect();
        order.sort_by_key(|&i| (rows[i as usize].ts, rows[i as usize].id));
        let batch = Batch::uniform(data, arrival, Arc::new(ids));
        batch.take(&UInt32Array::from(order))
    }
}
