//! Window TVFs (TUMBLE, HOP, CUMULATE, SESSION): each is registered with
//! DataFusion as a table that adds window_start, window_end and window_time
//! columns, which have no value until the windowed GROUP BY assigns windows.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::logical_expr::{Expr, LogicalTableSource};

use super::{Chain, Planner, Tvf};
use crate::catalog::KafkaTable;
use crate::error::{LResult, Located};
use crate::plan::Stage;
use crate::statement::{QuerySpan, WindowTvf};

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
pub const WINDOW_TIME: &str = "window_time";

impl Planner<'_> {
    pub(super) fn register_tvf(&mut self, tvf: &WindowTvf) -> LResult<String> {
        let Some(table) = self.tables.get(&tvf.table.value) else {
            let hint = if self.views.contains_key(&tvf.table.value) {
                " (windows read a source table directly, not a view)"
            } else {
                ""
            };
            return Err(Located::new(
                tvf.table.pos,
                format!("no source table named {}{hint}", tvf.table.value),
            ));
        };
        let Some(wm) = table.watermark else {
            return Err(Located::new(
                tvf.table.pos,
                format!(
                    "table {} has no event time: declare WATERMARK FOR <column> AS <column> - INTERVAL ... to window it",
                    table.name
                ),
            ));
        };
        let wm_column = &table.columns[wm.column].name;
        if *wm_column != tvf.time_column.value {
            return Err(Located::new(
                tvf.time_column.pos,
                format!(
                    "DESCRIPTOR({}) must name {}'s event-time column, {wm_column} (the one its WATERMARK is declared on)",
                    tvf.time_column.value, table.name
                ),
            ));
        }
        for column in &tvf.partition_by {
            if !table.columns.iter().any(|c| c.name == column.value) {
                let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
                let hint = match crate::catalog::did_you_mean(&column.value, &names) {
                    Some(s) => format!("did you mean {s}? "),
                    None => String::new(),
                };
                return Err(Located::new(
                    column.pos,
                    format!(
                        "PARTITION BY {}: table {} has no such column; {hint}columns: {}",
                        column.value,
                        table.name,
                        names.join(", ")
                    ),
                ));
            }
        }
        let name = format!("#{}", self.tvfs.len());
        let mut fields: Vec<Field> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for w in [WINDOW_START, WINDOW_END, WINDOW_TIME] {
            fields.push(Field::new(
                w,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
        self.provider.tables.insert(
            name.clone(),
            Arc::new(LogicalTableSource::new(Arc::new(Schema::new(fields)))),
        );
        self.tvfs.insert(
            name.clone(),
            Tvf {
                source: table.name.clone(),
                partition_by: tvf.partition_by.iter().map(|c| c.value.clone()).collect(),
                kind: tvf.kind,
                offset_ms: tvf.offset_ms,
                time_column: wm_column.clone(),
            },
        );
        Ok(name)
    }

    /// Before the aggregate assigns rows to windows, window_start/end/time have
    /// no value: they may only pass through to the GROUP BY, unchanged.
    pub(super) fn check_window_columns(
        &self,
        chain: &Chain,
        aggregate: &datafusion::logical_expr::Aggregate,
        query: &QuerySpan,
    ) -> LResult<()> {
        let is_window = |name: &str| [WINDOW_START, WINDOW_END, WINDOW_TIME].contains(&name);
        let uses_window = |e: &Expr| e.column_refs().iter().any(|c| is_window(&c.name));
        let misuse = |what: String| {
            Err(Located::new(
                query.tvfs.first().map(|t| t.pos).unwrap_or(query.pos),
                format!(
                    "{what} uses a window column before the GROUP BY assigns windows: window_start, window_end and window_time can be grouped by and used after the aggregation"
                ),
            ))
        };
        for stage in &chain.stages {
            match stage {
                Stage::Filter { predicate, .. } if uses_window(predicate) => {
                    return misuse(format!("WHERE {}", predicate.human_display()));
                }
                Stage::Project { exprs, output, .. } => {
                    for (i, e) in exprs.iter().enumerate() {
                        let pass_through = matches!(e.clone().unalias(), Expr::Column(c) if c.name == *output.field(i).name());
                        if uses_window(e) && !pass_through {
                            return misuse(format!("{}", e.human_display()));
                        }
                    }
                }
                _ => {}
            }
        }
        for e in &aggregate.aggr_expr {
            if uses_window(e) {
                return misuse(format!("the aggregate {}", e.human_display()));
            }
            if let Expr::AggregateFunction(f) = e.clone().unalias()
                && !f.params.order_by.is_empty()
            {
                return Err(Located::new(
                    self.group_by_pos(query),
                    format!(
                        "{}: ORDER BY inside an aggregate is not supported in windows yet",
                        e.human_display()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn tvf_schema(&self, source: &KafkaTable) -> Schema {
        let mut fields: Vec<Field> = source
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for w in [WINDOW_START, WINDOW_END, WINDOW_TIME] {
            fields.push(Field::new(
                w,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
        Schema::new(fields)
    }
}
