//! `CREATE TABLE`: column types and metadata columns, then the WITH options,
//! watermark and primary key, each validated where it was written, into a
//! [`KafkaTable`].

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::datatypes::{DataType, TimeUnit};

use super::suggest::unknown;
use super::values::parse_duration_ms;
use super::{
    Column, DeliveryGuarantee, Format, KafkaTable, LatePolicy, MetadataKind, StartupMode, Watermark,
};
use crate::error::{LResult, Located};
use crate::statement::{ColumnSpec, OptionSpec, Spanned, WatermarkSpec};
use crate::subst::substitute;

pub const TABLE_OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "path",
    "format",
    "key.format",
    "value.format",
    "scan.mode",
    "properties.bootstrap.servers",
    "properties.*",
    "scan.startup.mode",
    "scan.bounded.mode",
    "scan.watermark.idle-timeout",
    "scan.watermark.alignment.max-drift",
    "key.fields",
    "dead-letter.topic",
    "sink.delivery-guarantee",
    "sink.transactional",
    "sink.id-header",
    "topic.partitions",
    "json.timestamp-format.standard",
    "late.policy",
    "embedded.generator",
    "embedded.generator.rate",
];

/// `'scan.watermark.alignment.max-drift'` when a table does not say.
pub const DEFAULT_ALIGNMENT_MAX_DRIFT_MS: u64 = 5 * 60 * 1000;

fn sql_type(type_name: &Spanned<String>) -> LResult<DataType> {
    let t = type_name.value.as_str();
    let base = t.split('(').next().unwrap_or(t);
    Ok(match base {
        "TEXT" | "VARCHAR" | "STRING" | "CHAR" => DataType::Utf8,
        "BIGINT" => DataType::Int64,
        "INT" | "INTEGER" => DataType::Int32,
        "SMALLINT" => DataType::Int16,
        "TINYINT" => DataType::Int8,
        "DOUBLE" => DataType::Float64,
        "FLOAT" | "REAL" => DataType::Float32,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" | "TIMESTAMP_LTZ" => {
            if t != base && t != "TIMESTAMP(3)" && t != "TIMESTAMP_LTZ(3)" {
                return Err(Located::new(
                    type_name.pos,
                    format!(
                        "{t} is not supported: weir keeps event time in milliseconds, use TIMESTAMP(3)"
                    ),
                ));
            }
            DataType::Timestamp(TimeUnit::Millisecond, None)
        }
        _ => {
            return Err(Located::new(
                type_name.pos,
                format!(
                    "unsupported column type {t}: use TEXT/VARCHAR/STRING, BIGINT, INT, SMALLINT, TINYINT, DOUBLE, FLOAT, BOOLEAN or TIMESTAMP(3)"
                ),
            ));
        }
    })
}

pub fn build_columns(specs: &[ColumnSpec]) -> LResult<Vec<Column>> {
    let mut columns: Vec<Column> = Vec::with_capacity(specs.len());
    for spec in specs {
        if columns.iter().any(|c| c.name == spec.name.value) {
            return Err(Located::new(
                spec.name.pos,
                format!("column {} is declared twice", spec.name.value),
            ));
        }
        let data_type = sql_type(&spec.type_name)?;
        let metadata = match &spec.metadata {
            None => None,
            Some(m) => {
                let (kind, expected) = match m.value.as_str() {
                    "key" => (MetadataKind::Key, DataType::Utf8),
                    "timestamp" => (
                        MetadataKind::Timestamp,
                        DataType::Timestamp(TimeUnit::Millisecond, None),
                    ),
                    "partition" => (MetadataKind::Partition, DataType::Int32),
                    "offset" => (MetadataKind::Offset, DataType::Int64),
                    _ => {
                        return Err(unknown(
                            "metadata key",
                            m,
                            &["key", "timestamp", "partition", "offset"],
                        ));
                    }
                };
                if data_type != expected {
                    return Err(Located::new(
                        spec.type_name.pos,
                        format!(
                            "METADATA FROM '{}' is of type {}, not {}",
                            m.value,
                            type_label(&expected),
                            spec.type_name.value
                        ),
                    ));
                }
                Some(kind)
            }
        };
        columns.push(Column {
            name: spec.name.value.clone(),
            data_type,
            nullable: !spec.not_null,
            metadata,
        });
    }
    Ok(columns)
}

fn type_label(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 => "TEXT",
        DataType::Int32 => "INT",
        DataType::Int64 => "BIGINT",
        DataType::Timestamp(..) => "TIMESTAMP(3)",
        _ => "?",
    }
}

/// Validates a table's WITH options and builds the table.
pub fn build_table(
    name: &Spanned<String>,
    columns: Vec<Column>,
    watermark: Option<&WatermarkSpec>,
    primary_key: &[Spanned<String>],
    options: &[OptionSpec],
    env: &dyn Fn(&str) -> Option<String>,
    dir: &Path,
) -> LResult<KafkaTable> {
    let mut values: BTreeMap<String, Spanned<String>> = BTreeMap::new();
    for opt in options {
        let key = &opt.key.value;
        let known = TABLE_OPTIONS.contains(&key.as_str()) || key.starts_with("properties.");
        if !known {
            return Err(unknown("table option", &opt.key, TABLE_OPTIONS));
        }
        let value =
            substitute(&opt.value.value, env).map_err(|m| Located::new(opt.value.pos, m))?;
        if values
            .insert(
                key.clone(),
                Spanned {
                    value,
                    pos: opt.value.pos,
                },
            )
            .is_some()
        {
            return Err(Located::new(
                opt.key.pos,
                format!("option '{key}' is given twice"),
            ));
        }
    }
    let get = |k: &str| values.get(k);
    let required = |k: &str| {
        values.get(k).ok_or_else(|| {
            Located::new(
                name.pos,
                format!("table {} needs the option '{k}'", name.value),
            )
        })
    };
    let one_of = |k: &str, allowed: &[&str], default: &str| -> LResult<String> {
        match values.get(k) {
            None => Ok(default.to_string()),
            Some(v) if allowed.contains(&v.value.as_str()) => Ok(v.value.clone()),
            Some(v) => Err(Located::new(
                v.pos,
                format!(
                    "'{k}' = '{}' is not valid: use one of {}",
                    v.value,
                    allowed.join(", ")
                ),
            )),
        }
    };
    let connector = one_of("connector", &["kafka", "upsert-kafka", "filesystem"], "")?;
    required("connector")?;
    let upsert = connector == "upsert-kafka";
    let (path, topic) = if connector == "filesystem" {
        // A file source is bounded and has no topic, offsets or group.
        for k in [
            "topic",
            "scan.mode",
            "scan.startup.mode",
            "scan.bounded.mode",
            "scan.watermark.idle-timeout",
            "scan.watermark.alignment.max-drift",
            "sink.delivery-guarantee",
            "sink.transactional",
            "sink.id-header",
            "topic.partitions",
            "embedded.generator",
        ] {
            if let Some(v) = values.get(k) {
                return Err(Located::new(
                    v.pos,
                    format!(
                        "'{k}' is for Kafka tables; table {} reads files ('connector' = 'filesystem', 'path' = ...)",
                        name.value
                    ),
                ));
            }
        }
        let p = required("path")?;
        let full = dir.join(&p.value);
        let meta = std::fs::metadata(&full).map_err(|e| {
            Located::new(
                p.pos,
                format!(
                    "table {}: cannot read '{}': {e}",
                    name.value,
                    full.display()
                ),
            )
        })?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(Located::new(
                p.pos,
                format!(
                    "table {}: '{}' is neither a file nor a directory",
                    name.value,
                    full.display()
                ),
            ));
        }
        (Some(full), p.value.clone())
    } else {
        if let Some(v) = values.get("path") {
            return Err(Located::new(
                v.pos,
                "'path' is for files: a Kafka table names its 'topic' (or use 'connector' = 'filesystem')",
            ));
        }
        (None, required("topic")?.value.clone())
    };
    let scan_table = upsert || one_of("scan.mode", &["stream", "table"], "stream")? == "table";
    let format = if upsert {
        one_of("key.format", &["raw"], "raw")?;
        one_of("value.format", &["json"], "json")?;
        Format::Json
    } else {
        let f = match one_of("format", &["json", "raw"], "")?.as_str() {
            "raw" => Format::Raw,
            _ => Format::Json,
        };
        required("format")?;
        f
    };
    let mut key_columns = Vec::new();
    for k in primary_key {
        let Some(i) = columns.iter().position(|c| c.name == k.value) else {
            return Err(Located::new(
                k.pos,
                format!(
                    "PRIMARY KEY ({}): no such column in {}",
                    k.value, name.value
                ),
            ));
        };
        key_columns.push(i);
    }
    if scan_table {
        match key_columns.as_slice() {
            [] => {
                return Err(Located::new(
                    name.pos,
                    format!(
                        "table {} is read as a table (one row per key): declare its key with PRIMARY KEY (column) NOT ENFORCED",
                        name.value
                    ),
                ));
            }
            [i] if matches!(
                columns[*i].data_type,
                DataType::Utf8 | DataType::Int64 | DataType::Int32
            ) => {}
            _ => {
                return Err(Located::new(
                    primary_key[0].pos,
                    "a table's PRIMARY KEY is one TEXT, BIGINT or INT column (the record key, as text)",
                ));
            }
        }
        if format != Format::Json {
            return Err(Located::new(
                name.pos,
                "a table read as a table needs JSON values",
            ));
        }
    } else if let Some(k) = primary_key.first() {
        return Err(Located::new(
            k.pos,
            format!(
                "PRIMARY KEY is for tables read as tables: add 'scan.mode' = 'table' to {} (or use 'connector' = 'upsert-kafka')",
                name.value
            ),
        ));
    }
    if format == Format::Raw {
        let physical: Vec<&Column> = columns.iter().filter(|c| c.metadata.is_none()).collect();
        let ok = match physical.as_slice() {
            [] => columns.is_empty(),
            [c] => matches!(c.data_type, DataType::Utf8 | DataType::Binary),
            _ => false,
        };
        if !ok {
            return Err(Located::new(
                values["format"].pos,
                format!(
                    "'format' = 'raw' carries the record value as one column: declare exactly one STRING or BYTES column in {} (plus METADATA columns)",
                    name.value
                ),
            ));
        }
    }
    let late_policy = match get("late.policy") {
        None if get("dead-letter.topic").is_some() => LatePolicy::DeadLetter,
        None => LatePolicy::Drop,
        Some(v) => match v.value.as_str() {
            "drop" => LatePolicy::Drop,
            "dead-letter" if get("dead-letter.topic").is_some() => LatePolicy::DeadLetter,
            "dead-letter" => {
                return Err(Located::new(
                    v.pos,
                    format!(
                        "'late.policy' = 'dead-letter' needs a 'dead-letter.topic' on table {}",
                        name.value
                    ),
                ));
            }
            other => {
                return Err(Located::new(
                    v.pos,
                    format!("'late.policy' = '{other}' is not valid: use one of drop, dead-letter"),
                ));
            }
        },
    };
    let bootstrap_servers = match &path {
        Some(_) => get("properties.bootstrap.servers")
            .map(|v| v.value.clone())
            .unwrap_or_default(),
        None => required("properties.bootstrap.servers")?.value.clone(),
    };
    let startup_mode = match one_of(
        "scan.startup.mode",
        &["earliest-offset", "latest-offset", "group-offsets"],
        "group-offsets",
    )?
    .as_str()
    {
        _ if path.is_some() => StartupMode::Earliest,
        "earliest-offset" => StartupMode::Earliest,
        "latest-offset" => StartupMode::Latest,
        _ => StartupMode::GroupOffsets,
    };
    let bounded = path.is_some()
        || one_of(
            "scan.bounded.mode",
            &["latest-offset", "unbounded"],
            "unbounded",
        )? == "latest-offset";
    // Flink's 'none' (no guarantee) is accepted for ported pipelines and gets
    // at-least-once, which keeps every promise 'none' makes.
    let delivery = match one_of(
        "sink.delivery-guarantee",
        &["at-least-once", "exactly-once", "none"],
        "at-least-once",
    )?
    .as_str()
    {
        "exactly-once" => DeliveryGuarantee::ExactlyOnce,
        _ => DeliveryGuarantee::AtLeastOnce,
    };
    let transactional = one_of("sink.transactional", &["true", "false"], "false")? == "true";
    let id_header = one_of("sink.id-header", &["true", "false"], "true")? == "true";
    if !id_header && delivery == DeliveryGuarantee::ExactlyOnce {
        return Err(Located::new(
            values["sink.id-header"].pos,
            format!(
                "'sink.id-header' = 'false' needs 'sink.delivery-guarantee' = 'at-least-once' on table {}: an exactly-once sink finds what a restarted task already wrote by that header",
                name.value
            ),
        ));
    }
    one_of(
        "json.timestamp-format.standard",
        &["ISO-8601", "SQL"],
        "ISO-8601",
    )?;
    let mut key_fields = Vec::new();
    if let Some(v) = get("key.fields") {
        for f in v.value.split(';') {
            let f = f.trim();
            if f.is_empty() {
                return Err(Located::new(
                    v.pos,
                    "'key.fields' lists column names separated by ';'",
                ));
            }
            key_fields.push(Spanned {
                value: f.to_string(),
                pos: v.pos,
            });
        }
    }
    let number = |k: &str| -> LResult<Option<u64>> {
        match values.get(k) {
            None => Ok(None),
            Some(v) => v.value.trim().parse::<u64>().map(Some).map_err(|_| {
                Located::new(
                    v.pos,
                    format!("'{k}' must be a whole number, not '{}'", v.value),
                )
            }),
        }
    };
    let partitions = number("topic.partitions")?.map(|n| n as i32);
    let embedded_generator_rate = number("embedded.generator.rate")?;
    let idle_timeout_ms = match get("scan.watermark.idle-timeout") {
        None => None,
        Some(v) => Some(parse_duration_ms(&v.value).ok_or_else(|| {
            Located::new(
                v.pos,
                format!(
                    "'{}' is not a duration: write e.g. '10s' or '500ms'",
                    v.value
                ),
            )
        })?),
    };
    let alignment_max_drift_ms = match get("scan.watermark.alignment.max-drift") {
        None => Some(DEFAULT_ALIGNMENT_MAX_DRIFT_MS),
        Some(v) if v.value.trim() == "off" => None,
        Some(v) => Some(
            parse_duration_ms(&v.value)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    Located::new(
                        v.pos,
                        format!(
                            "'{}' is not a positive duration: write e.g. '5min' or '30s', or 'off'",
                            v.value
                        ),
                    )
                })?,
        ),
    };
    let properties = values
        .iter()
        .filter_map(|(k, v)| {
            let p = k.strip_prefix("properties.")?;
            (p != "bootstrap.servers").then(|| (p.to_string(), v.value.clone()))
        })
        .collect();
    let watermark = match watermark {
        None => None,
        Some(w) => {
            let column = columns
                .iter()
                .position(|c| c.name == w.column.value)
                .ok_or_else(|| {
                    Located::new(
                        w.column.pos,
                        format!(
                            "WATERMARK FOR {}: no such column in {}",
                            w.column.value, name.value
                        ),
                    )
                })?;
            if !matches!(columns[column].data_type, DataType::Timestamp(..)) {
                return Err(Located::new(
                    w.column.pos,
                    format!(
                        "the watermark column {} must be TIMESTAMP(3)",
                        w.column.value
                    ),
                ));
            }
            Some(Watermark {
                column,
                delay_ms: w.delay_ms,
            })
        }
    };
    Ok(KafkaTable {
        name: name.value.clone(),
        pos: name.pos,
        columns,
        watermark,
        topic,
        path,
        bootstrap_servers,
        properties,
        startup_mode,
        bounded,
        dead_letter_topic: get("dead-letter.topic").map(|v| v.value.clone()),
        key_fields,
        delivery,
        partitions,
        idle_timeout_ms,
        alignment_max_drift_ms,
        embedded_generator: get("embedded.generator").map(|v| v.value.clone()),
        embedded_generator_rate,
        transactional,
        id_header,
        format,
        late_policy,
        scan_table,
        primary_key: key_columns,
    })
}
