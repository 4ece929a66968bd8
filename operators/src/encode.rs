//! Arrow `RecordBatch` -> JSON record values (and keys) for a Kafka sink.
//!
//! The whole batch is written by arrow-json's encoders into one buffer, row
//! after row; each record is a slice of it. TIMESTAMP(3) columns are written
//! as ISO-8601 UTC strings (`2026-01-01T00:01:00Z`), as arrow-json writes
//! them, by an encoder of weir's that formats each value once per run of
//! equal values ([`Timestamps`]).

use std::io::Write;
use std::sync::Arc;

use arrow_json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder, make_encoder};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StructArray, temporal_conversions::as_datetime,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::error::ArrowError;

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
    options: EncoderOptions,
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
            options: EncoderOptions::default()
                .with_explicit_nulls(true)
                .with_encoder_factory(Arc::new(Timestamps)),
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
            write_lines(&batch, &self.options, &mut out.values, &mut out.value_spans)?;
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
                write_lines(&projected, &self.options, &mut out.keys, &mut spans)?;
                out.key_spans.extend(spans.into_iter().map(Some));
            }
        }
        Ok(out)
    }
}

/// Appends each row of `batch` to `buf` as a JSON object, and its span to
/// `spans`.
fn write_lines(
    batch: &RecordBatch,
    options: &EncoderOptions,
    buf: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize)>,
) -> anyhow::Result<()> {
    // As arrow-json's writer does, without its staging buffer and newlines.
    let array = StructArray::from(batch.clone());
    let field: FieldRef = Arc::new(Field::new_struct(
        "",
        batch.schema().fields().clone(),
        false,
    ));
    let mut encoder = make_encoder(&field, &array, options)?;
    spans.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        let start = buf.len();
        encoder.encode(row, buf);
        spans.push((start, buf.len()));
    }
    Ok(())
}

/// Writes UTC TIMESTAMP columns as arrow-json does (`"2026-01-01T00:01:00Z"`,
/// fractional seconds only when not zero, in 3, 6 or 9 digits), formatting a
/// value once per run of equal values: the rows a window fires share its
/// bounds (with the direct encoding of `write_lines`, a HOP query's results
/// encode 2.4x as fast; BENCHMARKS.md). Values outside years 0-9999 are left
/// to arrow-json.
#[derive(Debug)]
struct Timestamps;

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in seconds.
const YEAR_0: i64 = -62_167_219_200;
const YEAR_10000: i64 = 253_402_300_800;

impl EncoderFactory for Timestamps {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let DataType::Timestamp(unit, Some(tz)) = array.data_type() else {
            return Ok(None);
        };
        if tz.as_ref() != "UTC" {
            return Ok(None);
        }
        let (values, per_second) = match unit {
            TimeUnit::Second => (array.as_primitive::<TimestampSecondType>().values(), 1),
            TimeUnit::Millisecond => (
                array.as_primitive::<TimestampMillisecondType>().values(),
                1_000,
            ),
            TimeUnit::Microsecond => (
                array.as_primitive::<TimestampMicrosecondType>().values(),
                1_000_000,
            ),
            TimeUnit::Nanosecond => (
                array.as_primitive::<TimestampNanosecondType>().values(),
                1_000_000_000,
            ),
        };
        let nulls = array.nulls();
        let in_range = values.iter().enumerate().all(|(i, v)| {
            nulls.is_some_and(|n| n.is_null(i))
                || (YEAR_0..YEAR_10000).contains(&v.div_euclid(per_second))
        });
        if !in_range {
            return Ok(None);
        }
        let encoder = TimestampEncoder {
            values,
            unit: *unit,
            last: None,
            text: Vec::new(),
        };
        Ok(Some(NullableEncoder::new(
            Box::new(encoder),
            nulls.cloned(),
        )))
    }
}

struct TimestampEncoder<'a> {
    values: &'a [i64],
    unit: TimeUnit,
    /// The value last formatted, and its text (quoted).
    last: Option<i64>,
    text: Vec<u8>,
}

impl Encoder for TimestampEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = self.values[idx];
        if self.last != Some(v) {
            let datetime = match self.unit {
                TimeUnit::Second => as_datetime::<TimestampSecondType>(v),
                TimeUnit::Millisecond => as_datetime::<TimestampMillisecondType>(v),
                TimeUnit::Microsecond => as_datetime::<TimestampMicrosecondType>(v),
                TimeUnit::Nanosecond => as_datetime::<TimestampNanosecondType>(v),
            }
            .expect("a timestamp in years 0-9999 (checked when the encoder was made)");
            self.text.clear();
            // chrono's Debug form is RFC 3339 without the offset, with
            // fractional seconds as chrono's `SecondsFormat::AutoSi` writes
            // them, which is what arrow-json writes (before the `Z`).
            write!(self.text, "\"{datetime:?}Z\"").expect("writing to a Vec");
            self.last = Some(v);
        }
        out.extend_from_slice(&self.text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_json::writer::{LineDelimited, WriterBuilder};
    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
        TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
    };

    /// arrow-json's line-delimited writer on the same (prepared) batch.
    fn arrow_json_lines(encoder: &JsonEncoder, batch: &RecordBatch) -> Vec<String> {
        let batch = encoder.prepare(batch).unwrap();
        let mut buf = Vec::new();
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut buf);
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn values(encoded: &EncodedBatch) -> Vec<String> {
        (0..encoded.len())
            .map(|i| String::from_utf8(encoded.value(i).to_vec()).unwrap())
            .collect()
    }

    /// Milliseconds of 1970-01-01 plus `days`.
    fn day(days: i64) -> i64 {
        days * 86_400_000
    }

    #[test]
    fn writes_what_arrow_json_writes() {
        let ms: Vec<Option<i64>> = vec![
            Some(day(20_454) + 60_000), // 2026-01-01T00:01:00Z
            Some(day(20_454) + 60_000), // again: the cached text
            Some(day(20_454) + 60_123), // fractional
            None,
            Some(-1),                  // 1969-12-31T23:59:59.999Z
            Some(-62_167_219_200_000), // 0000-01-01
            Some(253_402_300_799_999), // 9999-12-31T23:59:59.999Z
            Some(0),
            Some(day(20_454) + 60_000), // after others: formatted again
        ];
        let n = ms.len();
        let strings = [
            Some("card-1"),
            Some("quo\"te\\back\nline"),
            Some("ünï\u{1}cödé"),
            None,
            Some(""),
            Some("tab\t"),
            Some("😀"),
            Some("x"),
            Some("y"),
        ];
        let floats = [
            Some(0.1),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(-0.0),
            Some(1e21),
            None,
            Some(123_456.789),
            Some(5e-324),
            Some(-2.5),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("card_id", DataType::Utf8, true),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("n", DataType::Int64, true),
            Field::new("avg", DataType::Float64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("s", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(strings.to_vec())),
            Arc::new(TimestampMillisecondArray::from(ms.clone())),
            Arc::new(Int64Array::from(
                (0..n as i64)
                    .map(|i| (i != 3).then_some(i64::MIN + i * 7))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(floats.to_vec())),
            Arc::new(BooleanArray::from(
                (0..n)
                    .map(|i| (i != 5).then_some(i % 2 == 0))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampSecondArray::from(
                ms.iter()
                    .map(|v| v.map(|v| v.div_euclid(1000)))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(
                ms.iter()
                    .enumerate()
                    .map(|(i, v)| v.map(|v| v * 1000 + i as i64 % 2))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampNanosecondArray::from(
                (0..n as i64)
                    .map(|i| Some(1_700_000_000_000_000_000 + i * 1_000_001 - (i % 3) * 1_000))
                    .collect::<Vec<_>>(),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns.clone()).unwrap();
        let encoder = JsonEncoder::new(schema.clone(), vec![0, 1]);
        let encoded = encoder.encode(&batch).unwrap();
        let expected = arrow_json_lines(&encoder, &batch);
        assert_eq!(values(&encoded), expected);
        assert!(expected[0].contains(r#""window_end":"2026-01-01T00:01:00Z""#));
        assert!(expected[2].contains(r#""window_end":"2026-01-01T00:01:00.123Z""#));
        // Keys of two columns are JSON objects too.
        let projected = batch.project(&[0, 1]).unwrap();
        let keys = arrow_json_lines(&JsonEncoder::new(projected.schema(), vec![]), &projected);
        let got: Vec<String> = (0..n)
            .map(|i| String::from_utf8(encoded.key(i).unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(got, keys);

        // Years arrow-json writes otherwise (a sign, five digits) are left to it.
        let outside = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            )])),
            vec![Arc::new(TimestampMillisecondArray::from(vec![
                Some(253_402_300_800_000),
                Some(-62_167_219_200_001),
                Some(0),
            ]))],
        )
        .unwrap();
        let encoder = JsonEncoder::new(outside.schema(), vec![]);
        assert_eq!(
            values(&encoder.encode(&outside).unwrap()),
            arrow_json_lines(&encoder, &outside)
        );
    }
}
