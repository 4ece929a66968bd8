//! Repartitioning (cluster jobs): a stateful stage whose key is not the key
//! its source topic is partitioned by reads its rows through a repartition
//! topic keyed by the stage's key, so each key's state lives in one task.
//!
//! ```text
//! input partition p -- map task -----> repartition topic (same partition count)
//!   decode, hash the key columns        data: the input record as it was (value,
//!   -> partition q = hash % n           key, timestamp) + header weir.origin (p, offset)
//!   every 200 ms, when p's highest      control: weir.max-event-time (p, t) and, at
//!   event time moved: tell every q      the end of bounded input, weir.end (p),
//!                                       to every partition
//! repartition partition q -- the ordinary source task (`task.rs`), in shuffle mode:
//!   the watermark is the minimum over the *origin* partitions (exactly what one
//!   process reading the input computes); a record whose origin offset is not
//!   above the highest already applied from that origin is a replay and skipped
//! ```
//!
//! A map task keeps no state: it commits its input offsets to the job's group
//! after its producer has flushed, so a map task that moves or crashes repeats
//! at most what it sent since its last commit. The repeat reaches each
//! repartition partition in origin-offset order (one idempotent producer), so
//! "skip what is not above the highest applied" removes it exactly, without
//! Kafka transactions. Two map tasks briefly running the same partition (a
//! rebalance on a broker that assigns it twice) send the same records in the
//! same order: also skipped. The applied offsets are part of the reading task's
//! checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimestampMillisecondType};
use datafusion::prelude::Expr;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};
use weir_operators::JsonDecoder;
use weir_operators::watermark::START_OF_TIME;
use weir_sql::{GroupKey, KafkaTable, PipelinePlan, Stage};

use crate::counters::TaskCounters;
use crate::kafka::consumer_config;
use crate::kafka::startup_offset;
use crate::records::RawBatch;
use crate::sink::Sink;

/// A data record's origin: 4 bytes partition, 8 bytes offset (big-endian).
pub const ORIGIN_HEADER: &str = "weir.origin";
/// An origin partition's highest event time so far: 4 bytes partition, 8 bytes ms.
pub const MAX_EVENT_TIME_HEADER: &str = "weir.max-event-time";
/// An origin partition reached the end of bounded input: 4 bytes partition.
pub const END_HEADER: &str = "weir.end";

/// How often a map task tells every repartition partition how far its input's
/// event time has got (when it moved).
const WATERMARK_EVERY: Duration = Duration::from_millis(200);

/// What a cluster job must repartition: per source table (by name), the
/// source columns its records are routed by. A source whose stateful stages
/// are all keyed by (at least) its declared `'key.fields'` is not listed: its
/// topic is already partitioned so that each key lives in one partition.
///
/// The routing key is what every stateful stage over the source keys by,
/// traced back to source columns: routing by a subset of a stage's key keeps
/// each of its groups in one task. Key expressions that are not a source
/// column passed through (`lower(merchant)`, a joined table's column) take no
/// part; a source whose stages share no such column is routed to one
/// partition, which is correct but serial.
pub fn repartition_keys(plan: &PipelinePlan) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for flow in &plan.flows {
        for (k, stage) in flow.stages.iter().enumerate() {
            let (input, keys): (&datafusion::common::DFSchemaRef, Vec<&Expr>) = match stage {
                Stage::WindowAggregate(w) if !w.partition_by.is_empty() => {
                    (&w.input, w.partition_by.iter().collect())
                }
                Stage::WindowAggregate(w) => (
                    &w.input,
                    w.group
                        .iter()
                        .filter_map(|g| match g {
                            GroupKey::Expr(e) => Some(e),
                            _ => None,
                        })
                        .collect(),
                ),
                Stage::Over(o) => (&o.input, o.partition_by.iter().collect()),
                _ => continue,
            };
            let columns: BTreeSet<String> = keys
                .iter()
                .filter_map(|e| match e {
                    Expr::Column(c) => column_index(input, c),
                    _ => None,
                })
                .filter_map(|i| source_column(&flow.stages[..k], input, i))
                .collect();
            let entry = out.entry(flow.source.clone()).or_insert(None);
            *entry = Some(match entry.take() {
                None => columns,
                Some(prev) => prev.intersection(&columns).cloned().collect(),
            });
        }
    }
    out.into_iter()
        .filter_map(|(source, columns)| {
            let columns = columns?;
            let declared = &plan.tables[&source].key_fields;
            let keyed_already =
                !declared.is_empty() && declared.iter().all(|k| columns.contains(&k.value));
            (!keyed_already).then(|| (source, columns.into_iter().collect()))
        })
        .collect()
}

/// The source column that column `index` of the input of the stage after
/// `stages` is, if it is one passed through unchanged.
fn source_column(
    stages: &[Stage],
    stateful_input: &datafusion::common::DFSchemaRef,
    mut index: usize,
) -> Option<String> {
    for stage in stages.iter().rev() {
        match stage {
            Stage::Filter { .. } => {}
            Stage::WindowColumns { output } => {
                // The three placeholders come last.
                if index + 3 >= output.fields().len() {
                    return None;
                }
            }
            Stage::Project { input, exprs, .. } => match exprs.get(index)?.clone().unalias() {
                Expr::Column(c) => index = column_index(input, &c)?,
                _ => return None,
            },
            Stage::Lookup(l) => {
                if index >= l.input.fields().len() {
                    return None;
                }
            }
            Stage::WindowAggregate(_) | Stage::Over(_) => return None,
        }
    }
    // The schema the first stage reads: the source table's columns.
    let input = match stages.first() {
        None => return Some(index_name(stateful_input, index)),
        Some(Stage::Filter { input, .. }) | Some(Stage::Project { input, .. }) => input,
        Some(Stage::Lookup(l)) => &l.input,
        Some(Stage::WindowColumns { output }) => output,
        Some(Stage::WindowAggregate(_) | Stage::Over(_)) => return None,
    };
    Some(index_name(input, index))
}

/// Where column `c` is in `schema`: by its qualified name, else by its name
/// alone if one field has it (a query's alias, `t.card_id`, need not be the
/// qualifier the stage's input schema carries).
fn column_index(
    schema: &datafusion::common::DFSchemaRef,
    c: &datafusion::common::Column,
) -> Option<usize> {
    if let Ok(i) = schema.index_of_column(c) {
        return Some(i);
    }
    let mut named = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == &c.name);
    match (named.next(), named.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

fn index_name(schema: &datafusion::common::DFSchemaRef, index: usize) -> String {
    schema.field(index).name().clone()
}

fn origin_bytes(partition: i32, value: i64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&partition.to_be_bytes());
    b[4..].copy_from_slice(&value.to_be_bytes());
    b
}

fn parse_origin(b: &[u8]) -> Option<(i32, i64)> {
    Some((
        i32::from_be_bytes(b.get(..4)?.try_into().ok()?),
        i64::from_be_bytes(b.get(4..12)?.try_into().ok()?),
    ))
}

/// A record read from a repartition topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shuffled {
    /// An input record, from `partition` at `offset` of the source topic.
    Record { partition: i32, offset: i64 },
    /// The origin partition's highest event time so far.
    MaxEventTime { partition: i32, time: i64 },
    /// The origin partition reached the end of bounded input.
    End { partition: i32 },
    /// No weir header: not written by a map task.
    Foreign,
}

pub fn classify(message: &BorrowedMessage<'_>) -> Shuffled {
    let Some(headers) = message.headers() else {
        return Shuffled::Foreign;
    };
    for h in headers.iter() {
        let Some(v) = h.value else { continue };
        match h.key {
            ORIGIN_HEADER => {
                if let Some((partition, offset)) = parse_origin(v) {
                    return Shuffled::Record { partition, offset };
                }
            }
            MAX_EVENT_TIME_HEADER => {
                if let Some((partition, time)) = parse_origin(v) {
                    return Shuffled::MaxEventTime { partition, time };
                }
            }
            END_HEADER => {
                if let Some(b) = v.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    return Shuffled::End {
                        partition: i32::from_be_bytes(b),
                    };
                }
            }
            _ => {}
        }
    }
    Shuffled::Foreign
}

/// A task reading a repartition topic: how many origin partitions feed it and
/// what it has applied of each.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Origin partitions (the source topic's partition count).
    pub partitions: usize,
    /// The source topic (named in dead letters).
    pub source_topic: String,
    /// The source is bounded: the task ends once every origin has ended.
    pub bounded: bool,
    /// Per origin partition, the highest offset applied.
    pub applied: BTreeMap<i32, i64>,
    /// Origin partitions whose end was seen.
    pub ended: BTreeSet<i32>,
    /// Replayed records skipped.
    pub skipped: u64,
}

impl Origins {
    /// Whether the record from `partition` at `offset` is new (and marks it
    /// applied): false for a map task's replay.
    pub fn accept(&mut self, partition: i32, offset: i64) -> bool {
        let last = self.applied.entry(partition).or_insert(-1);
        if offset <= *last {
            self.skipped += 1;
            return false;
        }
        *last = offset;
        true
    }

    pub fn all_ended(&self) -> bool {
        self.bounded && (0..self.partitions as i32).all(|p| self.ended.contains(&p))
    }
}

/// Where a map task sends its records.
pub struct MapTask {
    pub table: KafkaTable,
    pub partition: i32,
    /// The repartition topic and its partition count.
    pub topic: String,
    pub partitions: i32,
    /// Source columns to route by (empty: everything to partition 0).
    pub columns: Vec<String>,
    pub group_id: String,
    pub sink: Arc<Sink>,
    pub batch_size: usize,
    pub linger: Duration,
    pub commit_interval: Duration,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<TaskCounters>,
}

impl MapTask {
    pub fn run(self) -> anyhow::Result<()> {
        let table = &self.table;
        let consumer: BaseConsumer = consumer_config(table, &self.group_id)
            .create()
            .context("creating the Kafka consumer")?;
        // Where to start: the group's committed offset (this partition's
        // previous map task), else the source's startup mode.
        let mut query = TopicPartitionList::new();
        query.add_partition(&table.topic, self.partition);
        let committed = consumer
            .committed_offsets(query, Duration::from_secs(10))
            .context("reading the group's committed offsets")?
            .elements()
            .first()
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            });
        let start = match committed {
            Some(o) => o,
            None => startup_offset(&consumer, table, self.partition)?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&table.topic, self.partition, Offset::Offset(start))?;
        consumer
            .assign(&tpl)
            .context("assigning the input partition")?;
        // The start is committed at once: a task that moves before its first
        // commit must not resolve 'latest' again further on.
        if committed.is_none() {
            consumer.commit(&tpl, CommitMode::Sync)?;
        }
        info!(
            "source {}: map task for partition {} from offset {start} -> '{}' by ({})",
            table.name,
            self.partition,
            self.topic,
            self.columns.join(", ")
        );

        let decoder = JsonDecoder::new(table);
        let schema = decoder.schema().clone();
        let key_columns: Vec<usize> = self
            .columns
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<_, _>>()
            .context("a repartition column is not a source column")?;
        let time_column = table.watermark.map(|w| w.column);
        let mut next = start;
        let mut committed_next = start;
        let mut max_event_time = START_OF_TIME;
        let mut sent_event_time = START_OF_TIME;
        let mut last_watermark = Instant::now();
        let mut last_commit = Instant::now();
        let mut ended = false;
        let mut batch = RawBatch::with_capacity(self.batch_size);
        let mut routes: Vec<i32> = Vec::new();
        let mut last_error_log = Instant::now() - Duration::from_secs(60);
        let fallback = self.partition.rem_euclid(self.partitions);
        while !self.stop.load(Ordering::Relaxed) && !ended {
            batch.clear();
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                let timeout = if batch.is_empty() {
                    Duration::from_millis(50)
                } else {
                    deadline.saturating_duration_since(Instant::now())
                };
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(m)) => batch.push(&m),
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        if table.bounded {
                            ended = true;
                        }
                        break;
                    }
                    Some(Err(e)) => {
                        if last_error_log.elapsed() > Duration::from_secs(5) {
                            warn!("source {}: {e} (retrying)", table.name);
                            last_error_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let RawBatch { buf, spans, metas } = &batch;
                // Records that do not decode go on as they are: the task that
                // reads them dead-letters them, with the reason, exactly once.
                let decoded = decoder.decode(buf, spans, metas)?;
                routes.clear();
                routes.resize(spans.len(), fallback);
                let rows = decoded.batch.num_rows();
                if rows > 0 {
                    let keys: Vec<_> = key_columns
                        .iter()
                        .map(|&c| cast(decoded.batch.column(c), &DataType::Utf8))
                        .collect::<Result<_, _>>()
                        .context("formatting repartition keys")?;
                    let keys: Vec<_> = keys.iter().map(|k| k.as_string::<i32>()).collect();
                    for (r, &input) in decoded.rows.iter().enumerate() {
                        routes[input] = route(&keys, r, self.partitions);
                    }
                    if let Some(tc) = time_column {
                        let times = decoded
                            .batch
                            .column(tc)
                            .as_primitive::<TimestampMillisecondType>();
                        for r in 0..rows {
                            if times.is_valid(r) {
                                max_event_time = max_event_time.max(times.value(r));
                            }
                        }
                    }
                }
                for (i, &(s, e)) in spans.iter().enumerate() {
                    let m = &metas[i];
                    let origin = origin_bytes(m.partition, m.offset);
                    let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: ORIGIN_HEADER,
                        value: Some(&origin[..]),
                    });
                    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
                        .partition(routes[i])
                        .payload(&buf[s..e])
                        .headers(headers);
                    if let Some(k) = &m.key {
                        record = record.key(&k[..]);
                    }
                    if let Some(t) = m.timestamp {
                        record = record.timestamp(t);
                    }
                    self.sink.produce(record)?;
                }
                next = metas.last().map(|m| m.offset + 1).unwrap_or(next);
                let c = &self.counters;
                c.records_in
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
                c.records_out
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
                c.positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(self.partition, next);
            }
            if max_event_time > sent_event_time
                && (ended || last_watermark.elapsed() >= WATERMARK_EVERY)
            {
                let value = origin_bytes(self.partition, max_event_time);
                self.broadcast(MAX_EVENT_TIME_HEADER, &value)?;
                sent_event_time = max_event_time;
                last_watermark = Instant::now();
            }
            if ended {
                self.broadcast(END_HEADER, &self.partition.to_be_bytes())?;
            }
            if ended || last_commit.elapsed() >= self.commit_interval {
                self.commit(&consumer, next, &mut committed_next)?;
                last_commit = Instant::now();
            }
        }
        self.commit(&consumer, next, &mut committed_next)?;
        if ended {
            info!(
                "source {}: map task for partition {} reached the end of bounded input",
                table.name, self.partition
            );
        }
        Ok(())
    }

    /// A control record to every repartition partition.
    fn broadcast(&self, header: &str, value: &[u8]) -> anyhow::Result<()> {
        for q in 0..self.partitions {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: header,
                value: Some(value),
            });
            self.sink.produce(
                BaseRecord::<'_, [u8], [u8]>::to(&self.topic)
                    .partition(q)
                    .headers(headers),
            )?;
        }
        Ok(())
    }

    /// Input offsets are committed only once what was sent for them is acknowledged.
    fn commit(
        &self,
        consumer: &BaseConsumer,
        next: i64,
        committed: &mut i64,
    ) -> anyhow::Result<()> {
        self.sink.flush()?;
        if next == *committed {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.table.topic, self.partition, Offset::Offset(next))?;
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                *committed = next;
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "source {}: map task for partition {} committed offset {next}",
                    self.table.name, self.partition
                );
            }
            // The next commit covers it; a move repeats a little more.
            Err(e) => warn!(
                "source {}: map task for partition {}: committing offset {next}: {e}",
                self.table.name, self.partition
            ),
        }
        Ok(())
    }
}

/// The repartition partition of row `r`: FNV-1a over the key columns' text
/// (stable across processes and builds, unlike a seeded hash), nulls marked.
fn route(keys: &[&datafusion::arrow::array::StringArray], r: usize, partitions: i32) -> i32 {
    if keys.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for k in keys {
        if k.is_null(r) {
            eat(0xff);
        } else {
            for &b in k.value(r).as_bytes() {
                eat(b);
            }
        }
        eat(0);
    }
    (h % partitions.max(1) as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    #[test]
    fn replays_are_skipped_per_origin() {
        let mut o = Origins {
            partitions: 2,
            ..Default::default()
        };
        assert!(o.accept(0, 5));
        assert!(o.accept(1, 2));
        assert!(!o.accept(0, 5));
        assert!(!o.accept(0, 3));
        assert!(o.accept(0, 9));
        assert_eq!(o.skipped, 2);
    }

    #[test]
    fn the_end_needs_every_origin() {
        let mut o = Origins {
            partitions: 2,
            bounded: true,
            ..Default::default()
        };
        o.ended.insert(1);
        assert!(!o.all_ended());
        o.ended.insert(0);
        assert!(o.all_ended());
    }

    #[test]
    fn routes_are_stable_and_spread() {
        let a = StringArray::from(vec![Some("m-1"), Some("m-2"), None, Some("m-1")]);
        let keys = [&a];
        assert_eq!(route(&keys, 0, 6), route(&keys, 3, 6));
        // FNV-1a of "m-1\0" mod 1000: a route must not change between builds
        // (workers of different versions share a repartition topic).
        assert_eq!(route(&keys, 0, 1000), 798);
        let spread: BTreeSet<i32> = (0..200)
            .map(|i| {
                let s = StringArray::from(vec![format!("merchant-{i}")]);
                route(&[&s], 0, 6)
            })
            .collect();
        assert_eq!(spread.len(), 6);
        assert_eq!(route(&[], 0, 6), 0);
    }

    fn keys_of(sql: &str) -> BTreeMap<String, Vec<String>> {
        let plan = crate::load::plan_text(std::path::Path::new("t.sql"), sql, &|_| None)
            .expect("the SQL plans");
        repartition_keys(&plan)
    }

    const SOURCE: &str = r#"
CREATE TABLE tx (card_id TEXT, merchant TEXT, amount DOUBLE, ts TIMESTAMP(3),
                 WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
  WITH ('connector' = 'kafka', 'topic' = 'tx', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1' KEY);
CREATE TABLE out WITH ('connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
        'properties.bootstrap.servers' = 'localhost:1');
"#;

    fn with_key(key: &str) -> String {
        SOURCE.replace(" KEY", &format!(", 'key.fields' = '{key}'"))
    }

    const BY_MERCHANT: &str = "INSERT INTO out SELECT m, window_end, n FROM (
        SELECT merchant AS m, window_start, window_end, count(*) AS n
        FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
        WHERE amount > 1
        GROUP BY merchant, window_start, window_end);";

    #[test]
    fn state_keyed_by_the_declared_key_needs_no_repartition() {
        let sql = with_key("card_id")
            + "INSERT INTO out SELECT card_id, window_end, count(*) AS n
               FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
               GROUP BY card_id, window_start, window_end;";
        assert!(keys_of(&sql).is_empty());
        // The fraud example: OVER windows by card after a lookup join.
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fraud/pipeline.sql");
        let text = std::fs::read_to_string(&example).expect("the example");
        let plan = crate::load::plan_text(&example, &text, &|_| None).expect("it plans");
        assert!(repartition_keys(&plan).is_empty());
        // Without the declaration, by card (`t.card_id`, through the join).
        let text = text.replace("'key.fields' = 'card_id',\n  -- Only", "-- Only");
        let plan = crate::load::plan_text(&example, &text, &|_| None).expect("it plans");
        assert_eq!(
            repartition_keys(&plan),
            BTreeMap::from([("transactions".to_owned(), vec!["card_id".to_owned()])])
        );
    }

    #[test]
    fn other_keys_are_traced_back_to_source_columns() {
        // Through a filter and a renaming projection.
        let sql = with_key("card_id") + BY_MERCHANT;
        assert_eq!(
            keys_of(&sql),
            BTreeMap::from([("tx".to_owned(), vec!["merchant".to_owned()])])
        );
        // No declared key: state keyed by card is repartitioned by card.
        let sql = SOURCE.replace(" KEY", "")
            + "INSERT INTO out SELECT card_id, window_end, count(*) AS n
               FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
               GROUP BY card_id, window_start, window_end;";
        assert_eq!(
            keys_of(&sql),
            BTreeMap::from([("tx".to_owned(), vec!["card_id".to_owned()])])
        );
        // Two flows keyed differently share no column: one partition.
        let sql = with_key("card_id")
            + BY_MERCHANT
            + "INSERT INTO out SELECT card_id AS m, window_end, count(*) AS n
               FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
               GROUP BY card_id, window_start, window_end;";
        assert_eq!(keys_of(&sql), BTreeMap::from([("tx".to_owned(), vec![])]));
    }

    #[test]
    fn origin_headers_round_trip() {
        assert_eq!(parse_origin(&origin_bytes(3, 42)), Some((3, 42)));
        assert_eq!(parse_origin(&[1, 2]), None);
    }
}
