//! What workers report about the jobs they run: served as JSON on
//! `/api/jobs`, as Prometheus text on `/metrics`, and published every few
//! seconds to a compacted status topic (key: worker id), which `weir jobs`
//! and `weir describe` read to show the whole cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::kafka::TopicFollower;
use crate::topics::ensure_cluster_topic;

/// The default status topic.
pub const STATUS_TOPIC: &str = "weir-status";
/// How often a worker publishes its status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// A worker whose last status is older than this is taken for gone.
pub const STATUS_STALE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker: String,
    /// The address its HTTP API listens on, if any.
    pub http: Option<String>,
    pub at_ms: i64,
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub version: String,
    /// `starting`, `running`, `finished` (bounded input consumed), `failed`.
    pub state: String,
    pub error: Option<String>,
    pub tasks: Vec<TaskStatus>,
    pub models: Vec<ModelStatus>,
    /// Records written per second since the previous report.
    pub records_out_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskStatus {
    pub source: String,
    pub topic: String,
    pub partition: i32,
    /// `running`, `finished`, `failed` (restarted after a pause).
    pub state: String,
    pub error: Option<String>,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub checkpoints: u64,
    pub last_checkpoint_ms: u64,
    /// On-disk size of the last checkpoint of the task's state.
    pub state_bytes: u64,
    pub restore_ms: u64,
    /// Next input offset to process.
    pub position: Option<i64>,
    /// End of the input partition when last looked up.
    pub end: Option<i64>,
}

impl TaskStatus {
    pub fn lag(&self) -> Option<i64> {
        Some((self.end? - self.position?).max(0))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelStatus {
    pub name: String,
    pub calls: u64,
    pub rows: u64,
    pub seconds: f64,
}

/// Whatever can say what a worker runs now (its HTTP API serves it).
pub trait StatusSource: Send + Sync {
    fn snapshot(&self) -> WorkerStatus;
}

/// Creates the status topic (compacted, one partition) unless it exists.
pub fn ensure_status_topic(cluster: &Connection, topic: &str) -> anyhow::Result<()> {
    ensure_cluster_topic(cluster, topic, "status")
}

/// The newest status of every worker that reported within [`STATUS_STALE`].
pub fn read_statuses(cluster: &Connection, topic: &str) -> anyhow::Result<Vec<WorkerStatus>> {
    ensure_status_topic(cluster, topic)?;
    let mut latest: BTreeMap<String, WorkerStatus> = BTreeMap::new();
    TopicFollower::open(cluster, topic, "weir-status-reader")?.read_to_end(
        Duration::from_secs(30),
        &mut |key, value| {
            let key = String::from_utf8_lossy(key).into_owned();
            match value.map(serde_json::from_slice::<WorkerStatus>) {
                Some(Ok(s)) => {
                    latest.insert(key, s);
                }
                Some(Err(_)) => {}
                None => {
                    latest.remove(&key);
                }
            }
        },
    )?;
    let now = chrono::Utc::now().timestamp_millis();
    Ok(latest
        .into_values()
        .filter(|s| now - s.at_ms <= STATUS_STALE.as_millis() as i64)
        .collect())
}
