//! How a window pane is laid out in the store: keys, kinds and segments.

use weir_state::codec::key::{self, KeyError};
use weir_state::codec::{CodecError, Kind, Reader, Writer};

/// Where a pane's segments start, after its per-group entries (no group key
/// is 4 GiB long).
pub(super) const SEGMENT_MARK: [u8; 4] = [0xFF; 4];
/// A segment is cut once it holds this many bytes (it travels in one
/// changelog record).
pub(super) const SEGMENT_BYTES: usize = 64 << 10;

pub(super) const KIND_STATE: u8 = 0;
pub(super) const KIND_SIGHTING: u8 = 1;
/// A fired pane's group that late rows changed and that is still to be
/// re-emitted (value: 1 if it had been emitted before), written at checkpoints.
pub(super) const KIND_CHANGED: u8 = 2;

pub(super) fn pane_prefix(end: i64) -> [u8; 8] {
    key::i64_bytes(end)
}

pub(super) fn pane_end(k: &[u8]) -> Result<i64, KeyError> {
    key::i64_at(k, 0, "window pane")
}

pub(super) fn group_prefix(end: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + 4 + key.len() + 2);
    k.extend_from_slice(&pane_prefix(end));
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub(super) fn segment_prefix(end: i64) -> Vec<u8> {
    let mut k = pane_prefix(end).to_vec();
    k.extend_from_slice(&SEGMENT_MARK);
    k
}

/// Appends a group to the body of a segment ([`seal_segment`]).
pub(super) fn put_segment_group<'a>(
    body: &mut Vec<u8>,
    key: &[u8],
    state: &[u8],
    sightings: impl ExactSizeIterator<Item = (u8, &'a [u8])>,
) {
    let mut w = Writer::continued(body);
    w.bytes(key);
    w.bytes(state);
    w.len(sightings.len());
    for (agg, value) in sightings {
        w.u8(agg);
        w.bytes(value);
    }
}

/// A segment of `groups` groups from their `body`, into `out` (cleared), a
/// [`Kind::WindowSegment`] record:
/// ```text
/// version groups(varint) { key(bytes) state(bytes) n(varint) { agg(u8) value(bytes) }*n }*groups
/// ```
pub(super) fn seal_segment(out: &mut Vec<u8>, groups: usize, body: &[u8]) {
    out.clear();
    let mut w = Writer::record(out, Kind::WindowSegment);
    w.len(groups);
    w.raw(body);
}

/// Reads a segment: per group, its key, its state and its new sightings
/// (aggregate, value). `distinct[agg]`: whether aggregate `agg` is a
/// DISTINCT one; a sighting of any other is an error.
pub(super) fn read_segment<'a>(
    seg: &'a [u8],
    distinct: &[bool],
    mut group: impl FnMut(&'a [u8], &'a [u8], &[(usize, &'a [u8])]),
) -> Result<(), CodecError> {
    let mut r = Reader::open(Kind::WindowSegment, seg)?;
    let mut sightings = Vec::new();
    // A group is at least two lengths and a count.
    for _ in 0..r.count(3)? {
        let key = r.bytes()?;
        let state = r.bytes()?;
        // A sighting is at least an aggregate and a length.
        let n = r.count(2)?;
        sightings.clear();
        for _ in 0..n {
            let at = r.position();
            let agg = r.u8()? as usize;
            if !distinct.get(agg).copied().unwrap_or(false) {
                return Err(r.malformed_at(at, "a value sighting names no DISTINCT aggregate"));
            }
            sightings.push((agg, r.bytes()?));
        }
        group(key, state, &sightings);
    }
    r.finish()
}

pub(super) fn with_kind(prefix: &[u8], kind: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1);
    k.extend_from_slice(prefix);
    k.push(kind);
    k
}

/// A stored group key's group key, kind byte and what follows.
pub(super) fn split_stored_key(k: &[u8]) -> Result<(&[u8], u8, &[u8]), KeyError> {
    const WHAT: &str = "window group";
    let len = u32::from_be_bytes(key::field(k, 8, WHAT)?) as usize;
    let bad = KeyError {
        what: WHAT,
        len: k.len(),
    };
    let group = k.get(12..).and_then(|r| r.get(..len)).ok_or(bad.clone())?;
    let (&kind, rest) = k[12 + len..].split_first().ok_or(bad)?;
    Ok((group, kind, rest))
}

/// A stored sighting's aggregate and value (what follows its kind byte).
pub(super) fn split_sighting(rest: &[u8]) -> Result<(u8, &[u8]), KeyError> {
    rest.split_first()
        .map(|(&agg, value)| (agg, value))
        .ok_or(KeyError {
            what: "window sighting",
            len: rest.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Groups as a segment holds them: key, state, sightings (aggregate, value).
    type SegmentGroups = Vec<(Vec<u8>, Vec<u8>, Vec<(u8, Vec<u8>)>)>;

    /// Aggregates 0 and 2 are DISTINCT ones, 1 is not.
    const DISTINCT: [bool; 3] = [true, false, true];

    fn groups() -> impl Strategy<Value = SegmentGroups> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..30);
        proptest::collection::vec(
            (
                bytes(),
                bytes(),
                proptest::collection::vec((prop_oneof![Just(0u8), Just(2u8)], bytes()), 0..5),
            ),
            0..12,
        )
    }

    fn write(groups: &SegmentGroups) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, st, sightings) in groups {
            put_segment_group(
                &mut body,
                k,
                st,
                sightings.iter().map(|(a, v)| (*a, v.as_slice())),
            );
        }
        let mut segment = vec![9; 3];
        seal_segment(&mut segment, groups.len(), &body);
        segment
    }

    fn read(segment: &[u8]) -> Result<SegmentGroups, CodecError> {
        let mut out = Vec::new();
        read_segment(segment, &DISTINCT, |k, st, sightings| {
            out.push((
                k.to_vec(),
                st.to_vec(),
                sightings
                    .iter()
                    .map(|(a, v)| (*a as u8, v.to_vec()))
                    .collect(),
            ));
        })?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn window_segments_round_trip(groups in groups()) {
            let segment = write(&groups);
            prop_assert_eq!(segment[0], Kind::WindowSegment.version());
            prop_assert_eq!(read(&segment).unwrap(), groups);
            for cut in 0..segment.len() {
                prop_assert!(read(&segment[..cut]).is_err(), "cut at {}", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_a_segment(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = read(&bytes);
            let mut versioned = vec![Kind::WindowSegment.version()];
            versioned.extend(bytes);
            let _ = read(&versioned);
        }
    }

    #[test]
    fn a_sighting_of_an_aggregate_that_is_not_distinct_is_an_error() {
        for agg in [1u8, 3, 255] {
            let segment = write(&vec![(b"k".to_vec(), vec![], vec![(agg, b"v".to_vec())])]);
            assert!(
                matches!(read(&segment), Err(CodecError::Malformed { .. })),
                "aggregate {agg}"
            );
        }
        let mut old = write(&vec![(b"k".to_vec(), vec![], vec![])]);
        old[0] = 7;
        assert!(matches!(
            read(&old),
            Err(CodecError::Version {
                kind: Kind::WindowSegment,
                found: 7,
                ..
            })
        ));
    }

    #[test]
    fn short_stored_keys_are_errors_not_panics() {
        let key = group_prefix(5, b"grp");
        let full = with_kind(&key, KIND_STATE);
        assert_eq!(
            split_stored_key(&full).unwrap(),
            (&b"grp"[..], KIND_STATE, &[][..])
        );
        for cut in 0..full.len() {
            assert!(split_stored_key(&full[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(pane_end(&full).unwrap(), 5);
        assert!(pane_end(&full[..7]).is_err());
        assert!(split_sighting(&[]).is_err());
    }
}
