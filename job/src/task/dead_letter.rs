//! Dead letters: records that could not be decoded, and rows an operator
//! found late, go to the source's `'dead-letter.topic'` with the reason and
//! where they came from in headers. Without a dead-letter topic (or with
//! `'late.policy' = 'drop'` for late rows) they are counted and dropped,
//! with a rate-limited warning.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::message::Header;
use tracing::warn;
use weir_operators::ids::{parse_source_row_id, source_row_id};
use weir_operators::{Batch, JsonEncoder, RecordMeta};
use weir_sql::LatePolicy;

use super::SourceTask;
use super::dedupe::{DECODE_FLOW, Dedupe, RECORD_ID_LEN, record_id};
use super::emit::id_header;

const DLQ_REASON: &str = "weir.error";

/// Where a dead letter came from, as its headers name it.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    Kafka { partition: i32, offset: i64 },
    File { file: String, line: i64 },
    Unknown,
}

/// The headers that say why a record was dead-lettered and where it came
/// from (after the `weir.id` header).
fn dead_letter_headers(
    reason: &str,
    source_topic: &str,
    origin: &Origin,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (DLQ_REASON, reason.to_owned()),
        ("weir.source.topic", source_topic.to_owned()),
    ];
    match origin {
        Origin::Kafka { partition, offset } => {
            headers.push(("weir.source.partition", partition.to_string()));
            headers.push(("weir.source.offset", offset.to_string()));
        }
        Origin::File { file, line } => {
            headers.push(("weir.source.file", file.clone()));
            headers.push(("weir.source.line", line.to_string()));
        }
        Origin::Unknown => {}
    }
    headers
}

impl SourceTask {
    /// A record that could not be decoded.
    pub(super) fn dead_letter(
        &mut self,
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        meta: &RecordMeta,
    ) -> anyhow::Result<()> {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if self.table.dead_letter_topic.is_none() {
            if warning_due() {
                let place = if self.table.path.is_some() {
                    let (file, line) = crate::files::locate(&self.files, meta.offset);
                    format!("{file} line {line}")
                } else {
                    format!("partition {} offset {}", meta.partition, meta.offset)
                };
                warn!(
                    "source {}: bad record at {place}: {reason} (no 'dead-letter.topic'; counted and dropped)",
                    self.table.name
                );
            }
            return Ok(());
        }
        let id = record_id(
            DECODE_FLOW | self.settings.source_index,
            &source_row_id(meta.partition, meta.offset),
        );
        self.send_dead_letter(id, value, key, reason, Some((meta.partition, meta.offset)))
    }

    /// Dead-letters rows an operator found late (window or OVER), as JSON of
    /// that operator's input, unless the source's late policy is drop.
    pub(super) fn dead_letter_rows(
        &mut self,
        flow_id: u16,
        rows: &Batch,
        reason: &str,
    ) -> anyhow::Result<()> {
        if self.table.dead_letter_topic.is_none() || self.table.late_policy == LatePolicy::Drop {
            if warning_due() {
                warn!(
                    "source {}: {} row(s) dropped as {reason} ('late.policy' = 'drop'; counted in the late metric)",
                    self.table.name,
                    rows.num_rows()
                );
            }
            return Ok(());
        }
        let encoder = JsonEncoder::new(rows.data.schema(), vec![]);
        let encoded = encoder.encode(&rows.data)?;
        for i in 0..encoded.len() {
            let row_id = rows.ids.value(i);
            let origin = parse_source_row_id(row_id);
            self.send_dead_letter(
                record_id(flow_id, row_id),
                encoded.value(i),
                None,
                reason,
                origin,
            )?;
        }
        Ok(())
    }

    fn send_dead_letter(
        &mut self,
        id: [u8; RECORD_ID_LEN],
        value: &[u8],
        key: Option<&[u8]>,
        reason: &str,
        origin: Option<(i32, i64)>,
    ) -> anyhow::Result<()> {
        let Some(topic) = &self.table.dead_letter_topic else {
            return Ok(());
        };
        if Dedupe::seen(&mut self.dedupe, &id) {
            self.counters
                .duplicates_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let origin = match (origin, &self.table.path) {
            (Some((_, offset)), Some(_)) => {
                let (file, line) = crate::files::locate(&self.files, offset);
                Origin::File { file, line }
            }
            (Some((partition, offset)), None) => Origin::Kafka { partition, offset },
            (None, _) => Origin::Unknown,
        };
        // In shuffle mode the record's partition and offset are its origin's,
        // in the source topic.
        let source_topic = self
            .settings
            .shuffle
            .as_ref()
            .map_or(&self.table.topic, |o| &o.source_topic);
        let headers = dead_letter_headers(reason, source_topic, &origin)
            .iter()
            .fold(id_header(&id), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
        self.sink.send(topic, key, value, Some(headers))
    }
}

/// Rate-limits the "bad record dropped" warning to one every few seconds.
fn warning_due() -> bool {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(5));
    if due {
        *last = Some(Instant::now());
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_reason_and_the_origin() {
        let kafka = dead_letter_headers(
            "bad json",
            "tx",
            &Origin::Kafka {
                partition: 2,
                offset: 41,
            },
        );
        assert_eq!(
            kafka,
            vec![
                ("weir.error", "bad json".to_string()),
                ("weir.source.topic", "tx".to_string()),
                ("weir.source.partition", "2".to_string()),
                ("weir.source.offset", "41".to_string()),
            ]
        );
        let file = dead_letter_headers(
            "late",
            "data/",
            &Origin::File {
                file: "a.jsonl".into(),
                line: 3,
            },
        );
        assert_eq!(file[2], ("weir.source.file", "a.jsonl".to_string()));
        assert_eq!(file[3], ("weir.source.line", "3".to_string()));
        assert_eq!(dead_letter_headers("x", "t", &Origin::Unknown).len(), 2);
    }
}
