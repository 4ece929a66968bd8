//! JSON records -> one Arrow `RecordBatch`, with bad records set aside.
//!
//! The fast path hands the whole fetch (payloads joined by newlines) to
//! arrow-json's `Decoder` once. Only when that fails does it fall back to one
//! record at a time, to find which records are bad; the good ones are then
//! decoded together again. A bad record never takes its batch down with it.

use std::sync::Arc;

use anyhow::Context as _;
use arrow_json::ReaderBuilder;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_sql::{KafkaTable, MetadataKind};

/// What a Kafka record carries besides its value.
#[derive(Debug, Clone, Default)]
pub struct RecordMeta {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Box<[u8]>>,
}

#[derive(Debug, Clone)]
pub struct BadRecord {
    /// Index of the record in the decoded input.
    pub index: usize,
    pub reason: String,
}

pub struct Decoded {
    pub batch: RecordBatch,
    /// For each output row, the index of its input record.
    pub rows: Vec<usize>,
    pub bad: Vec<BadRecord>,
}

enum ColumnSource {
    Value(usize),
    Meta(MetadataKind),
}

pub struct JsonDecoder {
    schema: SchemaRef,
    value_schema: SchemaRef,
    layout: Vec<ColumnSource>,
    time_column: Option<usize>,
    /// Columns a record must have: the event time and NOT NULL columns.
    required: Vec<usize>,
    /// `'format' = 'raw'`: the value is the one physical column.
    raw: bool,
}

impl JsonDecoder {
    pub fn new(table: &KafkaTable) -> Self {
        let schema = table.schema();
        let mut value_fields = Vec::new();
        let mut layout = Vec::new();
        for c in &table.columns {
            match c.metadata {
                Some(kind) => layout.push(ColumnSource::Meta(kind)),
                None => {
                    layout.push(ColumnSource::Value(value_fields.len()));
                    // Nullable while decoding: a missing field is null, and a null
                    // event time is reported as a bad record rather than an error.
                    value_fields.push(Field::new(&c.name, c.data_type.clone(), true));
                }
            }
        }
        let time_column = table.watermark.map(|w| w.column);
        let required = (0..table.columns.len())
            .filter(|&c| Some(c) == time_column || !table.columns[c].nullable)
            .collect();
        Self {
            schema,
            value_schema: Arc::new(Schema::new(value_fields)),
            layout,
            time_column,
            required,
            raw: table.format == weir_sql::Format::Raw,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes the records `spans` (ranges of `buf`, one JSON value each).
    pub fn decode(
        &self,
        buf: &[u8],
        spans: &[(usize, usize)],
        meta: &[RecordMeta],
    ) -> anyhow::Result<Decoded> {
        let n = spans.len();
        let mut bad = Vec::new();
        let decoded = if self.raw {
            Ok(self.decode_raw(buf, spans, &mut bad)?)
        } else {
            self.decode_records(buf, spans)
                .map(|values| (values, (0..n).collect::<Vec<_>>()))
        };
        let (values, mut rows) = match decoded {
            Ok(decoded) => decoded,
            Err(_) => {
                // Find the bad records one by one, then decode the good ones together.
                let mut good = Vec::with_capacity(n);
                let mut joined = Vec::with_capacity(buf.len());
                for (i, &(start, end)) in spans.iter().enumerate() {
                    let one = &buf[start..end];
                    match self.decode_values(one, 1) {
                        Ok(_) => {
                            joined.extend_from_slice(one);
                            joined.push(b'\n');
                            good.push(i);
                        }
                        Err(e) => bad.push(BadRecord {
                            index: i,
                            reason: e.to_string(),
                        }),
                    }
                }
                let values = self
                    .decode_values(&joined, good.len())
                    .context("records that decode one by one failed together")?;
                (values, good)
            }
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.layout.len());
        for source in &self.layout {
            columns.push(match source {
                ColumnSource::Value(i) => values.column(*i).clone(),
                ColumnSource::Meta(kind) => meta_column(*kind, &rows, meta),
            });
        }
        // Event time and NOT NULL columns are required: a record without them
        // is bad, not a reason to fail the batch.
        if self.required.iter().any(|&c| columns[c].null_count() > 0) {
            let mut keep = Vec::with_capacity(rows.len());
            let mut kept_rows = Vec::with_capacity(rows.len());
            for (r, &input) in rows.iter().enumerate() {
                match self.required.iter().find(|&&c| columns[c].is_null(r)) {
                    Some(&c) => bad.push(BadRecord {
                        index: input,
                        reason: if Some(c) == self.time_column {
                            format!(
                                "event-time column {} is null or missing",
                                self.schema.field(c).name()
                            )
                        } else {
                            format!(
                                "NOT NULL column {} is null or missing",
                                self.schema.field(c).name()
                            )
                        },
                    }),
                    None => {
                        keep.push(r as u32);
                        kept_rows.push(input);
                    }
                }
            }
            let idx = UInt32Array::from(keep);
            columns = columns
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            rows = kept_rows;
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .context("building the decoded batch")?;
        bad.sort_by_key(|b| b.index);
        Ok(Decoded { batch, rows, bad })
    }

    /// `'format' = 'raw'`: each value as the one physical column (records
    /// that are not UTF-8 are bad for a STRING column).
    fn decode_raw(
        &self,
        buf: &[u8],
        spans: &[(usize, usize)],
        bad: &mut Vec<BadRecord>,
    ) -> anyhow::Result<(RecordBatch, Vec<usize>)> {
        let field = self
            .value_schema
            .fields()
            .first()
            .context("a raw table has one physical column")?;
        let mut rows = Vec::with_capacity(spans.len());
        let column: ArrayRef = match field.data_type() {
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(spans.len(), buf.len());
                for (i, &(start, end)) in spans.iter().enumerate() {
                    match std::str::from_utf8(&buf[start..end]) {
                        Ok(s) => {
                            b.append_value(s);
                            rows.push(i);
                        }
                        Err(e) => bad.push(BadRecord {
                            index: i,
                            reason: format!(
                                "the value is not UTF-8 text ({e}) for STRING column {}",
                                field.name()
                            ),
                        }),
                    }
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = BinaryBuilder::with_capacity(spans.len(), buf.len());
                for (i, &(start, end)) in spans.iter().enumerate() {
                    b.append_value(&buf[start..end]);
                    rows.push(i);
                }
                Arc::new(b.finish())
            }
        };
        let batch = RecordBatch::try_new(self.value_schema.clone(), vec![column])?;
        Ok((batch, rows))
    }

    /// Decodes every span with one decoder, checking that each holds exactly one
    /// JSON value, or fails.
    fn decode_records(&self, buf: &[u8], spans: &[(usize, usize)]) -> anyhow::Result<RecordBatch> {
        let mut decoder = ReaderBuilder::new(self.value_schema.clone())
            .with_batch_size(spans.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        for (i, &(start, end)) in spans.iter().enumerate() {
            let record = &buf[start..end];
            let read = decoder.decode(record)?;
            if read != record.len() || decoder.len() != i + 1 || decoder.has_partial_record() {
                anyhow::bail!("record {i} is not exactly one JSON object");
            }
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.value_schema.clone())))
    }

    /// Decodes exactly `expected` JSON values from `buf`, or fails.
    fn decode_values(&self, buf: &[u8], expected: usize) -> anyhow::Result<RecordBatch> {
        let mut decoder = ReaderBuilder::new(self.value_schema.clone())
            .with_batch_size(expected.max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        let mut consumed = 0;
        while consumed < buf.len() {
            let read = decoder.decode(&buf[consumed..])?;
            if read == 0 {
                // The decoder is full: more values than records.
                anyhow::bail!("expected one JSON object per record, found more");
            }
            consumed += read;
        }
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.value_schema.clone()));
        if batch.num_rows() != expected {
            anyhow::bail!(
                "expected one JSON object per record, found {} for {expected}",
                batch.num_rows()
            );
        }
        Ok(batch)
    }
}

fn meta_column(kind: MetadataKind, rows: &[usize], meta: &[RecordMeta]) -> ArrayRef {
    match kind {
        MetadataKind::Partition => Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| meta[*r].partition),
        )),
        MetadataKind::Offset => Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| meta[*r].offset),
        )),
        MetadataKind::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
            rows.iter().map(|r| meta[*r].timestamp),
        )),
        MetadataKind::Key => Arc::new(StringArray::from_iter(rows.iter().map(|r| {
            meta[*r]
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
        }))),
    }
}
