//! Operator chains driven batch by batch in the test's own thread, without a
//! broker: plan a pipeline, build its first flow, feed it JSON lines as
//! source rows, encode what comes out, attach a store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::Int64Array;
use weir_operators::ids::{id_array, parse_source_row_id, source_row_id};
use weir_operators::{Batch, Chain, JsonDecoder, JsonEncoder, Model, StateAttachment, build_chain};
use weir_sql::PipelinePlan;
use weir_state::TaskStore;

/// A pipeline's first flow as an operator chain, with an encoder of its
/// output and the plan (for decoders of its tables).
pub struct Flow {
    pub chain: Chain,
    pub encoder: JsonEncoder,
    pub plan: PipelinePlan,
}

/// Plans `sql` as if read from a file `name` (no `${VAR}` substitution) and
/// builds its first flow, without models.
pub fn flow(name: &str, sql: &str) -> Flow {
    let plan = weir::load::plan_text(Path::new(name), sql, &|_| None)
        .unwrap_or_else(|e| panic!("{name} does not plan: {e}"));
    Flow::build(plan, &HashMap::new())
}

impl Flow {
    /// The first flow of `plan`, with `models`.
    pub fn build(plan: PipelinePlan, models: &HashMap<String, Arc<Model>>) -> Flow {
        let flow = &plan.flows[0];
        let chain = build_chain(flow, &plan.tables, models).expect("the chain builds");
        let encoder = JsonEncoder::new(flow.output.clone(), vec![]);
        Flow {
            chain,
            encoder,
            plan,
        }
    }

    /// A decoder of source table `table`.
    pub fn decoder(&self, table: &str) -> JsonDecoder {
        JsonDecoder::new(&self.plan.tables[table])
    }

    /// The chain's one stateful operator (`what` says which it should be).
    pub fn only_stateful(&self, what: &str) -> usize {
        let stateful = self.chain.stateful();
        assert_eq!(stateful.len(), 1, "one stateful operator: {what}");
        stateful[0]
    }

    /// Each output row of `out`: its row identity and its JSON.
    pub fn encode(&self, out: Vec<Batch>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        for b in out {
            let encoded = self.encoder.encode(&b.data).expect("the output encodes");
            for i in 0..encoded.len() {
                rows.push((b.ids.value(i).to_vec(), encoded.value(i).to_vec()));
            }
        }
        rows
    }

    /// Each output row of `out`: the offset of the source row it came from
    /// and its JSON.
    pub fn encode_by_offset(&self, out: Vec<Batch>) -> Vec<(i64, Vec<u8>)> {
        self.encode(out)
            .into_iter()
            .map(|(id, json)| (parse_source_row_id(&id).expect("a source row id").1, json))
            .collect()
    }

    /// Gives stateful operator `op` column family `cf` of `store`.
    pub fn attach(
        &mut self,
        op: usize,
        store: &TaskStore,
        cf: &str,
        fired_through: i64,
        memory_budget: usize,
    ) {
        let state = StateAttachment {
            store: store.operator(cf).expect("the column family"),
            fired_through,
            memory_budget,
        };
        self.chain.attach_state(op, state).expect("state attaches");
    }
}

/// Decodes JSON lines with `decoder` as records of partition 0 at offsets
/// 0, 1, ...; every line must decode.
pub fn decode_lines(decoder: &JsonDecoder, lines: &[String]) -> weir_operators::decode::Decoded {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    let mut metas = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let s = buf.len();
        buf.extend_from_slice(l.as_bytes());
        spans.push((s, buf.len()));
        buf.push(b'\n');
        metas.push(weir_operators::RecordMeta {
            partition: 0,
            offset: i as i64,
            timestamp: None,
            key: None,
        });
    }
    let decoded = decoder.decode(&buf, &spans, &metas).expect("decodes");
    assert!(
        decoded.bad.is_empty(),
        "every line decodes: {:?}",
        decoded.bad
    );
    decoded
}

/// `lines` as source rows at offsets `first`, `first + 1`, ... of partition
/// 0, row i having arrived under watermark `watermarks[i]`.
pub fn rows(decoder: &JsonDecoder, lines: &[String], first: usize, watermarks: Vec<i64>) -> Batch {
    assert_eq!(lines.len(), watermarks.len());
    Batch::new(
        decode_lines(decoder, lines).batch,
        Arc::new(Int64Array::from(watermarks)),
        ids(first, lines.len()),
    )
}

/// `lines` as source rows at offsets `first`, ... all arrived under `watermark`.
pub fn rows_under(decoder: &JsonDecoder, lines: &[String], first: usize, watermark: i64) -> Batch {
    Batch::uniform(
        decode_lines(decoder, lines).batch,
        watermark,
        ids(first, lines.len()),
    )
}

fn ids(first: usize, n: usize) -> Arc<datafusion::arrow::array::FixedSizeBinaryArray> {
    Arc::new(id_array(
        (first..first + n).map(|j| source_row_id(0, j as i64)),
    ))
}

/// `ms` as a TIMESTAMP(3) string weir's JSON decoder reads
/// ("2026-01-01 00:00:00.000").
pub fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a representable time")
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}
