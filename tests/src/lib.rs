//! Test support for weir's end-to-end tests (tests/tests/e2e, tests/tests/golden.rs):
//!
//! - [`apache_kafka`]: the test run's Apache Kafka broker, with a listener per
//!   security protocol ([`apache_kafka::kafka`]), or one of a test's own
//!   ([`apache_kafka::start_own`]);
//! - [`kafka`]: topics, producing, reading records back;
//! - [`output`]: what a pipeline wrote: JSON values, ids, window results, and
//!   re-reading until enough has arrived;
//! - [`compare`]: the few floating-point comparisons the tests use;
//! - [`process`] and [`child`]: the `weir` binary and child processes;
//! - [`cluster`]: `weir worker` processes and their HTTP API;
//! - [`inprocess`]: operator chains driven batch by batch, without a broker;
//! - here: pipeline files, in-process runs, waiting on a condition, seeds.

pub mod apache_kafka;
pub mod child;
pub mod cluster;
pub mod compare;
pub mod inprocess;
pub mod kafka;
pub mod output;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
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

/// Writes pipeline `sql` to `dir/name`. The tests' pipelines name their
/// broker one way, `'${KAFKA_BROKERS}'`, and weir substitutes it as it does
/// for a user: from [`load`]'s environment in this process, from the
/// environment of a `weir run` ([`process::spawn_weir_run`] sets it), from
/// `--brokers` on `weir submit`.
pub fn write_sql(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, sql).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// [`write_sql`] to `pipeline.sql` in a fresh temporary directory (kept
/// alive by the returned guard).
pub fn pipeline_file(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write_sql(dir.path(), "pipeline.sql", sql);
    (dir, path)
}

/// The `${VAR}` lookup of a pipeline run against `brokers`: `KAFKA_BROKERS`
/// only.
pub fn env(brokers: &str) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| (name == "KAFKA_BROKERS").then(|| brokers.to_owned())
}

/// Plans the pipeline file at `path` against `brokers`; it must plan.
pub fn load(path: &Path, brokers: &str) -> weir::LoadedPipeline {
    weir::load_pipeline(path, &env(brokers))
        .unwrap_or_else(|e| panic!("{} does not plan: {e:#}", path.display()))
}

/// Runs the pipeline in `path` in this process against `brokers`, printing
/// nothing, with its state under `dir`/state and a consumer group of its own;
/// it must succeed.
pub fn run_in_process(path: &Path, dir: &Path, brokers: &str) -> weir::RunSummary {
    weir::run_pipeline(
        load(path, brokers),
        weir::RunOptions {
            print: Some(false),
            group_id: Some(unique("run")),
            state_dir: Some(dir.join("state")),
            ..Default::default()
        },
    )
    .expect("the pipeline runs")
}

/// A pipeline running in this process on a thread of its own.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<weir::RunSummary>>,
    /// Disconnected when the run's thread ends.
    ended: mpsc::Receiver<()>,
}

impl Running {
    /// Starts `loaded` with `options` (whose `stop` flag is replaced).
    pub fn start(loaded: weir::LoadedPipeline, options: weir::RunOptions) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let options = weir::RunOptions {
            stop: stop.clone(),
            ..options
        };
        let (ended_tx, ended) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let _ended = ended_tx;
            weir::run_pipeline(loaded, options)
        });
        Running {
            stop,
            handle,
            ended,
        }
    }

    /// Waits up to `timeout` for the run to end by itself and returns its
    /// result; `None` if it had not ended by then (it is stopped, as Ctrl-C
    /// stops it, and waited for).
    pub fn wait(self, timeout: Duration) -> Option<anyhow::Result<weir::RunSummary>> {
        match self.ended.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.stop();
                None
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => Some(self.join()),
        }
    }

    /// Asks the run to stop (as Ctrl-C does) and waits for its result.
    pub fn stop(self) -> anyhow::Result<weir::RunSummary> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the run to end by itself.
    pub fn join(self) -> anyhow::Result<weir::RunSummary> {
        match self.handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// `base` made unique to this test process and call, e.g. "cr-in-3f9a1c-7":
/// for topics, consumer groups and job names on the broker every test of a
/// run shares.
pub fn unique(base: &str) -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static RUN: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| format!("{:06x}", rand::random::<u32>() & 0xff_ffff));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{base}-{run}-{n}")
}

/// A seed for a randomised test: `$var` if set (to replay a run), else a
/// random one. Printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (replay with {var}={seed})");
    seed
}

/// The newest checkpoint id under a run's state directory (0 before the
/// first): the id grows with each checkpoint any task of the run takes.
pub fn newest_checkpoint(state_dir: &Path) -> u64 {
    let mut newest = 0;
    let Ok(tasks) = std::fs::read_dir(state_dir) else {
        return 0;
    };
    for task in tasks.flatten() {
        let Ok(checkpoints) = std::fs::read_dir(task.path().join("checkpoints")) else {
            continue;
        };
        for c in checkpoints.flatten() {
            if let Some(id) = c.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                newest = newest.max(id);
            }
        }
    }
    newest
}
