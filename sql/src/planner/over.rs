//! Lowering OVER aggregates: per-event rolling aggregates over a bounded frame
//! that ends at the current row, in event-time order.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, ExprSchemable};

use super::{Chain, Planner};
use crate::error::{LResult, Located};
use crate::plan::{OverAggregate, OverCall, OverFrame, OverFunction};
use crate::statement::QuerySpan;

impl Planner<'_> {
    /// Lowers the OVER aggregates of one DataFusion `Window` node: every call
    /// must be a supported aggregate over a bounded frame that ends at the
    /// current row and is ordered by the source's event time.
    pub(super) fn lower_over(
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
