//! Plans a pipeline file: statements -> catalog -> DataFusion logical plans ->
//! weir's flows (see [`crate::plan`]).
//!
//! DataFusion does the SQL work (name resolution, types, coercion, functions);
//! weir then lowers each analyzed `LogicalPlan` into a chain of streaming
//! stages. Only plan shapes that make sense on an unbounded stream are accepted;
//! anything else is an error at the place in the file it came from.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column as DfColumn, DFSchema, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, LogicalTableSource, ScalarUDF, Signature,
    Volatility, cast,
};
use datafusion::optimizer::Analyzer;
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::catalog::{
    KafkaTable, ModelDef, ModelInspector, build_columns, build_table, check_setting,
    check_setting_value,
};
use crate::error::{LResult, Located, PlanError};
use crate::plan::{
    Flow, GroupKey, LookupJoin, LookupKind, OverAggregate, OverCall, OverFrame, OverFunction,
    PipelinePlan, Stage, WindowAggregate,
};
use crate::predict::PredictPlaceholder;
use crate::source::{SqlFile, pos};
use crate::statement::{QuerySpan, Statement, WindowKind, parse_statements};
use crate::subst::substitute;

mod bind;
mod locate;
mod provider;
mod windows;

use locate::parser_error;
use provider::Provider;

pub use crate::predict::{PREDICT, predict_model};
pub use windows::{WINDOW_END, WINDOW_START, WINDOW_TIME};

/// Plans the text of a pipeline file. `env` resolves `${VAR}`s; `models`
/// reads model metadata (the caller decides how models are loaded).
pub fn plan_pipeline(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    models: &dyn ModelInspector,
) -> Result<PipelinePlan, PlanError> {
    let file = SqlFile::new(path, text);
    let mut planner = Planner::new(&file, env, models);
    planner.run(text).map_err(|e| file.error(e))
}

/// A window TVF registered as a table named `#N` for DataFusion.
#[derive(Debug, Clone)]
struct Tvf {
    source: String,
    partition_by: Vec<String>,
    kind: WindowKind,
    offset_ms: i64,
    time_column: String,
}

struct View {
    plan: LogicalPlan,
    /// The view's own query: its positions and temporal-join clauses.
    query: QuerySpan,
}

struct Chain {
    source: String,
    stages: Vec<Stage>,
    /// The window TVF whose (placeholder) columns flow through the chain, until
    /// a GROUP BY aggregates them.
    window: Option<Tvf>,
}

struct Planner<'a> {
    file: &'a SqlFile,
    env: &'a dyn Fn(&str) -> Option<String>,
    inspector: &'a dyn ModelInspector,
    provider: Provider,
    tables: BTreeMap<String, KafkaTable>,
    models: BTreeMap<String, ModelDef>,
    views: HashMap<String, View>,
    tvfs: HashMap<String, Tvf>,
    settings: BTreeMap<String, String>,
    flows: Vec<Flow>,
}

impl<'a> Planner<'a> {
    fn new(
        file: &'a SqlFile,
        env: &'a dyn Fn(&str) -> Option<String>,
        inspector: &'a dyn ModelInspector,
    ) -> Self {
        let state = SessionStateBuilder::new().with_default_features().build();
        let mut udfs: HashMap<String, Arc<ScalarUDF>> = state.scalar_functions().clone();
        udfs.insert(
            PREDICT.to_string(),
            Arc::new(ScalarUDF::new_from_impl(PredictPlaceholder {
                signature: Signature::variadic_any(Volatility::Immutable),
            })),
        );
        let mut options = state.config_options().as_ref().clone();
        options.sql_parser.collect_spans = true;
        // Identifiers are case-sensitive, as in Flink: a column is named after its JSON field.
        options.sql_parser.enable_ident_normalization = false;
        Self {
            file,
            env,
            inspector,
            provider: Provider {
                state,
                udfs,
                tables: HashMap::new(),
                options,
            },
            tables: BTreeMap::new(),
            models: BTreeMap::new(),
            views: HashMap::new(),
            tvfs: HashMap::new(),
            settings: BTreeMap::new(),
            flows: Vec::new(),
        }
    }

    fn name_taken(&self, name: &str) -> bool {
        self.tables.contains_key(name)
            || self.views.contains_key(name)
            || self.models.contains_key(name)
    }

    fn run(&mut self, text: &str) -> LResult<PipelinePlan> {
        let statements = parse_statements(self.file, text)?;
        for statement in statements {
            match statement {
                Statement::Set { key, value } => {
                    check_setting(&key)?;
                    let v = substitute(&value.value, self.env)
                        .map_err(|m| Located::new(value.pos, m))?;
                    check_setting_value(
                        &key.value,
                        &crate::statement::Spanned {
                            value: v.clone(),
                            pos: value.pos,
                        },
                    )?;
                    self.settings.insert(key.value, v);
                }
                Statement::CreateTable {
                    name,
                    columns,
                    watermark,
                    primary_key,
                    options,
                } => {
                    if self.name_taken(&name.value) {
                        return Err(Located::new(
                            name.pos,
                            format!("{} is already defined", name.value),
                        ));
                    }
                    let columns = build_columns(&columns)?;
                    let table = build_table(
                        &name,
                        columns,
                        watermark.as_ref(),
                        &primary_key,
                        &options,
                        self.env,
                        self.file.path().parent().unwrap_or(Path::new(".")),
                    )?;
                    self.provider.tables.insert(
                        table.name.clone(),
                        Arc::new(LogicalTableSource::new(table.schema())),
                    );
                    self.tables.insert(table.name.clone(), table);
                }
                Statement::CreateModel { name, options } => {
                    if self.name_taken(&name.value) {
                        return Err(Located::new(
                            name.pos,
                            format!("{} is already defined", name.value),
                        ));
                    }
                    let mut path = None;
                    for opt in &options {
                        if opt.key.value != "path" {
                            return Err(Located::new(
                                opt.key.pos,
                                format!("unknown model option '{}': valid: path", opt.key.value),
                            ));
                        }
                        let v = substitute(&opt.value.value, self.env)
                            .map_err(|m| Located::new(opt.value.pos, m))?;
                        path = Some((v, opt.value.pos));
                    }
                    let Some((path, path_pos)) = path else {
                        return Err(Located::new(
                            name.pos,
                            format!("model {} needs WITH ('path' = 'model.onnx')", name.value),
                        ));
                    };
                    let dir = self.file.path().parent().unwrap_or(Path::new("."));
                    let full = dir.join(&path);
                    let info = self.inspector.inspect(&full).map_err(|e| {
                        Located::new(
                            path_pos,
                            format!(
                                "cannot load model {} from {}: {e}",
                                name.value,
                                full.display()
                            ),
                        )
                    })?;
                    self.models.insert(
                        name.value.clone(),
                        ModelDef {
                            name: name.value.clone(),
                            path: full,
                            info,
                        },
                    );
                }
                Statement::CreateView { name, query } => {
                    if self.name_taken(&name.value) {
                        return Err(Located::new(
                            name.pos,
                            format!("{} is already defined", name.value),
                        ));
                    }
                    let plan = self.plan_query(&query)?;
                    self.provider.tables.insert(
                        name.value.clone(),
                        Arc::new(LogicalTableSource::new(Arc::new(
                            plan.schema().as_arrow().clone(),
                        ))),
                    );
                    self.views.insert(name.value, View { plan, query });
                }
                Statement::Insert { sink, query } => {
                    let flow = self.plan_insert(&sink, &query)?;
                    self.flows.push(flow);
                }
            }
        }
        if self.flows.is_empty() {
            return Err(Located::new(
                self.file.pos_of_index(0),
                "the pipeline has no INSERT INTO statement, so it would produce nothing",
            ));
        }
        let name = self
            .settings
            .get("pipeline.name")
            .cloned()
            .unwrap_or_else(|| {
                self.file
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "pipeline".into())
            });
        let ttl_ms = ["state.ttl", "table.exec.state.ttl"]
            .iter()
            .find_map(|k| self.settings.get(*k))
            .and_then(|v| crate::catalog::parse_duration_ms(v))
            .map(|ms| ms as i64);
        let allowed_lateness_ms = ["window.allowed-lateness", "table.exec.emit.allow-lateness"]
            .iter()
            .find_map(|k| self.settings.get(*k))
            .and_then(|v| crate::catalog::parse_duration_ms(v))
            .map_or(0, |ms| ms as i64);
        for flow in &mut self.flows {
            for stage in &mut flow.stages {
                match stage {
                    Stage::Over(o) => o.ttl_ms = ttl_ms,
                    Stage::WindowAggregate(w) => w.allowed_lateness_ms = allowed_lateness_ms,
                    _ => {}
                }
            }
        }
        Ok(PipelinePlan {
            name,
            file: self.file.path().to_path_buf(),
            settings: self.settings.clone(),
            tables: self.tables.clone(),
            models: self.models.clone(),
            flows: std::mem::take(&mut self.flows),
        })
    }

    fn plan_query(&mut self, query: &QuerySpan) -> LResult<LogicalPlan> {
        let mut replacements = Vec::new();
        for tvf in &query.tvfs {
            let name = self.register_tvf(tvf)?;
            replacements.push((tvf.range.clone(), format!("\"{name}\"")));
        }
        for t in &query.temporal {
            // Applied when the join is lowered; DataFusion sees a plain join.
            replacements.push((t.range.clone(), String::new()));
        }
        let masked = self.file.masked(query.range.clone(), &replacements);
        let dialect = GenericDialect {};
        let parse_err = |e: ParserError| parser_error(e, query.pos);
        let mut parser = Parser::new(&dialect)
            .try_with_sql(&masked)
            .map_err(parse_err)?;
        let mut ast = parser.parse_query().map_err(parse_err)?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(Located::new(
                pos(next.span.start),
                format!("expected the end of the query, found '{}'", next.token),
            ));
        }
        self.bind_predict_calls(&mut ast)?;
        let planner = SqlToRel::new_with_options(
            &self.provider,
            ParserOptions::from(&self.provider.options.sql_parser),
        );
        let plan = planner
            .sql_statement_to_plan(SqlStatement::Query(ast))
            .map_err(|e| self.df_error(e, query))?;
        Analyzer::new()
            .execute_and_check(plan, &self.provider.options, |_, _| {})
            .map_err(|e| self.df_error(e, query))
    }

    fn plan_insert(
        &mut self,
        sink_name: &crate::statement::Spanned<String>,
        query: &QuerySpan,
    ) -> LResult<Flow> {
        let Some(sink) = self.tables.get(&sink_name.value).cloned() else {
            let hint = if self.views.contains_key(&sink_name.value) {
                " (it is a view; INSERT INTO needs a CREATE TABLE ... WITH ('connector' = 'kafka', ...))"
            } else {
                ""
            };
            return Err(Located::new(
                sink_name.pos,
                format!("no table named {}{hint}", sink_name.value),
            ));
        };
        if sink.path.is_some() {
            return Err(Located::new(
                sink_name.pos,
                format!(
                    "table {} reads files ('connector' = 'filesystem'), which weir does not write: \
                     INSERT INTO a Kafka table",
                    sink.name
                ),
            ));
        }
        let mut plan = self.plan_query(query)?;
        if !sink.columns.is_empty() {
            let out = plan.schema().clone();
            if out.fields().len() != sink.columns.len() {
                return Err(Located::new(
                    query.pos,
                    format!(
                        "the query yields {} columns but {} declares {}",
                        out.fields().len(),
                        sink.name,
                        sink.columns.len()
                    ),
                ));
            }
            let exprs: Vec<Expr> = sink
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let (q, f) = out.qualified_field(i);
                    cast(
                        Expr::Column(DfColumn::new(q.cloned(), f.name())),
                        c.data_type.clone(),
                    )
                    .alias(&c.name)
                })
                .collect();
            plan = LogicalPlanBuilder::from(plan)
                .project(exprs)
                .and_then(|b| b.build())
                .map_err(|e| self.df_error(e, query))?;
        }
        let chain = self.lower(&plan, query)?;
        if chain.window.is_some() {
            return Err(Located::new(
                query.tvfs.first().map(|t| t.pos).unwrap_or(query.pos),
                "a window TVF's rows must be aggregated: add GROUP BY ..., window_start, window_end",
            ));
        }
        let output: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        if sink.format == crate::catalog::Format::Raw {
            let ok = matches!(output.fields().as_ref(), [f] if matches!(f.data_type(), DataType::Utf8 | DataType::Binary));
            if !ok {
                return Err(Located::new(
                    sink_name.pos,
                    format!(
                        "{} has 'format' = 'raw', so the query must produce exactly one STRING or BYTES column (the record value); it produces {}",
                        sink.name,
                        output
                            .fields()
                            .iter()
                            .map(|f| format!("{} {}", f.name(), f.data_type()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut key_columns = Vec::new();
        for k in &sink.key_fields {
            let i = output.index_of(&k.value).map_err(|_| {
                Located::new(
                    k.pos,
                    format!(
                        "'key.fields' names {}, which the query writing {} does not produce (it produces {})",
                        k.value,
                        sink.name,
                        output.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            key_columns.push(i);
        }
        let source = &self.tables[&chain.source];
        if source.columns.is_empty() {
            return Err(Located::new(
                source.pos,
                format!("source table {} declares no columns", source.name),
            ));
        }
        Ok(Flow {
            index: self.flows.len(),
            pos: sink_name.pos,
            source: chain.source,
            stages: chain.stages,
            sink: sink.name,
            output,
            key_columns,
        })
    }

    fn lower(&self, plan: &LogicalPlan, query: &QuerySpan) -> LResult<Chain> {
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

    /// A stream joined to a table read from a compacted topic.
    fn lower_join(&self, j: &datafusion::logical_expr::Join, query: &QuerySpan) -> LResult<Chain> {
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

    /// Lowers the OVER aggregates of one DataFusion `Window` node: every call
    /// must be a supported aggregate over a bounded frame that ends at the
    /// current row and is ordered by the source's event time.
    fn lower_over(
        &self,
        chain: &Chain,
        w: &datafusion::logical_expr::logical_plan::Window,
        query: &QuerySpan,
    ) -> LResult<OverAggregate> {
        use datafusion::logical_expr::{
            WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
        };
        let source = &self.tables[&chain.source];
        let over_pos = self.find_word(query, "OVER").unwrap_or(query.pos);
        let Some(wm) = source.watermark else {
            return Err(Located::new(
                over_pos,
                format!(
                    "OVER needs event time: declare a WATERMARK on table {}",
                    source.name
                ),
            ));
        };
        let time_name = source.columns[wm.column].name.clone();
        let input = w.input.schema().clone();
        let time_column = input
            .fields()
            .iter()
            .position(|f| f.name() == &time_name)
            .ok_or_else(|| {
                Located::new(
                    over_pos,
                    format!("the event-time column {time_name} must reach the OVER aggregate"),
                )
            })?;
        let frame_hint = "RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW, or ROWS BETWEEN 10 PRECEDING AND CURRENT ROW";
        let mut partition_by: Option<Vec<Expr>> = None;
        let mut calls = Vec::new();
        for e in &w.window_expr {
            let Expr::WindowFunction(f) = e.clone().unalias() else {
                return Err(Located::new(
                    over_pos,
                    format!("{} is not a window function call", e.human_display()),
                ));
            };
            let name = f.fun.name().to_string();
            let at = self.find_word(query, &name).unwrap_or(over_pos);
            let function = match &f.fun {
                WindowFunctionDefinition::AggregateUDF(_) => match name.as_str() {
                    "count" => Some(OverFunction::Count),
                    "sum" => Some(OverFunction::Sum),
                    "avg" => Some(OverFunction::Avg),
                    "min" => Some(OverFunction::Min),
                    "max" => Some(OverFunction::Max),
                    "stddev" => Some(OverFunction::StddevSamp),
                    "stddev_pop" => Some(OverFunction::StddevPop),
                    "var" => Some(OverFunction::VarSamp),
                    "var_pop" => Some(OverFunction::VarPop),
                    _ => None,
                },
                WindowFunctionDefinition::WindowUDF(_) => None,
            };
            let Some(function) = function else {
                return Err(Located::new(
                    at,
                    format!(
                        "{name}() OVER is not supported on streams; per-event OVER aggregates are count, sum, avg, min, max, stddev_samp, stddev_pop, var_samp and var_pop"
                    ),
                ));
            };
            let p = &f.params;
            if p.filter.is_some() {
                return Err(Located::new(
                    at,
                    format!(
                        "{name}(...) FILTER (WHERE ...) OVER is not supported yet: filter in a CASE inside the aggregate"
                    ),
                ));
            }
            match &partition_by {
                None => partition_by = Some(p.partition_by.clone()),
                Some(k) if k == &p.partition_by => {}
                Some(_) => {
                    unreachable!("DataFusion groups window calls by PARTITION BY and ORDER BY")
                }
            }
            let order_ok = p.order_by.len() == 1
                && p.order_by[0].asc
                && matches!(&p.order_by[0].expr, Expr::Column(c) if c.name == time_name);
            if !order_ok {
                let first = p.order_by.first().map(|o| match &o.expr {
                    Expr::Column(c) => c.name.clone(),
                    e => e.human_display().to_string(),
                });
                let place = first
                    .and_then(|f| self.find_words(query, &["ORDER", "BY", &f]))
                    .or_else(|| self.find_word(query, "ORDER"));
                return Err(Located::new(
                    place.unwrap_or(at),
                    format!(
                        "{name}() OVER must be ORDER BY {time_name} (the event-time column of {}, ascending): rows are aggregated in event-time order",
                        source.name
                    ),
                ));
            }
            let frame = &p.window_frame;
            if !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
                return Err(Located::new(
                    self.find_word(query, "FOLLOWING").unwrap_or(at),
                    format!(
                        "{name}() OVER: a frame must end at CURRENT ROW on a stream (a FOLLOWING row has not arrived yet); write {frame_hint}"
                    ),
                ));
            }
            let WindowFrameBound::Preceding(start) = &frame.start_bound else {
                return Err(Located::new(
                    at,
                    format!(
                        "{name}() OVER: the frame must start PRECEDING the current row; write {frame_hint}"
                    ),
                ));
            };
            if start.is_null() {
                return Err(Located::new(
                    self.find_word(query, "UNBOUNDED").unwrap_or(at),
                    format!(
                        "{name}() OVER: an UNBOUNDED PRECEDING frame (also the default when ORDER BY has no frame) keeps growing on a stream; write {frame_hint}"
                    ),
                ));
            }
            let frame = match frame.units {
                WindowFrameUnits::Rows => match start {
                    ScalarValue::UInt64(Some(n)) => OverFrame::Rows { preceding: *n },
                    other => {
                        return Err(Located::new(
                            at,
                            format!(
                                "{name}() OVER: ROWS {other} PRECEDING: the count must be a non-negative integer"
                            ),
                        ));
                    }
                },
                WindowFrameUnits::Range => match interval_ms(start) {
                    Some(ms) if ms >= 0 => OverFrame::Range { preceding_ms: ms },
                    _ => {
                        return Err(Located::new(
                            at,
                            format!(
                                "{name}() OVER: RANGE {start} PRECEDING: a RANGE over event time takes a day-time INTERVAL such as INTERVAL '10' MINUTE"
                            ),
                        ));
                    }
                },
                WindowFrameUnits::Groups => {
                    return Err(Located::new(
                        at,
                        format!(
                            "{name}() OVER: GROUPS frames are not supported; write {frame_hint}"
                        ),
                    ));
                }
            };
            let arg = match p.args.as_slice() {
                [a] => a.clone(),
                [] => Expr::Literal(ScalarValue::Int64(Some(1)), None),
                _ => {
                    return Err(Located::new(
                        at,
                        format!("{name}() OVER takes one argument"),
                    ));
                }
            };
            if !matches!(function, OverFunction::Count) {
                let t = arg.get_type(&input).map_err(|e| self.df_error(e, query))?;
                if !(t.is_integer() || t.is_floating() || t.is_null()) {
                    return Err(Located::new(
                        at,
                        format!(
                            "{name}({}) OVER: per-event aggregates take a numeric argument, not {t}",
                            arg.human_display()
                        ),
                    ));
                }
                if p.distinct {
                    return Err(Located::new(
                        at,
                        format!(
                            "{name}(DISTINCT ...) OVER is not supported: DISTINCT works with count"
                        ),
                    ));
                }
            }
            calls.push(OverCall {
                function,
                arg,
                distinct: p.distinct,
                frame,
            });
        }
        Ok(OverAggregate {
            input,
            partition_by: partition_by.unwrap_or_default(),
            time_column,
            calls,
            output: w.schema.clone(),
            ttl_ms: None,
        })
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

/// Milliseconds of a day-time interval (no months: a month has no fixed length).
fn interval_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalDayTime(Some(d)) => {
            Some(d.days as i64 * 86_400_000 + d.milliseconds as i64)
        }
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000)
        }
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => Some(s * 1000),
        ScalarValue::DurationMicrosecond(Some(us)) => Some(us / 1000),
        ScalarValue::DurationNanosecond(Some(ns)) => Some(ns / 1_000_000),
        _ => None,
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
