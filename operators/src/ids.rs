//! Stable row identities.
//!
//! Every row carries a 16-byte identity that a replay after a crash gives it
//! again, so an exactly-once sink can recognise output that is already in its
//! topic:
//! - a row read from a source: `b'S'`, 3 zero bytes, partition (i32 BE),
//!   offset (i64 BE);
//! - a window result: the first 16 bytes of BLAKE3 over the row-encoded group
//!   key and the window end (i64 BE), with the first byte forced to `b'W'`;
//! - a session result, and a window result's later changes (allowed
//!   lateness): BLAKE3 over what names the row and the change, the first byte
//!   forced to the change's tag: `b'W'` insert, `b'U'` update, `b'D'` delete.
//!
//! The first byte therefore also says what the row is to a consumer of a
//! changelog: see [`Change::of`].

use datafusion::arrow::array::{FixedSizeBinaryArray, FixedSizeBinaryBuilder};

pub const ROW_ID_LEN: usize = 16;

pub type RowId = [u8; ROW_ID_LEN];

pub fn source_row_id(partition: i32, offset: i64) -> RowId {
    let mut id = [0u8; ROW_ID_LEN];
    id[0] = b'S';
    id[4..8].copy_from_slice(&partition.to_be_bytes());
    id[8..16].copy_from_slice(&offset.to_be_bytes());
    id
}

/// The source partition and offset of a row read from a source.
pub fn parse_source_row_id(id: &[u8]) -> Option<(i32, i64)> {
    if id.len() != ROW_ID_LEN || id[0] != b'S' {
        return None;
    }
    let partition = i32::from_be_bytes(id[4..8].try_into().ok()?);
    let offset = i64::from_be_bytes(id[8..16].try_into().ok()?);
    Some((partition, offset))
}

pub fn window_row_id(group_key: &[u8], window_end: i64) -> RowId {
    let mut h = blake3::Hasher::new();
    h.update(group_key);
    h.update(&window_end.to_be_bytes());
    let mut id = [0u8; ROW_ID_LEN];
    id.copy_from_slice(&h.finalize().as_bytes()[..ROW_ID_LEN]);
    id[0] = b'W';
    id
}

/// What an output row does to the result a consumer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new result row (every row of an append-only flow).
    Insert,
    /// A result row emitted before, with new values (same key and window).
    Update,
    /// A result row emitted before that no longer holds (a session merged away).
    Delete,
}

impl Change {
    fn tag(self) -> u8 {
        match self {
            Change::Insert => b'W',
            Change::Update => b'U',
            Change::Delete => b'D',
        }
    }

    /// The change a row identity carries.
    pub fn of(id: &[u8]) -> Change {
        match id.first() {
            Some(b'U') => Change::Update,
            Some(b'D') => Change::Delete,
            _ => Change::Insert,
        }
    }

    /// The `weir.change` header value, for changes other than inserts.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Change::Insert => None,
            Change::Update => Some("update"),
            Change::Delete => Some("delete"),
        }
    }
}

/// The identity of a changelog row: `parts` name the row (partition and group
/// key, window bounds) and, for an update, the watermark it was emitted at.
pub fn change_row_id(change: Change, parts: &[&[u8]]) -> RowId {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u32).to_be_bytes());
        h.update(p);
    }
    let mut id = [0u8; ROW_ID_LEN];
    id.copy_from_slice(&h.finalize().as_bytes()[..ROW_ID_LEN]);
    id[0] = change.tag();
    id
}

pub fn id_array(ids: impl IntoIterator<Item = RowId>) -> FixedSizeBinaryArray {
    let iter = ids.into_iter();
    let mut b = FixedSizeBinaryBuilder::with_capacity(iter.size_hint().0, ROW_ID_LEN as i32);
    for id in iter {
        b.append_value(id).expect("ids have the declared width");
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn source_ids_round_trip_and_window_ids_differ() {
        let id = source_row_id(3, 1 << 40);
        assert_eq!(parse_source_row_id(&id), Some((3, 1 << 40)));
        let w = window_row_id(b"card-1", 60_000);
        assert_eq!(parse_source_row_id(&w), None);
        assert_ne!(w, window_row_id(b"card-1", 120_000));
        assert_ne!(w, window_row_id(b"card-2", 60_000));
        assert_eq!(id_array([id, w]).len(), 2);
        assert_eq!(id_array([]).len(), 0);
        assert_eq!(Change::of(&id), Change::Insert);
        assert_eq!(Change::of(&w), Change::Insert);
        let u = change_row_id(Change::Update, &[b"card-1", &60_000i64.to_be_bytes()]);
        assert_eq!(Change::of(&u), Change::Update);
        let d = change_row_id(Change::Delete, &[b"card-1", &60_000i64.to_be_bytes()]);
        assert_eq!(Change::of(&d), Change::Delete);
        // Parts are length-prefixed: moving a byte between parts changes the id.
        assert_ne!(
            change_row_id(Change::Insert, &[b"ab", b"c"]),
            change_row_id(Change::Insert, &[b"a", b"bc"])
        );
    }
}
