//! A worker's HTTP API: `/healthz`, `/metrics` (Prometheus text format) and
//! `/api/jobs` (JSON), served by axum on a thread of its own.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::status::{StatusSource, WorkerStatus};

type Source = Arc<dyn StatusSource>;

/// Binds `addr` now (so a taken port fails the worker's start) and serves on
/// a background thread.
pub fn serve(addr: SocketAddr, shared: Source) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the HTTP API to {addr}"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("weir-http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("HTTP API: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let app = Router::new()
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route("/metrics", get(metrics))
                    .route("/api/jobs", get(jobs))
                    .with_state(shared);
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("HTTP API: {e}");
                        }
                    }
                    Err(e) => tracing::error!("HTTP API: {e}"),
                }
            });
        })?;
    Ok(())
}

async fn jobs(State(shared): State<Source>) -> Json<WorkerStatus> {
    Json(shared.snapshot())
}

async fn metrics(State(shared): State<Source>) -> impl IntoResponse {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(shared.snapshot())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        text = format!("# encoding failed: {e}\n");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// One scrape's worth of the worker's status, encoded as metric families.
#[derive(Debug)]
struct Snapshot(WorkerStatus);

type Labels = Vec<(Cow<'static, str>, String)>;

impl Snapshot {
    fn task_labels(&self) -> Vec<(Labels, &super::status::TaskStatus)> {
        let mut out = Vec::new();
        for j in &self.0.jobs {
            for t in &j.tasks {
                out.push((
                    vec![
                        ("job".into(), j.name.clone()),
                        ("source".into(), t.source.clone()),
                        ("partition".into(), t.partition.to_string()),
                    ],
                    t,
                ));
            }
        }
        out
    }
}

fn family<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Labels, T)],
) -> Result<(), std::fmt::Error>
where
    T: Copy + Into<f64>,
{
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let f = m.encode_family(labels)?;
        let v: f64 = (*v).into();
        match kind {
            MetricType::Counter => {
                prometheus_client::metrics::counter::ConstCounter::new(v).encode(f)?
            }
            _ => prometheus_client::metrics::gauge::ConstGauge::new(v).encode(f)?,
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tasks = self.task_labels();
        let per_task = |f: &dyn Fn(&super::status::TaskStatus) -> f64| -> Vec<(Labels, f64)> {
            tasks.iter().map(|(l, t)| (l.clone(), f(t))).collect()
        };
        let e = &mut encoder;
        use MetricType::{Counter, Gauge};
        family(
            e,
            "weir_records_in",
            "Input records read, per task.",
            Counter,
            &per_task(&|t| t.records_in as f64),
        )?;
        family(
            e,
            "weir_records_out",
            "Records written to sinks, per task.",
            Counter,
            &per_task(&|t| t.records_out as f64),
        )?;
        family(
            e,
            "weir_dead_lettered",
            "Records sent to the dead-letter topic (or counted), per task.",
            Counter,
            &per_task(&|t| t.dead_lettered as f64),
        )?;
        family(
            e,
            "weir_late",
            "Records behind the watermark, per task.",
            Counter,
            &per_task(&|t| t.late as f64),
        )?;
        family(
            e,
            "weir_checkpoints",
            "Checkpoints taken, per task.",
            Counter,
            &per_task(&|t| t.checkpoints as f64),
        )?;
        family(
            e,
            "weir_input_lag_records",
            "Input partition end minus the task's position.",
            Gauge,
            &tasks
                .iter()
                .filter_map(|(l, t)| t.lag().map(|lag| (l.clone(), lag as f64)))
                .collect::<Vec<_>>(),
        )?;
        family(
            e,
            "weir_state_bytes",
            "Size on disk of the task's last checkpoint (window and other operator state).",
            Gauge,
            &per_task(&|t| t.state_bytes as f64),
        )?;
        family(
            e,
            "weir_checkpoint_duration_seconds",
            "Duration of the task's last checkpoint.",
            Gauge,
            &per_task(&|t| t.last_checkpoint_ms as f64 / 1e3),
        )?;
        family(
            e,
            "weir_restore_duration_seconds",
            "Time the task took to restore its state.",
            Gauge,
            &per_task(&|t| t.restore_ms as f64 / 1e3),
        )?;
        let mut calls = Vec::new();
        let mut rows = Vec::new();
        let mut seconds = Vec::new();
        let mut batch = Vec::new();
        let mut latency = Vec::new();
        for j in &self.0.jobs {
            for m in &j.models {
                let l: Labels = vec![
                    ("job".into(), j.name.clone()),
                    ("model".into(), m.name.clone()),
                ];
                calls.push((l.clone(), m.calls as f64));
                rows.push((l.clone(), m.rows as f64));
                seconds.push((l.clone(), m.seconds));
                if m.calls > 0 {
                    batch.push((l.clone(), m.rows as f64 / m.calls as f64));
                    latency.push((l, m.seconds / m.calls as f64));
                }
            }
        }
        family(
            e,
            "weir_predict_calls",
            "Model runs (one per batch).",
            Counter,
            &calls,
        )?;
        family(e, "weir_predict_rows", "Rows scored.", Counter, &rows)?;
        family(
            e,
            "weir_predict_seconds",
            "Time spent scoring.",
            Counter,
            &seconds,
        )?;
        family(
            e,
            "weir_predict_batch_rows",
            "Mean rows per model run since start.",
            Gauge,
            &batch,
        )?;
        family(
            e,
            "weir_predict_latency_seconds",
            "Mean time per model run since start.",
            Gauge,
            &latency,
        )?;
        let up: Vec<(Labels, f64)> = self
            .0
            .jobs
            .iter()
            .map(|j| {
                (
                    vec![
                        ("job".into(), j.name.clone()),
                        ("state".into(), j.state.clone()),
                    ],
                    1.0,
                )
            })
            .collect();
        family(
            e,
            "weir_job_info",
            "Jobs on this worker, by state.",
            Gauge,
            &up,
        )?;
        Ok(())
    }
}
