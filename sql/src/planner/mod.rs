//! Plans a pipeline file: statements -> catalog -> DataFusion logical plans ->
//! weir's flows (see [`crate::plan`]).
//!
//! DataFusion does the SQL work (name resolution, types, coercion, functions);
//! weir then lowers each analyzed `LogicalPlan` into a chain of streaming
//! stages. Only plan shapes that make sense on an unbounded stream are accepted;
//! anything else is an error at the place in the file it came from.
//!
//! This file walks the statements (`run`) and plans each query and INSERT.
//! The rest has a room each: `provider` (what DataFusion's planner sees),
//! `bind` (predict calls), `windows` (window TVFs), `lower` (LogicalPlan ->
//! stages), `join`, `over`, and `locate` (where an error belongs in the file).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Column as DfColumn;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, LogicalTableSource, ScalarUDF, Signature, Volatility,
    cast,
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
use crate::plan::{Flow, PipelinePlan, Stage};
use crate::predict::PredictPlaceholder;
use crate::source::{SqlFile, pos};
use crate::statement::{QuerySpan, Statement, WindowKind, parse_statements};
use crate::subst::substitute;

mod bind;
mod join;
mod locate;
mod lower;
mod over;
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
}
