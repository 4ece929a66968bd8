//! The fraud example's per-transaction pipeline (examples/fraud/pipeline.sql,
//! the file itself) computes the features its model was trained on: 3,000
//! generated transactions (300 cards over 25 simulated minutes, so the 1 min,
//! 10 min and 1 h frames differ) go through the flow in-process (OVER features, the
//! merchant-risk join AS OF, predict), and every transaction's score must
//! equal the model's score on the features train_per_event.py computed for it
//! with numpy (fixtures/per_event_features.jsonl, cross-checked there against
//! DuckDB). Equal scores within float32 noise mean equal features.

use serde_json::Value;
use weir_operators::watermark::{END_OF_TIME, START_OF_TIME};
use weir_operators::{Batch, Context, TableChanges};
use weir_tests::compare::scores_match;
use weir_tests::inprocess::{Flow, decode_lines, rows as source_rows};
use weir_tests::workspace_root;

const FEATURES: [&str; 10] = [
    "amount",
    "n_1m",
    "sum_1m",
    "n_10m",
    "sum_10m",
    "merchants_10m",
    "n_1h",
    "sum_1h",
    "amount_vs_1h",
    "risk",
];
const DELAY_MS: i64 = 5_000;
const BATCH: usize = 256;

fn millis(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn the_example_pipeline_computes_the_features_its_model_was_trained_on() {
    let _shared = crate::shared();
    let root = workspace_root();
    let file = root.join("examples/fraud/pipeline.sql");
    let loaded = weir::load::load_pipeline(&file, &weir_tests::env("localhost:1"))
        .expect("the example plans");
    let model = loaded.models["fraud"].clone();
    let Flow {
        mut chain,
        encoder,
        plan,
    } = Flow::build(loaded.plan, &loaded.models);

    let rows: Vec<Value> =
        std::fs::read_to_string(root.join("examples/fraud/fixtures/per_event_features.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rows.len(), 3_000);

    // The merchant table, valid from the first transaction's time (the
    // generator's start), as the embedded generator writes it.
    let start = rows
        .iter()
        .map(|r| millis(r["ts"].as_str().unwrap()))
        .min()
        .unwrap();
    let table_lines: Vec<String> = weir::generate::merchant_table(start)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let table = decode_lines(
        &weir_operators::JsonDecoder::new(&plan.tables["merchant_risk"]),
        &table_lines,
    );
    chain
        .apply_table(
            "merchant_risk",
            &TableChanges {
                rows: table.batch,
                deletes: vec![],
            },
        )
        .unwrap();

    // The transactions, in generator order, under the example's watermark.
    let decoder = weir_operators::JsonDecoder::new(&plan.tables["transactions"]);
    let mut scores: Vec<Option<(f64, Value)>> = vec![None; rows.len()];
    let mut collect = |out: Vec<Batch>| {
        for b in out {
            let encoded = encoder.encode(&b.data).unwrap();
            for i in 0..encoded.len() {
                let (_, offset) =
                    weir_operators::ids::parse_source_row_id(b.ids.value(i)).expect("a source row");
                let v: Value = serde_json::from_slice(encoded.value(i)).unwrap();
                let p = v["p_fraud"].as_f64().expect("a score");
                assert!(
                    scores[offset as usize].is_none(),
                    "row {offset} came out twice"
                );
                scores[offset as usize] = Some((p, v));
            }
        }
    };
    let mut max_ts = START_OF_TIME;
    for from in (0..rows.len()).step_by(BATCH) {
        let to = (from + BATCH).min(rows.len());
        let lines: Vec<String> = rows[from..to]
            .iter()
            .map(|r| {
                serde_json::json!({
                    "card_id": r["card_id"], "merchant": r["merchant"],
                    "amount": r["amount"], "ts": r["ts"],
                })
                .to_string()
            })
            .collect();
        let mut arrival = Vec::new();
        for r in &rows[from..to] {
            arrival.push(if max_ts == START_OF_TIME {
                START_OF_TIME
            } else {
                max_ts - DELAY_MS
            });
            max_ts = max_ts.max(millis(r["ts"].as_str().unwrap()));
        }
        let batch = source_rows(&decoder, &lines, from, arrival);
        let mut ctx = Context::default();
        collect(chain.process(batch, &mut ctx).unwrap());
        assert_eq!(ctx.late_rows, 0);
        collect(
            chain
                .advance_watermark(max_ts - DELAY_MS, &mut ctx)
                .unwrap(),
        );
    }
    collect(
        chain
            .advance_watermark(END_OF_TIME, &mut Context::default())
            .unwrap(),
    );

    // The model on the fixture's features, in one batch.
    let features: Vec<f32> = rows
        .iter()
        .flat_map(|r| FEATURES.iter().map(|f| r[*f].as_f64().unwrap() as f32))
        .collect();
    let expected = model.score(features, rows.len()).unwrap();
    let mut worst: f64 = 0.0;
    for (i, (e, got)) in expected.iter().zip(&scores).enumerate() {
        let (p, v) = got
            .as_ref()
            .unwrap_or_else(|| panic!("row {i} was not scored"));
        assert_eq!(v["n_10m"], rows[i]["n_10m"], "row {i}: {v}");
        assert_eq!(v["risk"], rows[i]["risk"], "row {i}: {v}");
        worst = worst.max((p - e).abs());
        assert!(
            scores_match(*p, *e),
            "row {i}: weir scores {p}, the model on the trained features {e}: {v} vs {}",
            rows[i]
        );
    }
    println!("3000 transactions; max |weir - model on numpy features| = {worst:e}");
}
