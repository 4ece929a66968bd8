//! The limit for the end-to-end benchmark: a bare librdkafka consumer (the
//! same client settings weir's source uses) that reads every partition of a
//! topic from the beginning to its end, touching each payload's length only.
//! Prints one JSON line: messages, bytes, wall seconds. CPU and peak RSS are
//! measured from outside (bench/weir_bench.py, wait4 rusage).
//!
//! ```sh
//! cargo run --release --example bare_consumer -- 127.0.0.1:9092 transactions
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "transactions".into());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "weir-bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut ended = HashSet::new();
    let (mut messages, mut bytes) = (0u64, 0u64);
    while ended.len() < partitions {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload().map_or(0, |p| p.len()) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => eprintln!("{e} (retrying)"),
        }
    }
    println!(
        "{{\"messages\": {messages}, \"bytes\": {bytes}, \"wall_s\": {:.3}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
