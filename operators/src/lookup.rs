//! A stream joined to a table read from a compacted topic.
//!
//! ```text
//! table topic --(task: read to its end at start, then as it changes)--> apply_table
//!     key -> versions [(version time, topic order, row or deleted)], by time
//! stream batch --key expr--> lookup: the version as of the row's event time
//!     (FOR SYSTEM_TIME AS OF), or the latest --> stream columns ++ table columns
//! ```
//!
//! The table lives in RocksDB (a store of its own, outside the task's
//! checkpoints: the compacted topic is the table's source of truth, so it is
//! read again into an empty store at every start), one value per key holding
//! its versions; without a store (operator tests) in a hash map. Every version
//! read is kept for AS OF lookups (a stream row behind the watermark may still
//! need an old one); a latest-value join keeps one row per key.
//!
//! ## Waiting for the table (FOR SYSTEM_TIME AS OF)
//!
//! A row at event time `t` is joined only once the table's watermark has
//! reached `t`: until then a version at or before `t` may still be on its way
//! (Flink's event-time temporal join does the same). The task computes the
//! table's watermark from its topic ([`crate::Operator::set_table_watermark`]):
//! per partition the greatest version time read minus the table's watermark
//! delay, or no limit once the partition has been read to its end and stayed
//! there for the table's `scan.watermark.idle-timeout` (default 0: a table
//! that is caught up never holds the stream back, which is what reference
//! data wants).
//!
//! ```text
//! row (t > table watermark, t > its arrival watermark) --> held (checkpointed)
//! watermark W, table watermark T --> held rows with t <= T joined, emitted
//!     under the watermark downstream had already seen;
//!     downstream watermark = min(W, earliest held t - 1)
//! ```
//!
//! Rows behind the stream's own watermark are late anyway and are joined at
//! once; holding them could not keep the downstream watermark monotonic.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;
use weir_sql::LookupKind;
use weir_state::OperatorState;
use weir_state::codec::key::{self, KeyError};
use weir_state::codec::{CodecError, Kind, Reader, Writer};

use crate::ids::{ROW_ID_LEN, RowId};
use crate::operator::{Batch, Context, Operator, StateAttachment, TableChanges, event_times};
use crate::watermark::END_OF_TIME;

#[derive(Clone)]
struct Version {
    time: i64,
    seq: u64,
    row: Option<Box<[u8]>>,
}

/// A key's versions in the store, a `Kind::TableVersions` record:
/// ```text
/// version n(varint) { time(i64) seq(varint) has_row(bool) [row(bytes)] }*n
/// ```
fn encode_versions(versions: &[Version]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + versions
            .iter()
            .map(|v| 20 + v.row.as_ref().map_or(0, |r| r.len()))
            .sum::<usize>(),
    );
    let mut w = Writer::record(&mut out, Kind::TableVersions);
    w.len(versions.len());
    for v in versions {
        w.i64(v.time);
        w.varint(v.seq);
        w.bool(v.row.is_some());
        if let Some(r) = &v.row {
            w.bytes(r);
        }
    }
    out
}

fn decode_versions(b: &[u8]) -> Result<Vec<Version>, CodecError> {
    let mut r = Reader::open(Kind::TableVersions, b)?;
    // A version is at least its time, a seq byte and a flag.
    let n = r.count(10)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let time = r.i64()?;
        let seq = r.varint()?;
        let row = if r.bool()? {
            Some(r.bytes()?.into())
        } else {
            None
        };
        out.push(Version { time, seq, row });
    }
    r.finish()?;
    Ok(out)
}

/// The join's output watermark in the store, a `Kind::JoinWatermark` record:
/// `version watermark(i64)`.
fn encode_watermark(w: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    Writer::record(&mut out, Kind::JoinWatermark).i64(w);
    out
}

fn decode_watermark(b: &[u8]) -> Result<i64, CodecError> {
    let mut r = Reader::open(Kind::JoinWatermark, b)?;
    let w = r.i64()?;
    r.finish()?;
    Ok(w)
}

/// A table change for one key: key, version time, row (`None`: deleted).
type Update<'a> = (&'a [u8], i64, Option<Box<[u8]>>);

/// Where the table's versions are kept.
enum Versions {
    Memory(HashMap<Box<[u8]>, Vec<Version>>),
    Store(OperatorState),
}

pub struct LookupJoinOp {
    table: String,
    key: Arc<dyn PhysicalExpr>,
    key_type: DataType,
    /// The stream's event-time column, for `FOR SYSTEM_TIME AS OF`.
    as_of: Option<usize>,
    kind: LookupKind,
    /// The table's primary key and version-time columns.
    table_key: usize,
    table_time: Option<usize>,
    table_schema: SchemaRef,
    rows: RowConverter,
    keys: RowConverter,
    versions: Versions,
    seq: u64,
    schema: SchemaRef,
    /// Stream rows waiting for the table (AS OF joins only).
    held: Held,
}

/// A held row's place: event time, then identity (unique per row).
type HeldKey = (i64, RowId);

/// Stream rows waiting for the table's watermark to reach their event time.
struct Held {
    /// The stream's columns, for rows kept as bytes.
    schema: SchemaRef,
    converter: RowConverter,
    rows: BTreeMap<HeldKey, Box<[u8]>>,
    /// The table's watermark: rows at or before it are joined.
    table_watermark: i64,
    /// The highest stream watermark seen.
    input_watermark: i64,
    /// The watermark downstream operators have been given (monotonic).
    output_watermark: i64,
    store: Option<OperatorState>,
    /// Held since the last flush, and released since then having been stored.
    added: HashSet<HeldKey>,
    released: Vec<HeldKey>,
}

/// Store keys: `H` + event time (order-preserving) + identity -> row bytes;
/// `W` -> the output watermark.
const TAG_HELD: u8 = b'H';
const KEY_OUTPUT_WATERMARK: &[u8] = b"W";

fn held_store_key(k: &HeldKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + ROW_ID_LEN);
    out.push(TAG_HELD);
    out.extend_from_slice(&key::i64_bytes(k.0));
    out.extend_from_slice(&k.1);
    out
}

fn held_from_store_key(k: &[u8]) -> Result<HeldKey, KeyError> {
    const WHAT: &str = "held join row";
    if k.len() != 1 + 8 + ROW_ID_LEN || k[0] != TAG_HELD {
        return Err(KeyError {
            what: WHAT,
            len: k.len(),
        });
    }
    Ok((key::i64_at(k, 1, WHAT)?, key::field(k, 9, WHAT)?))
}

impl Held {
    fn new(schema: SchemaRef) -> anyhow::Result<Self> {
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            schema,
            converter,
            rows: BTreeMap::new(),
            table_watermark: END_OF_TIME,
            input_watermark: i64::MIN,
            output_watermark: i64::MIN,
            store: None,
            added: HashSet::new(),
            released: Vec::new(),
        })
    }

    /// The watermark downstream may see now, given a stream watermark `w`.
    fn cap(&self, w: i64) -> i64 {
        let earliest = self.rows.keys().next().map_or(END_OF_TIME, |k| k.0 - 1);
        self.output_watermark.max(w.min(earliest))
    }

    /// Sets aside the rows of `batch` that must wait; returns the others, with
    /// the arrival watermark each may pass downstream.
    fn hold(&mut self, batch: Batch, times: &TimestampMillisecondArray) -> anyhow::Result<Batch> {
        let arrival = batch.arrival_watermark.clone();
        let table_watermark = self.table_watermark;
        let waits = |r: usize| {
            times.is_valid(r)
                && times.value(r) > table_watermark
                && times.value(r) > arrival.value(r)
        };
        if self.rows.is_empty() && !(0..batch.num_rows()).any(waits) {
            if let Some(w) = arrival.iter().flatten().max() {
                self.input_watermark = self.input_watermark.max(w);
                self.output_watermark = self.output_watermark.max(w);
            }
            return Ok(batch);
        }
        let encoded = self.converter.convert_columns(batch.data.columns())?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut watermarks = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let a = arrival.value(r);
            self.input_watermark = self.input_watermark.max(a);
            if waits(r) {
                let key = (times.value(r), batch.ids.value(r).try_into()?);
                self.rows.insert(key, encoded.row(r).data().into());
                self.added.insert(key);
            } else {
                keep.push(r as u32);
                watermarks.push(self.cap(a));
            }
            self.output_watermark = self.cap(a);
        }
        let kept = batch.take(&UInt32Array::from(keep))?;
        Ok(Batch::new(
            kept.data,
            Arc::new(Int64Array::from(watermarks)),
            kept.ids,
        ))
    }

    /// Takes out the rows the table has caught up with (every row at the end of
    /// time), under the watermark downstream has seen so far.
    fn release(&mut self, watermark: i64) -> anyhow::Result<Option<Batch>> {
        self.input_watermark = self.input_watermark.max(watermark);
        let through = if watermark == END_OF_TIME {
            END_OF_TIME
        } else {
            self.table_watermark
        };
        let rest = match through.checked_add(1) {
            Some(next) => self.rows.split_off(&(next, [0u8; ROW_ID_LEN])),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.rows, rest);
        let under = self.output_watermark;
        self.output_watermark = self.cap(self.input_watermark);
        if due.is_empty() {
            return Ok(None);
        }
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(due.values().map(|r| parser.parse(r)))?;
        let ids = FixedSizeBinaryArray::try_from_iter(due.keys().map(|k| k.1))?;
        for k in due.keys() {
            if !self.added.remove(k) {
                self.released.push(*k);
            }
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(Some(Batch::uniform(data, under, Arc::new(ids))))
    }

    fn attach(&mut self, store: OperatorState) -> anyhow::Result<()> {
        if let Some(w) = store.get(KEY_OUTPUT_WATERMARK)? {
            self.output_watermark = decode_watermark(&w)?;
        }
        for entry in store.scan(&[TAG_HELD])? {
            let (k, v) = entry?;
            self.rows.insert(held_from_store_key(&k)?, v);
        }
        self.store = Some(store);
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut batch = store.batch();
        for k in self.released.drain(..) {
            store.delete(&mut batch, &held_store_key(&k))?;
        }
        for k in self.added.drain() {
            if let Some(row) = self.rows.get(&k) {
                store.put(&mut batch, &held_store_key(&k), row)?;
            }
        }
        store.put(
            &mut batch,
            KEY_OUTPUT_WATERMARK,
            &encode_watermark(self.output_watermark),
        )?;
        store.write(batch)?;
        Ok(())
    }
}

impl LookupJoinOp {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: String,
        key: Arc<dyn PhysicalExpr>,
        as_of: Option<usize>,
        kind: LookupKind,
        table_schema: SchemaRef,
        table_key: usize,
        table_time: Option<usize>,
        schema: SchemaRef,
    ) -> anyhow::Result<Self> {
        let key_type = table_schema.field(table_key).data_type().clone();
        let rows = RowConverter::new(
            table_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let keys = RowConverter::new(vec![SortField::new(key_type.clone())])?;
        let stream_fields = schema.fields().len() - table_schema.fields().len();
        let held = Held::new(Arc::new(datafusion::arrow::datatypes::Schema::new(
            schema.fields()[..stream_fields].to_vec(),
        )))?;
        Ok(Self {
            table,
            key,
            key_type,
            as_of,
            kind,
            table_key,
            table_time,
            table_schema,
            rows,
            keys,
            versions: Versions::Memory(HashMap::new()),
            seq: 0,
            schema,
            held,
        })
    }

    /// Adds versions, `(key, time, row or delete)` in topic order.
    fn add_versions(&mut self, updates: Vec<Update<'_>>) -> anyhow::Result<()> {
        // Each key's current versions, read once.
        let mut touched: HashMap<Box<[u8]>, Vec<Version>> = HashMap::new();
        {
            let mut keys: Vec<&[u8]> = updates.iter().map(|u| u.0).collect();
            keys.sort_unstable();
            keys.dedup();
            let current = self.get_many(&keys)?;
            for (k, v) in keys.into_iter().zip(current) {
                touched.insert(k.into(), v.unwrap_or_default());
            }
        }
        let latest_only = self.as_of.is_none();
        for (key, time, row) in updates {
            let seq = self.seq;
            self.seq += 1;
            let versions = touched.get_mut(key).expect("read above");
            let v = Version { time, seq, row };
            if latest_only {
                // Only the latest row is ever looked up.
                versions.clear();
                versions.push(v);
            } else {
                let at = versions.partition_point(|x| (x.time, x.seq) < (time, seq));
                versions.insert(at, v);
            }
        }
        let gone = |v: &Vec<Version>| latest_only && v.iter().all(|x| x.row.is_none());
        match &mut self.versions {
            Versions::Memory(map) => {
                for (k, v) in touched {
                    if gone(&v) {
                        map.remove(&k);
                    } else {
                        map.insert(k, v);
                    }
                }
            }
            Versions::Store(store) => {
                let mut batch = store.batch();
                for (k, v) in &touched {
                    if gone(v) {
                        store.delete(&mut batch, k)?;
                    } else {
                        store.put(&mut batch, k, &encode_versions(v))?;
                    }
                }
                store.write(batch)?;
            }
        }
        Ok(())
    }

    /// The versions of each of `keys`.
    fn get_many(&self, keys: &[&[u8]]) -> anyhow::Result<Vec<Option<Vec<Version>>>> {
        match &self.versions {
            Versions::Memory(map) => Ok(keys.iter().map(|k| map.get(*k).cloned()).collect()),
            Versions::Store(store) => Ok(store
                .multi_get(keys)?
                .into_iter()
                .map(|v| v.map(|b| decode_versions(&b)).transpose())
                .collect::<Result<_, _>>()?),
        }
    }

    /// Joins `batch` to the table as it is now.
    fn join(&self, batch: Batch, out: &mut Vec<Batch>) -> anyhow::Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys = self.key.evaluate(&batch.data)?.into_array(n)?;
        let keys = cast(&keys, &self.key_type)
            .with_context(|| format!("the join key cannot be read as the key of {}", self.table))?;
        let times = match self.as_of {
            Some(i) => Some(
                event_times(&batch.data, i)?
                    .iter()
                    .map(|t| t.unwrap_or(i64::MIN))
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let found = self.lookup(&keys, times.as_deref())?;
        let (batch, found) = match self.kind {
            LookupKind::Left => (batch, found),
            LookupKind::Inner => {
                let mask =
                    BooleanArray::from(found.iter().map(|f| f.is_some()).collect::<Vec<_>>());
                let kept = found.into_iter().flatten().map(Some).collect::<Vec<_>>();
                (batch.filter(&mask)?, kept)
            }
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let matched: Vec<&[u8]> = found.iter().flatten().map(|r| r.as_ref()).collect();
        let parser = self.rows.parser();
        let table_columns = self
            .rows
            .convert_rows(matched.iter().map(|r| parser.parse(r)))?;
        let mut next = 0u32;
        let idx = UInt32Array::from(
            found
                .iter()
                .map(|f| {
                    f.as_ref().map(|_| {
                        next += 1;
                        next - 1
                    })
                })
                .collect::<Vec<_>>(),
        );
        let mut columns: Vec<ArrayRef> = batch.data.columns().to_vec();
        for c in &table_columns {
            columns.push(take(c.as_ref(), &idx, None)?);
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        out.push(batch.with_data(data));
        Ok(())
    }

    /// The encoded table row for each stream row (`None`: no match).
    fn lookup(
        &self,
        keys: &ArrayRef,
        times: Option<&[i64]>,
    ) -> anyhow::Result<Vec<Option<Box<[u8]>>>> {
        let encoded = self.keys.convert_columns(std::slice::from_ref(keys))?;
        let mut distinct: Vec<&[u8]> = (0..keys.len())
            .filter(|&r| !keys.is_null(r))
            .map(|r| encoded.row(r).data())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        let found: HashMap<&[u8], Vec<Version>> = distinct
            .iter()
            .copied()
            .zip(self.get_many(&distinct)?)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        Ok((0..keys.len())
            .map(|r| {
                if keys.is_null(r) {
                    return None;
                }
                let versions = found.get(encoded.row(r).data())?;
                let v = match times {
                    None => versions.last()?,
                    Some(t) => {
                        let n = versions.partition_point(|v| v.time <= t[r]);
                        versions.get(n.checked_sub(1)?)?
                    }
                };
                v.row.clone()
            })
            .collect())
    }
}

impl Operator for LookupJoinOp {
    fn name(&self) -> &'static str {
        "lookup join"
    }

    fn process(
        &mut self,
        batch: Batch,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = match self.as_of {
            Some(i) => {
                // A cheap clone (shared buffers), so `batch` can move on.
                let times = event_times(&batch.data, i)?.clone();
                self.held.hold(batch, &times)?
            }
            None => batch,
        };
        self.join(batch, out)
    }

    fn advance_watermark(
        &mut self,
        watermark: i64,
        _ctx: &mut Context,
        out: &mut Vec<Batch>,
    ) -> anyhow::Result<()> {
        if self.as_of.is_some()
            && let Some(due) = self.held.release(watermark)?
        {
            self.join(due, out)?;
        }
        Ok(())
    }

    fn output_watermark(&self, input: i64) -> i64 {
        if self.as_of.is_some() {
            self.held.output_watermark.min(input)
        } else {
            input
        }
    }

    fn set_table_watermark(&mut self, table: &str, watermark: i64) {
        if table == self.table {
            self.held.table_watermark = watermark;
        }
    }

    fn is_stateful(&self) -> bool {
        self.as_of.is_some()
    }

    fn attach_state(&mut self, state: StateAttachment) -> anyhow::Result<()> {
        self.held.input_watermark = self.held.input_watermark.max(state.fired_through);
        self.held.attach(state.store)
    }

    fn flush_state(&mut self) -> anyhow::Result<()> {
        self.held.flush()
    }

    fn state_rows(&self) -> usize {
        self.held.rows.len()
    }

    fn apply_table(&mut self, table: &str, changes: &TableChanges) -> anyhow::Result<()> {
        if table != self.table {
            return Ok(());
        }
        let rows = &changes.rows;
        if rows.schema().fields().len() != self.table_schema.fields().len() {
            anyhow::bail!("table {table}'s rows do not have its declared columns");
        }
        let key_column = cast(rows.column(self.table_key), &self.key_type)?;
        let keys = self.keys.convert_columns(&[key_column])?;
        let encoded = self.rows.convert_columns(rows.columns())?;
        let times = match self.table_time {
            Some(i) => Some(event_times(rows, i)?),
            None => None,
        };
        let delete_keys = {
            let texts = StringArray::from_iter_values(changes.deletes.iter().map(|d| d.1.as_str()));
            let typed = cast(&(Arc::new(texts) as ArrayRef), &self.key_type)?;
            self.keys.convert_columns(&[typed])?
        };
        let mut updates = Vec::with_capacity(rows.num_rows() + changes.deletes.len());
        let mut deletes = changes.deletes.iter().enumerate().peekable();
        for r in 0..=rows.num_rows() {
            while let Some((d, (_, _, time))) = deletes.next_if(|(_, (at, _, _))| *at <= r) {
                updates.push((delete_keys.row(d).data(), *time, None));
            }
            if r == rows.num_rows() {
                break;
            }
            if rows.column(self.table_key).is_null(r) {
                continue;
            }
            let time = times.map_or(0, |t| if t.is_null(r) { i64::MIN } else { t.value(r) });
            updates.push((keys.row(r).data(), time, Some(encoded.row(r).data().into())));
        }
        self.add_versions(updates)
    }

    fn joins_table(&self) -> Option<&str> {
        Some(&self.table)
    }

    fn attach_table_store(&mut self, store: OperatorState) -> anyhow::Result<()> {
        if let Versions::Memory(map) = &self.versions
            && !map.is_empty()
        {
            anyhow::bail!(
                "table {}: a store is attached before any row is read",
                self.table
            );
        }
        self.versions = Versions::Store(store);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type View = Vec<(i64, u64, Option<Vec<u8>>)>;

    fn view(versions: &[Version]) -> View {
        versions
            .iter()
            .map(|v| (v.time, v.seq, v.row.as_ref().map(|r| r.to_vec())))
            .collect()
    }

    proptest! {
        #[test]
        fn table_versions_round_trip(
            versions in proptest::collection::vec(
                (
                    any::<i64>(),
                    any::<u64>(),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
                ),
                0..8,
            ),
        ) {
            let vs: Vec<Version> = versions
                .iter()
                .map(|(time, seq, row)| Version {
                    time: *time,
                    seq: *seq,
                    row: row.as_ref().map(|r| r.as_slice().into()),
                })
                .collect();
            let bytes = encode_versions(&vs);
            prop_assert_eq!(bytes[0], Kind::TableVersions.version());
            prop_assert_eq!(view(&decode_versions(&bytes).unwrap()), versions);
            for cut in 0..bytes.len() {
                prop_assert!(decode_versions(&bytes[..cut]).is_err(), "cut at {}", cut);
            }
        }

        #[test]
        fn join_watermarks_round_trip(w in any::<i64>()) {
            let bytes = encode_watermark(w);
            prop_assert_eq!(decode_watermark(&bytes).unwrap(), w);
            for cut in 0..bytes.len() {
                prop_assert!(decode_watermark(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_as_versions(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = decode_versions(&bytes);
            let _ = decode_watermark(&bytes);
            let _ = held_from_store_key(&bytes);
        }

        #[test]
        fn held_keys_round_trip(t in any::<i64>(), id in any::<RowId>()) {
            let k = held_store_key(&(t, id));
            prop_assert_eq!(held_from_store_key(&k).unwrap(), (t, id));
            for cut in 0..k.len() {
                prop_assert!(held_from_store_key(&k[..cut]).is_err());
            }
        }
    }

    #[test]
    fn an_old_join_watermark_is_refused() {
        // Before the codec the watermark was 8 bytes without a version.
        assert!(decode_watermark(&(-3i64).to_le_bytes()).is_err());
    }
}
