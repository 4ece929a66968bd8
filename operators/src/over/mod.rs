//! Per-event rolling aggregates: `agg(x) OVER (PARTITION BY k ORDER BY ts
//! RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW)` and
//! `ROWS BETWEEN n PRECEDING AND CURRENT ROW`.
//!
//! ```text
//! row (ts > watermark) --> pending rows of its key
//! watermark W          --> per key: pending rows with ts <= W, in (ts, arrival) order,
//!                          appended to the key's history; every call slides its frame
//!                          over them (add the new rows, retract what fell out) and the
//!                          row comes out with one value per call
//! ```
//!
//! A row is emitted once, when the watermark passes its event time, so every
//! row that precedes it in event time is in its frame; a row whose event time
//! the watermark had already passed when it arrived is late. Several calls
//! with the same PARTITION BY share one history per key, kept back as far as
//! the widest frame reaches. Each call keeps a sliding accumulator (counts,
//! compensated sums, Welford moments, a monotonic deque for min/max, a
//! multiset for DISTINCT), so a row costs O(1) amortised per call whatever the
//! frame's size.
//!
//! State, in the operator's column family when a store is attached:
//! ```text
//! b'S' key                 -> the key's history and pending rows (see `KeyState::encode`)
//! b'P' key                 -> (empty) the key has pending rows: loaded when the task starts
//! b'X' expiry(8) key       -> (empty) when the key's stored state can be dropped
//! ```
//! Keys live in memory while they have pending rows or were touched since
//! the last flush; others are read back on demand, so memory holds the active
//! keys, not all of them. A key's state goes once no future row can reach it:
//! with only RANGE frames, when the watermark passes its last event time plus
//! the widest range; with a ROWS frame, after `'state.ttl'` of event time
//! without a row for the key (never, if unset).

mod acc;
mod emit;
mod state;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;
use weir_sql::{OverFrame, OverFunction};
use weir_state::OperatorState;

use crate::operator::{Batch, Context, Operator, StateAttachment, event_times};

use acc::Val;
use state::{KeyState, PendingRow, TAG_PENDING};

/// One `agg(x) OVER (...)`, bound to the stage's input.
pub struct OverCallSpec {
    pub function: OverFunction,
    pub arg: Arc<dyn PhysicalExpr>,
    pub arg_type: DataType,
    pub distinct: bool,
    pub frame: OverFrame,
    /// The column type the plan gives the call's result.
    pub output_type: DataType,
}

impl OverCallSpec {
    /// Whether the call sums or compares its argument as integers.
    fn integral(&self) -> bool {
        self.arg_type.is_integer()
    }
}

pub struct OverAggregateOp {
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    key_converter: Option<RowConverter>,
    /// Encodes whole input rows while they wait for the watermark.
    row_converter: RowConverter,
    time_column: usize,
    calls: Vec<OverCallSpec>,
    distinct_converters: Vec<Option<RowConverter>>,
    schema: SchemaRef,
    /// How long after its last row a key's state can go (see the module doc).
    retention_ms: Option<i64>,
    keys: HashMap<Box<[u8]>, KeyState>,
    /// Event time -> keys with a row pending at that time.
    due: BTreeMap<i64, Vec<Box<[u8]>>>,
    /// (expiry, key) of keys in memory without pending rows.
    expiry: BTreeSet<(i64, Box<[u8]>)>,
    fired_through: i64,
    store: Option<OperatorState>,
    memory_budget: usize,
    bytes: usize,
}

impl OverAggregateOp {
    /// `retention_ms`: how long after its last row a key's state can go (see
    /// [`weir_sql::OverAggregate::retention_ms`]).
    pub fn new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        input: SchemaRef,
        time_column: usize,
        calls: Vec<OverCallSpec>,
        schema: SchemaRef,
        retention_ms: Option<i64>,
    ) -> anyhow::Result<Self> {
        let key_converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types.into_iter().map(SortField::new).collect(),
            )?)
        };
        let row_converter = RowConverter::new(
            input
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .context("an input column of the OVER aggregate cannot be buffered")?;
        let distinct_converters = calls
            .iter()
            .map(|c| {
                c.distinct
                    .then(|| RowConverter::new(vec![SortField::new(c.arg_type.clone())]))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            key_exprs,
            key_converter,
            row_converter,
            time_column,
            calls,
            distinct_converters,
            schema,
            retention_ms,
            keys: HashMap::new(),
            due: BTreeMap::new(),
            expiry: BTreeSet::new(),
            fired_through: i64::MIN,
            store: None,
            memory_budget: usize::MAX,
            bytes: 0,
        })
    }
}

impl Operator for OverAggregateOp {
    fn name(&self) -> &'static str {
        "over aggregate"
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
        let mut on_time = Vec::with_capacity(n);
        let mut late = Vec::new();
        for row in 0..n {
            if times.is_null(row) || times.value(row) <= wm[row].max(self.fired_through) {
                late.push(row as u32);
            } else {
                on_time.push(row as u32);
            }
        }
        ctx.set_aside_late(
            &batch,
            late,
            "late: the watermark had passed the row's event time, so the OVER results of its partition were already out",
        )?;
        if on_time.is_empty() {
            return Ok(());
        }
        let batch = if on_time.len() == n {
            batch
        } else {
            batch.take(&UInt32Array::from(on_time))?
        };
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let keys = match &self.key_converter {
            Some(conv) => {
                let arrays = self
                    .key_exprs
                    .iter()
                    .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::common::Result<Vec<_>>>()?;
                Some(conv.convert_columns(&arrays)?)
            }
            None => None,
        };
        let rows = self.row_converter.convert_columns(data.columns())?;
        let mut vals = self.arg_values(data)?;
        for i in 0..n {
            let key: Box<[u8]> = match &keys {
                Some(k) => k.row(i).as_ref().into(),
                None => Box::default(),
            };
            let ts = times.value(i);
            let row = PendingRow {
                ts,
                row: rows.row(i).as_ref().into(),
                id: batch.ids.value(i).try_into()?,
                vals: vals
                    .iter_mut()
                    .map(|v| std::mem::replace(&mut v[i], Val::Null))
                    .collect(),
            };
            let size = row.size() + key.len();
            let ks = self.load(&key)?;
            ks.pending.push(row);
            ks.dirty = true;
            ks.bytes += size;
            self.bytes += size;
            self.due.entry(ts).or_default().push(key);
        }
        if self.bytes > self.memory_budget && self.store.is_some() {
            self.flush(true)?;
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
        let arrival = self.fired_through;
        self.fired_through = watermark;
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        while let Some((&ts, _)) = self.due.first_key_value() {
            if ts > watermark {
                break;
            }
            keys.extend(self.due.pop_first().expect("first exists").1);
        }
        if !keys.is_empty() {
            keys.sort();
            keys.dedup();
            let mut rows = Vec::new();
            let mut values: Vec<Vec<Val>> = vec![Vec::new(); self.calls.len()];
            for key in &keys {
                self.emit_key(key, watermark, &mut rows, &mut values)?;
            }
            if !rows.is_empty() {
                // Downstream sees the rows as arriving before this watermark,
                // so a later event-time operator does not find them late.
                out.push(self.output(rows, values, arrival)?);
            }
        }
        self.expire(watermark, false)?;
        if self.bytes > self.memory_budget && self.store.is_some() {
            self.flush(true)?;
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        self.memory_budget = state.memory_budget;
        self.store = Some(state.store);
        // Keys with rows still waiting for the watermark.
        let store = self.store.clone().expect("just set");
        let mut pending_keys = Vec::new();
        for entry in store.scan(&[TAG_PENDING])? {
            let (k, _) = entry?;
            pending_keys.push(k[1..].to_vec());
        }
        for key in pending_keys {
            let ks = self.load(&key)?;
            let times: Vec<i64> = ks.pending.iter().map(|p| p.ts).collect();
            for ts in times {
                self.due.entry(ts).or_default().push(key.clone().into());
            }
        }
        Ok(())
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        self.expire(self.fired_through, true)?;
        let evict = self.bytes > self.memory_budget / 2;
        self.flush(evict)
    }

    fn state_rows(&self) -> usize {
        self.keys
            .values()
            .map(|k| k.history.len() + k.pending.len())
            .sum()
    }
}
