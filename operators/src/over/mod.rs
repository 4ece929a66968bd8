//! Per-event rolling aggregates: `agg(x) OVER (PARTITION BY k ORDER BY ts
//! RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW)` and
//! `ROWS BETWEEN n PRECEDING AND CURRENT ROW`.
//!
//! ```text
//! row (ts > watermark) --> pending rows of its key
//! watermark W          --> per key: pending rows with ts <= W, in (ts, arrival) order,
//!                          appended to the key's history; every call slides its frame
//!                          over them (add the new rows, retract what fell out) and the
//!                          row comes out with one value per call
//! ```
//!
//! A row is emitted once, when the watermark passes its event time, so every
//! row that precedes it in event time is in its frame; a row whose event time
//! the watermark had already passed when it arrived is late. Several calls
//! with the same PARTITION BY share one history per key, kept back as far as
//! the widest frame reaches. Each call keeps a sliding accumulator (counts,
//! compensated sums, Welford moments, a monotonic deque for min/max, a
//! multiset for DISTINCT), so a row costs O(1) amortised per call whatever the
//! frame's size.
//!
//! State, in the operator's column family when a store is attached:
//! ```text
//! b'S' key                 -> the key's history and pending rows (see `KeyState::encode`)
//! b'P' key                 -> (empty) the key has pending rows: loaded when the task starts
//! b'X' expiry(8) key       -> (empty) when the key's stored state can be dropped
//! ```
//! Keys live in memory while they have pending rows or were touched since
//! the last flush; others are read back on demand, so memory holds the active
//! keys, not all of them. A key's state goes once no future row can reach it:
//! with only RANGE frames, when the watermark passes its last event time plus
//! the widest range; with a ROWS frame, after `'state.ttl'` of event time
//! without a row for the key (never, if unset).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch,
    UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;
use weir_sql::{OverFrame, OverFunction};
use weir_state::OperatorState;
use weir_state::codec::{self, CodecError, Kind, Reader, Writer};

use crate::ids::{ROW_ID_LEN, RowId};
use crate::operator::{Batch, Context, Operator, StateAttachment, event_times};

/// One `agg(x) OVER (...)`, bound to the stage's input.
pub struct OverCallSpec {
    pub function: OverFunction,
    pub arg: Arc<dyn PhysicalExpr>,
    pub arg_type: DataType,
    pub distinct: bool,
    pub frame: OverFrame,
    /// The column type the plan gives the call's result.
    pub output_type: DataType,
}

impl OverCallSpec {
    /// Whether the call sums or compares its argument as integers.
    fn integral(&self) -> bool {
        self.arg_type.is_integer()
    }
}

/// An aggregate argument as the accumulators see it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    I(i64),
    F(f64),
    /// A DISTINCT argument, row-encoded.
    B(Box<[u8]>),
}

impl Val {
    fn f64(&self) -> f64 {
        match self {
            Val::I(v) => *v as f64,
            Val::F(v) => *v,
            Val::Null | Val::B(_) => 0.0,
        }
    }

    /// `self` ranks at or before `other` for max (`max`) or min (`!max`).
    fn dominated_by(&self, other: &Val, max: bool) -> bool {
        let ord = match (self, other) {
            (Val::I(a), Val::I(b)) => a.cmp(b),
            (a, b) => a.f64().total_cmp(&b.f64()),
        };
        if max { ord.is_le() } else { ord.is_ge() }
    }

    fn size(&self) -> usize {
        16 + match self {
            Val::B(b) => b.len(),
            _ => 0,
        }
    }
}

struct HistoryRow {
    ts: i64,
    vals: Box<[Val]>,
}

/// A row waiting for the watermark. Rows of a key come out in (ts, id)
/// order: for source rows, offset order within a partition, so a replay
/// orders ties as the first run did.
struct PendingRow {
    ts: i64,
    /// The whole input row, row-encoded.
    row: Box<[u8]>,
    id: RowId,
    vals: Box<[Val]>,
}

impl PendingRow {
    fn size(&self) -> usize {
        48 + self.row.len() + self.vals.iter().map(Val::size).sum::<usize>()
    }
}

/// Neumaier's compensated sum, so adding and retracting floats for hours
/// does not drift.
#[derive(Default, Clone, Copy)]
struct KahanSum {
    sum: f64,
    comp: f64,
}

impl KahanSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

enum AccState {
    Count {
        n: i64,
    },
    CountDistinct {
        seen: HashMap<Box<[u8]>, u32>,
    },
    Sum {
        n: i64,
        int: i128,
        float: KahanSum,
    },
    /// Welford's running mean and sum of squared deviations.
    Moments {
        n: i64,
        mean: f64,
        m2: f64,
    },
    /// Candidates for the extreme, by absolute row index: each dominates the
    /// ones after it, so the front is the answer.
    Extreme {
        max: bool,
        deque: VecDeque<(u64, Val)>,
    },
}

/// A call's accumulator over the frame `[start, end)` of the key's history
/// (absolute row indices).
struct Acc {
    start: u64,
    end: u64,
    state: AccState,
}

impl Acc {
    fn new(call: &OverCallSpec, at: u64) -> Self {
        let state = match call.function {
            OverFunction::Count if call.distinct => AccState::CountDistinct {
                seen: HashMap::new(),
            },
            OverFunction::Count => AccState::Count { n: 0 },
            OverFunction::Sum | OverFunction::Avg => AccState::Sum {
                n: 0,
                int: 0,
                float: KahanSum::default(),
            },
            OverFunction::Min | OverFunction::Max => AccState::Extreme {
                max: call.function == OverFunction::Max,
                deque: VecDeque::new(),
            },
            OverFunction::StddevSamp
            | OverFunction::StddevPop
            | OverFunction::VarSamp
            | OverFunction::VarPop => AccState::Moments {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
        };
        Self {
            start: at,
            end: at,
            state,
        }
    }

    fn add(&mut self, index: u64, v: &Val) {
        self.end = index + 1;
        if *v == Val::Null {
            return;
        }
        match &mut self.state {
            AccState::Count { n } => *n += 1,
            AccState::CountDistinct { seen } => {
                if let Val::B(b) = v {
                    *seen.entry(b.clone()).or_insert(0) += 1;
                }
            }
            AccState::Sum { n, int, float } => {
                *n += 1;
                match v {
                    Val::I(x) => *int += *x as i128,
                    v => float.add(v.f64()),
                }
            }
            AccState::Moments { n, mean, m2 } => {
                let x = v.f64();
                *n += 1;
                let d = x - *mean;
                *mean += d / *n as f64;
                *m2 += d * (x - *mean);
            }
            AccState::Extreme { max, deque } => {
                while deque.back().is_some_and(|(_, b)| b.dominated_by(v, *max)) {
                    deque.pop_back();
                }
                deque.push_back((index, v.clone()));
            }
        }
    }

    /// Retracts the frame's first row, whose value is `v`.
    fn remove_first(&mut self, v: &Val) {
        let index = self.start;
        self.start += 1;
        if *v == Val::Null {
            return;
        }
        match &mut self.state {
            AccState::Count { n } => *n -= 1,
            AccState::CountDistinct { seen } => {
                if let Val::B(b) = v
                    && let Some(c) = seen.get_mut(b)
                {
                    *c -= 1;
                    if *c == 0 {
                        seen.remove(b);
                    }
                }
            }
            AccState::Sum { n, int, float } => {
                *n -= 1;
                if *n == 0 {
                    *int = 0;
                    *float = KahanSum::default();
                } else {
                    match v {
                        Val::I(x) => *int -= *x as i128,
                        v => float.add(-v.f64()),
                    }
                }
            }
            AccState::Moments { n, mean, m2 } => {
                if *n <= 1 {
                    (*n, *mean, *m2) = (0, 0.0, 0.0);
                } else {
                    let x = v.f64();
                    let d = x - *mean;
                    *n -= 1;
                    *mean -= d / *n as f64;
                    *m2 -= d * (x - *mean);
                    // One value left has no spread; do not let rounding say otherwise.
                    if *m2 < 0.0 || *n == 1 {
                        *m2 = 0.0;
                    }
                }
            }
            AccState::Extreme { deque, .. } => {
                if deque.front().is_some_and(|(i, _)| *i == index) {
                    deque.pop_front();
                }
            }
        }
    }

    fn value(&self, function: OverFunction) -> Val {
        match &self.state {
            AccState::Count { n } => Val::I(*n),
            AccState::CountDistinct { seen } => Val::I(seen.len() as i64),
            AccState::Sum { n: 0, .. } => Val::Null,
            AccState::Sum { n, int, float } => match function {
                OverFunction::Avg => Val::F((*int as f64 + float.value()) / *n as f64),
                _ if *int != 0 || float.value() == 0.0 => {
                    Val::I((*int).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
                }
                _ => Val::F(float.value()),
            },
            AccState::Moments { n, m2, .. } => {
                let n = *n as f64;
                let var = match function {
                    OverFunction::VarSamp | OverFunction::StddevSamp if n < 2.0 => {
                        return Val::Null;
                    }
                    OverFunction::VarSamp | OverFunction::StddevSamp => m2 / (n - 1.0),
                    _ if n < 1.0 => return Val::Null,
                    _ => m2 / n,
                };
                match function {
                    OverFunction::StddevSamp | OverFunction::StddevPop => Val::F(var.sqrt()),
                    _ => Val::F(var),
                }
            }
            AccState::Extreme { deque, .. } => {
                deque.front().map(|(_, v)| v.clone()).unwrap_or(Val::Null)
            }
        }
    }
}

#[derive(Default)]
struct KeyState {
    history: VecDeque<HistoryRow>,
    /// Absolute index of `history[0]`.
    base: u64,
    pending: Vec<PendingRow>,
    /// Event time of the newest emitted row.
    last_ts: Option<i64>,
    /// Per call; empty until built from `history` (after a load).
    accs: Vec<Acc>,
    /// Changed since it was last written to the store.
    dirty: bool,
    /// What the store holds for the key: a pending marker, an expiry entry.
    stored: bool,
    stored_pending: bool,
    stored_expiry: Option<i64>,
    bytes: usize,
}

const TAG_STATE: u8 = b'S';
const TAG_PENDING: u8 = b'P';
const TAG_EXPIRY: u8 = b'X';

fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tag);
    k.extend_from_slice(key);
    k
}

fn expiry_key(at: i64, key: &[u8]) -> Vec<u8> {
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
    fn encode(&self) -> Vec<u8> {
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

    fn decode(bytes: &[u8], calls: usize) -> Result<Self, CodecError> {
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
fn expiry_of(ks: &KeyState, retention_ms: Option<i64>) -> Option<i64> {
    if !ks.pending.is_empty() {
        return None;
    }
    Some(ks.last_ts?.saturating_add(retention_ms?))
}

pub struct OverAggregateOp {
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    key_converter: Option<RowConverter>,
    /// Encodes whole input rows while they wait for the watermark.
    row_converter: RowConverter,
    time_column: usize,
    calls: Vec<OverCallSpec>,
    distinct_converters: Vec<Option<RowConverter>>,
    schema: SchemaRef,
    /// How long after its last row a key's state can go (see the module doc).
    retention_ms: Option<i64>,
    keys: HashMap<Box<[u8]>, KeyState>,
    /// Event time -> keys with a row pending at that time.
    due: BTreeMap<i64, Vec<Box<[u8]>>>,
    /// (expiry, key) of keys in memory without pending rows.
    expiry: BTreeSet<(i64, Box<[u8]>)>,
    fired_through: i64,
    store: Option<OperatorState>,
    memory_budget: usize,
    bytes: usize,
}

impl OverAggregateOp {
    /// `retention_ms`: how long after its last row a key's state can go (see
    /// [`weir_sql::OverAggregate::retention_ms`]).
    pub fn new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        input: SchemaRef,
        time_column: usize,
        calls: Vec<OverCallSpec>,
        schema: SchemaRef,
        retention_ms: Option<i64>,
    ) -> anyhow::Result<Self> {
        let key_converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types.into_iter().map(SortField::new).collect(),
            )?)
        };
        let row_converter = RowConverter::new(
            input
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .context("an input column of the OVER aggregate cannot be buffered")?;
        let distinct_converters = calls
            .iter()
            .map(|c| {
                c.distinct
                    .then(|| RowConverter::new(vec![SortField::new(c.arg_type.clone())]))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            key_exprs,
            key_converter,
            row_converter,
            time_column,
            calls,
            distinct_converters,
            schema,
            retention_ms,
            keys: HashMap::new(),
            due: BTreeMap::new(),
            expiry: BTreeSet::new(),
            fired_through: i64::MIN,
            store: None,
            memory_budget: usize::MAX,
            bytes: 0,
        })
    }

    /// The argument of every call, per row, as accumulators see it.
    fn arg_values(&self, data: &RecordBatch) -> anyhow::Result<Vec<Vec<Val>>> {
        let n = data.num_rows();
        let mut out = Vec::with_capacity(self.calls.len());
        for (c, call) in self.calls.iter().enumerate() {
            let a = call.arg.evaluate(data)?.into_array(n)?;
            let vals: Vec<Val> = if let Some(conv) = &self.distinct_converters[c] {
                let rows = conv.convert_columns(std::slice::from_ref(&a))?;
                (0..n)
                    .map(|i| {
                        if a.is_null(i) {
                            Val::Null
                        } else {
                            Val::B(rows.row(i).as_ref().into())
                        }
                    })
                    .collect()
            } else if call.function == OverFunction::Count {
                (0..n)
                    .map(|i| if a.is_null(i) { Val::Null } else { Val::I(1) })
                    .collect()
            } else if call.integral() {
                let a = cast(&a, &DataType::Int64)?;
                a.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.map(Val::I).unwrap_or(Val::Null))
                    .collect()
            } else {
                let a = cast(&a, &DataType::Float64)?;
                a.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.map(Val::F).unwrap_or(Val::Null))
                    .collect()
            };
            out.push(vals);
        }
        Ok(out)
    }

    /// The key's state, read from the store if it is not in memory.
    fn load(&mut self, key: &[u8]) -> anyhow::Result<&mut KeyState> {
        if !self.keys.contains_key(key) {
            let mut ks = match &self.store {
                Some(store) => match store.get(&tagged(TAG_STATE, key))? {
                    Some(bytes) => KeyState::decode(&bytes, self.calls.len())?,
                    None => KeyState::default(),
                },
                None => KeyState::default(),
            };
            if ks.stored {
                ks.stored_expiry = self.expiry_of(&ks);
            }
            self.bytes += ks.bytes;
            self.keys.insert(key.into(), ks);
        } else if let Some(at) = self.expiry_of(&self.keys[key]) {
            self.expiry.remove(&(at, Box::from(key)));
        }
        Ok(self.keys.get_mut(key).expect("inserted above"))
    }

    fn expiry_of(&self, ks: &KeyState) -> Option<i64> {
        expiry_of(ks, self.retention_ms)
    }

    /// Slides every call's frame over the key's history rows from `first` on,
    /// pushing one value per row and call to `out` (when given).
    fn slide(
        calls: &[OverCallSpec],
        ks: &mut KeyState,
        first: u64,
        mut out: Option<&mut [Vec<Val>]>,
    ) {
        let end = ks.base + ks.history.len() as u64;
        for (c, call) in calls.iter().enumerate() {
            let acc = &mut ks.accs[c];
            let row = |i: u64| &ks.history[(i - ks.base) as usize];
            let mut i = first;
            while i < end {
                match call.frame {
                    OverFrame::Rows { preceding } => {
                        acc.add(i, &row(i).vals[c]);
                        while acc.end - acc.start > preceding.saturating_add(1) {
                            acc.remove_first(&row(acc.start).vals[c]);
                        }
                        if let Some(out) = out.as_deref_mut() {
                            out[c].push(acc.value(call.function));
                        }
                        i += 1;
                    }
                    OverFrame::Range { preceding_ms } => {
                        let ts = row(i).ts;
                        let mut j = i;
                        while j < end && row(j).ts == ts {
                            acc.add(j, &row(j).vals[c]);
                            j += 1;
                        }
                        let from = ts.saturating_sub(preceding_ms);
                        while acc.start < acc.end && row(acc.start).ts < from {
                            acc.remove_first(&row(acc.start).vals[c]);
                        }
                        if let Some(out) = out.as_deref_mut() {
                            let v = acc.value(call.function);
                            for _ in i..j {
                                out[c].push(v.clone());
                            }
                        }
                        i = j;
                    }
                }
            }
        }
    }

    /// Builds the key's accumulators from its history (after a load).
    fn ensure_accs(calls: &[OverCallSpec], ks: &mut KeyState) {
        if ks.accs.len() == calls.len() {
            return;
        }
        ks.accs = calls.iter().map(|c| Acc::new(c, ks.base)).collect();
        let base = ks.base;
        Self::slide(calls, ks, base, None);
    }

    /// Emits the key's pending rows with event time <= `watermark`.
    fn emit_key(
        &mut self,
        key: &[u8],
        watermark: i64,
        rows: &mut Vec<PendingRow>,
        values: &mut [Vec<Val>],
    ) -> anyhow::Result<()> {
        let calls = std::mem::take(&mut self.calls);
        let ks = self.load(key)?;
        Self::ensure_accs(&calls, ks);
        ks.pending.sort_by_key(|p| (p.ts, p.id));
        let n = ks.pending.partition_point(|p| p.ts <= watermark);
        let first = ks.base + ks.history.len() as u64;
        let mut added = 0usize;
        for p in ks.pending.drain(..n) {
            added += 16 * p.vals.len() + 32;
            ks.history.push_back(HistoryRow {
                ts: p.ts,
                vals: p.vals.clone(),
            });
            ks.last_ts = Some(p.ts);
            rows.push(p);
        }
        Self::slide(&calls, ks, first, Some(values));
        // History no frame reaches any more.
        let keep_from = ks.accs.iter().map(|a| a.start).min().unwrap_or(ks.base);
        let mut freed = 0usize;
        while ks.base < keep_from {
            if let Some(r) = ks.history.pop_front() {
                freed += 16 * r.vals.len() + 32;
            }
            ks.base += 1;
        }
        let freed_pending: usize = rows[rows.len() - n..].iter().map(PendingRow::size).sum();
        ks.bytes = (ks.bytes + added).saturating_sub(freed + freed_pending);
        ks.dirty = true;
        self.bytes = (self.bytes + added).saturating_sub(freed + freed_pending);
        self.calls = calls;
        let ks = &self.keys[key];
        if let Some(at) = self.expiry_of(ks) {
            self.expiry.insert((at, key.into()));
        }
        Ok(())
    }

    fn output(
        &self,
        rows: Vec<PendingRow>,
        values: Vec<Vec<Val>>,
        arrival: i64,
    ) -> anyhow::Result<Batch> {
        let parser = self.row_converter.parser();
        let mut columns = self
            .row_converter
            .convert_rows(rows.iter().map(|r| parser.parse(&r.row)))?;
        for (c, call) in self.calls.iter().enumerate() {
            let v = &values[c];
            let int_result = match call.function {
                OverFunction::Count => true,
                OverFunction::Sum | OverFunction::Min | OverFunction::Max => call.integral(),
                _ => false,
            };
            let a: ArrayRef = if int_result {
                Arc::new(
                    v.iter()
                        .map(|v| match v {
                            Val::I(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<Int64Array>(),
                )
            } else {
                Arc::new(
                    v.iter()
                        .map(|v| match v {
                            Val::Null | Val::B(_) => None,
                            v => Some(v.f64()),
                        })
                        .collect::<Float64Array>(),
                )
            };
            columns.push(cast(&a, &call.output_type)?);
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let ids = FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.id))?;
        // Rows come out in event-time order.
        let mut order: Vec<u32> = (0..rows.len() as u32).collect();
        order.sort_by_key(|&i| (rows[i as usize].ts, rows[i as usize].id));
        let batch = Batch::uniform(data, arrival, Arc::new(ids));
        batch.take(&UInt32Array::from(order))
    }

    /// Writes the changed keys to the store; drops clean keys from memory
    /// when over budget.
    fn flush(&mut self, evict: bool) -> anyhow::Result<()> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let mut batch = store.batch();
        let retention = self.retention_ms;
        for (key, ks) in self.keys.iter_mut() {
            if !ks.dirty {
                continue;
            }
            let expiry = expiry_of(ks, retention);
            store.put(&mut batch, &tagged(TAG_STATE, key), &ks.encode())?;
            let pending = !ks.pending.is_empty();
            if pending != ks.stored_pending {
                if pending {
                    store.put(&mut batch, &tagged(TAG_PENDING, key), &[])?;
                } else {
                    store.delete(&mut batch, &tagged(TAG_PENDING, key))?;
                }
                ks.stored_pending = pending;
            }
            if expiry != ks.stored_expiry {
                if let Some(old) = ks.stored_expiry {
                    store.delete(&mut batch, &expiry_key(old, key))?;
                }
                if let Some(new) = expiry {
                    store.put(&mut batch, &expiry_key(new, key), &[])?;
                }
                ks.stored_expiry = expiry;
            }
            ks.stored = true;
            ks.dirty = false;
        }
        store.write(batch)?;
        if evict {
            let mut freed = 0;
            let expiry = &mut self.expiry;
            self.keys.retain(|key, ks| {
                let keep = !ks.pending.is_empty();
                if !keep {
                    freed += ks.bytes;
                    if let Some(at) = ks.stored_expiry {
                        expiry.remove(&(at, key.clone()));
                    }
                }
                keep
            });
            // Keys left in the expiry set are all in memory.
            self.bytes = self.bytes.saturating_sub(freed);
        }
        Ok(())
    }

    /// Drops the state of keys no future row can reach: those in memory, and
    /// with `stored` also those only in the store (one scan of the expiry
    /// index, done at flushes rather than every watermark).
    fn expire(&mut self, watermark: i64, stored: bool) -> anyhow::Result<()> {
        let mut gone: Vec<(i64, Box<[u8]>)> = Vec::new();
        while let Some((at, _)) = self.expiry.first() {
            if *at > watermark {
                break;
            }
            gone.push(self.expiry.pop_first().expect("first exists"));
        }
        if gone.is_empty() && !stored {
            return Ok(());
        }
        let store = self.store.clone();
        let mut batch = store.as_ref().map(|s| s.batch());
        for (_, key) in &gone {
            if let Some(ks) = self.keys.remove(key) {
                self.bytes = self.bytes.saturating_sub(ks.bytes);
                if let (Some(s), Some(b)) = (&store, &mut batch)
                    && ks.stored
                {
                    s.delete(b, &tagged(TAG_STATE, key))?;
                    if let Some(at) = ks.stored_expiry {
                        s.delete(b, &expiry_key(at, key))?;
                    }
                    if ks.stored_pending {
                        s.delete(b, &tagged(TAG_PENDING, key))?;
                    }
                }
            }
        }
        // Stored keys that are not in memory: their expiry entries.
        if let (true, Some(s), Some(b)) = (stored, &store, &mut batch) {
            let mut stale = Vec::new();
            for entry in s.scan(&[TAG_EXPIRY])? {
                let (k, _) = entry?;
                let at = codec::key::i64_at(&k, 1, "OVER expiry")?;
                if at > watermark {
                    break;
                }
                stale.push((k, at));
            }
            for (k, _) in stale {
                let key = &k[9..];
                if self.keys.contains_key(key) {
                    // In memory (touched since): its flush rewrites the entry.
                    continue;
                }
                s.delete(b, &k)?;
                s.delete(b, &tagged(TAG_STATE, key))?;
            }
        }
        if let (Some(s), Some(b)) = (store, batch) {
            s.write(b)?;
        }
        Ok(())
    }
}

impl Operator for OverAggregateOp {
    fn name(&self) -> &'static str {
        "over aggregate"
    }

    fn process(
        &mut self,
        batch: Batch,
        ctx: &mut Context,
        _out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let wm = batch.arrival_watermark.values();
        let mut on_time = Vec::with_capacity(n);
        let mut late = Vec::new();
        for row in 0..n {
            if times.is_null(row) || times.value(row) <= wm[row].max(self.fired_through) {
                late.push(row as u32);
            } else {
                on_time.push(row as u32);
            }
        }
        ctx.set_aside_late(
            &batch,
            late,
            "late: the watermark had passed the row's event time, so the OVER results of its partition were already out",
        )?;
        if on_time.is_empty() {
            return Ok(());
        }
        let batch = if on_time.len() == n {
            batch
        } else {
            batch.take(&UInt32Array::from(on_time))?
        };
        let data = &batch.data;
        let n = data.num_rows();
        let times = event_times(data, self.time_column)?;
        let keys = match &self.key_converter {
            Some(conv) => {
                let arrays = self
                    .key_exprs
                    .iter()
                    .map(|e| e.evaluate(data).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::common::Result<Vec<_>>>()?;
                Some(conv.convert_columns(&arrays)?)
            }
            None => None,
        };
        let rows = self.row_converter.convert_columns(data.columns())?;
        let mut vals = self.arg_values(data)?;
        for i in 0..n {
            let key: Box<[u8]> = match &keys {
                Some(k) => k.row(i).as_ref().into(),
                None => Box::default(),
            };
            let ts = times.value(i);
            let row = PendingRow {
                ts,
                row: rows.row(i).as_ref().into(),
                id: batch.ids.value(i).try_into()?,
                vals: vals
                    .iter_mut()
                    .map(|v| std::mem::replace(&mut v[i], Val::Null))
                    .collect(),
            };
            let size = row.size() + key.len();
            let ks = self.load(&key)?;
            ks.pending.push(row);
            ks.dirty = true;
            ks.bytes += size;
            self.bytes += size;
            self.due.entry(ts).or_default().push(key);
        }
        if self.bytes > self.memory_budget && self.store.is_some() {
            self.flush(true)?;
        }
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
        let arrival = self.fired_through;
        self.fired_through = watermark;
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        while let Some((&ts, _)) = self.due.first_key_value() {
            if ts > watermark {
                break;
            }
            keys.extend(self.due.pop_first().expect("first exists").1);
        }
        if !keys.is_empty() {
            keys.sort();
            keys.dedup();
            let mut rows = Vec::new();
            let mut values: Vec<Vec<Val>> = vec![Vec::new(); self.calls.len()];
            for key in &keys {
                self.emit_key(key, watermark, &mut rows, &mut values)?;
            }
            if !rows.is_empty() {
                // Downstream sees the rows as arriving before this watermark,
                // so a later event-time operator does not find them late.
                out.push(self.output(rows, values, arrival)?);
            }
        }
        self.expire(watermark, false)?;
        if self.bytes > self.memory_budget && self.store.is_some() {
            self.flush(true)?;
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.fired_through = state.fired_through;
        self.memory_budget = state.memory_budget;
        self.store = Some(state.store);
        // Keys with rows still waiting for the watermark.
        let store = self.store.clone().expect("just set");
        let mut pending_keys = Vec::new();
        for entry in store.scan(&[TAG_PENDING])? {
            let (k, _) = entry?;
            pending_keys.push(k[1..].to_vec());
        }
        for key in pending_keys {
            let ks = self.load(&key)?;
            let times: Vec<i64> = ks.pending.iter().map(|p| p.ts).collect();
            for ts in times {
                self.due.entry(ts).or_default().push(key.clone().into());
            }
        }
        Ok(())
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        self.expire(self.fired_through, true)?;
        let evict = self.bytes > self.memory_budget / 2;
        self.flush(evict)
    }

    fn state_rows(&self) -> usize {
        self.keys
            .values()
            .map(|k| k.history.len() + k.pending.len())
            .sum()
    }
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
