//! The output side's limit for the end-to-end benchmark: librdkafka producing
//! N records like the fraud pipeline's (a ~150-byte JSON value keyed by card,
//! an 18-byte `weir.id` header) with weir's own producer settings and a
//! delivery callback per record, as weir's sink has, and weir's allocator,
//! then flushing. Values are made up front (1,000 distinct ones, cycled), so
//! what is measured is the client. Prints one JSON line: records, bytes, wall seconds; CPU and peak
//! RSS are measured from outside (bench/weir_bench.py, variant bare-producer).
//!
//! ```sh
//! cargo run --release --example bare_producer -- 127.0.0.1:9092 card-scores 4942951 \
//!     [linger.ms=50 ...]   # librdkafka settings over weir's; no-headers: no weir.id
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// The allocator weir runs with (mimalloc, also serving librdkafka's malloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Counts>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "card-scores".into());
    let n: u64 = args.next().map_or(Ok(1_000_000), |v| v.parse())?;
    let mut properties = BTreeMap::new();
    let mut headers_on = true;
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => {
                properties.insert(k.to_string(), v.to_string());
            }
            None if a == "no-headers" => headers_on = false,
            None => anyhow::bail!("expected key=value or no-headers, not '{a}'"),
        }
    }
    let counts = Arc::new(Counts::default());
    let producer: ThreadedProducer<Ctx> =
        weir::kafka::producer_config(&weir::connection::Connection::plain(&brokers), &properties)
            .create_with_context(Ctx(counts.clone()))?;
    let records: Vec<(String, String)> = (0..1000u64)
        .map(|i| {
            let card = format!("card-{:06}", i * 97 % 100_000);
            let value = format!(
                r#"{{"card_id":"{card}","window_end":"2026-11-21T00:{:02}:00Z","n":{},"avg_amount":{},"max_amount":{},"p_fraud":{}}}"#,
                i % 60,
                i % 7 + 1,
                12.3 + i as f64 / 7.0,
                40.0 + i as f64 / 3.0,
                (i as f64 / 1000.0).sin().abs()
            );
            (card, value)
        })
        .collect();
    let started = Instant::now();
    let mut bytes = 0u64;
    for i in 0..n {
        let (key, value) = &records[(i % 1000) as usize];
        let id = [(i & 0xff) as u8; 18];
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "weir.id",
            value: Some(&id[..]),
        });
        let mut record = BaseRecord::to(&topic)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        if headers_on {
            record = record.headers(headers);
        }
        bytes += value.len() as u64;
        // A full queue: wait for deliveries, as weir's sink does.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        anyhow::bail!("producing: {e}");
                    }
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = counts.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} deliveries failed");
    println!(
        "{{\"records\": {}, \"bytes\": {bytes}, \"wall_s\": {:.3}}}",
        counts.delivered.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
