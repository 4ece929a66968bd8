//! Lowering a JOIN: a stream joined to a table read from a compacted topic, by
//! its primary key (a lookup join, optionally FOR SYSTEM_TIME AS OF the
//! stream's event time).

use datafusion::logical_expr::{Expr, LogicalPlan};

use super::{Chain, Planner};
use crate::error::{LResult, Located};
use crate::plan::{LookupJoin, LookupKind, Stage};
use crate::statement::QuerySpan;

impl Planner<'_> {
    /// A stream joined to a table read from a compacted topic.
    pub(super) fn lower_join(
        &self,
        j: &datafusion::logical_expr::Join,
        query: &QuerySpan,
    ) -> LResult<Chain> {
        use datafusion::logical_expr::JoinType;
        let join_pos = self.find_word(query, "JOIN").unwrap_or(query.pos);
        let Some(table_name) = scanned_table(&j.right) else {
            return Err(Located::new(
                join_pos,
                "the right side of a JOIN must be a table read as a table ('connector' = 'upsert-kafka', or 'scan.mode' = 'table' with a PRIMARY KEY): weir joins a stream to a table, not two streams or subqueries",
            ));
        };
        let table = self
            .tables
            .get(&table_name)
            .filter(|t| t.scan_table)
            .ok_or_else(|| {
                Located::new(
                    join_pos,
                    format!(
                        "{table_name} is a stream: the right side of a JOIN must be a table read as a table ('connector' = 'upsert-kafka', or 'scan.mode' = 'table' with a PRIMARY KEY)"
                    ),
                )
            })?;
        let kind = match j.join_type {
            JoinType::Left => LookupKind::Left,
            JoinType::Inner => LookupKind::Inner,
            other => {
                return Err(Located::new(
                    join_pos,
                    format!(
                        "{other} JOIN is not supported: a stream joins a table with LEFT JOIN or JOIN"
                    ),
                ));
            }
        };
        let key_column = &table.columns[table.primary_key[0]].name;
        let on_pos = self.find_word(query, "ON").unwrap_or(join_pos);
        let not_on_key = |e: &Expr| {
            let at = match e {
                Expr::Column(c) => c
                    .relation
                    .as_ref()
                    .and_then(|r| self.find_qualified(query, r.table(), &c.name))
                    .or_else(|| self.find_word(query, &c.name)),
                _ => None,
            };
            Located::new(
                at.unwrap_or(on_pos),
                format!(
                    "a join with table {table_name} must be ON <stream expression> = {key_column}, its PRIMARY KEY (one equality, nothing else)"
                ),
            )
        };
        // Without optimizer rules, DataFusion leaves ON in `filter`.
        let mut pairs: Vec<(Expr, Expr)> = j.on.clone();
        if let Some(f) = &j.filter {
            let Expr::BinaryExpr(b) = f else {
                return Err(not_on_key(f));
            };
            if b.op != datafusion::logical_expr::Operator::Eq {
                return Err(not_on_key(f));
            }
            let on_right = |e: &Expr| {
                let cols = e.column_refs();
                !cols.is_empty() && cols.iter().all(|c| j.right.schema().has_column(c))
            };
            let on_left = |e: &Expr| {
                e.column_refs()
                    .iter()
                    .all(|c| j.left.schema().has_column(c))
            };
            let (l, r) = (b.left.as_ref(), b.right.as_ref());
            if on_left(l) && on_right(r) {
                pairs.push((l.clone(), r.clone()));
            } else if on_left(r) && on_right(l) {
                pairs.push((r.clone(), l.clone()));
            } else {
                let right_side = if on_right(r) { l } else { r };
                return Err(not_on_key(right_side));
            }
        }
        let [(left_key, right_key)] = pairs.as_slice() else {
            return Err(Located::new(
                on_pos,
                format!(
                    "a join with table {table_name} must be ON <stream expression> = {key_column}, its PRIMARY KEY"
                ),
            ));
        };
        match right_key {
            Expr::Column(c) if c.name == *key_column => {}
            e => return Err(not_on_key(e)),
        }
        let chain = self.lower(&j.left, query)?;
        if chain.window.is_some() {
            return Err(Located::new(
                join_pos,
                "join the source table, then window a view of it is not supported yet: join after the window's GROUP BY",
            ));
        }
        let input = j.left.schema().clone();
        let as_of = match query.temporal.iter().find(|t| t.table.value == table_name) {
            None => None,
            Some(t) => {
                if table.watermark.is_none() {
                    return Err(Located::new(
                        t.table.pos,
                        format!(
                            "FOR SYSTEM_TIME AS OF needs versions: declare {table_name}'s version time with WATERMARK FOR <column> AS <column>"
                        ),
                    ));
                }
                let source = &self.tables[&chain.source];
                let event_time = source.watermark.map(|w| &source.columns[w.column].name);
                if event_time != Some(&t.time.value) {
                    return Err(Located::new(
                        t.time.pos,
                        format!(
                            "FOR SYSTEM_TIME AS OF must name the stream's event-time column{}",
                            event_time.map(|c| format!(" ({c})")).unwrap_or_default()
                        ),
                    ));
                }
                let i = input
                    .fields()
                    .iter()
                    .position(|f| f.name() == &t.time.value)
                    .ok_or_else(|| {
                        Located::new(
                            t.time.pos,
                            format!("{} does not reach the join", t.time.value),
                        )
                    })?;
                Some(i)
            }
        };
        if j.right.schema().fields().len() != table.columns.len() {
            return Err(Located::new(
                join_pos,
                format!("select from {table_name} directly in the JOIN, not a projection of it"),
            ));
        }
        let mut chain = chain;
        chain.stages.push(Stage::Lookup(Box::new(LookupJoin {
            input,
            table: table_name,
            key: left_key.clone(),
            as_of,
            kind,
            output: j.schema.clone(),
        })));
        Ok(chain)
    }
}

/// The table a plan scans, under any aliases.
fn scanned_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::TableScan(scan) if scan.filters.is_empty() => {
            Some(scan.table_name.table().to_string())
        }
        LogicalPlan::SubqueryAlias(a) => scanned_table(&a.input),
        _ => None,
    }
}
