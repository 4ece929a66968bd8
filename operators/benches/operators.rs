//! Operator benchmarks (criterion): scoring through `predict` against the
//! models of bench/scoring at batch sizes 1, 64 and 1024; JSON decode; window
//! (HOP 1 min / 10 min, the fraud example's aggregates) update by key
//! cardinality; JSON encode, of transactions and of the HOP query's results
//! (a window's rows share its bounds). Throughput is in rows. `make bench` runs them and
//! reads the medians from target/criterion.
//!
//! ```sh
//! cargo bench -p weir-operators --bench operators            # all
//! cargo bench -p weir-operators --bench operators -- score/rf  # a filter
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array};
use weir_operators::ids::{id_array, source_row_id};
use weir_operators::predict::score_columns;
use weir_operators::{
    Batch, Context, JsonDecoder, JsonEncoder, Model, RecordMeta, TractInspector, build_chain,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The 4096 x 10 rows of bench/scoring, as the feature columns `predict` gets.
fn feature_columns() -> Vec<Vec<f64>> {
    let bytes = std::fs::read(root().join("bench/scoring/models/rows.f32")).expect("rows.f32");
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    (0..10)
        .map(|j| {
            values
                .iter()
                .skip(j)
                .step_by(10)
                .map(|v| *v as f64)
                .collect()
        })
        .collect()
}

fn scoring(c: &mut Criterion) {
    let columns = feature_columns();
    let rows = columns[0].len();
    let models = [
        ("lr", "bench/scoring/models/lr.onnx"),
        ("mlp", "bench/scoring/models/mlp.onnx"),
        ("rf", "bench/scoring/models/rf.onnx"),
        ("gbt", "bench/scoring/models/gbt.onnx"),
        ("fraud-per-event", "examples/fraud/fraud-per-event.onnx"),
    ];
    let mut group = c.benchmark_group("score");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, path) in models {
        let model = Model::load(name, &root().join(path)).expect("model loads");
        for batch in [1usize, 64, 1024] {
            // Batches cycle over the rows, as ort_bench.py does.
            let batches: Vec<Vec<ArrayRef>> = (0..rows / batch.max(64))
                .map(|b| {
                    let from = (b * batch) % (rows - batch + 1);
                    columns
                        .iter()
                        .map(|c| {
                            Arc::new(Float64Array::from(c[from..from + batch].to_vec())) as ArrayRef
                        })
                        .collect()
                })
                .collect();
            let mut next = 0;
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    let cols = &batches[next % batches.len()];
                    next += 1;
                    score_columns(&model, cols, batch).expect("scores")
                })
            });
        }
    }
    group.finish();
}

const TRANSACTIONS: &str = r#"
CREATE TABLE transactions (card_id TEXT, merchant TEXT, amount DOUBLE, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
  WITH ('connector' = 'kafka', 'topic' = 'transactions', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1', 'key.fields' = 'card_id');
"#;

const HOP: &str = r#"
INSERT INTO out
SELECT card_id, window_start, window_end,
       count(*) AS n, avg(amount) AS avg_amount, max(amount) AS max_amount,
       stddev_pop(amount) AS sd_amount, count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;
"#;

const BATCH: usize = 8192;
const T0: i64 = 1_767_225_600_000;

/// Transactions as JSON lines (~115 bytes each), `cards` distinct cards, one
/// every `step_ms` from `t0`.
fn transactions(n: usize, cards: u64, t0: i64, step_ms: i64, seed: u64) -> Vec<String> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let ts = chrono::DateTime::from_timestamp_millis(t0 + i as i64 * step_ms)
                .expect("time")
                .format("%Y-%m-%dT%H:%M:%S%.3fZ");
            format!(
                r#"{{"card_id": "card-{:06}", "merchant": "m-{:04}", "amount": {:.2}, "ts": "{ts}"}}"#,
                next() % cards,
                next() % 5000,
                (next() % 100_000) as f64 / 100.0
            )
        })
        .collect()
}

fn framed(lines: &[String]) -> (Vec<u8>, Vec<(usize, usize)>, Vec<RecordMeta>) {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    let mut metas = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let s = buf.len();
        buf.extend_from_slice(l.as_bytes());
        spans.push((s, buf.len()));
        buf.push(b'\n');
        metas.push(RecordMeta {
            partition: 0,
            offset: i as i64,
            timestamp: None,
            key: None,
        });
    }
    (buf, spans, metas)
}

fn plan(query: &str) -> weir_sql::PipelinePlan {
    let text = format!("{TRANSACTIONS}{query}");
    weir_sql::plan_pipeline(Path::new("bench.sql"), &text, &|_| None, &TractInspector)
        .expect("plans")
}

fn decode_encode(c: &mut Criterion) {
    let plan = plan(HOP);
    let decoder = JsonDecoder::new(&plan.tables["transactions"]);
    let lines = transactions(BATCH, 100_000, T0, 10, 1);
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let (buf, spans, metas) = framed(&lines);
    let mut group = c.benchmark_group("json");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        BenchmarkId::new("decode", format!("{} B/row", bytes / BATCH)),
        |b| b.iter(|| decoder.decode(&buf, &spans, &metas).expect("decodes")),
    );
    let decoded = decoder.decode(&buf, &spans, &metas).expect("decodes").batch;
    let encoder = JsonEncoder::new(decoded.schema(), vec![0]);
    group.bench_function(BenchmarkId::new("encode", "transactions"), |b| {
        b.iter(|| encoder.encode(&decoded).expect("encodes"))
    });
    let results = window_results(&plan, &decoder);
    let encoder = JsonEncoder::new(results.schema(), vec![0]);
    group.bench_function(BenchmarkId::new("encode", "window_results"), |b| {
        b.iter(|| encoder.encode(&results).expect("encodes"))
    });
    group.finish();
}

/// `BATCH` rows of the HOP query's results, as its sink gets them: 16 batches
/// of transactions over 10,000 cards, then every window fired.
fn window_results(
    plan: &weir_sql::PipelinePlan,
    decoder: &JsonDecoder,
) -> datafusion::arrow::array::RecordBatch {
    let mut chain = build_chain(&plan.flows[0], &plan.tables, &Default::default()).expect("chain");
    let mut ctx = Context::default();
    let mut out = Vec::new();
    for k in 0..16 {
        let lines = transactions(BATCH, 10_000, T0 + k * BATCH as i64 * 10, 10, k as u64 + 3);
        let (buf, spans, metas) = framed(&lines);
        let data = decoder.decode(&buf, &spans, &metas).expect("decodes").batch;
        let ids = id_array((0..BATCH).map(|i| source_row_id(0, k * BATCH as i64 + i as i64)));
        let batch = Batch::new(
            data,
            Arc::new(Int64Array::from_value(T0 + k * BATCH as i64 * 10, BATCH)),
            Arc::new(ids),
        );
        out.extend(chain.process(batch, &mut ctx).expect("process"));
    }
    out.extend(
        chain
            .advance_watermark(weir_operators::watermark::END_OF_TIME, &mut ctx)
            .expect("watermark"),
    );
    let data: Vec<_> = out.into_iter().map(|b| b.data).collect();
    let all = datafusion::arrow::compute::concat_batches(&data[0].schema(), &data).expect("concat");
    assert!(all.num_rows() >= BATCH, "{} window results", all.num_rows());
    all.slice(0, BATCH)
}

/// HOP(1 min, 10 min) with the fraud example's five aggregates: rows/s
/// through window assignment, accumulator update and firing, in steady state
/// (every batch moves event time on by `BATCH * 10 ms` and the watermark with
/// it, so windows fire as they would in a run).
fn windows(c: &mut Criterion) {
    let plan = plan(HOP);
    let flow = &plan.flows[0];
    let decoder = JsonDecoder::new(&plan.tables["transactions"]);
    let mut group = c.benchmark_group("window_hop");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    for cards in [1_000u64, 100_000] {
        // 64 distinct batches, decoded ahead; time moves on across cycles.
        let step = 10i64;
        let cycle: Vec<_> = (0..64)
            .map(|k| {
                let lines = transactions(
                    BATCH,
                    cards,
                    T0 + k * BATCH as i64 * step,
                    step,
                    k as u64 + 7,
                );
                let (buf, spans, metas) = framed(&lines);
                decoder.decode(&buf, &spans, &metas).expect("decodes").batch
            })
            .collect();
        let mut chain = build_chain(flow, &plan.tables, &Default::default()).expect("chain");
        let mut n = 0i64;
        group.bench_function(BenchmarkId::new("cards", cards), |b| {
            b.iter(|| {
                let k = (n % 64) as usize;
                let shift = (n / 64) * 64 * BATCH as i64 * step;
                n += 1;
                let data = &cycle[k];
                // Shift event time by whole cycles so time only moves on.
                let data = shift_ts(data, shift);
                let wm = T0 + shift + (k as i64 + 1) * BATCH as i64 * step - 5_000;
                let ids =
                    id_array((0..BATCH).map(|i| source_row_id(0, n * BATCH as i64 + i as i64)));
                let batch = Batch::new(
                    data,
                    Arc::new(Int64Array::from_value(wm - BATCH as i64 * step, BATCH)),
                    Arc::new(ids),
                );
                let mut ctx = Context::default();
                let mut out = chain.process(batch, &mut ctx).expect("process");
                out.extend(chain.advance_watermark(wm, &mut ctx).expect("watermark"));
                out
            })
        });
    }
    group.finish();
}

fn shift_ts(
    data: &datafusion::arrow::array::RecordBatch,
    by: i64,
) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{Array, AsArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    if by == 0 {
        return data.clone();
    }
    let i = data.schema().index_of("ts").expect("ts");
    let ts = data.column(i).as_primitive::<TimestampMillisecondType>();
    let shifted: TimestampMillisecondArray = ts.unary(|t| t + by);
    let shifted = shifted.with_timezone_opt(ts.timezone().map(|s| s.to_string()));
    let mut columns = data.columns().to_vec();
    columns[i] = Arc::new(shifted) as Arc<dyn Array>;
    datafusion::arrow::array::RecordBatch::try_new(data.schema(), columns).expect("same schema")
}

criterion_group!(benches, scoring, decode_encode, windows);
criterion_main!(benches);
