//! Reading what a pipeline wrote: JSON values, id lists, window results, and
//! re-reading until enough has arrived.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::kafka::read_all;
use crate::wait_for;

/// Every record value of `topic`, parsed as JSON. Panics (naming the topic)
/// if the topic cannot be read to its end or a value is not JSON.
pub fn read_json(brokers: &str, topic: &str) -> Vec<Value> {
    read_all(brokers, topic, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("reading {topic}: {e:#}"))
        .iter()
        .map(|r| {
            serde_json::from_slice(&r.value).unwrap_or_else(|e| {
                panic!(
                    "{topic} offset {}: not JSON ({e}): {}",
                    r.offset,
                    String::from_utf8_lossy(&r.value)
                )
            })
        })
        .collect()
}

/// The integer `field` of every record of `topic`, sorted (repeats kept).
pub fn ids(brokers: &str, topic: &str, field: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = read_json(brokers, topic)
        .iter()
        .map(|v| {
            v[field]
                .as_i64()
                .unwrap_or_else(|| panic!("{topic}: no integer {field} in {v}"))
        })
        .collect();
    ids.sort();
    ids
}

/// What names a window result's group.
#[derive(Debug, Clone, Copy)]
pub enum GroupBy<'a> {
    /// The value's column of that name (a string).
    Column(&'a str),
    /// The record's Kafka key (as UTF-8).
    RecordKey,
    /// Nothing: one group (the empty string).
    Nothing,
}

/// Window results by (group, `window_end` as written), each with its output
/// offset, in offset order. A result written more than once has more than one
/// entry. Groups starting with "sentinel" (the events some tests add to fire
/// every window) are left out.
pub type WindowResults = BTreeMap<(String, String), Vec<(i64, Value)>>;

pub fn window_results(brokers: &str, topic: &str, group_by: GroupBy<'_>) -> WindowResults {
    let mut out = WindowResults::new();
    let records = read_all(brokers, topic, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("reading {topic}: {e:#}"));
    for r in records {
        let v: Value = serde_json::from_slice(&r.value)
            .unwrap_or_else(|e| panic!("{topic} offset {}: not JSON: {e}", r.offset));
        let group = match group_by {
            GroupBy::Column(c) => v[c]
                .as_str()
                .unwrap_or_else(|| panic!("{topic}: no string column {c} in {v}"))
                .to_owned(),
            GroupBy::RecordKey => r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            GroupBy::Nothing => String::new(),
        };
        if group.starts_with("sentinel") {
            continue;
        }
        let end = v["window_end"]
            .as_str()
            .unwrap_or_else(|| panic!("{topic}: no window_end in {v}"))
            .to_owned();
        out.entry((group, end)).or_default().push((r.offset, v));
    }
    out
}

/// Each window's one result; panics naming the first window written twice.
pub fn once(topic: &str, results: WindowResults) -> BTreeMap<(String, String), Value> {
    results
        .into_iter()
        .map(|(id, mut written)| {
            assert!(
                written.len() == 1,
                "{topic}: {id:?} written {} times: {written:?}",
                written.len()
            );
            (id, written.remove(0).1)
        })
        .collect()
}

/// How many things a read found, for [`read_until`].
pub trait Count {
    fn count(&self) -> usize;
}

impl<T> Count for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }
}

impl<K, V> Count for BTreeMap<K, V> {
    fn count(&self) -> usize {
        self.len()
    }
}

/// Calls `read` until what it returns holds at least `n` things or `timeout`
/// passes; returns the last read either way, for the caller to assert on.
pub fn read_until<T: Count>(timeout: Duration, n: usize, mut read: impl FnMut() -> T) -> T {
    wait_for(timeout, || {
        let got = read();
        (got.count() >= n, got)
    })
}
