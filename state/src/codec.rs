//! The binary form of the records weir persists: changelog chunks and the
//! values operators keep in the store.
//!
//! Every record starts with its format version, one byte, which its [`Kind`]
//! names: a reader opens a record with [`Reader::open`], which accepts the
//! versions this weir reads ([`Kind::reads`]) and refuses others with a
//! message ([`CodecError::Version`]), so state written by another weir is
//! read or refused, never misread. Version 0 is never written. After the
//! version come fields, written by a [`Writer`] and read back in the same
//! order by a [`Reader`]:
//! ```text
//! u8, bool          one byte (a bool is 0 or 1, anything else is refused)
//! varint            LEB128 u64: 7 bits a byte, low bits first (counts, lengths)
//! u64, i64, f64     8 bytes, little-endian (f64: its bits)
//! bytes, str        varint length, then the bytes (str: UTF-8)
//! raw               bytes whose length the reader knows (a row id)
//! ```
//! A reader never trusts a length: one longer than the bytes left is an
//! error, and a count of items is checked against what the bytes left could
//! hold before anything is allocated for it ([`Reader::count`]).
//!
//! Store keys are not records: their byte order is their scan order, so they
//! carry no version. What they share is in [`key`].

use std::fmt;
use std::ops::RangeInclusive;

/// Names the layout of a task's state as a whole; the plan fingerprint hashes
/// it, so a checkpoint or changelog written under another layout is refused.
/// Bumped when a record format or the key layout changes.
pub const LAYOUT: &str = "weir-state-v3";

/// What a record holds, and so which format versions read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A chunk of state changes, shipped to the changelog topic.
    ChangelogChunk,
    /// A TUMBLE/HOP/CUMULATE pane's groups, as a checkpoint copied them.
    WindowSegment,
    /// A SESSION partition key's sessions.
    Sessions,
    /// An OVER partition key's history and pending rows.
    OverKey,
    /// A lookup-join table key's versions.
    TableVersions,
    /// The watermark a lookup join has given downstream.
    JoinWatermark,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ChangelogChunk,
        Kind::WindowSegment,
        Kind::Sessions,
        Kind::OverKey,
        Kind::TableVersions,
        Kind::JoinWatermark,
    ];

    /// The format version this weir writes. Version 1 of the changelog
    /// chunk, sessions and OVER key state had fixed-width lengths and no
    /// shared codec; they are not read.
    #[inline]
    pub const fn version(self) -> u8 {
        match self {
            Kind::ChangelogChunk | Kind::Sessions | Kind::OverKey => 2,
            Kind::WindowSegment | Kind::TableVersions | Kind::JoinWatermark => 1,
        }
    }

    /// The format versions this weir reads: when a format changes, a reader
    /// that still understands the old one widens this and branches on
    /// [`Reader::version`].
    #[inline]
    pub const fn reads(self) -> RangeInclusive<u8> {
        self.version()..=self.version()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::ChangelogChunk => "changelog chunk",
            Kind::WindowSegment => "window segment",
            Kind::Sessions => "session state",
            Kind::OverKey => "OVER key state",
            Kind::TableVersions => "lookup table versions",
            Kind::JoinWatermark => "join watermark",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(
        "{kind} record has format version {found}; this weir reads version {supported}: {}",
        version_hint(*.found)
    )]
    Version {
        kind: Kind,
        found: u8,
        supported: u8,
    },
    #[error(
        "{kind} record (format version {version}) ends early, at byte {at}: the state is damaged; delete the state directory and changelog topic to start over"
    )]
    Truncated { kind: Kind, version: u8, at: usize },
    #[error(
        "{kind} record (format version {version}) is malformed at byte {at}: {what}; the state is damaged, or was written for another plan; delete the state directory and changelog topic to start over"
    )]
    Malformed {
        kind: Kind,
        version: u8,
        at: usize,
        what: &'static str,
    },
}

fn version_hint(found: u8) -> &'static str {
    if found == 0 {
        "weir never writes version 0, so the state is damaged or not weir's; delete the state directory and changelog topic to start over"
    } else {
        "it was written by another version of weir; delete the state directory and changelog topic, or run that version"
    }
}

/// Appends fields to a record.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Starts a record of `kind` at the end of `buf`: writes its version.
    #[inline]
    pub fn record(buf: &'a mut Vec<u8>, kind: Kind) -> Self {
        buf.push(kind.version());
        Self { buf }
    }

    /// Appends to a record already started in `buf` (or to a run of fields
    /// that becomes part of one, such as a chunk's operations).
    #[inline]
    pub fn continued(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    #[inline]
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A count or length, as a varint.
    #[inline]
    pub fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// Length-prefixed bytes.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Bytes without a length: the reader knows how many ([`Reader::raw`]).
    #[inline]
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads a record's fields, in the order they were written.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    kind: Kind,
    version: u8,
    bytes: &'a [u8],
    /// Where the next field starts; never past `bytes.len()`.
    at: usize,
}

impl<'a> Reader<'a> {
    /// Opens a record of `kind`: checks its version.
    pub fn open(kind: Kind, bytes: &'a [u8]) -> Result<Self, CodecError> {
        let Some(&found) = bytes.first() else {
            return Err(CodecError::Truncated {
                kind,
                version: 0,
                at: 0,
            });
        };
        if found == 0 || !kind.reads().contains(&found) {
            return Err(CodecError::Version {
                kind,
                found,
                supported: kind.version(),
            });
        }
        Ok(Self {
            kind,
            version: found,
            bytes,
            at: 1,
        })
    }

    /// The record's format version.
    #[inline]
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Where the next field starts, in bytes from the record's start.
    #[inline]
    pub fn position(&self) -> usize {
        self.at
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Whether every field has been read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The error for a record cut short at the current position.
    #[cold]
    pub fn truncated(&self) -> CodecError {
        CodecError::Truncated {
            kind: self.kind,
            version: self.version,
            at: self.at,
        }
    }

    /// The error for a field at `at` (a [`Reader::position`]) that makes no sense.
    #[cold]
    pub fn malformed_at(&self, at: usize, what: &'static str) -> CodecError {
        CodecError::Malformed {
            kind: self.kind,
            version: self.version,
            at,
            what,
        }
    }

    /// The error for the field just read.
    #[cold]
    pub fn malformed(&self, what: &'static str) -> CodecError {
        self.malformed_at(self.at, what)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.take(N)?;
        Ok(s.try_into().expect("take returns N bytes"))
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed_at(self.at - 1, "a flag is neither 0 nor 1")),
        }
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.at;
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(self.malformed_at(start, "a number does not fit in 64 bits"));
            }
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// A length of bytes: at most the bytes left.
    #[inline]
    fn length(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(self.truncated()),
        }
    }

    /// A count of items each at least `min_item_bytes` long: refused if the
    /// bytes left cannot hold that many, so it is safe to allocate for.
    #[inline]
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, CodecError> {
        let n = self.varint()?;
        let most = self.remaining() / min_item_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= most => Ok(n),
            _ => Err(self.truncated()),
        }
    }

    #[inline]
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    #[inline]
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    #[inline]
    pub fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// Length-prefixed bytes, borrowed from the record.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.length()?;
        self.take(n)
    }

    #[inline]
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let at = self.at;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.malformed_at(at, "a string is not UTF-8"))
    }

    /// `n` bytes written without a length.
    #[inline]
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        self.take(n)
    }

    /// Ends the record: bytes left over are an error.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("bytes follow the end of the record"))
        }
    }
}

/// The parts of store keys that several operators share. Keys carry no
/// version (their byte order is their scan order): a change to them changes
/// [`LAYOUT`].
pub mod key {
    /// A stored key that is too short or otherwise not as written.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error(
        "a stored {what} key of {len} bytes is malformed: the state is damaged; delete the state directory and changelog topic to start over"
    )]
    pub struct KeyError {
        pub what: &'static str,
        pub len: usize,
    }

    /// `v` as 8 bytes whose byte order is the numbers' order (the sign bit
    /// flipped, big-endian).
    #[inline]
    pub fn i64_bytes(v: i64) -> [u8; 8] {
        ((v as u64) ^ (1 << 63)).to_be_bytes()
    }

    /// The inverse of [`i64_bytes`].
    #[inline]
    pub fn i64_from(b: [u8; 8]) -> i64 {
        (u64::from_be_bytes(b) ^ (1 << 63)) as i64
    }

    /// The `N` bytes of `key` at `at`; `what` names the key in the error.
    #[inline]
    pub fn field<const N: usize>(
        key: &[u8],
        at: usize,
        what: &'static str,
    ) -> Result<[u8; N], KeyError> {
        key.get(at..)
            .and_then(|k| k.get(..N))
            .map(|b| b.try_into().expect("N bytes"))
            .ok_or(KeyError {
                what,
                len: key.len(),
            })
    }

    /// The order-preserving i64 of `key` at `at` ([`i64_bytes`]).
    #[inline]
    pub fn i64_at(key: &[u8], at: usize, what: &'static str) -> Result<i64, KeyError> {
        field(key, at, what).map(i64_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Field {
        U8(u8),
        Bool(bool),
        Varint(u64),
        U64(u64),
        I64(i64),
        F64(f64),
        Bytes(Vec<u8>),
        Str(String),
        Raw(Vec<u8>),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            any::<u8>().prop_map(Field::U8),
            any::<bool>().prop_map(Field::Bool),
            any::<u64>().prop_map(Field::Varint),
            (0u64..300).prop_map(Field::Varint),
            any::<u64>().prop_map(Field::U64),
            any::<i64>().prop_map(Field::I64),
            any::<f64>().prop_map(Field::F64),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Field::Bytes),
            ".{0,12}".prop_map(Field::Str),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Field::Raw),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        proptest::sample::select(Kind::ALL.to_vec())
    }

    fn write(kind: Kind, fields: &[Field]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = Writer::record(&mut buf, kind);
        for f in fields {
            match f {
                Field::U8(v) => w.u8(*v),
                Field::Bool(v) => w.bool(*v),
                Field::Varint(v) => w.varint(*v),
                Field::U64(v) => w.u64(*v),
                Field::I64(v) => w.i64(*v),
                Field::F64(v) => w.f64(*v),
                Field::Bytes(v) => w.bytes(v),
                Field::Str(v) => w.str(v),
                Field::Raw(v) => w.raw(v),
            }
        }
        buf
    }

    /// Reads `fields`' shapes back from `bytes`.
    fn read(kind: Kind, bytes: &[u8], shapes: &[Field]) -> Result<Vec<Field>, CodecError> {
        let mut r = Reader::open(kind, bytes)?;
        let mut out = Vec::new();
        for f in shapes {
            out.push(match f {
                Field::U8(_) => Field::U8(r.u8()?),
                Field::Bool(_) => Field::Bool(r.bool()?),
                Field::Varint(_) => Field::Varint(r.varint()?),
                Field::U64(_) => Field::U64(r.u64()?),
                Field::I64(_) => Field::I64(r.i64()?),
                Field::F64(_) => Field::F64(r.f64()?),
                Field::Bytes(_) => Field::Bytes(r.bytes()?.to_vec()),
                Field::Str(_) => Field::Str(r.str()?.to_owned()),
                Field::Raw(v) => Field::Raw(r.raw(v.len())?.to_vec()),
            });
        }
        r.finish()?;
        Ok(out)
    }

    /// Compares floats by their bits (NaN reads back as the same NaN).
    fn same(a: &[Field], b: &[Field]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Field::F64(x), Field::F64(y)) => x.to_bits() == y.to_bits(),
                _ => x == y,
            })
    }

    proptest! {
        #[test]
        fn any_sequence_of_fields_reads_back_equal(
            kind in kind(),
            fields in proptest::collection::vec(field(), 0..24),
        ) {
            let bytes = write(kind, &fields);
            prop_assert_eq!(bytes[0], kind.version());
            let back = read(kind, &bytes, &fields).unwrap();
            prop_assert!(same(&back, &fields), "{:?} read back as {:?}", fields, back);
        }

        #[test]
        fn every_truncated_prefix_is_an_error(
            kind in kind(),
            fields in proptest::collection::vec(field(), 1..12),
        ) {
            let bytes = write(kind, &fields);
            // Reading the fields takes every byte, so any cut leaves one short.
            for cut in 0..bytes.len() {
                let r = read(kind, &bytes[..cut], &fields);
                prop_assert!(r.is_err(), "cut at {} of {} read", cut, bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            kind in kind(),
            shapes in proptest::collection::vec(field(), 0..12),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = read(kind, &bytes, &shapes);
            if let Ok(mut r) = Reader::open(kind, &bytes) {
                while !r.is_empty() {
                    if r.count(1).is_err() || r.bytes().is_err() {
                        break;
                    }
                }
            }
        }

        #[test]
        fn a_wrong_version_is_refused_naming_the_kind(
            kind in kind(),
            version in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            prop_assume!(version != kind.version());
            let mut bytes = vec![version];
            bytes.extend(rest);
            let err = Reader::open(kind, &bytes).unwrap_err();
            prop_assert_eq!(
                &err,
                &CodecError::Version { kind, found: version, supported: kind.version() }
            );
            let message = err.to_string();
            prop_assert!(message.starts_with(kind.name()), "{}", message);
        }

        #[test]
        fn ordered_i64_keys_sort_as_the_numbers(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(key::i64_bytes(a).cmp(&key::i64_bytes(b)), a.cmp(&b));
            prop_assert_eq!(key::i64_from(key::i64_bytes(a)), a);
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = CodecError::Version {
            kind: Kind::WindowSegment,
            found: 7,
            supported: 1,
        };
        assert_eq!(
            e.to_string(),
            "window segment record has format version 7; this weir reads version 1: it was \
             written by another version of weir; delete the state directory and changelog \
             topic, or run that version"
        );
        let zero = Reader::open(Kind::Sessions, &[0, 1]).unwrap_err();
        assert!(
            zero.to_string().contains("never writes version 0"),
            "{zero}"
        );
        assert!(matches!(
            Reader::open(Kind::OverKey, &[]),
            Err(CodecError::Truncated { at: 0, .. })
        ));
    }

    #[test]
    fn strict_fields() {
        let mut r = Reader::open(Kind::TableVersions, &[1, 2]).unwrap();
        assert!(matches!(r.bool(), Err(CodecError::Malformed { at: 1, .. })));
        // A varint of 11 bytes, or whose 10th byte carries more than 1 bit.
        let mut long = vec![1u8];
        long.extend([0xFF; 9]);
        long.push(0x02);
        let mut r = Reader::open(Kind::TableVersions, &long).unwrap();
        assert!(matches!(r.varint(), Err(CodecError::Malformed { .. })));
        let mut max = vec![1u8];
        max.extend([0xFF; 9]);
        max.push(0x01);
        let mut r = Reader::open(Kind::TableVersions, &max).unwrap();
        assert_eq!(r.varint().unwrap(), u64::MAX);
        // A length or count beyond the bytes left, and trailing bytes.
        let mut r = Reader::open(Kind::TableVersions, &[1, 5, 0, 0]).unwrap();
        assert!(matches!(r.bytes(), Err(CodecError::Truncated { .. })));
        let mut r = Reader::open(Kind::TableVersions, &[1, 3, 0, 0]).unwrap();
        assert!(matches!(r.count(1), Err(CodecError::Truncated { .. })));
        let r = Reader::open(Kind::TableVersions, &[1, 0]).unwrap();
        assert!(matches!(
            r.finish(),
            Err(CodecError::Malformed { at: 1, .. })
        ));
        assert_eq!(
            key::field::<4>(&[1, 2, 3], 0, "pane"),
            Err(key::KeyError {
                what: "pane",
                len: 3
            })
        );
        assert!(key::i64_at(&[0; 9], 1, "expiry").is_ok());
        assert!(key::i64_at(&[0; 9], 2, "expiry").is_err());
    }
}
