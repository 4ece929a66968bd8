//! The one trait every streaming operator implements, and the batch it sees.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};

/// A batch of rows plus, beside the data, the watermark each row arrived
/// under. Windows use the latter to decide lateness row by row, so a batch
/// gives the same result as feeding its rows one at a time.
#[derive(Debug, Clone)]
pub struct Batch {
    pub data: RecordBatch,
    pub arrival_watermark: Arc<Int64Array>,
}

impl Batch {
    pub fn new(data: RecordBatch, arrival_watermark: Arc<Int64Array>) -> Self {
        debug_assert_eq!(data.num_rows(), arrival_watermark.len());
        Self {
            data,
            arrival_watermark,
        }
    }

    /// A batch all of whose rows arrived under `watermark`.
    pub fn uniform(data: RecordBatch, watermark: i64) -> Self {
        let n = data.num_rows();
        Self {
            data,
            arrival_watermark: Arc::new(Int64Array::from_value(watermark, n)),
        }
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }
}

/// Side outputs and counters an operator reports while it runs.
#[derive(Debug, Default)]
pub struct Context {
    /// Rows that arrived after every window they belong to had fired, as they
    /// were at the window's input.
    pub late: Vec<RecordBatch>,
    pub late_rows: u64,
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

    /// Rows held in state (open windows), for metrics.
    fn state_rows(&self) -> usize {
        0
    }
}
