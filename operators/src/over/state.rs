//! A key's state (history, pending rows) and its codec: the store's keys and the encoded record.

use std::collections::VecDeque;

use weir_state::codec::{self, CodecError, Kind, Reader, Writer};

use super::acc::{Acc, Val};
use crate::ids::{ROW_ID_LEN, RowId};

pub(super) struct HistoryRow {
    pub(super) ts: i64,
    pub(super) vals: Box<[Val]>,
}

/// A row waiting for the watermark. Rows of a key come out in (ts, id)
/// order: for source rows, offset order within a partition, so a replay
/// orders ties as the first run did.
pub(super) struct PendingRow {
    pub(super) ts: i64,
    /// The whole input row, row-encoded.
    pub(super) row: Box<[u8]>,
    pub(super) id: RowId,
    pub(super) vals: Box<[Val]>,
}

impl PendingRow {
    pub(super) fn size(&self) -> usize {
        48 + self.row.len() + self.vals.iter().map(Val::size).sum::<usize>()
    }
}

#[derive(Default)]
pub(super) struct KeyState {
    pub(super) history: VecDeque<HistoryRow>,
    /// Absolute index of `history[0]`.
    pub(super) base: u64,
    pub(super) pending: Vec<PendingRow>,
    /// Event time of the newest emitted row.
    pub(super) last_ts: Option<i64>,
    /// Per call; empty until built from `history` (after a load).
    pub(super) accs: Vec<Acc>,
    /// Changed since it was last written to the store.
    pub(super) dirty: bool,
    /// What the store holds for the key: a pending marker, an expiry entry.
    pub(super) stored: bool,
    pub(super) stored_pending: bool,
    pub(super) stored_expiry: Option<i64>,
    pub(super) bytes: usize,
}

pub(super) const TAG_STATE: u8 = b'S';
pub(super) const TAG_PENDING: u8 = b'P';
pub(super) const TAG_EXPIRY: u8 = b'X';

pub(super) fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tag);
    k.extend_from_slice(key);
    k
}

pub(super) fn expiry_key(at: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(TAG_EXPIRY);
    k.extend_from_slice(&codec::key::i64_bytes(at));
    k.extend_from_slice(key);
    k
}

fn put_val(w: &mut Writer<'_>, v: &Val) {
    match v {
        Val::Null => w.u8(0),
        Val::I(x) => {
            w.u8(1);
            w.i64(*x);
        }
        Val::F(x) => {
            w.u8(2);
            w.f64(*x);
        }
        Val::B(b) => {
            w.u8(3);
            w.bytes(b);
        }
    }
}

fn read_val(r: &mut Reader<'_>) -> Result<Val, CodecError> {
    let at = r.position();
    Ok(match r.u8()? {
        0 => Val::Null,
        1 => Val::I(r.i64()?),
        2 => Val::F(r.f64()?),
        3 => Val::B(r.bytes()?.into()),
        _ => return Err(r.malformed_at(at, "unknown value tag")),
    })
}

impl KeyState {
    /// A `Kind::OverKey` record:
    /// ```text
    /// version base(varint) has_last(bool) [last_ts(i64)]
    ///   history(varint) { ts(i64) val*calls }
    ///   pending(varint) { ts(i64) row(bytes) id(raw 16) val*calls }
    /// val = 0 (null) | 1 i64 | 2 f64 | 3 bytes (DISTINCT argument)
    /// ```
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 64);
        let mut w = Writer::record(&mut out, Kind::OverKey);
        w.varint(self.base);
        w.bool(self.last_ts.is_some());
        if let Some(t) = self.last_ts {
            w.i64(t);
        }
        w.len(self.history.len());
        for r in &self.history {
            w.i64(r.ts);
            for v in r.vals.iter() {
                put_val(&mut w, v);
            }
        }
        w.len(self.pending.len());
        for p in &self.pending {
            w.i64(p.ts);
            w.bytes(&p.row);
            w.raw(&p.id);
            for v in p.vals.iter() {
                put_val(&mut w, v);
            }
        }
        out
    }

    pub(super) fn decode(bytes: &[u8], calls: usize) -> Result<Self, CodecError> {
        let mut r = Reader::open(Kind::OverKey, bytes)?;
        let base = r.varint()?;
        let last_ts = if r.bool()? { Some(r.i64()?) } else { None };
        let mut ks = KeyState {
            base,
            last_ts,
            stored: true,
            ..Default::default()
        };
        // A history row is at least its time and a tag per call; a pending
        // row also a length and its id.
        let n = r.count(8 + calls)?;
        ks.history.reserve(n);
        for _ in 0..n {
            let ts = r.i64()?;
            let vals = (0..calls)
                .map(|_| read_val(&mut r))
                .collect::<Result<_, _>>()?;
            ks.history.push_back(HistoryRow { ts, vals });
        }
        let n = r.count(8 + 1 + ROW_ID_LEN + calls)?;
        ks.pending.reserve(n);
        for _ in 0..n {
            let ts = r.i64()?;
            let row = r.bytes()?.into();
            let id: RowId = r.raw(ROW_ID_LEN)?.try_into().expect("ROW_ID_LEN bytes");
            let vals = (0..calls)
                .map(|_| read_val(&mut r))
                .collect::<Result<_, _>>()?;
            ks.pending.push(PendingRow { ts, row, id, vals });
        }
        r.finish()?;
        ks.stored_pending = !ks.pending.is_empty();
        ks.bytes = bytes.len() * 2;
        Ok(ks)
    }
}

/// When a key's state can go, if ever: only once nothing is pending.
pub(super) fn expiry_of(ks: &KeyState, retention_ms: Option<i64>) -> Option<i64> {
    if !ks.pending.is_empty() {
        return None;
    }
    Some(ks.last_ts?.saturating_add(retention_ms?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A value as compared: floats by their bits.
    #[derive(Debug, Clone, PartialEq)]
    enum V {
        Null,
        I(i64),
        F(u64),
        B(Vec<u8>),
    }

    fn val() -> impl Strategy<Value = V> {
        prop_oneof![
            Just(V::Null),
            any::<i64>().prop_map(V::I),
            any::<u64>().prop_map(V::F),
            proptest::collection::vec(any::<u8>(), 0..10).prop_map(V::B),
        ]
    }

    fn to_val(v: &V) -> Val {
        match v {
            V::Null => Val::Null,
            V::I(x) => Val::I(*x),
            V::F(b) => Val::F(f64::from_bits(*b)),
            V::B(b) => Val::B(b.as_slice().into()),
        }
    }

    fn of_val(v: &Val) -> V {
        match v {
            Val::Null => V::Null,
            Val::I(x) => V::I(*x),
            Val::F(x) => V::F(x.to_bits()),
            Val::B(b) => V::B(b.to_vec()),
        }
    }

    const CALLS: usize = 2;

    type History = Vec<(i64, Vec<V>)>;
    type Pending = Vec<(i64, Vec<u8>, RowId, Vec<V>)>;

    fn vals() -> impl Strategy<Value = Vec<V>> {
        proptest::collection::vec(val(), CALLS)
    }

    proptest! {
        #[test]
        fn over_key_state_round_trips(
            base in any::<u64>(),
            last_ts in proptest::option::of(any::<i64>()),
            history in proptest::collection::vec((any::<i64>(), vals()), 0..6),
            pending in proptest::collection::vec(
                (any::<i64>(), proptest::collection::vec(any::<u8>(), 0..20), any::<RowId>(), vals()),
                0..6,
            ),
        ) {
            let ks = KeyState {
                base,
                last_ts,
                history: history
                    .iter()
                    .map(|(ts, vs)| HistoryRow { ts: *ts, vals: vs.iter().map(to_val).collect() })
                    .collect(),
                pending: pending
                    .iter()
                    .map(|(ts, row, id, vs)| PendingRow {
                        ts: *ts,
                        row: row.as_slice().into(),
                        id: *id,
                        vals: vs.iter().map(to_val).collect(),
                    })
                    .collect(),
                ..Default::default()
            };
            let bytes = ks.encode();
            prop_assert_eq!(bytes[0], Kind::OverKey.version());
            let back = KeyState::decode(&bytes, CALLS).unwrap();
            prop_assert_eq!(back.base, base);
            prop_assert_eq!(back.last_ts, last_ts);
            let h: History = back
                .history
                .iter()
                .map(|r| (r.ts, r.vals.iter().map(of_val).collect()))
                .collect();
            prop_assert_eq!(h, history);
            let p: Pending = back
                .pending
                .iter()
                .map(|p| (p.ts, p.row.to_vec(), p.id, p.vals.iter().map(of_val).collect()))
                .collect();
            prop_assert_eq!(p, pending.clone());
            prop_assert!(back.stored);
            prop_assert_eq!(back.stored_pending, !pending.is_empty());
            for cut in 0..bytes.len() {
                prop_assert!(KeyState::decode(&bytes[..cut], CALLS).is_err(), "cut at {}", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_over_state(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = KeyState::decode(&bytes, CALLS);
            let mut versioned = vec![Kind::OverKey.version()];
            versioned.extend(bytes);
            let _ = KeyState::decode(&versioned, CALLS);
        }
    }

    #[test]
    fn version_1_over_state_is_refused_by_name() {
        let Err(err) = KeyState::decode(&[1; 40], CALLS) else {
            panic!("version 1 read");
        };
        assert_eq!(
            err,
            CodecError::Version {
                kind: Kind::OverKey,
                found: 1,
                supported: 2
            }
        );
    }

    #[test]
    fn a_short_expiry_key_is_an_error() {
        let k = expiry_key(-5, b"key");
        assert_eq!(codec::key::i64_at(&k, 1, "OVER expiry").unwrap(), -5);
        assert!(codec::key::i64_at(&k[..8], 1, "OVER expiry").is_err());
    }
}
