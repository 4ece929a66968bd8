//! Arrow `RecordBatch` -> JSON record values (and keys) for a Kafka sink.
//!
//! The whole batch is written by arrow-json's line-delimited writer into one
//! buffer; each record is a slice of it. TIMESTAMP(3) columns are written as
//! ISO-8601 UTC strings (`2026-01-01T00:01:00Z`).

use std::sync::Arc;

use arrow_json::writer::{LineDelimited, WriterBuilder};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// One batch's records: values (and keys) as ranges of shared buffers.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    pub values: Vec<u8>,
    pub value_spans: Vec<(usize, usize)>,
    pub keys: Vec<u8>,
    /// Empty when the sink has no key; None for a null key.
    pub key_spans: Vec<Option<(usize, usize)>>,
}

impl EncodedBatch {
    pub fn len(&self) -> usize {
        self.value_spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.value_spans.is_empty()
    }
    pub fn value(&self, i: usize) -> &[u8] {
        let (s, e) = self.value_spans[i];
        &self.values[s..e]
    }
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.key_spans
            .get(i)
            .copied()
            .flatten()
            .map(|(s, e)| &self.keys[s..e])
    }
}

pub struct JsonEncoder {
    schema: SchemaRef,
    key_columns: Vec<usize>,
    /// `'format' = 'raw'`: the value is the one column's bytes, not JSON.
    raw: bool,
}

impl JsonEncoder {
    pub fn new(schema: SchemaRef, key_columns: Vec<usize>) -> Self {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Timestamp(unit, None) => {
                        DataType::Timestamp(*unit, Some("UTC".into()))
                    }
                    t => t.clone(),
                };
                Field::new(f.name(), t, true)
            })
            .collect();
        Self {
            schema: Arc::new(Schema::new(fields)),
            key_columns,
            raw: false,
        }
    }

    /// An encoder for a `'format' = 'raw'` sink: `schema` has one STRING or
    /// BYTES column whose bytes are the record value (a null is an empty value).
    pub fn raw(schema: SchemaRef, key_columns: Vec<usize>) -> Self {
        Self {
            raw: true,
            ..Self::new(schema, key_columns)
        }
    }

    fn prepare(&self, batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    pub fn encode(&self, batch: &RecordBatch) -> anyhow::Result<EncodedBatch> {
        let batch = self.prepare(batch)?;
        let mut out = EncodedBatch::default();
        if self.raw {
            let column = cast(batch.column(0), &DataType::Binary)?;
            let bytes = column.as_binary::<i32>();
            for i in 0..bytes.len() {
                let start = out.values.len();
                if bytes.is_valid(i) {
                    out.values.extend_from_slice(bytes.value(i));
                }
                out.value_spans.push((start, out.values.len()));
            }
        } else {
            write_lines(&batch, &mut out.values, &mut out.value_spans)?;
        }
        match self.key_columns.as_slice() {
            [] => {}
            [k] => {
                let column = cast(batch.column(*k), &DataType::Utf8)?;
                let strings = column.as_string::<i32>();
                for i in 0..strings.len() {
                    if strings.is_valid(i) {
                        let start = out.keys.len();
                        out.keys.extend_from_slice(strings.value(i).as_bytes());
                        out.key_spans.push(Some((start, out.keys.len())));
                    } else {
                        out.key_spans.push(None);
                    }
                }
            }
            keys => {
                let projected = batch.project(keys)?;
                let mut spans = Vec::with_capacity(batch.num_rows());
                write_lines(&projected, &mut out.keys, &mut spans)?;
                out.key_spans.extend(spans.into_iter().map(Some));
            }
        }
        Ok(out)
    }
}

fn write_lines(
    batch: &RecordBatch,
    buf: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize)>,
) -> anyhow::Result<()> {
    let start = buf.len();
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut *buf);
        writer.write(batch)?;
        writer.finish()?;
    }
    // JSON escapes newlines inside strings, so every '\n' ends a record.
    let mut line_start = start;
    for (i, byte) in buf.iter().enumerate().skip(start) {
        if *byte == b'\n' {
            spans.push((line_start, i));
            line_start = i + 1;
        }
    }
    Ok(())
}
