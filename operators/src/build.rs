//! Builds a flow's operator chain from its plan: logical expressions become
//! DataFusion physical expressions, `predict` calls are bound to loaded models.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable, ScalarUDF};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use weir_sql::{Flow, GroupKey, KafkaTable, Stage, WindowKind, predict_model};

use crate::lookup::LookupJoinOp;
use crate::over::{OverAggregateOp, OverCallSpec};

use crate::chain::Chain;
use crate::operator::Operator;
use crate::predict::{BoundPredict, Model};
use crate::stateless::{FilterOp, ProjectOp, WindowColumnsOp};
use crate::window::{
    AggregateSpec, Aggregation, Assigner, OutputColumn, SessionOp, WindowAggregateOp,
};

/// Output schemas are all-nullable: DataFusion's nullability inference is not
/// something a running pipeline should fail on.
fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

fn bind_models(expr: &Expr, models: &HashMap<String, Arc<Model>>) -> anyhow::Result<Expr> {
    let bound = expr.clone().transform_up(|e| {
        let Some(name) = predict_model(&e) else {
            return Ok(Transformed::no(e));
        };
        let model = models.get(name).cloned().ok_or_else(|| {
            datafusion::common::DataFusionError::Plan(format!("model {name} is not loaded"))
        })?;
        let Expr::ScalarFunction(f) = e else {
            unreachable!("predict_model matched a scalar function")
        };
        let udf = Arc::new(ScalarUDF::new_from_impl(BoundPredict::new(model)));
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf, f.args[1..].to_vec()),
        )))
    })?;
    Ok(bound.data)
}

/// Binds models and simplifies: DataFusion leaves some functions (coalesce,
/// nvl, ...) to be rewritten by the simplifier, which also folds constants.
fn prepare(
    expr: &Expr,
    schema: &DFSchemaRef,
    models: &HashMap<String, Arc<Model>>,
) -> anyhow::Result<Expr> {
    let expr = bind_models(expr, models)?;
    let context = SimplifyContext::builder()
        .with_schema(schema.clone())
        .build();
    ExprSimplifier::new(context)
        .simplify(expr)
        .context("simplifying an expression")
}

fn physical(
    expr: &Expr,
    schema: &DFSchemaRef,
    models: &HashMap<String, Arc<Model>>,
) -> anyhow::Result<Arc<dyn PhysicalExpr>> {
    let expr = prepare(expr, schema, models)?;
    create_physical_expr(
        &expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .with_context(|| format!("planning {}", expr.human_display()))
}

/// `agg(DISTINCT x)` runs as `agg(x)` behind a per-pane filter that passes
/// each (group, value) once (see the window operator). DataFusion's own
/// DISTINCT accumulators are per-group objects with kilobytes of buffers each,
/// which does not scale to millions of (key, window) groups.
fn without_distinct(e: Expr) -> (Expr, bool) {
    match e {
        Expr::Alias(mut a) => {
            let (inner, distinct) = without_distinct(*a.expr);
            a.expr = Box::new(inner);
            (Expr::Alias(a), distinct)
        }
        Expr::AggregateFunction(mut f) if f.params.distinct => {
            f.params.distinct = false;
            (Expr::AggregateFunction(f), true)
        }
        e => (e, false),
    }
}

pub fn build_chain(
    flow: &Flow,
    tables: &BTreeMap<String, KafkaTable>,
    models: &HashMap<String, Arc<Model>>,
) -> anyhow::Result<Chain> {
    let mut ops: Vec<Box<dyn Operator>> = Vec::new();
    for stage in &flow.stages {
        match stage {
            Stage::WindowColumns { output } => ops.push(Box::new(WindowColumnsOp {
                schema: nullable(output.as_arrow()),
            })),
            Stage::Filter { input, predicate } => ops.push(Box::new(FilterOp {
                predicate: physical(predicate, input, models)?,
            })),
            Stage::Project {
                input,
                exprs,
                output,
            } => ops.push(Box::new(ProjectOp {
                exprs: exprs
                    .iter()
                    .map(|e| physical(e, input, models))
                    .collect::<anyhow::Result<_>>()?,
                schema: nullable(output.as_arrow()),
            })),
            Stage::WindowAggregate(w) => {
                let mut key_exprs = Vec::new();
                let mut key_types = Vec::new();
                let mut columns = Vec::new();
                for g in &w.group {
                    columns.push(match g {
                        GroupKey::Expr(e) => {
                            key_types.push(e.get_type(&w.input)?);
                            key_exprs.push(physical(e, &w.input, models)?);
                            OutputColumn::Key(key_exprs.len() - 1)
                        }
                        GroupKey::WindowStart => OutputColumn::WindowStart,
                        GroupKey::WindowEnd => OutputColumn::WindowEnd,
                        GroupKey::WindowTime => OutputColumn::WindowTime,
                    });
                }
                let mut aggregates = Vec::new();
                for (i, e) in w.aggregates.iter().enumerate() {
                    let (e, distinct) = without_distinct(prepare(e, &w.input, models)?);
                    let lowered = LoweredAggregateBuilder::new(
                        &e,
                        &w.input,
                        w.input.as_arrow(),
                        &ExecutionProps::new(),
                        &PhysicalPlanningContext::default(),
                    )
                    .build()
                    .with_context(|| format!("planning aggregate {}", e.human_display()))?;
                    let distinct = if distinct {
                        let fields = lowered
                            .aggregate
                            .expressions()
                            .iter()
                            .map(|a| a.data_type(w.input.as_arrow()).map(SortField::new))
                            .collect::<datafusion::common::Result<Vec<_>>>()?;
                        Some(RowConverter::new(fields)?)
                    } else {
                        None
                    };
                    aggregates.push(AggregateSpec {
                        expr: lowered.aggregate,
                        filter: lowered.filter,
                        distinct,
                    });
                    columns.push(OutputColumn::Aggregate(i));
                }
                let agg = Aggregation::new(
                    key_exprs,
                    key_types,
                    aggregates,
                    columns,
                    nullable(w.output.as_arrow()),
                )?;
                match w.kind {
                    WindowKind::Session { gap_ms } => {
                        let mut partition_exprs = Vec::new();
                        let mut partition_types = Vec::new();
                        for e in &w.partition_by {
                            partition_types.push(e.get_type(&w.input)?);
                            partition_exprs.push(physical(e, &w.input, models)?);
                        }
                        ops.push(Box::new(SessionOp::new(
                            agg,
                            partition_exprs,
                            partition_types,
                            w.time_column,
                            gap_ms,
                            w.allowed_lateness_ms,
                        )?));
                    }
                    kind => ops.push(Box::new(WindowAggregateOp::new(
                        Assigner::new(kind, w.offset_ms),
                        w.time_column,
                        agg,
                        w.allowed_lateness_ms,
                    ))),
                }
            }
            Stage::Lookup(l) => {
                let table = tables
                    .get(&l.table)
                    .with_context(|| format!("table {} is not in the plan", l.table))?;
                ops.push(Box::new(LookupJoinOp::new(
                    l.table.clone(),
                    physical(&l.key, &l.input, models)?,
                    l.as_of,
                    l.kind,
                    table.schema(),
                    table.primary_key[0],
                    table.watermark.map(|w| w.column),
                    nullable(l.output.as_arrow()),
                )?));
            }
            Stage::Over(o) => {
                let mut key_exprs = Vec::new();
                let mut key_types = Vec::new();
                for e in &o.partition_by {
                    key_types.push(e.get_type(&o.input)?);
                    key_exprs.push(physical(e, &o.input, models)?);
                }
                let n_in = o.input.fields().len();
                let mut calls = Vec::new();
                for (i, c) in o.calls.iter().enumerate() {
                    calls.push(OverCallSpec {
                        function: c.function,
                        arg: physical(&c.arg, &o.input, models)?,
                        arg_type: c.arg.get_type(&o.input)?,
                        distinct: c.distinct,
                        frame: c.frame,
                        output_type: o.output.field(n_in + i).data_type().clone(),
                    });
                }
                ops.push(Box::new(OverAggregateOp::new(
                    key_exprs,
                    key_types,
                    nullable(o.input.as_arrow()),
                    o.time_column,
                    calls,
                    nullable(o.output.as_arrow()),
                    o.retention_ms(),
                )?));
            }
        }
    }
    Ok(Chain::new(ops))
}
