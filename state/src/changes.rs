//! State changes as a portable log: what a task's operators wrote, in order,
//! so another machine (or this one, after losing its disk) can rebuild the
//! store. The job ships the log to a changelog topic at every checkpoint.
//!
//! A chunk is self-describing:
//! ```text
//! version(u8) n_cf(u16 BE) { len(u16 BE) name }*n_cf  op*
//! op = 1 cf(u16) klen(u32) key vlen(u32) value      put
//!    | 2 cf(u16) klen(u32) key                      delete
//!    | 3 cf(u16) plen(u32) prefix                   delete every key starting with prefix
//! ```
//! Keys are relative to the task (without its prefix), so a chunk applies to
//! the task's store wherever it runs.

use crate::store::StateError;

const VERSION: u8 = 1;
pub(crate) const OP_PUT: u8 = 1;
pub(crate) const OP_DELETE: u8 = 2;
pub(crate) const OP_DELETE_PREFIX: u8 = 3;

/// Encoded operations, without the chunk header.
#[derive(Default)]
pub(crate) struct OpBuffer {
    pub(crate) bytes: Vec<u8>,
}

impl OpBuffer {
    pub(crate) fn push(&mut self, op: u8, cf: u16, key: &[u8], value: Option<&[u8]>) {
        self.bytes.push(op);
        self.bytes.extend_from_slice(&cf.to_be_bytes());
        self.bytes
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(key);
        if let Some(v) = value {
            self.bytes
                .extend_from_slice(&(v.len() as u32).to_be_bytes());
            self.bytes.extend_from_slice(v);
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
        Vec::with_capacity(3 + cfs.iter().map(|c| c.len() + 2).sum::<usize>() + ops.len());
    out.push(VERSION);
    out.extend_from_slice(&(cfs.len() as u16).to_be_bytes());
    for c in cfs {
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(ops);
    out
}

/// One decoded operation.
pub(crate) enum Op<'a> {
    Put(&'a str, &'a [u8], &'a [u8]),
    Delete(&'a str, &'a [u8]),
    DeletePrefix(&'a str, &'a [u8]),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| StateError::Corrupt("changelog chunk is truncated".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<usize, StateError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
}

/// Decodes a chunk into its operations.
pub(crate) fn decode_chunk(chunk: &[u8]) -> Result<Vec<Op<'_>>, StateError> {
    let mut r = Reader {
        bytes: chunk,
        at: 0,
    };
    let version = r.u8()?;
    if version != VERSION {
        return Err(StateError::Corrupt(format!(
            "changelog chunk format {version} is not one this weir reads ({VERSION})"
        )));
    }
    let n = r.u16()? as usize;
    let mut cfs = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| StateError::Corrupt("column family name is not UTF-8".into()))?;
        cfs.push(name);
    }
    let mut ops = Vec::new();
    while r.at < chunk.len() {
        let op = r.u8()?;
        let cf = *cfs
            .get(r.u16()? as usize)
            .ok_or_else(|| StateError::Corrupt("column family index out of range".into()))?;
        let klen = r.u32()?;
        let key = r.take(klen)?;
        ops.push(match op {
            OP_PUT => {
                let vlen = r.u32()?;
                Op::Put(cf, key, r.take(vlen)?)
            }
            OP_DELETE => Op::Delete(cf, key),
            OP_DELETE_PREFIX => Op::DeletePrefix(cf, key),
            other => {
                return Err(StateError::Corrupt(format!(
                    "unknown changelog operation {other}"
                )));
            }
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Each put is 1+2+4+3+4+40 = 54 bytes: two per 120-byte chunk. The
        // last two puts and the 8-byte prefix delete (116 bytes) could still
        // grow, so they wait for `all`.
        let full = log.take_chunks(&cfs, 120, false);
        assert_eq!(full.len(), 4);
        assert_eq!(log.pending_bytes(), 116);
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
        // The header (version, one column family "w") is 6 bytes: a chunk cut
        // right after it holds no operations; every other cut is an error.
        for cut in 0..chunk.len() {
            assert_eq!(
                decode_chunk(&chunk[..cut]).is_ok(),
                cut == 6,
                "cut at {cut}"
            );
        }
        assert_eq!(decode_chunk(&chunk).unwrap().len(), 1);
    }
}
