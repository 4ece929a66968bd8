//! Lowering an analyzed DataFusion `LogicalPlan` into a chain of streaming
//! stages: scans (of tables, window TVFs and views), projections, filters and
//! windowed GROUP BYs here; joins and OVER in their own files.

use std::sync::Arc;

use datafusion::common::{Column as DfColumn, DFSchema};
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::windows::{WINDOW_END, WINDOW_START, WINDOW_TIME};
use super::{Chain, Planner};
use crate::error::{LResult, Located};
use crate::plan::{GroupKey, Stage, WindowAggregate};
use crate::statement::QuerySpan;

impl Planner<'_> {
    pub(super) fn lower(&self, plan: &LogicalPlan, query: &QuerySpan) -> LResult<Chain> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table();
                if self.tables.get(name).is_some_and(|t| t.scan_table) {
                    return Err(Located::new(
                        self.find_word(query, name).unwrap_or(query.pos),
                        format!(
                            "{name} is read as a table (one row per key): join it to a stream, as in FROM s LEFT JOIN {name} FOR SYSTEM_TIME AS OF s.ts AS x ON s.k = x.key"
                        ),
                    ));
                }
                let mut chain = if self.tables.contains_key(name) {
                    Chain {
                        source: name.to_string(),
                        stages: vec![],
                        window: None,
                    }
                } else if let Some(tvf) = self.tvfs.get(name) {
                    let source = &self.tables[&tvf.source];
                    let full = DFSchema::try_from_qualified_schema(name, &self.tvf_schema(source))
                        .map_err(|e| self.df_error(e, query))?;
                    Chain {
                        source: tvf.source.clone(),
                        stages: vec![Stage::WindowColumns {
                            output: Arc::new(full),
                        }],
                        window: Some(tvf.clone()),
                    }
                } else if let Some(view) = self.views.get(name) {
                    // The view's clauses (FOR SYSTEM_TIME AS OF) and positions.
                    self.lower(&view.plan, &view.query)?
                } else {
                    return Err(Located::new(
                        query.pos,
                        format!("table {name} is not a source"),
                    ));
                };
                if let Some(projection) = &scan.projection {
                    let input = self.scan_schema(name, scan, query)?;
                    let exprs = projection
                        .iter()
                        .map(|i| {
                            let (q, f) = input.qualified_field(*i);
                            Expr::Column(DfColumn::new(q.cloned(), f.name()))
                        })
                        .collect();
                    chain.stages.push(Stage::Project {
                        input: Arc::new(input),
                        exprs,
                        output: scan.projected_schema.clone(),
                    });
                }
                for f in &scan.filters {
                    chain.stages.push(Stage::Filter {
                        input: scan.projected_schema.clone(),
                        predicate: f.clone(),
                    });
                }
                Ok(chain)
            }
            LogicalPlan::Projection(p) => {
                let mut chain = self.lower(&p.input, query)?;
                chain.stages.push(Stage::Project {
                    input: p.input.schema().clone(),
                    exprs: p.expr.clone(),
                    output: p.schema.clone(),
                });
                Ok(chain)
            }
            LogicalPlan::Filter(f) => {
                let mut chain = self.lower(&f.input, query)?;
                chain.stages.push(Stage::Filter {
                    input: f.input.schema().clone(),
                    predicate: f.predicate.clone(),
                });
                Ok(chain)
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input, query),
            LogicalPlan::Aggregate(a) => {
                let mut chain = self.lower(&a.input, query)?;
                let Some(tvf) = chain.window.take() else {
                    return Err(Located::new(
                        self.group_by_pos(query),
                        "an aggregate over a stream needs a window: read FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) and GROUP BY ..., window_start, window_end",
                    ));
                };
                self.check_window_columns(&chain, a, query)?;
                let input = a.input.schema().clone();
                let mut group = Vec::new();
                for e in &a.group_expr {
                    let key = match e {
                        Expr::Column(c) if c.name == WINDOW_START => GroupKey::WindowStart,
                        Expr::Column(c) if c.name == WINDOW_END => GroupKey::WindowEnd,
                        Expr::Column(c) if c.name == WINDOW_TIME => GroupKey::WindowTime,
                        Expr::GroupingSet(_) => {
                            return Err(Located::new(
                                self.group_by_pos(query),
                                "GROUPING SETS, CUBE and ROLLUP are not supported on streams",
                            ));
                        }
                        e => {
                            let uses_window = e.column_refs().iter().any(|c| {
                                [WINDOW_START, WINDOW_END, WINDOW_TIME].contains(&c.name.as_str())
                            });
                            if uses_window {
                                return Err(Located::new(
                                    self.group_by_pos(query),
                                    format!(
                                        "GROUP BY {}: group by window_start and window_end themselves, not expressions over them",
                                        e.human_display()
                                    ),
                                ));
                            }
                            GroupKey::Expr(e.clone())
                        }
                    };
                    group.push(key);
                }
                if !group
                    .iter()
                    .any(|g| matches!(g, GroupKey::WindowStart | GroupKey::WindowEnd))
                {
                    return Err(Located::new(
                        self.group_by_pos(query),
                        "a windowed GROUP BY must include window_start and window_end",
                    ));
                }
                let time_column = input
                    .fields()
                    .iter()
                    .position(|f| f.name() == &tvf.time_column)
                    .ok_or_else(|| {
                        Located::new(
                            query.pos,
                            format!(
                                "the event-time column {} must reach the window's GROUP BY",
                                tvf.time_column
                            ),
                        )
                    })?;
                let partition_by = tvf
                    .partition_by
                    .iter()
                    .map(|name| {
                        input
                            .fields()
                            .iter()
                            .position(|f| f.name() == name)
                            .map(|i| Expr::Column(DfColumn::from(input.qualified_field(i))))
                            .ok_or_else(|| {
                                Located::new(
                                    query.pos,
                                    format!(
                                        "the session's PARTITION BY column {name} must reach the window's GROUP BY"
                                    ),
                                )
                            })
                    })
                    .collect::<LResult<Vec<_>>>()?;
                chain
                    .stages
                    .push(Stage::WindowAggregate(Box::new(WindowAggregate {
                        input,
                        kind: tvf.kind,
                        offset_ms: tvf.offset_ms,
                        time_column,
                        group,
                        aggregates: a.aggr_expr.clone(),
                        output: a.schema.clone(),
                        partition_by,
                        allowed_lateness_ms: 0,
                    })));
                Ok(chain)
            }
            LogicalPlan::Join(j) => self.lower_join(j, query),
            LogicalPlan::Window(w) => {
                let mut chain = self.lower(&w.input, query)?;
                if chain.window.is_some() {
                    return Err(Located::new(
                        self.find_word(query, "OVER").unwrap_or(query.pos),
                        "OVER cannot read a window TVF directly: aggregate the window with GROUP BY in a view, or use OVER on the source table",
                    ));
                }
                let over = self.lower_over(&chain, w, query)?;
                chain.stages.push(Stage::Over(Box::new(over)));
                Ok(chain)
            }
            other => Err(Located::new(
                query.pos,
                format!(
                    "{} is not supported in a streaming query yet (weir runs projections, filters, windowed GROUP BY and OVER)",
                    describe_node(other)
                ),
            )),
        }
    }

    fn scan_schema(
        &self,
        name: &str,
        scan: &datafusion::logical_expr::TableScan,
        query: &QuerySpan,
    ) -> LResult<DFSchema> {
        let schema = scan.source.schema();
        DFSchema::try_from_qualified_schema(name, &schema).map_err(|e| self.df_error(e, query))
    }
}

fn describe_node(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Join(_) => "a JOIN".into(),
        LogicalPlan::Window(_) => "an OVER window".into(),
        LogicalPlan::Sort(_) => "ORDER BY".into(),
        LogicalPlan::Limit(_) => "LIMIT".into(),
        LogicalPlan::Union(_) => "UNION".into(),
        LogicalPlan::Distinct(_) => "SELECT DISTINCT".into(),
        other => format!("'{}'", other.display()),
    }
}
