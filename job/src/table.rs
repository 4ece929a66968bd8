//! Reading a table from its compacted topic for the flows that join it.
//!
//! A task opens one feed per joined table: a consumer assigned every partition
//! of the table's topic from the beginning, outside any consumer group (the
//! whole table, every run). Before the task reads its stream it reads each
//! table to the end of its topic; afterwards it picks up what arrives between
//! batches. A record's Kafka key is the row's primary key; a record without a
//! value deletes the key.
//!
//! The feed also says how far the table is complete in event time, for joins
//! `FOR SYSTEM_TIME AS OF` (which wait for it): per partition, the greatest
//! version time read minus the table's watermark delay; a partition read to
//! its end that has stayed there for the table's `scan.watermark.idle-timeout`
//! (default 0) does not hold the watermark back. The table's watermark is the
//! least of its partitions'.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};
use weir_operators::{JsonDecoder, RecordMeta, TableChanges};
use weir_sql::KafkaTable;

use crate::kafka::{QuietEof, WeirConsumer, apply_properties};

pub struct TableFeed {
    pub table: KafkaTable,
    consumer: WeirConsumer,
    decoder: JsonDecoder,
    partitions: usize,
    progress: Vec<PartitionProgress>,
    idle_timeout: Duration,
    /// Records that could not be read as the table's row (counted, skipped).
    pub bad: u64,
}

/// How far one partition of the table has been read.
#[derive(Clone, Copy)]
struct PartitionProgress {
    /// The greatest version time read.
    max_time: i64,
    /// Since when the partition has been read to its end, if it is.
    at_end_since: Option<Instant>,
}

/// Records read per poll between stream batches, at most.
const MAX_PER_POLL: usize = 10_000;
/// Records decoded and applied at a time while reading a table to its end.
const READ_CHUNK: usize = 65_536;

impl TableFeed {
    pub fn open(table: &KafkaTable, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &table.bootstrap_servers)
            .set("group.id", format!("weir-table-{}", table.name))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "10")
            .set("socket.connection.setup.timeout.ms", "10000");
        apply_properties(&mut config, &table.properties);
        let consumer: WeirConsumer = config
            .create_with_context(QuietEof)
            .with_context(|| format!("creating the consumer of table {}", table.name))?;
        let md = consumer
            .fetch_metadata(Some(&table.topic), timeout)
            .with_context(|| format!("reading the metadata of topic '{}'", table.topic))?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == table.topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            anyhow::bail!(
                "table {}: topic '{}' does not exist (or has no partitions)",
                table.name,
                table.topic
            );
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(&table.topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            table: table.clone(),
            consumer,
            decoder: JsonDecoder::new(table),
            partitions,
            progress: vec![
                PartitionProgress {
                    max_time: i64::MIN,
                    at_end_since: None,
                };
                partitions
            ],
            idle_timeout: Duration::from_millis(table.idle_timeout_ms.unwrap_or(0)),
            bad: 0,
        })
    }

    /// How far the table is complete in event time: joins may use it for
    /// stream rows at or before this time.
    pub fn watermark(&self, now: Instant) -> i64 {
        let delay = self.table.watermark.map_or(0, |w| w.delay_ms);
        self.progress
            .iter()
            .map(|p| match p.at_end_since {
                Some(since) if now.saturating_duration_since(since) >= self.idle_timeout => {
                    i64::MAX
                }
                _ => p.max_time.saturating_sub(delay),
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Reads the whole topic, to the end of every partition, handing it to
    /// `apply` in chunks (so memory holds one chunk, not the topic); returns
    /// how many records were read.
    pub fn read_to_end(
        &mut self,
        timeout: Duration,
        apply: &mut dyn FnMut(TableChanges) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut ended = std::collections::HashSet::new();
        let mut records = Records::default();
        let mut total = 0;
        while ended.len() < self.partitions {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "reading table {} from topic '{}' took longer than {}s",
                    self.table.name,
                    self.table.topic,
                    timeout.as_secs()
                );
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    read_from(&mut self.progress, m.partition());
                    records.push(&m);
                    if records.seen >= READ_CHUNK {
                        total += records.seen;
                        let chunk = std::mem::take(&mut records);
                        apply(self.changes(chunk)?)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    reached_end(&mut self.progress, p);
                    ended.insert(p);
                }
                Some(Err(e)) => warn!("table {}: {e} (retrying)", self.table.name),
            }
        }
        total += records.seen;
        apply(self.changes(records)?)?;
        info!(
            "table {}: {total} records read from '{}'",
            self.table.name, self.table.topic
        );
        Ok(total)
    }

    /// What arrived since the last read, without waiting.
    pub fn poll(&mut self) -> anyhow::Result<Option<TableChanges>> {
        let mut records = Records::default();
        while records.metas.len() < MAX_PER_POLL {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    read_from(&mut self.progress, m.partition());
                    records.push(&m);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => reached_end(&mut self.progress, p),
                Some(Err(e)) => {
                    warn!("table {}: {e} (retrying)", self.table.name);
                    break;
                }
            }
        }
        if records.metas.is_empty() {
            return Ok(None);
        }
        self.changes(records).map(Some)
    }

    fn changes(&mut self, records: Records) -> anyhow::Result<TableChanges> {
        let decoded = self
            .decoder
            .decode(&records.buf, &records.spans, &records.metas)?;
        for b in &decoded.bad {
            self.bad += 1;
            let m = &records.metas[b.index];
            warn!(
                "table {}: record at partition {} offset {} skipped: {}",
                self.table.name, m.partition, m.offset, b.reason
            );
        }
        // Each partition's greatest version time.
        if let Some(w) = self.table.watermark
            && let Some(times) = decoded
                .batch
                .column(w.column)
                .as_primitive_opt::<TimestampMillisecondType>()
        {
            for (row, &value) in decoded.rows.iter().enumerate() {
                let p = records.metas[value].partition as usize;
                if let (true, Some(progress)) = (times.is_valid(row), self.progress.get_mut(p)) {
                    progress.max_time = progress.max_time.max(times.value(row));
                }
            }
        }
        // Deletes, placed among the decoded rows by their input position.
        let mut deletes = Vec::new();
        for (i, partition, key, time) in records.deletes {
            if let Some(progress) = self.progress.get_mut(partition as usize) {
                progress.max_time = progress.max_time.max(time);
            }
            let position = decoded
                .rows
                .partition_point(|&r| records.value_index[r] < i);
            match key {
                Some(k) => deletes.push((position, k, time)),
                None => {
                    self.bad += 1;
                    warn!(
                        "table {}: a record without key or value skipped",
                        self.table.name
                    );
                }
            }
        }
        Ok(TableChanges {
            rows: decoded.batch,
            deletes,
        })
    }
}

fn reached_end(progress: &mut [PartitionProgress], partition: i32) {
    if let Some(p) = progress.get_mut(partition as usize) {
        p.at_end_since.get_or_insert_with(Instant::now);
    }
}

fn read_from(progress: &mut [PartitionProgress], partition: i32) {
    if let Some(p) = progress.get_mut(partition as usize) {
        p.at_end_since = None;
    }
}

/// Records read from the topic: values to decode, and deletes (records
/// without a value) by their position among all records.
#[derive(Default)]
struct Records {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
    metas: Vec<RecordMeta>,
    /// For each value, its index among all records.
    value_index: Vec<usize>,
    /// (index among all records, partition, key text, version time).
    deletes: Vec<(usize, i32, Option<String>, i64)>,
    seen: usize,
}

impl Records {
    fn push(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let index = self.seen;
        self.seen += 1;
        match m.payload() {
            None => {
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let time = m.timestamp().to_millis().unwrap_or(i64::MIN);
                self.deletes.push((index, m.partition(), key, time));
            }
            Some(payload) => {
                let start = self.buf.len();
                self.buf.extend_from_slice(payload);
                self.spans.push((start, self.buf.len()));
                self.buf.push(b'\n');
                self.value_index.push(index);
                self.metas.push(RecordMeta {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(Into::into),
                });
            }
        }
    }
}
