//! A flow's operators in order; batches and watermarks pass through them.

use crate::operator::{Batch, Context, Operator, StateAttachment};

pub struct Chain {
    ops: Vec<Box<dyn Operator>>,
    /// The watermark each operator has been given.
    watermarks: Vec<i64>,
}

impl Chain {
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        let watermarks = vec![i64::MIN; ops.len()];
        Self { ops, watermarks }
    }

    pub fn operators(&self) -> impl Iterator<Item = &dyn Operator> {
        self.ops.iter().map(|o| o.as_ref())
    }

    /// Pushes `batch` through every operator; returns what reaches the end.
    pub fn process(&mut self, batch: Batch, ctx: &mut Context) -> anyhow::Result<Vec<Batch>> {
        self.run_from(0, vec![batch], ctx)
    }

    /// Advances every operator's watermark, in order, so what one emits is
    /// processed by the next before that one sees the watermark. An operator
    /// that holds rows back passes on a lower watermark than it was given.
    pub fn advance_watermark(
        &mut self,
        watermark: i64,
        ctx: &mut Context,
    ) -> anyhow::Result<Vec<Batch>> {
        let mut pending: Vec<Batch> = Vec::new();
        let mut watermark = watermark;
        for i in 0..self.ops.len() {
            let mut next = Vec::new();
            for b in pending {
                if b.num_rows() > 0 {
                    self.ops[i].process(b, ctx, &mut next)?;
                }
            }
            self.watermarks[i] = self.watermarks[i].max(watermark);
            self.ops[i].advance_watermark(watermark, ctx, &mut next)?;
            watermark = self.ops[i].output_watermark(watermark);
            pending = next;
        }
        Ok(pending)
    }

    /// The lowest watermark at which some operator would emit (see
    /// `Operator::next_emission`).
    pub fn next_emission(&self) -> Option<i64> {
        self.ops.iter().filter_map(|op| op.next_emission()).min()
    }

    /// The watermark operator `op` has been given (and fired through).
    pub fn watermark(&self, op: usize) -> i64 {
        self.watermarks[op]
    }

    /// Tells the lookup joins of `table` how far its versions are complete.
    pub fn set_table_watermark(&mut self, table: &str, watermark: i64) {
        for op in &mut self.ops {
            op.set_table_watermark(table, watermark);
        }
    }

    fn run_from(
        &mut self,
        start: usize,
        batches: Vec<Batch>,
        ctx: &mut Context,
    ) -> anyhow::Result<Vec<Batch>> {
        let mut pending = batches;
        for op in &mut self.ops[start..] {
            let mut next = Vec::new();
            for b in pending {
                if b.num_rows() > 0 {
                    op.process(b, ctx, &mut next)?;
                }
            }
            pending = next;
        }
        Ok(pending)
    }

    /// Positions of the operators that keep state, in chain order.
    pub fn stateful(&self) -> Vec<usize> {
        (0..self.ops.len())
            .filter(|&i| self.ops[i].is_stateful())
            .collect()
    }

    pub fn attach_state(&mut self, op: usize, state: StateAttachment) -> anyhow::Result<()> {
        self.watermarks[op] = state.fired_through;
        self.ops[op].attach_state(state)
    }

    /// Positions of the lookup joins, with the table each joins.
    pub fn lookups(&self) -> Vec<(usize, String)> {
        self.ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.joins_table().map(|t| (i, t.to_string())))
            .collect()
    }

    pub fn attach_table_store(
        &mut self,
        op: usize,
        store: weir_state::OperatorState,
    ) -> anyhow::Result<()> {
        self.ops[op].attach_table_store(store)
    }

    /// Hands new rows of table `table` to the operators joining it.
    pub fn apply_table(
        &mut self,
        table: &str,
        changes: &crate::TableChanges,
    ) -> anyhow::Result<()> {
        for op in &mut self.ops {
            op.apply_table(table, changes)?;
        }
        Ok(())
    }

    /// Writes every operator's in-memory state to its store.
    pub fn flush_state(&mut self) -> anyhow::Result<()> {
        for op in &mut self.ops {
            op.flush_state()?;
        }
        Ok(())
    }

    pub fn state_rows(&self) -> usize {
        self.ops.iter().map(|o| o.state_rows()).sum()
    }
}
