//! State changes as a portable log: what a task's operators wrote, in order,
//! so another machine (or this one, after losing its disk) can rebuild the
//! store. The job ships the log to a changelog topic at every checkpoint.
//!
//! A chunk is self-describing, a [`Kind::ChangelogChunk`] record:
//! ```text
//! version n_cf(varint) { name(str) }*n_cf  ops_len(varint) op*
//! op = 1 cf(varint) key(bytes) value(bytes)   put
//!    | 2 cf(varint) key(bytes)                delete
//!    | 3 cf(varint) prefix(bytes)             delete every key starting with prefix
//! ```
//! Keys are relative to the task (without its prefix), so a chunk applies to
//! the task's store wherever it runs. `ops_len`, the operations' bytes, makes
//! a chunk cut short at an operation's end an error too.

use crate::codec::{CodecError, Kind, Reader, Writer};

pub(crate) const OP_PUT: u8 = 1;
pub(crate) const OP_DELETE: u8 = 2;
pub(crate) const OP_DELETE_PREFIX: u8 = 3;

/// Encoded operations, without the chunk header.
#[derive(Default)]
pub(crate) struct OpBuffer {
    pub(crate) bytes: Vec<u8>,
}

impl OpBuffer {
    #[inline]
    pub(crate) fn push(&mut self, op: u8, cf: u16, key: &[u8], value: Option<&[u8]>) {
        let mut w = Writer::continued(&mut self.bytes);
        w.u8(op);
        w.varint(u64::from(cf));
        w.bytes(key);
        if let Some(v) = value {
            w.bytes(v);
        }
    }
}

/// The log of changes not yet taken, shared by a store's operator handles.
#[derive(Default)]
pub(crate) struct ChangeLog {
    pub(crate) enabled: bool,
    /// Encoded operations, and where each ends (chunks split at op boundaries).
    pub(crate) ops: Vec<u8>,
    pub(crate) ends: Vec<usize>,
}

impl ChangeLog {
    pub(crate) fn append(&mut self, ops: &OpBuffer, ends: &[usize]) {
        let base = self.ops.len();
        self.ops.extend_from_slice(&ops.bytes);
        self.ends.extend(ends.iter().map(|e| base + e));
    }

    /// Splits off chunks of about `max_bytes` of operations each. With
    /// `all`, the remainder too; otherwise only full chunks.
    pub(crate) fn take_chunks(
        &mut self,
        cfs: &[String],
        max_bytes: usize,
        all: bool,
    ) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut start = 0;
        let mut taken_ends = 0;
        loop {
            // The last op end within start + max_bytes (at least one op).
            let mut end = None;
            let mut i = taken_ends;
            while i < self.ends.len() {
                let e = self.ends[i];
                if e - start > max_bytes && end.is_some() {
                    break;
                }
                end = Some((i, e));
                i += 1;
            }
            let Some((i, e)) = end else { break };
            let full = i + 1 < self.ends.len() || e - start >= max_bytes;
            if !full && !all {
                break;
            }
            chunks.push(encode_chunk(cfs, &self.ops[start..e]));
            start = e;
            taken_ends = i + 1;
        }
        self.ops.drain(..start);
        self.ends.drain(..taken_ends);
        for e in &mut self.ends {
            *e -= start;
        }
        chunks
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.ops.len()
    }
}

pub(crate) fn encode_chunk(cfs: &[String], ops: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(4 + cfs.iter().map(|c| c.len() + 2).sum::<usize>() + ops.len());
    let mut w = Writer::record(&mut out, Kind::ChangelogChunk);
    w.len(cfs.len());
    for c in cfs {
        w.str(c);
    }
    w.len(ops.len());
    w.raw(ops);
    out
}

/// One decoded operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    Put(&'a str, &'a [u8], &'a [u8]),
    Delete(&'a str, &'a [u8]),
    DeletePrefix(&'a str, &'a [u8]),
}

/// Decodes a chunk into its operations.
pub(crate) fn decode_chunk(chunk: &[u8]) -> Result<Vec<Op<'_>>, CodecError> {
    let mut r = Reader::open(Kind::ChangelogChunk, chunk)?;
    let n = r.count(1)?;
    let mut cfs = Vec::with_capacity(n);
    for _ in 0..n {
        cfs.push(r.str()?);
    }
    let len_at = r.position();
    let len = r.varint()?;
    if len < r.remaining() as u64 {
        return Err(r.malformed_at(len_at, "bytes follow the chunk's operations"));
    }
    if len > r.remaining() as u64 {
        return Err(r.truncated());
    }
    let mut ops = Vec::new();
    while !r.is_empty() {
        let at = r.position();
        let op = r.u8()?;
        let cf_at = r.position();
        let cf = usize::try_from(r.varint()?)
            .ok()
            .and_then(|i| cfs.get(i).copied())
            .ok_or_else(|| r.malformed_at(cf_at, "column family index out of range"))?;
        let key = r.bytes()?;
        ops.push(match op {
            OP_PUT => Op::Put(cf, key, r.bytes()?),
            OP_DELETE => Op::Delete(cf, key),
            OP_DELETE_PREFIX => Op::DeletePrefix(cf, key),
            _ => return Err(r.malformed_at(at, "unknown changelog operation")),
        });
    }
    r.finish()?;
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An operation, its key and its value, for building logs.
    type RawOp<'a> = (u8, &'a [u8], Option<&'a [u8]>);

    fn log_with(ops: &[RawOp<'_>]) -> ChangeLog {
        let mut buf = OpBuffer::default();
        let mut ends = Vec::new();
        for (op, k, v) in ops {
            buf.push(*op, 0, k, *v);
            ends.push(buf.bytes.len());
        }
        let mut log = ChangeLog {
            enabled: true,
            ..Default::default()
        };
        log.append(&buf, &ends);
        log
    }

    #[test]
    fn chunks_split_at_operation_boundaries_and_decode_back() {
        let cfs = vec!["w".to_string()];
        let value = [7u8; 40];
        let ops: Vec<RawOp<'_>> = (0..10)
            .map(|_| (OP_PUT, b"key".as_slice(), Some(value.as_slice())))
            .chain([(OP_DELETE_PREFIX, b"k".as_slice(), None)])
            .collect();
        let mut log = log_with(&ops);
        // Each put is 1+1+(1+3)+(1+40) = 47 bytes: two per 120-byte chunk.
        // The last two puts and the 4-byte prefix delete (98 bytes) could
        // still grow, so they wait for `all`.
        let full = log.take_chunks(&cfs, 120, false);
        assert_eq!(full.len(), 4);
        assert_eq!(log.pending_bytes(), 98);
        let rest = log.take_chunks(&cfs, 120, true);
        assert_eq!(rest.len(), 1);
        assert_eq!(log.pending_bytes(), 0);
        let mut puts = 0;
        let mut deletes = 0;
        for c in full.iter().chain(&rest) {
            for op in decode_chunk(c).unwrap() {
                match op {
                    Op::Put(cf, k, v) => {
                        assert_eq!((cf, k, v), ("w", b"key".as_slice(), value.as_slice()));
                        puts += 1;
                    }
                    Op::DeletePrefix(_, p) => {
                        assert_eq!(p, b"k");
                        deletes += 1;
                    }
                    Op::Delete(..) => unreachable!(),
                }
            }
        }
        assert_eq!((puts, deletes), (10, 1));
    }

    #[test]
    fn a_truncated_chunk_is_an_error_not_a_panic() {
        let cfs = vec!["w".to_string()];
        let mut log = log_with(&[(OP_PUT, b"abc", Some(b"v"))]);
        let chunk = log.take_chunks(&cfs, 1 << 20, true).remove(0);
        // The header says how many bytes of operations follow, so a chunk
        // cut anywhere, even right after the header or an operation, is an
        // error.
        for cut in 0..chunk.len() {
            assert!(decode_chunk(&chunk[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_chunk(&chunk).unwrap().len(), 1);
    }

    fn op() -> impl Strategy<Value = (u8, u16, Vec<u8>, Vec<u8>)> {
        (
            prop_oneof![Just(OP_PUT), Just(OP_DELETE), Just(OP_DELETE_PREFIX)],
            0u16..3,
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
    }

    fn expected<'a>(cfs: &'a [String], (op, cf, k, v): &'a (u8, u16, Vec<u8>, Vec<u8>)) -> Op<'a> {
        let cf = cfs[*cf as usize].as_str();
        match *op {
            OP_PUT => Op::Put(cf, k, v),
            OP_DELETE => Op::Delete(cf, k),
            _ => Op::DeletePrefix(cf, k),
        }
    }

    proptest! {
        #[test]
        fn chunks_round_trip(
            ops in proptest::collection::vec(op(), 0..40),
            max_bytes in 1usize..2000,
        ) {
            let cfs = vec!["flow0.op1".to_string(), "w".to_string(), "é".to_string()];
            let mut buf = OpBuffer::default();
            let mut ends = Vec::new();
            for (op, cf, k, v) in &ops {
                buf.push(*op, *cf, k, (*op == OP_PUT).then_some(v.as_slice()));
                ends.push(buf.bytes.len());
            }
            let mut log = ChangeLog { enabled: true, ..Default::default() };
            log.append(&buf, &ends);
            let chunks = log.take_chunks(&cfs, max_bytes, true);
            let mut decoded = Vec::new();
            for c in &chunks {
                decoded.extend(decode_chunk(c).unwrap());
            }
            let want: Vec<Op<'_>> = ops.iter().map(|o| expected(&cfs, o)).collect();
            prop_assert_eq!(decoded, want);
            // Every cut of a chunk is refused, without a panic.
            if let Some(c) = chunks.first() {
                for cut in 0..c.len() {
                    prop_assert!(decode_chunk(&c[..cut]).is_err());
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_a_chunk(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = decode_chunk(&bytes);
            if let Some(b) = bytes.first_mut() {
                *b = Kind::ChangelogChunk.version();
            }
            let _ = decode_chunk(&bytes);
        }
    }

    #[test]
    fn a_chunk_of_another_version_is_refused_by_name() {
        let mut chunk = encode_chunk(&["w".to_string()], &[]);
        chunk[0] = 1;
        let err = decode_chunk(&chunk).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Version {
                kind: Kind::ChangelogChunk,
                found: 1,
                supported: 2
            }
        ));
        assert!(
            err.to_string()
                .starts_with("changelog chunk record has format version 1")
        );
    }
}
