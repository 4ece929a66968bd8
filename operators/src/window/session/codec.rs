//! A key's sessions as the store holds them: `encode_key` and `decode_key`.

use std::collections::BTreeMap;

use hashbrown::HashSet;
use weir_state::codec::{CodecError, Kind, Reader, Writer};

use super::sessions::{Group, Key, Session};
use crate::ids::{ROW_ID_LEN, RowId};

// Stored form of a key's sessions, a `Kind::Sessions` record:
// version pending(bool) sessions(varint)
//   { start(i64) end(i64) retracts(varint) { id(raw 16) row(bytes) }
//     groups(varint) { key(bytes) changed(bool) emitted(bool) [id(raw 16) row(bytes)]
//       states(varint) { state(bytes) } aggregates(varint) { values(varint) { value(bytes) } } } }

pub(super) fn encode_key(key: &Key, pending: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::record(&mut out, Kind::Sessions);
    w.bool(pending);
    w.len(key.sessions.len());
    for s in &key.sessions {
        w.i64(s.start);
        w.i64(s.end);
        w.len(s.retract.len());
        for (id, row) in &s.retract {
            w.raw(id);
            w.bytes(row);
        }
        w.len(s.groups.len());
        for (gk, g) in &s.groups {
            w.bytes(gk);
            w.bool(g.changed);
            w.bool(g.emitted.is_some());
            if let Some((id, row)) = &g.emitted {
                w.raw(id);
                w.bytes(row);
            }
            w.len(g.states.len());
            for st in &g.states {
                w.bytes(st);
            }
            w.len(g.seen.len());
            for seen in &g.seen {
                w.len(seen.len());
                for v in seen {
                    w.bytes(v);
                }
            }
        }
    }
    out
}

fn row_id(r: &mut Reader<'_>) -> Result<RowId, CodecError> {
    Ok(r.raw(ROW_ID_LEN)?.try_into().expect("ROW_ID_LEN bytes"))
}

pub(super) fn decode_key(
    v: &[u8],
    n_aggs: usize,
    next_id: &mut u64,
) -> anyhow::Result<(Key, bool)> {
    let mut r = Reader::open(Kind::Sessions, v)?;
    let pending = r.bool()?;
    let mut key = Key::default();
    // A session is at least its bounds and two counts; a group its key's
    // length, two flags and two counts; a retraction its id and a length.
    for _ in 0..r.count(18)? {
        let start = r.i64()?;
        let end = r.i64()?;
        let mut retract = Vec::new();
        for _ in 0..r.count(ROW_ID_LEN + 1)? {
            let id = row_id(&mut r)?;
            retract.push((id, r.bytes()?.into()));
        }
        let mut groups = BTreeMap::new();
        for _ in 0..r.count(5)? {
            let gk: Box<[u8]> = r.bytes()?.into();
            let changed = r.bool()?;
            let emitted = if r.bool()? {
                let id = row_id(&mut r)?;
                Some((id, r.bytes()?.into()))
            } else {
                None
            };
            let mut states = Vec::new();
            for _ in 0..r.count(1)? {
                states.push(r.bytes()?.into());
            }
            let at = r.position();
            let aggs = r.count(1)?;
            if aggs != n_aggs {
                return Err(r
                    .malformed_at(
                        at,
                        "the sessions have another number of aggregates than the plan",
                    )
                    .into());
            }
            let mut seen = Vec::with_capacity(aggs);
            for _ in 0..aggs {
                let n = r.count(1)?;
                let mut set = HashSet::with_capacity(n);
                for _ in 0..n {
                    set.insert(r.bytes()?.into());
                }
                seen.push(set);
            }
            groups.insert(
                gk,
                Group {
                    states,
                    seen,
                    emitted,
                    changed,
                },
            );
        }
        key.sessions.push(Session {
            id: *next_id,
            start,
            end,
            groups,
            retract,
        });
        *next_id += 1;
    }
    r.finish()?;
    Ok((key, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Bytes = Vec<u8>;
    /// A group as compared: key, changed, emitted, states, seen values per aggregate (sorted).
    type GroupView = (
        Bytes,
        bool,
        Option<(RowId, Bytes)>,
        Vec<Bytes>,
        Vec<Vec<Bytes>>,
    );
    /// A session as compared: bounds, retractions, groups.
    type SessionView = (i64, i64, Vec<(RowId, Bytes)>, Vec<GroupView>);

    const AGGS: usize = 2;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    fn group() -> impl Strategy<Value = GroupView> {
        (
            bytes(),
            any::<bool>(),
            proptest::option::of((any::<RowId>(), bytes())),
            proptest::collection::vec(bytes(), 0..3),
            proptest::collection::vec(proptest::collection::btree_set(bytes(), 0..4), AGGS),
        )
            .prop_map(|(k, c, e, st, seen)| {
                (
                    k,
                    c,
                    e,
                    st,
                    seen.into_iter().map(|s| s.into_iter().collect()).collect(),
                )
            })
    }

    fn sessions() -> impl Strategy<Value = Vec<SessionView>> {
        proptest::collection::vec(
            (
                any::<i64>(),
                any::<i64>(),
                proptest::collection::vec((any::<RowId>(), bytes()), 0..3),
                proptest::collection::btree_map(bytes(), group(), 0..4).prop_map(|m| {
                    m.into_iter()
                        .map(|(k, g)| (k, g.1, g.2, g.3, g.4))
                        .collect()
                }),
            ),
            0..4,
        )
    }

    fn build(views: &[SessionView]) -> Key {
        let sessions = views
            .iter()
            .enumerate()
            .map(|(i, (start, end, retract, groups))| Session {
                id: i as u64,
                start: *start,
                end: *end,
                retract: retract
                    .iter()
                    .map(|(id, r)| (*id, r.as_slice().into()))
                    .collect(),
                groups: groups
                    .iter()
                    .map(|(k, changed, emitted, states, seen)| {
                        let g = Group {
                            states: states.iter().map(|s| s.as_slice().into()).collect(),
                            seen: seen
                                .iter()
                                .map(|vs| vs.iter().map(|v| v.as_slice().into()).collect())
                                .collect(),
                            emitted: emitted.as_ref().map(|(id, r)| (*id, r.as_slice().into())),
                            changed: *changed,
                        };
                        (k.as_slice().into(), g)
                    })
                    .collect(),
            })
            .collect();
        Key {
            sessions,
            due: None,
        }
    }

    fn view(key: &Key) -> Vec<SessionView> {
        key.sessions
            .iter()
            .map(|s| {
                let groups = s
                    .groups
                    .iter()
                    .map(|(k, g)| {
                        let seen = g
                            .seen
                            .iter()
                            .map(|vs| {
                                let mut v: Vec<Bytes> = vs.iter().map(|b| b.to_vec()).collect();
                                v.sort();
                                v
                            })
                            .collect();
                        (
                            k.to_vec(),
                            g.changed,
                            g.emitted.as_ref().map(|(id, r)| (*id, r.to_vec())),
                            g.states.iter().map(|b| b.to_vec()).collect(),
                            seen,
                        )
                    })
                    .collect();
                let retract = s.retract.iter().map(|(id, r)| (*id, r.to_vec())).collect();
                (s.start, s.end, retract, groups)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn session_state_round_trips(views in sessions(), pending in any::<bool>()) {
            let key = build(&views);
            let bytes = encode_key(&key, pending);
            prop_assert_eq!(bytes[0], Kind::Sessions.version());
            let mut next_id = 7;
            let (back, was_pending) = decode_key(&bytes, AGGS, &mut next_id).unwrap();
            prop_assert_eq!(was_pending, pending);
            prop_assert_eq!(view(&back), views.clone());
            prop_assert_eq!(next_id, 7 + views.len() as u64);
            for cut in 0..bytes.len() {
                prop_assert!(decode_key(&bytes[..cut], AGGS, &mut next_id).is_err(), "cut at {}", cut);
            }
            prop_assert!(decode_key(&bytes, AGGS + 1, &mut next_id).is_err() || views.iter().all(|s| s.3.is_empty()));
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_sessions(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut next_id = 0;
            let _ = decode_key(&bytes, AGGS, &mut next_id);
            let mut versioned = vec![Kind::Sessions.version()];
            versioned.extend(bytes);
            let _ = decode_key(&versioned, AGGS, &mut next_id);
        }
    }

    #[test]
    fn version_1_sessions_are_refused_by_name() {
        // The first byte of the format before the shared codec.
        let Err(err) = decode_key(&[1, 0, 0, 0, 0, 0], AGGS, &mut 0) else {
            panic!("version 1 read");
        };
        let codec = err.downcast_ref::<CodecError>().expect("a codec error");
        assert!(matches!(
            codec,
            CodecError::Version {
                kind: Kind::Sessions,
                found: 1,
                supported: 2
            }
        ));
    }
}
