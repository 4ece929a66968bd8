//! Kafka clients: their configuration, and the readers weir uses besides a
//! source task's consumer (scans of output and changelog partitions, the
//! cluster's compacted topics). Topics are created in `topics.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use weir_sql::{KafkaTable, StartupMode};

use crate::connection::Connection;

/// A consumer context that does not log end-of-partition events as errors:
/// weir asks for them (bounded reads, reading a table to its end) and handles
/// them itself. Other client errors are logged as librdkafka's default does.
#[derive(Clone, Copy, Default)]
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for QuietEof {}

/// weir's consumers.
pub type WeirConsumer = BaseConsumer<QuietEof>;

/// librdkafka settings weir uses unless the table's `properties.*` override them.
/// A short fetch wait matters: some brokers hold a fetch open for its whole
/// wait even when data is there, which caps throughput and adds latency.
pub fn consumer_config(table: &KafkaTable, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &table.bootstrap_servers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Bounded reads stop at the end of each partition (the fetch high
        // watermark); unbounded ones have no use for the event.
        .set(
            "enable.partition.eof",
            if table.bounded { "true" } else { "false" },
        )
        .set("fetch.wait.max.ms", "10")
        // Prefetch per partition (librdkafka's defaults: 100,000 messages,
        // 64 MiB). Each prefetched message costs librdkafka a few hundred
        // bytes beside its payload, and watermark alignment leaves the
        // partitions it holds back with full queues: 16 MiB per partition
        // held ~180 MiB more at peak than 4 MiB on the 1M-keys run, at the
        // same speed (BENCHMARKS.md, State size).
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "4096")
        // Once a partition's queue passes those, librdkafka waits this long
        // before fetching it again (default 1 s). With queues this small that
        // is most of the time at speed: at 100k events/s on tansu weir read
        // ~30k/s and fell 20 s behind; with 10 ms it keeps up
        // (BENCHMARKS.md, Latency).
        .set("fetch.queue.backoff.ms", "10")
        .set("auto.offset.reset", "earliest")
        .set("socket.connection.setup.timeout.ms", "10000");
    apply_properties(&mut c, &table.properties);
    c
}

/// A producer for `cluster`: weir's settings, then `properties` (a sink
/// table's `properties.*`) over them.
pub fn producer_config(
    cluster: &Connection,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = cluster.config();
    c.set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        // What the producer may hold unacknowledged before `produce` waits
        // (backpressure): a bound on memory (was 1 GiB). It did not change
        // the 1M-keys run's peak RSS or its speed (BENCHMARKS.md, State size).
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "131072")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("socket.connection.setup.timeout.ms", "10000");
    apply_properties(&mut c, properties);
    c
}

/// The `properties.*` of sink tables, for the producer they share (later
/// tables win where two set one property).
pub fn sink_properties<'a>(
    tables: impl IntoIterator<Item = &'a KafkaTable>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in tables {
        out.extend(t.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

pub fn apply_properties(c: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (k, v) in properties {
        // group.id is a consumer property; harmless elsewhere but noisy in logs.
        c.set(k, v);
    }
}

/// A consumer for reading assigned partitions to their end once (no commits,
/// end-of-partition events on, short fetch waits for tansu).
pub fn scan_consumer(cluster: &Connection, group: &str) -> anyhow::Result<WeirConsumer> {
    cluster
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("socket.connection.setup.timeout.ms", "10000")
        .create_with_context(QuietEof)
        .with_context(|| format!("creating the {group} consumer"))
}

/// Follows partition 0 of a topic (the cluster's compacted registry and
/// status topics) from its beginning, handing each record's key and value
/// (`None`: a tombstone) to the caller.
pub struct TopicFollower {
    consumer: WeirConsumer,
    topic: String,
    /// Whether the end of the partition has been reached once.
    pub caught_up: bool,
}

impl TopicFollower {
    pub fn open(cluster: &Connection, topic: &str, group: &str) -> anyhow::Result<Self> {
        let consumer = scan_consumer(cluster, group)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            caught_up: false,
        })
    }

    /// Takes in what arrives within `timeout`; true if anything did.
    pub fn poll<F>(&mut self, timeout: Duration, apply: &mut F) -> bool
    where
        F: FnMut(&[u8], Option<&[u8]>),
    {
        use rdkafka::message::Message;
        let mut any = false;
        let mut wait = timeout;
        loop {
            match self.consumer.poll(wait) {
                None => return any,
                Some(Ok(m)) => {
                    apply(m.key().unwrap_or_default(), m.payload());
                    any = true;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.caught_up = true;
                    return any;
                }
                Some(Err(e)) => {
                    tracing::warn!("reading '{}': {e}", self.topic);
                    return any;
                }
            }
            wait = Duration::ZERO;
        }
    }

    /// Reads until the end of the partition.
    pub fn read_to_end<F>(&mut self, timeout: Duration, apply: &mut F) -> anyhow::Result<()>
    where
        F: FnMut(&[u8], Option<&[u8]>),
    {
        let deadline = std::time::Instant::now() + timeout;
        while !self.caught_up {
            if std::time::Instant::now() > deadline {
                bail!(
                    "'{}' could not be read to its end within {}s",
                    self.topic,
                    timeout.as_secs()
                );
            }
            self.poll(Duration::from_millis(100), apply);
        }
        Ok(())
    }
}

/// The header carrying each output record's stable identity.
pub const ID_HEADER: &str = "weir.id";
/// On a result that changes one emitted before (allowed lateness, session
/// merges): `update` or `delete`. Records without it are inserts.
pub const CHANGE_HEADER: &str = "weir.change";

/// Reads `topic`/`partition` from each given offset to the partition's end
/// and returns the identities (the `weir.id` header) of what is there: the
/// output a crashed run produced after its last checkpoint.
pub fn read_output_ids(
    cluster: &Connection,
    from: &BTreeMap<String, BTreeMap<i32, i64>>,
    timeout: Duration,
) -> anyhow::Result<(std::collections::HashSet<Box<[u8]>>, u64)> {
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let mut ids = std::collections::HashSet::new();
    let mut records = 0u64;
    if from.values().all(|p| p.is_empty()) {
        return Ok((ids, 0));
    }
    let consumer = scan_consumer(cluster, "weir-output-scan")?;
    let deadline = std::time::Instant::now() + timeout;
    // One topic at a time: end-of-partition events name no topic.
    for (topic, partitions) in from {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
        }
        consumer.assign(&tpl)?;
        let mut ended = std::collections::HashSet::new();
        while ended.len() < partitions.len() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "reading the output written since the last checkpoint took longer than {}s",
                    timeout.as_secs()
                );
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    records += 1;
                    if let Some(h) = m.headers() {
                        for i in 0..h.count() {
                            let header = h.get(i);
                            if header.key == ID_HEADER
                                && let Some(v) = header.value
                            {
                                ids.insert(v.into());
                            }
                        }
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                Some(Err(e)) => {
                    tracing::warn!("reading earlier output of '{topic}': {e} (retrying)")
                }
            }
        }
    }
    Ok((ids, records))
}

/// The current end offset of each partition of `topic` (a lower bound on
/// brokers whose reported end lags, which is what callers need).
pub fn end_offsets(
    cluster: &Connection,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = cluster
        .config()
        .create()
        .context("creating a Kafka client")?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut ends = BTreeMap::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            ends.insert(p.id(), high.max(0));
        }
    }
    Ok(ends)
}

/// Where a partition without a checkpointed or committed offset starts: its
/// first or next offset, by the source's startup mode.
pub fn startup_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    table: &KafkaTable,
    partition: i32,
) -> anyhow::Result<i64> {
    let (low, high) = consumer
        .fetch_watermarks(&table.topic, partition, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "reading the offsets of '{}' partition {partition}",
                table.topic
            )
        })?;
    Ok(if table.startup_mode == StartupMode::Latest {
        high.max(0)
    } else {
        low.max(0)
    })
}

/// The librdkafka weir runs on and what it was built with, e.g.
/// "librdkafka 2.12.1 (gzip, snappy, ssl, sasl, ..., zstd, oidc)": what
/// `weir --version` prints, so a user can see which security protocols and
/// codecs this build can speak.
pub fn librdkafka_build() -> String {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .unwrap_or_else(|e| format!("features unknown: {e}"));
    format!("librdkafka {version} ({})", features.replace(',', ", "))
}
