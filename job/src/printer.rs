//! Prints what a pipeline writes to its sink topics, read back from the broker,
//! so a run on the embedded broker shows its predictions. At most a few lines a
//! second are printed; the rest are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::connection::Connection;

pub fn spawn_printer(
    cluster: Connection,
    topics: Vec<String>,
    lines_per_second: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = cluster
        .config()
        .set("group.id", "weir-printer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    Ok(std::thread::Builder::new()
        .name("weir-printer".into())
        .spawn(move || {
            let mut window = Instant::now();
            let mut printed = 0usize;
            let mut skipped = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if window.elapsed() >= Duration::from_secs(1) {
                    if skipped > 0 {
                        println!("  ... and {skipped} more records in the last second");
                    }
                    window = Instant::now();
                    printed = 0;
                    skipped = 0;
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if printed < lines_per_second {
                        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                        let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
                        println!("{} [{}] {}", m.topic(), key, value);
                        printed += 1;
                    } else {
                        skipped += 1;
                    }
                }
            }
        })?)
}
