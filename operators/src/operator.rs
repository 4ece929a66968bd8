//! The one trait every streaming operator implements, and the batch it sees.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeBinaryArray, Int64Array, RecordBatch,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{filter, filter_record_batch, take, take_record_batch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use weir_state::OperatorState;

/// What a table's topic said since it was last read, in topic order.
pub struct TableChanges {
    /// Decoded rows (upserts), in the table's schema.
    pub rows: RecordBatch,
    /// Deletes (records without a value): where among `rows` each comes (it
    /// precedes row `position`), its key as text, and its version time.
    pub deletes: Vec<(usize, String, i64)>,
}

/// A batch of rows plus, beside the data, the watermark each row arrived
/// under and each row's stable identity. Windows use the former to decide
/// lateness row by row, so a batch gives the same result as feeding its rows
/// one at a time; sinks use the latter to recognise output a replay repeats.
#[derive(Debug, Clone)]
pub struct Batch {
    pub data: RecordBatch,
    pub arrival_watermark: Arc<Int64Array>,
    /// One [`crate::ids::ROW_ID_LEN`]-byte identity per row: see [`crate::ids`].
    pub ids: Arc<FixedSizeBinaryArray>,
}

impl Batch {
    pub fn new(
        data: RecordBatch,
        arrival_watermark: Arc<Int64Array>,
        ids: Arc<FixedSizeBinaryArray>,
    ) -> Self {
        debug_assert_eq!(data.num_rows(), arrival_watermark.len());
        debug_assert_eq!(data.num_rows(), ids.len());
        Self {
            data,
            arrival_watermark,
            ids,
        }
    }

    /// A batch all of whose rows arrived under `watermark`.
    pub fn uniform(data: RecordBatch, watermark: i64, ids: Arc<FixedSizeBinaryArray>) -> Self {
        let n = data.num_rows();
        Self::new(data, Arc::new(Int64Array::from_value(watermark, n)), ids)
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// The same rows with different columns.
    pub fn with_data(self, data: RecordBatch) -> Self {
        Self::new(data, self.arrival_watermark, self.ids)
    }

    /// The rows `mask` selects.
    pub fn filter(&self, mask: &BooleanArray) -> anyhow::Result<Self> {
        Ok(Self::new(
            filter_record_batch(&self.data, mask)?,
            Arc::new(downcast(filter(self.arrival_watermark.as_ref(), mask)?)),
            Arc::new(downcast(filter(self.ids.as_ref(), mask)?)),
        ))
    }

    /// The rows at `indices`.
    pub fn take(&self, indices: &UInt32Array) -> anyhow::Result<Self> {
        Ok(Self::new(
            take_record_batch(&self.data, indices)?,
            Arc::new(downcast(take(
                self.arrival_watermark.as_ref(),
                indices,
                None,
            )?)),
            Arc::new(downcast(take(self.ids.as_ref(), indices, None)?)),
        ))
    }
}

fn downcast<T: Array + Clone + 'static>(a: Arc<dyn Array>) -> T {
    a.as_any()
        .downcast_ref::<T>()
        .expect("filter and take keep the array type")
        .clone()
}

/// Side outputs and counters an operator reports while it runs.
#[derive(Debug, Default)]
pub struct Context {
    /// Rows that arrived after the watermark had passed them (every window they
    /// belong to had fired), as they were at the operator's input, with why.
    pub late: Vec<(Batch, &'static str)>,
    pub late_rows: u64,
}

impl Context {
    /// Sets `rows` of `batch` aside as late, with why.
    pub fn set_aside_late(
        &mut self,
        batch: &Batch,
        rows: Vec<u32>,
        reason: &'static str,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(rows);
        self.late_rows += idx.len() as u64;
        self.late.push((batch.take(&idx)?, reason));
        Ok(())
    }
}

/// Why a row is set aside when its event time lies so near either end of
/// the i64 milliseconds that its windows (or session) cannot be represented.
pub const OUTSIDE_WINDOW_RANGE: &str = "event time is outside the range windows can be assigned in";

/// The event-time column of an operator's input.
pub fn event_times(
    data: &RecordBatch,
    column: usize,
) -> anyhow::Result<&TimestampMillisecondArray> {
    data.column(column)
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| anyhow::anyhow!("the event-time column is not TIMESTAMP(3)"))
}

/// What a stateful operator is given to keep its state durable.
pub struct StateAttachment {
    /// The operator's column family in the task's store, restored to the last
    /// checkpoint.
    pub store: OperatorState,
    /// The watermark up to which the operator had fired at that checkpoint.
    pub fired_through: i64,
    /// Memory the operator may hold before it writes state to the store.
    pub memory_budget: usize,
}

pub trait Operator: Send {
    fn name(&self) -> &'static str;

    /// Processes one batch, appending what it produces to `out`.
    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()>;

    /// The event-time watermark has reached `watermark`: emit what that completes.
    fn advance_watermark(
        &mut self,
        _watermark: i64,
        _ctx: &mut Context,
        _out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// The next watermark at which advancing would make this operator emit
    /// (a window to fire), if it knows one. When the watermark jumps (the end
    /// of bounded input, a source catching up), the task advances through
    /// these points one at a time and writes each step's output before the
    /// next is computed, so memory holds one window's results, not all.
    fn next_emission(&self) -> Option<i64> {
        None
    }

    /// The watermark the operators after this one may see, once this one has
    /// seen `input`: the same, unless it holds rows back (a temporal join
    /// waiting for its table).
    fn output_watermark(&self, input: i64) -> i64 {
        input
    }

    /// A joined table's watermark has moved (lookup joins of that table).
    fn set_table_watermark(&mut self, _table: &str, _watermark: i64) {}

    /// Whether the operator keeps state across batches.
    fn is_stateful(&self) -> bool {
        false
    }

    /// Hands a stateful operator its store; it picks up what the store holds.
    fn attach_state(&mut self, _state: StateAttachment) -> anyhow::Result<()> {
        Ok(())
    }

    /// Writes what the operator holds only in memory to its store, ahead of a
    /// checkpoint.
    fn flush_state(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// New rows of a table read from a compacted topic, for the operators
    /// that join it (others ignore them).
    fn apply_table(&mut self, _table: &str, _changes: &TableChanges) -> anyhow::Result<()> {
        Ok(())
    }

    /// The table this operator joins, if it is a lookup join.
    fn joins_table(&self) -> Option<&str> {
        None
    }

    /// Gives a lookup join an (empty) store for its table's rows.
    fn attach_table_store(&mut self, _store: OperatorState) -> anyhow::Result<()> {
        Ok(())
    }

    /// Groups held in open windows, for metrics.
    fn state_rows(&self) -> usize {
        0
    }
}
