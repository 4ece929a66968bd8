//! Comparing numbers that floating-point arithmetic may leave a few bits
//! apart. Each test keeps its own tolerance; there are four kinds:
//!
//! - [`close`]: JSON equal, numbers to 1e-9 relative to the larger, where the
//!   same pipeline's sums were split differently (checkpoints, crashes,
//!   cluster vs one process);
//! - [`near`]: a number against a reference computed another way, to 1e-9
//!   relative to the reference's magnitude but at least 1e-9 absolute;
//! - [`golden_eq`]: the golden cases' rules (tests/golden/README.md);
//! - [`scores_match`]: model scores, to [`SCORE_TOLERANCE`] absolute (float32
//!   noise between tract and onnxruntime).

use serde_json::Value;

/// Relative tolerance of [`close`] and [`near`].
pub const RELATIVE: f64 = 1e-9;

/// Absolute tolerance between two models' float32 scores.
pub const SCORE_TOLERANCE: f64 = 1e-5;

/// Equal JSON, with numbers equal to 1e-9 relative to the larger of the two;
/// objects compare key by key (the same keys), arrays element by element.
pub fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => {
            let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            x == y || (x - y).abs() <= RELATIVE * x.abs().max(y.abs())
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| close(v, w))
        }
        _ => a == b,
    }
}

/// `x` equals `reference` to 1e-9 relative to the reference's magnitude, or
/// 1e-9 absolute where the reference is smaller than 1.
pub fn near(reference: f64, x: f64) -> bool {
    (x - reference).abs() <= RELATIVE * reference.abs().max(1.0)
}

/// Two model scores agree to [`SCORE_TOLERANCE`].
pub fn scores_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCORE_TOLERANCE
}

/// The golden cases' equality (tests/golden/README.md, "Comparing values"):
/// numbers within `tol` relative or absolute, ints and floats alike; strings
/// that both parse as timestamps compare as instants; a missing field equals
/// null.
pub fn golden_eq(a: &Value, b: &Value, tol: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y
                || (x - y).abs() <= tol * x.abs().max(y.abs()).max(1e-300)
                || (x - y).abs() <= tol
        }
        (Value::String(x), Value::String(y)) => {
            x == y || matches!((timestamp_ms(x), timestamp_ms(y)), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| golden_eq(p, q, tol))
        }
        (Value::Object(x), Value::Object(y)) => {
            let null = Value::Null;
            x.keys()
                .chain(y.keys())
                .all(|k| golden_eq(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), tol))
        }
        (x, y) => x == y,
    }
}

fn timestamp_ms(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn close_is_relative_to_the_larger() {
        assert!(close(&json!(1e12), &json!(1e12 + 1e2)));
        assert!(!close(&json!(1e-12), &json!(2e-12)));
        assert!(close(
            &json!({"a": 1.0, "b": "x"}),
            &json!({"b": "x", "a": 1.0})
        ));
        assert!(!close(&json!({"a": 1.0}), &json!({"a": 1.0, "b": null})));
        assert!(close(&json!(3), &json!(3.0)));
    }

    #[test]
    fn near_has_an_absolute_floor() {
        assert!(near(0.0, 5e-10));
        assert!(!near(0.0, 2e-9));
        assert!(near(1e6, 1e6 + 1e-4));
    }

    #[test]
    fn golden_rules() {
        assert!(golden_eq(
            &json!({"t": "2026-01-01T00:01:00Z"}),
            &json!({"t": "2026-01-01T00:01:00.000Z", "x": null}),
            1e-9
        ));
        assert!(golden_eq(&json!(0.0), &json!(1e-10), 1e-9));
        assert!(!golden_eq(&json!(1.0), &json!(1.1), 1e-9));
    }
}
