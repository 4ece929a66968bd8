//! Apache Kafka as the test broker: one KRaft node per test run, shared by
//! every test in it, with a listener per security protocol (see
//! `scripts/kafka.sh`, which assembles it from Maven Central and starts it).
//!
//! `scripts/test.sh` starts one broker for the whole run and names its
//! `listeners.env` in `WEIR_TEST_KAFKA`; a test binary run on its own (plain
//! `cargo test`) starts its own, the first time a test asks, and the broker
//! stops when that process is gone. A broker that cannot start fails the
//! test: it is never skipped.
//!
//! Tests share the broker, so each test uses topics and consumer groups of
//! its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};

use crate::child::signal;
use crate::workspace_root;

/// The environment variable naming a running broker's `listeners.env`.
pub const ENV: &str = "WEIR_TEST_KAFKA";

/// A running Apache Kafka broker and how to reach each of its listeners.
#[derive(Debug)]
pub struct Kafka {
    vars: BTreeMap<String, String>,
}

/// The broker's listeners (`scripts/kafka.sh` documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS, the broker's certificate checked against the test CA.
    Ssl,
    /// TLS with a client certificate (mutual TLS).
    Mtls,
    /// SASL PLAIN without TLS.
    SaslPlain,
    /// SASL SCRAM-SHA-512 without TLS.
    SaslScram,
    /// SASL SCRAM-SHA-512 over TLS.
    SaslSslScram,
    /// SASL PLAIN over TLS.
    SaslSslPlain,
    /// SASL OAUTHBEARER (unsecured JWS tokens) without TLS.
    OauthBearer,
}

/// The broker of this test run, started by the first caller.
pub fn kafka() -> anyhow::Result<&'static Kafka> {
    static KAFKA: OnceLock<Result<Kafka, String>> = OnceLock::new();
    KAFKA
        .get_or_init(|| connect_or_start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the Apache Kafka test broker: {e}"))
}

fn connect_or_start() -> anyhow::Result<Kafka> {
    if let Some(env) = std::env::var_os(ENV) {
        return Kafka::read(Path::new(&env));
    }
    let dir = tempfile::Builder::new()
        .prefix("weir-kafka-")
        .tempdir()
        .context("a directory for the test broker")?
        .keep();
    // Stopped, and its directory removed, once this process is gone.
    start_in(&dir, &[("WEIR_KAFKA_OWNER_REMOVE_DIR", "1")])
}

/// A broker of one test's own, for a test that freezes it
/// ([`OwnKafka::pause`]); killed, and its data removed, when dropped.
pub struct OwnKafka {
    kafka: Kafka,
    pid: u32,
    _dir: tempfile::TempDir,
}

/// Starts a broker of the caller's own (about 5 s).
pub fn start_own() -> anyhow::Result<OwnKafka> {
    let dir = tempfile::Builder::new()
        .prefix("weir-kafka-own-")
        .tempdir()
        .context("a directory for the test broker")?;
    let kafka = start_in(dir.path(), &[])?;
    let pid = kafka.pid()?;
    Ok(OwnKafka {
        kafka,
        pid,
        _dir: dir,
    })
}

impl OwnKafka {
    pub fn kafka(&self) -> &Kafka {
        &self.kafka
    }

    /// Makes the broker stop answering (SIGSTOP), keeping its data for
    /// [`OwnKafka::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.pid, "STOP").map_err(anyhow::Error::msg)
    }

    /// Undoes [`OwnKafka::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid, "CONT").map_err(anyhow::Error::msg)
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        // Its data goes with the directory: nothing to shut down cleanly.
        let _ = signal(self.pid, "KILL");
    }
}

/// Runs `scripts/kafka.sh start dir` (stopping the broker once this process
/// is gone) and reads the listeners it wrote.
fn start_in(dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Kafka> {
    let script = workspace_root().join("scripts/kafka.sh");
    let out = Command::new(&script)
        .arg("start")
        .arg(dir)
        .env("WEIR_KAFKA_OWNER_PID", std::process::id().to_string())
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "`{} start {}` failed ({}):\n{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Kafka::read(&dir.join("listeners.env"))
}

impl Kafka {
    /// Reads a `listeners.env` that `scripts/kafka.sh start` wrote.
    pub fn read(path: &Path) -> anyhow::Result<Kafka> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let vars = parse_env(&text);
        for key in ["PLAINTEXT", "SSL", "MTLS", "SASL_PLAINTEXT", "SASL_SSL"] {
            if !vars.contains_key(key) {
                bail!("{} names no {key} listener", path.display());
            }
        }
        Ok(Kafka { vars })
    }

    /// The PLAINTEXT listener's bootstrap servers (`host:port`).
    pub fn bootstrap(&self) -> &str {
        self.var("PLAINTEXT")
    }

    /// The broker's version (`scripts/kafka/pom.xml`).
    pub fn version(&self) -> &str {
        self.var("KAFKA_VERSION")
    }

    /// The broker's JVM process id (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.var("KAFKA_PID")
            .parse()
            .context("KAFKA_PID in listeners.env")
    }

    /// A file the broker's certificates name: `CA`, `CLIENT_CERT`,
    /// `CLIENT_KEY`, `OTHER_CA` (a CA that signed nothing the broker uses).
    pub fn file(&self, name: &str) -> PathBuf {
        PathBuf::from(self.var(name))
    }

    /// librdkafka properties that reach the broker through `listener`,
    /// `bootstrap.servers` first.
    pub fn client_properties(&self, listener: Listener) -> Vec<(String, String)> {
        let ca = || ("ssl.ca.location", self.var("CA"));
        let scram = |protocol: &'static str| {
            vec![
                ("security.protocol", protocol),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", self.var("SCRAM_USER")),
                ("sasl.password", self.var("SCRAM_PASSWORD")),
            ]
        };
        let plain = |protocol: &'static str| {
            vec![
                ("security.protocol", protocol),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", self.var("PLAIN_USER")),
                ("sasl.password", self.var("PLAIN_PASSWORD")),
            ]
        };
        let (address, props): (&str, Vec<(&str, &str)>) = match listener {
            Listener::Plaintext => (self.var("PLAINTEXT"), vec![]),
            Listener::Ssl => (self.var("SSL"), vec![("security.protocol", "SSL"), ca()]),
            Listener::Mtls => (
                self.var("MTLS"),
                vec![
                    ("security.protocol", "SSL"),
                    ca(),
                    ("ssl.certificate.location", self.var("CLIENT_CERT")),
                    ("ssl.key.location", self.var("CLIENT_KEY")),
                ],
            ),
            Listener::SaslPlain => (self.var("SASL_PLAINTEXT"), plain("SASL_PLAINTEXT")),
            Listener::SaslScram => (self.var("SASL_PLAINTEXT"), scram("SASL_PLAINTEXT")),
            Listener::SaslSslScram => {
                let mut p = scram("SASL_SSL");
                p.push(ca());
                (self.var("SASL_SSL"), p)
            }
            Listener::SaslSslPlain => {
                let mut p = plain("SASL_SSL");
                p.push(ca());
                (self.var("SASL_SSL"), p)
            }
            Listener::OauthBearer => (
                self.var("OAUTHBEARER"),
                vec![
                    ("security.protocol", "SASL_PLAINTEXT"),
                    ("sasl.mechanisms", "OAUTHBEARER"),
                    ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
                    ("sasl.oauthbearer.config", "principal=weir"),
                ],
            ),
        };
        std::iter::once(("bootstrap.servers", address))
            .chain(props)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("listeners.env has no {key}"))
    }
}

/// `KEY=value` lines; blank lines and `#` comments skipped.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_env_is_read_as_key_value_lines() {
        let vars = parse_env("# a comment\nPLAINTEXT=127.0.0.1:1\n\nCA=/x/ca.pem\nbroken\n");
        assert_eq!(vars.len(), 2);
        assert_eq!(vars["PLAINTEXT"], "127.0.0.1:1");
        assert_eq!(vars["CA"], "/x/ca.pem");
    }
}
