//! Input records as the decoder takes them: values back to back in one
//! buffer, each followed by a newline, with each value's range and where it
//! came from. Kafka input, file input and the repartitioning map task all
//! fill one of these per batch.

use rdkafka::message::{BorrowedMessage, Message};
use weir_operators::RecordMeta;

#[derive(Debug, Default)]
pub struct RawBatch {
    pub buf: Vec<u8>,
    /// Each record's value: `buf[start..end]`.
    pub spans: Vec<(usize, usize)>,
    /// Each record's partition, offset, timestamp and key.
    pub metas: Vec<RecordMeta>,
}

impl RawBatch {
    pub fn with_capacity(records: usize) -> Self {
        Self {
            buf: Vec::with_capacity(1 << 20),
            spans: Vec::with_capacity(records),
            metas: Vec::with_capacity(records),
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
        self.metas.clear();
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The value of record `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        let (start, end) = self.spans[i];
        &self.buf[start..end]
    }

    /// Appends a Kafka record.
    pub fn push(&mut self, m: &BorrowedMessage<'_>) {
        self.push_value(
            m.payload().unwrap_or_default(),
            RecordMeta {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(Into::into),
            },
        );
    }

    /// Appends a record's value and where it came from.
    pub fn push_value(&mut self, value: &[u8], meta: RecordMeta) {
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.spans.push((start, self.buf.len()));
        self.buf.push(b'\n');
        self.metas.push(meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_newline_separated_and_addressable() {
        let mut b = RawBatch::with_capacity(2);
        b.push_value(b"{\"a\":1}", RecordMeta::default());
        b.push_value(
            b"",
            RecordMeta {
                offset: 7,
                ..Default::default()
            },
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b.buf, b"{\"a\":1}\n\n");
        assert_eq!(b.value(0), b"{\"a\":1}");
        assert_eq!(b.value(1), b"");
        assert_eq!(b.metas[1].offset, 7);
        b.clear();
        assert!(b.is_empty() && b.buf.is_empty());
    }
}
