//! The producer a job's tasks write through: output records, dead letters and
//! changelog records, with delivery outcomes counted and, for exactly-once
//! bookkeeping, the highest acknowledged offset of every partition written.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::warn;

use crate::connection::Connection;

/// Counts delivery outcomes; a failed delivery fails the next flush.
#[derive(Default)]
pub struct SinkContext {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Per topic and partition, one past the highest offset acknowledged.
    positions: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(m) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
                let next = m.offset() + 1;
                match positions.get_mut(m.topic()) {
                    Some(t) => {
                        let p = t.entry(m.partition()).or_insert(next);
                        *p = (*p).max(next);
                    }
                    None => {
                        positions.insert(
                            m.topic().to_owned(),
                            BTreeMap::from([(m.partition(), next)]),
                        );
                    }
                }
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("delivery to '{}' failed: {e}", m.topic());
            }
        }
    }
}

/// The job's producer, shared by its tasks.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    cluster: Connection,
    transactional: bool,
}

const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

impl Sink {
    pub fn new(config: &rdkafka::ClientConfig) -> anyhow::Result<Self> {
        let producer = config
            .create_with_context(SinkContext::default())
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            cluster: Connection::from_config(config),
            transactional: false,
        })
    }

    /// A task's own producer with `transactional.id` = `id`: initialising it
    /// fences (and aborts the open transaction of) any earlier producer with
    /// that id, such as the one of a run that was killed. A transaction is open
    /// on return.
    pub fn transactional(config: &rdkafka::ClientConfig, id: &str) -> anyhow::Result<Self> {
        let mut config = config.clone();
        config.set("transactional.id", id);
        let mut sink = Self::new(&config)?;
        sink.producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .with_context(|| format!("initialising Kafka transactions (transactional.id {id})"))?;
        sink.producer
            .begin_transaction()
            .context("beginning a Kafka transaction")?;
        sink.transactional = true;
        Ok(sink)
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Commits the open transaction, adding the consumer group's `offsets` to
    /// it, and begins the next one.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&rdkafka::consumer::ConsumerGroupMetadata>,
    ) -> anyhow::Result<()> {
        if offsets.count() > 0
            && let Some(group) = group
        {
            self.producer
                .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
                .context("adding input offsets to the Kafka transaction")?;
        }
        self.producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .context("committing the Kafka transaction")?;
        self.producer
            .begin_transaction()
            .context("beginning a Kafka transaction")?;
        Ok(())
    }

    /// The cluster the producer writes to, and how it connects.
    pub fn cluster(&self) -> &Connection {
        &self.cluster
    }

    /// One past the highest acknowledged offset, per partition of each of
    /// `topics` that has had output.
    pub fn positions(&self, topics: &[String]) -> BTreeMap<String, BTreeMap<i32, i64>> {
        let positions = self
            .producer
            .context()
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        topics
            .iter()
            .filter_map(|t| positions.get(t).map(|p| (t.clone(), p.clone())))
            .collect()
    }

    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.produce(record)
    }

    /// Sends `value` (`None`: a tombstone) to one partition of `topic`.
    pub fn send_to(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.produce(record)
    }

    pub fn produce(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        let topic = record.topic.to_owned();
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing to '{topic}': {e}"),
            }
        }
    }

    /// Waits until everything sent so far is acknowledged.
    ///
    /// rust-rdkafka's `flush` waits in `poll` steps of 100 ms that each run to
    /// their end, so every flush with records in flight took at least 100 ms:
    /// a checkpoint stalled its task that long (p99 latency 120-160 ms at 2k
    /// events/s, bench/latency_bench.py). The producer's own thread serves
    /// delivery reports, so this waits for the in-flight count instead.
    pub fn flush(&self) -> anyhow::Result<()> {
        // A zero-timeout flush sends what is lingering at once.
        match self.producer.flush(Duration::ZERO) {
            Ok(())
            | Err(KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(e) => bail!("flushing the producer: {e}"),
        }
        let mut warn_at = Instant::now() + Duration::from_secs(30);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= warn_at {
                warn!(
                    "the producer is still waiting for {} acknowledgements (broker down?)",
                    self.producer.in_flight_count()
                );
                warn_at = Instant::now() + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} output records could not be delivered");
        }
        Ok(())
    }

    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }
}
