//! The logical dataflow a pipeline file compiles to: for each `INSERT`, a flow
//! from one Kafka source through a chain of stages to one Kafka sink.
//!
//! ```text
//! source (decode json) -> [window columns] -> filter/project* -> [window aggregate] -> filter/project* -> sink
//! ```
//!
//! Stages hold DataFusion logical expressions over the stage's input schema;
//! weir-operators turns each into a physical operator.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::Expr;
use std::collections::BTreeMap;
use std::fmt;

use crate::catalog::{KafkaTable, ModelDef, ModelKind};
use crate::error::Pos;
use crate::statement::WindowKind;

#[derive(Debug, Clone)]
pub enum GroupKey {
    Expr(Expr),
    WindowStart,
    WindowEnd,
    WindowTime,
}

#[derive(Debug, Clone)]
pub struct WindowAggregate {
    pub input: DFSchemaRef,
    pub kind: WindowKind,
    pub offset_ms: i64,
    /// Index of the event-time column in `input`.
    pub time_column: usize,
    pub group: Vec<GroupKey>,
    pub aggregates: Vec<Expr>,
    pub output: DFSchemaRef,
    /// SESSION's `PARTITION BY` columns, over `input` (empty: one partition).
    pub partition_by: Vec<Expr>,
    /// `'window.allowed-lateness'`: how long after firing a window stays open
    /// to late rows, re-emitting changed results as updates.
    pub allowed_lateness_ms: i64,
}

/// The frame of a per-event OVER aggregate: the rows of the same partition
/// that count for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverFrame {
    /// `RANGE BETWEEN INTERVAL ... PRECEDING AND CURRENT ROW`: rows whose event
    /// time is within `preceding_ms` before the current row's, peers included.
    Range { preceding_ms: i64 },
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`: the current row and the `n`
    /// before it in event-time order (ties in arrival order).
    Rows { preceding: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverFunction {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    StddevSamp,
    StddevPop,
    VarSamp,
    VarPop,
}

/// One `agg(x) OVER (...)` of a SELECT.
#[derive(Debug, Clone)]
pub struct OverCall {
    pub function: OverFunction,
    /// The argument, over the stage's input.
    pub arg: Expr,
    pub distinct: bool,
    pub frame: OverFrame,
}

/// Per-event rolling aggregates: every input row comes out once, in event-time
/// order per partition key, with one column per call appended.
#[derive(Debug, Clone)]
pub struct OverAggregate {
    pub input: DFSchemaRef,
    pub partition_by: Vec<Expr>,
    /// Index of the event-time column in `input`.
    pub time_column: usize,
    pub calls: Vec<OverCall>,
    pub output: DFSchemaRef,
    /// `'state.ttl'`: how long after its last row a key whose frames count
    /// rows keeps its state (RANGE-only keys go when no frame can reach them).
    pub ttl_ms: Option<i64>,
}

impl OverAggregate {
    /// How long after its last row a key's state can go: the widest range when
    /// every frame is a RANGE (exact), capped by `'state.ttl'`; with a ROWS
    /// frame, the TTL alone (`None`: kept).
    pub fn retention_ms(&self) -> Option<i64> {
        match (self.range_horizon_ms(), self.ttl_ms) {
            (Some(h), Some(t)) => Some(h.min(t)),
            (h, t) => h.or(t),
        }
    }

    /// How far back in event time any call's frame reaches, when every frame is
    /// a RANGE (`None`: some frame counts rows, which reaches back any time).
    pub fn range_horizon_ms(&self) -> Option<i64> {
        self.calls
            .iter()
            .map(|c| match c.frame {
                OverFrame::Range { preceding_ms } => Some(preceding_ms),
                OverFrame::Rows { .. } => None,
            })
            .try_fold(0i64, |acc, h| h.map(|h| acc.max(h)))
    }
}

/// Which rows of the stream a lookup join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// Every stream row; the table's columns are null without a match.
    Left,
    /// Only stream rows with a match.
    Inner,
}

/// A stream joined to a table read from a compacted topic: each stream row
/// looks up its key's row (`FOR SYSTEM_TIME AS OF ts`: the version current
/// at the row's event time; otherwise the table's current row).
#[derive(Debug, Clone)]
pub struct LookupJoin {
    pub input: DFSchemaRef,
    /// The table (a source read as a table).
    pub table: String,
    /// The stream side of `ON stream_expr = table.key`, over `input`.
    pub key: Expr,
    /// `FOR SYSTEM_TIME AS OF`: index of the stream's event-time column in
    /// `input` (`None`: the table's latest row).
    pub as_of: Option<usize>,
    pub kind: LookupKind,
    /// `input`'s columns, then the table's.
    pub output: DFSchemaRef,
}

#[derive(Debug, Clone)]
pub enum Stage {
    /// Appends placeholder (null) window_start, window_end, window_time columns
    /// so stages before the window aggregate see the window TVF's schema.
    WindowColumns {
        output: DFSchemaRef,
    },
    Filter {
        input: DFSchemaRef,
        predicate: Expr,
    },
    Project {
        input: DFSchemaRef,
        exprs: Vec<Expr>,
        output: DFSchemaRef,
    },
    WindowAggregate(Box<WindowAggregate>),
    Over(Box<OverAggregate>),
    Lookup(Box<LookupJoin>),
}

impl Stage {
    pub fn output(&self) -> &DFSchemaRef {
        match self {
            Stage::WindowColumns { output } => output,
            Stage::Filter { input, .. } => input,
            Stage::Project { output, .. } => output,
            Stage::WindowAggregate(w) => &w.output,
            Stage::Over(o) => &o.output,
            Stage::Lookup(l) => &l.output,
        }
    }

    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            Stage::WindowColumns { .. } => vec![],
            Stage::Filter { predicate, .. } => vec![predicate],
            Stage::Project { exprs, .. } => exprs.iter().collect(),
            Stage::WindowAggregate(w) => w
                .group
                .iter()
                .filter_map(|g| match g {
                    GroupKey::Expr(e) => Some(e),
                    _ => None,
                })
                .chain(w.aggregates.iter())
                .collect(),
            Stage::Over(o) => o
                .partition_by
                .iter()
                .chain(o.calls.iter().map(|c| &c.arg))
                .collect(),
            Stage::Lookup(l) => vec![&l.key],
        }
    }
}

/// One `INSERT INTO sink SELECT ... FROM source`.
#[derive(Debug, Clone)]
pub struct Flow {
    pub index: usize,
    pub pos: Pos,
    pub source: String,
    pub stages: Vec<Stage>,
    pub sink: String,
    /// Schema of the records written to the sink.
    pub output: SchemaRef,
    /// Indices in `output` of the sink's key fields.
    pub key_columns: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct PipelinePlan {
    pub name: String,
    pub file: std::path::PathBuf,
    pub settings: BTreeMap<String, String>,
    pub tables: BTreeMap<String, KafkaTable>,
    pub models: BTreeMap<String, ModelDef>,
    pub flows: Vec<Flow>,
}

impl PipelinePlan {
    /// Tables some flow reads.
    pub fn sources(&self) -> Vec<&KafkaTable> {
        let mut names: Vec<&str> = self.flows.iter().map(|f| f.source.as_str()).collect();
        names.sort();
        names.dedup();
        names.iter().map(|n| &self.tables[*n]).collect()
    }

    /// Tables some flow writes.
    pub fn sinks(&self) -> Vec<&KafkaTable> {
        let mut names: Vec<&str> = self.flows.iter().map(|f| f.sink.as_str()).collect();
        names.sort();
        names.dedup();
        names.iter().map(|n| &self.tables[*n]).collect()
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

pub fn fmt_ms(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 && ms != 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms != 0 => format!("{}min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn fmt_schema(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_exprs<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> String {
    exprs
        .into_iter()
        .map(|e| e.human_display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for PipelinePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pipeline {} ({})", self.name, self.file.display())?;
        for (k, v) in &self.settings {
            writeln!(f, "  set {k} = {v}")?;
        }
        for m in self.models.values() {
            let kind = match m.info.kind {
                ModelKind::Classifier => "classifier: returns P(class 1)",
                ModelKind::Regressor => "regressor",
            };
            writeln!(
                f,
                "model {}: {} ({kind}; {} input features; {})",
                m.name,
                m.path.display(),
                m.info.inputs,
                m.info.summary
            )?;
        }
        for flow in &self.flows {
            let source = &self.tables[&flow.source];
            let sink = &self.tables[&flow.sink];
            writeln!(
                f,
                "\nflow {} (INSERT INTO {} at line {}):",
                flow.index, flow.sink, flow.pos.line
            )?;
            let wm = match source.watermark {
                Some(w) => format!(
                    "watermark {} - {}",
                    source.columns[w.column].name,
                    fmt_ms(w.delay_ms)
                ),
                None => "no watermark".to_string(),
            };
            writeln!(
                f,
                "  source {}: kafka topic '{}' ({}, {}{})",
                source.name,
                source.topic,
                wm,
                if source.bounded {
                    "bounded"
                } else {
                    "unbounded"
                },
                source
                    .dead_letter_topic
                    .as_ref()
                    .map(|t| format!(", dead letters to '{t}'"))
                    .unwrap_or_default()
            )?;
            writeln!(f, "    decode json -> [{}]", fmt_schema(&source.schema()))?;
            for stage in &flow.stages {
                match stage {
                    Stage::WindowColumns { .. } => writeln!(
                        f,
                        "    window columns (window_start, window_end, window_time)"
                    )?,
                    Stage::Filter { predicate, .. } => {
                        writeln!(f, "    filter {}", predicate.human_display())?
                    }
                    Stage::Project { exprs, output, .. } => writeln!(
                        f,
                        "    project {} -> [{}]",
                        fmt_exprs(exprs),
                        fmt_schema(output.as_arrow())
                    )?,
                    Stage::WindowAggregate(w) => {
                        let kind = match w.kind {
                            WindowKind::Tumble { size_ms } => {
                                format!("TUMBLE({})", fmt_ms(size_ms))
                            }
                            WindowKind::Hop { slide_ms, size_ms } => {
                                format!("HOP(slide {}, size {})", fmt_ms(slide_ms), fmt_ms(size_ms))
                            }
                            WindowKind::Cumulate { step_ms, size_ms } => format!(
                                "CUMULATE(step {}, max size {})",
                                fmt_ms(step_ms),
                                fmt_ms(size_ms)
                            ),
                            WindowKind::Session { gap_ms } => format!(
                                "SESSION(partition by [{}], gap {})",
                                fmt_exprs(&w.partition_by),
                                fmt_ms(gap_ms)
                            ),
                        };
                        let group: Vec<String> = w
                            .group
                            .iter()
                            .map(|g| match g {
                                GroupKey::Expr(e) => e.human_display().to_string(),
                                GroupKey::WindowStart => "window_start".into(),
                                GroupKey::WindowEnd => "window_end".into(),
                                GroupKey::WindowTime => "window_time".into(),
                            })
                            .collect();
                        writeln!(
                            f,
                            "    window aggregate {kind} on {} group by [{}] aggregates [{}] -> [{}]",
                            w.input.field(w.time_column).name(),
                            group.join(", "),
                            fmt_exprs(&w.aggregates),
                            fmt_schema(w.output.as_arrow())
                        )?;
                        let state = match w.kind {
                            WindowKind::Session { .. } => {
                                "per partition key, its open sessions (merged as rows bridge them), each with its groups' accumulator states; a session fires when the watermark passes window_end"
                            }
                            _ => {
                                "one pane per open window, keyed by the group key; fires when the watermark passes window_end"
                            }
                        };
                        writeln!(f, "      state: {state}")?;
                        if w.allowed_lateness_ms > 0 {
                            writeln!(
                                f,
                                "      allowed lateness {}: a fired window stays open that long; late rows re-emit changed groups (weir.change: update/delete)",
                                fmt_ms(w.allowed_lateness_ms)
                            )?;
                        }
                    }
                    Stage::Lookup(l) => {
                        let kind = match l.kind {
                            LookupKind::Left => "left",
                            LookupKind::Inner => "inner",
                        };
                        let version = match l.as_of {
                            Some(i) => format!("the version as of {}", l.input.field(i).name()),
                            None => "its current row".to_string(),
                        };
                        writeln!(
                            f,
                            "    {kind} join table {} on {} = its key, {version} -> [{}]",
                            l.table,
                            l.key.human_display(),
                            fmt_schema(l.output.as_arrow())
                        )?;
                        writeln!(
                            f,
                            "      state: the table's rows by key (every version, for AS OF), read from its topic at start and as it changes"
                        )?;
                    }
                    Stage::Over(o) => {
                        let calls: Vec<String> = o
                            .calls
                            .iter()
                            .map(|c| {
                                let frame = match c.frame {
                                    OverFrame::Range { preceding_ms } => {
                                        format!("range {}", fmt_ms(preceding_ms))
                                    }
                                    OverFrame::Rows { preceding } => {
                                        format!("rows {preceding} preceding")
                                    }
                                };
                                format!(
                                    "{:?}({}{}) over {frame}",
                                    c.function,
                                    if c.distinct { "DISTINCT " } else { "" },
                                    c.arg.human_display()
                                )
                            })
                            .collect();
                        writeln!(
                            f,
                            "    over partition by [{}] order by {} [{}] -> input columns + {} results",
                            fmt_exprs(&o.partition_by),
                            o.input.field(o.time_column).name(),
                            calls.join(", "),
                            o.calls.len()
                        )?;
                        writeln!(
                            f,
                            "      state: per partition key, the rows its frames reach back to; each row is emitted once the watermark passes its event time"
                        )?;
                    }
                }
                for e in stage.exprs() {
                    let mut models = Vec::new();
                    let _ = e.apply(|e| {
                        if let Some(m) = crate::predict::predict_model(e) {
                            models.push(m.to_string());
                        }
                        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                    });
                    for m in models {
                        writeln!(f, "      predict with model {m} (one tract run per batch)")?;
                    }
                }
            }
            let key = if flow.key_columns.is_empty() {
                "no key".to_string()
            } else {
                format!(
                    "key [{}]",
                    flow.key_columns
                        .iter()
                        .map(|i| flow.output.field(*i).name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            writeln!(
                f,
                "  sink {}: kafka topic '{}' (json, {key}, {:?}) <- [{}]",
                sink.name,
                sink.topic,
                sink.delivery,
                fmt_schema(&flow.output)
            )?;
        }
        Ok(())
    }
}
