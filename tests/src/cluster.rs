//! Worker-cluster test support: `weir worker` processes with their HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use std::process::{Child, Stdio};
use std::time::Duration;

use weir::cluster::status::WorkerStatus;

use crate::process::weir;

/// Where a cluster test's workers keep their jobs: the broker, and a job
/// registry and status topic of the test's own (the broker is shared).
#[derive(Clone, Debug)]
pub struct Registry {
    pub brokers: String,
    pub registry: String,
    pub status: String,
}

impl Registry {
    pub fn new(brokers: &str) -> Registry {
        Registry {
            brokers: brokers.to_owned(),
            registry: crate::unique("weir-jobs"),
            status: crate::unique("weir-status"),
        }
    }

    /// `weir` subcommand arguments naming this registry:
    /// `--brokers B --registry-topic R --status-topic S`.
    pub fn args(&self) -> [&str; 6] {
        [
            "--brokers",
            &self.brokers,
            "--registry-topic",
            &self.registry,
            "--status-topic",
            &self.status,
        ]
    }

    /// `command` (e.g. `["submit", file]`) followed by [`Registry::args`].
    pub fn command<'a>(&'a self, command: &[&'a str]) -> Vec<&'a str> {
        command.iter().copied().chain(self.args()).collect()
    }
}

/// A `weir worker` process with its HTTP API.
pub struct Worker {
    pub id: String,
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(registry: &Registry, dir: &Path, n: usize) -> Worker {
        let id = format!("w{n}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let http = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{id}.log"));
        let child = weir("info")
            .arg("worker")
            .args(registry.args())
            .args([
                "--id",
                &id,
                "--http",
                &http,
                "--session-timeout-ms",
                "6000",
                "--state-dir",
            ])
            .arg(dir.join(&id))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("weir worker starts");
        Worker {
            id,
            child,
            http,
            log,
        }
    }

    /// The worker's `/api/jobs`, if it answers.
    pub fn status(&self) -> Option<WorkerStatus> {
        serde_json::from_str(&http_get(&self.http, "/api/jobs")?).ok()
    }

    /// The last lines of every worker's log, for a failure message.
    pub fn tails(workers: &[&Worker]) -> String {
        workers
            .iter()
            .map(|w| format!("--- {} ---\n{}", w.id, w.tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Tasks of the job per worker: (worker id, partitions, input offsets
/// processed: a task that took over a partition counts from its start).
pub fn tasks(workers: &[&Worker]) -> Vec<(String, Vec<i32>, u64)> {
    workers
        .iter()
        .filter_map(|w| w.status().map(|s| (w.id.clone(), s)))
        .map(|(id, s)| {
            let tasks: Vec<_> = s.jobs.iter().flat_map(|j| &j.tasks).collect();
            (
                id,
                tasks.iter().map(|t| t.partition).collect(),
                tasks.iter().map(|t| t.position.unwrap_or(0) as u64).sum(),
            )
        })
        .collect()
}

/// A directory for a cluster test's workers (logs, state) and files: removed
/// when the guard drops, or kept (and printed) with WEIR_CLUSTER_KEEP=1.
pub fn work_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().to_owned();
    if std::env::var_os("WEIR_CLUSTER_KEEP").is_some() {
        eprintln!("keeping {}", tmp.keep().display());
        (path, None)
    } else {
        (path, Some(tmp))
    }
}
