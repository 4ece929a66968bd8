//! What a pipeline file declares: Kafka tables (sources and sinks), models and
//! job settings, validated option by option so a typo is an error with a place,
//! never a silently ignored option.
//!
//! This file holds the declared things, as the rest of weir reads them. How
//! they are checked: `table` (CREATE TABLE: columns and WITH options),
//! `settings` (SET), `values` (durations and sizes) and `suggest` (did you
//! mean ...?).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Pos;
use crate::statement::Spanned;

mod settings;
mod suggest;
mod table;
mod values;

pub use settings::{SETTINGS, check_setting, check_setting_value};
pub use suggest::did_you_mean;
pub use table::{DEFAULT_ALIGNMENT_MAX_DRIFT_MS, TABLE_OPTIONS, build_columns, build_table};
pub use values::{parse_duration_ms, parse_size_bytes};

/// Which part of a Kafka record fills a `METADATA FROM '...'` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataKind {
    Key,
    Timestamp,
    Partition,
    Offset,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    pub metadata: Option<MetadataKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// Index of the event-time column in the table's columns.
    pub column: usize,
    pub delay_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    Earliest,
    Latest,
    GroupOffsets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    AtLeastOnce,
    ExactlyOnce,
}

/// A `CREATE TABLE ... WITH ('connector' = 'kafka', ...)`. Whether it is read
/// (a source) or written (a sink) depends on how the pipeline uses it.
#[derive(Debug, Clone)]
pub struct KafkaTable {
    pub name: String,
    pub pos: Pos,
    /// Declared columns; empty for a sink that takes its columns from its query.
    pub columns: Vec<Column>,
    pub watermark: Option<Watermark>,
    /// The Kafka topic; for a filesystem table, its `'path'` as written.
    pub topic: String,
    /// `'connector' = 'filesystem'`: the file, or directory of files, read
    /// (bounded), resolved against the SQL file's directory. Such a table is
    /// only ever a source.
    pub path: Option<PathBuf>,
    /// The brokers; for a filesystem table, where its dead letters go (empty:
    /// the cluster its flows write to).
    pub bootstrap_servers: String,
    /// `properties.*` options (minus `bootstrap.servers`), passed to librdkafka.
    pub properties: BTreeMap<String, String>,
    pub startup_mode: StartupMode,
    pub bounded: bool,
    pub dead_letter_topic: Option<String>,
    pub key_fields: Vec<Spanned<String>>,
    pub delivery: DeliveryGuarantee,
    /// `'sink.transactional' = 'true'`: the writing task wraps each checkpoint
    /// interval's output, changelog records and input offsets in one Kafka
    /// transaction.
    pub transactional: bool,
    /// `'sink.id-header'` (default true): each output record carries the
    /// `weir.id` header (its identity, for consumers to drop at-least-once
    /// repeats). Exactly-once sinks need it: a restart finds what it wrote by it.
    pub id_header: bool,
    /// Partitions to create the topic with when it does not exist.
    pub partitions: Option<i32>,
    /// After this long without records a partition stops holding the watermark back.
    pub idle_timeout_ms: Option<u64>,
    /// `'scan.watermark.alignment.max-drift'` (default 5 min; 'off': none): a
    /// partition whose event time runs this far ahead of the slowest one is
    /// not read until it is within half of it (sources feeding only stateful,
    /// watermark-driven stages).
    pub alignment_max_drift_ms: Option<u64>,
    /// For the embedded broker only: a synthetic data generator feeding this topic.
    pub embedded_generator: Option<String>,
    pub embedded_generator_rate: Option<u64>,
    pub format: Format,
    pub late_policy: LatePolicy,
    /// Read as a table (`'connector' = 'upsert-kafka'` or `'scan.mode' =
    /// 'table'`): each record is the current row of its key (the Kafka key
    /// holds the primary key), a record without a value deletes it.
    pub scan_table: bool,
    /// `PRIMARY KEY (...)`: indices into `columns`.
    pub primary_key: Vec<usize>,
}

/// How a record's value maps to columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record, one field per column.
    Json,
    /// The value's bytes are the table's one physical column (BYTES or STRING).
    Raw,
}

/// What happens to a row that arrives after the watermark passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Counted (`late` metric) and logged, not written anywhere.
    Drop,
    /// Written to the source's dead-letter topic with the reason, and counted.
    DeadLetter,
}

impl KafkaTable {
    /// The Arrow schema of decoded records: every declared column, in order.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Returns the positive-class probability (the probabilities output, column 1).
    Classifier,
    /// Returns its single output value.
    Regressor,
}

/// What the planner needs to know about a model file.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub inputs: usize,
    pub kind: ModelKind,
    pub summary: String,
}

#[derive(Debug, Clone)]
pub struct ModelDef {
    pub name: String,
    pub path: PathBuf,
    pub info: ModelInfo,
}

/// Loads a model's metadata at plan time; implemented with tract by weir-operators,
/// so this crate stays free of I/O and of the model runtime.
pub trait ModelInspector {
    fn inspect(&self, path: &std::path::Path) -> Result<ModelInfo, String>;
}
