//! Topics and records: create, produce, read back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir::connection::Connection;

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    weir::topics::ensure_topic(&Connection::plain(brokers), topic, partitions, &[])
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Sent without a value (a tombstone); `value` is ignored.
    pub tombstone: bool,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn value(v: impl Into<Vec<u8>>) -> Self {
        Self {
            value: v.into(),
            ..Default::default()
        }
    }
}

pub fn produce(brokers: &str, topic: &str, records: &[Record]) -> anyhow::Result<()> {
    produce_with(brokers, topic, records, &[("linger.ms", "5")])
}

/// Records the broker refused (an unknown partition, say), which librdkafka
/// reports only to the delivery callback.
#[derive(Default)]
struct DeliveryFailures(std::sync::Mutex<Vec<String>>);

impl ClientContext for DeliveryFailures {}

impl ProducerContext for DeliveryFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("partition {}: {e}", m.partition()));
        }
    }
}

/// Produces `records` with extra producer properties `extra`
/// (`compression.type`, say).
pub fn produce_with(
    brokers: &str,
    topic: &str,
    records: &[Record],
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let producer: ThreadedProducer<DeliveryFailures> =
        config.create_with_context(DeliveryFailures::default())?;
    for r in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if !r.tombstone {
            rec = rec.payload(&r.value[..]);
        }
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(t) = r.timestamp {
            rec = rec.timestamp(t);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
    // Unbatched input goes at a few thousand records a second: wait as long
    // as the queue keeps draining.
    let mut left = producer.in_flight_count();
    loop {
        match producer.flush(Duration::from_secs(30)) {
            Ok(()) => {
                let failed = producer
                    .context()
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(first) = failed.first() {
                    bail!(
                        "producing to {topic}: {} of {} records refused, the first: {first}",
                        failed.len(),
                        records.len()
                    );
                }
                return Ok(());
            }
            Err(e) => {
                let now = producer.in_flight_count();
                if now >= left {
                    bail!("producing to {topic}: {e} ({now} records still in flight)");
                }
                left = now;
            }
        }
    }
}

/// A consumer in group `group` that reports the end of each partition and
/// commits nothing by itself; assign it partitions to read.
pub fn consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?)
}

/// The offsets group `group` has committed for `partitions` of `topic`, in
/// that order.
pub fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<Offset>> {
    let mut query = TopicPartitionList::new();
    for p in partitions {
        query.add_partition(topic, *p);
    }
    Ok(consumer(brokers, group)?
        .committed_offsets(query, Duration::from_secs(10))?
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect())
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` from the beginning up to the end of each
/// partition (the fetch high watermark, via partition EOF).
pub fn read_all(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Received>> {
    let consumer = consumer(brokers, &format!("weir-test-reader-{topic}"))?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut done = BTreeMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while done.len() < partitions.len() {
        if Instant::now() > deadline {
            bail!("reading {topic}: no end of partition within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            hd.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        );
                    }
                }
                out.push(Received {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p, true);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}
