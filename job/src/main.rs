//! The `weir` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use weir::generate::FraudGenerator;
use weir::load::process_env;
use weir::{RunOptions, load_pipeline, run_pipeline};

/// mimalloc instead of glibc's malloc: the window state and the output path
/// allocate small objects on one thread and free them on another, where
/// glibc's arenas contend (about a quarter of the CPU in the profile). The
/// crate's "override" feature (workspace Cargo.toml) makes it the C
/// libraries' malloc too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Stream processing for ML scoring: SQL in, predictions out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a worker cluster keeps its jobs.
#[derive(clap::Args, Clone)]
struct ClusterArgs {
    /// Kafka bootstrap servers of the cluster (host:port,...).
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// The job registry topic.
    #[arg(long, default_value = weir::cluster::registry::REGISTRY_TOPIC)]
    registry_topic: String,
    /// The topic workers report their status to.
    #[arg(long, default_value = weir::cluster::status::STATUS_TOPIC)]
    status_topic: String,
    /// A librdkafka property for connecting to the cluster (TLS, SASL, ...),
    /// KEY=VALUE; repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// A file of such properties, one KEY=VALUE a line (`#` comments): for
    /// secrets, which a command line shows to every user of the machine.
    #[arg(long, value_name = "FILE")]
    properties_file: Option<PathBuf>,
}

impl ClusterArgs {
    fn connection(&self) -> anyhow::Result<weir::connection::Connection> {
        Ok(weir::connection::Connection {
            bootstrap: self.brokers.clone(),
            properties: weir::connection::parse_properties(
                &self.properties,
                self.properties_file.as_deref(),
            )?,
        })
    }

    fn topics(&self) -> anyhow::Result<weir::cluster::ClusterTopics> {
        Ok(weir::cluster::ClusterTopics {
            cluster: self.connection()?,
            registry: self.registry_topic.clone(),
            status: self.status_topic.clone(),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Plan a pipeline file and run it until Ctrl-C, or until bounded input is consumed.
    Run {
        file: PathBuf,
        /// Stop (as on Ctrl-C) after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Print the records written to sink topics (default on the embedded broker).
        #[arg(long)]
        print: Option<bool>,
        /// Consumer group id (default weir-<pipeline name>).
        #[arg(long)]
        group_id: Option<String>,
        /// Directory for task state and checkpoints (overrides SET 'state.dir';
        /// default ~/.local/state/weir/<group id>, or a temporary one on the
        /// embedded broker).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Print the dataflow graph of a pipeline file: operators, schemas, state, models.
    Explain { file: PathBuf },
    /// Run a cluster worker: it follows the job registry and runs its share
    /// (a task per input partition the job's consumer group gives it) of
    /// every running job, until Ctrl-C.
    Worker {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Serve /healthz, /metrics and /api/jobs here (e.g. 0.0.0.0:9464).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The worker's name in the cluster (default: host name and process id).
        #[arg(long)]
        id: Option<String>,
        /// Directory for the worker's jobs and task state (default
        /// ~/.local/state/weir/worker-<id>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// How long a worker may be silent before its partitions move to
        /// the others.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u32,
    },
    /// Plan a pipeline file and, if it plans, publish it to the cluster's job
    /// registry; workers start it.
    Submit {
        file: PathBuf,
        /// Job name (default: the pipeline's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the cluster's jobs: state, tasks, workers, input lag, output rate.
    Jobs {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show a job: its definition, its plan and where each task runs.
    Describe {
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Stop a job: every worker stops its tasks after a final checkpoint.
    Stop {
        name: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// How long to wait for the workers to report it stopped.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Write synthetic data for an example as JSON lines.
    Generate {
        /// Which generator: fraud (card transactions) or fraud-merchants (the
        /// merchant-risk table: key and value per line on stdout).
        kind: String,
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 100_000)]
        cards: usize,
        /// Events per simulated second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Start of simulated time (RFC 3339).
        #[arg(long, default_value = "2026-11-21T00:00:00Z")]
        start: String,
        /// Produce to this Kafka cluster instead of writing to stdout.
        #[arg(long)]
        brokers: Option<String>,
        /// Topic to produce to (with --brokers).
        #[arg(long, default_value = "transactions")]
        topic: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let version = format!(
        "{} with {}",
        env!("CARGO_PKG_VERSION"),
        weir::kafka::librdkafka_build()
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            file,
            duration,
            print,
            group_id,
            state_dir,
        } => {
            let loaded = load_pipeline(&file, &process_env)?;
            let stop = Arc::new(AtomicBool::new(false));
            let on_signal = stop.clone();
            ctrlc::set_handler(move || {
                eprintln!("stopping: flushing sinks (Ctrl-C again to abort)");
                if on_signal.swap(true, Ordering::Relaxed) {
                    std::process::exit(130);
                }
            })?;
            if let Some(secs) = duration {
                let s = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs_f64(secs));
                    s.store(true, Ordering::Relaxed);
                });
            }
            let summary = run_pipeline(
                loaded,
                RunOptions {
                    stop,
                    print,
                    group_id,
                    state_dir,
                },
            )?;
            let t = summary.total();
            eprintln!(
                "done: {} records in, {} out, {} dead-lettered, {} late, {} repeated output skipped, {} checkpoints",
                t.records_in,
                t.records_out,
                t.dead_lettered,
                t.late,
                t.duplicates_skipped,
                t.checkpoints
            );
            if t.transactions > 0 {
                eprintln!("{} Kafka transactions committed", t.transactions);
            }
            Ok(())
        }
        Command::Worker {
            cluster,
            http,
            id,
            state_dir,
            session_timeout_ms,
        } => {
            let id = id.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "worker".into());
                format!("{host}-{}", std::process::id())
            });
            let stop = Arc::new(AtomicBool::new(false));
            let on_signal = stop.clone();
            ctrlc::set_handler(move || {
                eprintln!("stopping: checkpointing every task (Ctrl-C again to abort)");
                if on_signal.swap(true, Ordering::Relaxed) {
                    std::process::exit(130);
                }
            })?;
            let state_dir = state_dir
                .unwrap_or_else(|| weir::run::default_state_root().join(format!("worker-{id}")));
            weir::cluster::worker::run_worker(weir::cluster::WorkerOptions {
                cluster: cluster.connection()?,
                id,
                http,
                state_dir,
                registry_topic: cluster.registry_topic.clone(),
                status_topic: cluster.status_topic.clone(),
                session_timeout_ms,
                stop,
            })
        }
        Command::Submit {
            file,
            name,
            cluster,
        } => {
            let spec = weir::cluster::submit(&file, name, &cluster.topics()?)?;
            eprintln!(
                "submitted job {} (version {}) to '{}' at {}",
                spec.name, spec.version, cluster.registry_topic, cluster.brokers
            );
            Ok(())
        }
        Command::Jobs { cluster } => {
            print!("{}", weir::cluster::jobs_table(&cluster.topics()?)?);
            Ok(())
        }
        Command::Describe { name, cluster } => {
            print!("{}", weir::cluster::describe(&name, &cluster.topics()?)?);
            Ok(())
        }
        Command::Stop {
            name,
            cluster,
            wait_secs,
        } => {
            weir::cluster::stop(&name, &cluster.topics()?, Duration::from_secs(wait_secs))?;
            eprintln!("job {name} stopped");
            Ok(())
        }
        Command::Explain { file } => {
            let loaded = load_pipeline(&file, &process_env)?;
            print!("{}", loaded.plan);
            Ok(())
        }
        Command::Generate {
            kind,
            events,
            seed,
            cards,
            rate,
            start,
            brokers,
            topic,
        } => {
            let start_ms = chrono::DateTime::parse_from_rfc3339(&start)?.timestamp_millis();
            if kind == "fraud-merchants" {
                // One version per merchant, valid from the start of simulated time.
                let rows = weir::generate::merchant_table(start_ms);
                match brokers {
                    None => {
                        let stdout = std::io::stdout();
                        let mut out = std::io::BufWriter::new(stdout.lock());
                        for (key, value) in &rows {
                            writeln!(out, r#"{{"key": "{key}", "value": {value}}}"#)?;
                        }
                    }
                    Some(b) => {
                        let sink = weir::sink::Sink::new(&weir::kafka::producer_config(
                            &weir::connection::Connection::plain(&b),
                            &Default::default(),
                        ))?;
                        for (key, value) in &rows {
                            sink.send(&topic, Some(key.as_bytes()), value.as_bytes(), None)?;
                        }
                        sink.flush()?;
                    }
                }
                return Ok(());
            }
            if kind != "fraud" {
                anyhow::bail!("unknown generator '{kind}' (available: fraud, fraud-merchants)");
            }
            let mut g = FraudGenerator::new(seed, cards, start_ms, rate);
            match brokers {
                None => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    for _ in 0..events {
                        writeln!(out, "{}", g.next_event().to_json())?;
                    }
                }
                Some(b) => {
                    let sink = weir::sink::Sink::new(&weir::kafka::producer_config(
                        &weir::connection::Connection::plain(&b),
                        &Default::default(),
                    ))?;
                    for _ in 0..events {
                        let e = g.next_event();
                        let key = format!("card-{:06}", e.card);
                        sink.send(&topic, Some(key.as_bytes()), e.to_json().as_bytes(), None)?;
                    }
                    sink.flush()?;
                }
            }
            Ok(())
        }
    }
}
