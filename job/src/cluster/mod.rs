//! The worker cluster: Kafka is the coordinator, weir adds no consensus of
//! its own.
//!
//! ```text
//! client.rs    weir submit | jobs | describe | stop: the registry and status topics
//! registry.rs  the job registry topic (what should run, with its files)
//! worker.rs    weir worker: follows the registry, starts and stops job runners,
//!              reports its status (status.rs) and serves it (http.rs)
//! job.rs       one job's runner: its files planned here, its topics, and a
//!              consumer in the job's group (cooperative-sticky) whose
//!              rebalances decide which partitions this worker owns
//! tasks.rs     the job's tasks here: one source (or map) task per owned
//!              partition, restarted when one fails
//! status.rs    what workers report (status topic, /api/jobs)
//! http.rs      /healthz, /metrics, /api/jobs
//! ```

pub mod client;
pub mod http;
pub mod job;
pub mod registry;
pub mod status;
pub mod tasks;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use client::{describe, jobs_table, stop, submit};

use crate::connection::Connection;

/// Where the cluster's shared topics are.
#[derive(Debug, Clone)]
pub struct ClusterTopics {
    /// The Kafka cluster the registry and status topics live on.
    pub cluster: Connection,
    pub registry: String,
    pub status: String,
}

/// How a worker runs.
pub struct WorkerOptions {
    /// The Kafka cluster of the registry and status topics.
    pub cluster: Connection,
    pub id: String,
    pub http: Option<std::net::SocketAddr>,
    pub state_dir: PathBuf,
    pub registry_topic: String,
    pub status_topic: String,
    /// The job groups' session timeout: how long a killed worker's partitions
    /// wait before they move.
    pub session_timeout_ms: u32,
    pub stop: Arc<AtomicBool>,
}
