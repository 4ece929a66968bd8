//! Every topic a job reads or writes, created or checked in one place, each
//! on the cluster its records go to:
//!
//! ```text
//! source            must exist (the embedded broker creates it)
//! sink              created when missing, with the table's partitions (default 1)
//! dead letters      created when missing, on the cluster of the source's output
//! changelog         compacted, a partition per task (an existing one needs enough)
//! repartition       a partition per source partition, exactly
//! joined table      must exist (the embedded broker creates it)
//! registry, status  the worker cluster's own, compacted, one partition
//! ```
//! A source task writes its output, its dead letters and its changelog
//! through one producer, on the cluster of its first flow's sink
//! ([`output_cluster`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use weir_sql::{KafkaTable, PipelinePlan};

use crate::connection::Connection;
use crate::embedded::EmbeddedBroker;

/// How long a cluster may take to answer a metadata or admin request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const COMPACTED: &[(&str, &str)] = &[("cleanup.policy", "compact")];

/// The changelog topic of a job's source.
pub fn changelog_name(group_id: &str, source: &str) -> String {
    format!("{group_id}-{source}-changelog")
}

/// The repartition topic of a job's source.
pub fn repartition_name(group_id: &str, source: &str) -> String {
    format!("{group_id}-{source}-repartition")
}

/// The cluster a source task writes to: its first flow's sink's. Its dead
/// letters and changelog go there too, through the same producer.
pub fn output_cluster(plan: &PipelinePlan, source: &str) -> Option<Connection> {
    plan.flows
        .iter()
        .find(|f| f.source == source)
        .map(|f| Connection::of(&plan.tables[&f.sink]))
}

/// Creates and checks topics: through the clusters' admin API, or on the
/// embedded broker, which serves no CreateTopics.
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    embedded: Option<&'a EmbeddedBroker>,
}

impl<'a> Admin<'a> {
    pub fn new(embedded: Option<&'a EmbeddedBroker>) -> Self {
        Self { embedded }
    }

    /// Sets up the topics every run of `plan` needs: its sources must exist,
    /// its sinks and dead-letter topics are created when missing. Returns
    /// each Kafka source's partition count, by table name.
    pub fn prepare(&self, plan: &PipelinePlan) -> anyhow::Result<BTreeMap<String, i32>> {
        let mut partitions = BTreeMap::new();
        for source in plan.sources() {
            // Files are listed (and checked) when the task starts.
            if source.path.is_none() {
                partitions.insert(source.name.clone(), self.source(source)?);
            }
            if let Some(dlq) = &source.dead_letter_topic {
                let cluster =
                    output_cluster(plan, &source.name).unwrap_or_else(|| Connection::of(source));
                self.output(&cluster, dlq, 1)?;
            }
        }
        for sink in plan.sinks() {
            self.output(
                &Connection::of(sink),
                &sink.topic,
                sink.partitions.unwrap_or(1),
            )?;
        }
        if self.embedded.is_some() {
            for table in plan.tables.values().filter(|t| t.scan_table) {
                self.create(&table.topic, table.partitions.unwrap_or(1))?;
            }
        }
        Ok(partitions)
    }

    /// A source topic's partition count; on the embedded broker the topic is
    /// created first (4 partitions unless the table says).
    pub fn source(&self, table: &KafkaTable) -> anyhow::Result<i32> {
        if self.embedded.is_some() {
            let n = table.partitions.unwrap_or(4);
            self.create(&table.topic, n)?;
            return Ok(n);
        }
        let n = partition_count(&Connection::of(table), &table.topic)?.with_context(|| {
            format!(
                "source table {}: topic '{}' does not exist at {}",
                table.name, table.topic, table.bootstrap_servers
            )
        })?;
        Ok(n as i32)
    }

    /// An output topic (a sink's or dead letters), created with `partitions`
    /// unless it exists.
    pub fn output(&self, cluster: &Connection, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match self.embedded {
            Some(_) => self.create(topic, partitions),
            None => ensure_topic(cluster, topic, partitions, &[]),
        }
    }

    /// The compacted changelog topic of a source's tasks, one partition per
    /// task, unless it exists; an existing topic must have enough partitions.
    pub fn changelog(&self, cluster: &Connection, topic: &str, tasks: i32) -> anyhow::Result<()> {
        if self.embedded.is_some() {
            return self.create(topic, tasks);
        }
        ensure_topic(cluster, topic, tasks, COMPACTED)
            .with_context(|| format!("creating the changelog topic '{topic}'"))?;
        let have = partition_count(cluster, topic)?.unwrap_or(0);
        if have < tasks as usize {
            bail!(
                "changelog topic '{topic}' has {have} partitions, the job needs {tasks} (one per task): \
                 was it made by another job of the same name?"
            );
        }
        Ok(())
    }

    /// A source's repartition topic: one partition per source partition.
    pub fn repartition(
        &self,
        source: &KafkaTable,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<()> {
        let cluster = &Connection::of(source);
        ensure_topic(cluster, topic, partitions, &[])?;
        let have = partition_count(cluster, topic)?.unwrap_or(0) as i32;
        if have != partitions {
            bail!(
                "repartition topic '{topic}' has {have} partitions, source topic '{}' {partitions}: \
                 delete it (and the job's changelog topics) to start the job over",
                source.topic
            );
        }
        Ok(())
    }

    fn create(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.embedded
            .expect("only called with the embedded broker")
            .create_topic(topic, partitions)
    }
}

/// A worker cluster's own topic (the job registry, worker status): compacted,
/// one partition, created unless it exists.
pub fn ensure_cluster_topic(cluster: &Connection, topic: &str, what: &str) -> anyhow::Result<()> {
    ensure_topic(cluster, topic, 1, COMPACTED)
        .with_context(|| format!("creating the {what} topic '{topic}'"))
}

/// Checks the brokers answer, within [`TIMEOUT`], so a wrong address fails
/// fast; a refused login or certificate fails at once, with the broker's
/// reason (librdkafka reports those only to its error callback, and a
/// metadata request alone sees a bare transport failure).
pub fn check_reachable(cluster: &Connection) -> anyhow::Result<()> {
    let consumer: BaseConsumer<Refusals> = cluster
        .config()
        .set(
            "socket.connection.setup.timeout.ms",
            TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(Refusals::default())
        .context("creating a Kafka client")?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = consumer.fetch_metadata(None, left.min(Duration::from_millis(500)));
        // Serves the error callback.
        let _ = consumer.poll(Duration::ZERO);
        if let Some(refusal) = consumer.context().refusal() {
            bail!("Kafka at '{cluster}' refused the connection: {refusal}");
        }
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                let last = consumer
                    .context()
                    .last_error()
                    .unwrap_or_else(|| e.to_string());
                bail!(
                    "cannot reach Kafka at '{cluster}' within {}s: {last} (is the broker running? set KAFKA_BROKERS or 'properties.bootstrap.servers')",
                    TIMEOUT.as_secs()
                );
            }
            Err(_) => {}
        }
    }
}

/// What librdkafka's error callback reported: a refusal (authentication,
/// TLS) ends a reachability check at once; the last other error explains a
/// timeout.
#[derive(Default)]
pub struct Refusals {
    refusal: std::sync::Mutex<Option<String>>,
    last: std::sync::Mutex<Option<String>>,
}

impl Refusals {
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rdkafka::client::ClientContext for Refusals {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let text = format!("{reason} ({error})");
        if is_refusal(error.rdkafka_error_code()) {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

impl rdkafka::consumer::ConsumerContext for Refusals {}

/// Whether an error code means the cluster will not take this client as it
/// is configured, so retrying cannot help: a refused login, a certificate
/// that does not verify, a mechanism the broker does not offer.
pub fn is_refusal(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

/// Partition count of `topic`, or None if it does not exist.
pub fn partition_count(cluster: &Connection, topic: &str) -> anyhow::Result<Option<usize>> {
    let consumer: BaseConsumer = cluster
        .config()
        .set("allow.auto.create.topics", "false")
        .create()?;
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading metadata of topic '{topic}'"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Creates `topic` with `partitions` partitions and topic `configs` unless it
/// exists (an existing topic's configuration is left as it is).
pub fn ensure_topic(
    cluster: &Connection,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    if partition_count(cluster, topic)?.is_some() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = cluster
        .config()
        .create()
        .context("creating a Kafka admin client")?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new], &opts))
        .with_context(|| format!("creating topic '{topic}'"))?;
    for r in results {
        if let Err((name, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("creating topic '{name}': {code}");
        }
    }
    // Wait until the topic is visible in metadata.
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if partition_count(cluster, topic)?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "topic '{topic}' was created but did not appear within {}s",
        TIMEOUT.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_writes_to_its_first_sinks_cluster() {
        let sql = "
            CREATE TABLE tx (card_id TEXT, amount DOUBLE) WITH (
              'connector' = 'kafka', 'topic' = 'tx', 'format' = 'json',
              'properties.bootstrap.servers' = 'in:9092',
              'dead-letter.topic' = 'tx-bad');
            CREATE TABLE out (card_id TEXT, amount DOUBLE) WITH (
              'connector' = 'kafka', 'topic' = 'out', 'format' = 'json',
              'properties.bootstrap.servers' = 'out:9092');
            INSERT INTO out SELECT card_id, amount FROM tx;";
        let plan = crate::load::plan_text(std::path::Path::new("p.sql"), sql, &|_| None).unwrap();
        // The dead letters (and the changelog) go where the task's producer
        // writes: the sink's cluster, not the source's.
        assert_eq!(
            output_cluster(&plan, "tx").map(|c| c.bootstrap),
            Some("out:9092".to_owned())
        );
        assert_eq!(output_cluster(&plan, "out"), None);
    }

    #[test]
    fn job_topic_names() {
        assert_eq!(changelog_name("weir-p", "tx"), "weir-p-tx-changelog");
        assert_eq!(repartition_name("weir-p", "tx"), "weir-p-tx-repartition");
    }
}
