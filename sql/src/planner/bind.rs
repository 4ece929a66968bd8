//! Binding `predict(model, ...)` calls to the models the file declares, in the
//! query's syntax tree, before DataFusion plans it.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned as _, visit_expressions_mut,
};

use super::Planner;
use crate::catalog::did_you_mean;
use crate::error::{LResult, Located};
use crate::predict::PREDICT;
use crate::source::pos;

impl Planner<'_> {
    /// `predict(fraud, a, b)`: the model is named by a bare identifier, which SQL
    /// would read as a column. Check the model and its width here, where the
    /// call's place in the file is known, and pass the name on as a string.
    pub(super) fn bind_predict_calls(&self, query: &mut ast::Query) -> LResult<()> {
        let flow = visit_expressions_mut(query, |expr| {
            let ast::Expr::Function(f) = expr else {
                return ControlFlow::Continue(());
            };
            if !f.name.to_string().eq_ignore_ascii_case(PREDICT) {
                return ControlFlow::Continue(());
            }
            let call_pos = f
                .name
                .0
                .first()
                .map(|p| pos(p.span().start))
                .unwrap_or_default();
            let FunctionArguments::List(list) = &mut f.args else {
                return ControlFlow::Break(Located::new(
                    call_pos,
                    "predict needs arguments: predict(model, feature, ...)",
                ));
            };
            let model_ident = match list.args.first() {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Identifier(ident)))) => {
                    ident.clone()
                }
                _ => {
                    return ControlFlow::Break(Located::new(
                        call_pos,
                        "predict's first argument is a model name: predict(model, feature, ...)",
                    ));
                }
            };
            let ident_pos = pos(model_ident.span.start);
            let Some(model) = self.models.get(&model_ident.value) else {
                let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
                let hint = match did_you_mean(&model_ident.value, &names) {
                    Some(n) => format!(" (did you mean {n}?)"),
                    None => String::new(),
                };
                return ControlFlow::Break(Located::new(
                    ident_pos,
                    format!(
                        "unknown model {}{hint}: declare it with CREATE MODEL {} WITH ('path' = 'model.onnx')",
                        model_ident.value, model_ident.value
                    ),
                ));
            };
            let features = list.args.len() - 1;
            if features != model.info.inputs {
                return ControlFlow::Break(Located::new(
                    call_pos,
                    format!(
                        "model {} takes {} input features, but this predict call passes {features}",
                        model.name, model.info.inputs
                    ),
                ));
            }
            list.args[0] = FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Value(
                ast::Value::SingleQuotedString(model_ident.value.clone())
                    .with_span(model_ident.span),
            )));
            ControlFlow::Continue(())
        });
        match flow {
            ControlFlow::Break(e) => Err(e),
            ControlFlow::Continue(()) => Ok(()),
        }
    }
}
