//! The test broker. Every end-to-end test gets its broker from [`start`] and
//! talks to it at [`Broker::bootstrap`]; nothing else in the tests knows which
//! broker it is, so another one (Apache Kafka, a secured listener) goes in
//! here and only here.
//!
//! Today it is tansu 0.6.0 with in-memory storage on a free loopback port: the
//! binary `tansu` on PATH, in `~/.cargo/bin`, or at `$TANSU_BIN`
//! (`scripts/test.sh` installs it: `cargo install tansu --version 0.6.0
//! --features dynostore`). A missing broker fails the test: it is never
//! skipped.
//!
//! What tests rely on or work around in this broker:
//! - A fetch from an offset inside a record batch is answered with the *next*
//!   batch, skipping the rest of the one asked for. Input that a test resumes
//!   from arbitrary offsets (checkpoints, crashes, a partition held back) is
//!   produced one record per batch: [`crate::kafka::produce_unbatched`].
//! - Unless a consumer caps `max.partition.fetch.bytes`, a fetch is answered
//!   with one partition's data (tests/tests/e2e/alignment.rs caps it).
//! - It does not route EndTxn: transactional sinks are tested against
//!   librdkafka's mock cluster instead (tests/tests/e2e/transactions.rs).
//! - [`Broker::pause`] freezes the process (SIGSTOP): clients see a broker that
//!   stops answering while its in-memory data survives.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::child::signal;

/// A running test broker, stopped when dropped.
pub struct Broker {
    child: Child,
    bootstrap: String,
}

/// Starts a broker with empty in-memory storage and waits until it answers
/// metadata requests.
pub fn start() -> anyhow::Result<Broker> {
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
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        match broker.wait_ready(Duration::from_secs(20)) {
            Ok(()) => return Ok(broker),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("the test broker did not start")))
}

impl Broker {
    /// The bootstrap servers (`host:port`) to give clients and pipelines.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Makes the broker stop answering, keeping its data for [`Broker::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.child.id(), "STOP").map_err(anyhow::Error::msg)
    }

    /// Undoes [`Broker::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.child.id(), "CONT").map_err(anyhow::Error::msg)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the test broker exited at start with {status}");
            }
            if TcpStream::connect(&self.bootstrap).is_ok() {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &self.bootstrap)
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
            "the test broker did not answer on {} within {timeout:?}",
            self.bootstrap
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        "the test broker 'tansu' is not installed: run `cargo install tansu --version 0.6.0 --features dynostore` (or scripts/test.sh)"
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
