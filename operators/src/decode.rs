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
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
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
        Self {
            schema,
            value_schema: Arc::new(Schema::new(value_fields)),
            layout,
            time_column: table.watermark.map(|w| w.column),
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
        let (values, mut rows) = match self.decode_values(buf, n) {
            Ok(values) => (values, (0..n).collect::<Vec<_>>()),
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
        let mut batch = RecordBatch::try_new(self.schema.clone(), columns)
            .context("building the decoded batch")?;
        // Event time is required: a record without it cannot be placed in time.
        if let Some(t) = self.time_column {
            let times = batch.column(t);
            if times.null_count() > 0 {
                let name = self.schema.field(t).name().clone();
                let mut keep = Vec::with_capacity(rows.len());
                let mut kept_rows = Vec::with_capacity(rows.len());
                for (r, &input) in rows.iter().enumerate() {
                    if times.is_null(r) {
                        bad.push(BadRecord {
                            index: input,
                            reason: format!("event-time column {name} is null or missing"),
                        });
                    } else {
                        keep.push(r as u32);
                        kept_rows.push(input);
                    }
                }
                let idx = UInt32Array::from(keep);
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<Result<Vec<_>, _>>()?;
                batch = RecordBatch::try_new(self.schema.clone(), columns)?;
                rows = kept_rows;
            }
        }
        bad.sort_by_key(|b| b.index);
        Ok(Decoded { batch, rows, bad })
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
