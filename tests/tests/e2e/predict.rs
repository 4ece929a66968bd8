//! weir's scores (tract: fixed-size plans, then a symbolic one) against onnxruntime's on the same
//! inputs, for every committed model. The fixtures were written by the
//! training scripts with onnxruntime (examples/fraud/train.py,
//! examples/fraud/train_per_event.py, tests/models/make_models.py).

use serde_json::Value;
use weir_operators::Model;
use weir_sql::ModelKind;
use weir_tests::compare::scores_match;
use weir_tests::workspace_root;

fn check(model_path: &str, fixture: &str, output: &str) {
    let root = workspace_root();
    let model = Model::load("m", &root.join(model_path)).expect("model loads in tract");
    let rows: Vec<Value> = std::fs::read_to_string(root.join(fixture))
        .expect("fixture exists")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect();
    assert!(rows.len() >= 10, "fixture {fixture} is too small");
    let width = model.info().inputs;
    let mut features = Vec::with_capacity(rows.len() * width);
    let mut expected = Vec::with_capacity(rows.len());
    for r in &rows {
        let f = r["features"].as_array().expect("features array");
        assert_eq!(f.len(), width, "fixture width matches the model");
        features.extend(f.iter().map(|v| v.as_f64().expect("number") as f32));
        expected.push(r[output].as_f64().expect("expected score"));
    }
    // One batch of every row: the path predict takes in a pipeline.
    let scores = model.score(features.clone(), rows.len()).expect("scores");
    let mut worst: f64 = 0.0;
    for (i, (s, e)) in scores.iter().zip(&expected).enumerate() {
        let diff = (s - e).abs();
        worst = worst.max(diff);
        assert!(
            scores_match(*s, *e),
            "{model_path} row {i}: weir {s} vs onnxruntime {e}"
        );
    }
    // A batch long enough for every fixed-size plan (1024, 256, 64 rows) and
    // a symbolic tail: the fixture's rows, cycled.
    let n = 1024 + 256 + 64 + 7;
    let cycled: Vec<f32> = features.iter().copied().cycle().take(n * width).collect();
    let scores = model.score(cycled, n).expect("scores");
    assert_eq!(scores.len(), n);
    for (i, s) in scores.iter().enumerate() {
        let e = expected[i % expected.len()];
        worst = worst.max((s - e).abs());
        assert!(
            scores_match(*s, e),
            "{model_path} row {i} of {n}: weir {s} vs onnxruntime {e}"
        );
    }
    eprintln!(
        "{model_path}: {} rows, and {n} cycled, max |weir - onnxruntime| = {worst:e}",
        rows.len()
    );
}

#[test]
fn fraud_model_matches_onnxruntime() {
    let _shared = crate::shared();
    check(
        "examples/fraud/fraud.onnx",
        "examples/fraud/fixtures/scores.jsonl",
        "p",
    );
}

#[test]
fn per_event_fraud_model_matches_onnxruntime() {
    let _shared = crate::shared();
    check(
        "examples/fraud/fraud-per-event.onnx",
        "examples/fraud/fixtures/per_event_scores.jsonl",
        "p",
    );
}

#[test]
fn classifier_matches_onnxruntime() {
    let _shared = crate::shared();
    check(
        "tests/models/classifier3.onnx",
        "tests/models/classifier3.scores.jsonl",
        "p",
    );
}

#[test]
fn regressor_matches_onnxruntime() {
    let _shared = crate::shared();
    check(
        "tests/models/regressor2.onnx",
        "tests/models/regressor2.scores.jsonl",
        "y",
    );
}

#[test]
fn forest_matches_onnxruntime() {
    let _shared = crate::shared();
    check(
        "tests/models/forest4.onnx",
        "tests/models/forest4.scores.jsonl",
        "p",
    );
}

#[test]
fn model_kinds_are_detected() {
    let _shared = crate::shared();
    let root = workspace_root();
    let clf = Model::load("c", &root.join("tests/models/classifier3.onnx")).unwrap();
    assert_eq!(clf.info().kind, ModelKind::Classifier);
    assert_eq!(clf.info().inputs, 3);
    let reg = Model::load("r", &root.join("tests/models/regressor2.onnx")).unwrap();
    assert_eq!(reg.info().kind, ModelKind::Regressor);
    assert_eq!(reg.info().inputs, 2);
}

#[test]
fn a_missing_model_is_an_error() {
    let _shared = crate::shared();
    let err = Model::load("x", &workspace_root().join("tests/models/nope.onnx")).unwrap_err();
    assert!(format!("{err:#}").contains("no such file"), "{err:#}");
}

/// The scoring benchmark's models (bench/scoring: logistic regression, MLP,
/// random forest and gradient-boosted trees, trained by train_models.py and
/// exported by skl2onnx; the trees run in weir's own evaluator, not tract's)
/// on 4,096 fixed rows (edge values, rows on tree thresholds, generated
/// transactions), against onnxruntime's scores written by rows.py. Scored as
/// one batch, and in batches of 1 and 64 for the first rows.
fn check_bench_model(name: &str) {
    let dir = workspace_root().join("bench/scoring/models");
    let floats = |file: &str| -> Vec<f32> {
        std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let rows = floats("rows.f32");
    let stem = name.split('.').next().unwrap();
    let expected = floats(&format!("{stem}.expected.f32"));
    let model = Model::load(name, &dir.join(format!("{name}.onnx"))).expect("model loads");
    let width = model.info().inputs;
    assert_eq!(width, 10);
    let n = rows.len() / width;
    assert_eq!(n, expected.len());
    let compare = |scores: &[f64], from: usize, what: &str| {
        let mut worst: f64 = 0.0;
        for (i, s) in scores.iter().enumerate() {
            let e = expected[from + i] as f64;
            let diff = (s - e).abs();
            worst = worst.max(diff);
            assert!(
                scores_match(*s, e),
                "{name} {what} row {}: weir {s} vs onnxruntime {e}",
                from + i
            );
        }
        worst
    };
    let worst = compare(&model.score(rows.clone(), n).unwrap(), 0, "batch of all");
    for batch in [1usize, 64] {
        for from in (0..256).step_by(batch) {
            let x = rows[from * width..(from + batch) * width].to_vec();
            compare(&model.score(x, batch).unwrap(), from, "small batch");
        }
    }
    eprintln!("{name}: {n} rows, max |weir - onnxruntime| = {worst:e}");
}

#[test]
fn logistic_regression_matches_onnxruntime() {
    let _shared = crate::shared();
    check_bench_model("lr");
}

#[test]
fn mlp_matches_onnxruntime() {
    let _shared = crate::shared();
    check_bench_model("mlp");
}

#[test]
fn random_forest_matches_onnxruntime() {
    let _shared = crate::shared();
    check_bench_model("rf");
}

#[test]
fn gradient_boosted_trees_match_onnxruntime() {
    let _shared = crate::shared();
    check_bench_model("gbt");
}
