//! A stream joined to a table read from a compacted topic.
//!
//! ```text
//! table topic --(task: read to its end at start, then as it changes)--> apply_table
//!     key -> versions [(version time, topic order, row or deleted)], by time
//! stream batch --key expr--> lookup: the version as of the row's event time
//!     (FOR SYSTEM_TIME AS OF), or the latest --> stream columns ++ table columns
//! ```
//!
//! The table is held in memory, rebuilt from its topic at every start (the
//! compacted topic is its source of truth, so it is not checkpointed). Every
//! version read is kept for AS OF lookups (a stream row behind the watermark
//! may still need an old one); a latest-value join keeps one row per key.

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

use crate::operator::{Batch, Context, Operator, event_times};

/// What a table's topic said since it was last read, in topic order.
pub struct TableChanges {
    /// Decoded rows (upserts), in the table's schema.
    pub rows: RecordBatch,
    /// Deletes (records without a value): where among `rows` each comes (it
    /// precedes row `position`), its key as text, and its version time.
    pub deletes: Vec<(usize, String, i64)>,
}

struct Version {
    time: i64,
    seq: u64,
    row: Option<Box<[u8]>>,
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
    versions: HashMap<Box<[u8]>, Vec<Version>>,
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
            versions: HashMap::new(),
            seq: 0,
            schema,
        })
    }

    fn add_version(&mut self, key: &[u8], time: i64, row: Option<Box<[u8]>>) {
        let seq = self.seq;
        self.seq += 1;
        let versions = self.versions.entry(key.into()).or_default();
        let v = Version { time, seq, row };
        if self.as_of.is_none() {
            // Only the latest row is ever looked up.
            versions.clear();
            versions.push(v);
        } else {
            let at = versions.partition_point(|x| (x.time, x.seq) < (time, seq));
            versions.insert(at, v);
        }
        if versions.len() == 1 && versions[0].row.is_none() && self.as_of.is_none() {
            self.versions.remove(key);
        }
    }

    /// The encoded table row for each stream row (`None`: no match).
    fn lookup(&self, keys: &ArrayRef, times: Option<&[i64]>) -> anyhow::Result<Vec<Option<&[u8]>>> {
        let encoded = self.keys.convert_columns(std::slice::from_ref(keys))?;
        Ok((0..keys.len())
            .map(|r| {
                if keys.is_null(r) {
                    return None;
                }
                let versions = self.versions.get(encoded.row(r).data())?;
                let v = match times {
                    None => versions.last()?,
                    Some(t) => {
                        let n = versions.partition_point(|v| v.time <= t[r]);
                        versions.get(n.checked_sub(1)?)?
                    }
                };
                v.row.as_deref()
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
        let matched: Vec<&[u8]> = found.iter().flatten().copied().collect();
        let parser = self.rows.parser();
        let table_columns = self
            .rows
            .convert_rows(matched.iter().map(|r| parser.parse(r)))?;
        let mut next = 0u32;
        let idx = UInt32Array::from(
            found
                .iter()
                .map(|f| {
                    f.map(|_| {
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
        let mut deletes = changes.deletes.iter().enumerate().peekable();
        for r in 0..=rows.num_rows() {
            while let Some((d, (_, _, time))) = deletes.next_if(|(_, (at, _, _))| *at <= r) {
                self.add_version(delete_keys.row(d).data(), *time, None);
            }
            if r == rows.num_rows() {
                break;
            }
            if keys.row(r).data().is_empty() || rows.column(self.table_key).is_null(r) {
                continue;
            }
            let time = times.map_or(0, |t| if t.is_null(r) { i64::MIN } else { t.value(r) });
            self.add_version(keys.row(r).data(), time, Some(encoded.row(r).data().into()));
        }
        Ok(())
    }

    fn state_rows(&self) -> usize {
        self.versions.len()
    }
}
