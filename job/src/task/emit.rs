//! Output: each flow's result batches encoded and produced to its sink
//! topic, each record with its identity (`weir.id`, unless the sink turns it
//! off) and, for a changed result, its `weir.change`; and watermark advances
//! taken one window firing at a time.

use std::sync::atomic::Ordering;

use rdkafka::message::{Header, OwnedHeaders};
use weir_operators::ids::Change;
use weir_operators::{Batch, Context};

use super::SourceTask;
use super::dedupe::{Dedupe, record_id};
use crate::kafka::{CHANGE_HEADER, ID_HEADER};

/// The next step of a watermark advance that has reached `from` on its way
/// to `wm`: the chain's next firing point (`due`) when it lies between them,
/// else `wm` itself. Steps never go backwards or repeat.
fn next_step(due: Option<i64>, from: i64, wm: i64) -> i64 {
    match due {
        Some(due) if due > from && due < wm => due,
        _ => wm,
    }
}

pub(super) fn id_header(id: &[u8]) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(4).insert(Header {
        key: ID_HEADER,
        value: Some(id),
    })
}

impl SourceTask {
    /// Advances every flow to `wm`, through each point where a window fires
    /// on the way: each step's output is encoded and handed to the producer
    /// before the next step fires, so a watermark that jumps far (to the end
    /// of bounded input: every open window at once) does not hold all the
    /// results in memory together (1M keys: peak RSS 1.9 GiB, see
    /// BENCHMARKS.md, State size).
    pub(super) fn advance_watermark(&mut self, wm: i64) -> anyhow::Result<()> {
        for i in 0..self.flows.len() {
            let mut from = i64::MIN;
            loop {
                let step = next_step(self.flows[i].chain.next_emission(), from, wm);
                let mut ctx = Context::default();
                let out = self.flows[i].chain.advance_watermark(step, &mut ctx)?;
                self.emit(i, out, ctx)?;
                if step >= wm {
                    break;
                }
                from = step;
            }
        }
        Ok(())
    }

    /// Produces a flow's output batches, and dead-letters the rows its
    /// operators found late.
    pub(super) fn emit(
        &mut self,
        flow: usize,
        out: Vec<Batch>,
        ctx: Context,
    ) -> anyhow::Result<()> {
        let f = &self.flows[flow];
        let flow_id = f.flow.index as u16;
        let mut skipped = 0u64;
        let mut sent = 0u64;
        for b in out {
            let encoded = f.encoder.encode(&b.data)?;
            for i in 0..encoded.len() {
                let row = b.ids.value(i);
                let mut headers = None;
                if f.id_header {
                    let id = record_id(flow_id, row);
                    if f.exactly_once && Dedupe::seen(&mut self.dedupe, &id) {
                        skipped += 1;
                        continue;
                    }
                    headers = Some(id_header(&id));
                }
                if let Some(change) = Change::of(row).header() {
                    let change = Header {
                        key: CHANGE_HEADER,
                        value: Some(change),
                    };
                    headers = Some(match headers {
                        Some(h) => h.insert(change),
                        None => OwnedHeaders::new_with_capacity(1).insert(change),
                    });
                }
                self.sink
                    .send(&f.sink_topic, encoded.key(i), encoded.value(i), headers)?;
                sent += 1;
            }
        }
        self.counters.records_out.fetch_add(sent, Ordering::Relaxed);
        self.counters
            .duplicates_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        if ctx.late_rows > 0 {
            self.counters
                .late
                .fetch_add(ctx.late_rows, Ordering::Relaxed);
            for (late, reason) in ctx.late {
                self.dead_letter_rows(flow_id, &late, reason)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_stops_at_each_firing_on_the_way() {
        // A window fires at 100 on the way to 500: stop there first.
        assert_eq!(next_step(Some(100), i64::MIN, 500), 100);
        // Nothing due before the target, or the chain's next firing is the
        // step just taken: go to the target.
        assert_eq!(next_step(None, i64::MIN, 500), 500);
        assert_eq!(next_step(Some(700), 100, 500), 500);
        assert_eq!(next_step(Some(100), 100, 500), 500);
        assert_eq!(next_step(Some(500), 100, 500), 500);
    }
}
