//! `SET 'key' = 'value'`: the job settings a file may give, and the form of
//! each value where it has one.

use super::suggest::unknown;
use super::values::{parse_duration_ms, parse_size_bytes};
use crate::error::{LResult, Located};
use crate::statement::Spanned;

pub const SETTINGS: &[&str] = &[
    "pipeline.name",
    "checkpoint.interval",
    "execution.batch-size",
    "execution.linger",
    "table.exec.source.idle-timeout",
    "state.dir",
    "state.cache.size",
    "state.changelog",
    "state.ttl",
    "table.exec.state.ttl",
    "window.allowed-lateness",
    "table.exec.emit.allow-lateness",
];

pub fn check_setting(key: &Spanned<String>) -> LResult<()> {
    if SETTINGS.contains(&key.value.as_str()) {
        Ok(())
    } else {
        Err(unknown("setting", key, SETTINGS))
    }
}

/// Checks a setting's value where its form is known (durations, sizes, counts).
pub fn check_setting_value(key: &str, value: &Spanned<String>) -> LResult<()> {
    let v = value.value.as_str();
    let ok = match key {
        "checkpoint.interval"
        | "execution.linger"
        | "table.exec.source.idle-timeout"
        | "state.ttl"
        | "table.exec.state.ttl"
        | "window.allowed-lateness"
        | "table.exec.emit.allow-lateness" => parse_duration_ms(v).is_some(),
        "state.cache.size" => parse_size_bytes(v).is_some(),
        "state.changelog" => matches!(v, "true" | "false"),
        "execution.batch-size" => v.trim().parse::<usize>().is_ok_and(|n| n > 0),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    let expected = match key {
        "state.cache.size" => "a size such as '64mb', '1gb' or '1048576'",
        "execution.batch-size" => "a positive number of rows",
        "state.changelog" => "'true' or 'false'",
        _ => "a duration such as '500ms', '10s', '1 min' or '2h'",
    };
    Err(Located::new(
        value.pos,
        format!("invalid value '{v}' for setting '{key}': expected {expected}"),
    ))
}
