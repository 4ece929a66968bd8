//! Test support: a real Kafka-protocol broker (tansu) on a free loopback port,
//! and small produce/read helpers. Every end-to-end test talks to it over TCP.
//!
//! The broker binary is `tansu` on PATH, in `~/.cargo/bin`, or at `$TANSU_BIN`
//! (`.ci/run` installs it: `cargo install tansu --version 0.6.0 --features dynostore`).
//! A missing broker fails the test: it is never skipped.

pub mod cluster;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

pub struct Tansu {
    child: Child,
    pub brokers: String,
}

fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = PathBuf::from(home).join(".cargo/bin/tansu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the test broker 'tansu' is not installed: run `cargo install tansu --version 0.6.0 --features dynostore` (or .ci/run)"
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Tansu {
    /// Starts a broker with in-memory storage and waits until it answers metadata.
    pub fn start() -> anyhow::Result<Self> {
        let bin = tansu_binary()?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let mut broker = Tansu {
                child,
                brokers: format!("127.0.0.1:{port}"),
            };
            match broker.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return Ok(broker),
                Err(e) => {
                    let _ = broker.child.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("tansu exited at start with {status}");
            }
            if TcpStream::connect(&self.brokers).is_ok() {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &self.brokers)
                    .create()?;
                if consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok()
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "tansu did not answer on {} within {timeout:?}",
            self.brokers
        )
    }
}

impl Tansu {
    /// Freezes the broker process (SIGSTOP): clients see a broker that stopped
    /// answering, while its in-memory data survives for [`Tansu::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.child.id(), "-STOP")
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.child.id(), "-CONT")
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    weir::topics::ensure_topic(brokers, topic, partitions, &[])
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

/// Produces each record in a record batch of its own.
///
/// tansu answers a fetch from an offset inside a record batch with the *next*
/// batch, skipping the rest of the one asked for; input that a test resumes
/// from arbitrary offsets (checkpoints, crashes) must not share batches.
pub fn produce_unbatched(brokers: &str, topic: &str, records: &[Record]) -> anyhow::Result<()> {
    produce_with(
        brokers,
        topic,
        records,
        &[("linger.ms", "0"), ("batch.num.messages", "1")],
    )
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

fn produce_with(
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
    // Unbatched input to tansu goes at a few thousand records a second: wait
    // as long as the queue keeps draining.
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("weir-test-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?;
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

/// The `weir` binary `cargo test --workspace` built beside the test binary
/// (target/<profile>/deps/<test>-<hash> -> target/<profile>/weir).
pub fn weir_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test binaries sit in target/<profile>/deps")
        .join("weir");
    assert!(
        bin.exists(),
        "the weir binary is not built at {} (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Starts `weir run SQL` as the crash tests do: `BROKERS` and `OUT` in its
/// environment, `--group-id OUT`, the given state directory, no printing,
/// info logs appended to `log`, and `WEIR_FAULT` set to `fault` (or unset).
pub fn spawn_weir_run(
    sql: &std::path::Path,
    brokers: &str,
    out: &str,
    state: &std::path::Path,
    fault: Option<&str>,
    log: &std::path::Path,
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the log file opens");
    let mut cmd = Command::new(weir_binary());
    cmd.args(["run", "--print", "false", "--group-id", out, "--state-dir"])
        .arg(state)
        .arg(sql)
        .env("BROKERS", brokers)
        .env("OUT", out)
        .env("RUST_LOG", "weir=info")
        .env_remove("WEIR_FAULT")
        .stdout(Stdio::null())
        .stderr(log_file);
    if let Some(f) = fault {
        cmd.env("WEIR_FAULT", f);
    }
    cmd.spawn().expect("weir starts")
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every record value of `topic`, parsed as JSON (empty while the topic cannot be read).
pub fn read_json(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    read_all(brokers, topic, Duration::from_secs(20))
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.value).expect("a JSON record"))
        .collect()
}

/// Polls `check` until it reports done or `timeout` passes; returns the last
/// value it saw either way, for the caller to assert on.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, value) = check();
        if done || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `sql` to a pipeline file in a fresh temporary directory (kept alive
/// by the returned guard).
pub fn pipeline_file(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("pipeline.sql");
    std::fs::write(&path, sql).expect("the pipeline file is written");
    (dir, path)
}

/// Runs the pipeline in `path` in this process, printing nothing, with its
/// state under `dir`/state; it must succeed.
pub fn run_in_process(path: &std::path::Path, dir: &std::path::Path) -> weir::RunSummary {
    weir::run_pipeline(
        weir::load_pipeline(path, &|_| None).expect("the pipeline plans"),
        weir::RunOptions {
            print: Some(false),
            state_dir: Some(dir.join("state")),
            ..Default::default()
        },
    )
    .expect("the pipeline runs")
}

/// Decodes JSON lines with `decoder` as records of partition 0 at offsets
/// 0, 1, ...; every line must decode.
pub fn decode_lines(
    decoder: &weir_operators::JsonDecoder,
    lines: &[String],
) -> weir_operators::decode::Decoded {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    let mut metas = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let s = buf.len();
        buf.extend_from_slice(l.as_bytes());
        spans.push((s, buf.len()));
        buf.push(b'\n');
        metas.push(weir_operators::RecordMeta {
            partition: 0,
            offset: i as i64,
            timestamp: None,
            key: None,
        });
    }
    let decoded = decoder.decode(&buf, &spans, &metas).expect("decodes");
    assert!(
        decoded.bad.is_empty(),
        "every line decodes: {:?}",
        decoded.bad
    );
    decoded
}
