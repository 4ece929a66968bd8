//! The embedded default: an in-process Kafka-protocol broker (librdkafka's mock
//! cluster), so the examples run on a machine with no Kafka installed.
//!
//! A table whose `'properties.bootstrap.servers'` is `embedded` (the example
//! writes `'${KAFKA_BROKERS:-embedded}'`) uses it; setting `KAFKA_BROKERS`
//! points the same file at a real cluster. The mock cluster keeps only a few
//! MiB per partition and does not honour transactions: it is for trying weir
//! out, not for production.

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub const EMBEDDED: &str = "embedded";

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    pub fn start() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
        Ok(Self { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic '{topic}' on the embedded broker"))
    }
}
