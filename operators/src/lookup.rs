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

use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;
use weir_sql::LookupKind;
use weir_state::OperatorState;

use crate::operator::{Batch, Context, Operator, event_times};

/// What a table's topic said since it was last read, in topic order.
pub struct TableChanges {
    /// Decoded rows (upserts), in the table's schema.
    pub rows: RecordBatch,
    /// Deletes (records without a value): where among `rows` each comes (it
    /// precedes row `position`), its key as text, and its version time.
    pub deletes: Vec<(usize, String, i64)>,
}

#[derive(Clone)]
struct Version {
    time: i64,
    seq: u64,
    row: Option<Box<[u8]>>,
}

/// A key's versions in the store: per version, time (i64 LE), topic order
/// (u64 LE), 1 + row length (u32 LE, 0 for a delete) and the row.
fn encode_versions(versions: &[Version]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in versions {
        out.extend_from_slice(&v.time.to_le_bytes());
        out.extend_from_slice(&v.seq.to_le_bytes());
        match &v.row {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some(r) => {
                out.extend_from_slice(&(r.len() as u32 + 1).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
    }
    out
}

fn decode_versions(mut b: &[u8]) -> anyhow::Result<Vec<Version>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        anyhow::ensure!(b.len() >= 20, "stored table versions are truncated");
        let time = i64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")) as usize;
        b = &b[20..];
        let row = if len == 0 {
            None
        } else {
            anyhow::ensure!(b.len() >= len - 1, "stored table row is truncated");
            let (r, rest) = b.split_at(len - 1);
            b = rest;
            Some(r.into())
        };
        out.push(Version { time, seq, row });
    }
    Ok(out)
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
            Versions::Store(store) => store
                .multi_get(keys)?
                .into_iter()
                .map(|v| v.map(|b| decode_versions(&b)).transpose())
                .collect(),
        }
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
