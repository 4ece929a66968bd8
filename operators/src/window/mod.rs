//! Event-time window aggregation for TUMBLE, HOP and CUMULATE (SESSION: [`session`]).
//!
//! ```text
//! batch --assign--> (row, window) pairs --group key--> pane of that window
//!       pane = in-memory delta (row-encoded key -> group index, one GroupsAccumulator
//!              per aggregate) + what earlier flushes wrote to the store
//! watermark >= window_end - 1 ms  ==> merge the pane's delta with its stored groups,
//!                                     evaluate, emit, delete the pane
//! ```
//!
//! Every aggregate DataFusion has works here: the operator drives DataFusion's
//! `GroupsAccumulator`s (or its `Accumulator`s through the adapter). A row whose
//! windows have all closed when it arrives is late: it goes to the context's
//! late output instead.
//!
//! Allowed lateness (`'window.allowed-lateness'`): a fired pane stays in the
//! store until the watermark passes its end by that much. Late rows update it;
//! at the next watermark advance the groups they changed are re-emitted, as
//! updates (or inserts, for groups new to the window), identified as such by
//! their row identity ([`crate::ids::Change`]).
//!
//! State: with a store attached, a pane lives in memory until it fires. At a
//! checkpoint the store gets a *copy* of the groups that changed since the last
//! one (and of new DISTINCT sightings); memory keeps them, so firing reads
//! nothing back. Only when the operator's memory passes its budget are the
//! largest panes *moved* to the store: memory then holds what changed since,
//! merged with the stored groups at fire time (as is a pane restored from a
//! checkpoint). In the store (the operator's column family, under the task
//! prefix):
//! ```text
//! pane(8) key_len(u32 BE) key  0            -> accumulator states of the non-DISTINCT aggregates
//! pane(8) key_len(u32 BE) key  1 agg(u8) v  -> (empty): value v seen by DISTINCT aggregate agg
//! pane(8) key_len(u32 BE) key  2            -> [emitted before]: a fired pane's group changed by
//!                                              late rows, to re-emit (allowed lateness)
//! pane(8) FF FF FF FF seq(u64 BE)            -> segment: of a pane memory holds whole, the
//!                                              groups one checkpoint copied (and their new
//!                                              sightings), at most SEGMENT_BYTES each
//! ```
//! A pane is stored one way or the other: per group once it has been moved
//! (its segments are then replaced by per-group entries), in segments while
//! memory holds it whole. Segments are read only at restore, in order (a later
//! copy of a group replaces an earlier one), and give memory the whole pane
//! back; they cost a checkpoint a buffer copy per group instead of an insert
//! into RocksDB's memtable per group and per sighting.
//! `pane` is the window end, sign bit flipped, big-endian, so panes scan in
//! time order. A pane that was never written to the store fires straight from
//! memory. DISTINCT aggregates are evaluated at fire time from the stored
//! sightings of a stored pane, and incrementally for an in-memory one.

mod aggregation;
mod assign;
mod groups;
mod session;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::logical_expr::GroupsAccumulator;
use hashbrown::HashMap;
use weir_state::OperatorState;
use weir_state::codec::key::{self, KeyError};
use weir_state::codec::{CodecError, Kind, Reader, Writer};

pub use aggregation::{AggregateSpec, Aggregation, OutputColumn};
pub use assign::Assigner;
pub use session::SessionOp;

use aggregation::Inputs;
use groups::{Dict, Groups, Seen, unpair};

use crate::ids::{Change, RowId, change_row_id, id_array, window_row_id};
use crate::operator::{
    Batch, Context, OUTSIDE_WINDOW_RANGE, Operator, StateAttachment, event_times,
};

/// What a pane accumulated since it was last moved to the store (all of it,
/// for a pane that never was).
struct Delta {
    /// Groups (numbered in order of first sight) by key number.
    keys: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Per aggregate: the (group, value) pairs seen, for DISTINCT aggregates.
    seen: Vec<Option<Seen>>,
    /// Of a pane memory holds whole: per DISTINCT aggregate, how many of its
    /// sightings (`Seen::order`) the store has a copy of.
    seen_copied: Vec<usize>,
    /// Per group: changed since the store last got a copy of it.
    dirty: Vec<bool>,
}

struct Pane {
    /// The window's end: it names the window (CUMULATE windows share starts).
    end: i64,
    delta: Delta,
    /// Whether the store holds groups of this pane that memory does not: the
    /// delta is merged with them (at fire time, or when written).
    in_store: bool,
    /// Of a pane memory holds whole (`!in_store`): how many segments
    /// checkpoints wrote a copy of it in (they go when the pane does).
    segments: u64,
    /// Whether the window has fired (it is kept for allowed lateness).
    fired: bool,
    /// Of a fired pane: the groups late rows changed since the last emission,
    /// and whether each had been emitted before (an update, not an insert).
    changed: BTreeMap<Box<[u8]>, bool>,
}

/// Groups read back from the store per evaluation, bounding memory at fire time.
const FIRE_CHUNK_GROUPS: usize = 8192;
/// Groups written to the store per write when a pane moves there.
const FLUSH_CHUNK_GROUPS: usize = 8192;

/// Where a pane's segments start, after its per-group entries (no group key
/// is 4 GiB long).
const SEGMENT_MARK: [u8; 4] = [0xFF; 4];
/// A segment is cut once it holds this many bytes (it travels in one
/// changelog record).
const SEGMENT_BYTES: usize = 64 << 10;

const KIND_STATE: u8 = 0;
const KIND_SIGHTING: u8 = 1;
/// A fired pane's group that late rows changed and that is still to be
/// re-emitted (value: 1 if it had been emitted before), written at checkpoints.
const KIND_CHANGED: u8 = 2;

/// The byte strings the panes' deltas share, each held once ([`Dict`]).
#[derive(Default)]
struct Dicts {
    /// Group keys.
    keys: Dict,
    /// Per aggregate: the values of a DISTINCT one.
    values: Vec<Option<Dict>>,
}

impl Dicts {
    fn value(&self, agg: usize, number: u32) -> &[u8] {
        let dict = self.values[agg].as_ref().expect("a DISTINCT aggregate");
        dict.get(number)
    }

    fn memory(&self) -> usize {
        self.keys.memory()
            + self
                .values
                .iter()
                .flatten()
                .map(Dict::memory)
                .sum::<usize>()
    }
}

/// Not yet looked up (a row's key or value number).
const UNSEEN: u32 = u32::MAX;
/// A DISTINCT aggregate's null argument, which it skips.
const NULL_VALUE: u32 = u32::MAX - 1;

pub struct WindowAggregateOp {
    assigner: Assigner,
    time_column: usize,
    agg: Aggregation,
    /// `'window.allowed-lateness'`: a fired pane is kept this long in event time.
    lateness: i64,
    /// Open and kept panes by window end.
    panes: BTreeMap<i64, Pane>,
    /// What the panes' deltas share.
    dicts: Dicts,
    /// The watermark up to which windows have fired.
    fired_through: i64,
    store: Option<OperatorState>,
    memory_budget: usize,
}

fn pane_prefix(end: i64) -> [u8; 8] {
    key::i64_bytes(end)
}

fn pane_end(k: &[u8]) -> Result<i64, KeyError> {
    key::i64_at(k, 0, "window pane")
}

fn group_prefix(end: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + 4 + key.len() + 2);
    k.extend_from_slice(&pane_prefix(end));
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn segment_prefix(end: i64) -> Vec<u8> {
    let mut k = pane_prefix(end).to_vec();
    k.extend_from_slice(&SEGMENT_MARK);
    k
}

/// Appends a group to the body of a segment ([`seal_segment`]).
fn put_segment_group<'a>(
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
fn seal_segment(out: &mut Vec<u8>, groups: usize, body: &[u8]) {
    out.clear();
    let mut w = Writer::record(out, Kind::WindowSegment);
    w.len(groups);
    w.raw(body);
}

/// Reads a segment: per group, its key, its state and its new sightings
/// (aggregate, value). `distinct[agg]`: whether aggregate `agg` is a
/// DISTINCT one; a sighting of any other is an error.
fn read_segment<'a>(
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

fn with_kind(prefix: &[u8], kind: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1);
    k.extend_from_slice(prefix);
    k.push(kind);
    k
}

/// A stored group key's group key, kind byte and what follows.
fn split_stored_key(k: &[u8]) -> Result<(&[u8], u8, &[u8]), KeyError> {
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
fn split_sighting(rest: &[u8]) -> Result<(u8, &[u8]), KeyError> {
    rest.split_first()
        .map(|(&agg, value)| (agg, value))
        .ok_or(KeyError {
            what: "window sighting",
            len: rest.len(),
        })
}

impl WindowAggregateOp {
    pub fn new(
        assigner: Assigner,
        time_column: usize,
        agg: Aggregation,
        allowed_lateness_ms: i64,
    ) -> Self {
        let dicts = Dicts {
            keys: Dict::default(),
            values: agg
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| Dict::default()))
                .collect(),
        };
        Self {
            assigner,
            time_column,
            agg,
            lateness: allowed_lateness_ms,
            panes: BTreeMap::new(),
            dicts,
            fired_through: i64::MIN,
            store: None,
            memory_budget: usize::MAX,
        }
    }

    /// Allowed lateness in effect: fired panes are kept in the store, so
    /// without one (operator tests) windows close when they fire.
    fn lateness(&self) -> i64 {
        if self.store.is_some() {
            self.lateness
        } else {
            0
        }
    }

    fn new_delta(&self) -> anyhow::Result<Delta> {
        Ok(Delta {
            keys: Groups::default(),
            accumulators: self.agg.new_accumulators()?,
            seen: self
                .agg
                .aggregates
                .iter()
                .map(|a| a.distinct.as_ref().map(|_| Seen::default()))
                .collect(),
            seen_copied: vec![0; self.agg.aggregates.len()],
            dirty: Vec::new(),
        })
    }

    /// Output rows of `keys`' groups of the window ending at `end`.
    fn emit(
        &self,
        end: i64,
        keys: &[&[u8]],
        accumulators: Vec<Box<dyn GroupsAccumulator>>,
        ids: Vec<RowId>,
        watermark: i64,
    ) -> anyhow::Result<Batch> {
        let start = self
            .assigner
            .start_of(end)
            .context("a pane's window start is outside the i64 milliseconds")?;
        let bounds = vec![(start, end); keys.len()];
        let data = self.agg.evaluate(keys, &bounds, accumulators)?;
        Ok(Batch::uniform(data, watermark, Arc::new(id_array(ids))))
    }

    /// Writes the pane's delta to the store, merged with what the store
    /// already holds for its groups, and starts a new delta. Of a fired pane,
    /// records the groups it changed.
    fn flush_pane(&self, pane: &mut Pane) -> anyhow::Result<()> {
        let store = self.store.as_ref().expect("flush_pane needs a store");
        if pane.delta.keys.is_empty() {
            return Ok(());
        }
        if !pane.in_store && pane.segments > 0 {
            // Memory holds the pane whole: its groups go to the store one by
            // one (below, as a pane new to the store), replacing its segments.
            let mut batch = store.batch();
            store.delete_prefix(&mut batch, &segment_prefix(pane.end))?;
            store.write(batch)?;
            pane.segments = 0;
        }
        let Delta {
            keys,
            mut accumulators,
            seen,
            ..
        } = std::mem::replace(&mut pane.delta, self.new_delta()?);
        let n = keys.len();
        // Every group's states at once (taking them empties the
        // accumulators), then written FLUSH_CHUNK_GROUPS groups per write: a
        // pane of a million groups written in one batch had held its keys,
        // the stored states read back, their encodings and the batch itself
        // at once, and put all of it into one memtable.
        let columns = self.agg.take_states(&mut accumulators)?;
        drop(accumulators);
        // The sightings (group, aggregate, value) by chunk of groups.
        let mut sightings: Vec<Vec<(u32, u8, u32)>> =
            vec![Vec::new(); n.div_ceil(FLUSH_CHUNK_GROUPS)];
        for (agg, seen) in seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            for &p in &seen.order {
                let (g, v) = unpair(p);
                sightings[g as usize / FLUSH_CHUNK_GROUPS].push((g, agg as u8, v));
            }
        }
        for (from, chunk_sightings) in (0..n).step_by(FLUSH_CHUNK_GROUPS).zip(sightings) {
            let to = (from + FLUSH_CHUNK_GROUPS).min(n);
            let m = to - from;
            let prefixes: Vec<Vec<u8>> = keys.keys()[from..to]
                .iter()
                .map(|&k| group_prefix(pane.end, self.dicts.keys.get(k)))
                .collect();
            let state_keys: Vec<Vec<u8>> =
                prefixes.iter().map(|p| with_kind(p, KIND_STATE)).collect();
            let existing = if pane.in_store {
                let refs: Vec<&[u8]> = state_keys.iter().map(|k| k.as_slice()).collect();
                store.multi_get(&refs)?
            } else {
                vec![None; m]
            };
            // Of a fired pane: which groups' results the delta changes (a late
            // row that leaves every value as it was re-emits nothing).
            let mut differs = vec![!pane.fired; m];
            let mut batch = store.batch();
            match &self.agg.state_converter {
                Some(conv) => {
                    let mut chunk: Vec<ArrayRef> =
                        columns.iter().map(|c| c.slice(from, m)).collect();
                    if existing.iter().any(Option::is_some) {
                        let mut merged = self.agg.new_accumulators()?;
                        let (rows, groups): (Vec<&[u8]>, Vec<usize>) = existing
                            .iter()
                            .enumerate()
                            .filter_map(|(g, v)| v.as_deref().map(|v| (v, g)))
                            .unzip();
                        self.agg.merge_state_rows(&mut merged, &rows, &groups, m)?;
                        let all: Vec<usize> = (0..m).collect();
                        self.agg.merge_state_columns(&mut merged, &chunk, &all, m)?;
                        chunk = self.agg.take_states(&mut merged)?;
                    }
                    let rows = conv.convert_columns(&chunk)?;
                    for (g, k) in state_keys.iter().enumerate() {
                        let row = rows.row(g);
                        if existing[g].as_deref() != Some(row.as_ref()) {
                            differs[g] = true;
                        }
                        store.put(&mut batch, k, row.as_ref())?;
                    }
                }
                None => {
                    for (g, k) in state_keys.iter().enumerate() {
                        if existing[g].is_none() {
                            differs[g] = true;
                        }
                        store.put(&mut batch, k, &[])?;
                    }
                }
            }
            let chunk_sightings: Vec<(usize, Vec<u8>)> = chunk_sightings
                .into_iter()
                .map(|(g, agg, v)| {
                    let g = g as usize - from;
                    let mut k = with_kind(&prefixes[g], KIND_SIGHTING);
                    k.push(agg);
                    k.extend_from_slice(self.dicts.value(agg as usize, v));
                    (g, k)
                })
                .collect();
            if pane.fired && pane.in_store {
                // A value the store has already seen changes nothing.
                let refs: Vec<&[u8]> = chunk_sightings.iter().map(|(_, k)| k.as_slice()).collect();
                for ((g, _), had) in chunk_sightings.iter().zip(store.multi_get(&refs)?) {
                    if had.is_none() {
                        differs[*g] = true;
                    }
                }
            } else {
                for (g, _) in &chunk_sightings {
                    differs[*g] = true;
                }
            }
            for (_, k) in &chunk_sightings {
                store.put(&mut batch, k, &[])?;
            }
            if pane.fired {
                for (g, (e, d)) in existing.iter().zip(&differs).enumerate() {
                    if *d {
                        pane.changed
                            .entry(self.dicts.keys.get(keys.keys()[from + g]).into())
                            .or_insert(e.is_some());
                    }
                }
            }
            store.write(batch)?;
        }
        pane.in_store = true;
        Ok(())
    }

    /// Of a pane memory holds whole: gives the store a copy of the groups that
    /// changed since the last copy, with the sightings new since, in segments,
    /// and leaves memory holding the same values.
    fn copy_pane(&self, pane: &mut Pane) -> anyhow::Result<()> {
        let store = self.store.as_ref().expect("copy_pane needs a store");
        let d = &mut pane.delta;
        let n = d.keys.len();
        let dirty: Vec<u32> = (0..n as u32).filter(|&g| d.dirty[g as usize]).collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let states = match &self.agg.state_converter {
            Some(conv) => {
                // Taking the states empties the accumulators; they are rebuilt
                // from the same states.
                let columns = self.agg.take_states(&mut d.accumulators)?;
                let rows = if dirty.len() == n {
                    conv.convert_columns(&columns)?
                } else {
                    let idx = UInt32Array::from(dirty.clone());
                    let taken = columns
                        .iter()
                        .map(|c| take(c.as_ref(), &idx, None))
                        .collect::<Result<Vec<_>, _>>()?;
                    conv.convert_columns(&taken)?
                };
                let mut rebuilt = self.agg.new_accumulators()?;
                let groups: Vec<usize> = (0..n).collect();
                self.agg
                    .merge_state_columns(&mut rebuilt, &columns, &groups, n)?;
                for (i, acc) in rebuilt.into_iter().enumerate() {
                    if self.agg.has_state(i) {
                        d.accumulators[i] = acc;
                    }
                }
                Some(rows)
            }
            None => None,
        };
        // The new sightings by group (a group that saw a value is dirty).
        let mut sightings: Vec<(u32, u8, u32)> = Vec::new();
        for (agg, seen) in d.seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            sightings.extend(seen.order[d.seen_copied[agg]..].iter().map(|&p| {
                let (g, v) = unpair(p);
                (g, agg as u8, v)
            }));
            d.seen_copied[agg] = seen.order.len();
        }
        sightings.sort_unstable();
        let mut body = Vec::with_capacity(SEGMENT_BYTES + 4096);
        let mut segment = Vec::with_capacity(SEGMENT_BYTES + 4096);
        let mut groups = 0;
        let mut s = 0;
        for (j, &g) in dirty.iter().enumerate() {
            let from = s;
            while s < sightings.len() && sightings[s].0 == g {
                s += 1;
            }
            put_segment_group(
                &mut body,
                self.dicts.keys.get(d.keys.keys()[g as usize]),
                states.as_ref().map_or(&[][..], |r| r.row(j).data()),
                sightings[from..s]
                    .iter()
                    .map(|&(_, agg, v)| (agg, self.dicts.value(agg as usize, v))),
            );
            groups += 1;
            if body.len() >= SEGMENT_BYTES || j + 1 == dirty.len() {
                seal_segment(&mut segment, groups, &body);
                let mut k = segment_prefix(pane.end);
                k.extend_from_slice(&pane.segments.to_be_bytes());
                // A write per segment: a pane's copy is never held twice over
                // (the checkpoint after it is what commits it).
                let mut batch = store.batch();
                store.put(&mut batch, &k, &segment)?;
                store.write(batch)?;
                pane.segments += 1;
                body.clear();
                groups = 0;
            }
        }
        debug_assert_eq!(s, sightings.len(), "every new sighting's group is dirty");
        d.dirty.fill(false);
        Ok(())
    }

    /// The pane ending at `end` from its segments, whole, if it was stored so.
    fn restore_segments(
        &self,
        dicts: &mut Dicts,
        store: &OperatorState,
        end: i64,
    ) -> anyhow::Result<Option<(Delta, u64)>> {
        let mut d = self.new_delta()?;
        let mut states: Vec<Box<[u8]>> = Vec::new();
        let mut segments = 0;
        let distinct: Vec<bool> = d.seen.iter().map(Option::is_some).collect();
        for entry in store.scan(&segment_prefix(end))? {
            let (_, v) = entry?;
            segments += 1;
            read_segment(&v, &distinct, |key, state, sightings| {
                let (g, new) = d.keys.group(dicts.keys.intern(key));
                if new {
                    states.push(state.into());
                    d.dirty.push(false);
                } else {
                    // A later copy of the group replaces an earlier one.
                    states[g as usize] = state.into();
                }
                for &(agg, value) in sightings {
                    // read_segment checked that `agg` is a DISTINCT aggregate.
                    let seen = d.seen[agg].as_mut().expect("a DISTINCT aggregate");
                    let values = dicts.values[agg].as_mut().expect("a DISTINCT aggregate");
                    seen.insert(g, values.intern(value));
                }
            })?;
        }
        if segments == 0 {
            return Ok(None);
        }
        let rows: Vec<&[u8]> = states.iter().map(|s| s.as_ref()).collect();
        let mut sightings = Vec::new();
        for (agg, seen) in d.seen.iter().enumerate() {
            let Some(seen) = seen else { continue };
            sightings.extend(seen.order.iter().map(|&p| {
                let (g, v) = unpair(p);
                (g as usize, agg as u8, dicts.value(agg, v))
            }));
            d.seen_copied[agg] = seen.order.len();
        }
        d.accumulators = self.accumulators_from(&rows, &sightings)?;
        Ok(Some((d, segments)))
    }

    /// Evaluates a pane whose window has ended; with `keep`, leaves it in the
    /// store (allowed lateness).
    fn fire(
        &self,
        pane: &mut Pane,
        watermark: i64,
        keep: bool,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let end = pane.end;
        if !pane.in_store && !keep {
            pane.fired = true;
            let delta = std::mem::replace(&mut pane.delta, self.new_delta()?);
            if !delta.keys.is_empty() {
                let keys: Vec<&[u8]> = delta
                    .keys
                    .keys()
                    .iter()
                    .map(|&k| self.dicts.keys.get(k))
                    .collect();
                let ids = keys.iter().map(|k| window_row_id(k, end)).collect();
                out.push(self.emit(end, &keys, delta.accumulators, ids, watermark)?);
            }
            return self.purge(pane);
        }
        self.flush_pane(pane)?;
        pane.fired = true;
        let store = self.store.as_ref().expect("a stored pane has a store");
        let prefix = pane_prefix(end);
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut states: Vec<Box<[u8]>> = Vec::new();
        let mut sightings: Vec<(usize, u8, Box<[u8]>)> = Vec::new();
        let insert = |k: &[u8]| window_row_id(k, end);
        for entry in store.scan(&prefix)? {
            let (k, v) = entry?;
            let (key, kind, rest) = split_stored_key(&k)?;
            match kind {
                KIND_STATE => {
                    if keys.len() >= FIRE_CHUNK_GROUPS {
                        self.emit_stored(
                            pane.end, &keys, &states, &sightings, &insert, watermark, out,
                        )?;
                        keys.clear();
                        states.clear();
                        sightings.clear();
                    }
                    keys.push(key.into());
                    states.push(v);
                }
                KIND_SIGHTING => {
                    let (agg, value) = split_sighting(rest)?;
                    let g = keys.len().checked_sub(1).ok_or(KeyError {
                        what: "window sighting without a group state",
                        len: k.len(),
                    })?;
                    sightings.push((g, agg, value.into()));
                }
                _ => {}
            }
        }
        if !keys.is_empty() {
            self.emit_stored(
                pane.end, &keys, &states, &sightings, &insert, watermark, out,
            )?;
        }
        if !keep {
            self.purge(pane)?;
        }
        Ok(())
    }

    /// Re-emits the groups of a fired pane that late rows changed: updates of
    /// groups emitted before, inserts of new ones.
    fn emit_changes(
        &self,
        pane: &mut Pane,
        watermark: i64,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        self.flush_pane(pane)?;
        if pane.changed.is_empty() {
            return Ok(());
        }
        let store = self.store.as_ref().expect("a fired pane is in the store");
        let changed = std::mem::take(&mut pane.changed);
        let mut clear = store.batch();
        for chunk in changed.iter().collect::<Vec<_>>().chunks(FIRE_CHUNK_GROUPS) {
            let prefixes: Vec<Vec<u8>> = chunk
                .iter()
                .map(|(k, _)| group_prefix(pane.end, k))
                .collect();
            let state_keys: Vec<Vec<u8>> =
                prefixes.iter().map(|p| with_kind(p, KIND_STATE)).collect();
            let refs: Vec<&[u8]> = state_keys.iter().map(|k| k.as_slice()).collect();
            let states: Vec<Box<[u8]>> = store
                .multi_get(&refs)?
                .into_iter()
                .map(|v| v.unwrap_or_default().into_boxed_slice())
                .collect();
            let mut sightings = Vec::new();
            if self.agg.aggregates.iter().any(|a| a.distinct.is_some()) {
                for (g, p) in prefixes.iter().enumerate() {
                    let sp = with_kind(p, KIND_SIGHTING);
                    for entry in store.scan(&sp)? {
                        let (k, _) = entry?;
                        let (agg, value) = split_sighting(&k[sp.len()..])?;
                        sightings.push((g, agg, value.into()));
                    }
                }
            }
            for p in &prefixes {
                store.delete(&mut clear, &with_kind(p, KIND_CHANGED))?;
            }
            let keys: Vec<Box<[u8]>> = chunk.iter().map(|(k, _)| (*k).clone()).collect();
            let emitted_before: HashMap<&[u8], bool> =
                chunk.iter().map(|(k, e)| (k.as_ref(), **e)).collect();
            let start = self
                .assigner
                .start_of(pane.end)
                .context("a pane's window start is outside the i64 milliseconds")?;
            let id = |k: &[u8]| {
                if emitted_before[k] {
                    change_row_id(
                        Change::Update,
                        &[
                            k,
                            &start.to_be_bytes(),
                            &pane.end.to_be_bytes(),
                            &watermark.to_be_bytes(),
                        ],
                    )
                } else {
                    window_row_id(k, pane.end)
                }
            };
            self.emit_stored(pane.end, &keys, &states, &sightings, &id, watermark, out)?;
        }
        store.write(clear)?;
        Ok(())
    }

    fn purge(&self, pane: &Pane) -> anyhow::Result<()> {
        if !pane.in_store && pane.segments == 0 {
            return Ok(());
        }
        let store = self.store.as_ref().expect("a stored pane has a store");
        let mut batch = store.batch();
        store.delete_prefix(&mut batch, &pane_prefix(pane.end))?;
        store.write(batch)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_stored(
        &self,
        end: i64,
        keys: &[Box<[u8]>],
        states: &[Box<[u8]>],
        sightings: &[(usize, u8, Box<[u8]>)],
        id: &dyn Fn(&[u8]) -> RowId,
        watermark: i64,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let rows: Vec<&[u8]> = states.iter().map(|s| s.as_ref()).collect();
        let sightings: Vec<(usize, u8, &[u8])> = sightings
            .iter()
            .map(|(g, a, v)| (*g, *a, v.as_ref()))
            .collect();
        let accumulators = self.accumulators_from(&rows, &sightings)?;
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let ids = keys.iter().map(|k| id(k)).collect();
        out.push(self.emit(end, &keys, accumulators, ids, watermark)?);
        Ok(())
    }

    /// Accumulators for `states.len()` groups from their stored states
    /// (`states[g]`: group g's) and DISTINCT sightings (group, aggregate, value).
    fn accumulators_from(
        &self,
        states: &[&[u8]],
        sightings: &[(usize, u8, &[u8])],
    ) -> anyhow::Result<Vec<Box<dyn GroupsAccumulator>>> {
        let n = states.len();
        let mut accumulators = self.agg.new_accumulators()?;
        let groups: Vec<usize> = (0..n).collect();
        self.agg
            .merge_state_rows(&mut accumulators, states, &groups, n)?;
        for (agg, spec) in self.agg.aggregates.iter().enumerate() {
            if spec.distinct.is_none() {
                continue;
            }
            let (groups, values): (Vec<usize>, Vec<&[u8]>) = sightings
                .iter()
                .filter(|(_, a, _)| *a as usize == agg)
                .map(|(g, _, v)| (*g, *v))
                .unzip();
            // Called even without sightings, so the accumulator knows all n groups.
            self.agg
                .update_distinct(&mut accumulators, agg, &values, &groups, n)?;
        }
        Ok(accumulators)
    }

    /// Memory the deltas hold, roughly.
    fn memory(&self) -> usize {
        self.dicts.memory() + self.panes.values().map(pane_memory).sum::<usize>()
    }

    /// Drops the keys and DISTINCT values no pane's delta holds any more: of
    /// each dictionary, when enough were added since its last sweep, or
    /// `now`. Never while a batch's rows hold numbers ([`Self::update`]).
    fn sweep(&mut self, now: bool) {
        let Dicts { keys, values } = &mut self.dicts;
        sweep_dict(
            keys,
            &mut self.panes,
            now,
            |d, live| d.keys.keys().iter().for_each(|&k| live[k as usize] = true),
            |d, new| d.keys.renumber(new),
        );
        for (agg, values) in values.iter_mut().enumerate() {
            let Some(values) = values else { continue };
            sweep_dict(
                values,
                &mut self.panes,
                now,
                |d, live| {
                    for &p in d.seen[agg].iter().flat_map(|s| &s.order) {
                        live[unpair(p).1 as usize] = true;
                    }
                },
                |d, new| {
                    if let Some(seen) = &mut d.seen[agg] {
                        seen.renumber(new);
                    }
                },
            );
        }
    }

    /// Over budget: writes the largest deltas to the store until half the
    /// budget is free.
    fn enforce_budget(&mut self) -> anyhow::Result<()> {
        if self.store.is_none() {
            return Ok(());
        }
        if self.memory() <= self.memory_budget {
            return Ok(());
        }
        // What only panes gone held first.
        self.sweep(true);
        let mut used = self.memory();
        if used <= self.memory_budget {
            return Ok(());
        }
        let mut by_size: Vec<(usize, i64)> = self
            .panes
            .values()
            .map(|p| (pane_memory(p), p.end))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        for (size, end) in by_size {
            let mut pane = self.panes.remove(&end).expect("listed above");
            self.flush_pane(&mut pane)?;
            used = used - size + pane_memory(&pane);
            self.panes.insert(end, pane);
            if used <= self.memory_budget / 2 {
                break;
            }
        }
        // What only the moved panes held.
        self.sweep(true);
        Ok(())
    }

    /// The earliest watermark at which a pane needs attention: `i64::MIN` when
    /// a fired pane has changes to re-emit (at the next advance).
    fn next_due(&self) -> i64 {
        let lateness = self.lateness();
        let mut due = i64::MAX;
        for p in self.panes.values() {
            let t = if !p.fired {
                p.end - 1
            } else if !p.changed.is_empty() || !p.delta.keys.is_empty() {
                i64::MIN
            } else {
                (p.end - 1).saturating_add(lateness)
            };
            due = due.min(t);
            if p.end - 1 > due {
                break;
            }
        }
        due
    }

    /// Moves the watermark to `watermark`: re-emits fired panes late rows
    /// changed, fires the panes it completes, and purges those past their
    /// allowed lateness.
    fn advance(&mut self, watermark: i64, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        self.fired_through = watermark;
        let lateness = self.lateness();
        let ends: Vec<i64> = self
            .panes
            .range(..=watermark.saturating_add(1))
            .map(|(e, _)| *e)
            .collect();
        for end in ends {
            let mut pane = self.panes.remove(&end).expect("listed above");
            if pane.fired {
                self.emit_changes(&mut pane, watermark, out)?;
            } else {
                self.fire(&mut pane, watermark, lateness > 0, out)?;
            }
            if (end - 1).saturating_add(lateness) <= watermark {
                if lateness > 0 {
                    self.purge(&pane)?;
                }
            } else {
                self.panes.insert(end, pane);
            }
        }
        Ok(())
    }

    /// Adds the rows `by_pane` lists to their panes.
    fn update(
        &mut self,
        inputs: &Inputs,
        n: usize,
        by_pane: BTreeMap<i64, Vec<u32>>,
    ) -> anyhow::Result<()> {
        // Each row's key number, and its value number of each DISTINCT
        // aggregate, looked up once for all its panes.
        let mut numbers = vec![UNSEEN; n];
        let mut value_numbers: Vec<Vec<u32>> = self
            .dicts
            .values
            .iter()
            .map(|d| match d {
                Some(_) => vec![UNSEEN; n],
                None => Vec::new(),
            })
            .collect();
        for (end, indices) in by_pane {
            if !self.panes.contains_key(&end) {
                let pane = Pane {
                    end,
                    delta: self.new_delta()?,
                    in_store: false,
                    segments: 0,
                    // A window whose end the watermark has passed (allowed
                    // lateness) counts as fired: its groups come out as
                    // changes at the next advance, and survive a checkpoint
                    // as such.
                    fired: end - 1 <= self.fired_through,
                    changed: BTreeMap::new(),
                };
                self.panes.insert(end, pane);
            }
            let pane = &mut self.panes.get_mut(&end).expect("inserted above").delta;
            let mut group_indices = Vec::with_capacity(indices.len());
            for &row in &indices {
                let row = row as usize;
                if numbers[row] == UNSEEN {
                    numbers[row] = self.dicts.keys.intern(inputs.key(row));
                }
                let (g, new) = pane.keys.group(numbers[row]);
                if new {
                    pane.dirty.push(true);
                } else {
                    pane.dirty[g as usize] = true;
                }
                group_indices.push(g as usize);
            }
            let all_rows = indices.len() == n;
            let idx = (!all_rows).then(|| UInt32Array::from(indices));
            let total = pane.keys.len();
            for (i, acc) in pane.accumulators.iter_mut().enumerate() {
                let values: Vec<ArrayRef> = match &idx {
                    None => inputs.values[i].clone(),
                    Some(idx) => inputs.values[i]
                        .iter()
                        .map(|a| take(a.as_ref(), idx, None))
                        .collect::<Result<_, _>>()?,
                };
                let mut filter = match (&inputs.filters[i], &idx) {
                    (None, _) => None,
                    (Some(f), None) => Some(f.clone()),
                    (Some(f), Some(idx)) => Some(take(f, idx, None)?.as_boolean().clone()),
                };
                if let (Some(dict), Some(seen)) = (&mut self.dicts.values[i], &mut pane.seen[i]) {
                    // Only the rows whose (group, value) the pane has not seen
                    // reach the accumulator; a row the filter drops sees
                    // nothing, and a null passes (the accumulator skips it).
                    let numbers = &mut value_numbers[i];
                    let mask: Vec<bool> = (0..group_indices.len())
                        .map(|r| {
                            if filter
                                .as_ref()
                                .is_some_and(|f| !f.is_valid(r) || !f.value(r))
                            {
                                return false;
                            }
                            let row = idx.as_ref().map_or(r, |idx| idx.value(r) as usize);
                            if numbers[row] == UNSEEN {
                                numbers[row] = match inputs.distinct_value(i, row) {
                                    Some(v) => dict.intern(v),
                                    None => NULL_VALUE,
                                };
                            }
                            numbers[row] == NULL_VALUE
                                || seen.insert(group_indices[r] as u32, numbers[row])
                        })
                        .collect();
                    filter = Some(BooleanArray::from(mask));
                }
                acc.update_batch(&values, &group_indices, filter.as_ref(), total)?;
            }
        }
        Ok(())
    }
}

/// Sweeps `dict` ([`Dict::sweep`], when due or `now`): `mark` sets the
/// numbers a delta holds, `renumber` applies the new numbering to a delta.
fn sweep_dict(
    dict: &mut Dict,
    panes: &mut BTreeMap<i64, Pane>,
    now: bool,
    mark: impl Fn(&Delta, &mut [bool]),
    renumber: impl Fn(&mut Delta, &[u32]),
) {
    if !now && !dict.sweep_due() {
        return;
    }
    let mut live = vec![false; dict.len()];
    for p in panes.values() {
        mark(&p.delta, &mut live);
    }
    if let Some(new) = dict.sweep(&live) {
        for p in panes.values_mut() {
            renumber(&mut p.delta, &new);
        }
    }
}

fn pane_memory(p: &Pane) -> usize {
    let d = &p.delta;
    d.keys.memory()
        + d.dirty.capacity()
        + d.seen.iter().flatten().map(Seen::memory).sum::<usize>()
        + d.accumulators.iter().map(|a| a.size()).sum::<usize>()
}

impl Operator for WindowAggregateOp {
    fn name(&self) -> &'static str {
        "window aggregate"
    }

    /// Rows are taken in order; where a row arrived under a watermark that
    /// completes a window (or, with allowed lateness, that re-emits changes),
    /// the rows before it are applied and the watermark moved first, so a
    /// batch gives the same output as feeding its rows one at a time.
    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let wm = batch.arrival_watermark.values();
        let lateness = self.lateness();
        let mut inputs: Option<Inputs> = None;
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late: Vec<u32> = Vec::new();
        let mut out_of_range: Vec<u32> = Vec::new();
        let mut next_due = self.next_due();
        for row in 0..n {
            let w = wm[row];
            if w > self.fired_through && w >= next_due {
                if !by_pane.is_empty() {
                    let inputs = match &inputs {
                        Some(i) => i,
                        None => inputs.insert(self.agg.inputs(data)?),
                    };
                    self.update(inputs, n, std::mem::take(&mut by_pane))?;
                }
                self.advance(w, out)?;
                next_due = self.next_due();
            }
            if times.is_null(row) {
                late.push(row as u32);
                continue;
            }
            let ts = times.value(row);
            let arrived_under = w.max(self.fired_through);
            let Some(ends) = self.assigner.ends(ts) else {
                out_of_range.push(row as u32);
                continue;
            };
            let mut assigned = false;
            // A window ends after ts, so `end - 1` cannot overflow.
            for end in ends {
                if (end - 1).saturating_add(lateness) <= arrived_under {
                    // This and every earlier window are closed.
                    break;
                }
                by_pane.entry(end).or_default().push(row as u32);
                assigned = true;
                // A window already past its end is re-emitted at the next advance.
                next_due = next_due.min(if end - 1 <= arrived_under {
                    i64::MIN
                } else {
                    end - 1
                });
            }
            if !assigned {
                late.push(row as u32);
            }
        }
        if !by_pane.is_empty() {
            let inputs = match &inputs {
                Some(i) => i,
                None => inputs.insert(self.agg.inputs(data)?),
            };
            self.update(inputs, n, by_pane)?;
        }
        ctx.set_aside_late(
            &batch,
            late,
            "late: every window this row belongs to had already closed",
        )?;
        ctx.set_aside_late(&batch, out_of_range, OUTSIDE_WINDOW_RANGE)?;
        self.enforce_budget()?;
        self.sweep(false);
        Ok(())
    }

    fn advance_watermark(
        &mut self,
        watermark: i64,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        if watermark <= self.fired_through {
            return Ok(());
        }
        self.advance(watermark, out)?;
        self.sweep(false);
        Ok(())
    }

    fn next_emission(&self) -> Option<i64> {
        // Panes are ordered by end; windows fire at pane ends.
        self.panes.values().find(|p| !p.fired).map(|p| p.end - 1)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        self.memory_budget = state.memory_budget;
        // The panes the checkpoint holds: one seek per pane.
        let mut dicts = std::mem::take(&mut self.dicts);
        let mut from = Vec::new();
        while let Some(key) = state.store.first_key_from(&from)? {
            let end = pane_end(&key)?;
            let fired = end - 1 <= self.fired_through;
            let mut changed = BTreeMap::new();
            if fired {
                // Changes late rows made that were not re-emitted yet.
                for entry in state.store.scan(&pane_prefix(end))? {
                    let (k, v) = entry?;
                    if k.get(8..12) == Some(&SEGMENT_MARK[..]) {
                        break;
                    }
                    let (key, kind, _) = split_stored_key(&k)?;
                    if kind == KIND_CHANGED {
                        changed.insert(key.into(), v.first() == Some(&1));
                    }
                }
            }
            let pane = match self.restore_segments(&mut dicts, &state.store, end)? {
                Some((delta, segments)) => Pane {
                    end,
                    delta,
                    in_store: false,
                    segments,
                    fired,
                    changed,
                },
                None => Pane {
                    end,
                    delta: self.new_delta()?,
                    in_store: true,
                    segments: 0,
                    fired,
                    changed,
                },
            };
            self.panes.insert(end, pane);
            match end.checked_add(1) {
                Some(next) => from = pane_prefix(next).to_vec(),
                None => break,
            }
        }
        self.dicts = dicts;
        self.store = Some(state.store);
        Ok(())
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        if self.store.is_none() {
            return Ok(());
        }
        let ends: Vec<i64> = self.panes.keys().copied().collect();
        for end in ends {
            let mut pane = self.panes.remove(&end).expect("listed above");
            if !pane.in_store && !pane.fired {
                // Memory keeps the pane whole; the store gets a copy of what
                // changed since the last one.
                self.copy_pane(&mut pane)?;
            } else {
                self.flush_pane(&mut pane)?;
            }
            if !pane.changed.is_empty() {
                let store = self.store.as_ref().expect("checked above");
                let mut batch = store.batch();
                for (k, emitted) in &pane.changed {
                    let key = with_kind(&group_prefix(end, k), KIND_CHANGED);
                    store.put(&mut batch, &key, &[u8::from(*emitted)])?;
                }
                store.write(batch)?;
            }
            self.panes.insert(end, pane);
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.panes.values().map(|p| p.delta.keys.len()).sum()
    }
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
